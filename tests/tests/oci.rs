//! A system container whose root comes from an OCI image layout made here
//! (two layers, the second with a whiteout), whose command, environment and
//! working folder come from the image config: the image boots and the
//! container runs as the config says. Its Entrypoint is a bare `sh` and
//! its Env has no PATH: keel build finds the program in Docker's PATH
//! (through the image's `bin/sh` link), as Docker would.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::fs;

use keel_tests::fixtures::{layer, oci_layout, Entry};
use keel_tests::host::cached_busybox;
use keel_tests::{image_recipe, keel_build, workspace, Guest, BOOT_TIMEOUT, COMMAND_TIMEOUT};

#[test]
fn a_container_from_an_oci_image_runs_as_its_config_says() {
    let dir = tempfile::tempdir().unwrap();
    let busybox = cached_busybox(&workspace()).unwrap();
    let bb = fs::read(&busybox.files[0].1).unwrap();
    let layout = dir.path().join("containers/app-image");
    let base = layer(&[
        Entry::file("bin/busybox", &bb, 0o755),
        Entry::link("bin/sh", "busybox"),
        Entry::link("bin/sleep", "busybox"),
        Entry::file("app/stale.txt", b"from the base layer", 0o644),
    ]);
    let app = layer(&[
        Entry::file("app/.wh.stale.txt", b"", 0o644),
        Entry::file(
            "app/run.sh",
            b"echo \"oci: $GREETING from $(pwd)\"\n[ -e /app/stale.txt ] && echo 'oci: whiteout ignored'\nexec sleep 100000\n",
            0o755,
        ),
    ]);
    oci_layout(
        &layout,
        &[&base, &app],
        r#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["sh"],"Cmd":["/app/run.sh"],"Env":["GREETING=hello from the image config"],"WorkingDir":"/app"}}"#,
    );
    fs::write(
        dir.path().join("containers/app.toml"),
        "description = \"from an OCI image\"\nrequired = false\n[rootfs]\noci = \"app-image\"\n",
    )
    .unwrap();

    let recipe = image_recipe(dir.path(), "0.6.0", &["admin", "app"], "", "");
    let text = fs::read_to_string(&recipe).unwrap().replace(
        "dirs = [",
        &format!("dirs = [\"{}\", ", dir.path().join("containers").display()),
    );
    fs::write(&recipe, text).unwrap();
    let out = dir.path().join("out");
    keel_build(&recipe, &out, None);

    let mut g = Guest::boot(&out.join("disk.img"));
    g.expect("keel: ready version=0.6.0", BOOT_TIMEOUT);
    g.prompt();
    let logs = g.poll_shell("keelctl logs app", 30, |l| l.contains("oci: "));
    assert!(
        logs.contains("oci: hello from the image config from /app"),
        "{logs}"
    );
    assert!(!logs.contains("whiteout ignored"), "{logs}");
    let st = g.service("app");
    assert_eq!(st["state"], "running", "{st}");
    g.send("keelctl poweroff\n");
    g.wait_exit(COMMAND_TIMEOUT);
}

//! A system container whose root comes from an OCI image layout made here
//! (two layers, the second with a whiteout), whose command, environment and
//! working folder come from the image config: the image boots and the
//! container runs as the config says.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::fs;
use std::path::Path;

use sha2::{Digest, Sha256};

use keel_tests::host::cached_busybox;
use keel_tests::{image_recipe, keel_build, workspace, Guest, BOOT_TIMEOUT, COMMAND_TIMEOUT};

fn blob(dir: &Path, bytes: &[u8]) -> String {
    let hex = hex::encode(Sha256::digest(bytes));
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(blobs.join(&hex), bytes).unwrap();
    format!("sha256:{hex}")
}

fn tar_of(entries: &[(&str, &[u8], u32, Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, mode, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        match link {
            Some(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, path, target).unwrap();
            }
            None => {
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, *data).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

#[test]
fn a_container_from_an_oci_image_runs_as_its_config_says() {
    let dir = tempfile::tempdir().unwrap();
    let busybox = cached_busybox(&workspace()).unwrap();
    let bb = fs::read(&busybox.files[0].1).unwrap();
    let layout = dir.path().join("containers/app-image");
    let base = tar_of(&[
        ("bin/busybox", &bb, 0o755, None),
        ("bin/sh", b"", 0o777, Some("busybox")),
        ("bin/sleep", b"", 0o777, Some("busybox")),
        ("app/stale.txt", b"from the base layer", 0o644, None),
    ]);
    let app = tar_of(&[
        ("app/.wh.stale.txt", b"", 0o644, None),
        (
            "app/run.sh",
            b"echo \"oci: $GREETING from $(pwd)\"\n[ -e /app/stale.txt ] && echo 'oci: whiteout ignored'\nexec sleep 100000\n",
            0o755,
            None,
        ),
    ]);
    let (l1, l2) = (blob(&layout, &base), blob(&layout, &app));
    let config = blob(
        &layout,
        br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/sh"],"Cmd":["/app/run.sh"],"Env":["PATH=/bin","GREETING=hello from the image config"],"WorkingDir":"/app"}}"#,
    );
    let manifest = blob(
        &layout,
        format!(r#"{{"schemaVersion":2,"config":{{"digest":"{config}","size":1}},"layers":[{{"digest":"{l1}","size":1}},{{"digest":"{l2}","size":1}}]}}"#).as_bytes(),
    );
    fs::write(
        layout.join("index.json"),
        format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{manifest}","size":1}}]}}"#),
    )
    .unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
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

//! The person's own container from the host config: an OCI image layout
//! copied onto the data partition, run by keel-init with its own network
//! namespace, a published port reached from outside the VM, a volume and
//! a read-only root. Then `keelctl config apply` restarts only what a new
//! file changes, and `--try` goes back by itself unless confirmed.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::fs;
use std::path::Path;
use std::process::Command;

use keel_tests::fixtures::{
    busybox_layer, esp_text, http_get, oci_layout, put_config, Entry, Mounted,
};
use keel_tests::{copy_disk, disk_image, free_port, Guest, BOOT_TIMEOUT, COMMAND_TIMEOUT};

/// An OCI layout of busybox whose entrypoint records its environment in
/// /data and serves /www over HTTP on port 8080 (its eth0, where the
/// published port's DNAT sends connections, as with Docker).
fn app_layout(dir: &Path) {
    let entries = [
        // Owners are kept: the page belongs to uid 1000, as in the layer.
        Entry {
            owner: 1000,
            ..Entry::file("www/index.html", b"served from a user container\n", 0o644)
        },
        Entry::file(
            "app/run.sh",
            b"echo \"$GREETING\" > /data/greeting\nexec httpd -f -p 8080 -h /www\n",
            0o755,
        ),
    ];
    let gz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&busybox_layer(
            &["sh", "httpd", "cat", "touch", "ls"],
            &entries,
        ))
        .unwrap();
        e.finish().unwrap()
    };
    oci_layout(
        dir,
        &[&gz],
        r#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["sh"],"Cmd":["/app/run.sh"],"Env":["PATH=/bin","GREETING=from the image"]}}"#,
    );
}

fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

fn pid(g: &mut Guest, name: &str) -> i64 {
    let s = g.service(name);
    s["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("{name} not running: {s}"))
}

const BASE: &str = "[network.interfaces.eth0]\naddresses = [\"10.0.2.15/24\"]\n\n";
/// BASE with a second address, which a later config without it removes.
const EXTRA: &str =
    "[network.interfaces.eth0]\naddresses = [\"10.0.2.15/24\", \"10.0.9.1/24\"]\n\n";

fn has_extra_address(g: &mut Guest) -> bool {
    g.shell("ip -4 addr show dev eth0").contains("10.0.9.1/24")
}

fn app(greeting: &str) -> String {
    format!(
        "[containers.app]\nimage = \"/var/lib/images/app\"\nenv = {{ GREETING = \"{greeting}\" }}\n\
         ports = [\"9090:8080\"]\nvolumes = [\"/var/lib/app:/data\"]\nlimits = {{ memory = \"64M\" }}\n"
    )
}

/// The same image with the host's ids, and no port.
const PLAIN: &str = "[containers.plain]\nimage = \"/var/lib/images/app\"\nuserns = \"host\"\n\
                     volumes = [\"/var/lib/plain:/data\"]\n";

/// The same image again, added by `config apply`: the next id range. Its
/// name sorts before `app`, which is prepared again in the same apply: a
/// range that was not kept would go to it.
const ALPHA: &str =
    "[containers.alpha]\nimage = \"/var/lib/images/app\"\nvolumes = [\"/var/lib/alpha:/data\"]\n";

/// The id map of a container's process, as the host sees it.
fn uid_map(g: &mut Guest, name: &str) -> String {
    let pid = pid(g, name);
    let map = g.shell(&format!("cat /proc/{pid}/uid_map"));
    map.split_whitespace().collect::<Vec<_>>().join(" ")
}

// One long scenario rather than many short tests: each step needs the
// state the steps before it left, and a boot costs seconds of the suite.
#[test]
fn a_user_container_runs_from_var_and_config_apply_restarts_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let disk_path = dir.path().join("disk.img");
    copy_disk(&disk_image(), &disk_path);
    let layout = dir.path().join("app");
    app_layout(&layout);
    {
        let var = Mounted::partition(&disk_path, keel_formats::disk::DATA_LABEL);
        let images = var.at.path().join("lib/images");
        fs::create_dir_all(&images).unwrap();
        copy_tree(&layout, &images);
    }
    put_config(
        &disk_path,
        &format!("{BASE}{}{PLAIN}", app("from host.toml")),
    );

    let port = free_port();
    let mut g = Guest::boot_publishing(&disk_path, &[(port, 9090)]);
    g.expect("keel: ready ", BOOT_TIMEOUT);
    g.prompt();
    // Through QEMU's forward to the host's port 9090, DNAT into the
    // container on the default network.
    let page = http_get(port, "/", "served from a user container").unwrap_or_else(|e| {
        let why = g.shell("keelctl status; keelctl logs app; keelctl logs kernel | tail -5");
        panic!("{e}\n{}\n{why}", g.transcript)
    });
    assert!(page.contains("200 OK"), "{page}");
    let app_status = g.service("app");
    assert_eq!(app_status["state"], "running", "{app_status}");
    assert_eq!(app_status["root_readonly"], true, "{app_status}");
    // The admin container sees /var/log only: look through the volume.
    let greeting = g.shell("keelctl exec app -- /bin/cat /data/greeting");
    assert_eq!(greeting.trim(), "from host.toml", "env over the image's");
    let inside = g.shell(
        "keelctl exec app -- /bin/touch /x; echo rc=$?; keelctl exec app -- /bin/touch /tmp/x && echo tmp-ok; \
         keelctl exec app -- /bin/cat /proc/net/dev; keelctl exec app -- /bin/ls -ln /www",
    );
    assert!(
        inside.contains("rc=1") && inside.contains("tmp-ok"),
        "{inside}"
    );
    assert!(
        inside.contains("lo:") && inside.contains("eth0:"),
        "its own network namespace, on the default network: {inside}"
    );
    assert!(inside.contains("1000     1000"), "owner kept: {inside}");
    // Root in it is the first id range of the host; the volume keel-init
    // made belongs to that range, so the container wrote to it.
    assert_eq!(uid_map(&mut g, "app"), "0 1048576 65536");
    let app_pid = pid(&mut g, "app");
    let status = g.shell(&format!("grep -E '^(Uid|Gid):' /proc/{app_pid}/status"));
    assert!(
        status.contains("Uid:\t1048576\t1048576") && status.contains("Gid:\t1048576\t1048576"),
        "root in the container is an unprivileged host user:\n{status}"
    );
    let data = g.shell("keelctl exec app -- /bin/ls -ln /data");
    assert!(
        data.contains("0        0"),
        "the volume's root is the container's: {data}"
    );
    // The escape suite's rows from a user container running as root, in
    // its user namespace and with the host's ids.
    keel_tests::escape::user_container_cannot_escape(&mut g, "app", "/data", true);
    assert_eq!(uid_map(&mut g, "plain"), "0 0 4294967295");
    keel_tests::escape::user_container_cannot_escape(&mut g, "plain", "/data", false);

    // Apply a file that changes the container only: the others keep their
    // processes.
    let (web, admin, app_pid) = (pid(&mut g, "web"), pid(&mut g, "admin"), pid(&mut g, "app"));
    g.write_file(
        "/tmp/new.toml",
        &format!("{EXTRA}{}{ALPHA}", app("applied")),
    );
    let out = g.shell("keelctl config apply /tmp/new.toml; echo rc=$?");
    assert!(
        out.contains("preparing container app") && out.contains("rc=0"),
        "{out}"
    );
    g.poll_shell("keelctl exec app -- /bin/cat /data/greeting", 60, |t| {
        t.contains("applied")
    });
    assert_eq!(pid(&mut g, "web"), web);
    assert_eq!(pid(&mut g, "admin"), admin);
    assert_ne!(pid(&mut g, "app"), app_pid);
    // A restarted container keeps its range; a new one gets the next.
    assert_eq!(uid_map(&mut g, "app"), "0 1048576 65536");
    g.poll_shell("keelctl exec alpha -- /bin/cat /data/greeting", 60, |t| {
        t.contains("from the image")
    });
    assert_eq!(uid_map(&mut g, "alpha"), "0 1114112 65536");
    assert!(
        !g.shell("keelctl status").contains("plain "),
        "removed with its entry"
    );
    http_get(port, "/", "served from a user container").unwrap();
    assert!(has_extra_address(&mut g), "the new config's address");

    // A bad file changes nothing.
    g.write_file("/tmp/bad.toml", "[containers.app]\nimage = \"/opt/x\"\n");
    let out = g.shell("keelctl config apply /tmp/bad.toml; echo rc=$?");
    assert!(
        out.contains("/tmp/bad.toml:2:1: `containers.app.image`")
            && out.contains("nothing was changed")
            && out.contains("rc=1"),
        "{out}"
    );

    // On trial: the web service is disabled, then back by itself.
    g.write_file(
        "/tmp/try.toml",
        &format!("{BASE}{}[services.web]\nenabled = false\n", app("applied")),
    );
    // A trial longer than the clock can hold is refused before anything
    // changes (it used to be applied, then panic PID 1).
    let before = g.status();
    let out =
        g.shell("keelctl config apply --try 18000000000000000000s /tmp/try.toml 2>&1; echo rc=$?");
    assert!(
        out.contains("--try 18000000000000000000s: a trial lasts from 1 s to 86400 s")
            && out.contains("rc=1"),
        "{out}"
    );
    let after = g.status();
    assert_eq!(after["config"], before["config"], "{after}");
    assert!(after["services"].to_string().contains("\"web\""), "{after}");
    let app_pid = pid(&mut g, "app");
    let out = g.shell("keelctl config apply --try 20s /tmp/try.toml; echo rc=$?");
    assert!(out.contains("stopped web") && out.contains("rc=0"), "{out}");
    assert_eq!(pid(&mut g, "app"), app_pid, "unchanged by the trial");
    assert!(
        !has_extra_address(&mut g),
        "an address the trial's config no longer lists is removed"
    );
    let status = g.status();
    assert_eq!(status["config"]["source"], "trial", "{status}");
    assert!(
        !status["services"].to_string().contains("\"web\""),
        "{status}"
    );
    g.expect("host config reverted", COMMAND_TIMEOUT);
    g.prompt();
    let status = g.poll_shell("keelctl status", 30, |s| s.contains("web "));
    assert!(
        status.contains("was not confirmed and was reverted"),
        "{status}"
    );
    assert!(has_extra_address(&mut g), "back with the reverted config");

    // Confirmed: kept on the ESP for the next boots.
    let out = g
        .shell("keelctl config apply --try 5m /tmp/try.toml && keelctl config confirm; echo rc=$?");
    assert!(out.contains("confirmed") && out.contains("rc=0"), "{out}");
    assert_eq!(g.status()["config"]["source"], "esp");
    assert!(!has_extra_address(&mut g));
    g.send("keelctl poweroff\n");
    assert!(g.wait_exit(COMMAND_TIMEOUT).success());
    let kept = esp_text(&disk_path, keel_formats::host::ON_ESP);
    assert!(
        kept.contains("enabled = false") && kept.contains("applied"),
        "{kept}"
    );
}

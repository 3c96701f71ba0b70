//! A keel host pulls from a registry over TLS with basic auth, both as
//! its host config says (a test CA, a user and a password), and the power
//! is cut in the middle of the image's 8 MiB layer: after the reboot the
//! pull resumes where the synced part of the layer ends, and the
//! container runs. The password is nowhere a container, a log, the status
//! or a process list shows. The registry is Debian's docker-registry on
//! this machine's 127.0.0.1, behind a relay that slows and counts what it
//! sends, reached from the guest through QEMU's guestfwd.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::time::{Duration, Instant};

use keel_tests::fixtures::{busybox_layer, layer, noise, put_config, Entry};
use keel_tests::registry::{push, runnable_layout, Options, Push, Registry, GUEST_ADDRESS};
use keel_tests::throttle::Throttle;
use keel_tests::{copy_disk, disk_image, Guest, BOOT_TIMEOUT};

const USER: &str = "keel";
const PASSWORD: &str = "pw-5e1f0c3a-never-shown";
/// A pattern that matches the password, and is not it.
const SEARCH: &str = "pw-5e1f0c3a-neve[r]-shown";
/// The big layer: incompressible, so its gzip blob is as big. The test
/// image's /var is 64 MiB, and the layer is there three times at once
/// (keel-pull's store, keel-init's checked copy, the unpacked root).
const BIG: usize = 8 << 20;

/// A busybox image with a big file besides, that says it runs and sleeps.
fn app_layout(dir: &Path) {
    let version = Entry::file("version", b"image big\n", 0o644);
    let big = noise(0x9e37_79b9_7f4a_7c15, BIG);
    runnable_layout(
        dir,
        "1",
        &[
            busybox_layer(&["sh", "cat", "sleep", "grep", "ls"], &[version]),
            layer(&[Entry::file("data/big", &big, 0o644)]),
        ],
        serde_json::json!({
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["cat /version; exec sleep 100000"],
            "Env": ["PATH=/bin"],
        }),
    );
}

#[test]
fn a_pull_over_tls_with_credentials_survives_a_power_cut_in_a_layer() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(Options::tls().with_auth(USER, PASSWORD));
    let layout = dir.path().join("app");
    app_layout(&layout);
    push(
        &registry,
        &layout,
        "1",
        "team/big:1",
        &Push {
            creds: Some((USER.into(), PASSWORD.into())),
            all: false,
        },
    );
    let relay = Throttle::start(registry.port());
    let host = format!("{GUEST_ADDRESS}:5000");
    let config = format!(
        "[network.interfaces.eth0]\naddresses = [\"10.0.2.15/24\"]\n\n\
         [registries.\"{host}\"]\nca = ['''\n{ca}''']\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\n\n\
         [containers.app]\nimage = \"{host}/team/big:1\"\n",
        ca = registry.ca_pem().unwrap()
    );
    let disk = dir.path().join("disk.img");
    copy_disk(&disk_image(), &disk);
    put_config(&disk, &config);

    // 256 KiB/s: the big layer takes half a minute; cut once half is in.
    relay.set_rate(256 << 10);
    let mut g = Guest::boot_with(&disk, false, &[(5000, relay.port())]);
    g.expect("keel: ready ", BOOT_TIMEOUT);
    g.prompt();
    let deadline = Instant::now() + Duration::from_secs(180);
    while relay.downloaded() < (BIG as u64) / 2 {
        assert!(
            Instant::now() < deadline,
            "the layer never came: {} bytes\n{}",
            relay.downloaded(),
            g.shell("keelctl status; keelctl logs pull")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // sync(2) is the whole host's: what is in of the layer reaches the
    // disk (the admin shell cannot look at keel-pull's folder; nothing
    // but keel-pull and root can).
    g.shell("sync");
    g.power_cut();

    // After the cut, at full speed: only the rest of the layer comes.
    relay.set_rate(0);
    relay.reset();
    let mut g = Guest::boot_with(&disk, false, &[(5000, relay.port())]);
    g.expect("keel: ready ", BOOT_TIMEOUT);
    g.prompt();
    let out = g.poll_shell("keelctl exec app -- /bin/cat /version", 120, |t| {
        t.contains("image big")
    });
    assert!(out.contains("image big"), "{out}");
    let again = relay.downloaded();
    eprintln!("after the cut: {again} bytes for a {BIG}-byte layer");
    assert!(
        again < (BIG as u64) * 5 / 6,
        "{again} bytes after the cut for a {BIG}-byte layer: it did not resume"
    );
    let out = g.shell("keelctl image list");
    assert!(out.contains(&format!("{host}/team/big:1")), "{out}");

    // The password: in the host config (root's only), sent to the
    // registry, and nowhere else. Searched for by a pattern that is not
    // the password itself, or the search's own command line would match.
    // The admin shell is a container too: the config is not in its view.
    // What the admin shell sees goes to one file first, and must hold
    // what it is known to (keel-pull's command line, the container in the
    // status) before its lack of the password means anything.
    let seen = g.shell(&format!(
        "{{ keelctl status --json; keelctl logs pull; keelctl logs app; keelctl logs kernel; \
         cat /proc/[0-9]*/cmdline; }} > /tmp/seen.txt 2>/dev/null; \
         echo count=$(grep -c '{SEARCH}' /tmp/seen.txt) \
         pull=$(grep -c keel-pull /tmp/seen.txt) app=$(grep -c '\"app\"' /tmp/seen.txt); \
         echo files=$(grep -rls '{SEARCH}' /var/log /tmp 2>/dev/null); \
         cat /var/lib/keel/config/host.toml 2>&1"
    ));
    assert!(seen.contains("count=0 "), "{seen}");
    assert!(
        !seen.contains("pull=0") && !seen.contains("app=0"),
        "{seen}"
    );
    assert!(seen.lines().any(|l| l.trim() == "files="), "{seen}");
    assert!(seen.contains("No such file"), "{seen}");
    let inside = g.shell(&format!(
        "keelctl exec app -- /bin/sh -c \"echo files=\\$(grep -rls '{SEARCH}' /etc /var /tmp /bin /version 2>/dev/null); ls /var/lib/keel 2>&1\""
    ));
    assert!(inside.lines().any(|l| l.trim() == "files="), "{inside}");
    assert!(inside.contains("No such file"), "{inside}");
}

//! Boot the default image through OVMF and systemd-boot in QEMU (TCG), and
//! check what a person at the console would: keel-init is ready, every
//! service is a container with its own PID namespace and a read-only root,
//! the API answers, poweroff ends QEMU, and boot counting and the health
//! gate renamed the entry.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::Cursor;

use keel_image_builder::{disk, esp};
use keel_tests::{copy_disk, disk_image, Guest, BOOT_TIMEOUT, COMMAND_TIMEOUT};

// One long scenario rather than many short tests: each step needs the
// state the steps before it left, and a boot costs seconds of the suite.
#[test]
fn boots_to_ready_runs_containers_and_powers_off() {
    let dir = tempfile::tempdir().unwrap();
    let disk_path = dir.path().join("disk.img");
    copy_disk(&disk_image(), &disk_path);
    let before = esp::list_dir(
        Cursor::new(disk::read_partition(&disk_path, "esp").unwrap()),
        "EFI/Linux",
    )
    .unwrap();
    assert_eq!(
        before,
        ["keel-0.1.0+3.efi"],
        "a fresh image has three tries"
    );

    let mut g = Guest::boot(&disk_path);
    let ready = g.expect("keel: ready ", BOOT_TIMEOUT);
    assert!(
        ready.contains("stage 1: slot a"),
        "stage 1 did not report dm-verity root:\n{ready}"
    );
    let line = g.expect("\n", COMMAND_TIMEOUT);
    // update is not required: it starts after the ready line.
    assert!(
        // Of five services (admin, web, update, pull and the DHCP client a
        // host without a network config runs on its first Ethernet
        // device), how many are ready when the required two are depends
        // on the order they came up in.
        line.contains("version=0.1.0") && line.contains("slot=a") && line.contains("/5 ms="),
        "{line}"
    );
    g.prompt();

    // The API's view.
    let status = g.status();
    assert_eq!(status["slot"], "a");
    assert_eq!(status["ready"], true);
    let services = status["services"].as_array().unwrap();
    assert_eq!(services.len(), 5, "{status}");
    for s in services {
        assert_eq!(s["state"], "running", "{s}");
        assert_eq!(s["root_readonly"], true, "{s}");
        if s["pid_ns"] == "private" {
            assert_eq!(s["ns_pid"], 1, "{s}");
        }
    }
    let web = services.iter().find(|s| s["name"] == "web").unwrap();
    assert_eq!(web["pid_ns"], "private");

    // The same facts read directly from /proc by the admin shell, which
    // shares the host's PID namespace for exactly this.
    for s in services {
        let pid = s["pid"].as_i64().unwrap();
        let out = g.shell(&format!("grep NSpid /proc/{pid}/status; awk '$5==\"/\" {{print \"ROOTMOUNT\", $6}}' /proc/{pid}/mountinfo"));
        let nspid = out
            .lines()
            .find(|l| l.starts_with("NSpid:"))
            .unwrap_or_else(|| panic!("{out}"));
        let inner: i64 = nspid.split_whitespace().last().unwrap().parse().unwrap();
        if s["pid_ns"] == "private" {
            assert_eq!(
                inner, 1,
                "{} is not PID 1 in its namespace: {nspid}",
                s["name"]
            );
        }
        let root = out
            .lines()
            .rfind(|l| l.starts_with("ROOTMOUNT"))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(
            root.split_whitespace()
                .nth(1)
                .unwrap()
                .split(',')
                .any(|o| o == "ro"),
            "{} root is writable: {root}",
            s["name"]
        );
    }

    // The root really is read-only, here too.
    let touch = g.shell("touch /bin/x 2>&1; echo rc=$?");
    assert!(
        touch.contains("Read-only file system") && !touch.contains("rc=0"),
        "{touch}"
    );

    // The web service bound port 80 with its one capability.
    let page = g.shell("wget -qO- http://127.0.0.1/os-release");
    assert!(
        page.contains("ID=keel") && page.contains("VERSION_ID=0.1.0"),
        "{page}"
    );

    // No network config: DHCP on the first Ethernet device, and QEMU's
    // lease taken.
    g.poll_shell("cat /var/log/keel/dhcp-eth0.log", 30, |t| {
        t.contains("keel-dhcp: eth0 has 10.0.2.15/24")
    });
    assert!(g.shell("ip -4 addr show dev eth0").contains("10.0.2.15/24"));

    // The human view lists every service.
    let table = g.shell("keelctl status");
    for name in ["admin", "web", "update", "pull", "dhcp-eth0"] {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(name) && l.contains("running")),
            "{table}"
        );
    }

    // Capabilities: the admin shell keeps none, web only
    // CAP_NET_BIND_SERVICE (bit 10); both run with no_new_privs.
    let admin_caps = g.shell("grep -E 'CapEff|CapBnd|NoNewPrivs' /proc/self/status");
    assert!(
        admin_caps.contains("CapEff:\t0000000000000000"),
        "{admin_caps}"
    );
    assert!(
        admin_caps.contains("CapBnd:\t0000000000000000"),
        "{admin_caps}"
    );
    assert!(admin_caps.contains("NoNewPrivs:\t1"), "{admin_caps}");
    let web_pid = web["pid"].as_i64().unwrap();
    let web_caps = g.shell(&format!(
        "grep -E 'CapEff|CapBnd|NoNewPrivs' /proc/{web_pid}/status"
    ));
    assert!(web_caps.contains("CapEff:\t0000000000000400"), "{web_caps}");
    assert!(web_caps.contains("CapBnd:\t0000000000000400"), "{web_caps}");
    assert!(web_caps.contains("NoNewPrivs:\t1"), "{web_caps}");

    // Each service has its own cgroup.
    let cgroup = g.shell(&format!("cat /proc/{web_pid}/cgroup"));
    assert!(cgroup.contains("0::/system/web"), "{cgroup}");

    // The admin shell sees every process but can touch none of them.
    keel_tests::escape::admin_cannot_escape(&mut g);

    // A service that dies is restarted by keel-init (killed through the
    // API: the admin shell itself may not signal it).
    let killed = g.shell("keelctl kill web; echo rc=$?");
    assert!(killed.contains("rc=0"), "{killed}");
    let mut restarted = None;
    for _ in 0..60 {
        let w = g.service("web");
        if w["state"] == "running" && w["restarts"] == 1 && w["pid"].as_i64() != Some(web_pid) {
            restarted = Some(w);
            break;
        }
        g.shell("sleep 1");
    }
    let w = restarted.unwrap_or_else(|| panic!("web was not restarted:\n{}", g.transcript));
    assert_eq!(w["ns_pid"], 1, "{w}");

    // The health gate kept this boot: the entry lost its counter.
    assert!(
        g.transcript
            .contains("boot entry keel-0.1.0+2-1.efi is healthy: blessed as keel-0.1.0.efi"),
        "{}",
        g.transcript
    );
    // The updater runs and knows what runs.
    let upd = g.shell("keelctl update status");
    assert!(
        upd.contains("version 0.1.0 (slot a)") && upd.contains("state: idle"),
        "{upd}"
    );

    g.send("keelctl poweroff\n");
    let status = g.wait_exit(COMMAND_TIMEOUT);
    assert!(status.success(), "QEMU exited with {status}");
    assert!(
        g.transcript.contains("keel: Poweroff"),
        "no clean shutdown:\n{}",
        g.transcript
    );
    // The updater ends on SIGTERM, not after the stop timeout's SIGKILL.
    assert!(
        g.transcript.contains("keel: update: exited (Code(0))"),
        "keel-update did not stop on SIGTERM:\n{}",
        g.transcript
    );

    let after = esp::list_dir(
        Cursor::new(disk::read_partition(&disk_path, "esp").unwrap()),
        "EFI/Linux",
    )
    .unwrap();
    assert_eq!(
        after,
        ["keel-0.1.0.efi"],
        "systemd-boot counted one try (+2-1), then the health gate blessed the entry"
    );
}

/// One flipped byte in the root partition must stop the boot: dm-verity
/// turns it into a read error, stage 1 cannot mount the root, PID 1 exits,
/// the kernel panics and (`panic=`) reboots, which `--no-reboot` turns into
/// QEMU exiting. No service of the image may run.
#[test]
fn a_changed_root_block_stops_the_boot() {
    use std::io::{Read, Seek, SeekFrom, Write};

    let dir = tempfile::tempdir().unwrap();
    let disk_path = dir.path().join("disk.img");
    copy_disk(&disk_image(), &disk_path);
    let table = disk::read_table(&disk_path).unwrap();
    let root = table.iter().find(|p| p.label == "keel-root-a").unwrap();
    // The erofs superblock sits at byte 1024 of the first block.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk_path)
        .unwrap();
    let at = root.offset + 1024;
    let mut byte = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut byte).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[byte[0] ^ 0x01]).unwrap();
    f.sync_all().unwrap();
    drop(f);

    let mut g = Guest::boot(&disk_path);
    g.expect("stage 1 failed", BOOT_TIMEOUT);
    g.wait_exit(COMMAND_TIMEOUT);
    assert!(
        g.transcript.contains("verity"),
        "no dm-verity error on the console:\n{}",
        g.transcript
    );
    assert!(
        g.transcript.contains("Kernel panic"),
        "no panic:\n{}",
        g.transcript
    );
    assert!(!g.transcript.contains("keel: ready"), "{}", g.transcript);
}

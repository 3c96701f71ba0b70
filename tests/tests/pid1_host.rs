//! keel-init as PID 1 of a fresh PID namespace on this machine (no VM):
//! real namespaces, mounts and cgroups, driven through its API. Needs
//! root, as CI has; without it the test fails and says so.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::time::Duration;

use keel_formats::container::ContainerDef;
use keel_image_builder::rootfs::{self, StagedContainer};
use keel_tests::host::{cached_busybox, HostInit};
use keel_tests::{musl_bin_dir, workspace};

const WEB: &str = r#"
command = ["/usr/sbin/httpd", "-f", "-p", "80", "-h", "/etc"]
capabilities = ["CAP_NET_BIND_SERVICE"]
stop_signal = "SIGKILL"
[readiness]
tcp = "127.0.0.1:80"
[rootfs]
contents = ["busybox"]
"#;

const SLEEPER: &str = r#"
command = ["/bin/sh", "-c", "echo sleeper: up; exec sleep 100000"]
after = ["web"]
stop_signal = "SIGKILL"
[rootfs]
contents = ["busybox"]
"#;

const UNPRIV: &str = r#"
command = ["/bin/sh", "-c", "echo unpriv: uid=$(id -u); exec sleep 100000"]
stop_signal = "SIGKILL"
[user_namespace]
uid_map = [{ inside = 0, outside = 100000, count = 65536 }]
gid_map = [{ inside = 0, outside = 100000, count = 65536 }]
[rootfs]
contents = ["busybox"]
"#;

/// A command that is not in the image: fails for good, not retried.
const GHOST: &str = r#"
command = ["/bin/no-such-command"]
required = false
[rootfs]
contents = ["busybox"]
"#;

fn stage_root(dir: &Path) {
    let busybox = cached_busybox(&workspace()).unwrap();
    let containers: Vec<StagedContainer> = [
        ("web", WEB),
        ("sleeper", SLEEPER),
        ("unpriv", UNPRIV),
        ("ghost", GHOST),
    ]
    .iter()
    .map(|(n, t)| StagedContainer {
        name: n.to_string(),
        def: ContainerDef::parse(t).unwrap(),
        text: t.to_string(),
        oci: None,
        files: Vec::new(),
    })
    .collect();
    let bins = musl_bin_dir();
    rootfs::stage(
        dir,
        &rootfs::Inputs {
            keel_init: &bins.join("keel-init"),
            keelctl: &bins.join("keelctl"),
            bin_dir: &bins,
            packages: &[busybox],
            containers: &containers,
            os_release: "ID=keel\nVERSION_ID=itest\n",
            files: &[],
            extra: &[],
        },
    )
    .unwrap();
}

// One long scenario rather than many short tests: each step needs the
// state the steps before it left, and a boot costs seconds of the suite.
#[test]
fn keel_init_runs_services_as_pid1_of_a_new_pid_namespace() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (namespaces, mounts, cgroups); CI runs as root"
    );
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    stage_root(&root);

    let mut host = HostInit::start(&root, Duration::from_secs(60)).unwrap();
    let console = host.console.clone();
    let init_pid = host.init_pid;
    let bins = musl_bin_dir();
    let keelctl = |args: &[&str]| host.keelctl(&bins, args).unwrap();
    // ghost is not required: it starts after the verdict, and fails.
    assert!(console.contains("services=3/4"), "{console}");

    // keel-init is PID 1 inside.
    let status = std::fs::read_to_string(format!("/proc/{init_pid}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert_eq!(nspid.split_whitespace().last(), Some("1"), "{nspid}");

    let status =
        || -> serde_json::Value { serde_json::from_str(&keelctl(&["status", "--json"])).unwrap() };
    let mut json = status();
    for _ in 0..50 {
        if json["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "ghost" && s["state"] == "failed")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        json = status();
    }
    assert_eq!(json["health"], "healthy", "{json}");
    // The child's typed report names the step and the command; a missing
    // command is not retried.
    let ghost = json["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "ghost")
        .unwrap();
    assert_eq!(ghost["state"], "failed", "{ghost}");
    let why = ghost["last_error"].as_str().unwrap();
    assert!(
        why.contains("exec /bin/no-such-command") && why.contains("ENOENT"),
        "{why}"
    );
    for s in json["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] != "ghost")
    {
        assert_eq!(s["state"], "running", "{s}");
        assert_eq!(s["ns_pid"], 1, "{s}");
        assert_eq!(s["root_readonly"], true, "{s}");
    }
    let svc = |n: &str| {
        json["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == n)
            .unwrap()
            .clone()
    };
    assert!(
        svc("sleeper")["started_ms"].as_u64() >= svc("web")["ready_ms"].as_u64(),
        "{json}"
    );
    let logs = keelctl(&["logs", "sleeper"]);
    assert!(logs.contains("sleeper: up"), "{logs}");
    // Root in the user namespace is uid 100000 on the host. PIDs in the
    // status are keel-init's, so its own /proc is where to look.
    let unpriv = svc("unpriv");
    let upid = unpriv["pid"].as_i64().unwrap();
    let ustatus =
        std::fs::read_to_string(format!("/proc/{init_pid}/root/proc/{upid}/status")).unwrap();
    assert!(
        ustatus.contains("Uid:\t100000\t100000\t100000\t100000"),
        "{ustatus}"
    );
    let umap =
        std::fs::read_to_string(format!("/proc/{init_pid}/root/proc/{upid}/uid_map")).unwrap();
    assert_eq!(
        umap.split_whitespace().collect::<Vec<_>>(),
        ["0", "100000", "65536"]
    );
    let ulog = keelctl(&["logs", "unpriv"]);
    assert!(ulog.contains("unpriv: uid=0"), "{ulog}");

    // The services' cgroups sit inside keel-init's namespace, below ours.
    assert!(host.cgroup.join("system/web").is_dir() && host.cgroup.join("keel-init").is_dir());

    keelctl(&["poweroff"]);
    let status = host.wait(Duration::from_secs(30)).unwrap();
    let console = host.console.clone();
    assert!(console.contains("keel: Poweroff"), "{console}");
    // Started once, never again through the backoff.
    assert_eq!(
        console.matches("ghost: cannot start").count(),
        1,
        "{console}"
    );
    assert!(
        console.contains("ghost: cannot start, not retrying"),
        "{console}"
    );
    // reboot(2) in a PID namespace ends its init instead of the machine.
    // The kernel reports a power-off there as the init dying of SIGINT.
    use std::os::unix::process::ExitStatusExt;
    assert!(
        status.signal() == Some(libc::SIGINT) || status.code() == Some(128 + libc::SIGINT),
        "{status:?}"
    );
}

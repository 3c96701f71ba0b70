//! keel-init as PID 1 of a fresh PID namespace on this machine (no VM):
//! real namespaces, mounts and cgroups, driven through its API. Needs
//! root, as CI has; without it the test fails and says so.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use keel_image_builder::cache::Cache;
use keel_image_builder::recipe;
use keel_image_builder::rootfs::{self, StagedContainer};
use keel_spec::container::ContainerDef;
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

/// The unified (v2) cgroup hierarchy's mount point here.
fn cgroup2_mount() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|t| t.starts_with("cgroup2 "))
        })
        .and_then(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .expect("no cgroup2 hierarchy mounted on this machine")
}

fn stage_root(dir: &Path) {
    let recipe_path = workspace().join("recipes/host.toml");
    let image = recipe::load_image(&recipe_path).unwrap();
    let pkg_path = image.resolve(&format!(
        "{}/busybox.toml",
        image.recipe.userland.packages_dir
    ));
    let pkg = recipe::load_package(&pkg_path).unwrap();
    let cache = Cache::new(Cache::default_root().unwrap());
    let busybox = keel_image_builder::package::ensure(&cache, "busybox", &pkg, 2).unwrap();
    let containers: Vec<StagedContainer> = [("web", WEB), ("sleeper", SLEEPER), ("unpriv", UNPRIV)]
        .iter()
        .map(|(n, t)| StagedContainer {
            name: n.to_string(),
            def: ContainerDef::parse(t).unwrap(),
            text: t.to_string(),
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
        },
    )
    .unwrap();
}

/// Ends the namespace and removes the cgroup whatever the test's outcome:
/// SIGKILL to the namespace's init takes every process in it along.
struct Cleanup {
    unshare_pid: u32,
    cgroup: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let children = format!("/proc/{0}/task/{0}/children", self.unshare_pid);
        if let Ok(text) = std::fs::read_to_string(children) {
            for pid in text
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill with a pid and a signal number has no memory
                // preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut stack = vec![self.cgroup.clone()];
        while let Some(d) = stack.pop() {
            if let Ok(rd) = std::fs::read_dir(&d) {
                stack.extend(
                    rd.filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| p.is_dir()),
                );
            }
            dirs.push(d);
        }
        for d in dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn keelctl(init_pid: u32, args: &[&str]) -> String {
    let socket = format!("/proc/{init_pid}/root/run/keel/api.sock");
    let out = Command::new(musl_bin_dir().join("keelctl"))
        .arg("--socket")
        .arg(&socket)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keelctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

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

    // A cgroup of its own, which becomes the top of keel-init's cgroup
    // namespace. The root is switched the way stage 1 does it (move the new
    // root over /, then chroot into it): a plain chroot would forbid
    // creating user namespaces.
    let cg = cgroup2_mount().join(format!("keel-itest-{}", std::process::id()));
    std::fs::create_dir_all(&cg).unwrap();
    let script = format!(
        "echo $$ > {cg}/cgroup.procs && exec unshare --mount --uts --ipc --net --pid --fork --cgroup --propagation private -- \
         sh -c 'R={root}; mount --bind $R $R && mount -t proc proc $R/proc && mount --rbind /dev $R/dev && \
         mount -t sysfs sysfs $R/sys && mount -t tmpfs tmpfs $R/var && \
         cd $R && mount --move . / && exec chroot . /usr/bin/keel-init'",
        cg = cg.display(),
        root = root.display()
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let unshare_pid = child.id();
    let _cleanup = Cleanup {
        unshare_pid,
        cgroup: cg.clone(),
    };
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            if tx
                .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    let mut console = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !console.contains("keel: ready ") {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(c) => console.push_str(&c),
            Err(_) => {
                let _ = child.kill();
                panic!("keel-init never said ready:\n{console}");
            }
        }
    }
    assert!(console.contains("services=3/3"), "{console}");

    // keel-init is the unshare process's only child, and PID 1 inside.
    let children =
        std::fs::read_to_string(format!("/proc/{unshare_pid}/task/{unshare_pid}/children"))
            .unwrap();
    let init_pid: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{init_pid}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert_eq!(nspid.split_whitespace().last(), Some("1"), "{nspid}");

    let json: serde_json::Value =
        serde_json::from_str(&keelctl(init_pid, &["status", "--json"])).unwrap();
    assert_eq!(json["health"], "healthy", "{json}");
    for s in json["services"].as_array().unwrap() {
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
    let logs = keelctl(init_pid, &["logs", "sleeper"]);
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
    let ulog = keelctl(init_pid, &["logs", "unpriv"]);
    assert!(ulog.contains("unpriv: uid=0"), "{ulog}");

    // The services' cgroups sit inside keel-init's namespace, below ours.
    assert!(cg.join("system/web").is_dir() && cg.join("keel-init").is_dir());

    keelctl(init_pid, &["poweroff"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "keel-init did not shut down");
        std::thread::sleep(Duration::from_millis(100));
    };
    while let Ok(c) = rx.recv_timeout(Duration::from_millis(200)) {
        console.push_str(&c);
    }
    assert!(console.contains("keel: Poweroff"), "{console}");
    // reboot(2) in a PID namespace ends its init instead of the machine.
    // The kernel reports a power-off there as the init dying of SIGINT.
    use std::os::unix::process::ExitStatusExt;
    assert!(
        status.signal() == Some(libc::SIGINT) || status.code() == Some(128 + libc::SIGINT),
        "{status:?}"
    );
}

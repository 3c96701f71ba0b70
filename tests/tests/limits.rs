//! Isolation and limits, in QEMU, on the image built from
//! `tests/recipes/limits.toml`: memory.max and the OOM killer, pids.max,
//! the default seccomp profile, capabilities and the read-only root, each
//! against a control where one exists.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use keel_tests::{copy_disk, test_disk_image, Guest, BOOT_TIMEOUT, COMMAND_TIMEOUT};

/// The messages of `keelctl logs` output (each line is "TIMESTAMP text")
/// that start with `prefix`.
fn lines_of(log: &str, prefix: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split_once(' ').map(|(_, text)| text))
        .filter(|t| t.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

// One long scenario rather than many short tests: each step needs the
// state the steps before it left, and a boot costs seconds of the suite.
#[test]
fn limits_and_confinement_hold() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    copy_disk(&test_disk_image(), &disk);
    let mut g = Guest::boot(&disk);
    g.expect("keel: ready ", BOOT_TIMEOUT);
    g.prompt();

    // memory.max: the hog is OOM-killed inside its cgroup and restarted,
    // while web keeps running untouched.
    let events = g.poll_shell("cat /sys/fs/cgroup/system/hog/memory.events", 120, |out| {
        out.lines()
            .any(|l| l.starts_with("oom_kill ") && l != "oom_kill 0")
    });
    assert!(events.contains("oom_kill"), "{events}");
    let max = g.shell("cat /sys/fs/cgroup/system/hog/memory.max");
    assert_eq!(max.trim(), (24u64 << 20).to_string());
    let hog = (0..120)
        .map(|_| {
            let h = g.service("hog");
            if h["restarts"].as_u64().unwrap_or(0) == 0 {
                g.shell("sleep 1");
            }
            h
        })
        .find(|h| h["restarts"].as_u64().unwrap_or(0) >= 1)
        .unwrap_or_else(|| panic!("hog was never restarted:\n{}", g.transcript));
    assert_eq!(hog["last_error"], "killed by signal 9", "{hog}");
    let web = g.service("web");
    assert_eq!(web["state"], "running", "{web}");
    assert_eq!(web["restarts"], 0, "{web}");

    // pids.max: the spawner gets 16 processes and no more.
    let pids = g.poll_shell(
        "cat /sys/fs/cgroup/system/pidcap/pids.current /sys/fs/cgroup/system/pidcap/pids.events",
        60,
        |out| out.lines().any(|l| l.starts_with("max ") && l != "max 0"),
    );
    // keel-init's console lines can land inside the command's output.
    let current: u64 = pids
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pids.current in:\n{pids}"));
    assert_eq!(current, 16, "{pids}");
    let bomb = g.shell("keelctl logs pidcap");
    assert!(bomb.contains("forkbomb: fork refused"), "{bomb}");
    // The host still starts new processes: cat is a new process (echo
    // would be the shell's own builtin), and it reads its own name.
    let stat = g.shell("cat /proc/self/stat");
    assert!(stat.contains(" (cat) "), "{stat}");

    // seccomp and capabilities: the confined probes are refused, the
    // unconfined control shows that the refusal is the filter's doing.
    let confined = g.poll_shell("keelctl logs confined", 60, |l| l.contains("probes: done"));
    assert_eq!(
        lines_of(&confined, "mount:"),
        ["mount: EPERM"],
        "{confined}"
    );
    assert_eq!(
        lines_of(&confined, "kexec_load:"),
        ["kexec_load: EPERM"],
        "{confined}"
    );
    assert!(
        confined.contains("chown-rc=1"),
        "chown without CAP_CHOWN must fail:\n{confined}"
    );
    assert!(confined.contains("Operation not permitted"), "{confined}");
    assert!(
        confined.contains("rootwrite-rc=1") && confined.contains("Read-only file system"),
        "{confined}"
    );

    let control = g.poll_shell("keelctl logs unconfined", 60, |l| {
        l.contains("probes: done")
    });
    assert_eq!(lines_of(&control, "mount:"), ["mount: EFAULT"], "{control}");
    assert_eq!(
        lines_of(&control, "kexec_load:"),
        ["kexec_load: ENOSYS"],
        "{control}"
    );
    assert!(control.contains("chown-rc=0"), "{control}");

    // The escape suite from a confined service running as root: each row
    // of docs/containers.md's table is refused, with the host's values
    // read back after.
    let aslr = g.shell("cat /proc/sys/kernel/randomize_va_space");
    g.poll_shell("keelctl list", 60, |l| l.contains("escaper running"));
    let (web_pid, db_pid) = (
        g.service("web")["pid"].as_i64().unwrap(),
        g.service("db")["pid"].as_i64().unwrap(),
    );
    let escape = g.shell(&format!(
        "keelctl exec escaper -- /usr/bin/keel-probe escape --pid {web_pid} --pid {db_pid} \
         --cgroup /sys/fs/cgroup/pids.max --cgroup /sys/fs/cgroup/memory.max \
         --cgroup /sys/fs/cgroup/cgroup.procs --cgroup /sys/fs/cgroup/system/web/pids.max"
    ));
    assert!(escape.contains("escape: done"), "{escape}");
    assert_eq!(
        keel_tests::escape::not_refused(&escape),
        Vec::<String>::new(),
        "{escape}"
    );
    let rows = escape.lines().filter(|l| l.contains(": refused")).count();
    assert_eq!(rows, 15 + 2 * 5 + 4, "every row ran:\n{escape}");
    assert_eq!(g.shell("cat /proc/sys/kernel/randomize_va_space"), aslr);
    assert_eq!(aslr.trim(), "2");

    let seccomp = g.shell(
        "grep Seccomp: /proc/$(cat /sys/fs/cgroup/system/web/cgroup.procs | head -1)/status",
    );
    assert!(
        seccomp.contains("Seccomp:\t2"),
        "web must run under a seccomp filter: {seccomp}"
    );

    // Order and readiness: prep (oneshot) finished before db started; db
    // was ready (TCP probe in its own network namespace) before app started;
    // app became ready through its exec probe; late missed its deadline.
    let st = g.status();
    assert_eq!(st["health"], "healthy", "{st}");
    let svc = |n: &str| {
        st["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == n)
            .unwrap()
            .clone()
    };
    let (prep, db, app, late) = (svc("prep"), svc("db"), svc("app"), svc("late"));
    assert_eq!(prep["state"], "done", "{prep}");
    assert_eq!(db["state"], "running", "{db}");
    assert_eq!(app["state"], "running", "{app}");
    let ms =
        |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"));
    assert!(
        ms(&db, "started_ms") >= ms(&prep, "ready_ms"),
        "db started before prep finished: {prep} {db}"
    );
    // db sleeps 2 s before it listens: the probe must have waited.
    assert!(ms(&db, "ready_ms") >= ms(&db, "started_ms") + 1500, "{db}");
    assert!(
        ms(&app, "started_ms") >= ms(&db, "ready_ms"),
        "app started before db was ready: {db} {app}"
    );
    assert!(
        ms(&app, "ready_ms") >= ms(&app, "started_ms") + 500,
        "{app}"
    );
    let notifier = svc("notifier");
    assert_eq!(notifier["state"], "running", "{notifier}");
    assert!(
        ms(&notifier, "ready_ms") >= ms(&notifier, "started_ms") + 500,
        "{notifier}"
    );
    // late is not required: it starts once the health gate has its
    // verdict, then misses its own deadline.
    assert!(
        ms(&late, "started_ms") >= ms(&app, "ready_ms"),
        "late started before the required services were ready: {late} {app}"
    );
    let late = (0..30)
        .find_map(|_| {
            let l = g.service("late");
            if l["state"] == "failed" {
                return Some(l);
            }
            g.shell("sleep 1");
            None
        })
        .unwrap_or_else(|| panic!("late never failed: {}", g.service("late")));
    assert!(
        late["last_error"]
            .as_str()
            .unwrap()
            .contains("not ready within 3000 ms"),
        "{late}"
    );

    // The crash-looping hog is given up on after the limit, with backoff
    // between its restarts (about a minute in all), and the host stays
    // healthy because hog is not required.
    let hog = (0..180)
        .find_map(|_| {
            let h = g.service("hog");
            if h["state"] == "failed" {
                return Some(h);
            }
            g.shell("sleep 1");
            None
        })
        .unwrap_or_else(|| panic!("hog was never given up on:\n{}", g.transcript));
    assert_eq!(hog["restarts"], 7, "{hog}");
    assert_eq!(g.status()["health"], "healthy");

    // Logs are time-stamped, kept on /var too, and name unknown services.
    let stamped = lines_of(&g.shell("keelctl logs prep"), "prep: done");
    assert_eq!(stamped, ["prep: done"]);
    let on_disk = g.shell("cat /var/log/keel/prep.log");
    assert!(
        on_disk
            .lines()
            .any(|l| l.ends_with(" prep: done") && l.starts_with("20")),
        "{on_disk}"
    );
    let unknown = g.shell("keelctl logs nope 2>&1; echo rc=$?");
    assert!(
        unknown.contains("no service named \"nope\"") && unknown.contains("rc=1"),
        "{unknown}"
    );
    let kernel = g.shell("keelctl logs kernel | head -3");
    assert!(
        kernel.lines().next().is_some_and(|l| l.starts_with('[')),
        "{kernel}"
    );

    // exec: a command inside a running service sees its namespaces (its
    // own PID 1, hostname and read-only root), runs under its confinement
    // and returns its exit status.
    let inside = g.shell("keelctl exec db -- /bin/sh -c 'hostname; cat /proc/1/comm; grep CapEff /proc/self/status; touch /x; exit 7'; echo rc=$?");
    assert!(inside.lines().any(|l| l.trim() == "db"), "{inside}");
    assert!(inside.contains("CapEff:\t0000000000000000"), "{inside}");
    assert!(inside.contains("Read-only file system"), "{inside}");
    assert!(inside.contains("rc=7"), "{inside}");
    let comm = g.shell("keelctl exec db -- /bin/cat /proc/1/comm");
    assert!(comm.contains("sh") || comm.contains("httpd"), "{comm}");
    let missing = g.shell("keelctl exec late -- /bin/true 2>&1; echo rc=$?");
    assert!(
        missing.contains("late is not running") && missing.contains("rc=1"),
        "{missing}"
    );

    // Stop, start and restart by hand.
    g.shell("keelctl stop web");
    let stopped = g.poll_shell("keelctl list", 30, |l| l.contains("web stopped"));
    assert!(stopped.contains("db running"), "{stopped}");
    g.shell("keelctl start web");
    g.poll_shell("keelctl list", 30, |l| l.contains("web running"));
    let before = g.service("web")["pid"].as_i64().unwrap();
    g.shell("keelctl restart web");
    let after = (0..30)
        .find_map(|_| {
            let w = g.service("web");
            if w["state"] == "running" && w["pid"].as_i64() != Some(before) {
                return Some(w);
            }
            g.shell("sleep 1");
            None
        })
        .unwrap_or_else(|| panic!("web did not restart:\n{}", g.transcript));
    assert_eq!(after["restarts"], 0, "{after}");

    g.send("keelctl poweroff\n");
    assert!(g.wait_exit(COMMAND_TIMEOUT).success());
}

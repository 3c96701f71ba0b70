//! The escape suite: what docs/containers.md's table "What a container
//! cannot do" says, tried in a booted guest. From the admin shell the
//! tries are the busybox commands an operator at the prompt would type;
//! from a confined service, `keel-probe escape` makes the calls directly.
//! Every try must fail for a permission reason, and the host's values are
//! read back afterwards.

use crate::Guest;

/// Run `command` at the admin prompt; it must fail (non-zero status) with
/// one of `reasons` in its output.
fn refused(g: &mut Guest, row: &str, command: &str, reasons: &[&str]) {
    let out = g.shell(&format!("{command} 2>&1; echo rc=$?"));
    let rc_ok = out.lines().any(|l| l.starts_with("rc=") && l != "rc=0");
    let why = reasons.iter().any(|r| out.contains(r));
    assert!(
        rc_ok && why,
        "{row}: `{command}` was not refused for one of {reasons:?}:\n{out}"
    );
}

const EPERM: &str = "Operation not permitted";
const EACCES: &str = "Permission denied";
const EROFS: &str = "Read-only file system";

/// From the admin shell (the host's PID namespace, its own uid, no
/// capabilities, the default seccomp profile): every row refused, and the
/// sysctls it tried still have their values.
// One table of escapes, tried in order: long, and flat on purpose.
pub fn admin_cannot_escape(g: &mut Guest) {
    let aslr = g.shell("cat /proc/sys/kernel/randomize_va_space");
    let overcommit = g.shell("cat /proc/sys/vm/overcommit_ratio");
    let id = g.shell("id -u; id -g");
    assert_eq!(
        id.split_whitespace().collect::<Vec<_>>(),
        ["37", "37"],
        "the admin shell runs as the admin user: {id}"
    );
    refused(
        g,
        "sysctl write",
        "echo 0 > /proc/sys/kernel/randomize_va_space",
        &[EROFS],
    );
    refused(
        g,
        "sysctl write",
        "echo 37 > /proc/sys/vm/overcommit_ratio",
        &[EROFS],
    );
    // A kernel without CONFIG_MAGIC_SYSRQ (keel's own) has no trigger.
    if g.shell("test -e /proc/sysrq-trigger && echo present")
        .contains("present")
    {
        refused(g, "sysrq", "echo h > /proc/sysrq-trigger", &[EROFS]);
    }
    // kcore is root's only (0400): that the admin user cannot read one
    // says nothing, so the masks themselves are checked, on each masked
    // file this kernel has (keel's own has no kcore; every kernel has
    // interrupts).
    let masks = g.shell(
        "for p in /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug /proc/interrupts; do \
         test -e $p && echo \"$p $(grep -c \" $p \" /proc/self/mountinfo) $(head -c 64 $p | wc -c)\"; done",
    );
    let lines: Vec<&str> = masks.lines().filter(|l| l.starts_with("/proc/")).collect();
    assert!(
        lines.iter().any(|l| l.starts_with("/proc/interrupts ")),
        "{masks}"
    );
    for l in &lines {
        assert!(
            l.ends_with(" 1 0"),
            "masked once, reads empty: {l}\n{masks}"
        );
    }
    refused(
        g,
        "raw block device",
        "head -c 1 /dev/vda",
        &["No such file", EACCES],
    );
    refused(g, "mknod", "mknod /tmp/vda b 254 0", &[EPERM]);
    refused(
        g,
        "mount",
        "mount -t tmpfs none /tmp",
        &[EPERM, "permission denied"],
    );
    // A module file that is not one: were init_module allowed, the kernel
    // would answer "Exec format error" instead.
    refused(
        g,
        "init_module",
        "echo x > /tmp/m.ko && insmod /tmp/m.ko",
        &[EPERM],
    );
    refused(g, "unshare a user namespace", "unshare -U true", &[EPERM]);
    let pids: Vec<i64> = ["web", "update"]
        .iter()
        .map(|s| {
            g.service(s)["pid"]
                .as_i64()
                .unwrap_or_else(|| panic!("{s} has no pid"))
        })
        .collect();
    for pid in std::iter::once(1).chain(pids) {
        refused(g, "signal", &format!("kill -0 {pid}"), &[EPERM]);
        refused(g, "signal", &format!("kill -TERM {pid}"), &[EPERM]);
        refused(g, "environ", &format!("cat /proc/{pid}/environ"), &[EACCES]);
        refused(g, "mem", &format!("head -c 1 /proc/{pid}/mem"), &[EACCES]);
        refused(g, "root", &format!("ls /proc/{pid}/root/"), &[EACCES]);
    }
    refused(
        g,
        "another service's cgroup",
        "echo 1 > /sys/fs/cgroup/system/web/pids.max",
        &[EROFS],
    );
    refused(
        g,
        "another service's cgroup",
        "echo 0 > /sys/fs/cgroup/system/web/cgroup.procs",
        &[EROFS],
    );
    // The host kept its values.
    assert_eq!(
        g.shell("cat /proc/sys/kernel/randomize_va_space"),
        aslr,
        "ASLR"
    );
    assert_eq!(g.shell("cat /proc/sys/vm/overcommit_ratio"), overcommit);
    assert_eq!(aslr.trim(), "2", "ASLR on: {aslr}");
    let web = g.service("web");
    assert_eq!(web["state"], "running", "{web}");
}

/// The lines of `keel-probe escape` output that are not refusals.
pub fn not_refused(probe_output: &str) -> Vec<String> {
    probe_output
        .lines()
        .filter(|l| l.contains(": ALLOWED") || l.contains("bad argument"))
        .map(str::to_string)
        .collect()
}

/// From user container `name` running as root with Docker's default
/// capabilities (CAP_MKNOD among them), through `keelctl exec`, with the
/// image's busybox at /bin/busybox and a volume at `volume`: every row
/// refused. In its user namespace (`userns`) no device node is made; with
/// the host's ids one is, and it does not open (the volume is bound
/// nodev).
pub fn user_container_cannot_escape(g: &mut Guest, name: &str, volume: &str, userns: bool) {
    let aslr = g.shell("cat /proc/sys/kernel/randomize_va_space");
    let web = g.service("web")["pid"].as_i64().unwrap_or(1);
    let inside = |cmd: &str| {
        format!(
            "keelctl exec {name} -- /bin/busybox sh -c '{}'",
            cmd.replace('\'', "'\\''")
        )
    };
    let id = g.shell(&inside("/bin/busybox id -u"));
    assert_eq!(id.trim(), "0", "the row needs root in the container: {id}");
    for (row, cmd, reasons) in [
        (
            "sysctl write",
            "echo 0 > /proc/sys/kernel/randomize_va_space",
            &[EROFS][..],
        ),
        (
            "mount",
            "/bin/busybox mount -t tmpfs none /tmp",
            &[EPERM, "permission denied"],
        ),
        (
            "unshare",
            "/bin/busybox unshare -U /bin/busybox true",
            &[EPERM],
        ),
        (
            "init_module",
            "echo x > /tmp/m.ko && /bin/busybox insmod /tmp/m.ko",
            &[EPERM],
        ),
        ("own cgroup", "echo 1 > /sys/fs/cgroup/pids.max", &[EROFS]),
        (
            "raw block device",
            "/bin/busybox head -c 1 /dev/vda",
            &["No such file"],
        ),
    ] {
        refused(g, row, &inside(cmd), reasons);
    }
    // Another service's process is not there to signal.
    refused(
        g,
        "signal",
        &inside(&format!("kill -0 {web}")),
        &["No such process"],
    );
    let mknod = format!(
        "/bin/busybox mknod {volume}/vda b 254 0 && echo made; /bin/busybox head -c 1 {volume}/vda; echo rc=$?; /bin/busybox rm -f {volume}/vda"
    );
    let made = g.shell(&inside(&mknod));
    if userns {
        // Its CAP_MKNOD is the user namespace's: Linux makes no device
        // node for one.
        assert!(
            made.contains(EPERM) && !made.contains("made"),
            "mknod in a user namespace must be refused:\n{made}"
        );
    } else {
        // CAP_MKNOD makes the node; the nodev volume keeps it from opening.
        assert!(
            made.contains("made") && made.contains(EACCES) && made.contains("rc=1"),
            "a device node on a volume must not open:\n{made}"
        );
    }
    assert_eq!(g.shell("cat /proc/sys/kernel/randomize_va_space"), aslr);
}

//! `cargo xtask bench vmm`: keel-vmm against `qemu-system-x86_64 -M
//! microvm` on this machine's /dev/kvm (time from exec to the first
//! KVM_RUN, resident memory beyond guest RAM for 1 vCPU and 128 MiB), and
//! keel-vmm's exec-to-guest-init time where a guest can boot here: nested,
//! inside a keel host under TCG. Written to docs/bench-vmm.md; nothing is
//! asserted.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::{root, MUSL};

const GUEST_MIB: u64 = 128;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn keel_vmm_cmd(kernel: &Path) -> Command {
    let mut c = Command::new(root().join(format!("target/{MUSL}/release/keel-vmm")));
    c.arg("--kernel")
        .arg(kernel)
        .args(["--memory", "128", "--vcpus", "1", "--serial", "null"]);
    c
}

/// QEMU's microvm with what it needs to boot the same kernel and
/// nothing else: no firmware ROMs beyond qboot, no default devices.
fn qemu_cmd(kernel: &Path) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    // -cpu host asks for MSRs this host's KVM refuses; qemu64 starts.
    c.args([
        "-M",
        "microvm",
        "-enable-kvm",
        "-cpu",
        "qemu64",
        "-m",
        "128",
        "-smp",
        "1",
    ])
    .arg("-kernel")
    .arg(kernel)
    .args([
        "-append",
        "console=ttyS0 reboot=k panic=1 pci=off",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "null",
    ]);
    c
}

/// Resident memory of `pid` in KiB: everything, and the largest mapping
/// the size of guest RAM (or just above it: QEMU aligns its RAM block).
fn rss(pid: u32) -> anyhow::Result<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let (mut total, mut guest, mut size) = (0u64, 0u64, 0u64);
    let kb = |l: &str| {
        l.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let ram = GUEST_MIB * 1024;
    for line in smaps.lines() {
        if line.starts_with("Size:") {
            size = kb(line);
        } else if line.starts_with("Rss:") {
            let r = kb(line);
            total += r;
            if (ram..=ram + 4096).contains(&size) {
                guest = guest.max(r);
            }
        }
    }
    Ok((total, guest))
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Exec to the first KVM_RUN, in ms, as strace sees it (the same
/// tracing cost for both monitors), and the time KVM took to add guest
/// memory (KVM_SET_USER_MEMORY_REGION, all slots), which is the host's.
fn first_kvm_run(cmd: Command, work: &Path) -> anyhow::Result<(f64, f64)> {
    let log = work.join("strace.txt");
    let _ = std::fs::remove_file(&log);
    let prog = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    // `timeout` ends the monitor in any case; strace exits after it.
    let mut child = Command::new("strace")
        .args(["-f", "-ttt", "-T", "-e", "trace=execve,ioctl", "-o"])
        .arg(&log)
        .args(["timeout", "-s", "KILL", "15"])
        .arg(&prog)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("strace (Debian: strace)")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let result = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let stamp = |l: &str| {
            l.split_whitespace()
                .nth(1)
                .and_then(|t| t.parse::<f64>().ok())
        };
        let exec = monitor_exec(&text, &prog).and_then(stamp);
        let run = text.lines().find(|l| l.contains("KVM_RUN")).and_then(stamp);
        if let (Some(e), Some(r)) = (exec, run) {
            break Ok(((r - e) * 1000.0, slot_seconds(&text) * 1000.0));
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!("no KVM_RUN within 20 s:\n{text}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // SIGKILL the monitor (any other signal goes through strace); strace
    // and timeout end after it. Killing strace instead could leave the
    // monitor running, detached.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    if let Some(pid) = monitor_exec(&text, &prog)
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse::<libc::pid_t>().ok())
    {
        // SAFETY: kill(2) with a pid strace reported for our own child's
        // child and a plain signal number.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = child.wait();
    result
}

/// The line of an strace log where `prog` itself (not `timeout`) starts.
fn monitor_exec<'a>(log: &'a str, prog: &std::ffi::OsStr) -> Option<&'a str> {
    let name = Path::new(prog).file_name()?.to_string_lossy().into_owned();
    log.lines().find(|l| {
        l.contains("execve(\"") && l.contains(&name) && !l.contains("execve(\"/usr/bin/timeout")
    })
}

/// Seconds spent in KVM_SET_USER_MEMORY_REGION in an `strace -f -T`
/// log, where a call another thread interrupts ends on a later
/// `<... ioctl resumed>` line of the same PID.
fn slot_seconds(log: &str) -> f64 {
    let duration =
        |l: &str| -> Option<f64> { l.rsplit_once('<')?.1.strip_suffix('>')?.parse().ok() };
    let mut pending = std::collections::HashSet::new();
    let mut total = 0.0;
    for l in log.lines() {
        let pid = l.split_whitespace().next().unwrap_or_default();
        if l.contains("KVM_SET_USER_MEMORY_REGION") {
            if l.ends_with("<unfinished ...>") {
                pending.insert(pid.to_string());
            } else {
                total += duration(l).unwrap_or(0.0);
            }
        } else if l.contains("<... ioctl resumed>") && pending.remove(pid) {
            total += duration(l).unwrap_or(0.0);
        }
    }
    total
}

/// keel-vmm's own account of exec to the first vCPU entry, and its
/// memory once the vCPU runs.
fn keel_vmm_run(kernel: &Path) -> anyhow::Result<(f64, (u64, u64))> {
    let mut child = keel_vmm_cmd(kernel)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
    let us = loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("first vCPU entry") => {
                break l
                    .split_whitespace()
                    .find_map(|w| w.parse::<f64>().ok())
                    .context("no number in the first-entry line")?
            }
            Some(Ok(_)) => {}
            _ => bail!("keel-vmm ended before its vCPU ran"),
        }
    };
    std::thread::sleep(Duration::from_millis(500));
    let mem = rss(child.id());
    stop(child);
    Ok((us / 1000.0, mem?))
}

fn qemu_rss(kernel: &Path) -> anyhow::Result<(u64, u64)> {
    let child = qemu_cmd(kernel)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("qemu-system-x86_64")?;
    // QEMU has no first-entry signal to wait for: give it a second.
    std::thread::sleep(Duration::from_millis(1000));
    let mem = rss(child.id());
    stop(child);
    mem
}

/// Exec to guest init, nested: a keel host under TCG runs keel-vmm as a
/// service that restarts after each guest reboot; keel-vmm's boot-timer
/// line gives the time.
fn nested(boots: usize, work: &Path) -> anyhow::Result<Vec<f64>> {
    use keel_tests::vmm_guest::image_with_vmm_service;
    let disk = image_with_vmm_service(
        work,
        "vmmbench",
        r#"description = "keel-vmm benchmark guest"
command = ["/usr/bin/keel-vmm", "--kernel", "/guest/vmlinuz", "--initramfs", "/guest/initramfs.cpio", "--memory", "128", "--vcpus", "1"]
devices = ["/dev/kvm"]
restart = "always"
required = false
"#,
    );
    let mut g = keel_tests::Guest::boot(&disk);
    g.expect("keel: ready ", keel_tests::BOOT_TIMEOUT);
    g.prompt();
    let log = g.poll_shell("sleep 5; keelctl logs vmmbench", 200, |l| {
        l.matches("guest init reached").count() >= boots
    });
    g.send("keelctl poweroff\n");
    g.wait_exit(keel_tests::COMMAND_TIMEOUT);
    Ok(log
        .lines()
        .filter(|l| l.contains("guest init reached"))
        .filter_map(|l| {
            l.split_whitespace()
                .skip_while(|w| *w != "reached")
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
        })
        .take(boots)
        .collect())
}

pub fn vmm(runs: usize, boots: usize) -> anyhow::Result<()> {
    if runs == 0 || boots == 0 {
        bail!("--runs and --boots must be at least 1");
    }
    crate::image()?;
    let kernel = root().join("out/vmlinuz");
    let work = root().join("target/bench-vmm");
    std::fs::create_dir_all(&work)?;
    let (mut own, mut k_mem, mut q_mem, mut k_st, mut q_st) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let (ms, mem) = keel_vmm_run(&kernel)?;
        own.push(ms);
        k_mem.push(mem);
        q_mem.push(qemu_rss(&kernel)?);
        k_st.push(first_kvm_run(keel_vmm_cmd(&kernel), &work)?);
        q_st.push(first_kvm_run(qemu_cmd(&kernel), &work)?);
    }
    let over = |v: &[(u64, u64)]| median(v.iter().map(|(t, g)| (t - g) as f64 / 1024.0).collect());
    let total = |v: &[(u64, u64)]| median(v.iter().map(|(t, _)| *t as f64 / 1024.0).collect());
    let (ko, qo) = (over(&k_mem), over(&q_mem));
    let (ks, qs) = (
        median(k_st.iter().map(|p| p.0).collect()),
        median(q_st.iter().map(|p| p.0).collect()),
    );
    let (k_slot, q_slot) = (
        median(k_st.iter().map(|p| p.1).collect()),
        median(q_st.iter().map(|p| p.1).collect()),
    );
    let nested = nested(boots, &work)?;
    let kernel_release = String::from_utf8_lossy(&Command::new("uname").arg("-r").output()?.stdout)
        .trim()
        .to_string();
    let qemu_version = String::from_utf8_lossy(
        &Command::new("qemu-system-x86_64")
            .arg("--version")
            .output()?
            .stdout,
    )
    .lines()
    .next()
    .unwrap_or_default()
    .to_string();
    let report = format!(
        "# keel-vmm\n\n\
`cargo xtask bench vmm --runs {runs} --boots {boots}`, one run on one machine (host kernel {kernel_release}).\n\n\
## Start and memory, on this machine's /dev/kvm\n\n\
Both monitors get the keel kernel (out/vmlinuz), 1 vCPU and 128 MiB, serial to nowhere: keel-vmm \
with its defaults, QEMU {qemu} as `-M microvm -enable-kvm -cpu qemu64 -nodefaults -no-user-config`. \
This host's KVM enters guests but cannot run a Linux guest to completion (DESIGN.md), so what is \
measured here is everything up to the guest running. Medians of {runs} starts each.\n\n\
| | keel-vmm | QEMU microvm | keel-vmm ÷ QEMU |\n|---|---|---|---|\n\
| exec → first KVM_RUN, both under `strace -f` (ms) | {ks:.1} | {qs:.1} | {:.2} |\n\
| of which KVM adding the guest's memory (KVM_SET_USER_MEMORY_REGION, ms) | {k_slot:.1} | {q_slot:.1} | |\n\
| resident memory beyond guest RAM (MiB) | {ko:.2} | {qo:.2} | {:.2} |\n\
| resident memory in all (MiB) | {:.2} | {:.2} | |\n\n\
keel-vmm's own count from its start (main) to the first vCPU entry, without strace: {:.1} ms \
(median; it prints `first vCPU entry N us after the VMM started`). keel-vmm loads the kernel on a \
second thread while KVM sets up the VM and adds its memory. Memory is summed from /proc/PID/smaps \
half a second (keel-vmm, once its vCPU runs) or a second (QEMU) after start; guest RAM is the \
mapping of 128 MiB (QEMU's may be a little larger for alignment), whatever of it the guest touched.\n\n\
Targets (issue 7): start to first vCPU entry ≤ 5 ms; overhead ≤ 3 MiB.\n\n\
## Start to guest init, nested\n\n\
A keel host in QEMU under TCG (`-cpu max`, so its KVM nests) runs keel-vmm as a service that \
restarts when the guest reboots; the guest's init (tests/vmm-guest/init.c) writes keel-vmm's \
boot timer, which prints the time since keel-vmm started. {n} boots: median {:.0} ms (all: {all}). \
This is emulation inside emulation, hundreds of times slower than KVM on hardware: it says the \
path works, not how fast it is. QEMU is not in a keel image, so there is no peer in that setting.\n",
        ks / qs,
        ko / qo,
        total(&k_mem),
        total(&q_mem),
        median(own),
        median(nested.clone()),
        qemu = qemu_version.trim_start_matches("QEMU emulator "),
        n = nested.len(),
        all = nested.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(", "),
    );
    print!("{report}");
    std::fs::write(root().join("docs/bench-vmm.md"), &report)?;
    Ok(())
}

//! `cargo xtask bench init`: how long it takes to start `/bin/true` in a
//! confined container (all namespaces, a cgroup, seccomp, no capabilities,
//! no_new_privs, read-only root) with keel-init's launcher, crun and runc,
//! on the same rootfs and machine, in one run. Medians and ratios, written
//! to docs/bench-init.md. Timings are never asserted: this machine is
//! shared and noisy, and only the ratios within one run mean anything.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

use keel_image_builder::cache::Cache;
use keel_image_builder::recipe;
use keel_tests::host::{cached_busybox, cgroup2_mount, HostInit};

use crate::{root, run, MUSL};

/// Today's date (UTC), for benchmark docs.
pub(crate) fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A container root with busybox's `true`, built from the same cached
/// busybox as the image.
pub(crate) fn stage_rootfs(dir: &Path) -> anyhow::Result<()> {
    let busybox = cached_busybox(&root()).map_err(anyhow::Error::msg)?;
    let _ = std::fs::remove_dir_all(dir);
    for d in ["bin", "proc", "sys", "dev", "tmp", "run", "etc"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let (_, src) = busybox
        .files
        .first()
        .context("busybox package has no files")?;
    std::fs::copy(src, dir.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", dir.join("bin/true"))?;
    Ok(())
}

/// keel-init's launcher bench, built static; its path.
pub(crate) fn build_launch_bench() -> anyhow::Result<PathBuf> {
    run(crate::cargo().args([
        "build",
        "--release",
        "--target",
        MUSL,
        "-p",
        "keel-init",
        "--bin",
        "keel-launch-bench",
    ]))?;
    Ok(root().join(format!("target/{MUSL}/release/keel-launch-bench")))
}

pub(crate) fn cgroup2() -> anyhow::Result<PathBuf> {
    cgroup2_mount().map_err(anyhow::Error::msg)
}

/// An OCI bundle for the same container: same namespaces, no capabilities,
/// no_new_privs, read-only root, and keel's default seccomp deny list.
fn oci_bundle(bundle: &Path, rootfs: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(bundle)?;
    let _ = std::fs::remove_file(bundle.join("config.json"));
    run(Command::new("crun").arg("spec").current_dir(bundle))?;
    let path = bundle.join("config.json");
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    c["process"]["args"] = serde_json::json!(["/bin/true"]);
    c["process"]["terminal"] = false.into();
    c["process"]["noNewPrivileges"] = true.into();
    if let Some(caps) = c["process"]["capabilities"].as_object_mut() {
        for v in caps.values_mut() {
            *v = serde_json::json!([]);
        }
    }
    c["root"] = serde_json::json!({ "path": rootfs, "readonly": true });
    // keel confines devices by giving a container only the device nodes it
    // lists; it loads no cgroup BPF device program, so neither should the
    // OCI runtimes (crun's also needs CAP_SYS_RESOURCE to raise
    // RLIMIT_MEMLOCK, which some sandboxes withhold from root).
    if let Some(linux) = c["linux"].as_object_mut() {
        linux.remove("resources");
    }
    c["linux"]["seccomp"] = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{ "names": keel_formats::limits::DEFAULT_DENY, "action": "SCMP_ACT_ERRNO" }],
    });
    std::fs::write(&path, serde_json::to_string_pretty(&c)?)?;
    Ok(())
}

/// Wall-clock milliseconds of `runs` starts with an OCI runtime CLI, or why
/// it cannot run here.
/// What `keel-launch-bench run` starts: the container keel-launch-bench
/// starts in process, as a definition file.
const LAUNCH_DEF: &str =
    "command = [\"/bin/true\"]\n[namespaces]\nnet = \"private\"\n[rootfs]\ncontents = []\n";

/// Milliseconds of each of `runs` runs of the command `make` makes, from
/// spawn to exit on this process's clock: the same clock for every
/// runtime.
fn timed_runs(runs: usize, mut make: impl FnMut() -> Command) -> Result<Vec<f64>, String> {
    let mut out = Vec::new();
    for _ in 0..runs {
        let mut cmd = make();
        let start = Instant::now();
        let o = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        if !o.status.success() {
            let err = String::from_utf8_lossy(&o.stderr);
            return Err(err.lines().next().unwrap_or("failed").to_string());
        }
        out.push(ms);
    }
    Ok(out)
}

fn oci_runs(runtime: &str, bundle: &Path, runs: usize) -> Result<Vec<f64>, String> {
    let mut i = 0;
    timed_runs(runs, || {
        i += 1;
        let mut c = Command::new(runtime);
        c.args(["run", "--bundle"])
            .arg(bundle)
            .arg(format!("keel-bench-{}-{i}", std::process::id()));
        c
    })
}

/// keel-init's resident memory as PID 1 of a fresh PID namespace on this
/// machine, supervising `n` services, measured once every one is ready.
fn init_rss(work: &Path, n: usize) -> anyhow::Result<u64> {
    use keel_image_builder::rootfs::{self, StagedContainer};
    let busybox = cached_busybox(&root()).map_err(anyhow::Error::msg)?;
    let text = "command = [\"/bin/sleep\", \"100000\"]\nstop_signal = \"SIGKILL\"\n[rootfs]\ncontents = [\"busybox\"]\n";
    let containers: Vec<StagedContainer> = (0..n)
        .map(|i| {
            Ok(StagedContainer {
                name: format!("svc{i}"),
                def: keel_formats::container::ContainerDef::parse(text)?,
                text: text.to_string(),
                oci: None,
                files: Vec::new(),
            })
        })
        .collect::<Result<_, keel_formats::container::ContainerError>>()?;
    let bins = root().join(format!("target/{MUSL}/release"));
    let dir = work.join("init-root");
    rootfs::stage(
        &dir,
        &rootfs::Inputs {
            keel_init: &bins.join("keel-init"),
            keelctl: &bins.join("keelctl"),
            bin_dir: &bins,
            packages: &[busybox],
            containers: &containers,
            os_release: "ID=keel\nVERSION_ID=bench\n",
            files: &[],
            extra: &[],
        },
    )?;
    // Dropping the harness ends the namespace and removes its cgroup.
    let host =
        HostInit::start(&dir, std::time::Duration::from_secs(120)).map_err(anyhow::Error::msg)?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", host.init_pid))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

/// Give this process a mount namespace whose /sys/fs/cgroup is the
/// unified hierarchy alone, so that every runtime measured uses the same
/// cgroup v2 tree even on a host that mounts v1 controllers beside it
/// (crun refuses such "hybrid" hosts).
pub(crate) fn unified_cgroup_view() -> anyhow::Result<()> {
    // SAFETY: unshare with a flag; xtask has no other threads at this point.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        bail!("unshare(CLONE_NEWNS): {}", std::io::Error::last_os_error());
    }
    run(Command::new("mount").args(["--make-rprivate", "/"]))?;
    let st = std::fs::read_to_string("/proc/self/mountinfo")?;
    let is_v2 = st.lines().any(|l| {
        l.split_whitespace().nth(4) == Some("/sys/fs/cgroup")
            && l.split(" - ")
                .nth(1)
                .is_some_and(|t| t.starts_with("cgroup2 "))
    });
    if !is_v2 {
        run(Command::new("mount").args(["-t", "cgroup2", "none", "/sys/fs/cgroup"]))?;
    }
    Ok(())
}

pub fn init(runs: usize, boots: usize) -> anyhow::Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    for tool in ["crun", "runc"] {
        if Command::new(tool).arg("--version").output().is_err() {
            run(Command::new("apt-get")
                .args(["install", "-y", "-q", "crun", "runc"])
                .env("DEBIAN_FRONTEND", "noninteractive"))?;
            break;
        }
    }
    let bench = build_launch_bench()?;
    unified_cgroup_view()?;
    let work = root().join("target/bench-init");
    let rootfs = work.join("rootfs");
    stage_rootfs(&rootfs)?;
    let cg = cgroup2()?.join(format!("keel-bench-{}", std::process::id()));
    std::fs::create_dir_all(&cg)?;

    let out = Command::new(&bench)
        .arg(&rootfs)
        .arg(&cg)
        .arg(runs.to_string())
        .output()?;
    if !out.status.success() {
        bail!(
            "keel-launch-bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let keel: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.parse::<f64>().ok())
        .map(|us| us / 1000.0)
        .collect();
    let bundle = work.join("bundle");
    oci_bundle(&bundle, &rootfs)?;
    let in_process = median(keel);
    let def = work.join("true.toml");
    std::fs::write(&def, LAUNCH_DEF)?;
    let whole = timed_runs(runs, || {
        let mut c = Command::new(&bench);
        c.arg("run").arg(&def).arg(&rootfs).arg(&cg);
        c
    });
    let _ = std::fs::remove_dir(&cg);
    let whole = median(whole.map_err(anyhow::Error::msg)?);
    let crun = median(oci_runs("crun", &bundle, runs).map_err(anyhow::Error::msg)?);
    let runc = oci_runs("runc", &bundle, runs).map(median);

    let mut table =
        String::from("| runtime | median start of /bin/true (ms) | ÷ crun |\n|---|---|---|\n");
    table.push_str(&format!(
        "| keel launcher, whole process (`keel-launch-bench run`: reads the definition, plans, starts, reaps) | {whole:.2} | {:.3} |\n",
        whole / crun
    ));
    table.push_str(&format!("| crun | {crun:.2} | 1.000 |\n"));
    match runc {
        Ok(m) => table.push_str(&format!("| runc | {m:.2} | {:.3} |\n", m / crun)),
        Err(e) => table.push_str(&format!("| runc | cannot run here: {e} | - |\n")),
    }
    table.push_str(&format!(
        "| keel launcher in process (as keel-init starts a service: definition planned and cgroup opened once) | {in_process:.2} | {:.3} |\n",
        in_process / crun
    ));
    table.push_str("\nTarget (issue 3): keel ≤ 0.5 × crun, whole process against whole process.\n");
    run(crate::cargo().args([
        "build",
        "--release",
        "--target",
        MUSL,
        "-p",
        "keel-init",
        "-p",
        "keelctl",
    ]))?;
    let rss = init_rss(&work, 10)?;
    table.push_str(&format!(
        "\n| keel-init as PID 1 | resident memory |\n|---|---|\n| supervising 10 services, all ready | {:.2} MiB (target ≤ 3 MiB) |\n",
        rss as f64 / 1024.0
    ));
    table.push_str(&boot(boots)?);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let report = format!(
        "# Container start latency\n\n`cargo xtask bench init --runs {runs}`: start `/bin/true` in a container \
         with new mount, PID, IPC, UTS and network namespaces, its own cgroup, keel's default seccomp deny list, \
         no capabilities, no_new_privs, the OCI defaults' masked and read-only /proc and /sys paths and a \
         read-only busybox root, then reap it. Each runtime is timed as a whole command, from spawn to exit \
         on the same clock: crun and runc reading the bundle's config.json, keel's launcher \
         (`keel-launch-bench run`) reading a container definition. keel-init's launcher in process (as \
         keel-init starts a service) is a second keel row. \
         All three use the same cgroup v2 hierarchy, and none loads a BPF device program. \
         Medians of {runs} runs each, on kernel {}, {machine}, {date}; {crun_v}, {runc_v}. \
         Written by that command.\n\n{table}",
        kernel.trim(),
        machine = crate::bench_fleet::machine(),
        date = today(),
        crun_v = crate::bench_pull::first_line("crun", "--version"),
        runc_v = crate::bench_pull::first_line("runc", "--version"),
    );
    print!("{report}");
    std::fs::write(root().join("docs/bench-init.md"), &report)?;
    Ok(())
}

/// The floor: the same kernel with busybox init and nothing else, its
/// inittab printing the uptime when it starts and when /proc, /sys, /dev
/// and /run are mounted.
fn floor_disk(dir: &Path) -> anyhow::Result<PathBuf> {
    use keel_image_builder::initramfs::{base_entries, write_cpio, Entry};
    use keel_image_builder::{disk, esp, kernel, uki};
    let image = recipe::load_image(&root().join("recipes/host.toml"))?;
    let cache = Cache::new(Cache::default_root()?);
    let k = kernel::ensure(&cache, &image, 2, &mut keel_image_builder::progress::Quiet)?;
    let busybox = cached_busybox(&root()).map_err(anyhow::Error::msg)?;
    let (_, bb) = busybox
        .files
        .first()
        .context("busybox package has no files")?;
    let rc = "#!/bin/busybox sh\n\
              read up _ < /proc/uptime 2>/dev/null || { /bin/busybox mount -t proc proc /proc; read up _ < /proc/uptime; }\n\
              echo \"floor: start uptime=$up\"\n\
              /bin/busybox mount -t sysfs sysfs /sys\n\
              /bin/busybox mount -t devtmpfs devtmpfs /dev\n\
              /bin/busybox mount -t tmpfs tmpfs /run\n\
              read up _ < /proc/uptime\n\
              echo \"floor: ready uptime=$up\"\n\
              /bin/busybox poweroff -f\n";
    let mut entries = base_entries();
    entries.extend([
        Entry::Dir {
            path: "run".into(),
            mode: 0o755,
        },
        Entry::Dir {
            path: "bin".into(),
            mode: 0o755,
        },
        Entry::File {
            path: "bin/busybox".into(),
            mode: 0o755,
            data: std::fs::read(bb)?,
        },
        Entry::File {
            path: "init".into(),
            mode: 0o755,
            data: std::fs::read(bb)?,
        },
        Entry::Dir {
            path: "etc".into(),
            mode: 0o755,
        },
        Entry::File {
            path: "etc/inittab".into(),
            mode: 0o644,
            data: b"::sysinit:/etc/rc\n".to_vec(),
        },
        Entry::File {
            path: "etc/rc".into(),
            mode: 0o755,
            data: rc.as_bytes().to_vec(),
        },
    ]);
    let mut cpio = Vec::new();
    write_cpio(&entries, &mut cpio)?;
    let uki_bytes = uki::assemble(
        &std::fs::read("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")?,
        &uki::Payload {
            osrel: b"ID=keel-floor\nVERSION_ID=0\n",
            cmdline: image.recipe.kernel.cmdline.as_bytes(),
            uname: k.release.as_bytes(),
            linux: &std::fs::read(&k.bzimage)?,
            initrd: &cpio,
        },
    )?;
    let boot = std::fs::read("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")?;
    let esp_img = esp::build(
        64 << 20,
        7,
        &[
            ("EFI/BOOT/BOOTX64.EFI".into(), boot),
            ("loader/loader.conf".into(), b"timeout 0\n".to_vec()),
            ("EFI/Linux/floor.efi".into(), uki_bytes),
        ],
    )?;
    let path = dir.join("floor.img");
    disk::write(
        &path,
        "keel floor",
        &[disk::PartSpec {
            role: keel_formats::disk::Role::Esp,
            size_mib: 64,
            content: disk::Content::Bytes(&esp_img),
        }],
    )?;
    Ok(path)
}

/// Boot `disk` under TCG until `done` appears on the console; the console.
fn boot_console(disk: &Path, done: &str) -> anyhow::Result<String> {
    Ok(boot_until(disk, None, None, done)?.console)
}

/// One boot of [`boot_until`].
pub(crate) struct Boot {
    /// From starting QEMU to the first byte of `done` on the console.
    pub wall: std::time::Duration,
    pub console: String,
}

/// Boot `disk` under TCG (with Secure Boot and the keys of `keys`, with
/// the TPM whose state is `tpm`) until the whole line with `done` is on
/// the console.
pub(crate) fn boot_until(
    disk: &Path,
    keys: Option<&Path>,
    tpm: Option<&Path>,
    done: &str,
) -> anyhow::Result<Boot> {
    use keel_image_builder::qemu::{self, Accel, RunOptions};
    use std::io::Read;
    let vars = disk.with_extension("vars");
    let _ = std::fs::remove_file(&vars);
    let o = RunOptions {
        disk: disk.to_path_buf(),
        vars,
        accel: Accel::Tcg,
        memory_mib: 512,
        cpus: 2,
        no_reboot: true,
        forwards: Vec::new(),
        publish: Vec::new(),
        direct: None,
        secure_boot: keys.map(Path::to_path_buf),
        tpm: tpm.map(Path::to_path_buf),
    };
    qemu::prepare(&o)?;
    if let Some(state) = tpm {
        qemu::start_tpm(state)?;
    }
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(qemu::qemu_args(&o, false))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let deadline = started + std::time::Duration::from_secs(300);
    let mut wall = None;
    while Instant::now() < deadline {
        let n = out.read(&mut buf)?;
        if n == 0 {
            break;
        }
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        if let Some(i) = seen.find(done) {
            wall.get_or_insert_with(|| started.elapsed());
            // Read until the whole line with `done` has arrived.
            if seen[i..].contains('\n') {
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let Some(wall) = wall else {
        bail!("no {done:?} on the console:\n{seen}");
    };
    Ok(Boot {
        wall,
        console: seen,
    })
}

pub(crate) fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.parse().ok())
}

/// Boot time in QEMU, from kernel start to PID 1 and to ready, of the
/// default keel image against the busybox-init floor on the same kernel.
pub fn boot(boots: usize) -> anyhow::Result<String> {
    if boots == 0 {
        bail!("--boots must be at least 1");
    }
    let disk = crate::image()?;
    let work = root().join("target/bench-boot");
    std::fs::create_dir_all(&work)?;
    let floor = floor_disk(&work)?;
    let (mut keel, mut fl) = (Vec::new(), Vec::new());
    for _ in 0..boots {
        let copy = work.join("keel.img");
        run(Command::new("cp")
            .arg("--sparse=always")
            .arg(&disk)
            .arg(&copy))?;
        let c = boot_console(&copy, "keel: ready ")?;
        // The last console of each, for a look at where the time went.
        std::fs::write(work.join("keel-console.txt"), &c)?;
        let line = c
            .lines()
            .find(|l| l.contains("keel: ready "))
            .unwrap_or_default();
        let ready = field(line, "ms=").context("ready line without ms=")?;
        let start = field(line, "init_start_ms=").context("ready line without init_start_ms=")?;
        keel.push((start, ready));
        let c = boot_console(&floor, "floor: ready")?;
        std::fs::write(work.join("floor-console.txt"), &c)?;
        let up = |tag: &str| {
            c.lines()
                .find(|l| l.contains(tag))
                .and_then(|l| field(l, "uptime="))
                .map(|s| s * 1000.0)
        };
        fl.push((
            up("floor: start").context("no floor start")?,
            up("floor: ready").context("no floor ready")?,
        ));
    }
    let med = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| median(v.iter().map(f).collect());
    let (ks, kr) = (med(&keel, |p| p.0), med(&keel, |p| p.1));
    let (fs, fr) = (med(&fl, |p| p.0), med(&fl, |p| p.1));
    // The load on a shared machine drifts from one boot to the next more
    // than keel and the floor differ, so each keel boot is compared with
    // the floor boot right after it, and the ratios are summarised.
    let mut ratios: Vec<f64> = keel.iter().zip(&fl).map(|(k, f)| k.1 / f.1).collect();
    ratios.sort_by(f64::total_cmp);
    let (lo, hi) = (ratios[0], ratios[ratios.len() - 1]);
    // How much of the difference is the kernel's, before either PID 1.
    let kernel_gap = median(keel.iter().zip(&fl).map(|(k, f)| k.0 - f.0).collect());
    Ok(format!(
        "\n| boot under TCG (ms since kernel start, median of {boots}) | PID 1 starts | ready | PID 1 → ready |\n|---|---|---|---|\n\
         | keel (dm-verity root, switch root, the default image: admin, web, update) | {ks:.0} | {kr:.0} | {:.0} |\n\
         | busybox init floor (same kernel, initramfs only) | {fs:.0} | {fr:.0} | {:.0} |\n\n\
         keel ready ÷ floor ready, each keel boot against the floor boot that follows it: \
         median {:.2} (range {lo:.2}–{hi:.2} over {boots} pairs). \
         keel's PID 1 starts {kernel_gap:.0} ms after the floor's (median of the pairs' differences).\n\n\
         Target (issue 3): keel ready ≤ 1.2 × the floor.\n",
        kr - ks,
        fr - fs,
        ratios[ratios.len() / 2],
    ))
}

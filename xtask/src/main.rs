//! `cargo xtask`: setting up a machine, building the default image, the
//! demo, the whole test suite and benchmarks.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

mod bench;
mod bench_build;
mod bench_delta;
mod bench_fleet;
mod bench_net;
mod bench_pull;
mod bench_pull_guest;
mod bench_secureboot;
mod bench_update;
mod bench_vmm;
#[cfg(test)]
mod msrv;

/// Debian packages a build and test machine needs.
const APT_PACKAGES: &[&str] = &[
    "build-essential",
    "bc",
    "bison",
    "flex",
    "libelf-dev",
    "libssl-dev",
    "cpio",
    "xz-utils",
    "dpkg-dev",
    "linux-source-6.1",
    "linux-libc-dev",
    "musl-tools",
    "erofs-utils",
    "e2fsprogs",
    "cryptsetup-bin",
    "systemd-boot-efi",
    "ovmf",
    "qemu-system-x86",
    "qemu-utils",
    "socat",
    "dosfstools",
    "util-linux",
    "tzdata",
    "openssh-client",
    "strace",
    "docker-registry",
    "skopeo",
    "nftables",
    "etcd-server",
    "sbsigntool",
    "swtpm",
    "swtpm-tools",
    "systemd",
    "openssl",
];

/// Of [`APT_PACKAGES`], those only the tests and benchmarks use (qcow2
/// outputs, QEMU's guestfwd, SSH to a guest, tracing, a real OCI registry
/// and the tool that pushes images to it, `nft` to read back keel-init's
/// nf_tables rules, a real etcd for the fleet tests, sbsign for the Secure
/// Boot test's signed images, swtpm for the TPM tests, systemd-measure and
/// openssl as the TPM tests' independent PCR and signature makers): `cargo
/// xtask demo` builds the
/// default image and boots it without them.
const TEST_ONLY: &[&str] = &[
    "qemu-utils",
    "socat",
    "openssh-client",
    "strace",
    "docker-registry",
    "skopeo",
    "nftables",
    "etcd-server",
    "sbsigntool",
    "swtpm",
    "swtpm-tools",
    "systemd",
    "openssl",
];
pub(crate) const MUSL: &str = "x86_64-unknown-linux-musl";
/// The deb-src entry is derived from the machine's own apt sources.
const DEB_SRC_FILE: &str = "/etc/apt/sources.list.d/keel-deb-src.sources";

#[derive(Debug, Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install what this machine lacks for the demo and the suite (Debian
    /// packages, deb-src, musl target, nightly and cargo-fuzz).
    Deps,
    /// Build keel-init, keelctl and keel, then the default image into out/.
    Image,
    /// Set up, build the default image, boot it, show `keelctl status`, power off.
    Demo,
    /// Benchmarks; `init`: container start latency of keel-init's launcher
    /// against crun and runc on the same rootfs, keel-init's memory and the
    /// boot time; `boot`: only the boot time against the busybox-init floor;
    /// `update`: slot write speed against dd, bundle size for a one-binary change;
    /// `build`: cold and no-change build times, image sizes;
    /// `vmm`: keel-vmm against QEMU microvm (start, memory) and its
    /// start-to-guest-init time, nested; `pull`: keel-pull against skopeo
    /// pulling one image from a local registry (`--runs` pulls each);
    /// `net`: container start with a veth on a bridge against without,
    /// TCP through the bridge against loopback; `fleet`: 1000 simulated
    /// hosts rolling out a release through a real etcd, 5 % at a time;
    /// `secureboot`: boot time with Secure Boot and a TPM unsealing /var
    /// against without either.
    Bench {
        #[arg(value_parser = ["init", "boot", "update", "build", "vmm", "pull", "net", "fleet", "secureboot"])]
        what: String,
        /// `build`: also time a build with an empty cache (compiles the kernel).
        #[arg(long)]
        with_kernel: bool,
        /// Starts per runtime.
        #[arg(long, default_value_t = 50)]
        runs: usize,
        /// QEMU boots of each image for the boot-time comparison.
        #[arg(long, default_value_t = 3)]
        boots: usize,
    },
    /// Fuzz every parser of hostile input (cargo fuzz, nightly), the time
    /// split between the targets.
    Fuzz {
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
    /// fmt, clippy, unit, integration and QEMU end-to-end tests, and a
    /// short fuzzing run.
    Test {
        /// Extra arguments for the test runner (a filter, say).
        args: Vec<String>,
    },
}

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Packages built from one source that must come in one version: a
/// machine may have a newer qemu-utils than the archive's qemu-system-x86,
/// and apt would remove it to install qemu-system-x86. When one of a group
/// is missing the whole group is installed, at the archive's version.
const TOGETHER: &[&[&str]] = &[&["qemu-system-x86", "qemu-utils"]];

fn missing_packages(tests: bool) -> Vec<&'static str> {
    let mut missing: Vec<&'static str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| tests || !TEST_ONLY.contains(p))
        .filter(|p| {
            let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", p]).output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    for group in TOGETHER {
        if group.iter().any(|p| missing.contains(p)) {
            for p in *group {
                // A member the machine has is kept in step too (it would
                // otherwise be removed), even if this run does not need it.
                if !missing.contains(p) {
                    missing.push(p);
                }
            }
        }
    }
    missing
}

/// `missing` with every member of a [`TOGETHER`] group after the first
/// pinned to the first's candidate version: apt never picks a version
/// below an installed one by itself, even with `--allow-downgrades`.
fn pinned(missing: &[&str]) -> Vec<String> {
    let candidate = |p: &str| {
        let out = Command::new("apt-cache")
            .args(["policy", p])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("Candidate: ").map(str::to_string))
            .filter(|v| v != "(none)")
    };
    missing
        .iter()
        .map(|p| {
            let leader = TOGETHER
                .iter()
                .find(|g| g.contains(p) && g.first() != Some(p))
                .and_then(|g| g.first());
            match leader.and_then(|l| candidate(l)) {
                Some(v) => format!("{p}={v}"),
                None => p.to_string(),
            }
        })
        .collect()
}

/// A deb-src twin of every `deb` entry in the machine's deb822 sources, so
/// `apt-get source` works without naming any mirror here.
fn ensure_deb_src() -> anyhow::Result<bool> {
    if Path::new(DEB_SRC_FILE).exists() {
        return Ok(false);
    }
    let mut out = String::new();
    let dir = Path::new("/etc/apt/sources.list.d");
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "sources") {
            let text = std::fs::read_to_string(&p)?;
            if text
                .lines()
                .any(|l| l.trim() == "Types: deb-src" || l.trim() == "Types: deb deb-src")
            {
                return Ok(false);
            }
            for stanza in text.split("\n\n") {
                if stanza.lines().any(|l| l.trim() == "Types: deb") && stanza.contains("debian") {
                    out.push_str(&stanza.replace("Types: deb", "Types: deb-src"));
                    out.push_str("\n\n");
                }
            }
        }
    }
    if let Ok(list) = std::fs::read_to_string("/etc/apt/sources.list") {
        let src: Vec<String> = list
            .lines()
            .filter(|l| l.starts_with("deb "))
            .map(|l| l.replacen("deb ", "deb-src ", 1))
            .collect();
        if !src.is_empty() {
            std::fs::write(
                "/etc/apt/sources.list.d/keel-deb-src.list",
                src.join("\n") + "\n",
            )?;
        }
    }
    if !out.is_empty() {
        std::fs::write(DEB_SRC_FILE, out)?;
    }
    Ok(true)
}

/// Install what this machine lacks to build and boot images, and with
/// `tests` what the suite needs besides (its packages, nightly and
/// cargo-fuzz).
fn deps(tests: bool) -> anyhow::Result<()> {
    let missing = missing_packages(tests);
    let have_src = Command::new("apt-get")
        .args(["source", "--print-uris", "-qq", "busybox"])
        .stderr(Stdio::null())
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(".dsc"))
        .unwrap_or(false);
    if !missing.is_empty() || !have_src {
        if !is_root() {
            bail!("missing Debian packages {missing:?} (or deb-src entries); run `cargo xtask deps` as root");
        }
        ensure_deb_src()?;
        run(Command::new("apt-get").args(["update", "-q"]))?;
        if !missing.is_empty() {
            run(Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    "--allow-downgrades",
                ])
                .args(pinned(&missing))
                .env("DEBIAN_FRONTEND", "noninteractive"))?;
        }
    }
    let targets = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()?;
    if !String::from_utf8_lossy(&targets.stdout)
        .lines()
        .any(|l| l == MUSL)
    {
        run(Command::new("rustup").args(["target", "add", MUSL]))?;
    }
    if tests {
        fuzz_deps()?;
    }
    Ok(())
}

/// cargo-fuzz needs a nightly toolchain (sanitizer flags) and the
/// cargo-fuzz command itself.
fn fuzz_deps() -> anyhow::Result<()> {
    let toolchains = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()?;
    if !String::from_utf8_lossy(&toolchains.stdout)
        .lines()
        .any(|l| l.starts_with("nightly"))
    {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .context("the fuzz target needs a nightly toolchain")?;
    }
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        run(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

/// The fuzz targets (fuzz/fuzz_targets), each a parser of input keel
/// treats as hostile.
const FUZZ_TARGETS: [&str; 8] = [
    "hostconfig",
    "signed",
    "api",
    "oci_layer",
    "oci_image",
    "virtio",
    "registry",
    "varcrypt",
];

/// Run every fuzz target, `seconds` split between them, each starting
/// from its committed seeds; what they find new stays in target/, a crash
/// fails.
fn fuzz(seconds: u64) -> anyhow::Result<()> {
    fuzz_deps()?;
    let each = (seconds / FUZZ_TARGETS.len() as u64).max(1);
    // One build of all targets, so that the time goes to fuzzing.
    run(Command::new("cargo")
        .current_dir(root())
        .args(["+nightly", "fuzz", "build"]))?;
    let logs = root().join("target/fuzz-logs");
    std::fs::create_dir_all(&logs)?;
    for target in FUZZ_TARGETS {
        let scratch = root().join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&scratch)?;
        // libFuzzer's chatter goes to a log: the suite's own output (the
        // tests' summary) is what a CI log's tail must show.
        let log_path = logs.join(format!("{target}.log"));
        let log = std::fs::File::create(&log_path)?;
        let status = Command::new("cargo")
            .current_dir(root())
            .args(["+nightly", "fuzz", "run", target])
            .arg(&scratch)
            .arg(root().join("fuzz/corpus").join(target))
            .arg("--")
            .arg(format!("-max_total_time={each}"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .with_context(|| format!("running the fuzz target {target}"))?;
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let done = text
            .lines()
            .rev()
            .find(|l| l.starts_with("Done "))
            .unwrap_or("no runs");
        eprintln!("xtask: fuzz {target}: {done} ({})", log_path.display());
        if !status.success() {
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines
                .get(lines.len().saturating_sub(80)..)
                .unwrap_or_default();
            eprintln!("{}", tail.join("\n"));
            bail!("the fuzz target {target} failed ({status}): see above");
        }
    }
    Ok(())
}

pub(crate) fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Build the binaries and the default image; returns the disk's path.
pub(crate) fn image() -> anyhow::Result<PathBuf> {
    run(cargo().args([
        "build",
        "--release",
        "--target",
        MUSL,
        "-p",
        "keel-init",
        "-p",
        "keelctl",
        "-p",
        "keel-probe",
        "-p",
        "keel-update",
        "-p",
        "keel-vmm",
        "-p",
        "keel-pull",
        "-p",
        "keel-remote",
    ]))?;
    run(cargo().args(["build", "--release", "-p", "keel-image-builder"]))?;
    let started = Instant::now();
    run(Command::new(root().join("target/release/keel"))
        .current_dir(root())
        .args([
            "build",
            "recipes/host.toml",
            "--out",
            "out",
            "--bin-dir",
            &format!("target/{MUSL}/release"),
        ]))?;
    eprintln!(
        "xtask: image built in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(root().join("out/disk.img"))
}

/// The image the limits tests boot: the default one plus test containers.
fn test_image() -> anyhow::Result<PathBuf> {
    run(Command::new(root().join("target/release/keel"))
        .current_dir(root())
        .args([
            "build",
            "tests/recipes/limits.toml",
            "--out",
            "out/test",
            "--bin-dir",
            &format!("target/{MUSL}/release"),
        ]))?;
    Ok(root().join("out/test/disk.img"))
}

/// Read the serial console until `pattern` appears or `timeout` passes.
fn expect(
    rx: &mpsc::Receiver<String>,
    seen: &mut String,
    pattern: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !seen.contains(pattern) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => seen.push_str(&chunk),
            Err(_) => bail!("no {pattern:?} on the console within {timeout:?}"),
        }
    }
    Ok(())
}

fn demo() -> anyhow::Result<()> {
    deps(false)?;
    let disk = image()?;
    let mut child = Command::new(root().join("target/release/keel"))
        .args(["run", "--no-reboot"])
        .arg(&disk)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting keel run")?;
    let mut stdin = child.stdin.take().context("qemu stdin")?;
    let mut stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            print!("{text}");
            let _ = std::io::stdout().flush();
            if tx.send(text).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let boot = Duration::from_secs(300);
    expect(&rx, &mut seen, "keel: ready ", boot)?;
    expect(&rx, &mut seen, "keel-admin# ", Duration::from_secs(60))?;
    stdin.write_all(b"keelctl status\n")?;
    seen.clear();
    expect(&rx, &mut seen, "keel-admin# ", Duration::from_secs(60))?;
    stdin.write_all(b"keelctl poweroff\n")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            println!("\nxtask: the guest powered off; QEMU exited with {status}");
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the guest did not power off within 60 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn test(args: &[String]) -> anyhow::Result<()> {
    let started = Instant::now();
    let result = test_steps(args);
    eprintln!(
        "xtask: the suite took {:.0} s ({})",
        started.elapsed().as_secs_f64(),
        if result.is_ok() { "passed" } else { "failed" }
    );
    result
}

fn test_steps(args: &[String]) -> anyhow::Result<()> {
    deps(true)?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let disk = image()?;
    let test_disk = test_image()?;
    let nextest = Command::new("cargo-nextest")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    // Fuzzing first, and its failure reported after the tests: the tests'
    // summary (failures again, with their output) ends the log, where a
    // CI log's tail shows it. A filtered run is someone iterating on a few
    // tests: no fuzzing.
    let fuzzed = if args.is_empty() { fuzz(60) } else { Ok(()) };
    let mut cmd = cargo();
    if nextest {
        cmd.args([
            "nextest",
            "run",
            "--workspace",
            "--no-fail-fast",
            "--failure-output",
            "immediate-final",
        ]);
    } else {
        cmd.args(["test", "--workspace", "--no-fail-fast"]);
    }
    cmd.args(args)
        .env("KEEL_DISK", &disk)
        .env("KEEL_TEST_DISK", &test_disk)
        .env("KEEL_BIN", root().join("target/release/keel"))
        .env(
            "KEEL_MUSL_BIN_DIR",
            root().join(format!("target/{MUSL}/release")),
        );
    let tests = run(&mut cmd);
    tests.and(fuzzed)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Deps => deps(true),
        Cmd::Image => image().map(|d| eprintln!("xtask: {}", d.display())),
        Cmd::Demo => demo(),
        Cmd::Test { args } => test(&args),
        Cmd::Fuzz { seconds } => fuzz(seconds),
        Cmd::Bench {
            what,
            runs,
            boots,
            with_kernel,
        } => match what.as_str() {
            "build" => bench_build::build(with_kernel),
            "boot" => {
                print!("{}", bench::boot(boots)?);
                Ok(())
            }
            "update" => bench_update::update(),
            "vmm" => bench_vmm::vmm(runs, boots),
            "pull" => bench_pull::pull(runs),
            "net" => bench_net::net(runs),
            "fleet" => bench_fleet::fleet(),
            "secureboot" => bench_secureboot::secureboot(boots),
            _ => bench::init(runs, boots),
        },
    }
}

//! `cargo xtask bench pull`: keel-pull against skopeo pulling the same
//! ~50 MB multi-layer image from the same local registry (Debian's
//! docker-registry on 127.0.0.1, plain http) into an OCI image layout on
//! the same disk, in one run, alternating, each into a fresh folder; then
//! the guest half ([`crate::bench_pull_guest`]).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use keel_tests::fixtures::noise;
use keel_tests::registry::{image_layout, push, Options, Push, Registry, GUEST_ADDRESS};

use crate::bench::median;
use crate::{root, run};

/// Layers of the image: incompressible bytes, so gzip leaves them their
/// size and the bytes on the wire are the image's.
const LAYERS: usize = 5;
const LAYER_BYTES: usize = 10 << 20;

fn timed(cmd: &mut Command) -> anyhow::Result<f64> {
    let started = Instant::now();
    let out = cmd.output()?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The first line a tool prints for `arg` (its version), or why it did not.
pub(crate) fn first_line(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_else(|e| format!("({e})"))
}

fn package_version(name: &str) -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", name])
        .output()
        .map(|o| format!("{name} {}", String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_else(|e| format!("({e})"))
}

fn size_of_dir(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match e.metadata() {
            Ok(m) if m.is_dir() => total += size_of_dir(&e.path()),
            Ok(m) => total += m.len(),
            Err(_) => {}
        }
    }
    total
}

fn guest_layer_mib() -> usize {
    crate::bench_pull_guest::LAYER_BYTES >> 20
}

pub fn pull(runs: usize) -> anyhow::Result<()> {
    run(crate::cargo().args(["build", "--release", "-p", "keel-pull"]))?;
    let keel_pull = root().join("target/release/keel-pull");
    let work = root().join("target/bench-pull");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;

    let layers: Vec<Vec<u8>> = (0..LAYERS)
        .map(|i| noise(0x9e37_79b9_7f4a_7c15 ^ ((i as u64 + 1) << 33), LAYER_BYTES))
        .collect();
    let files: Vec<Vec<(&str, Vec<u8>)>> = layers
        .iter()
        .map(|bytes| vec![("data/blob", bytes.clone())])
        .collect();
    let layout = work.join("layout");
    image_layout(&layout, "1", "amd64", &files);
    let registry = Registry::start(Options::http());
    push(&registry, &layout, "1", "bench/app:1", &Push::default());
    let reference = format!("{}/bench/app:1", registry.host());

    let (mut keel, mut skopeo) = (Vec::new(), Vec::new());
    let mut bytes = 0;
    for i in 0..runs {
        let k_dir = work.join(format!("keel-{i}"));
        let s_dir = work.join(format!("skopeo-{i}"));
        let keel_run = |dir: &Path| {
            timed(
                Command::new(&keel_pull)
                    .args(["pull", "--insecure", "--store"])
                    .arg(dir)
                    .arg(&reference),
            )
        };
        let skopeo_run = |dir: &Path| {
            timed(
                Command::new("skopeo")
                    .args([
                        "--insecure-policy",
                        "copy",
                        "--quiet",
                        "--src-tls-verify=false",
                        "--preserve-digests",
                    ])
                    .arg(format!("docker://{reference}"))
                    .arg(format!("oci:{}:1", dir.display())),
            )
        };
        // Alternate who goes first: neither gets the warmer page cache
        // of the registry's files every time.
        if i % 2 == 0 {
            keel.push(keel_run(&k_dir)?);
            skopeo.push(skopeo_run(&s_dir)?);
        } else {
            skopeo.push(skopeo_run(&s_dir)?);
            keel.push(keel_run(&k_dir)?);
        }
        bytes = size_of_dir(&k_dir.join("blobs"));
        let s_bytes = size_of_dir(&s_dir.join("blobs"));
        if s_bytes != bytes {
            bail!("keel-pull stored {bytes} bytes of blobs, skopeo {s_bytes}: not the same work");
        }
        std::fs::remove_dir_all(&k_dir).context("removing a run's store")?;
        std::fs::remove_dir_all(&s_dir).context("removing a run's layout")?;
    }
    let guest = crate::bench_pull_guest::measure(&registry, &work, &layers[0], 3)?;
    let (k, s) = (median(keel), median(skopeo));
    let mbps = |t: f64| bytes as f64 / 1e6 / t;
    let report = format!(
        "# Pull benchmark\n\n\
`cargo xtask bench pull --runs {runs}`, one run on one machine ({} cores, host kernel {}).\n\n\
The same image ({LAYERS} gzip layers of {} MiB of incompressible bytes, {:.1} MB of blobs in all) \
pushed once to Debian's docker-registry ({}) on 127.0.0.1 over plain http, then pulled {runs} times \
by each into a fresh OCI image layout under target/ (same disk), alternating which goes first: \
`keel-pull pull --insecure --store DIR REF` (release build) and \
`skopeo copy --src-tls-verify=false --preserve-digests docker://REF oci:DIR:1` ({}). \
Both fetch the manifest and every blob, check each blob's sha256 and write it to disk; \
the bench checks both stored the same bytes.\n\n\
| puller | median time (s) | throughput (MB/s) |\n|---|---|---|\n\
| keel-pull | {k:.3} | {:.1} |\n\
| skopeo | {s:.3} | {:.1} |\n\n\
keel-pull's throughput is **{:.2}×** skopeo's (target: ≥ 1.0×).\n\n\
## From `keelctl image pull` to the container running\n\n\
The default image booted in QEMU with TCG, as the tests boot it (this machine's /dev/kvm is a \
paravirtual one QEMU's KVM accelerator hangs on, so the guest runs emulated and its times are far \
above a real host's), its host config naming the same registry (insecure, \
reached at {GUEST_ADDRESS}:5000 through QEMU's guestfwd). In one shell line in the guest, timed by \
the guest's /proc/uptime: `keelctl image pull REF` of a busybox image with an {} MiB layer of \
incompressible bytes ({:.1} MB of files), then `keelctl config apply` of a config with a container \
on it (`pull = \"never\"`) until `keelctl list` says it runs (keel-init's checked copy out of the \
store, the unpack, the start). Median of {} runs; between runs the container is removed and \
`keelctl image prune` takes the image and its unpacked root. No peer runs inside the guest.\n\n\
| step | median (s) |\n|---|---|\n\
| `keelctl image pull` | {:.2} |\n\
| `config apply` to running | {:.2} |\n\
| in all | {:.2} |\n\n\
keel-init's VmRSS: {} KiB after boot with no registry image; with the container running, {} KiB \
after the first pull and {} KiB after the last of {} ({:+} KiB between them). The first step is the \
container itself (its entry in the supervisor's table, its log buffer, its port and retry state); \
the pulls, the checked copy and the unpack run in keel-pull and in helper processes, never in PID 1.\n",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        first_line("uname", "-r"),
        LAYER_BYTES >> 20,
        bytes as f64 / 1e6,
        package_version("docker-registry"),
        first_line("skopeo", "--version"),
        mbps(k),
        mbps(s),
        s / k,
        guest_layer_mib(),
        guest.image_bytes as f64 / 1e6,
        guest.runs,
        guest.pull_s,
        guest.start_s,
        guest.pull_s + guest.start_s,
        guest.rss_before_kib,
        guest.rss_first_kib,
        guest.rss_after_kib,
        guest.runs,
        guest.rss_after_kib as i64 - guest.rss_first_kib as i64,
    );
    print!("{report}");
    std::fs::write(root().join("docs/bench-pull.md"), &report)?;
    Ok(())
}

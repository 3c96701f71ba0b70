//! The guest half of `cargo xtask bench pull`: on a booted keel host (the
//! default image, in QEMU), the time from `keelctl image pull REF` to a
//! container on that image running (the pull, then `config apply` and
//! the unpack and start), and keel-init's resident memory before any
//! registry image and with one running, from the same local registry the
//! host half uses, reached through QEMU's guestfwd.

use std::path::Path;

use anyhow::{bail, Context};
use keel_tests::fixtures::{busybox_layer, layer, put_config, Entry};
use keel_tests::registry::{push, runnable_layout, Push, Registry, GUEST_ADDRESS};
use keel_tests::{copy_disk, Guest, BOOT_TIMEOUT};

use crate::bench::median;

/// The image's big layer: the guest's /var (64 MiB) holds it three
/// times while it is unpacked.
pub const LAYER_BYTES: usize = 8 << 20;

/// What the guest half measured.
pub struct GuestRun {
    pub image_bytes: usize,
    /// Seconds of each run: the pull, then apply to running.
    pub pull_s: f64,
    pub start_s: f64,
    /// keel-init's VmRSS in KiB: after boot with no registry image, then
    /// with the container running after the first and after the last run
    /// (a pull that left anything behind in PID 1 would show between
    /// those two).
    pub rss_before_kib: u64,
    pub rss_first_kib: u64,
    pub rss_after_kib: u64,
    pub runs: usize,
}

fn base_config() -> String {
    format!(
        "[network.interfaces.eth0]\naddresses = [\"10.0.2.15/24\"]\n\n\
         [registries.\"{GUEST_ADDRESS}:5000\"]\ninsecure = true\n"
    )
}

fn rss_kib(g: &mut Guest) -> anyhow::Result<u64> {
    let out = g.shell("grep VmRSS /proc/1/status");
    out.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("keel-init's VmRSS from {out:?}"))
}

/// Push a runnable busybox image with a layer of `noise` to `registry`.
fn push_app(registry: &Registry, work: &Path, noise: &[u8]) -> anyhow::Result<usize> {
    let busybox = busybox_layer(&["sh", "sleep"], &[]);
    let layout = work.join("guest-layout");
    let size = busybox.len().saturating_add(noise.len());
    runnable_layout(
        &layout,
        "1",
        &[busybox, layer(&[Entry::file("data/blob", noise, 0o644)])],
        serde_json::json!({"Cmd": ["/bin/sleep", "100000"], "Env": ["PATH=/bin"]}),
    );
    push(registry, &layout, "1", "bench/guest:1", &Push::default());
    Ok(size)
}

/// Boot the default image and time `runs` pulls-to-running.
pub fn measure(
    registry: &Registry,
    work: &Path,
    noise: &[u8],
    runs: usize,
) -> anyhow::Result<GuestRun> {
    let disk_image = crate::image()?;
    let noise = noise.get(..LAYER_BYTES).unwrap_or(noise);
    let image_bytes = push_app(registry, work, noise)?;
    let disk = work.join("guest-disk.img");
    copy_disk(&disk_image, &disk);
    put_config(&disk, &base_config());
    let reference = format!("{GUEST_ADDRESS}:5000/bench/guest:1");
    let mut g = Guest::boot_with(&disk, false, &[(5000, registry.port())]);
    g.expect("keel: ready ", BOOT_TIMEOUT);
    g.prompt();
    g.write_file("/tmp/base.toml", &base_config());
    g.write_file(
        "/tmp/app.toml",
        &format!(
            "{}\n[containers.app]\nimage = \"{reference}\"\npull = \"never\"\n",
            base_config()
        ),
    );
    let rss_before_kib = rss_kib(&mut g)?;
    let mut rss_first_kib = 0;
    let (mut pulls, mut starts) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        // One line: the serial console's round trips stay out of the
        // times, which the guest's own clock takes (/proc/uptime).
        let out = g.shell(&format!(
            "a=$(cut -d' ' -f1 /proc/uptime); keelctl image pull {reference} >/dev/null 2>&1 \
             || echo PULL-FAILED; b=$(cut -d' ' -f1 /proc/uptime); \
             keelctl config apply /tmp/app.toml >/dev/null || echo APPLY-FAILED; \
             n=0; until keelctl list | grep -q '^app running'; do n=$((n+1)); \
             [ $n -gt 6000 ] && echo NEVER-RAN && break; sleep 0.05; done; \
             c=$(cut -d' ' -f1 /proc/uptime); echo TIMES $a $b $c"
        ));
        if out.contains("FAILED") || out.contains("NEVER-RAN") {
            bail!(
                "a run in the guest failed:\n{out}\n{}",
                g.shell("keelctl status")
            );
        }
        let t: Vec<f64> = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("TIMES "))
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let [a, b, c] = t[..] else {
            bail!("no times in {out:?}");
        };
        pulls.push(b - a);
        starts.push(c - b);
        if pulls.len() == 1 {
            rss_first_kib = rss_kib(&mut g)?;
        }
        if pulls.len() < runs {
            // Back to no container, no image and no unpacked root, for
            // the next run.
            g.shell("keelctl config apply /tmp/base.toml >/dev/null");
            g.poll_shell("keelctl list", 60, |t| !t.contains("app "));
            g.shell("keelctl image prune >/dev/null");
        }
    }
    let rss_after_kib = rss_kib(&mut g)?;
    // No prompt comes back from a poweroff.
    g.send("keelctl poweroff\n");
    let _ = g.wait_exit(std::time::Duration::from_secs(60));
    Ok(GuestRun {
        image_bytes,
        pull_s: median(pulls),
        start_s: median(starts),
        rss_before_kib,
        rss_first_kib,
        rss_after_kib,
        runs,
    })
}

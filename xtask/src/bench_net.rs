//! `cargo xtask bench net`: what a container network costs. Container
//! start with a veth on a bridge (address, route) against the same start
//! without, alternately in one process; and TCP throughput into the host
//! from a container through the bridge against the host's own loopback,
//! the same sink and the same sender binary. All in a network namespace
//! of its own on this machine, so nothing of its network changes. Medians
//! and ratios, written to docs/bench-net.md; never asserted.

use std::process::Command;

use anyhow::{bail, Context};

use crate::bench::{build_launch_bench, cgroup2, median, stage_rootfs, unified_cgroup_view};
use crate::root;

/// MiB per throughput run.
const MIB: usize = 512;

pub fn net(runs: usize) -> anyhow::Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let bench = build_launch_bench()?;
    unified_cgroup_view()?;
    let work = root().join("target/bench-net");
    let rootfs = work.join("rootfs");
    stage_rootfs(&rootfs)?;
    std::fs::copy(&bench, rootfs.join("bin/keel-launch-bench"))?;
    let cg = cgroup2()?.join(format!("keel-bench-net-{}", std::process::id()));
    std::fs::create_dir_all(&cg)?;
    let out = Command::new("unshare")
        .arg("--net")
        .arg("--")
        .arg(&bench)
        .arg("net")
        .arg(&rootfs)
        .arg(&cg)
        .arg(runs.to_string())
        .arg(MIB.to_string())
        .output()
        .context("unshare (util-linux)")?;
    let _ = std::fs::remove_dir(&cg);
    if !out.status.success() {
        bail!(
            "keel-launch-bench net failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let values = |key: &str| -> Vec<Vec<f64>> {
        text.lines()
            .filter_map(|l| l.strip_prefix(key))
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .collect()
    };
    let ms = |key: &str| {
        median(
            values(key)
                .iter()
                .filter_map(|v| v.first())
                .map(|us| us / 1000.0)
                .collect(),
        )
    };
    let mib_s = |key: &str| {
        median(
            values(key)
                .iter()
                .filter_map(|v| Some(v.first()? / (1 << 20) as f64 / (v.get(1)? / 1e6)))
                .collect(),
        )
    };
    let (plain, with_net) = (ms("plain "), ms("net "));
    let (lo, br) = (mib_s("loopback "), mib_s("bridge "));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let report = format!(
        "# Container networking\n\n`cargo xtask bench net --runs {runs}`, on {} CPUs ({cpu}), kernel {}, \
         in a network namespace of its own (`unshare --net`). Start: keel-init's launcher starts `/bin/true` \
         in a container (all namespaces, its own cgroup, seccomp, read-only busybox root) and reaps it, \
         alternately without a network and with a veth on a bridge (its address and default route set \
         in the container, as for `network = \"private\"`), {runs} times each. Throughput: {MIB} MiB into a TCP \
         sink on the host side, sent by the same binary from the host over loopback and from a container \
         through the bridge, alternately, {} times each, with keel's nf_tables rules for the bridge in force \
         (conntrack, masquerade, the firewall) and the bridge's MTU of 1500 against loopback's 65536. \
         Medians; nothing is asserted.\n\n\
         | start of /bin/true | median (ms) |\n|---|---|\n\
         | no network | {plain:.2} |\n| veth on a bridge | {with_net:.2} |\n\
         | added by the network | {:.2} (target ≤ 3 ms) |\n\n\
         | TCP into the host | median (MiB/s) |\n|---|---|\n\
         | host ↔ host, loopback | {lo:.0} |\n| container ↔ host, bridge | {br:.0} |\n\
         | bridge ÷ loopback | {:.2} (target ≥ 0.8) |\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim(),
        runs.clamp(1, 5),
        with_net - plain,
        br / lo,
    );
    print!("{report}");
    std::fs::write(root().join("docs/bench-net.md"), &report)?;
    Ok(())
}

//! keel-init: stage 1 in the initramfs (dm-verity root, switch root) and
//! PID 1 of a keel host (mounts, system containers, the local API).
//! `keelctl` is the client of that API.

pub mod api;
pub mod blockdev;
pub mod bootgate;
pub mod caps;
pub mod cgroup;
pub mod config;
pub mod confine;
pub mod dm;
pub mod exec;
pub mod ext4;
pub mod idranges;
pub mod kmod;
pub mod launch;
pub mod logs;
pub mod masks;
pub mod netlink;
pub mod network;
pub mod pid1;
pub mod portproxy;
pub mod probe;
pub mod stage1;
pub mod supervisor;
pub mod sys;
pub mod userns;
pub mod vms;
pub mod workloads;

/// Print one line on the console, prefixed so it stands out from kernel
/// messages and service output.
pub fn log(msg: impl std::fmt::Display) {
    println!("keel: {msg}");
}

/// Milliseconds since the kernel started (CLOCK_BOOTTIME).
pub fn boot_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| (t.tv_sec() as u64) * 1000 + (t.tv_nsec() as u64) / 1_000_000)
        .unwrap_or(0)
}

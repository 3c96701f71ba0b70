//! keel-init: stage 1 in the initramfs (dm-verity root, switch root) and
//! PID 1 of a keel host (mounts, system containers, the local API).
//! `keelctl` is the client of that API.

// Per crate root: [workspace.lints] cannot be extended per crate.
#![deny(clippy::arithmetic_side_effects)]

use std::time::{Duration, Instant};

// The tree follows a host's life: stage 1 finds and opens the root, PID 1
// reads the host config and runs every service through the supervisor,
// which starts each one by container launch; user containers, networking
// and VMs are what a host config adds.

/// Stage 1, in the initramfs: partitions, dm-verity, modules, `/var`.
pub mod stage1;

/// PID 1: its loop, the API server, the boot health gate, exec, logs,
/// readiness probes.
pub mod pid1;

/// The host config: which config to run on, and converging the host on it.
pub mod config;

/// The service table: what runs, restarts and stops, without host effects.
pub mod supervisor;

/// Starting one container: namespaces, mounts, cgroup, credentials.
pub mod launch;

/// The person's containers: images unpacked into their id ranges.
pub mod containers;

/// Interfaces over rtnetlink, published ports.
pub mod net;

/// microVMs as services of keel-vmm.
pub mod vms;

/// Thin system-call wrappers shared by all of the above.
pub mod sys;

/// Print one line on the console, prefixed so it stands out from kernel
/// messages and service output.
pub fn log(msg: impl std::fmt::Display) {
    println!("keel: {msg}");
}

/// Milliseconds since the kernel started (CLOCK_BOOTTIME).
pub fn boot_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| {
            (t.tv_sec() as u64)
                .saturating_mul(1000)
                .saturating_add((t.tv_nsec() as u64) / 1_000_000)
        })
        .unwrap_or(0)
}

/// `now + d`, for a deadline. One further off than an `Instant` can hold
/// (`Instant + Duration` would panic) is as good as never: it becomes a
/// century from now, which a Linux `Instant` (i64 seconds) always holds.
pub fn deadline(now: Instant, d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
    now.checked_add(d)
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_too_far_off_is_a_century_away() {
        let now = Instant::now();
        assert_eq!(
            deadline(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert!(deadline(now, Duration::MAX) > now + Duration::from_secs(99 * 365 * 86_400));
    }
}

//! `cargo xtask bench fleet`: a release reaching 1000 simulated hosts
//! through a real etcd with `max_rebooting` = 5 % of the group. Each host
//! is a thread running keel-fleet's reboot semaphore and reporter (the
//! code keel-update runs, in the order its coordinate.rs runs it) against
//! Debian's etcd-server over TLS with client certificates; the reboot and
//! health gate are a sleep. Reports the time for the release to reach
//! every host against the ideal schedule, that no more than the allowed
//! number held a slot at any revision of etcd's history, and etcd
//! requests per host in steady state.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;

use keel_api::init::Health;
use keel_api::update::{Outcome, OutcomeKind, UpdateState};
use keel_fleet::lock::{slots_prefix, Attempt, RebootLock};
use keel_fleet::report::{HostReport, Reporter};
use keel_fleet::{Etcd, Kv};
use keel_tests::etcd::EtcdServer;

use crate::root;

const HOSTS: usize = 1000;
const PERCENT: usize = 5;
const GROUP: &str = "bench";
/// keel-update's 10 s between attempts at a slot, scaled 1:10.
const RETRY: Duration = Duration::from_secs(1);
/// A reboot into the new slot and its health gate (tens of seconds on
/// hardware), scaled 1:10.
const REBOOT: Duration = Duration::from_secs(5);
/// `report_interval` at its minimum.
const REPORT_S: u64 = 5;
/// How long steady state is watched.
const STEADY: Duration = Duration::from_secs(60);

struct Shared {
    kv: Etcd,
    holding: AtomicUsize,
    most: AtomicUsize,
    errors: AtomicU64,
    /// Milliseconds from the start to the last host's blessing.
    last_done_ms: AtomicU64,
    /// Hosts on the release.
    done: AtomicUsize,
    /// Set when the measurement is over: the hosts stop.
    stop: AtomicBool,
    start: Instant,
}

fn report(host: &str, version: &str, update: UpdateState, rebooting: bool) -> HostReport {
    HostReport {
        host: host.into(),
        group: GROUP.into(),
        version: version.into(),
        slot: if version == "2" { "b" } else { "a" }.into(),
        health: Health::Healthy,
        update,
        outcome: (version == "2").then(|| Outcome {
            kind: OutcomeKind::Updated,
            version: "2".into(),
            at: 0,
        }),
        place: 0,
        wave: None,
        rebooting,
    }
}

/// One host: installed, waits for a slot (reporting on its interval),
/// reboots, is blessed, gives the slot back; then reports on its
/// interval, as keel-update's fleet loop does, until told to stop.
fn host(i: usize, max: u32, s: &Shared) {
    let name = format!("host-{i:04}");
    let lock = RebootLock {
        group: GROUP.into(),
        host: name.clone(),
        max,
        ttl_s: 600,
    };
    let mut reporter = Reporter::new(GROUP, &name, REPORT_S);
    let err = |r: Result<(), keel_fleet::EtcdError>| {
        if r.is_err() {
            s.errors.fetch_add(1, Ordering::Relaxed);
        }
    };
    // Hosts finish installing at different moments.
    let spread = RETRY.as_millis() as u64 * i as u64 / HOSTS as u64;
    std::thread::sleep(Duration::from_millis(spread));
    err(reporter.report(&s.kv, &report(&name, "1", UpdateState::Installed, false)));
    let mut reported = Instant::now();
    let held = loop {
        match lock.acquire(&s.kv) {
            Ok(Attempt::Taken(h)) => break h,
            Ok(Attempt::Full(_)) => {}
            Err(_) => {
                s.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if reported.elapsed() >= Duration::from_secs(REPORT_S) {
            err(reporter.report(&s.kv, &report(&name, "1", UpdateState::Installed, false)));
            reported = Instant::now();
        }
        std::thread::sleep(RETRY);
    };
    let now = s.holding.fetch_add(1, Ordering::SeqCst) + 1;
    s.most.fetch_max(now, Ordering::SeqCst);
    err(reporter.report(&s.kv, &report(&name, "1", UpdateState::Installed, true)));
    std::thread::sleep(REBOOT);
    let blessed = report(&name, "2", UpdateState::Idle, false);
    err(reporter.report(&s.kv, &report(&name, "2", UpdateState::Idle, true)));
    s.holding.fetch_sub(1, Ordering::SeqCst);
    err(lock.release(&s.kv, &held));
    err(reporter.report(&s.kv, &blessed));
    s.last_done_ms
        .fetch_max(s.start.elapsed().as_millis() as u64, Ordering::SeqCst);
    s.done.fetch_add(1, Ordering::SeqCst);
    while !s.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_secs(REPORT_S));
        err(reporter.report(&s.kv, &blessed));
    }
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores")
}

pub fn fleet() -> anyhow::Result<()> {
    let max = u32::try_from(HOSTS * PERCENT / 100)?;
    let version = std::process::Command::new("/usr/bin/etcd")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("etcd")
                .replace("Version: ", "")
        })
        .unwrap_or_default();
    let etcd = EtcdServer::start();
    let shared = Arc::new(Shared {
        kv: etcd.client("bench"),
        holding: AtomicUsize::new(0),
        most: AtomicUsize::new(0),
        errors: AtomicU64::new(0),
        last_done_ms: AtomicU64::new(0),
        done: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        start: Instant::now(),
    });
    eprintln!("bench fleet: {HOSTS} hosts, {max} reboot slots, against {version}");
    let mut threads = Vec::new();
    for i in 0..HOSTS {
        let s = Arc::clone(&shared);
        threads.push(
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || host(i, max, &s))?,
        );
    }
    while shared.done.load(Ordering::SeqCst) < HOSTS {
        std::thread::sleep(Duration::from_millis(50));
    }
    let rollout_s = shared.last_done_ms.load(Ordering::SeqCst) as f64 / 1000.0;
    let rollout_requests = shared.kv.requests();
    eprintln!("bench fleet: all {HOSTS} on the release after {rollout_s:.1} s; steady state for {STEADY:?}");
    // One interval for the last hosts' first steady report, then count.
    std::thread::sleep(Duration::from_secs(REPORT_S));
    let before = shared.kv.requests();
    std::thread::sleep(STEADY);
    let steady_requests = shared.kv.requests() - before;
    shared.stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    eprintln!("bench fleet: reading etcd's history");
    let history_most = etcd.most_at_once(&slots_prefix(GROUP));
    let counted_most = shared.most.load(Ordering::SeqCst);
    let errors = shared.errors.load(Ordering::SeqCst);
    let left = shared.kv.range(&slots_prefix(GROUP))?.len();
    let rounds = HOSTS.div_ceil(max as usize);
    let ideal_s = rounds as f64 * REBOOT.as_secs_f64();
    let intervals = STEADY.as_secs() / REPORT_S;
    let per_interval = steady_requests as f64 / (HOSTS as f64 * intervals as f64);
    let report = format!(
        "# Fleet rollout through etcd\n\n\
`cargo xtask bench fleet`: {HOSTS} simulated hosts of one group follow a release with \
`max_rebooting` = {max} ({PERCENT} %). Each host is a thread running keel-fleet's reboot semaphore \
and reporter, the code keel-update runs, in the order its `coordinate.rs` runs it: report, try \
for a slot every {retry} s until one is free (reporting every {REPORT_S} s meanwhile), hold it \
through a reboot and health gate of {reboot} s (a sleep), report the new version, give the slot \
back. keel-update's 10 s between attempts and a reboot of tens of seconds are scaled 1:10 here. \
All hosts share one client and one identity against a real {version} (Debian's etcd-server, one \
member, TLS with `--client-cert-auth`, data on this machine's disk), on {machine}. There is no \
peer to run in the same conditions: Zincati's FleetLock servers and CoreOS's locksmith are not in \
Debian's archive, so the time is compared with the ideal schedule, {rounds} rounds of {max} \
reboots back to back.\n\n\
| | measured | bound | ratio |\n|---|---|---|---|\n\
| time for the release to reach all {HOSTS} hosts (s) | {rollout_s:.1} | ideal {ideal_s:.0} | {:.2} |\n\
| most hosts holding a reboot slot at once, from etcd's history (every revision) | {history_most} | allowed {max} | {:.2} |\n\
| most hosts holding a slot at once, as the hosts counted | {counted_most} | allowed {max} | {:.2} |\n\
| slots still held at the end | {left} | 0 | |\n\
| etcd requests during the rollout, per host | {:.1} | | |\n\
| etcd requests per second during the rollout, all hosts | {:.0} | | |\n\
| steady state: etcd requests per host per report interval | {per_interval:.2} | | |\n\
| steady state: per host per hour at the default `report_interval` (5 min) | {:.1} | | |\n\
| etcd errors seen by hosts | {errors} | 0 | |\n\n\
Steady state is {steady} s of every host on the release reporting every {REPORT_S} s, counted \
from one interval after the last host got the release: a report that did not change is one lease \
keepalive, nothing is written. Per hour at the default interval is that count times 12. While \
waiting for a slot a host reads the slots once per attempt: at this scale, 10 times as often as \
keel-update would, which is most of the rollout's requests, and etcd on {cores} cores serving \
them is what stretches the rollout past the ideal (a slot given back is found at the waiting \
hosts' next attempt, up to {retry} s later, too).\n",
        rollout_s / ideal_s,
        history_most as f64 / f64::from(max),
        counted_most as f64 / f64::from(max),
        rollout_requests as f64 / HOSTS as f64,
        rollout_requests as f64 / rollout_s,
        per_interval * 12.0,
        retry = RETRY.as_secs(),
        reboot = REBOOT.as_secs(),
        steady = STEADY.as_secs(),
        machine = machine(),
        cores = std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    print!("{report}");
    std::fs::write(root().join("docs/bench-fleet.md"), &report)?;
    if history_most > u64::from(max) || counted_most > max as usize || left > 0 {
        bail!("more hosts rebooted at once than allowed, or a slot was left held");
    }
    Ok(())
}

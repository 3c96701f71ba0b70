// Test code, not reachable from input.
#![allow(clippy::arithmetic_side_effects)]

use super::*;
use crate::launch::ProcFacts;
use nix::sys::signal::Signal;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

#[derive(Debug, Default)]
struct Fake {
    next_pid: i32,
    /// Transient failures of the next starts, in order.
    fail: VecDeque<bool>,
    /// Services whose command is not there: every start fails for good.
    missing: BTreeSet<String>,
    started: Vec<String>,
    /// The services of each `start_all` call.
    batches: Vec<Vec<String>>,
    signals: Vec<(Pid, Signal)>,
    /// Probe answers per service; `Ready` once the queue is empty.
    probes: BTreeMap<String, VecDeque<Probe>>,
}

impl Launcher for Fake {
    fn start(&mut self, name: &str, _: &ContainerDef) -> Result<Pid, StartError> {
        self.started.push(name.to_string());
        if self.fail.pop_front().unwrap_or(false) {
            return Err(StartError::Transient("clone3: EAGAIN".into()));
        }
        if self.missing.contains(name) {
            return Err(StartError::Permanent(
                "in the container: exec /bin/nope: ENOENT".into(),
            ));
        }
        self.next_pid += 1;
        Ok(Pid::from_raw(100 + self.next_pid))
    }
    fn start_all(&mut self, batch: &[(&str, &ContainerDef)]) -> Vec<Result<Pid, StartError>> {
        self.batches
            .push(batch.iter().map(|(n, _)| n.to_string()).collect());
        batch.iter().map(|(n, d)| self.start(n, d)).collect()
    }
    fn signal(&mut self, pid: Pid, signal: Signal) {
        self.signals.push((pid, signal));
    }
    fn facts(&self, _: Pid) -> ProcFacts {
        ProcFacts {
            ns_pid: Some(1),
            root_readonly: Some(true),
        }
    }
    fn probe(&mut self, name: &str, _: Pid, _: &ContainerDef) -> Probe {
        self.probes
            .get_mut(name)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Probe::Ready)
    }
}

fn def(extra: &str) -> ContainerDef {
    ContainerDef::parse(&format!(
        "command = [\"/bin/x\"]\n{extra}\n[rootfs]\ncontents = []\n"
    ))
    .unwrap()
}

fn sup(defs: &[(&str, &str)], t: Instant) -> Supervisor<Fake> {
    Supervisor::new(
        Fake::default(),
        defs.iter().map(|(n, d)| (n.to_string(), def(d))).collect(),
        t,
        1000,
    )
}

fn pid_of(s: &Supervisor<Fake>, i: usize) -> Pid {
    s.services[i]
        .state
        .pid()
        .unwrap_or_else(|| panic!("not running: {:?}", s.services[i].state))
}

#[test]
fn starts_everything_and_reports() {
    let t = Instant::now();
    let mut s = sup(
        &[("a", "restart = \"always\""), ("b", "restart = \"never\"")],
        t,
    );
    s.tick(t);
    assert_eq!(s.counts(), (2, 2));
    assert_eq!(s.health(), Health::Healthy);
    let st = s.status();
    assert_eq!(st[0].state, keel_api::init::ServiceState::Running);
    assert_eq!(st[0].ns_pid, Some(1));
    assert_eq!(st[0].pid_ns, keel_formats::container::Share::Private);
    assert_eq!(st[0].started_ms, Some(1000));
}

#[test]
fn independent_services_start_together_and_dependents_after() {
    let t = Instant::now();
    let mut s = sup(
        &[
            ("a", ""),
            ("b", ""),
            ("c", "after = [\"a\"]"),
            ("d", "requires = [\"c\"]"),
            ("e", ""),
        ],
        t,
    );
    s.tick(t);
    let names = |b: &[&str]| b.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    assert_eq!(
        s.launcher.batches,
        vec![names(&["a", "b", "e"]), names(&["c"]), names(&["d"])]
    );
    assert_eq!(s.counts(), (5, 5));
}

#[test]
fn services_outside_the_health_gate_start_after_its_verdict() {
    let t = Instant::now();
    let slow = "[readiness]\nfile = \"/run/up\"\ndeadline_ms = 5000\ninterval_ms = 100";
    let mut s = sup(
        &[
            ("net", "required = false"),
            ("app", &format!("after = [\"net\"]\n{slow}")),
            ("extra", "required = false"),
            ("late", "required = false\nafter = [\"app\"]"),
        ],
        t,
    );
    s.launcher
        .probes
        .insert("app".into(), [Probe::NotYet("no /run/up".into())].into());
    s.tick(t);
    let names = |b: &[&str]| b.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    assert_eq!(
        s.launcher.batches,
        vec![names(&["net"]), names(&["app"])],
        "net is not required, but app comes after it; extra waits"
    );
    assert_eq!(s.health(), Health::Starting);
    assert_eq!(s.services[2].state, State::Waiting);
    s.tick(t + Duration::from_millis(100));
    assert_eq!(s.health(), Health::Healthy);
    assert_eq!(
        s.launcher.batches.len(),
        2,
        "the verdict is announced first"
    );
    s.tick(t + Duration::from_millis(100));
    assert_eq!(s.launcher.batches[2..], [names(&["extra", "late"])]);
    // Later, a restart of a required service holds nothing back.
    let app = pid_of(&s, 1);
    s.on_exit(app, Exit::Code(1), t + Duration::from_secs(1));
    s.stop_service("extra", t + Duration::from_secs(1)).unwrap();
    s.on_exit(pid_of(&s, 2), Exit::Signal(15), t + Duration::from_secs(1));
    s.start_service("extra", t + Duration::from_secs(1))
        .unwrap();
    assert!(s.services[2].state.pid().is_some());
}

#[test]
fn a_verdict_that_never_comes_holds_the_rest_back_only_so_long() {
    let t = Instant::now();
    let mut s = sup(
        &[
            ("setup", "kind = \"oneshot\""),
            ("update", "required = false"),
        ],
        t,
    );
    s.tick(t);
    assert_eq!(s.services[1].state, State::Waiting);
    assert_eq!(s.next_deadline(), Some(t + DEFER_AT_MOST));
    s.tick(t + DEFER_AT_MOST);
    assert_eq!(s.health(), Health::Starting, "setup still runs");
    assert!(s.services[1].state.pid().is_some(), "update started anyway");
    // What is left is the gate's closing, which fails the boot.
    assert_eq!(s.next_deadline(), Some(t + HEALTH_GATE));
}

#[test]
fn a_failed_gate_still_starts_the_rest() {
    let t = Instant::now();
    let mut s = sup(
        &[
            ("setup", "kind = \"oneshot\"\nrestart = \"never\""),
            ("extra", "required = false"),
        ],
        t,
    );
    s.tick(t);
    assert_eq!(s.services[1].state, State::Waiting);
    s.on_exit(pid_of(&s, 0), Exit::Code(2), t);
    assert_eq!(s.health(), Health::Failed);
    s.tick(t);
    assert!(s.services[1].state.pid().is_some());
}

#[test]
fn restarts_with_growing_backoff_then_gives_up() {
    let mut t = Instant::now();
    let mut s = sup(&[("a", "")], t);
    s.tick(t);
    let mut last_delay = Duration::ZERO;
    for n in 1..CRASH_LOOP_LIMIT {
        let pid = pid_of(&s, 0);
        assert!(s.on_exit(pid, Exit::Code(1), t + Duration::from_millis(10)));
        let State::Backoff { until } = s.services[0].state else {
            panic!("{:?}", s.services[0].state)
        };
        let delay = until - (t + Duration::from_millis(10));
        assert!(delay >= last_delay, "backoff must not shrink");
        last_delay = delay;
        s.tick(until - Duration::from_millis(1));
        assert!(
            matches!(s.services[0].state, State::Backoff { .. }),
            "restarted too early"
        );
        t = until;
        s.tick(t);
        assert_eq!(s.services[0].restarts, n);
    }
    let pid = pid_of(&s, 0);
    s.on_exit(pid, Exit::Signal(9), t);
    assert_eq!(s.services[0].state, State::Failed);
    assert_eq!(
        s.status()[0].last_error.as_deref(),
        Some("killed by signal 9")
    );
    assert_eq!(s.health(), Health::Failed);
}

#[test]
fn a_long_run_resets_the_crash_count() {
    let t = Instant::now();
    let mut s = sup(&[("a", "")], t);
    s.tick(t);
    s.services[0].failures_in_row = CRASH_LOOP_LIMIT - 1;
    let pid = pid_of(&s, 0);
    s.on_exit(pid, Exit::Code(1), t + STABLE_AFTER);
    assert!(matches!(s.services[0].state, State::Backoff { .. }));
    assert_eq!(s.services[0].failures_in_row, 1);
}

#[test]
fn policies_decide_restarts() {
    let t = Instant::now();
    let mut s = sup(
        &[
            ("a", "restart = \"on-failure\""),
            ("b", "restart = \"never\""),
        ],
        t,
    );
    s.tick(t);
    let (a, b) = (pid_of(&s, 0), pid_of(&s, 1));
    s.on_exit(a, Exit::Code(0), t);
    assert_eq!(s.services[0].state, State::Exited(Exit::Code(0)));
    s.on_exit(b, Exit::Code(3), t);
    assert_eq!(s.services[1].state, State::Exited(Exit::Code(3)));
    assert!(
        !s.on_exit(Pid::from_raw(4242), Exit::Code(0), t),
        "orphans are not services"
    );
}

#[test]
fn a_start_failure_is_retried_and_recorded() {
    let t = Instant::now();
    let mut s = sup(&[("a", "")], t);
    s.launcher.fail.push_back(true);
    s.tick(t);
    assert!(matches!(s.services[0].state, State::Backoff { .. }));
    assert!(s.status()[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("EAGAIN"));
    s.tick(s.next_deadline().unwrap());
    assert!(matches!(s.services[0].state, State::Running { .. }));
}

#[test]
fn a_chain_starts_in_order_and_oneshots_must_finish_first() {
    let t = Instant::now();
    let mut s = sup(
        &[
            ("setup", "kind = \"oneshot\"\nrestart = \"never\""),
            (
                "db",
                "after = [\"setup\"]\n[readiness]\ntcp = \"127.0.0.1:5432\"",
            ),
            ("app", "requires = [\"db\"]"),
        ],
        t,
    );
    s.launcher.probes.insert(
        "db".into(),
        VecDeque::from([Probe::NotYet("refused".into())]),
    );
    s.tick(t);
    assert_eq!(s.launcher.started, ["setup"]);
    assert_eq!(s.health(), Health::Starting);
    let setup = pid_of(&s, 0);
    s.on_exit(setup, Exit::Code(0), t);
    assert_eq!(s.services[0].state, State::Done);
    s.tick(t);
    assert_eq!(s.launcher.started, ["setup", "db"]);
    // The first probe says not yet; app waits.
    assert!(matches!(s.services[1].state, State::Starting { .. }));
    let next = s.next_deadline().unwrap();
    s.tick(next);
    assert!(matches!(s.services[1].state, State::Running { .. }));
    assert_eq!(s.launcher.started, ["setup", "db", "app"]);
    assert_eq!(s.health(), Health::Healthy);
    let st = s.status();
    assert!(st[2].started_ms >= st[1].ready_ms && st[1].started_ms >= st[0].ready_ms);
}

#[test]
fn a_failed_requirement_fails_its_dependents_and_the_health_gate() {
    let t = Instant::now();
    let mut s = sup(
        &[
            ("setup", "kind = \"oneshot\"\nrestart = \"never\""),
            ("app", "requires = [\"setup\"]"),
            ("side", "after = [\"setup\"]\nrequired = false"),
        ],
        t,
    );
    s.tick(t);
    let setup = pid_of(&s, 0);
    s.on_exit(setup, Exit::Code(2), t);
    s.tick(t);
    assert_eq!(s.services[1].state, State::Failed);
    assert_eq!(
        s.services[1].last_error.as_deref(),
        Some("required service setup failed")
    );
    assert_eq!(
        s.services[2].state,
        State::Waiting,
        "after alone waits, it does not fail"
    );
    assert_eq!(s.health(), Health::Failed);
}

#[test]
fn a_service_not_ready_by_its_deadline_is_killed_and_failed() {
    let t = Instant::now();
    let mut s = sup(
        &[(
            "db",
            "[readiness]\nfile = \"/run/ready\"\ndeadline_ms = 1000\ninterval_ms = 500",
        )],
        t,
    );
    s.launcher.probes.insert(
        "db".into(),
        (0..10)
            .map(|_| Probe::NotYet("no /run/ready".into()))
            .collect(),
    );
    s.tick(t);
    let pid = pid_of(&s, 0);
    for ms in [500, 1000] {
        s.tick(t + Duration::from_millis(ms));
    }
    assert_eq!(s.services[0].state, State::Failed);
    assert!(s.services[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("not ready within 1000 ms"));
    assert_eq!(s.launcher.signals, [(pid, Signal::SIGKILL)]);
    assert!(
        !s.on_exit(pid, Exit::Signal(9), t),
        "the killed process is no longer the service's"
    );
}

#[test]
fn shutdown_goes_in_reverse_order_with_stop_signals_and_timeouts() {
    let t = Instant::now();
    let mut s = sup(
        &[
            ("db", "stop_signal = \"SIGINT\"\nstop_timeout_ms = 2000"),
            ("app", "after = [\"db\"]\nstop_signal = \"SIGHUP\""),
        ],
        t,
    );
    s.tick(t);
    let (db, app) = (pid_of(&s, 0), pid_of(&s, 1));
    s.stop_tick(t);
    assert_eq!(
        s.launcher.signals,
        [(app, Signal::SIGHUP)],
        "db waits for app to stop"
    );
    s.on_exit(app, Exit::Signal(1), t);
    s.stop_tick(t);
    assert_eq!(s.launcher.signals[1], (db, Signal::SIGINT));
    s.stop_tick(t + Duration::from_millis(2000));
    assert_eq!(s.launcher.signals[2], (db, Signal::SIGKILL));
    assert!(!s.all_stopped());
    s.on_exit(db, Exit::Signal(9), t);
    assert!(s.all_stopped());
    s.tick(t + BACKOFF_MAX);
    assert_eq!(
        s.launcher.started.len(),
        2,
        "nothing restarts during shutdown"
    );
}

#[test]
fn stop_start_and_restart_by_hand() {
    let t = Instant::now();
    let mut s = sup(
        &[("web", "stop_signal = \"SIGHUP\"\nstop_timeout_ms = 1000")],
        t,
    );
    s.tick(t);
    let first = pid_of(&s, 0);
    assert!(s
        .stop_service("nope", t)
        .unwrap_err()
        .contains("services: web"));
    s.stop_service("web", t).unwrap();
    assert_eq!(s.launcher.signals, [(first, Signal::SIGHUP)]);
    s.tick(t + Duration::from_millis(1000));
    assert_eq!(
        s.launcher.signals[1],
        (first, Signal::SIGKILL),
        "killed after its stop timeout"
    );
    s.on_exit(first, Exit::Signal(9), t);
    assert_eq!(s.services[0].state, State::Stopped);
    s.tick(t + BACKOFF_MAX);
    assert_eq!(
        s.launcher.started.len(),
        1,
        "a stopped service stays stopped"
    );
    s.start_service("web", t).unwrap();
    let second = pid_of(&s, 0);
    assert!(s.start_service("web", t).is_err());
    s.restart_service("web", t).unwrap();
    s.on_exit(second, Exit::Signal(1), t);
    s.tick(t);
    assert_eq!(s.launcher.started.len(), 3);
    assert_eq!(
        s.services[0].restarts, 0,
        "restarts by hand are not failures"
    );
}

#[test]
fn upsert_adds_restarts_changed_and_leaves_unchanged_alone() {
    let t = Instant::now();
    let mut s = sup(&[("a", ""), ("b", "")], t);
    s.tick(t);
    let (a, b) = (pid_of(&s, 0), pid_of(&s, 1));
    assert_eq!(s.upsert("a", def(""), t), Change::Unchanged);
    assert_eq!(s.upsert("c", def("after = [\"a\"]"), t), Change::Added);
    assert_eq!(
        s.services[2].state.public(),
        keel_api::init::ServiceState::Running,
        "started at once"
    );
    assert_eq!(s.upsert("b", def("env = [\"X=1\"]"), t), Change::Replaced);
    assert_eq!(s.launcher.signals, [(b, Signal::SIGTERM)]);
    assert!(s.on_exit(b, Exit::Signal(15), t));
    s.tick(t);
    assert_ne!(pid_of(&s, 1), b, "started again");
    assert_eq!(s.services[1].def.env, ["X=1"]);
    assert_eq!(pid_of(&s, 0), a, "untouched");
    assert_eq!(
        s.services[1].restarts, 0,
        "a restart asked for is not a crash"
    );
}

#[test]
fn a_retired_service_stops_then_leaves_the_table() {
    let t = Instant::now();
    let mut s = sup(&[("a", ""), ("b", "")], t);
    s.tick(t);
    let b = pid_of(&s, 1);
    s.retire("b", t).unwrap();
    assert_eq!(s.services.len(), 2, "still stopping");
    assert!(s.on_exit(b, Exit::Signal(15), t));
    s.tick(t);
    let names: Vec<&str> = s.services.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names, ["a"]);
    // Not running at all: gone at once; coming back: added anew.
    s.stop_service("a", t).unwrap();
    let a = pid_of(&s, 0);
    s.on_exit(a, Exit::Signal(15), t);
    s.retire("a", t).unwrap();
    assert!(s.services.is_empty());
    assert_eq!(s.upsert("a", def(""), t), Change::Added);
    assert!(s.retire("zz", t).is_err());
}

#[test]
fn a_required_oneshot_that_never_exits_fails_the_boot_when_the_gate_closes() {
    let t = Instant::now();
    let probe = "[readiness]\nfile = \"/run/up\"\ndeadline_ms = 5000\ninterval_ms = 1000";
    let mut s = sup(
        &[
            ("hang", "kind = \"oneshot\""),
            ("web", probe),
            ("extra", "required = false"),
        ],
        t,
    );
    s.tick(t);
    assert_eq!(s.health(), Health::Starting, "the oneshot is still running");
    // The gate: HEALTH_GATE plus web's readiness deadline.
    let closes = t + HEALTH_GATE + Duration::from_millis(5000);
    assert_eq!(s.next_deadline().map(|d| d <= closes), Some(true));
    s.tick(closes - Duration::from_millis(1));
    assert_eq!(s.health(), Health::Starting);
    s.tick(closes);
    assert_eq!(s.health(), Health::Failed);
    let hang = &s.services[0];
    assert!(
        hang.last_error
            .as_deref()
            .is_some_and(|e| e.contains("health gate closed, 125 s after")),
        "{:?}",
        hang.last_error
    );
    assert_eq!(s.services[1].last_error, None, "web was ready");
    // The verdict is in: the others start.
    s.tick(closes + Duration::from_millis(1));
    assert!(s.launcher.started.contains(&"extra".to_string()));
}

#[test]
fn a_permanent_start_failure_fails_at_once_and_fails_the_boot() {
    let t = Instant::now();
    let mut s = sup(&[("app", ""), ("web", "requires = [\"app\"]")], t);
    s.launcher.missing.insert("app".into());
    s.tick(t);
    assert_eq!(s.launcher.started, ["app"], "one attempt");
    assert_eq!(s.services[0].state, State::Failed);
    let st = s.status();
    assert_eq!(st[0].state, keel_api::init::ServiceState::Failed);
    assert_eq!(
        st[0].last_error.as_deref(),
        Some("in the container: exec /bin/nope: ENOENT")
    );
    assert_eq!(
        s.health(),
        Health::Failed,
        "the boot's verdict does not wait for retries"
    );
    assert_eq!(s.services[1].state, State::Failed, "its dependent too");
    // No backoff to wait for: nothing is due but the health gate's end.
    s.tick(t + BACKOFF_MAX);
    assert_eq!(s.launcher.started, ["app"], "not retried");

    // By hand it is tried again, and once the command is there it runs.
    s.start_service("app", t + BACKOFF_MAX).unwrap();
    assert_eq!(s.launcher.started, ["app", "app"]);
    assert_eq!(s.services[0].state, State::Failed);
    s.launcher.missing.clear();
    s.restart_service("app", t + BACKOFF_MAX).unwrap();
    assert!(matches!(s.services[0].state, State::Running { .. }));
    assert_eq!(s.launcher.started.len(), 3);
}

#[test]
fn a_transient_start_failure_is_retried_with_backoff_until_the_limit() {
    let mut t = Instant::now();
    let mut s = sup(&[("app", "")], t);
    s.launcher.fail = vec![true; CRASH_LOOP_LIMIT as usize].into();
    s.tick(t);
    let mut last_delay = Duration::ZERO;
    for n in 1..CRASH_LOOP_LIMIT {
        let State::Backoff { until } = s.services[0].state else {
            panic!("{:?}", s.services[0].state)
        };
        assert!(until - t >= last_delay, "backoff must not shrink");
        last_delay = until - t;
        assert_eq!(s.health(), Health::Starting, "not given up on yet");
        assert_eq!(s.launcher.started.len(), n as usize);
        t = until;
        s.tick(t);
    }
    assert_eq!(s.launcher.started.len(), CRASH_LOOP_LIMIT as usize);
    assert_eq!(s.services[0].state, State::Failed);
    assert_eq!(s.health(), Health::Failed);
    assert!(s.services[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("EAGAIN"));
}

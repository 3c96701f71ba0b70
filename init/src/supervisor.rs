//! The service table: which services run, what happened to them, and when
//! to restart them. Host effects go through [`Launcher`], so this logic is
//! tested without root.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use keel_spec::container::{ContainerDef, RestartPolicy, Share};

use crate::api::ServiceStatus;
use crate::launch::ProcFacts;

/// What keel-init does to the host on behalf of the supervisor.
pub trait Launcher {
    /// Start `name`; returns its PID once it runs its command.
    fn start(&mut self, name: &str, def: &ContainerDef) -> Result<Pid, String>;
    fn signal(&mut self, pid: Pid, signal: Signal);
    fn facts(&self, pid: Pid) -> ProcFacts;
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Running {
        pid: Pid,
        since: Instant,
    },
    /// Waiting to be restarted at the given time.
    Backoff {
        until: Instant,
    },
    /// Ended and not to be restarted.
    Exited(Exit),
    /// Gave up: crash loop or could not start.
    Failed,
    Stopping {
        pid: Pid,
    },
    Stopped,
}

impl State {
    fn label(&self) -> &'static str {
        match self {
            State::Running { .. } => "running",
            State::Backoff { .. } => "restarting",
            State::Exited(_) => "exited",
            State::Failed => "failed",
            State::Stopping { .. } => "stopping",
            State::Stopped => "stopped",
        }
    }
}

#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub def: ContainerDef,
    pub state: State,
    pub restarts: u32,
    /// Failures since the service last ran long enough to count as up.
    pub failures_in_row: u32,
    pub last_error: Option<String>,
    pub ever_started: bool,
}

/// A run shorter than this counts towards the crash-loop limit.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// After this many failures in a row the service is marked failed.
pub const CRASH_LOOP_LIMIT: u32 = 8;

pub fn backoff(failures_in_row: u32) -> Duration {
    let exp = failures_in_row.saturating_sub(1).min(16);
    (BACKOFF_BASE * 2u32.pow(exp)).min(BACKOFF_MAX)
}

#[derive(Debug)]
pub struct Supervisor<L: Launcher> {
    pub services: Vec<Service>,
    pub launcher: L,
    shutting_down: bool,
}

impl<L: Launcher> Supervisor<L> {
    pub fn new(launcher: L, defs: Vec<(String, ContainerDef)>) -> Self {
        let services = defs
            .into_iter()
            .map(|(name, def)| Service {
                name,
                def,
                state: State::Stopped,
                restarts: 0,
                failures_in_row: 0,
                last_error: None,
                ever_started: false,
            })
            .collect();
        Supervisor {
            services,
            launcher,
            shutting_down: false,
        }
    }

    fn start_one(&mut self, i: usize, now: Instant) {
        let svc = &mut self.services[i];
        match self.launcher.start(&svc.name, &svc.def) {
            Ok(pid) => {
                svc.state = State::Running { pid, since: now };
                svc.ever_started = true;
            }
            Err(e) => {
                crate::log(format!("{}: cannot start: {e}", svc.name));
                svc.last_error = Some(e);
                svc.failures_in_row += 1;
                svc.state = if svc.failures_in_row >= CRASH_LOOP_LIMIT {
                    State::Failed
                } else {
                    State::Backoff {
                        until: now + backoff(svc.failures_in_row),
                    }
                };
            }
        }
    }

    pub fn start_all(&mut self, now: Instant) {
        for i in 0..self.services.len() {
            if self.services[i].state == State::Stopped {
                self.start_one(i, now);
            }
        }
    }

    /// Record the end of `pid`; false if it was not a service (an orphan).
    pub fn on_exit(&mut self, pid: Pid, how: Exit, now: Instant) -> bool {
        let shutting_down = self.shutting_down;
        let Some(svc) = self.services.iter_mut().find(|s| {
            matches!(s.state, State::Running { pid: p, .. } | State::Stopping { pid: p } if p == pid)
        }) else {
            return false;
        };
        let ran = match svc.state {
            State::Running { since, .. } => now.saturating_duration_since(since),
            _ => Duration::ZERO,
        };
        if shutting_down || matches!(svc.state, State::Stopping { .. }) {
            svc.state = State::Stopped;
            return true;
        }
        if ran >= STABLE_AFTER {
            svc.failures_in_row = 0;
        }
        let restart = match svc.def.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !how.success(),
            RestartPolicy::Never => false,
        };
        if !how.success() {
            svc.last_error = Some(match how {
                Exit::Code(c) => format!("exited with status {c}"),
                Exit::Signal(s) => format!("killed by signal {s}"),
            });
        }
        if !restart {
            svc.state = State::Exited(how);
            return true;
        }
        svc.failures_in_row += 1;
        svc.restarts += 1;
        if svc.failures_in_row >= CRASH_LOOP_LIMIT {
            crate::log(format!(
                "{}: failed {} times in a row, giving up",
                svc.name, svc.failures_in_row
            ));
            svc.state = State::Failed;
        } else {
            svc.state = State::Backoff {
                until: now + backoff(svc.failures_in_row),
            };
        }
        true
    }

    /// Restart the services whose backoff has run out.
    pub fn tick(&mut self, now: Instant) {
        if self.shutting_down {
            return;
        }
        for i in 0..self.services.len() {
            if matches!(self.services[i].state, State::Backoff { until } if until <= now) {
                self.start_one(i, now);
            }
        }
    }

    /// When the next restart is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.services
            .iter()
            .filter_map(|s| match s.state {
                State::Backoff { until } => Some(until),
                _ => None,
            })
            .min()
    }

    /// (running, total).
    pub fn counts(&self) -> (usize, usize) {
        let running = self
            .services
            .iter()
            .filter(|s| matches!(s.state, State::Running { .. }))
            .count();
        (running, self.services.len())
    }

    /// Signal every running service, with `signal` or else its own stop
    /// signal, and stop restarting them.
    pub fn stop_all(&mut self, signal: Option<Signal>) {
        self.shutting_down = true;
        for svc in &mut self.services {
            let signal = signal
                .or_else(|| svc.def.stop_signal.parse().ok())
                .unwrap_or(Signal::SIGTERM);
            match svc.state {
                State::Running { pid, .. } | State::Stopping { pid } => {
                    self.launcher.signal(pid, signal);
                    svc.state = State::Stopping { pid };
                }
                State::Backoff { .. } => svc.state = State::Stopped,
                _ => {}
            }
        }
    }

    pub fn all_stopped(&self) -> bool {
        !self
            .services
            .iter()
            .any(|s| matches!(s.state, State::Running { .. } | State::Stopping { .. }))
    }

    pub fn status(&self) -> Vec<ServiceStatus> {
        self.services
            .iter()
            .map(|s| {
                let pid = match s.state {
                    State::Running { pid, .. } | State::Stopping { pid } => Some(pid),
                    _ => None,
                };
                let facts = pid.map(|p| self.launcher.facts(p)).unwrap_or_default();
                ServiceStatus {
                    name: s.name.clone(),
                    description: s.def.description.clone(),
                    state: s.state.label().to_string(),
                    pid: pid.map(Pid::as_raw),
                    ns_pid: facts.ns_pid,
                    pid_ns: match s.def.namespaces.pid {
                        Share::Private => "private".into(),
                        Share::Host => "host".into(),
                    },
                    root_readonly: facts.root_readonly,
                    restarts: s.restarts,
                    capabilities: s.def.capabilities.clone(),
                    last_error: s.last_error.clone(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    #[derive(Debug, Default)]
    struct Fake {
        next_pid: i32,
        fail: VecDeque<bool>,
        started: Vec<String>,
        signals: Vec<(Pid, Signal)>,
    }

    impl Launcher for Fake {
        fn start(&mut self, name: &str, _: &ContainerDef) -> Result<Pid, String> {
            self.started.push(name.to_string());
            if self.fail.pop_front().unwrap_or(false) {
                return Err("exec /bin/nope: ENOENT".into());
            }
            self.next_pid += 1;
            Ok(Pid::from_raw(100 + self.next_pid))
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
    }

    fn def(restart: &str) -> ContainerDef {
        ContainerDef::parse(&format!(
            "command = [\"/bin/x\"]\nrestart = \"{restart}\"\n[rootfs]\ncontents = []\n"
        ))
        .unwrap()
    }

    fn sup(restart: &str) -> Supervisor<Fake> {
        Supervisor::new(
            Fake::default(),
            vec![("a".into(), def(restart)), ("b".into(), def("never"))],
        )
    }

    fn pid_of(s: &Supervisor<Fake>, i: usize) -> Pid {
        match s.services[i].state {
            State::Running { pid, .. } => pid,
            ref other => panic!("not running: {other:?}"),
        }
    }

    #[test]
    fn starts_everything_and_reports() {
        let mut s = sup("always");
        let t = Instant::now();
        s.start_all(t);
        assert_eq!(s.counts(), (2, 2));
        let st = s.status();
        assert_eq!(st[0].state, "running");
        assert_eq!(st[0].ns_pid, Some(1));
        assert_eq!(st[0].pid_ns, "private");
    }

    #[test]
    fn restarts_with_growing_backoff_then_gives_up() {
        let mut s = sup("always");
        let mut t = Instant::now();
        s.start_all(t);
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
    }

    #[test]
    fn a_long_run_resets_the_crash_count() {
        let mut s = sup("always");
        let t = Instant::now();
        s.start_all(t);
        s.services[0].failures_in_row = CRASH_LOOP_LIMIT - 1;
        let pid = pid_of(&s, 0);
        s.on_exit(pid, Exit::Code(1), t + STABLE_AFTER);
        assert!(matches!(s.services[0].state, State::Backoff { .. }));
        assert_eq!(s.services[0].failures_in_row, 1);
    }

    #[test]
    fn policies_decide_restarts() {
        let mut s = sup("on-failure");
        let t = Instant::now();
        s.start_all(t);
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
        let mut fake = Fake::default();
        fake.fail.push_back(true);
        let mut s = Supervisor::new(fake, vec![("a".into(), def("always"))]);
        let t = Instant::now();
        s.start_all(t);
        assert!(matches!(s.services[0].state, State::Backoff { .. }));
        assert!(s.status()[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("ENOENT"));
        s.tick(s.next_deadline().unwrap());
        assert!(matches!(s.services[0].state, State::Running { .. }));
    }

    #[test]
    fn shutdown_signals_everyone_and_stops_restarting() {
        let mut s = sup("always");
        let t = Instant::now();
        s.start_all(t);
        let (a, b) = (pid_of(&s, 0), pid_of(&s, 1));
        s.services[1].def.stop_signal = "SIGHUP".into();
        s.stop_all(None);
        assert_eq!(
            s.launcher.signals,
            vec![(a, Signal::SIGTERM), (b, Signal::SIGHUP)]
        );
        assert!(!s.all_stopped());
        s.on_exit(a, Exit::Signal(15), t);
        s.on_exit(b, Exit::Signal(15), t);
        assert!(s.all_stopped());
        s.tick(t + BACKOFF_MAX);
        assert_eq!(
            s.launcher.started.len(),
            2,
            "nothing restarts during shutdown"
        );
    }
}

//! The service table: which services run, in what order, whether they are
//! ready, what happened to them, and when to restart or stop them. Host
//! effects go through [`Launcher`], so this logic is tested without root.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use keel_formats::container::{ContainerDef, RestartPolicy};
use keel_formats::lifecycle::Kind;

use crate::launch::ProcFacts;
use keel_api::init::{ServiceState, ServiceStatus};

/// The answer of one readiness probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Ready,
    NotYet(String),
}

/// Why a service did not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// It will fail the same way until its definition or image changes (a
    /// command that is not there): not retried until asked by hand.
    #[error("{0}")]
    Permanent(String),
    /// It may start next time: retried with backoff.
    #[error("{0}")]
    Transient(String),
}

/// What keel-init does to the host on behalf of the supervisor.
pub trait Launcher {
    /// Start `name`; returns its PID once it runs its command.
    fn start(&mut self, name: &str, def: &ContainerDef) -> Result<Pid, StartError>;
    /// Start several services that may start together; one result each, in
    /// order. A launcher that can overlap their setup does so.
    fn start_all(&mut self, batch: &[(&str, &ContainerDef)]) -> Vec<Result<Pid, StartError>> {
        batch.iter().map(|(n, d)| self.start(n, d)).collect()
    }
    fn signal(&mut self, pid: Pid, signal: Signal);
    fn facts(&self, pid: Pid) -> ProcFacts;
    /// Run the service's readiness probe once.
    fn probe(&mut self, name: &str, pid: Pid, def: &ContainerDef) -> Probe;
    /// Service `name`'s definition changed or it left the table: drop what
    /// was worked out from the old one.
    fn forget(&mut self, _name: &str) {}
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
    /// Not started: waiting for the services it comes after.
    Waiting,
    /// Running its command, not ready yet (a oneshot: not finished yet).
    Starting {
        pid: Pid,
        since: Instant,
        next_probe: Instant,
    },
    /// Running and ready.
    Running {
        pid: Pid,
        since: Instant,
    },
    /// A oneshot that finished with status 0.
    Done,
    /// Waiting to be restarted at the given time.
    Backoff {
        until: Instant,
    },
    /// Ended and not to be restarted.
    Exited(Exit),
    /// Gave up: crash loop, start failure limit, readiness deadline, or a
    /// required service failed.
    Failed,
    /// Asked to stop; killed at `kill_at`.
    Stopping {
        pid: Pid,
        kill_at: Instant,
    },
    Stopped,
}

impl Service {
    pub fn state_label(&self) -> ServiceState {
        self.state.public()
    }
}

impl State {
    /// What the API shows of it.
    pub fn public(&self) -> ServiceState {
        match self {
            State::Waiting => ServiceState::Waiting,
            State::Starting { .. } => ServiceState::Starting,
            State::Running { .. } => ServiceState::Running,
            State::Done => ServiceState::Done,
            State::Backoff { .. } => ServiceState::Restarting,
            State::Exited(_) => ServiceState::Exited,
            State::Failed => ServiceState::Failed,
            State::Stopping { .. } => ServiceState::Stopping,
            State::Stopped => ServiceState::Stopped,
        }
    }

    pub fn pid(&self) -> Option<Pid> {
        match *self {
            State::Starting { pid, .. }
            | State::Running { pid, .. }
            | State::Stopping { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// Ready, for those who come after it and for the health gate.
    fn ready(&self) -> bool {
        matches!(self, State::Running { .. } | State::Done)
    }

    /// Will not become ready without outside help.
    fn broken(&self) -> bool {
        match self {
            State::Failed => true,
            State::Exited(e) => !e.success(),
            _ => false,
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
    pub started: Option<Instant>,
    pub ready: Option<Instant>,
    /// Start again once the current process has stopped (`restart`).
    pub start_after_stop: bool,
    /// Required, or something a required service comes after: starts as
    /// soon as its dependencies allow. Others wait until the boot's health
    /// verdict, so they do not take CPU and I/O from the services that
    /// decide it.
    pub boot_critical: bool,
    /// Leaves the table once it has stopped (its config entry went away).
    pub retiring: bool,
}

impl Service {
    fn new(name: String, def: ContainerDef, boot_critical: bool) -> Service {
        Service {
            name,
            def,
            state: State::Waiting,
            restarts: 0,
            failures_in_row: 0,
            last_error: None,
            started: None,
            ready: None,
            start_after_stop: false,
            boot_critical,
            retiring: false,
        }
    }
}

/// What [`Supervisor::upsert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    /// A new definition: restarted with it if it ran.
    Replaced,
    Unchanged,
}

pub use keel_api::init::Health;

/// Services outside the health gate wait for its verdict at most this
/// long, so that one that never comes (a required oneshot that hangs) does
/// not keep the others, the updater among them, from ever starting.
pub const DEFER_AT_MOST: Duration = Duration::from_secs(10);

/// The boot's health gate closes this long after keel-init starts, plus
/// the readiness deadlines of the services it waits for: a required
/// service that is still not ready then (a oneshot that never exits, one
/// whose probe has no deadline) fails the boot like one that crashed, so
/// boot counting falls back instead of the host waiting forever.
pub const HEALTH_GATE: Duration = Duration::from_secs(120);

/// Signals `keelctl kill` may send: the stop signals, and those that ask
/// a service to reload or pause.
pub const KILL_SIGNALS: [&str; 10] = [
    "SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGKILL", "SIGSTOP",
    "SIGCONT", "SIGWINCH",
];

/// A run shorter than this counts towards the crash-loop limit.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// After this many failures in a row the service is marked failed.
pub const CRASH_LOOP_LIMIT: u32 = 8;

/// Which of `defs` the boot's health verdict waits for: the required
/// services and, transitively, everything they come after or require.
fn boot_critical(defs: &[(String, ContainerDef)]) -> Vec<bool> {
    let mut critical: Vec<bool> = defs.iter().map(|(_, d)| d.required).collect();
    let mut todo: Vec<usize> = (0..defs.len()).filter(|&i| critical[i]).collect();
    while let Some(i) = todo.pop() {
        let def = &defs[i].1;
        for dep in def.after.iter().chain(&def.requires) {
            if let Some(j) = defs.iter().position(|(n, _)| n == dep) {
                if !critical[j] {
                    critical[j] = true;
                    todo.push(j);
                }
            }
        }
    }
    critical
}

/// How long the health gate stays open: [`HEALTH_GATE`] and the readiness
/// deadlines of the boot-critical services (a chain of them may take each
/// in turn). Definitions bound each deadline to a day, so this cannot
/// overflow.
fn gate_length(defs: &[(String, ContainerDef)], critical: &[bool]) -> Duration {
    let waits: u64 = defs
        .iter()
        .zip(critical)
        .filter(|(_, c)| **c)
        .filter_map(|((_, d), _)| d.readiness.as_ref().map(|r| r.deadline_ms))
        .fold(0, u64::saturating_add);
    HEALTH_GATE.saturating_add(Duration::from_millis(waits))
}

pub fn backoff(failures_in_row: u32) -> Duration {
    let exp = failures_in_row.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(2u32.pow(exp)).min(BACKOFF_MAX)
}

#[derive(Debug)]
pub struct Supervisor<L: Launcher> {
    pub services: Vec<Service>,
    pub launcher: L,
    shutting_down: bool,
    /// The health gate has had its verdict (healthy or failed) once; from
    /// then on every service starts when its dependencies allow.
    verdict_reached: bool,
    /// When the health gate closes ([`HEALTH_GATE`]).
    gate_closes: Instant,
    /// It closed with required services not ready: the boot failed.
    gate_expired: bool,
    /// `Instant` ↔ milliseconds since boot, for reporting.
    epoch: (Instant, u64),
}

impl<L: Launcher> Supervisor<L> {
    /// `defs` in start order (see `keel_formats::lifecycle::start_order`).
    pub fn new(launcher: L, defs: Vec<(String, ContainerDef)>, now: Instant, boot_ms: u64) -> Self {
        let critical = boot_critical(&defs);
        let gate_closes = crate::deadline(now, gate_length(&defs, &critical));
        let services = defs
            .into_iter()
            .zip(critical)
            .map(|((name, def), boot_critical)| Service::new(name, def, boot_critical))
            .collect();
        Supervisor {
            services,
            launcher,
            shutting_down: false,
            verdict_reached: false,
            gate_closes,
            gate_expired: false,
            epoch: (now, boot_ms),
        }
    }

    fn ms(&self, t: Instant) -> u64 {
        let since = t.saturating_duration_since(self.epoch.0).as_millis();
        self.epoch
            .1
            .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| s.name == name)
    }

    fn start_one(&mut self, i: usize, now: Instant) {
        self.start_many(&[i], now);
    }

    /// Start services `which` together.
    fn start_many(&mut self, which: &[usize], now: Instant) {
        let batch: Vec<(&str, &ContainerDef)> = which
            .iter()
            .map(|&i| (self.services[i].name.as_str(), &self.services[i].def))
            .collect();
        let results = self.launcher.start_all(&batch);
        for (&i, result) in which.iter().zip(results) {
            self.started(i, result, now);
        }
    }

    fn started(&mut self, i: usize, result: Result<Pid, StartError>, now: Instant) {
        let svc = &mut self.services[i];
        match result {
            Ok(pid) => {
                svc.started = Some(now);
                let needs_wait = svc.def.kind == Kind::Oneshot || svc.def.readiness.is_some();
                svc.state = if needs_wait {
                    State::Starting {
                        pid,
                        since: now,
                        next_probe: now,
                    }
                } else {
                    svc.ready = Some(now);
                    State::Running { pid, since: now }
                };
            }
            Err(e) => {
                let permanent = matches!(e, StartError::Permanent(_));
                let retry = if permanent { ", not retrying" } else { "" };
                crate::log(format!("{}: cannot start{retry}: {e}", svc.name));
                svc.last_error = Some(e.to_string());
                svc.failures_in_row = svc.failures_in_row.saturating_add(1);
                // Backoff would only repeat a permanent failure: failed at
                // once, so the health gate has its verdict now.
                svc.state = if permanent || svc.failures_in_row >= CRASH_LOOP_LIMIT {
                    State::Failed
                } else {
                    State::Backoff {
                        until: crate::deadline(now, backoff(svc.failures_in_row)),
                    }
                };
            }
        }
    }

    /// Add service `name`, or give it definition `def`: a service that
    /// runs with another definition restarts with this one. Services are
    /// added after the image's, so they start once their dependencies
    /// allow; nothing else is touched.
    pub fn upsert(&mut self, name: &str, def: ContainerDef, now: Instant) -> Change {
        let Some(i) = self.index(name) else {
            let critical = def.required;
            self.services
                .push(Service::new(name.to_string(), def, critical));
            self.tick(now);
            return Change::Added;
        };
        let svc = &mut self.services[i];
        let was_retiring = std::mem::take(&mut svc.retiring);
        if svc.def == def {
            if was_retiring && matches!(svc.state, State::Stopping { .. }) {
                svc.start_after_stop = true;
            }
            return Change::Unchanged;
        }
        self.launcher.forget(name);
        let running = matches!(
            self.services[i].state,
            State::Starting { .. } | State::Running { .. } | State::Stopping { .. }
        );
        if running {
            // Stopped the way the old definition says, started the new way.
            if self.services[i].state.pid().is_some()
                && !matches!(self.services[i].state, State::Stopping { .. })
            {
                self.ask_to_stop(i, now);
            }
            self.services[i].start_after_stop = true;
        } else {
            self.services[i].state = State::Waiting;
        }
        let svc = &mut self.services[i];
        svc.def = def;
        svc.failures_in_row = 0;
        svc.last_error = None;
        self.tick(now);
        Change::Replaced
    }

    /// Stop service `name` for good: it leaves the table once stopped.
    pub fn retire(&mut self, name: &str, now: Instant) -> Result<(), String> {
        self.stop_service(name, now)?;
        let i = self.find(name)?;
        self.services[i].retiring = true;
        self.launcher.forget(name);
        self.drop_retired();
        Ok(())
    }

    fn drop_retired(&mut self) {
        self.services
            .retain(|s| !(s.retiring && s.state.pid().is_none()));
    }

    /// Start what may start, probe what is starting, restart what is due.
    pub fn tick(&mut self, now: Instant) {
        if self.shutting_down {
            return;
        }
        self.drop_retired();
        if !self.verdict_reached && now >= self.gate_closes && self.health() == Health::Starting {
            self.close_gate();
        }
        // The boot's verdict is taken; from here health is what runs.
        if self.gate_expired
            && self
                .services
                .iter()
                .filter(|s| s.def.required)
                .all(|s| s.state.ready())
        {
            self.gate_expired = false;
        }
        // A verdict reached during this tick is announced before the
        // services that waited for it start, at the next tick.
        if !self.verdict_reached && self.health() != Health::Starting {
            self.verdict_reached = true;
        }
        let defer_others =
            !self.verdict_reached && now < crate::deadline(self.epoch.0, DEFER_AT_MOST);
        // Starting a service can let others start in the same tick.
        loop {
            let mut changed = false;
            // Those whose dependencies are ready start together; those that
            // wait on them are looked at again in the next pass.
            let mut batch = Vec::new();
            for i in 0..self.services.len() {
                if self.services[i].state != State::Waiting
                    || (defer_others && !self.services[i].boot_critical)
                {
                    continue;
                }
                let def = &self.services[i].def;
                let missing = def
                    .after
                    .iter()
                    .chain(&def.requires)
                    .find(|d| self.index(d).is_none());
                let failed_dep = def.requires.iter().find(|d| {
                    self.index(d)
                        .is_some_and(|j| self.services[j].state.broken())
                });
                let why = missing
                    .map(|d| format!("depends on {d}, which is not a service of this image"))
                    .or_else(|| failed_dep.map(|d| format!("required service {d} failed")));
                if let Some(msg) = why {
                    crate::log(format!("{}: {msg}", self.services[i].name));
                    self.services[i].last_error = Some(msg);
                    self.services[i].state = State::Failed;
                    changed = true;
                    continue;
                }
                let ready = def.after.iter().chain(&def.requires).all(|d| {
                    self.index(d)
                        .is_some_and(|j| self.services[j].state.ready())
                });
                if ready {
                    batch.push(i);
                }
            }
            if !batch.is_empty() {
                self.start_many(&batch, now);
                changed = true;
            }
            for i in 0..self.services.len() {
                if let State::Starting {
                    pid,
                    since,
                    next_probe,
                } = self.services[i].state
                {
                    if self.services[i].def.kind == Kind::Oneshot || next_probe > now {
                        continue;
                    }
                    let svc = &self.services[i];
                    let Some((deadline_ms, interval_ms)) = svc
                        .def
                        .readiness
                        .as_ref()
                        .map(|r| (r.deadline_ms, r.interval_ms))
                    else {
                        continue;
                    };
                    let answer = self.launcher.probe(&svc.name, pid, &svc.def);
                    let name = svc.name.clone();
                    match answer {
                        Probe::Ready => {
                            let svc = &mut self.services[i];
                            svc.state = State::Running { pid, since };
                            svc.ready = Some(now);
                            changed = true;
                        }
                        Probe::NotYet(why)
                            if now.saturating_duration_since(since)
                                >= Duration::from_millis(deadline_ms) =>
                        {
                            let msg = format!("not ready within {} ms: {why}", deadline_ms);
                            crate::log(format!("{name}: {msg}"));
                            self.launcher.signal(pid, Signal::SIGKILL);
                            let svc = &mut self.services[i];
                            svc.last_error = Some(msg);
                            svc.state = State::Failed;
                            changed = true;
                        }
                        Probe::NotYet(_) => {
                            self.services[i].state = State::Starting {
                                pid,
                                since,
                                next_probe: crate::deadline(
                                    now,
                                    Duration::from_millis(interval_ms),
                                ),
                            };
                        }
                    }
                }
            }
            if !changed {
                break;
            }
        }
        for i in 0..self.services.len() {
            match self.services[i].state {
                State::Backoff { until } if until <= now => self.start_one(i, now),
                State::Stopping { kill_at, .. } if kill_at <= now => self.kill_overdue(i, now),
                _ => {}
            }
        }
    }

    /// Send service `i` its stop signal; SIGKILL follows at its timeout.
    fn ask_to_stop(&mut self, i: usize, now: Instant) {
        let svc = &mut self.services[i];
        let Some(pid) = svc.state.pid() else { return };
        self.launcher
            .signal(pid, svc.def.stop_signal.parse().unwrap_or(Signal::SIGTERM));
        svc.state = State::Stopping {
            pid,
            kill_at: crate::deadline(now, Duration::from_millis(svc.def.stop_timeout_ms)),
        };
    }

    /// Service `i` outlived its stop timeout: SIGKILL, and look again a
    /// little later in case even that is slow.
    fn kill_overdue(&mut self, i: usize, now: Instant) {
        if let Some(pid) = self.services[i].state.pid() {
            self.launcher.signal(pid, Signal::SIGKILL);
            self.services[i].state = State::Stopping {
                pid,
                kill_at: crate::deadline(now, Duration::from_secs(1)),
            };
        }
    }

    fn find(&self, name: &str) -> Result<usize, String> {
        self.index(name).ok_or_else(|| {
            let names: Vec<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
            format!("no service named {name:?}; services: {}", names.join(", "))
        })
    }

    /// Ask one service to stop (`keelctl stop`); it stays stopped.
    pub fn stop_service(&mut self, name: &str, now: Instant) -> Result<(), String> {
        let i = self.find(name)?;
        match self.services[i].state {
            State::Starting { .. } | State::Running { .. } => self.ask_to_stop(i, now),
            State::Stopping { .. } => {}
            _ => self.services[i].state = State::Stopped,
        }
        self.services[i].start_after_stop = false;
        Ok(())
    }

    /// Send `signal` (one of [`KILL_SIGNALS`]) to a running service's main
    /// process (`keelctl kill`); it ends or restarts as its policy says,
    /// like a process that died by itself.
    pub fn kill_service(&mut self, name: &str, signal: &str) -> Result<(), String> {
        let sig = KILL_SIGNALS
            .contains(&signal)
            .then(|| signal.parse::<Signal>().ok())
            .flatten()
            .ok_or_else(|| {
                format!(
                    "signal {signal:?} is not one of {}",
                    KILL_SIGNALS.join(", ")
                )
            })?;
        let i = self.find(name)?;
        let pid = self.services[i]
            .state
            .pid()
            .ok_or_else(|| format!("{name} is not running"))?;
        self.launcher.signal(pid, sig);
        Ok(())
    }

    /// Start a service that is not running (`keelctl start`), with a clean
    /// failure count; it still waits for its dependencies.
    pub fn start_service(&mut self, name: &str, now: Instant) -> Result<(), String> {
        let i = self.find(name)?;
        let svc = &mut self.services[i];
        match svc.state {
            State::Starting { .. } | State::Running { .. } => {
                return Err(format!("{name} is already running"))
            }
            State::Stopping { .. } => svc.start_after_stop = true,
            _ => svc.state = State::Waiting,
        }
        svc.failures_in_row = 0;
        self.tick(now);
        Ok(())
    }

    /// Stop a service if it runs, then start it again (`keelctl restart`).
    pub fn restart_service(&mut self, name: &str, now: Instant) -> Result<(), String> {
        self.stop_service(name, now)?;
        let i = self.find(name)?;
        if matches!(self.services[i].state, State::Stopping { .. }) {
            self.services[i].start_after_stop = true;
            self.services[i].failures_in_row = 0;
            Ok(())
        } else {
            self.start_service(name, now)
        }
    }

    /// Record the end of `pid`; false if it was not a service (an orphan,
    /// a probe, or a service already given up on).
    pub fn on_exit(&mut self, pid: Pid, how: Exit, now: Instant) -> bool {
        let shutting_down = self.shutting_down;
        let Some(svc) = self
            .services
            .iter_mut()
            .find(|s| s.state.pid() == Some(pid))
        else {
            return false;
        };
        if shutting_down || matches!(svc.state, State::Stopping { .. }) {
            svc.state = if svc.start_after_stop && !shutting_down {
                State::Waiting
            } else {
                State::Stopped
            };
            svc.start_after_stop = false;
            return true;
        }
        let ran = svc
            .started
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        if svc.def.kind == Kind::Oneshot && how.success() {
            svc.state = State::Done;
            svc.ready = Some(now);
            svc.failures_in_row = 0;
            return true;
        }
        if ran >= STABLE_AFTER {
            svc.failures_in_row = 0;
        }
        if !how.success() {
            svc.last_error = Some(match how {
                Exit::Code(c) => format!("exited with status {c}"),
                Exit::Signal(s) => format!("killed by signal {s}"),
            });
        }
        let restart = match svc.def.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !how.success(),
            RestartPolicy::Never => false,
        };
        if !restart {
            svc.state = State::Exited(how);
            return true;
        }
        svc.failures_in_row = svc.failures_in_row.saturating_add(1);
        if svc.failures_in_row >= CRASH_LOOP_LIMIT {
            crate::log(format!(
                "{}: failed {} times in a row, giving up",
                svc.name, svc.failures_in_row
            ));
            svc.state = State::Failed;
        } else {
            svc.restarts = svc.restarts.saturating_add(1);
            svc.state = State::Backoff {
                until: crate::deadline(now, backoff(svc.failures_in_row)),
            };
        }
        true
    }

    /// The health gate closed before every required service was ready:
    /// those that were not say so, and the boot has failed.
    fn close_gate(&mut self) {
        let after = self.gate_closes.saturating_duration_since(self.epoch.0);
        for svc in self.services.iter_mut().filter(|s| s.def.required) {
            if !svc.state.ready() && !svc.state.broken() {
                let msg = format!(
                    "not ready when the boot's health gate closed, {} s after keel-init started",
                    after.as_secs()
                );
                crate::log(format!("{}: {msg}", svc.name));
                svc.last_error = Some(msg);
            }
        }
        self.gate_expired = true;
    }

    /// When the next restart, probe or stop deadline is due, or the end of
    /// the wait for the health gate's verdict.
    pub fn next_deadline(&self) -> Option<Instant> {
        let deferred = !self.verdict_reached
            && self
                .services
                .iter()
                .any(|s| !s.boot_critical && s.state == State::Waiting);
        let defer_end = deferred.then_some(crate::deadline(self.epoch.0, DEFER_AT_MOST));
        self.services
            .iter()
            .filter_map(|s| match s.state {
                State::Backoff { until } => Some(until),
                State::Starting { next_probe, .. }
                    if s.def.readiness.is_some() && s.def.kind == Kind::Service =>
                {
                    Some(next_probe)
                }
                State::Stopping { kill_at, .. } => Some(kill_at),
                _ => None,
            })
            .chain(defer_end)
            .chain((!self.verdict_reached).then_some(self.gate_closes))
            .min()
    }

    /// (ready, total).
    pub fn counts(&self) -> (usize, usize) {
        (
            self.services.iter().filter(|s| s.state.ready()).count(),
            self.services.len(),
        )
    }

    pub fn health(&self) -> Health {
        let required = || self.services.iter().filter(|s| s.def.required);
        let all_ready = required().all(|s| s.state.ready());
        if required().any(|s| {
            s.state.broken() || (s.def.kind == Kind::Service && matches!(s.state, State::Exited(_)))
        }) || (self.gate_expired && !all_ready)
        {
            Health::Failed
        } else if all_ready {
            Health::Healthy
        } else {
            Health::Starting
        }
    }

    /// Begin shutting down: nothing starts or restarts any more.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        for svc in &mut self.services {
            if matches!(svc.state, State::Backoff { .. } | State::Waiting) {
                svc.state = State::Stopped;
            }
        }
    }

    /// One step of an orderly shutdown: a service is asked to stop (its
    /// `stop_signal`) once every service that comes after it has stopped,
    /// and killed when its stop timeout runs out.
    pub fn stop_tick(&mut self, now: Instant) {
        self.begin_shutdown();
        for i in (0..self.services.len()).rev() {
            let name = self.services[i].name.clone();
            match self.services[i].state {
                State::Starting { .. } | State::Running { .. } => {
                    let dependents_up = self.services.iter().any(|s| {
                        (s.def.after.contains(&name) || s.def.requires.contains(&name))
                            && s.state.pid().is_some()
                    });
                    if dependents_up {
                        continue;
                    }
                    self.ask_to_stop(i, now);
                }
                State::Stopping { kill_at, .. } if kill_at <= now => self.kill_overdue(i, now),
                _ => {}
            }
        }
    }

    pub fn all_stopped(&self) -> bool {
        !self.services.iter().any(|s| s.state.pid().is_some())
    }

    pub fn status(&self) -> Vec<ServiceStatus> {
        self.services
            .iter()
            .map(|s| {
                let pid = s.state.pid();
                let facts = pid.map(|p| self.launcher.facts(p)).unwrap_or_default();
                ServiceStatus {
                    name: s.name.clone(),
                    description: s.def.description.clone(),
                    kind: s.def.kind,
                    state: s.state.public(),
                    pid: pid.map(Pid::as_raw),
                    ns_pid: facts.ns_pid,
                    pid_ns: s.def.namespaces.pid,
                    root_readonly: facts.root_readonly,
                    restarts: s.restarts,
                    capabilities: s.def.capabilities.clone(),
                    last_error: s.last_error.clone(),
                    started_ms: s.started.map(|t| self.ms(t)),
                    ready_ms: s.ready.map(|t| self.ms(t)),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;

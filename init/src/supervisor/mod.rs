//! The service table: which services run, in what order, whether they are
//! ready, what happened to them, and when to restart or stop them. Host
//! effects go through [`Launcher`], so this logic is tested without root.

use std::time::{Duration, Instant};

use nix::unistd::Pid;

use keel_formats::container::{ContainerDef, RestartPolicy};
use keel_formats::lifecycle::Kind;

use keel_api::init::ServiceStatus;

mod control;
mod service;
mod tick;

pub use service::*;

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
    /// Changed only by the supervisor's own methods: its state machine
    /// holds only if nothing else moves a service from state to state.
    services: Vec<Service>,
    launcher: L,
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

    /// The service table, in start order.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    pub fn launcher(&self) -> &L {
        &self.launcher
    }

    /// The launcher's own state (log pipes, the ESP mount), which is not
    /// the service table's.
    pub fn launcher_mut(&mut self) -> &mut L {
        &mut self.launcher
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

    fn find(&self, name: &str) -> Result<usize, String> {
        self.index(name).ok_or_else(|| {
            let names: Vec<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
            format!("no service named {name:?}; services: {}", names.join(", "))
        })
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
}

#[cfg(test)]
mod tests;

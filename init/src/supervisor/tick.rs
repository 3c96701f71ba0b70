//! One turn of the service table: the health gate's bookkeeping, starting
//! what may start, probing what is starting, and the timers of restarts
//! and stops.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use keel_formats::container::ContainerDef;
use keel_formats::lifecycle::Kind;

use super::{
    backoff, Health, Launcher, Probe, StartError, State, Supervisor, CRASH_LOOP_LIMIT,
    DEFER_AT_MOST,
};

impl<L: Launcher> Supervisor<L> {
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
        // Starting a service can let others start in the same tick. `|`,
        // not `||`: every pass both starts and probes.
        while self.start_ready(now, defer_others) | self.probe_starting(now) {}
        for i in 0..self.services.len() {
            match self.services[i].state {
                State::Backoff { until } if until <= now => self.start_one(i, now),
                State::Stopping { kill_at, .. } if kill_at <= now => self.kill_overdue(i, now),
                _ => {}
            }
        }
    }

    /// Start the waiting services whose dependencies are ready (together),
    /// and fail those whose dependencies never will be. Whether anything
    /// changed.
    fn start_ready(&mut self, now: Instant, defer_others: bool) -> bool {
        let mut changed = false;
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
        changed
    }

    /// Probe the starting services that are due; whether one became ready
    /// or failed.
    fn probe_starting(&mut self, now: Instant) -> bool {
        let mut changed = false;
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
                            next_probe: crate::deadline(now, Duration::from_millis(interval_ms)),
                        };
                    }
                }
            }
        }
        changed
    }

    pub(super) fn start_one(&mut self, i: usize, now: Instant) {
        self.start_many(&[i], now);
    }

    /// Start services `which` together.
    pub(super) fn start_many(&mut self, which: &[usize], now: Instant) {
        let batch: Vec<(&str, &ContainerDef)> = which
            .iter()
            .map(|&i| (self.services[i].name.as_str(), &self.services[i].def))
            .collect();
        let results = self.launcher.start_all(&batch);
        for (&i, result) in which.iter().zip(results) {
            self.started(i, result, now);
        }
    }

    pub(super) fn started(&mut self, i: usize, result: Result<Pid, StartError>, now: Instant) {
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

    /// The health gate closed before every required service was ready:
    /// those that were not say so, and the boot has failed.
    pub(super) fn close_gate(&mut self) {
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
}

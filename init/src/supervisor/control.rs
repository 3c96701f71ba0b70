//! What is done to services from outside the table's own turn: an
//! operator's start, stop, restart and kill, a process's exit, and
//! shutdown.

use std::time::Instant;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::*;

impl<L: Launcher> Supervisor<L> {
    /// Send service `i` its stop signal; SIGKILL follows at its timeout.
    pub(super) fn ask_to_stop(&mut self, i: usize, now: Instant) {
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
    pub(super) fn kill_overdue(&mut self, i: usize, now: Instant) {
        if let Some(pid) = self.services[i].state.pid() {
            self.launcher.signal(pid, Signal::SIGKILL);
            self.services[i].state = State::Stopping {
                pid,
                kill_at: crate::deadline(now, Duration::from_secs(1)),
            };
        }
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
}

//! A service as the supervisor sees it: its state, how it ended, what
//! the launcher answers, and the launcher itself ([`Launcher`], the seam
//! to the host).

use std::time::Instant;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use keel_formats::container::ContainerDef;

use crate::launch::ProcFacts;
use keel_api::init::ServiceState;

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
    pub(super) fn success(self) -> bool {
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
    pub(super) fn ready(&self) -> bool {
        matches!(self, State::Running { .. } | State::Done)
    }

    /// Will not become ready without outside help.
    pub(super) fn broken(&self) -> bool {
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
    pub(super) fn new(name: String, def: ContainerDef, boot_critical: bool) -> Service {
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

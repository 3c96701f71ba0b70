//! What `keelctl update` and `keel-update` say to each other over
//! [`UPDATE_SOCKET`]: one JSON request line, one JSON response line. For
//! `ApplyFd` the bundle's file descriptor travels with the request
//! (SCM_RIGHTS), so the bundle may live in any container's filesystem.

use serde::{Deserialize, Serialize};

pub const UPDATE_SOCKET: &str = "/run/keel/update.sock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum UpdateRequest {
    Status,
    /// Check the repository now, and install what is new.
    Check,
    /// Install the bundle whose fd comes with this message.
    ApplyFd,
    /// Make the other slot the one that boots next.
    Rollback,
}

/// What keel-update is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateState {
    #[default]
    Idle,
    Checking,
    Downloading,
    Verifying,
    Installing,
    /// A new entry is in place: the host boots it next.
    Installed,
}

impl std::fmt::Display for UpdateState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            UpdateState::Idle => "idle",
            UpdateState::Checking => "checking",
            UpdateState::Downloading => "downloading",
            UpdateState::Verifying => "verifying",
            UpdateState::Installing => "installing",
            UpdateState::Installed => "installed",
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Downloading, verifying or installing.
    pub phase: UpdateState,
    pub bytes: u64,
    pub total: u64,
    pub rate_bytes_per_s: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub version: String,
    pub slot: String,
    /// The other slot's boot entry, if it has one.
    pub other: Option<String>,
    pub state: UpdateState,
    pub progress: Option<Progress>,
    pub repository: Option<String>,
    pub channel: String,
    /// The outcome of the last check, install or update, in words.
    pub last_result: Option<String>,
    /// This host's place in staged rollouts, and its turn in the last
    /// one seen, in words.
    #[serde(default)]
    pub rollout: Option<String>,
    /// What became of the last update this host tried, as data.
    #[serde(default)]
    pub outcome: Option<Outcome>,
    /// Where the host stands with its group's reboot semaphore, in words.
    #[serde(default)]
    pub coordination: Option<String>,
}

/// What became of an update a host tried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    pub kind: OutcomeKind,
    /// The version the host tried.
    pub version: String,
    /// Seconds since the epoch.
    pub at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// Booted and passed the health gate.
    Updated,
    /// Did not come up healthy: the host went back to the other slot.
    RolledBack,
    /// Refused or failed before the reboot (download, signature, write).
    Failed,
}

impl OutcomeKind {
    /// Whether the fleet counts it against the release.
    pub fn failed(self) -> bool {
        !matches!(self, OutcomeKind::Updated)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", content = "value", rename_all = "snake_case")]
pub enum UpdateResponse {
    Done(String),
    Status(Box<UpdateStatus>),
    Error(String),
}

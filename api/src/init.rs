//! keel-init's API (keelctl and keel-update are its clients): one JSON
//! request line and one JSON response line per connection on
//! [`keel_formats::API_SOCKET`], which root and the admin group
//! ([`keel_formats::ADMIN_GID`]) may use.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Status,
    /// Stamped output lines of a service (or `kernel`) from sequence
    /// number `since` on.
    Logs {
        name: String,
        since: u64,
    },
    Start {
        name: String,
    },
    Stop {
        name: String,
    },
    Restart {
        name: String,
    },
    /// Send a signal (by name, `SIGKILL`) to a service's main process.
    Kill {
        name: String,
        signal: String,
    },
    /// Run `argv` inside a running service; the caller's stdin, stdout and
    /// stderr travel with the request (SCM_RIGHTS).
    Exec {
        name: String,
        argv: Vec<String>,
    },
    /// Check a host config file's text as this host would read it (over
    /// the image's defaults, against the image's services).
    ValidateConfig {
        /// What to call the file in the problems (its path on the caller's
        /// side).
        name: String,
        text: String,
    },
    /// Check a host config, then run on it: only what it changes restarts.
    /// With `try_s`, it is reverted after that many seconds unless
    /// confirmed; without, it is kept on the ESP for the next boots.
    ApplyConfig {
        name: String,
        /// At most [`MAX_TRIAL_S`].
        text: String,
        #[serde(default)]
        try_s: Option<u64>,
    },
    /// Keep the config on trial.
    ConfirmConfig,
    /// Pull an image from its registry (as the host config's
    /// `[registries]` say) into the store, even if the store has it.
    /// Answered, like the other image requests, with
    /// [`crate::pull::PullEvent`] lines: progress, then the outcome.
    ImagePull {
        reference: String,
    },
    /// Every image in the store.
    ImageList,
    /// Remove an image no container of the host config uses.
    ImageRm {
        reference: String,
    },
    /// Remove every image no container of the host config uses, and the
    /// unpacked roots no service runs on.
    ImagePrune,
    /// The container networks as the kernel has them: links and the
    /// rules of `table inet keel`.
    Network,
    Poweroff,
    Reboot,
}

/// The longest `config apply --try`: a day, the longest wait anywhere. A trial is a safety net for
/// a change that could cut the host off; one longer than that is a
/// mistake, and an unbounded one would overflow the clock.
pub const MAX_TRIAL_S: u64 = keel_formats::lifecycle::MAX_WAIT_MS / 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    Status(Status),
    Logs {
        lines: Vec<String>,
        next: u64,
    },
    /// An `exec` ended with this status.
    Exited {
        code: i32,
    },
    /// A host config's problems, compiler style; none: it is valid.
    Problems(Vec<String>),
    /// What applying a host config changed, and what did not take.
    Applied {
        changes: Vec<String>,
        warnings: Vec<String>,
    },
    /// Answer to [`Request::Network`], read from the kernel.
    Network {
        /// `NAME [bridge] [on BRIDGE]`, every link but loopback.
        links: Vec<String>,
        /// `CHAIN: expression(data) ...`, one per rule.
        rules: Vec<String>,
    },
    Ok,
    Error(String),
}

/// Which config the host runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfigSource {
    /// The image's defaults with the ESP's file over them.
    Esp,
    /// The ESP's file has problems: the last good config.
    LastGood,
    /// The image's defaults alone (no file on the ESP, or nothing better).
    Defaults,
    /// Applied by `keelctl config apply --try`: reverted unless confirmed.
    Trial,
}

/// What `keelctl status` shows of the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigState {
    pub source: ConfigSource,
    /// The ESP file's problems, compiler style; empty when it is fine.
    pub errors: Vec<String>,
    /// Services the config disables.
    pub disabled: Vec<String>,
    /// What the config asks for that could not be done (an image that
    /// does not unpack, an address the kernel refused).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// A trial config's deadline, in milliseconds since boot.
    #[serde(default)]
    pub trial_until_ms: Option<u64>,
}

/// The host's health, as the boot's health gate sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Required services still on their way.
    Starting,
    /// Every required service ready.
    Healthy,
    /// A required service failed.
    Failed,
}

/// Where a service is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    /// For what it comes after.
    Waiting,
    /// Started, not ready yet.
    Starting,
    /// Ready.
    Running,
    /// A oneshot that finished.
    Done,
    /// Waiting out its backoff before the next start.
    Restarting,
    /// Ended, and not to be started again by its policy.
    Exited,
    /// Failed for good (too many restarts, or a required dependency).
    Failed,
    /// Asked to stop, not ended yet.
    Stopping,
    /// Stopped by request.
    Stopped,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Failed => "failed",
        })
    }
}

impl std::fmt::Display for ServiceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            ServiceState::Waiting => "waiting",
            ServiceState::Starting => "starting",
            ServiceState::Running => "running",
            ServiceState::Done => "done",
            ServiceState::Restarting => "restarting",
            ServiceState::Exited => "exited",
            ServiceState::Failed => "failed",
            ServiceState::Stopping => "stopping",
            ServiceState::Stopped => "stopped",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The host's name (services have their own UTS namespaces).
    #[serde(default)]
    pub hostname: String,
    pub version: String,
    pub slot: String,
    pub uptime_ms: u64,
    /// Every required service ready (the health gate's view).
    pub ready: bool,
    pub health: Health,
    pub services: Vec<ServiceStatus>,
    /// The host config in use, and the problems of the ESP's file.
    #[serde(default)]
    pub config: Option<ConfigState>,
    /// Whether the firmware enforced Secure Boot for this boot; none on a
    /// machine without UEFI variables (direct boot).
    #[serde(default)]
    pub secure_boot: Option<bool>,
    /// What `/var` is this boot; none when PID 1 did not come from stage 1.
    #[serde(default)]
    pub var: Option<VarStorage>,
}

/// What holds `/var`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VarStorage {
    /// The data partition, encrypted, its key unsealed by the TPM or a
    /// recovery key.
    Encrypted,
    /// The data partition, not encrypted.
    Plain,
    /// Memory: the data partition did not open (stage 1 said why).
    Temporary,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub description: String,
    /// "service" or "oneshot".
    pub kind: keel_formats::lifecycle::Kind,
    pub state: ServiceState,
    pub pid: Option<i32>,
    /// PID inside the service's PID namespace.
    pub ns_pid: Option<i32>,
    /// "private" or "host".
    pub pid_ns: keel_formats::container::Share,
    pub root_readonly: Option<bool>,
    pub restarts: u32,
    pub capabilities: Vec<String>,
    pub last_error: Option<String>,
    /// Milliseconds since boot when the service last started.
    pub started_ms: Option<u64>,
    /// Milliseconds since boot when it became ready (a oneshot: finished).
    pub ready_ms: Option<u64>,
}

/// `keelctl status` as a table.
pub fn render_status(s: &Status) -> String {
    let secure_boot = match s.secure_boot {
        Some(true) => "  secure boot",
        Some(false) => "  secure boot off",
        None => "",
    };
    let var = match s.var {
        Some(VarStorage::Encrypted) => "  /var encrypted",
        Some(VarStorage::Temporary) => "  /var TEMPORARY",
        Some(VarStorage::Plain) | None => "",
    };
    let mut out = format!(
        "{}: keel {}  slot {}  up {:.1} s  {}{secure_boot}{var}\n",
        s.hostname,
        s.version,
        s.slot,
        s.uptime_ms as f64 / 1000.0,
        s.health
    );
    out.push_str(&format!(
        "{:<12} {:<10} {:>6} {:>6} {:<8} {:<5} {:>8}  {}\n",
        "SERVICE", "STATE", "PID", "NSPID", "PIDNS", "ROOT", "RESTARTS", "CAPS"
    ));
    let opt = |v: Option<i32>| v.map_or("-".to_string(), |v| v.to_string());
    for svc in &s.services {
        let root = match svc.root_readonly {
            Some(true) => "ro",
            Some(false) => "rw",
            None => "-",
        };
        let caps = if svc.capabilities.is_empty() {
            "-".to_string()
        } else {
            svc.capabilities.join(",")
        };
        out.push_str(&format!(
            "{:<12} {:<10} {:>6} {:>6} {:<8} {:<5} {:>8}  {}\n",
            svc.name,
            svc.state,
            opt(svc.pid),
            opt(svc.ns_pid),
            match svc.pid_ns {
                keel_formats::container::Share::Private => "private",
                keel_formats::container::Share::Host => "host",
            },
            root,
            svc.restarts,
            caps
        ));
        if let Some(e) = &svc.last_error {
            out.push_str(&format!("{:<12} last error: {e}\n", ""));
        }
    }
    if let Some(c) = &s.config {
        let source = match c.source {
            ConfigSource::Esp => "the ESP's host.toml over the image's defaults",
            ConfigSource::LastGood => "the last good config (the ESP's host.toml has problems)",
            ConfigSource::Defaults => "the image's defaults",
            ConfigSource::Trial => "on trial (keelctl config confirm keeps it)",
        };
        out.push_str(&format!("config: {source}\n"));
        if let Some(until) = c.trial_until_ms {
            let left = until.saturating_sub(s.uptime_ms) / 1000;
            out.push_str(&format!("  reverts to the previous config in {left} s\n"));
        }
        for w in &c.warnings {
            out.push_str(&format!("  warning: {w}\n"));
        }
        if !c.disabled.is_empty() {
            out.push_str(&format!(
                "disabled by the config: {}\n",
                c.disabled.join(", ")
            ));
        }
        for e in &c.errors {
            out.push_str(&format!("  {e}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json() {
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"cmd":"status"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"poweroff"}"#).unwrap(),
            Request::Poweroff
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
        let logs = Request::Logs {
            name: "web".into(),
            since: 3,
        };
        assert_eq!(
            serde_json::to_string(&logs).unwrap(),
            r#"{"cmd":"logs","name":"web","since":3}"#
        );
    }

    #[test]
    fn states_pad_like_the_words_they_are() {
        assert_eq!(format!("{:<10}|", ServiceState::Running), "running   |");
        assert_eq!(format!("{:<8}|", Health::Healthy), "healthy |");
    }

    #[test]
    fn table_shows_each_service() {
        let s = Status {
            hostname: "edge".into(),
            version: "0.1.0".into(),
            slot: "a".into(),
            uptime_ms: 1500,
            ready: true,
            health: Health::Healthy,
            services: vec![ServiceStatus {
                name: "web".into(),
                description: String::new(),
                kind: keel_formats::lifecycle::Kind::Service,
                state: ServiceState::Running,
                pid: Some(57),
                ns_pid: Some(1),
                pid_ns: keel_formats::container::Share::Private,
                root_readonly: Some(true),
                restarts: 0,
                capabilities: vec!["CAP_NET_BIND_SERVICE".into()],
                last_error: None,
                started_ms: Some(900),
                ready_ms: Some(950),
            }],
            config: Some(ConfigState {
                source: ConfigSource::LastGood,
                errors: vec!["/efi/keel/host.toml:1:12: `hostname`: invalid type".into()],
                disabled: vec!["db".into()],
                warnings: vec!["containers.app: no such file".into()],
                trial_until_ms: None,
            }),
            secure_boot: Some(true),
            var: Some(VarStorage::Encrypted),
        };
        let t = render_status(&s);
        assert!(
            t.lines()
                .next()
                .unwrap()
                .ends_with("healthy  secure boot  /var encrypted"),
            "{t}"
        );
        assert!(t.contains("config: the last good config (the ESP's host.toml has problems)"));
        assert!(t.contains("disabled by the config: db"));
        assert!(t.contains("  warning: containers.app: no such file"));
        assert!(t.contains("  /efi/keel/host.toml:1:12: `hostname`"));
        assert!(t.starts_with("edge: keel 0.1.0  slot a"), "{t}");
        let row = t.lines().find(|l| l.starts_with("web")).unwrap();
        let cols: Vec<_> = row.split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "web",
                "running",
                "57",
                "1",
                "private",
                "ro",
                "0",
                "CAP_NET_BIND_SERVICE"
            ]
        );
    }
}

//! System container definitions (`system-containers/*.toml`).
//!
//! The image builder validates these and copies them into the root
//! filesystem under [`crate::CONTAINERS_DIR`]; `keel-init` reads them back at
//! boot with the same types. Parsing rejects unknown keys; [`validate`]
//! checks what serde cannot express.

use serde::{Deserialize, Serialize};

use crate::lifecycle::{validate_readiness, Kind, Readiness};
use crate::limits::{
    rlimit_number, Identity, Resources, Rlimits, Seccomp, UserNamespace, Writable, WritableKind,
};
use crate::syspaths::SystemPaths;

/// An interface of a container on a container network: a veth whose
/// host end is on `bridge`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetInterface {
    pub bridge: String,
    /// The container's addresses with their prefix lengths.
    pub addresses: Vec<(std::net::IpAddr, u8)>,
    /// Default routes through these (the bridge's addresses); only the
    /// first interface has them.
    pub gateways: Vec<std::net::IpAddr>,
}

/// One system service, run by `keel-init` as a container.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerDef {
    /// One line for `keelctl status`.
    #[serde(default)]
    pub description: String,
    /// A long-running service (default) or a run-to-completion oneshot.
    #[serde(default)]
    pub kind: Kind,
    /// Program and arguments, resolved inside the container's root. With
    /// `rootfs.oci`, the image's Entrypoint and Cmd when left out.
    #[serde(default)]
    pub command: Vec<String>,
    /// Start only once these services are ready (oneshots: done).
    #[serde(default)]
    pub after: Vec<String>,
    /// Like `after`, and fail if one of these fails.
    #[serde(default)]
    pub requires: Vec<String>,
    /// Counts for the boot health gate (default true).
    #[serde(default = "yes")]
    pub required: bool,
    #[serde(default)]
    pub readiness: Option<Readiness>,
    /// `NAME=value` pairs; nothing is inherited from `keel-init`.
    #[serde(default)]
    pub env: Vec<String>,
    /// Hostname inside a private UTS namespace; defaults to the service name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Working directory inside the container.
    #[serde(default = "default_cwd")]
    pub cwd: String,
    /// Attach stdin/stdout/stderr to the serial console as the controlling
    /// terminal (an admin shell) instead of the service's log file.
    #[serde(default)]
    pub console: bool,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Run from the root of this other service (keel-init's copies of a
    /// template, such as dhcp-eth0 of dhcp); never read from a file.
    #[serde(skip)]
    pub root_of: Option<String>,
    /// Run from this folder instead (a user container's unpacked image
    /// under /var); never read from a file.
    #[serde(skip)]
    pub root_dir: Option<String>,
    /// Interfaces on container networks, `eth0` onwards, in a network
    /// namespace of its own (a user container's, set by keel-init from
    /// the host config); never read from a file.
    #[serde(skip)]
    pub interfaces: Vec<NetInterface>,
    /// The signal that asks the service to stop; SIGKILL follows if it is
    /// still running after the stop timeout. A service that is PID 1 of its
    /// namespace only receives signals it has a handler for.
    #[serde(default = "sigterm")]
    pub stop_signal: String,
    /// How long a stopping service gets before SIGKILL.
    #[serde(default = "five_seconds")]
    pub stop_timeout_ms: u64,
    /// uid, gid and supplementary groups of the command (default root, 0).
    #[serde(default)]
    pub user: Identity,
    /// Capabilities kept, by name (`CAP_NET_BIND_SERVICE`). Default: none.
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub namespaces: Namespaces,
    /// Run in a user namespace with these id maps (needs a private PID
    /// namespace), so that root inside is an unprivileged user outside.
    #[serde(default)]
    pub user_namespace: Option<UserNamespace>,
    /// What the image builder puts into this container's read-only root.
    pub rootfs: RootfsDef,
    /// Host paths bind-mounted into the container.
    #[serde(default)]
    pub mounts: Vec<BindMount>,
    /// Paths of the read-only root the service may write.
    #[serde(default)]
    pub writable: Vec<Writable>,
    /// Host devices the service may use (bind-mounted into its /dev).
    #[serde(default)]
    pub devices: Vec<String>,
    /// Forbid gaining privileges through exec (setuid binaries, file
    /// capabilities). On unless written out as false.
    #[serde(default = "yes")]
    pub no_new_privs: bool,
    #[serde(default)]
    pub seccomp: Seccomp,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub rlimits: Rlimits,
    /// -1000 (never OOM-killed) to 1000 (first to go).
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
    /// Exceptions to the kernel files every container has hidden or
    /// read-only ([`crate::syspaths`]).
    #[serde(default, skip_serializing_if = "is_default")]
    pub system_paths: SystemPaths,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn five_seconds() -> u64 {
    5000
}

fn sigterm() -> String {
    "SIGTERM".to_string()
}

/// Signals a definition may name as `stop_signal`.
pub const STOP_SIGNALS: [&str; 7] = [
    "SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGKILL",
];

fn default_cwd() -> String {
    "/".to_string()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// Whether a namespace is the container's own or shared with the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Share {
    #[default]
    Private,
    Host,
}

/// Namespaces other than mount, which is always private.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Namespaces {
    #[serde(default)]
    pub pid: Share,
    #[serde(default = "host")]
    pub net: Share,
    #[serde(default)]
    pub ipc: Share,
    #[serde(default)]
    pub uts: Share,
}

fn host() -> Share {
    Share::Host
}

/// The same defaults whether or not a `[namespaces]` table is written.
impl Default for Namespaces {
    fn default() -> Self {
        Namespaces {
            pid: Share::Private,
            net: host(),
            ipc: Share::Private,
            uts: Share::Private,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsDef {
    /// Userland packages (`recipes/packages/<name>.toml`) or keel binaries
    /// (`keelctl`) installed into the root.
    #[serde(default)]
    pub contents: Vec<String>,
    /// An OCI image layout folder or a `docker save` archive, relative to
    /// the definition's folder, whose layers make the root (`contents` go
    /// on top).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<String>,
    /// Files copied into the root: path in the container → file beside
    /// the definition (a DHCP client's script, say).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub files: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BindMount {
    pub source: String,
    pub target: String,
    #[serde(default = "yes")]
    pub readonly: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContainerError {
    #[error("{0}")]
    Parse(String),
    #[error("`command` is empty")]
    EmptyCommand,
    #[error("`command` must start with an absolute path, not {0:?}")]
    RelativeCommand(String),
    #[error("`env` entry {0:?} is not NAME=value")]
    BadEnv(String),
    #[error("`capabilities`: unknown capability {0:?}")]
    UnknownCapability(String),
    #[error("`mounts`: {0:?} must be an absolute path without `..`")]
    BadMountPath(String),
    #[error("`stop_signal` {0:?} is not one of {STOP_SIGNALS:?}")]
    BadStopSignal(String),
    #[error("`{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error("`cwd` {0:?} must be an absolute path")]
    BadCwd(String),
    #[error("service name {0:?} must be 1-32 characters of a-z, 0-9 and '-'")]
    BadName(String),
}

impl ContainerDef {
    /// Parse a definition; the error carries toml's line and column.
    pub fn parse(text: &str) -> Result<Self, ContainerError> {
        toml::from_str(text).map_err(|e| ContainerError::Parse(e.to_string()))
    }

    pub fn hostname_for<'a>(&'a self, name: &'a str) -> &'a str {
        self.hostname.as_deref().unwrap_or(name)
    }
}

/// Checks that go beyond the shape of the file. `name` is the file stem.
/// Whether the seccomp profile compiles is checked apart, by
/// [`crate::seccomp::compile`], which is costly enough that keel-init does
/// it once, when it first starts the service.
pub fn validate(name: &str, def: &ContainerDef) -> Result<(), ContainerError> {
    let name_ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !name_ok {
        return Err(ContainerError::BadName(name.to_string()));
    }
    let prog = def.command.first().ok_or(ContainerError::EmptyCommand)?;
    if !prog.starts_with('/') {
        return Err(ContainerError::RelativeCommand(prog.clone()));
    }
    if let Some(bad) = def
        .env
        .iter()
        .find(|e| !matches!(e.split_once('='), Some((k, _)) if !k.is_empty()))
    {
        return Err(ContainerError::BadEnv(bad.clone()));
    }
    for cap in &def.capabilities {
        capability_number(cap).ok_or_else(|| ContainerError::UnknownCapability(cap.clone()))?;
    }
    let inside = |p: &str| {
        !p.is_empty() && !p.starts_with('/') && p.split('/').all(|c| !c.is_empty() && c != "..")
    };
    for (dst, src) in &def.rootfs.files {
        if !inside(dst) || !inside(src) {
            return Err(ContainerError::Invalid {
                key: format!("rootfs.files.{dst}"),
                message: "both paths must be relative and stay inside their folder".into(),
            });
        }
    }
    for m in &def.mounts {
        for p in [&m.source, &m.target] {
            if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
                return Err(ContainerError::BadMountPath(p.clone()));
            }
        }
    }
    if !STOP_SIGNALS.contains(&def.stop_signal.as_str()) {
        return Err(ContainerError::BadStopSignal(def.stop_signal.clone()));
    }
    if !def.cwd.starts_with('/') {
        return Err(ContainerError::BadCwd(def.cwd.clone()));
    }
    if let Some(u) = &def.user_namespace {
        u.validate().map_err(|m| invalid("user_namespace", m))?;
        if def.namespaces.pid == Share::Host {
            return Err(invalid(
                "user_namespace",
                "needs a private PID namespace (namespaces.pid = \"private\")",
            ));
        }
        if def.console {
            return Err(invalid(
                "user_namespace",
                "a console service cannot run in a user namespace",
            ));
        }
        if u.outside_uid(def.user.uid).is_none() || u.outside_gid(def.user.gid).is_none() {
            return Err(invalid(
                "user_namespace",
                "the service's user.uid and user.gid must be mapped",
            ));
        }
    }
    def.system_paths
        .validate()
        .map_err(|m| invalid("system_paths", m))?;
    if let Some(r) = &def.readiness {
        validate_readiness(r).map_err(|m| invalid("readiness", m))?;
    }
    if def.after.iter().chain(&def.requires).any(|d| d == name) {
        return Err(invalid("after", format!("{name} cannot wait for itself")));
    }
    validate_limits(def)
}

fn invalid(key: &str, message: impl Into<String>) -> ContainerError {
    ContainerError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

fn clean_absolute(p: &str) -> bool {
    p.starts_with('/') && !p.split('/').any(|c| c == ".." || c == ".")
}

fn validate_limits(def: &ContainerDef) -> Result<(), ContainerError> {
    if def.stop_timeout_ms > crate::lifecycle::MAX_WAIT_MS {
        return Err(invalid(
            "stop_timeout_ms",
            format!(
                "{} is more than a day ({})",
                def.stop_timeout_ms,
                crate::lifecycle::MAX_WAIT_MS
            ),
        ));
    }
    for w in &def.writable {
        if !clean_absolute(&w.path) || w.path == "/" {
            return Err(invalid(
                "writable.path",
                format!("{:?} must be an absolute path below /", w.path),
            ));
        }
        if w.kind == WritableKind::Persistent && w.size.is_some() {
            return Err(invalid("writable.size", "only a tmpfs has a size"));
        }
    }
    for d in &def.devices {
        if !d.starts_with("/dev/") || !clean_absolute(d) {
            return Err(invalid(
                "devices",
                format!("{d:?} is not a path under /dev"),
            ));
        }
    }
    for sc in def.seccomp.deny.iter().chain(&def.seccomp.allow) {
        if sc.is_empty()
            || !sc
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(invalid(
                "seccomp",
                format!("{sc:?} is not a system call name"),
            ));
        }
    }
    let r = &def.resources;
    for (key, v) in [
        ("resources.cpu_weight", r.cpu_weight),
        ("resources.io_weight", r.io_weight),
    ] {
        if let Some(v) = v {
            if !(1..=10_000).contains(&v) {
                return Err(invalid(key, format!("{v} is outside 1-10000")));
            }
        }
    }
    if r.cpu_max_percent == Some(0) {
        return Err(invalid(
            "resources.cpu_max_percent",
            "0 would stop the service; leave it out for no limit",
        ));
    }
    if r.pids_max == Some(0) {
        return Err(invalid(
            "resources.pids_max",
            "0 would forbid the service's own process",
        ));
    }
    if let (Some(high), Some(max)) = (r.memory_high, r.memory_max) {
        if high.0 > max.0 {
            return Err(invalid("resources.memory_high", "is above memory_max"));
        }
    }
    for name in def.rlimits.keys() {
        if rlimit_number(name).is_none() {
            return Err(invalid(
                &format!("rlimits.{name}"),
                "unknown limit (nofile, nproc, core, memlock, stack, …)",
            ));
        }
    }
    if let Some(adj) = def.oom_score_adj {
        if !(-1000..=1000).contains(&adj) {
            return Err(invalid(
                "oom_score_adj",
                format!("{adj} is outside -1000..1000"),
            ));
        }
    }
    if def.stop_timeout_ms == 0 || def.stop_timeout_ms > 600_000 {
        return Err(invalid("stop_timeout_ms", "must be 1 to 600000"));
    }
    Ok(())
}

/// Linux capability names in number order (capability.h, Linux 6.1).
pub const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The number of a capability given by name.
pub fn capability_number(name: &str) -> Option<u32> {
    CAPABILITIES
        .iter()
        .position(|c| *c == name)
        .and_then(|n| u32::try_from(n).ok())
}

#[cfg(test)]
#[path = "container_tests.rs"]
mod tests;

//! The resource and confinement knobs of a container definition: cgroup v2
//! limits, rlimits, seccomp, writable paths. Types and validation only.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// cgroup v2 limits of one service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// `memory.max`: bytes, or a size such as "64M"; over it the kernel's
    /// OOM killer acts inside the service's cgroup.
    #[serde(default)]
    pub memory_max: Option<Size>,
    /// `memory.high`: reclaim pressure starts here.
    #[serde(default)]
    pub memory_high: Option<Size>,
    /// `cpu.weight`, 1-10000 (default 100).
    #[serde(default)]
    pub cpu_weight: Option<u32>,
    /// `cpu.max` as a share of one CPU in percent (150 = one and a half).
    #[serde(default)]
    pub cpu_max_percent: Option<u32>,
    /// `pids.max`: processes and threads.
    #[serde(default)]
    pub pids_max: Option<u64>,
    /// `io.weight`, 1-10000 (default 100).
    #[serde(default)]
    pub io_weight: Option<u32>,
}

/// A byte count written as an integer or with a K/M/G suffix (powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SizeRepr", into = "u64")]
pub struct Size(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeRepr {
    Number(u64),
    Text(String),
}

impl From<Size> for u64 {
    fn from(s: Size) -> u64 {
        s.0
    }
}

impl TryFrom<SizeRepr> for Size {
    type Error = String;
    fn try_from(r: SizeRepr) -> Result<Self, String> {
        match r {
            SizeRepr::Number(n) => Ok(Size(n)),
            SizeRepr::Text(t) => parse_size(&t).map(Size),
        }
    }
}

/// "64M" → 67108864.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    // A bare number is bytes here; with a unit it reads as the host config
    // reads sizes.
    t.parse::<u64>()
        .or_else(|_| crate::hostconfig::units::parse_size(t))
        .map_err(|_| format!("{text:?} is not a size (bytes, or a number with K, M or G)"))
}

/// Resource limits by name (`nofile`, `nproc`, …); soft and hard alike.
pub type Rlimits = BTreeMap<String, u64>;

/// rlimit names and their RLIMIT_* numbers (asm-generic/resource.h).
pub const RLIMITS: [(&str, u32); 16] = [
    ("cpu", 0),
    ("fsize", 1),
    ("data", 2),
    ("stack", 3),
    ("core", 4),
    ("rss", 5),
    ("nproc", 6),
    ("nofile", 7),
    ("memlock", 8),
    ("as", 9),
    ("locks", 10),
    ("sigpending", 11),
    ("msgqueue", 12),
    ("nice", 13),
    ("rtprio", 14),
    ("rttime", 15),
];

pub fn rlimit_number(name: &str) -> Option<u32> {
    RLIMITS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// Which seccomp filter a service runs under.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Seccomp {
    #[serde(default)]
    pub profile: SeccompProfile,
    /// System calls denied on top of the profile.
    #[serde(default)]
    pub deny: Vec<String>,
    /// System calls the profile denies that this service needs.
    #[serde(default)]
    pub allow: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SeccompProfile {
    /// Deny what Docker's default profile denies.
    #[default]
    Default,
    /// No filter at all; must be written out.
    Unconfined,
}

/// System calls the default profile makes fail with EPERM: those Docker's
/// default profile leaves out, for kernel modules, kexec, mounts, BPF,
/// tracing others, keyrings, clocks, swap, accounting and reboot.
pub const DEFAULT_DENY: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "personality",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "sysfs",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
];

/// A path inside the read-only root that the service may write.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Writable {
    pub path: String,
    /// `tmpfs` (lost at stop) or `persistent` (kept under
    /// `/var/lib/keel/<service>/`).
    pub kind: WritableKind,
    /// Size limit of a tmpfs.
    #[serde(default)]
    pub size: Option<Size>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WritableKind {
    Tmpfs,
    Persistent,
}

/// User and groups the command runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    /// Supplementary groups.
    #[serde(default)]
    pub groups: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999999G").is_err());
        let r: Resources = toml::from_str("memory_max = \"32M\"\nmemory_high = 1000\n").unwrap();
        assert_eq!(r.memory_max, Some(Size(32 << 20)));
        assert_eq!(r.memory_high, Some(Size(1000)));
        let e = toml::from_str::<Resources>("memory_max = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lots") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn user_namespace_maps() {
        let u: UserNamespace = toml::from_str(
            "uid_map = [{ inside = 0, outside = 100000, count = 65536 }]\ngid_map = [{ inside = 0, outside = 100000, count = 65536 }]\n",
        )
        .unwrap();
        u.validate().unwrap();
        assert_eq!(u.outside_uid(0), Some(100_000));
        assert_eq!(u.outside_uid(70_000), None);
        assert_eq!(UserNamespace::map_text(&u.uid_map), "0 100000 65536\n");
        let root: UserNamespace =
            toml::from_str("uid_map = [{ inside = 0, outside = 0, count = 1 }]\ngid_map = [{ inside = 0, outside = 5, count = 1 }]\n").unwrap();
        assert!(root.validate().unwrap_err().contains("host id 0"));
    }

    #[test]
    fn rlimit_numbers() {
        assert_eq!(rlimit_number("nofile"), Some(7));
        assert_eq!(rlimit_number("nproc"), Some(6));
        assert_eq!(rlimit_number("files"), None);
    }
}

/// A user namespace for an unprivileged service: ids inside the container
/// map to an unprivileged range outside.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserNamespace {
    pub uid_map: Vec<IdMap>,
    pub gid_map: Vec<IdMap>,
}

/// `inside` .. `inside + count` in the container is `outside` .. on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdMap {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

impl UserNamespace {
    /// The host uid that uid `inside` maps to, if any.
    pub fn outside_uid(&self, inside: u32) -> Option<u32> {
        map_id(&self.uid_map, inside)
    }

    pub fn outside_gid(&self, inside: u32) -> Option<u32> {
        map_id(&self.gid_map, inside)
    }

    /// The text for /proc/PID/uid_map or gid_map.
    pub fn map_text(map: &[IdMap]) -> String {
        map.iter()
            .map(|m| format!("{} {} {}\n", m.inside, m.outside, m.count))
            .collect()
    }

    /// Maps must be non-empty, at most 340 lines (the kernel's limit),
    /// non-overlapping inside, and never map anything to host root.
    pub fn validate(&self) -> Result<(), String> {
        for (key, map) in [("uid_map", &self.uid_map), ("gid_map", &self.gid_map)] {
            if map.is_empty() || map.len() > 340 {
                return Err(format!("{key} needs 1 to 340 ranges"));
            }
            for (i, m) in map.iter().enumerate() {
                if m.count == 0
                    || m.inside.checked_add(m.count).is_none()
                    || m.outside.checked_add(m.count).is_none()
                {
                    return Err(format!("{key}: range {i} is empty or overflows"));
                }
                if m.outside == 0 {
                    return Err(format!(
                        "{key}: range {i} maps to host id 0, which defeats the namespace"
                    ));
                }
                for o in &map[..i] {
                    if m.inside < o.inside + o.count && o.inside < m.inside + m.count {
                        return Err(format!("{key}: ranges overlap inside the container"));
                    }
                }
            }
        }
        Ok(())
    }
}

fn map_id(map: &[IdMap], id: u32) -> Option<u32> {
    map.iter()
        .find(|m| id >= m.inside && id - m.inside < m.count)
        .map(|m| m.outside + (id - m.inside))
}

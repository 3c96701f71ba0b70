//! The kernel's files that no container may write or read: the same lists
//! runc and crun apply by default (`maskedPaths`, `readonlyPaths` of
//! their default spec), with what Docker adds. keel-init applies them in
//! every container; a definition opts a path out only by naming it.

use serde::{Deserialize, Serialize};

/// Hidden: a file gets /dev/null over it, a folder an empty read-only
/// tmpfs. They show kernel memory, keys, timers and hardware, or let a
/// process change hardware state.
pub const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// Read-only: sysctls (root writes most of them with no capability),
/// sysrq and interrupt routing. `/sys` itself is always read-only.
pub const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A definition's explicit exceptions, each with a comment in its file
/// saying why (docs/containers.md lists the ones the image's services
/// take).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SystemPaths {
    /// Paths of [`READONLY`] the service may write.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writable: Vec<String>,
    /// Paths of [`MASKED`] the service may see.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmasked: Vec<String>,
}

impl SystemPaths {
    /// Every exception must name a path of the defaults exactly: a typo
    /// must not read as an exception that does nothing.
    pub fn validate(&self) -> Result<(), String> {
        for (list, key, known) in [
            (&self.writable, "writable", READONLY),
            (&self.unmasked, "unmasked", MASKED),
        ] {
            if let Some(bad) = list.iter().find(|p| !known.contains(&p.as_str())) {
                return Err(format!(
                    "{key}: {bad:?} is not one of the paths keel protects ({})",
                    known.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The paths to hide in this container.
    pub fn masked(&self) -> impl Iterator<Item = &'static str> + '_ {
        MASKED
            .iter()
            .copied()
            .filter(|p| !self.unmasked.iter().any(|u| u == p))
    }

    /// The paths to make read-only in this container.
    pub fn readonly(&self) -> impl Iterator<Item = &'static str> + '_ {
        READONLY
            .iter()
            .copied()
            .filter(|p| !self.writable.iter().any(|u| u == p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exceptions_name_known_paths_only() {
        let ok = SystemPaths {
            writable: vec!["/proc/sys".into()],
            unmasked: vec!["/proc/kcore".into()],
        };
        assert_eq!(ok.validate(), Ok(()));
        assert!(!ok.readonly().any(|p| p == "/proc/sys"));
        assert!(ok.readonly().any(|p| p == "/proc/sysrq-trigger"));
        assert!(!ok.masked().any(|p| p == "/proc/kcore"));
        assert_eq!(ok.masked().count(), MASKED.len() - 1);
        let typo = SystemPaths {
            writable: vec!["/proc/sys/".into()],
            ..Default::default()
        };
        let e = typo.validate().unwrap_err();
        assert!(
            e.starts_with("writable: \"/proc/sys/\" is not one of"),
            "{e}"
        );
        let wrong_list = SystemPaths {
            unmasked: vec!["/proc/sys".into()],
            ..Default::default()
        };
        assert!(wrong_list.validate().is_err());
        let none = SystemPaths::default();
        assert_eq!(none.masked().count(), MASKED.len());
        assert_eq!(none.readonly().count(), READONLY.len());
    }
}

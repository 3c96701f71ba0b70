//! The update policy an image carries (`/etc/keel/update.toml`), written by
//! `keel build` from the recipe's `[update]` section and read by
//! `keel-update`. The host config will be able to override it.

use serde::{Deserialize, Serialize};

/// Where an image keeps its update policy.
pub const POLICY_FILE: &str = "/etc/keel/update.toml";
/// The policy in force on a host: the image's with the host config's
/// `[update]` over it, written by keel-init at boot. keel-update reads it
/// first.
pub const HOST_POLICY_FILE: &str = "/run/keel/update.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RebootPolicy {
    /// Reboot into the new slot as soon as it is installed.
    #[default]
    Auto,
    /// Wait for `keelctl reboot`.
    Manual,
    /// Reboot when `window` (UTC) comes.
    Window,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Base URL of the repository (http or https); none: no automatic
    /// checks, only `keelctl update apply FILE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(default = "stable")]
    pub channel: String,
    /// Seconds between checks.
    #[serde(default = "hour")]
    pub check_interval_s: u64,
    #[serde(default)]
    pub reboot: RebootPolicy,
    /// `HH:MM-HH:MM` (UTC) for `reboot = "window"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<crate::hostconfig::values::Window>,
    /// Public keys (hex) trusted besides the image's key files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_keys: Vec<String>,
    /// The host's seed for its place in staged rollouts; none: the one
    /// keel-update drew at random on its first run and keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_seed: Option<u64>,
    /// Reboots coordinated with the rest of a group through etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordination: Option<Coordination>,
}

/// `[update.coordination]` as keel-update takes it: before rebooting into
/// a new slot it takes one of `max_rebooting` slots of the group's reboot
/// semaphore in etcd, and it reports its state under the same prefix
/// (docs/update.md, "Reboots coordinated through etcd").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coordination {
    /// etcd endpoints (`https://host:2379`), tried in order.
    pub etcd: Vec<String>,
    pub group: String,
    pub max_rebooting: u32,
    /// This host's name in the group (the host name, or one made from the
    /// rollout seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// How long a reboot slot outlives a host that stopped renewing it.
    pub lock_ttl_s: u64,
    /// Seconds between reports of the host's state.
    pub report_interval_s: u64,
    /// PEM: the CA that signed etcd's certificate (none: the web's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// PEM: the client certificate and its key, for etcd's
    /// `--client-cert-auth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Reboot anyway when etcd cannot be reached.
    #[serde(default)]
    pub reboot_without_etcd: bool,
}

/// What a group name, and so an etcd key, may be made of.
pub fn check_group(g: &str) -> Result<(), String> {
    let ok = !g.is_empty()
        && g.len() <= 63
        && g.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && !g.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{g:?} is not a group name (1 to 63 of a-z, 0-9, '-', '_', '.', not starting with '.')"
        ))
    }
}

impl Coordination {
    /// Problems a parser cannot see.
    pub fn validate(&self) -> Result<(), String> {
        if self.etcd.is_empty() {
            return Err("coordination.etcd names no endpoint".into());
        }
        for e in &self.etcd {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(format!(
                    "coordination.etcd: {e:?} must be an http:// or https:// URL"
                ));
            }
        }
        check_group(&self.group).map_err(|e| format!("coordination.group: {e}"))?;
        if let Some(h) = &self.host {
            check_group(h).map_err(|e| format!("coordination.host: {e}"))?;
        }
        if self.max_rebooting == 0 {
            return Err("coordination.max_rebooting = 0 would never reboot".into());
        }
        if self.lock_ttl_s < 60 {
            return Err(format!(
                "coordination.lock_ttl_s = {} is below the minimum of 60",
                self.lock_ttl_s
            ));
        }
        if self.report_interval_s < 5 {
            return Err(format!(
                "coordination.report_interval_s = {} is below the minimum of 5",
                self.report_interval_s
            ));
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err("coordination: a client cert needs its key, and a key its cert".into());
        }
        for (name, pem) in [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)] {
            if pem.as_ref().is_some_and(|p| !p.contains("-----BEGIN ")) {
                return Err(format!("coordination.{name} is not PEM text"));
            }
        }
        Ok(())
    }
}

fn stable() -> String {
    "stable".into()
}

fn hour() -> u64 {
    3600
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            repository: None,
            channel: stable(),
            check_interval_s: hour(),
            reboot: RebootPolicy::Auto,
            window: None,
            trusted_keys: Vec::new(),
            rollout_seed: None,
            coordination: None,
        }
    }
}

impl Policy {
    /// Problems a parser cannot see.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(r) = &self.repository {
            if !(r.starts_with("http://") || r.starts_with("https://")) {
                return Err(format!(
                    "repository {r:?} must be an http:// or https:// URL"
                ));
            }
        }
        if self.check_interval_s < 60 {
            return Err(format!(
                "check_interval_s = {} is below the minimum of 60",
                self.check_interval_s
            ));
        }
        if self.channel.is_empty() {
            return Err("channel is empty".into());
        }
        if self.reboot == RebootPolicy::Window && self.window.is_none() {
            return Err("reboot = \"window\" needs a window".into());
        }
        if let Some(c) = &self.coordination {
            c.validate()?;
        }
        Ok(())
    }

    /// Seconds from `now` (seconds since the epoch) until a reboot may
    /// happen: 0 unless the policy has a window and `now` is outside it.
    pub fn wait_for_window(&self, now: u64) -> u64 {
        let Some(crate::hostconfig::values::Window { start, end }) = self.window else {
            return 0;
        };
        let day = 24 * 3600;
        let t = now % day;
        let (start, end) = (u64::from(start) * 60, u64::from(end) * 60);
        let inside = if start < end {
            (start..end).contains(&t)
        } else {
            t >= start || t < end
        };
        if inside {
            0
        } else {
            (start + day - t) % day
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let p: Policy = toml::from_str("repository = \"http://10.0.2.100/\"").unwrap();
        assert_eq!(p.channel, "stable");
        assert_eq!(p.reboot, RebootPolicy::Auto);
        assert!(p.validate().is_ok());
        let p: Policy = toml::from_str("repository = \"ftp://x\"").unwrap();
        assert!(p.validate().unwrap_err().contains("http://"));
        assert!(toml::from_str::<Policy>("colour = 1").is_err());
        let p: Policy = toml::from_str("reboot = \"window\"").unwrap();
        assert!(p.validate().unwrap_err().contains("needs a window"));
    }

    #[test]
    fn a_window_says_how_long_to_wait() {
        let p: Policy = toml::from_str("reboot = \"window\"\nwindow = \"02:00-04:00\"").unwrap();
        let at = |h: u64, m: u64| 20_000 * 86_400 + h * 3600 + m * 60;
        assert_eq!(p.wait_for_window(at(3, 0)), 0);
        assert_eq!(p.wait_for_window(at(1, 30)), 1800);
        assert_eq!(p.wait_for_window(at(4, 0)), 22 * 3600);
        let night: Policy =
            toml::from_str("reboot = \"window\"\nwindow = \"23:00-01:00\"").unwrap();
        assert_eq!(night.wait_for_window(at(0, 30)), 0);
        assert_eq!(night.wait_for_window(at(22, 0)), 3600);
        assert_eq!(Policy::default().wait_for_window(at(12, 0)), 0);
    }
}

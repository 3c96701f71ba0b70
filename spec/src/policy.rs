//! The update policy an image carries (`/etc/keel/update.toml`), written by
//! `keel build` from the recipe's `[update]` section and read by
//! `keel-update`. The host config will be able to override it.

use serde::{Deserialize, Serialize};

/// Where an image keeps its update policy.
pub const POLICY_FILE: &str = "/etc/keel/update.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RebootPolicy {
    /// Reboot into the new slot as soon as it is installed.
    #[default]
    Auto,
    /// Wait for `keelctl reboot`.
    Manual,
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
        Ok(())
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
    }
}

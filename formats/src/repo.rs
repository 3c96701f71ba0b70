//! The repository index: which bundle is the latest on each channel. It is
//! a signed envelope ([`crate::signed`]) whose body is this JSON document.
//! Its version only goes up and it expires, so that neither a replayed old
//! index nor a stale mirror can hold a host back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bundle::{parse_version, BundleError};

pub const FORMAT: u32 = 1;
/// File name of the index at the root of a repository.
pub const INDEX_FILE: &str = "index.keel";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelEntry {
    pub version: String,
    /// Path of the bundle, relative to the repository root.
    pub bundle: String,
    pub size: u64,
    /// sha256 of the whole bundle file, hex.
    pub sha256: String,
    /// When the release opens to which hosts; none: to all at once. A
    /// host older than waves refuses an index with them (the entry's keys
    /// are checked strictly): publish without waves until the fleet runs
    /// a version that knows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::Rollout>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub format: u32,
    /// Goes up by one with every change to the repository.
    pub index_version: u64,
    /// Seconds since the epoch after which hosts refuse this index.
    pub expires: u64,
    pub channels: BTreeMap<String, ChannelEntry>,
    /// Public keys (hex) that hosts trust from now on, besides those in
    /// their image: how a new signing key is introduced by the old one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
}

impl Index {
    pub fn parse(body: &[u8]) -> Result<Index, BundleError> {
        let i: Index =
            serde_json::from_slice(body).map_err(|e| BundleError::Json(e.to_string()))?;
        if i.format != FORMAT {
            return Err(BundleError::Invalid(format!(
                "index format {} is not the supported {FORMAT}",
                i.format
            )));
        }
        for (name, c) in &i.channels {
            parse_version(&format!("channel {name} version"), &c.version)?;
            if let Some(r) = &c.rollout {
                r.check()
                    .map_err(|e| BundleError::Invalid(format!("channel {name} rollout: {e}")))?;
            }
            if c.bundle.starts_with('/') || c.bundle.split('/').any(|p| p == "..") {
                return Err(BundleError::Invalid(format!(
                    "channel {name}: bundle path {:?} leaves the repository",
                    c.bundle
                )));
            }
        }
        for k in &i.keys {
            crate::keys::parse_public_hex(k)
                .map_err(|e| BundleError::Invalid(format!("index keys: {e}")))?;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_paths_outside() {
        let mut i = Index {
            format: 1,
            index_version: 3,
            expires: 10,
            channels: BTreeMap::from([(
                "stable".to_string(),
                ChannelEntry {
                    version: "0.2.0".into(),
                    bundle: "bundles/keel-0.2.0.bundle".into(),
                    size: 9,
                    sha256: "00".repeat(32),
                    rollout: None,
                },
            )]),
            keys: vec![],
        };
        assert_eq!(Index::parse(&serde_json::to_vec(&i).unwrap()).unwrap(), i);
        i.channels.get_mut("stable").unwrap().bundle = "../etc/shadow".into();
        let e = Index::parse(&serde_json::to_vec(&i).unwrap()).unwrap_err();
        assert!(e.to_string().contains("leaves the repository"), "{e}");
    }
}

//! What keel-init says to keel-pull, the confined system container that
//! pulls images from registries and keeps the image store: one JSON
//! request line ([`PullerRequest`]), then event lines (a pull's progress,
//! then the outcome). The socket lives in keel-pull's own persistent
//! folder, so only it (and root) can reach it; the credentials travel in
//! the request and are kept nowhere else. keel-init answers `keelctl
//! image` with the same event lines.

use std::collections::BTreeMap;

use keel_formats::hostconfig::types::{Pull, Registry};
use keel_formats::hostconfig::values::Secret;
use keel_formats::reference::Reference;
use serde::{Deserialize, Serialize};

/// keel-pull's persistent folder, inside its container.
pub const PULL_DIR: &str = "/var/lib/keel-pull";
/// The same folder as the host sees it (the launcher keeps a persistent
/// folder under /var/lib/keel/SERVICE/): where keel-init finds the socket
/// and the store.
pub const PULL_DIR_ON_HOST: &str = "/var/lib/keel/pull/var/lib/keel-pull";
/// The folder of the pull service on the host: root's (keel-init makes it),
/// unlike everything below it, which keel-pull owns. keel-init reads the
/// store with paths resolved inside it.
pub const SERVICE_ON_HOST: &str = "/var/lib/keel/pull";
/// The store, inside [`SERVICE_ON_HOST`].
pub const STORE_IN_SERVICE: &str = "var/lib/keel-pull/store";
/// The socket and the store, relative to either.
pub const SOCKET_NAME: &str = "pull.sock";
pub const STORE_NAME: &str = "store";

/// One request to keel-pull.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PullerRequest {
    Pull(PullRequest),
    /// Every image in the store: [`PullEvent::Images`]. (A struct
    /// variant: a unit one would take unknown fields.)
    List {},
    /// Remove an image's name, and the blobs nothing else needs.
    Remove {
        reference: String,
    },
    /// Remove the images not in `keep` (references in full), and every
    /// blob no image needs. With a budget, only while the store holds more
    /// than that many bytes, least recently pulled first.
    Prune {
        keep: Vec<String>,
        #[serde(default)]
        budget: Option<u64>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// The reference in full (as `Reference` renders it).
    pub reference: String,
    pub policy: Pull,
    /// Hosts to try in order: the registry's mirrors, then the registry.
    pub hosts: Vec<Host>,
}

/// How to reach one registry host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// What to connect to: `registry.example:5000`, `registry-1.docker.io`.
    pub host: String,
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub ca: Vec<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullEvent {
    /// Bytes of one blob so far.
    Progress {
        digest: String,
        done: u64,
        total: u64,
    },
    /// The image is in the store, named by the reference.
    Pulled {
        /// The platform's image manifest digest.
        manifest: String,
        /// Bytes that came over the network.
        fetched: u64,
        /// The host that served it; empty when it was in the store.
        host: String,
    },
    Failed {
        message: String,
    },
    /// The pull waits for others to finish first.
    Queued {
        ahead: usize,
    },
    /// The answer to [`PullerRequest::List`].
    Images {
        images: Vec<ImageInfo>,
    },
    /// The answer to a removal or a prune.
    Removed {
        references: Vec<String>,
        /// Bytes deleted.
        freed: u64,
        /// Bytes the store holds now.
        size: u64,
    },
}

impl PullEvent {
    /// Whether this event ends the answer.
    pub fn is_last(&self) -> bool {
        !matches!(self, PullEvent::Progress { .. } | PullEvent::Queued { .. })
    }
}

/// One image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub reference: String,
    pub manifest: String,
    /// Its config's digest, Docker's image id.
    #[serde(default)]
    pub id: Option<String>,
    /// Bytes of its blobs (shared ones counted for each image).
    pub size: u64,
    /// Every blob it needs is in the store (else the next use pulls it).
    pub whole: bool,
}

/// The hosts a pull of `reference` tries, as the host config's
/// `[registries]` says: the registry's mirrors in order, then the registry
/// itself; each reached with its own entry's settings.
pub fn hosts_for(reference: &Reference, registries: &BTreeMap<String, Registry>) -> Vec<Host> {
    let entry = |name: &str, connect: &str| {
        let r = registries.get(name).cloned().unwrap_or_default();
        Host {
            host: connect.to_string(),
            insecure: r.insecure,
            ca: r.ca,
            username: r.username,
            password: r.password,
        }
    };
    let mut hosts: Vec<Host> = registries
        .get(&reference.registry)
        .map(|r| r.mirrors.iter().map(|m| entry(m, m)).collect())
        .unwrap_or_default();
    hosts.push(entry(&reference.registry, reference.api_host()));
    hosts
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn mirrors_come_first_each_with_its_own_settings() {
        let toml = r#"
            [registries."docker.io"]
            mirrors = ["mirror.local:5000", "cache.example"]
            [registries."mirror.local:5000"]
            insecure = true
            [registries."cache.example"]
            username = "u"
            password = "p"
        "#;
        let c: keel_formats::hostconfig::HostConfig = toml::from_str(toml).unwrap();
        let r: Reference = "nginx".parse().unwrap();
        let hosts = hosts_for(&r, &c.registries);
        let names: Vec<_> = hosts.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(
            names,
            ["mirror.local:5000", "cache.example", "registry-1.docker.io"]
        );
        assert!(hosts[0].insecure && !hosts[1].insecure && !hosts[2].insecure);
        assert_eq!(hosts[1].username.as_deref(), Some("u"));
        assert_eq!(hosts[2].username, None);
        let other: Reference = "r.example/a:1".parse().unwrap();
        assert_eq!(hosts_for(&other, &c.registries).len(), 1);
    }

    #[test]
    fn requests_are_tagged_by_their_op_and_strict() {
        let list: PullerRequest = serde_json::from_str(r#"{"op":"list"}"#).unwrap();
        assert_eq!(list, PullerRequest::List {});
        let pull: PullerRequest = serde_json::from_str(
            r#"{"op":"pull","reference":"r/a:1","policy":"always","hosts":[{"host":"r"}]}"#,
        )
        .unwrap();
        assert!(matches!(pull, PullerRequest::Pull(p) if p.reference == "r/a:1"));
        let prune = PullerRequest::Prune {
            keep: vec!["r/a:1".into()],
            budget: Some(5),
        };
        let text = serde_json::to_string(&prune).unwrap();
        assert_eq!(serde_json::from_str::<PullerRequest>(&text).unwrap(), prune);
        for bad in [
            r#"{"op":"list","extra":1}"#,
            r#"{"op":"remove","reference":"a","x":1}"#,
            r#"{"op":"pull","reference":"a","policy":"always","hosts":[],"x":1}"#,
            r#"{"op":"format-disk"}"#,
            r#"{"reference":"a"}"#,
        ] {
            assert!(serde_json::from_str::<PullerRequest>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_request_never_shows_its_password_in_debug() {
        let h = Host {
            host: "r".into(),
            insecure: false,
            ca: vec![],
            username: Some("u".into()),
            password: Some(Secret("hunter2".into())),
        };
        assert!(!format!("{h:?}").contains("hunter2"));
    }
}

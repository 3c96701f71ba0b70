//! What keel's client certificates mean: a role in the subject's
//! organization (`keel:admin`, `keel:read-only`), which `keel pki issue`
//! writes and a host's remote API reads.

use serde::{Deserialize, Serialize};

/// What a remote client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Status, logs, listings: nothing that changes the host.
    ReadOnly,
    /// Everything the local admin may do.
    Admin,
}

const PREFIX: &str = "keel:";

impl Role {
    pub fn organization(self) -> String {
        format!("{PREFIX}{}", self.name())
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::Admin => "admin",
        }
    }

    /// The role an organization name grants, if any.
    pub fn from_organization(o: &str) -> Option<Role> {
        match o.strip_prefix(PREFIX)? {
            "read-only" => Some(Role::ReadOnly),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::from_organization(&format!("{PREFIX}{s}"))
            .ok_or_else(|| format!("{s:?} is not a role: read-only or admin"))
    }
}

/// The port keel-remote listens on unless the host config says another
/// (Talos's apid uses the same one).
pub const REMOTE_PORT: u16 = 50000;

/// Where keel-init puts the host config's `admin.remote` certificates for
/// keel-remote, and their names there: the CAs whose client certificates
/// the host trusts, and the host's own certificate and key.
pub const REMOTE_DIR: &str = "/run/keel/remote";
pub const REMOTE_CA: &str = "ca.pem";
pub const REMOTE_CERT: &str = "cert.pem";
pub const REMOTE_KEY: &str = "key.pem";

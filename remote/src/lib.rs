//! keel-remote: a host's API over the network, as talosctl reaches
//! Talos's apid: TLS with client certificates from CAs the host config
//! trusts, and a role (read-only or admin) in each certificate. The server
//! runs on the host as the `remote` service, in front of keel-init's and
//! keel-update's local sockets; the client is `keelctl --host`.

// Requests come from the network: no arithmetic on them may wrap or panic.
// Per crate root: [workspace.lints] cannot be extended per crate.
#![deny(clippy::arithmetic_side_effects)]

pub mod client;
pub mod serve;
pub mod tls;

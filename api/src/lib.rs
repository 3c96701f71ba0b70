//! The host's local APIs, shared by their servers and clients so that a
//! format lives in one place: keel-init's ([`init`], served by PID 1 to
//! keelctl and keel-update), keel-update's ([`update`], served to keelctl),
//! keel-pull's ([`pull`], served to keel-init),
//! the framing both use ([`wire`]), and what reaches the first two over
//! the network through keel-remote ([`remote`]).

// Requests come from other processes: no arithmetic on them may wrap or
// panic. Per crate root: [workspace.lints] cannot be extended per crate.
#![deny(clippy::arithmetic_side_effects)]

pub mod init;
pub mod pull;
pub mod remote;
pub mod update;
pub mod wire;

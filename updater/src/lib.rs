//! keel's A/B updater: verify a signed bundle, write it into the inactive
//! slot, make it bootable last, and leave the decision to keep it to
//! keel-init's health gate. docs/update.md describes the whole flow.

// Per crate root: [workspace.lints] cannot be extended per crate.
#![deny(clippy::arithmetic_side_effects)]

pub mod agent;
pub mod coordinate;
pub mod delta;
pub mod entries;
pub mod error;
pub mod fetch;
pub mod install;
pub mod slots;
pub mod state;
pub mod verify;

//! Images from OCI registries: references as people write them
//! ([`reference`]), the registry's authentication challenges ([`auth`]),
//! manifests and indexes ([`manifest`]), the OCI Distribution client
//! ([`client`]), pulls of whole images through a registry's mirrors
//! ([`pull`]) and the content-addressed store pulls land in ([`store`]).
//! Everything a registry sends is hostile: digests are checked while the
//! bytes stream, sizes are bounded, and a partial blob is never used.

// Per crate root: [workspace.lints] cannot be extended per crate.
#![deny(clippy::arithmetic_side_effects)]

pub mod auth;
pub mod client;
pub mod manifest;
pub mod pull;
/// References and digests are keel-formats': the host config names images
/// with them too.
pub use keel_formats::reference;
pub mod store;

//! The declarative host config (`host.toml`): one file describes a host.
//! The image carries defaults ([`crate::host::DEFAULTS`]); the person's
//! file on the ESP ([`crate::host::ON_ESP`]) overrides them key by key.
//!
//! [`types`] is the shape (serde, no I/O) with typed [`values`], each read
//! from its text once; [`validate`] checks ranges and conflicts; [`load`]
//! reads files with located errors.

pub mod load;
pub mod networks;
pub mod types;
pub mod units;
pub mod validate;
pub mod values;

pub use load::{check, load, render, Diagnostic, Source};
pub use types::HostConfig;
pub use validate::{Context, Problem};

#[cfg(test)]
mod tests;

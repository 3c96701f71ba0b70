//! Where a host's configuration lives: the image's defaults, baked into the
//! read-only root by `keel build`, and the person's own file on the ESP,
//! put there by `keel flash --config`.

/// The image's default host config, in the root filesystem.
pub const DEFAULTS: &str = "/usr/lib/keel/host.toml";
/// The user's host config, relative to the ESP's root.
pub const ON_ESP: &str = "keel/host.toml";

//! Where a host's configuration lives: the image's defaults, baked into the
//! read-only root by `keel build`, and the person's own file on the ESP,
//! put there by `keel flash --config`.

/// The image's default host config, in the root filesystem.
pub const DEFAULTS: &str = "/usr/lib/keel/host.toml";
/// The user's host config, relative to the ESP's root.
pub const ON_ESP: &str = "keel/host.toml";

/// The host's resolvers, written by keel-init (from `network.dns`) or the
/// DHCP client container; container roots link /etc/resolv.conf here.
pub const DNS_DIR: &str = "/run/keel/dns";
pub const RESOLV_CONF: &str = "/run/keel/dns/resolv.conf";
/// Present when the host config names resolvers: a DHCP lease's then do
/// not replace them.
pub const DNS_STATIC_MARK: &str = "/run/keel/dns/static";

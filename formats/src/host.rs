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
/// What containers in user namespaces of their own bind from the host:
/// their setup, as root of that namespace, cannot pass through /run/keel
/// (root and the admin group only). keel-init binds [`DNS_DIR`] here, and
/// keeps the containers' hosts files in [`HOSTS_DIR`].
pub const SHARED_DIR: &str = "/run/keel-shared";
pub const SHARED_DNS_DIR: &str = "/run/keel-shared/dns";
pub const SHARED_RESOLV_CONF: &str = "/run/keel-shared/dns/resolv.conf";
/// Each container's hosts file, by container name.
pub const HOSTS_DIR: &str = "/run/keel-shared/hosts";
/// Present when the host config names resolvers: a DHCP lease's then do
/// not replace them.
pub const DNS_STATIC_MARK: &str = "/run/keel/dns/static";

/// keel-vmm's user and group: a VM's monitor never runs as root.
pub const VMM_UID: u32 = 36;
/// The group that may open /dev/kvm; VM disks are given to it too.
pub const KVM_GID: u32 = 36;
/// What the host's tap of a VM is called before the VM's name.
const VM_TAP_PREFIX: &str = "vm-";

/// The longest VM name with a tap: the tap is `vm-NAME`, an interface
/// name.
pub const VM_TAP_NAME_MAX: usize = keel_tap::IFNAMSIZ - 1 - VM_TAP_PREFIX.len();

/// The host's tap interface of VM `name` (`network = "tap"`).
pub fn vm_tap(name: &str) -> String {
    format!("{VM_TAP_PREFIX}{name}")
}

/// How many ids a user container's user namespace has: 0 to 65535
/// inside, the range Docker's and podman's images are made for.
pub const USERNS_IDS: u32 = 65536;

/// The first host id of the ranges given to user containers: above every
/// id the image's own services and users have.
pub const USERNS_FIRST: u32 = 1 << 20;

/// keel's own folders under /var: its services' state, the updater's,
/// unpacked roots, id ranges and logs. No volume may be, hold or lie in
/// one of them.
pub const KEEL_STATE_DIRS: [&str; 5] = [
    "/var/lib/keel",
    "/var/lib/keel-init",
    "/var/lib/keel-update",
    "/var/cache/keel",
    "/var/log/keel",
];

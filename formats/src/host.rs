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

/// The host's machine id: 128 random bits as 32 lowercase hex digits and
/// a newline (systemd's machine-id format), drawn by keel-init on the
/// first boot and kept on /var, so a host keeps it across updates and
/// reboots and a newly flashed disk gets its own.
pub const MACHINE_ID: &str = "/var/lib/keel/machine-id";
/// Where services read it: keel-init copies it there at each boot.
pub const RUN_MACHINE_ID: &str = "/run/keel/machine-id";

/// A machine id's 16 bytes, if `text` is one.
pub fn parse_machine_id(text: &str) -> Option<[u8; 16]> {
    let hex = text.strip_suffix('\n').unwrap_or(text);
    if hex.len() != 32 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    // All zeros is systemd's "uninitialized" and no id.
    (id != [0u8; 16]).then_some(id)
}

/// A machine id as its file holds it.
pub fn machine_id_text(id: &[u8; 16]) -> String {
    let mut s: String = id.iter().map(|b| format!("{b:02x}")).collect();
    s.push('\n');
    s
}

/// The host's seed for its place in staged rollouts: derived from the
/// machine id through a keyed hash (as systemd's app-specific ids are),
/// so the seed a host shows its fleet does not give its machine id away.
pub fn rollout_seed(id: &[u8; 16]) -> u64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::new()
        .chain_update(b"keel rollout seed v1\0")
        .chain_update(id)
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_le_bytes(first)
}

#[cfg(test)]
mod machine_id_tests {
    use super::*;

    #[test]
    fn machine_ids_round_trip_and_bad_ones_are_none() {
        let id = [0xab; 16];
        let text = machine_id_text(&id);
        assert_eq!(text, format!("{}\n", "ab".repeat(16)));
        assert_eq!(parse_machine_id(&text), Some(id));
        assert_eq!(parse_machine_id(text.trim_end()), Some(id));
        for bad in [
            "",
            "\n",
            &"0".repeat(32),
            &"AB".repeat(16),
            &"ab".repeat(15),
            &"ab".repeat(17),
            &format!("{}x", "ab".repeat(15)),
            &format!("{}\n\n", "ab".repeat(16)),
            "é".repeat(16).as_str(),
        ] {
            assert_eq!(parse_machine_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_seed_is_stable_and_differs_by_id() {
        let a = rollout_seed(&[1; 16]);
        assert_eq!(a, rollout_seed(&[1; 16]));
        assert_ne!(a, rollout_seed(&[2; 16]));
        assert_ne!(a.to_le_bytes()[..], [1u8; 8], "not the id itself");
    }
}

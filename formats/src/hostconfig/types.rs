//! The host config's types: what each key holds. No I/O and no checks
//! beyond the shape; `validate` checks values and conflicts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::values::{
    Bytes, Cidr, ImageSource, Ip, Mac, PortMap, PortRange, Seconds, Secret, Subnet6, Volume, Window,
};

/// `host.toml`: everything a person configures on a keel host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The host's name (RFC 1123 label, at most 63 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// An IANA zone name (`Europe/Berlin`) or `UTC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Kernel parameters: `"net.ipv4.ip_forward" = 1`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctl: BTreeMap<String, SysctlValue>,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub time: Time,
    #[serde(default)]
    pub admin: Admin,
    /// System containers of the image: enable, disable, override.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, ServiceOverride>,
    /// The person's own workloads, run like system services.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub containers: BTreeMap<String, UserContainer>,
    /// microVMs for keel-vmm.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vms: BTreeMap<String, Vm>,
    #[serde(default)]
    pub update: Update,
    /// How to reach image registries, by host (`"docker.io"`,
    /// `"registry.example:5000"`); a host not listed is reached over TLS
    /// with the webpki roots and no credentials.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registries: BTreeMap<String, Registry>,
    /// The store images from registries are pulled into.
    #[serde(default)]
    pub images: Images,
}

/// `[images]`: how large the image store may grow before what no
/// container uses is removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Images {
    /// Past this size of the whole store (images in use count too),
    /// images no container uses are removed, least recently pulled first
    /// (after the boot's containers are up, and after each `config
    /// apply`). Images in use are never removed, even past it.
    #[serde(default = "Images::default_budget")]
    pub budget: Bytes,
}

impl Images {
    /// Room for a few unused images to come back to (a rollback of
    /// `config apply`) without holding on to every one ever pulled.
    pub const DEFAULT_BUDGET: Bytes = Bytes(4 << 30);

    fn default_budget() -> Bytes {
        Self::DEFAULT_BUDGET
    }
}

impl Default for Images {
    fn default() -> Images {
        Images {
            budget: Self::DEFAULT_BUDGET,
        }
    }
}

/// One registry host, as containerd's hosts.toml and Talos's
/// `machine.registries` describe one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// Hosts tried in order before this one for its images (a mirror or a
    /// pull-through cache); each is reached as its own entry here says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<String>,
    /// Plain http, no TLS: only for a registry on a network you trust.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// CA certificates (PEM text) trusted for this host besides the
    /// webpki roots.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
}

/// A sysctl value as written: TOML has no untyped scalars.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SysctlValue {
    Int(i64),
    Bool(bool),
    Text(String),
}

impl SysctlValue {
    /// What is written to `/proc/sys/...`.
    pub fn render(&self) -> String {
        match self {
            SysctlValue::Int(i) => i.to_string(),
            SysctlValue::Bool(b) => u8::from(*b).to_string(),
            SysctlValue::Text(t) => t.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// By interface name (`eth0`), or any name with `mac` set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub interfaces: BTreeMap<String, Interface>,
    /// Resolvers for the whole host (besides what DHCP hands out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<Ip>,
    /// The default network of private containers: its bridge's subnets.
    #[serde(default)]
    pub containers: ContainerSubnets,
    /// Networks of their own that containers join by name
    /// (`networks = ["backend"]`), each on a bridge of its own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, NamedNetwork>,
    /// What reaches the host itself.
    #[serde(default)]
    pub firewall: Firewall,
}

/// `[network.firewall]`: connections to the host's own services, from
/// its interfaces and from its containers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Firewall {
    /// What the host's interfaces take that `allow` does not list.
    #[serde(default)]
    pub inbound: Inbound,
    /// With `inbound = "drop"`: what is let in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Allow>,
    /// Ports of the host (on any of its addresses) that containers may
    /// connect to; every other port of the host refuses them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<PortRange>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Inbound {
    /// Every connection, as a host without a firewall.
    #[default]
    Accept,
    /// Only replies to the host's own connections, loopback, ICMP, DHCP
    /// replies and what `allow` lists.
    Drop,
}

/// `[[network.firewall.allow]]`: ports let in, from anywhere or from
/// the sources listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allow {
    pub ports: Vec<PortRange>,
    /// Source subnets; anywhere if empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Cidr>,
}

/// `[network.containers]`: where the addresses of containers on the
/// default network come from. The host's side of the bridge takes the
/// first address of each subnet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSubnets {
    /// An IPv4 subnet in CIDR form.
    #[serde(default = "ContainerSubnets::default_v4")]
    pub subnet: Cidr,
    /// An IPv6 subnet; `"none"` for IPv4 only.
    #[serde(default = "ContainerSubnets::default_v6")]
    pub subnet6: Subnet6,
}

impl ContainerSubnets {
    /// podman's default, clear of Docker's 172.17.0.0/16.
    pub const DEFAULT_V4: &'static str = "10.88.0.0/16";
    /// A unique local prefix, as a host-internal network takes.
    pub const DEFAULT_V6: &'static str = "fd88::/64";

    fn default_v4() -> Cidr {
        Self::DEFAULT_V4.parse().unwrap_or(Cidr {
            addr: std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 88, 0, 0)),
            prefix: 16,
        })
    }

    fn default_v6() -> Subnet6 {
        Self::DEFAULT_V6.parse().unwrap_or(Subnet6(None))
    }
}

impl Default for ContainerSubnets {
    fn default() -> Self {
        ContainerSubnets {
            subnet: Self::default_v4(),
            subnet6: Self::default_v6(),
        }
    }
}

/// `[network.networks.NAME]`: a network of its own. Without `subnet`,
/// it gets `10.89.N.0/24` (and `fd89:0:0:N::/64`), N picked from its name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedNetwork {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Cidr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Subnet6>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// Match the interface by MAC address instead of by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    /// Get an IPv4 address by DHCP (the client runs as a system container).
    #[serde(default)]
    pub dhcp: bool,
    /// Static addresses in CIDR form: `10.0.0.5/24`, `fd00::5/64`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Cidr>,
    /// The default route's next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ip>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<Ip>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Destination in CIDR form (`0.0.0.0/0` for a default route).
    pub to: Cidr,
    /// Next hop; none: the destination is on the link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Ip>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Time {
    /// NTP servers (host names or addresses); none: no time sync container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ntp: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Whether the admin container runs at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A shell on the serial console.
    #[serde(default = "yes")]
    pub console: bool,
    #[serde(default)]
    pub ssh: Ssh,
    #[serde(default)]
    pub remote: Remote,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            enabled: true,
            console: true,
            ssh: Ssh::default(),
            remote: Remote::default(),
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ssh {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "ssh_port")]
    pub port: u16,
    /// `authorized_keys` lines: `ssh-ed25519 AAAA... comment`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorized_keys: Vec<String>,
}

impl Default for Ssh {
    fn default() -> Self {
        Ssh {
            enabled: false,
            port: ssh_port(),
            authorized_keys: Vec::new(),
        }
    }
}

fn ssh_port() -> u16 {
    22
}

/// The host's API over TLS with client certificates (keel-remote, for
/// `keelctl --host`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remote {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "remote_port")]
    pub port: u16,
    /// PEM text: the CAs whose client certificates may manage the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// PEM text: the host's own certificate (chain) and key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl Default for Remote {
    fn default() -> Self {
        Remote {
            enabled: false,
            port: remote_port(),
            ca: None,
            cert: None,
            key: None,
        }
    }
}

fn remote_port() -> u16 {
    crate::pki::REMOTE_PORT
}

/// Resource limits, as a person writes them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory ceiling with a unit: `64M`, `1.5G`, `512MiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Bytes>,
    /// CPUs' worth of time: `0.5`, `2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// At most this many processes and threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceOverride {
    /// false: the image's service does not start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// `NAME=value` pairs added to (or replacing in) the service's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: Limits,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    #[default]
    Always,
    OnFailure,
    Never,
}

impl From<Restart> for crate::container::RestartPolicy {
    fn from(r: Restart) -> Self {
        match r {
            Restart::Always => Self::Always,
            Restart::OnFailure => Self::OnFailure,
            Restart::Never => Self::Never,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserContainer {
    /// An OCI image layout folder or `docker save` archive under `/var`,
    /// or an image in a registry by reference.
    pub image: ImageSource,
    /// For a registry image: pull it when it is not in the store yet
    /// (`missing`), whenever the container is prepared (`always`: at boot
    /// and when its entry changes), or never
    /// (it must be in the store already, from an earlier pull).
    #[serde(default, skip_serializing_if = "is_missing")]
    pub pull: Pull,
    /// Overrides the image's Entrypoint and Cmd.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// `private`: its own network namespace on the container networks
    /// (`networks`), its published `ports` forwarded to it; `host`: the
    /// host's network; `none`: loopback only.
    #[serde(default)]
    pub network: ContainerNetwork,
    /// The networks a private container is on, by name: `default` (the
    /// bridge of `[network.containers]`, where a container is when this
    /// is not set) or one of `[network.networks]`. Containers on a network
    /// reach each other by name; containers on different ones do not
    /// reach each other at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    /// `HOST:CONTAINER` TCP ports, `HOST:CONTAINER/udp` for UDP, forwarded
    /// from the host's addresses to the container's (by DNAT: the
    /// container sees its clients' addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMap>,
    /// `/var/...:/path/in/container[:ro]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub restart: Restart,
    /// `uid[:gid]`; default: the image's User.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `private`: its own user namespace, whose root is an unprivileged id
    /// range of the host kept for this container; `host`: the host's ids,
    /// root inside is root outside.
    #[serde(default, skip_serializing_if = "is_private")]
    pub userns: crate::container::Share,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pull {
    #[default]
    Missing,
    Always,
    Never,
}

fn is_missing(p: &Pull) -> bool {
    *p == Pull::Missing
}

fn is_private(s: &crate::container::Share) -> bool {
    *s == crate::container::Share::Private
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerNetwork {
    #[default]
    Private,
    Host,
    None,
}

/// The name of the network of `[network.containers]`.
pub const DEFAULT_NETWORK: &str = "default";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    /// Guest kernel (bzImage or ELF vmlinux) under `/var`.
    pub kernel: String,
    /// Root disk image under `/var`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(default = "one")]
    pub vcpus: u32,
    /// Guest memory with a unit: `128M`.
    #[serde(default = "vm_memory")]
    pub memory: Bytes,
    /// `none`, or `tap` for a tap device on the host.
    #[serde(default)]
    pub network: VmNetwork,
    /// With `tap`: the container network its tap joins (one), which
    /// gives the VM an address and a way out as a container's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    #[serde(default)]
    pub restart: Restart,
}

fn one() -> u32 {
    1
}

fn vm_memory() -> Bytes {
    Bytes(128 << 20)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmNetwork {
    #[default]
    None,
    Tap,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reboot {
    /// As soon as an update is installed.
    #[default]
    Auto,
    /// Inside `window` only.
    Window,
    /// Never by itself: `keelctl reboot`.
    Manual,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Update {
    /// Repository base URL (http or https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Public keys (hex, as `keel keygen` writes them) trusted besides the
    /// image's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_keys: Vec<String>,
    /// Duration with a unit: `30m`, `6h`, `1d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_interval: Option<Seconds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot: Option<Reboot>,
    /// `HH:MM-HH:MM` (UTC) when `reboot = "window"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// The host's place in staged rollouts comes from this seed instead
    /// of the one keel-update drew (hosts with the same seed go in the
    /// same wave).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_seed: Option<u64>,
    /// Reboots coordinated through etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordination: Option<Coordination>,
}

/// `[update.coordination]`: take one of `max_rebooting` slots of the
/// group's reboot semaphore in etcd before rebooting into an update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coordination {
    /// etcd endpoints: `["https://10.0.0.5:2379", …]`.
    pub etcd: Vec<String>,
    #[serde(default = "default_group")]
    pub group: String,
    #[serde(default = "one")]
    pub max_rebooting: u32,
    /// How long a reboot slot outlives a host that stopped renewing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_ttl: Option<Seconds>,
    /// How often the host reports its state to etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_interval: Option<Seconds>,
    /// PEM text of etcd's CA, and of this host's client certificate and key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Reboot into an update even when etcd cannot be reached.
    #[serde(default)]
    pub reboot_without_etcd: bool,
}

fn default_group() -> String {
    "default".into()
}

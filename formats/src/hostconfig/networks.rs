//! The container networks of a host config, resolved: each network's
//! bridge and subnets, with the subnets of networks that name none picked
//! here, once, for the validator and for keel-init alike.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::types::{HostConfig, Network, DEFAULT_NETWORK};
use super::values::Cidr;

/// The bridge of the default network.
pub const DEFAULT_BRIDGE: &str = "keel0";
/// What the bridge of a named network is called before its name.
const BRIDGE_PREFIX: &str = "kn-";
/// The host index of the bridge's own address in each subnet (the
/// containers' gateway).
pub const BRIDGE_INDEX: u64 = 1;
/// The longest network name: its bridge is an interface name.
pub const NETWORK_NAME_MAX: usize = 15 - BRIDGE_PREFIX.len();

/// A container network as keel-init sets it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub bridge: String,
    pub v4: Option<Cidr>,
    pub v6: Option<Cidr>,
}

/// The bridge of network `name`.
pub fn bridge_of(name: &str) -> String {
    match name {
        DEFAULT_NETWORK => DEFAULT_BRIDGE.to_string(),
        _ => format!("{BRIDGE_PREFIX}{name}"),
    }
}

/// Where a network without a subnet of its own goes: slot N is
/// 10.89.N.0/24 and fd89:0:0:N::/64.
fn auto_v4(n: u8) -> Cidr {
    Cidr {
        addr: IpAddr::V4(Ipv4Addr::new(10, 89, n, 0)),
        prefix: 24,
    }
}

fn auto_v6(n: u8) -> Cidr {
    Cidr {
        addr: IpAddr::V6(Ipv6Addr::new(0xfd89, 0, 0, u16::from(n), 0, 0, 0, 0)),
        prefix: 64,
    }
}

/// FNV-1a (64 bits) of `name`: what a network's name picks that must be
/// the same on every host and every boot.
fn fnv1a(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The slot a network without a subnet starts at, so that adding a
/// network seldom moves another.
fn start_slot(name: &str) -> u8 {
    (fnv1a(name) % 256) as u8
}

/// The MAC address of bridge `name`: its own, locally administered and
/// the same across boots. A bridge left to itself takes its lowest
/// port's, which changes as containers come and go, and the containers'
/// neighbour entries for their gateway go stale each time.
pub fn bridge_mac(name: &str) -> [u8; 6] {
    let x = fnv1a(name).to_be_bytes();
    [0x02, x[0], x[1], x[2], x[3], x[4]]
}

/// Every container network by name: `default` and each of
/// `[network.networks]`. A network without a `subnet` takes the first
/// free slot from the one its name hashes to; slots taken by explicit
/// subnets are skipped. With all 256 slots taken it has no IPv4 subnet
/// (the validator says so).
pub fn resolve(n: &Network) -> BTreeMap<String, Resolved> {
    let mut out = BTreeMap::new();
    out.insert(
        DEFAULT_NETWORK.to_string(),
        Resolved {
            bridge: DEFAULT_BRIDGE.to_string(),
            v4: Some(n.containers.subnet),
            v6: n.containers.subnet6.0,
        },
    );
    let mut taken: Vec<Cidr> = vec![n.containers.subnet];
    taken.extend(n.networks.values().filter_map(|net| net.subnet));
    // `default` there is the validator's error; it must not replace the
    // default network here.
    for (name, net) in n
        .networks
        .iter()
        .filter(|(name, _)| *name != DEFAULT_NETWORK)
    {
        let start = start_slot(name);
        let slot = match net.subnet {
            Some(_) => None,
            None => (0..=255u8)
                .map(|i| start.wrapping_add(i))
                .find(|&s| !taken.iter().any(|t| t.overlaps(&auto_v4(s)))),
        };
        if let Some(s) = slot {
            taken.push(auto_v4(s));
        }
        let v6 = match net.subnet6 {
            Some(s) => s.0,
            None => slot.map(auto_v6),
        };
        out.insert(
            name.clone(),
            Resolved {
                bridge: bridge_of(name),
                v4: net.subnet.or(slot.map(auto_v4)),
                v6,
            },
        );
    }
    out
}

/// A VM's place on its container network: its tap is a port of
/// `bridge`, and its kernel is told `address` (`ip=` on its command
/// line, as Firecracker guests take it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmAddress {
    pub network: String,
    pub bridge: String,
    /// The host index of `address` in the subnet.
    pub index: u64,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

impl VmAddress {
    /// The kernel's `ip=` parameter: address, no server, gateway,
    /// netmask, host name, device, no autoconfiguration.
    pub fn kernel_ip(&self, hostname: &str) -> String {
        let mask = u32::MAX
            .checked_shl(32u32.saturating_sub(u32::from(self.prefix)))
            .unwrap_or(0);
        format!(
            "ip={}::{}:{}:{hostname}:eth0:off",
            self.address,
            self.gateway,
            Ipv4Addr::from(mask)
        )
    }
}

/// The address of each VM on a container network, by VM name. VMs take
/// IPv4 addresses from the top of their network's subnet down, in name
/// order (containers take them from the bottom up), so a VM keeps its
/// address while the VMs named before it on its network stay the same.
pub fn vm_addresses(c: &HostConfig) -> BTreeMap<String, VmAddress> {
    let resolved = resolve(&c.network);
    let mut taken: BTreeMap<&str, u64> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (name, vm) in &c.vms {
        let Some(net) = vm.networks.as_ref().and_then(|n| n.first()) else {
            continue;
        };
        let Some((key, r)) = resolved.get_key_value(net) else {
            continue;
        };
        let Some(subnet) = r.v4 else {
            continue;
        };
        let n = taken.entry(key.as_str()).or_insert(0);
        let size = 1u64 << (32 - u32::from(subnet.prefix.min(32)));
        // The broadcast is size - 1; the bridge has 1.
        let index = size.saturating_sub(2).saturating_sub(*n);
        *n += 1;
        let (Some(IpAddr::V4(address)), Some(IpAddr::V4(gateway))) = (
            host_address(&subnet, index),
            host_address(&subnet, BRIDGE_INDEX),
        ) else {
            continue;
        };
        if index <= 1 {
            continue;
        }
        out.insert(
            name.clone(),
            VmAddress {
                network: key.clone(),
                bridge: r.bridge.clone(),
                index,
                address,
                prefix: subnet.prefix,
                gateway,
            },
        );
    }
    out
}

/// The address of the `index`th host of `subnet` (1: the bridge's own),
/// if the subnet has that many, never its broadcast address.
pub fn host_address(subnet: &Cidr, index: u64) -> Option<IpAddr> {
    match subnet.addr {
        IpAddr::V4(a) => {
            let size = 1u64 << (32 - u32::from(subnet.prefix.min(32)));
            // The last address is the broadcast.
            if index == 0 || index >= size.saturating_sub(1) {
                return None;
            }
            let base = u64::from(u32::from(a));
            Some(IpAddr::V4(Ipv4Addr::from(
                u32::try_from(base + index).ok()?,
            )))
        }
        IpAddr::V6(a) => {
            let bits = 128 - u32::from(subnet.prefix.min(128));
            if index == 0 || (bits < 64 && index >= 1u64 << bits) {
                return None;
            }
            Some(IpAddr::V6(Ipv6Addr::from(
                u128::from(a).checked_add(u128::from(index))?,
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostconfig::types::NamedNetwork;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn the_default_network_is_the_containers_subnets() {
        let r = resolve(&Network::default());
        let d = &r["default"];
        assert_eq!(d.bridge, "keel0");
        assert_eq!(d.v4, Some(cidr("10.88.0.0/16")));
        assert_eq!(d.v6, Some(cidr("fd88::/64")));
    }

    #[test]
    fn named_networks_get_a_slot_that_adding_another_does_not_move() {
        let mut n = Network::default();
        n.networks.insert("backend".into(), NamedNetwork::default());
        let before = resolve(&n)["backend"].clone();
        assert_eq!(before.bridge, "kn-backend");
        let v4 = before.v4.unwrap();
        assert_eq!(v4.prefix, 24);
        assert!(v4.is_network());
        n.networks.insert("aaa".into(), NamedNetwork::default());
        n.networks.insert("zzz".into(), NamedNetwork::default());
        let after = resolve(&n);
        assert_eq!(after["backend"], before);
        let subnets: Vec<Cidr> = after.values().filter_map(|r| r.v4).collect();
        for (i, a) in subnets.iter().enumerate() {
            for b in &subnets[i + 1..] {
                assert!(!a.overlaps(b), "{a} and {b}");
            }
        }
    }

    #[test]
    fn an_explicit_subnet_is_kept_and_its_slot_skipped() {
        let mut n = Network::default();
        let slot = start_slot("web");
        n.networks.insert(
            "fixed".into(),
            NamedNetwork {
                subnet: Some(auto_v4(slot)),
                subnet6: Some("none".parse().unwrap()),
            },
        );
        n.networks.insert("web".into(), NamedNetwork::default());
        let r = resolve(&n);
        assert_eq!(r["fixed"].v4, Some(auto_v4(slot)));
        assert_eq!(r["fixed"].v6, None);
        assert_eq!(r["web"].v4, Some(auto_v4(slot.wrapping_add(1))));
    }

    #[test]
    fn host_addresses_stay_inside_the_subnet() {
        let s = cidr("10.88.0.0/30");
        assert_eq!(host_address(&s, 1), Some("10.88.0.1".parse().unwrap()));
        assert_eq!(host_address(&s, 2), Some("10.88.0.2".parse().unwrap()));
        assert_eq!(host_address(&s, 3), None, "broadcast");
        assert_eq!(host_address(&s, 0), None);
        let s6 = cidr("fd88::/126");
        assert_eq!(host_address(&s6, 3), Some("fd88::3".parse().unwrap()));
        assert_eq!(host_address(&s6, 4), None);
        assert_eq!(
            host_address(&cidr("fd88::/64"), u64::MAX).map(|a| a.is_ipv6()),
            Some(true)
        );
        assert_eq!(host_address(&cidr("0.0.0.0/0"), u64::MAX), None);
    }

    #[test]
    fn overlaps_are_found_in_both_directions_and_only_in_one_family() {
        assert!(cidr("10.88.0.0/16").overlaps(&cidr("10.88.3.0/24")));
        assert!(cidr("10.88.3.0/24").overlaps(&cidr("10.88.0.0/16")));
        assert!(!cidr("10.88.0.0/16").overlaps(&cidr("10.89.0.0/24")));
        assert!(cidr("0.0.0.0/0").overlaps(&cidr("192.0.2.0/24")));
        assert!(!cidr("fd88::/64").overlaps(&cidr("10.88.0.0/16")));
        assert!(cidr("fd88::/64").overlaps(&cidr("fd88::5/128")));
    }
}

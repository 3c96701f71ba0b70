//! Container networks: which bridges a host config needs, the address of
//! each private container on each of its networks, its hosts file, and
//! the NAT and filter rules that go with them. [`layout`] works it all
//! out from the config (pure, unit-tested); [`Networks::realize`] puts
//! it on the host. Like Docker's bridge networks: one bridge per network,
//! the host's side of it the first address of each subnet, containers
//! masqueraded on their way out, published ports reached by DNAT.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use keel_formats::container::NetInterface;
use keel_formats::hostconfig::networks::{self, host_address, Resolved, BRIDGE_INDEX};
use keel_formats::hostconfig::types::{ContainerNetwork, Inbound, UserContainer, DEFAULT_NETWORK};
use keel_formats::hostconfig::values::{Cidr, PortRange};
use keel_formats::hostconfig::HostConfig;

use super::nft;

/// Where keel-init writes each container's hosts file (bound onto its
/// /etc/hosts, rewritten in place as containers come and go).
pub use keel_formats::host::HOSTS_DIR;

/// Addresses given out, by network then container: a container keeps
/// its address for as long as it stays on the network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Given(BTreeMap<String, BTreeMap<String, u64>>);

/// Everything a config asks of the container networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// The networks some private container is on.
    pub networks: BTreeMap<String, Resolved>,
    /// Each private container's interfaces, `eth0` first.
    pub interfaces: BTreeMap<String, Vec<NetInterface>>,
    /// Each private container's hosts file.
    pub hosts: BTreeMap<String, String>,
    /// The taps of VMs on a network, each a port of its bridge.
    pub taps: BTreeMap<String, String>,
    pub ruleset: nft::Ruleset,
}

/// The networks container `uc` is on (none for `host` and `none`).
pub fn networks_of(uc: &UserContainer) -> Vec<String> {
    match uc.network {
        ContainerNetwork::Private => uc
            .networks
            .clone()
            .unwrap_or_else(|| vec![DEFAULT_NETWORK.to_string()]),
        ContainerNetwork::Host | ContainerNetwork::None => Vec::new(),
    }
}

/// The addresses of `index` in the network's subnets.
fn addresses(r: &Resolved, index: u64) -> Vec<(IpAddr, u8)> {
    [r.v4, r.v6]
        .into_iter()
        .flatten()
        .filter_map(|s: Cidr| Some((host_address(&s, index)?, s.prefix)))
        .collect()
}

/// Work out the layout of config `c`, giving addresses to containers new
/// on a network (and taking them back from those that left) in `given`.
pub fn layout(c: &HostConfig, given: &mut Given) -> Layout {
    let resolved = networks::resolve(&c.network);
    let vms = networks::vm_addresses(c);
    let mut members: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for v in vms.values() {
        if let Some((key, _)) = resolved.get_key_value(&v.network) {
            members.entry(key).or_default();
        }
    }
    for (name, uc) in &c.containers {
        for n in networks_of(uc) {
            if let Some((key, _)) = resolved.get_key_value(&n) {
                members.entry(key).or_default().push(name);
            }
        }
    }
    given.0.retain(|net, _| members.contains_key(net.as_str()));
    let mut out = Layout::default();
    for (net, names) in &members {
        let r = &resolved[*net];
        // VMs have theirs from the top of the subnet down; a container
        // holding one a VM new on the network takes moves.
        let for_vms: BTreeSet<u64> = vms
            .values()
            .filter(|v| v.network == *net)
            .map(|v| v.index)
            .collect();
        let taken = given.0.entry(net.to_string()).or_default();
        taken.retain(|n, i| names.contains(&n.as_str()) && !for_vms.contains(i));
        // Hosts of the smaller subnet bound the indexes of both.
        let fits =
            |i: u64| !addresses(r, i).is_empty() && addresses(r, i).len() == addresses(r, 1).len();
        for name in names {
            if taken.contains_key(*name) {
                continue;
            }
            let used: BTreeSet<u64> = taken
                .values()
                .copied()
                .chain(for_vms.iter().copied())
                .collect();
            // A subnet too small for every container leaves the last ones
            // without an address on it (the validator's sizes make this
            // rare; keel-init logs it).
            if let Some(i) = (BRIDGE_INDEX + 1..u64::MAX)
                .take_while(|&i| fits(i))
                .find(|i| !used.contains(i))
            {
                taken.insert(name.to_string(), i);
            }
        }
        out.networks.insert(net.to_string(), r.clone());
        out.ruleset.bridges.push(nft::Bridge {
            name: r.bridge.clone(),
            v4: r.v4.and_then(|s| match s.addr {
                IpAddr::V4(a) => Some((a, s.prefix)),
                IpAddr::V6(_) => None,
            }),
            v6: r.v6.and_then(|s| match s.addr {
                IpAddr::V6(a) => Some((a, s.prefix)),
                IpAddr::V4(_) => None,
            }),
        });
    }
    for (name, v) in &vms {
        out.taps
            .insert(keel_formats::host::vm_tap(name), v.bridge.clone());
    }
    // A config that turns forwarding on itself routes for more than
    // the container networks.
    out.ruleset.route_others = [
        "net.ipv4.ip_forward",
        "net.ipv4.conf.all.forwarding",
        "net.ipv6.conf.all.forwarding",
    ]
    .iter()
    .any(|k| {
        c.sysctl
            .get(*k)
            .is_some_and(|v| !matches!(v.render().trim(), "0" | "false"))
    });
    out.ruleset.containers_may_reach = c
        .network
        .firewall
        .containers
        .iter()
        .flat_map(host_ports)
        .collect();
    if c.network.firewall.inbound == Inbound::Drop {
        let mut allowed = Vec::new();
        for a in &c.network.firewall.allow {
            let from: Vec<Option<(IpAddr, u8)>> = match a.from.is_empty() {
                true => vec![None],
                false => a.from.iter().map(|s| Some((s.addr, s.prefix))).collect(),
            };
            for f in from {
                for ports in a.ports.iter().flat_map(host_ports) {
                    allowed.push(nft::Allowed { ports, from: f });
                }
            }
        }
        out.ruleset.inbound = Some(allowed);
    }
    for (name, uc) in &c.containers {
        let mut list = Vec::new();
        for n in networks_of(uc) {
            let (Some(r), Some(i)) = (resolved.get(&n), given.0.get(&n).and_then(|t| t.get(name)))
            else {
                continue;
            };
            let gateways = match list.is_empty() {
                true => addresses(r, BRIDGE_INDEX)
                    .into_iter()
                    .map(|(a, _)| a)
                    .collect(),
                false => Vec::new(),
            };
            list.push(NetInterface {
                bridge: r.bridge.clone(),
                addresses: addresses(r, *i),
                gateways,
            });
        }
        if let Some(first) = list.first() {
            for p in &uc.ports {
                let proto = if p.udp {
                    nft::Proto::Udp
                } else {
                    nft::Proto::Tcp
                };
                for (to, _) in &first.addresses {
                    out.ruleset.dnat.push(nft::Dnat {
                        proto,
                        host_port: p.host,
                        to: *to,
                        port: p.container,
                    });
                }
            }
        }
        if uc.network == ContainerNetwork::Private {
            out.hosts
                .insert(name.clone(), hosts_file(name, c, given, &resolved, &vms));
            out.interfaces.insert(name.clone(), list);
        }
    }
    out
}

/// The ports of a firewall entry, one protocol each.
fn host_ports(p: &PortRange) -> Vec<nft::HostPort> {
    let protos: &[nft::Proto] = match p.udp {
        Some(true) => &[nft::Proto::Udp],
        Some(false) => &[nft::Proto::Tcp],
        None => &[nft::Proto::Tcp, nft::Proto::Udp],
    };
    protos
        .iter()
        .map(|&proto| nft::HostPort {
            proto,
            first: p.first,
            last: p.last,
        })
        .collect()
}

/// A container's /etc/hosts: itself, then every container it shares a
/// network with, by name, at its address on the first network they share.
fn hosts_file(
    name: &str,
    c: &HostConfig,
    given: &Given,
    resolved: &BTreeMap<String, Resolved>,
    vms: &BTreeMap<String, networks::VmAddress>,
) -> String {
    let mut text = String::from(
        "# Written by keel-init: the containers on this container's networks.\n\
         127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    let Some(uc) = c.containers.get(name) else {
        return text;
    };
    let mine = networks_of(uc);
    let mut seen = BTreeSet::new();
    let mut vm_lines = String::new();
    let mut line = |who: &str, net: &str| {
        let (Some(r), Some(i)) = (resolved.get(net), given.0.get(net).and_then(|t| t.get(who)))
        else {
            return;
        };
        for (a, _) in addresses(r, *i) {
            text.push_str(&format!("{a}\t{who}\n"));
        }
    };
    if let Some(first) = mine.first() {
        line(name, first);
    }
    seen.insert(name.to_string());
    for net in &mine {
        for (other, ouc) in &c.containers {
            if seen.contains(other) || !networks_of(ouc).contains(net) {
                continue;
            }
            seen.insert(other.clone());
            line(other, net);
        }
        for (vm, v) in vms.iter().filter(|(_, v)| v.network == *net) {
            vm_lines.push_str(&format!("{}\t{vm}\n", v.address));
        }
    }
    text.push_str(&vm_lines);
    text
}

/// Host effects of container networks, behind a seam: rtnetlink and
/// nf_tables on a host, a record in tests.
pub trait NetHost {
    /// Bridge `name` up with these addresses.
    fn bridge(&mut self, name: &str, addresses: &[(IpAddr, u8)]) -> Result<(), String>;
    fn remove_bridge(&mut self, name: &str) -> Result<(), String>;
    /// Tap `tap` a port of bridge `bridge`, or of none.
    fn attach(&mut self, tap: &str, bridge: Option<&str>) -> Result<(), String>;
    fn ruleset(&mut self, r: &nft::Ruleset) -> Result<(), String>;
    /// Forwarding on while a network is there, off after.
    fn forwarding(&mut self, on: bool) -> Result<(), String>;
    fn hosts_file(&mut self, container: &str, text: &str) -> Result<(), String>;
    fn remove_hosts_file(&mut self, container: &str);
}

/// keel-init's view of the container networks it set up.
#[derive(Debug, Default)]
pub struct Networks {
    pub given: Given,
    /// What is on the host now.
    pub current: Layout,
    /// Whether keel-init has the host forwarding.
    pub forwarding: bool,
}

impl Networks {
    /// Bring the host from the current layout to `new`'s: bridges made
    /// before the rules that name them and removed after; nothing left of
    /// a network or container that is gone. What failed is not recorded
    /// as done, so the next call tries it again; returns what failed.
    pub fn realize(&mut self, new: Layout, host: &mut dyn NetHost) -> Vec<String> {
        let mut errors = Vec::new();
        let old = std::mem::take(&mut self.current);
        let mut done = Layout {
            interfaces: new.interfaces.clone(),
            // The kernel keeps the old table if the new one is refused.
            ruleset: old.ruleset.clone(),
            ..Layout::default()
        };
        // Forwarding while a network is there. Off again after, unless the
        // host config routes by its own sysctls.
        let want = !new.networks.is_empty();
        if want != self.forwarding {
            let r = match want || !new.ruleset.route_others {
                true => host.forwarding(want),
                false => Ok(()),
            };
            match r {
                Ok(()) => self.forwarding = want,
                Err(e) => errors.push(e),
            }
        }
        let mut made = BTreeSet::new();
        for (name, r) in &new.networks {
            if old.networks.values().any(|c| c == r) {
                done.networks.insert(name.clone(), r.clone());
                continue;
            }
            let own = [r.v4, r.v6]
                .into_iter()
                .flatten()
                .filter_map(|s| Some((host_address(&s, BRIDGE_INDEX)?, s.prefix)))
                .collect::<Vec<_>>();
            // A network whose subnets changed: its old addresses go with
            // the old bridge.
            if old.networks.values().any(|c| c.bridge == r.bridge) {
                errors.extend(host.remove_bridge(&r.bridge).err());
            }
            match host.bridge(&r.bridge, &own) {
                Ok(()) => {
                    done.networks.insert(name.clone(), r.clone());
                    made.insert(r.bridge.clone());
                }
                Err(e) => errors.push(e),
            }
        }
        // A bridge made again has lost its ports.
        for (tap, bridge) in &new.taps {
            if old.taps.get(tap) == Some(bridge) && !made.contains(bridge) {
                done.taps.insert(tap.clone(), bridge.clone());
                continue;
            }
            match host.attach(tap, Some(bridge)) {
                Ok(()) => {
                    done.taps.insert(tap.clone(), bridge.clone());
                }
                Err(e) => errors.push(e),
            }
        }
        for tap in old.taps.keys().filter(|t| !new.taps.contains_key(*t)) {
            // A VM that left its network, or went: a tap gone is no error.
            let _ = host.attach(tap, None);
        }
        if new.ruleset != old.ruleset {
            match host.ruleset(&new.ruleset) {
                Ok(()) => done.ruleset = new.ruleset.clone(),
                Err(e) => errors.push(e),
            }
        }
        for gone in old.networks.values() {
            if !new.networks.values().any(|r| r.bridge == gone.bridge) {
                if let Err(e) = host.remove_bridge(&gone.bridge) {
                    errors.push(e);
                    // Still there: tried again next time.
                    done.networks
                        .insert(format!("(gone) {}", gone.bridge), gone.clone());
                }
            }
        }
        for (name, text) in &new.hosts {
            if old.hosts.get(name) == Some(text) {
                done.hosts.insert(name.clone(), text.clone());
                continue;
            }
            match host.hosts_file(name, text) {
                Ok(()) => {
                    done.hosts.insert(name.clone(), text.clone());
                }
                Err(e) => errors.push(e),
            }
        }
        for name in old.hosts.keys() {
            if !new.hosts.contains_key(name) {
                host.remove_hosts_file(name);
            }
        }
        self.current = done;
        errors
    }
}

#[cfg(test)]
#[path = "containers_tests.rs"]
mod tests;

/// The host's side: rtnetlink for bridges, nf_tables for the rules,
/// /proc/sys for forwarding, files under [`HOSTS_DIR`].
#[derive(Debug, Default)]
pub struct RealNet;

impl NetHost for RealNet {
    fn bridge(&mut self, name: &str, addresses: &[(IpAddr, u8)]) -> Result<(), String> {
        let mut nl = super::netlink::Netlink::open()?;
        let index = nl.ensure_bridge(name)?;
        for (a, prefix) in addresses {
            nl.add_address_nodad(index, a, *prefix)
                .map_err(|e| format!("bridge {name}: {e}"))?;
        }
        // A published port reached at 127.0.0.1 from the host is sent on
        // to the bridge from a loopback source (then masqueraded), which
        // the kernel allows only with route_localnet on the way out.
        // The ruleset drops what containers send to 127.0.0.0/8.
        let path = format!("/proc/sys/net/ipv4/conf/{name}/route_localnet");
        std::fs::write(&path, "1").map_err(|e| format!("{path}: {e}"))?;
        // The host takes no router advertisement and no address from its
        // containers.
        for key in ["accept_ra", "autoconf"] {
            let path = format!("/proc/sys/net/ipv6/conf/{name}/{key}");
            if std::path::Path::new(&path).exists() {
                std::fs::write(&path, "0").map_err(|e| format!("{path}: {e}"))?;
            }
        }
        Ok(())
    }

    fn remove_bridge(&mut self, name: &str) -> Result<(), String> {
        super::netlink::Netlink::open()?.delete_link(name)
    }

    fn attach(&mut self, tap: &str, bridge: Option<&str>) -> Result<(), String> {
        let index =
            |n: &str| super::netlink::index_of(n).ok_or_else(|| format!("{n}: no such interface"));
        let master = bridge.map(index).transpose()?.unwrap_or(0);
        super::netlink::Netlink::open()?.set_master(index(tap)?, master)
    }

    fn ruleset(&mut self, r: &nft::Ruleset) -> Result<(), String> {
        let done = match r.is_empty() {
            true => nft::remove(),
            false => nft::apply(r),
        };
        done.map_err(|e| e.to_string())
    }

    fn forwarding(&mut self, on: bool) -> Result<(), String> {
        let write = |path: &str, value: &str| {
            std::fs::write(path, value).map_err(|e| format!("{path}: {e}"))
        };
        if !on {
            write("/proc/sys/net/ipv4/ip_forward", "0")?;
            return write("/proc/sys/net/ipv6/conf/all/forwarding", "0");
        }
        // IPv6 forwarding stops an interface from taking router
        // advertisements unless accept_ra is 2: the host keeps its own
        // SLAAC addresses and routes. The machine's own devices only: not
        // `all` and `default` (which bridges made later copy), not bridges,
        // veths or taps: a container must not route the host by
        // advertising itself.
        if let Ok(rd) = std::fs::read_dir("/proc/sys/net/ipv6/conf") {
            for e in rd.flatten() {
                let device = std::path::Path::new("/sys/class/net")
                    .join(e.file_name())
                    .join("device");
                if !device.exists() {
                    continue;
                }
                let p = e.path().join("accept_ra");
                if std::fs::read_to_string(&p).is_ok_and(|v| v.trim() == "1") {
                    let _ = std::fs::write(&p, "2");
                }
            }
        }
        write("/proc/sys/net/ipv4/ip_forward", "1")?;
        write("/proc/sys/net/ipv6/conf/all/forwarding", "1")
    }

    fn hosts_file(&mut self, container: &str, text: &str) -> Result<(), String> {
        use std::os::unix::fs::FileExt;
        let path = std::path::Path::new(HOSTS_DIR).join(container);
        let fail = |e: std::io::Error| format!("{}: {e}", path.display());
        std::fs::create_dir_all(HOSTS_DIR).map_err(|e| format!("{HOSTS_DIR}: {e}"))?;
        // In place, not renamed over: the container has the file itself
        // bound onto its /etc/hosts.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(fail)?;
        f.write_all_at(text.as_bytes(), 0).map_err(fail)?;
        f.set_len(text.len() as u64).map_err(fail)
    }

    fn remove_hosts_file(&mut self, container: &str) {
        let _ = std::fs::remove_file(std::path::Path::new(HOSTS_DIR).join(container));
    }
}

/// A container's hosts file on the host.
pub fn hosts_path(container: &str) -> std::path::PathBuf {
    std::path::Path::new(HOSTS_DIR).join(container)
}

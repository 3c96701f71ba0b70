//! `[network]` of the host config, applied at boot: each configured
//! interface (found by name or MAC) is brought up with its MTU, static
//! addresses, default gateway and routes, through rtnetlink
//! ([`crate::net::netlink::Netlink`] is the real [`Net`]). A config applied on
//! a running host also withdraws what the previous one set and the new
//! one no longer lists.

use std::net::IpAddr;
use std::path::Path;

use keel_formats::hostconfig::HostConfig;

/// One network interface of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    /// Lower case, `52:54:00:12:34:56`.
    pub mac: String,
    pub index: u32,
    /// An Ethernet device of the machine's own (not a bridge, veth or
    /// tap keel-init made).
    pub ethernet: bool,
}

/// The host's network, behind a trait so the logic is tested without root.
pub trait Net {
    fn interfaces(&self) -> Vec<Iface>;
    fn link_up(&mut self, index: u32, mtu: Option<u32>) -> Result<(), String>;
    fn add_address(&mut self, index: u32, addr: &IpAddr, prefix: u8) -> Result<(), String>;
    fn add_route(
        &mut self,
        index: u32,
        dst: &IpAddr,
        prefix: u8,
        via: Option<&IpAddr>,
    ) -> Result<(), String>;
    /// Remove an address; one already gone is no error.
    fn del_address(&mut self, index: u32, addr: &IpAddr, prefix: u8) -> Result<(), String>;
    /// Remove a route; one already gone is no error.
    fn del_route(
        &mut self,
        index: u32,
        dst: &IpAddr,
        prefix: u8,
        via: Option<&IpAddr>,
    ) -> Result<(), String>;
}

/// An address or route a config sets on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Setting {
    Address(u32, IpAddr, u8),
    Route(u32, IpAddr, u8, Option<IpAddr>),
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Setting::Address(_, a, p) => write!(f, "address {a}/{p}"),
            Setting::Route(_, d, p, None) => write!(f, "route to {d}/{p}"),
            Setting::Route(_, d, p, Some(v)) => write!(f, "route to {d}/{p} via {v}"),
        }
    }
}

/// What `c` sets on the interfaces `present`, in order.
fn settings(c: &HostConfig, present: &[Iface]) -> Vec<Setting> {
    c.network
        .interfaces
        .iter()
        .filter_map(|(name, cfg)| find(present, name, cfg).map(|i| iface_settings(i.index, cfg)))
        .flatten()
        .collect()
}

/// The addresses and routes `cfg` sets on interface `i`.
fn iface_settings(i: u32, cfg: &keel_formats::hostconfig::types::Interface) -> Vec<Setting> {
    let mut out = Vec::new();
    for a in &cfg.addresses {
        out.push(Setting::Address(i, a.addr, a.prefix));
    }
    if let Some(gw) = cfg.gateway.map(|g| g.0) {
        let any: IpAddr = if gw.is_ipv4() {
            IpAddr::from([0u8; 4])
        } else {
            IpAddr::from([0u8; 16])
        };
        out.push(Setting::Route(i, any, 0, Some(gw)));
    }
    for r in &cfg.routes {
        out.push(Setting::Route(
            i,
            r.to.addr,
            r.to.prefix,
            r.via.map(|v| v.0),
        ));
    }
    out
}

fn find<'a>(
    present: &'a [Iface],
    name: &str,
    cfg: &keel_formats::hostconfig::types::Interface,
) -> Option<&'a Iface> {
    present.iter().find(|i| match &cfg.mac {
        Some(mac) => i.mac.eq_ignore_ascii_case(&mac.to_string()),
        None => i.name == name,
    })
}

/// Remove what `old` set and `new` does not: routes first, then
/// addresses (DHCP leases and what others added are never touched).
/// Returns what could not be removed.
pub fn withdraw(old: &HostConfig, new: &HostConfig, net: &mut dyn Net) -> Vec<String> {
    let present = net.interfaces();
    let keep = settings(new, &present);
    let mut gone: Vec<Setting> = settings(old, &present)
        .into_iter()
        .filter(|s| !keep.contains(s))
        .collect();
    // Routes before the addresses they may go through.
    gone.sort_by_key(|s| matches!(s, Setting::Address(..)));
    let mut warnings = Vec::new();
    for s in gone {
        let r = match &s {
            Setting::Route(i, dst, prefix, via) => net.del_route(*i, dst, *prefix, via.as_ref()),
            Setting::Address(i, addr, prefix) => net.del_address(*i, addr, *prefix),
        };
        if let Err(e) = r {
            warnings.push(format!("network: removing {s:?}: {e}"));
        }
    }
    warnings
}

/// What applying `[network]` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// What did not take.
    pub warnings: Vec<String>,
    /// The real names of the interfaces that want DHCP.
    pub dhcp: Vec<String>,
}

/// Apply the config's interfaces.
pub fn apply(c: &HostConfig, net: &mut dyn Net) -> Applied {
    let mut warnings = Vec::new();
    let mut dhcp = Vec::new();
    let present = net.interfaces();
    // As Flatcar and Bottlerocket: a host whose config names no
    // interface asks for an address on its first Ethernet device, so a
    // freshly flashed one reaches its update repository.
    if c.network.interfaces.is_empty() {
        if let Some(iface) = present.iter().find(|i| i.ethernet) {
            if let Err(e) = net.link_up(iface.index, None) {
                warnings.push(format!("{}: {e}", iface.name));
            }
            dhcp.push(iface.name.clone());
        }
    }
    for (name, cfg) in &c.network.interfaces {
        let Some(iface) = find(&present, name, cfg) else {
            let by = cfg
                .mac
                .map_or_else(|| format!("named {name}"), |m| format!("with MAC {m}"));
            warnings.push(format!("network.interfaces.{name}: no interface {by}"));
            continue;
        };
        let mut try_ = |r: Result<(), String>| {
            if let Err(e) = r {
                warnings.push(format!("network.interfaces.{name} ({}): {e}", iface.name));
            }
        };
        try_(net.link_up(iface.index, cfg.mtu));
        for setting in iface_settings(iface.index, cfg) {
            try_(match &setting {
                Setting::Address(i, addr, prefix) => net.add_address(*i, addr, *prefix),
                Setting::Route(i, dst, prefix, via) => {
                    net.add_route(*i, dst, *prefix, via.as_ref())
                }
            });
        }
        if cfg.dhcp {
            dhcp.push(iface.name.clone());
        }
    }
    Applied { warnings, dhcp }
}

/// The host's interfaces but loopback, from sysfs, in index order.
pub fn sysfs_interfaces() -> Vec<Iface> {
    let base = Path::new("/sys/class/net");
    let Ok(dir) = std::fs::read_dir(base) else {
        return Vec::new();
    };
    let read = |p: &Path| std::fs::read_to_string(p).map(|s| s.trim().to_string());
    let mut out: Vec<Iface> = dir
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let index = read(&e.path().join("ifindex")).ok()?.parse().ok()?;
            let mac = read(&e.path().join("address")).unwrap_or_default();
            // ARPHRD_ETHER with a device behind it: virtual links have none.
            let ethernet = read(&e.path().join("type")).is_ok_and(|t| t == "1")
                && e.path().join("device").exists();
            (name != "lo").then_some(Iface {
                name,
                mac: mac.to_ascii_lowercase(),
                index,
                ethernet,
            })
        })
        .collect();
    out.sort_by_key(|i| i.index);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Fake {
        calls: Vec<String>,
    }

    impl Net for Fake {
        fn interfaces(&self) -> Vec<Iface> {
            vec![
                Iface {
                    name: "eth0".into(),
                    mac: "52:54:00:12:34:56".into(),
                    index: 2,
                    ethernet: true,
                },
                Iface {
                    name: "eth1".into(),
                    mac: "52:54:00:ab:cd:ef".into(),
                    index: 3,
                    ethernet: true,
                },
            ]
        }
        fn link_up(&mut self, index: u32, mtu: Option<u32>) -> Result<(), String> {
            self.calls.push(format!("up {index} {mtu:?}"));
            Ok(())
        }
        fn add_address(&mut self, index: u32, addr: &IpAddr, prefix: u8) -> Result<(), String> {
            self.calls.push(format!("addr {index} {addr}/{prefix}"));
            Ok(())
        }
        fn add_route(
            &mut self,
            index: u32,
            dst: &IpAddr,
            prefix: u8,
            via: Option<&IpAddr>,
        ) -> Result<(), String> {
            self.calls
                .push(format!("route {index} {dst}/{prefix} via {via:?}"));
            Err("Network is unreachable".into())
        }
        fn del_address(&mut self, index: u32, addr: &IpAddr, prefix: u8) -> Result<(), String> {
            self.calls.push(format!("del addr {index} {addr}/{prefix}"));
            Ok(())
        }
        fn del_route(
            &mut self,
            index: u32,
            dst: &IpAddr,
            prefix: u8,
            via: Option<&IpAddr>,
        ) -> Result<(), String> {
            self.calls
                .push(format!("del route {index} {dst}/{prefix} via {via:?}"));
            Ok(())
        }
    }

    #[test]
    fn what_the_old_config_set_and_the_new_one_does_not_is_withdrawn() {
        let old: HostConfig = toml::from_str(
            r#"
[network.interfaces.eth0]
addresses = ["10.0.2.15/24", "10.0.3.1/24"]
gateway = "10.0.2.2"
routes = [{ to = "192.0.2.0/24", via = "10.0.3.9" }]
[network.interfaces.uplink]
mac = "52:54:00:ab:cd:ef"
addresses = ["fd00::5/64"]
[network.interfaces.wlan0]
addresses = ["192.0.2.1/24"]
"#,
        )
        .unwrap();
        let new: HostConfig = toml::from_str(
            r#"
[network.interfaces.eth0]
addresses = ["10.0.2.15/24"]
gateway = "10.0.2.1"
dhcp = true
"#,
        )
        .unwrap();
        let mut f = Fake::default();
        assert!(withdraw(&old, &new, &mut f).is_empty());
        assert_eq!(
            f.calls,
            [
                "del route 2 0.0.0.0/0 via Some(10.0.2.2)",
                "del route 2 192.0.2.0/24 via Some(10.0.3.9)",
                "del addr 2 10.0.3.1/24",
                "del addr 3 fd00::5/64",
            ],
            "routes first; kept address untouched; a missing interface skipped"
        );
        let mut f = Fake::default();
        assert!(withdraw(&new, &new, &mut f).is_empty());
        assert!(f.calls.is_empty(), "the same config withdraws nothing");
    }

    #[test]
    fn a_config_without_interfaces_asks_for_dhcp_on_the_first_ethernet_device() {
        let mut f = Fake::default();
        let Applied { warnings, dhcp } = apply(&HostConfig::default(), &mut f);
        assert_eq!(dhcp, ["eth0"]);
        assert_eq!(f.calls, ["up 2 None"]);
        assert!(warnings.is_empty(), "{warnings:?}");
        // One interface named: only what it says.
        let c: HostConfig =
            toml::from_str("[network.interfaces.eth1]\naddresses = [\"fd00::5/64\"]\n").unwrap();
        let mut f = Fake::default();
        assert!(apply(&c, &mut f).dhcp.is_empty());
    }

    #[test]
    fn interfaces_are_found_by_name_or_mac_and_configured() {
        let c: HostConfig = toml::from_str(
            r#"
[network.interfaces.eth0]
addresses = ["10.0.2.15/24"]
gateway = "10.0.2.2"
mtu = 1400
[network.interfaces.uplink]
mac = "52:54:00:AB:CD:EF"
addresses = ["fd00::5/64"]
dhcp = true
[network.interfaces.wlan0]
addresses = ["192.0.2.1/24"]
"#,
        )
        .unwrap();
        let mut f = Fake::default();
        let Applied { warnings, dhcp } = apply(&c, &mut f);
        assert_eq!(dhcp, ["eth1"], "found by MAC, named as the host names it");
        assert_eq!(
            f.calls,
            [
                "up 2 Some(1400)",
                "addr 2 10.0.2.15/24",
                "route 2 0.0.0.0/0 via Some(10.0.2.2)",
                "up 3 None",
                "addr 3 fd00::5/64",
            ]
        );
        assert_eq!(
            warnings,
            [
                "network.interfaces.eth0 (eth0): Network is unreachable",
                "network.interfaces.wlan0: no interface named wlan0",
            ]
        );
    }
}

//! Checks of a host config's values and of how its parts fit together.
//! Every problem is collected, each with the key it is about.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::networks::{self, NETWORK_NAME_MAX};
use super::types::{
    ContainerNetwork, HostConfig, Interface, Limits, Reboot, UserContainer, Vm, DEFAULT_NETWORK,
};
use super::units::parse_ip;
use super::values::{Cidr, Subnet6};

#[path = "validate_workloads.rs"]
mod workloads;

/// One problem: the key path (`["services", "web", "limits", "memory"]`)
/// and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: Vec<String>,
    pub message: String,
}

/// The dotted form of a key path, quoting parts that need it
/// (`sysctl."net.ipv4.ip_forward"`).
pub fn dotted(path: &[String]) -> String {
    path.iter()
        .map(|p| {
            if !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                p.clone()
            } else {
                format!("{p:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// What the host knows that the file cannot say.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The image's system services; `None` on a workstation that does not
    /// know the image (then `services.<name>` is not checked against it).
    pub services: Option<Vec<String>>,
    /// The zones the image knows (its zone table); `None`: names are
    /// checked for shape only.
    pub zones: Option<Vec<String>>,
}

struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn bad(&mut self, path: &[&str], message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.iter().map(|s| s.to_string()).collect(),
            message: message.into(),
        });
    }

    fn check<T>(&mut self, path: &[&str], r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(m) => {
                self.bad(path, m);
                None
            }
        }
    }
}

fn is_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_host_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label)
}

/// A name that runs as a service (or, with a prefix, a part of one).
fn is_service_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A path on the data partition, where the person's files live.
fn under_var(s: &str) -> Result<(), String> {
    if !s.starts_with("/var/") || s.split('/').any(|c| c == "..") {
        return Err(format!(
            "{s:?} must be a path under /var (the only place for your files)"
        ));
    }
    Ok(())
}

/// Check everything; an empty list means the config can be applied.
pub fn validate(c: &HostConfig, ctx: &Context) -> Vec<Problem> {
    let mut k = Checker {
        problems: Vec::new(),
    };
    host(&mut k, c, ctx);
    network(&mut k, c);
    for (i, s) in c.time.ntp.iter().enumerate() {
        if parse_ip(s).is_err() && !is_host_name(s) {
            k.bad(
                &["time", "ntp"],
                format!(
                    "entry {}: {s:?} is neither an address nor a host name",
                    i + 1
                ),
            );
        }
    }
    admin(&mut k, c);
    services(&mut k, c, ctx);
    // Host ports in use: (port, udp) → who.
    let mut ports: BTreeMap<(u16, bool), String> = BTreeMap::new();
    let ssh = &c.admin.ssh;
    if c.admin.enabled && ssh.enabled {
        ports.insert((ssh.port, false), "admin.ssh".into());
    }
    let remote = &c.admin.remote;
    if c.admin.enabled && remote.enabled {
        if let Some(other) = ports.insert((remote.port, false), "admin.remote".into()) {
            k.bad(
                &["admin", "remote", "port"],
                format!("port {} is {other}'s too", remote.port),
            );
        }
    }
    for (name, ct) in &c.containers {
        workloads::container(&mut k, name, ct, c, ctx, &mut ports);
    }
    workloads::volume_sources(&mut k, c);
    for (name, vm) in &c.vms {
        workloads::vm(&mut k, name, vm);
        workloads::vm_network(&mut k, name, vm, c);
    }
    workloads::registries(&mut k, c);
    update(&mut k, c);
    k.problems
}

/// The host name, the time zone and the sysctls.
fn host(k: &mut Checker, c: &HostConfig, ctx: &Context) {
    if let Some(h) = &c.hostname {
        if !is_label(h) {
            k.bad(
                &["hostname"],
                format!(
                    "{h:?} is not a host name: 1-63 letters, digits and '-', not at either end"
                ),
            );
        }
    }
    if let Some(tz) = &c.timezone {
        let ok = tz == "UTC"
            || (tz.contains('/')
                && tz.split('/').all(|p| {
                    !p.is_empty()
                        && p != ".."
                        && p.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"_+-".contains(&b))
                }));
        if !ok {
            k.bad(
                &["timezone"],
                format!("{tz:?} is not a zone name like \"Europe/Berlin\" or \"UTC\""),
            );
        } else if let Some(zones) = &ctx.zones {
            if tz != "UTC" && !zones.iter().any(|z| z == tz) {
                k.bad(
                    &["timezone"],
                    format!("no time zone {tz:?} in the zone database"),
                );
            }
        }
    }
    for (key, v) in &c.sysctl {
        let ok = !key.starts_with('.')
            && !key.ends_with('.')
            && !key.contains("..")
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            k.bad(
                &["sysctl", key],
                "not a sysctl name like \"net.ipv4.ip_forward\"",
            );
        }
        if v.render().contains('\n') {
            k.bad(&["sysctl", key], "the value must be one line");
        }
    }
}

fn admin(k: &mut Checker, c: &HostConfig) {
    let ssh = &c.admin.ssh;
    if ssh.enabled && c.admin.enabled && ssh.authorized_keys.is_empty() {
        k.bad(
            &["admin", "ssh", "authorized_keys"],
            "SSH is enabled but no key may log in; list at least one public key",
        );
    }
    if ssh.port == 0 {
        k.bad(&["admin", "ssh", "port"], "0 is not a port");
    }
    for (i, key) in ssh.authorized_keys.iter().enumerate() {
        if let Err(m) = authorized_key(key) {
            k.bad(
                &["admin", "ssh", "authorized_keys"],
                format!("entry {}: {m}", i + 1),
            );
        }
    }
    let r = &c.admin.remote;
    if r.port == 0 {
        k.bad(&["admin", "remote", "port"], "0 is not a port");
    }
    for (f, pem) in [("ca", &r.ca), ("cert", &r.cert), ("key", &r.key)] {
        match pem {
            None if r.enabled && c.admin.enabled => k.bad(
                &["admin", "remote", f],
                "the remote API is enabled: it needs ca, cert and key (PEM text; keel pki issue makes them)",
            ),
            Some(p) => {
                if let Err(e) = pem_field(f, p) {
                    k.bad(&["admin", "remote", f], e);
                }
            }
            None => {}
        }
    }
}

/// A `ca`, `cert` or `key` field's PEM text: certificates, or a key.
fn pem_field(field: &str, text: &str) -> Result<(), String> {
    if field == "key" {
        crate::pem::private_key(text)
    } else {
        crate::pem::certificates(text).map(|_| ())
    }
}

/// `services.NAME`: overrides of the image's own services.
fn services(k: &mut Checker, c: &HostConfig, ctx: &Context) {
    for (name, s) in &c.services {
        if let Some(known) = &ctx.services {
            if !known.contains(name) {
                k.bad(
                    &["services", name],
                    format!(
                        "the image has no service {name:?}; it has {}",
                        known.join(", ")
                    ),
                );
            }
        }
        for e in s.env.keys() {
            if !is_env_name(e) {
                k.bad(
                    &["services", name, "env", e],
                    "not an environment variable name",
                );
            }
        }
        limits(k, &["services", name, "limits"], &s.limits);
    }
}

fn authorized_key(line: &str) -> Result<(), String> {
    const TYPES: &[&str] = &[
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];
    let mut parts = line.split_whitespace();
    let kind = parts.next().unwrap_or_default();
    if !TYPES.contains(&kind) {
        return Err(format!(
            "{kind:?} is not an SSH public key type ({})",
            TYPES.join(", ")
        ));
    }
    let body = parts.next().unwrap_or_default();
    let base64 = body
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
    if body.len() < 16 || !base64 {
        return Err(format!("the {kind} key's body is not base64"));
    }
    Ok(())
}

fn interface(k: &mut Checker, name: &str, i: &Interface, seen: &mut BTreeMap<IpAddr, String>) {
    let at = ["network", "interfaces", name];
    if i.mac.is_none() && !keel_tap::is_interface_name(name) {
        k.bad(
            &at,
            "not an interface name (1-15 bytes, not . or .., no '/', ':' or white space); set `mac` to match by address",
        );
    }
    for a in &i.addresses {
        if let Some(other) = seen.insert(a.addr, name.to_string()) {
            k.bad(
                &[at[0], at[1], name, "addresses"],
                format!("{} is also an address of interface {other:?}", a.addr),
            );
        }
    }
    if let Some(gw) = i.gateway {
        if !i.dhcp
            && !i
                .addresses
                .iter()
                .any(|a| a.addr.is_ipv4() == gw.0.is_ipv4())
        {
            k.bad(
                &[at[0], at[1], name, "gateway"],
                format!("{gw} cannot be reached: the interface has no address of its family"),
            );
        }
    }
    if let Some(m) = i.mtu {
        if !(68..=65535).contains(&m) {
            k.bad(
                &[at[0], at[1], name, "mtu"],
                format!("{m} is not 68..=65535"),
            );
        }
    }
    if !i.dhcp && i.addresses.is_empty() && (i.gateway.is_some() || !i.routes.is_empty()) {
        k.bad(
            &at,
            "routes need an address: set `addresses` or `dhcp = true`",
        );
    }
}

/// A container subnet: a subnet's own address, room for the bridge and
/// some containers, and apart from the host's own addresses.
fn subnet(k: &mut Checker, at: &[&str], s: &Cidr, v6: bool, c: &HostConfig) {
    let (family, range) = match v6 {
        false => ("IPv4", 8..=30),
        true => ("IPv6", 16..=120),
    };
    if s.addr.is_ipv6() != v6 {
        k.bad(at, format!("{s} is not an {family} subnet"));
        return;
    }
    if !range.contains(&s.prefix) {
        let (lo, hi) = (range.start(), range.end());
        k.bad(
            at,
            format!("{s}: the prefix of an {family} container subnet is {lo}..={hi}"),
        );
    } else if !s.is_network() {
        k.bad(
            at,
            format!(
                "{s} has bits set past its prefix; the subnet is written with its first address"
            ),
        );
    }
    for (name, i) in &c.network.interfaces {
        if let Some(a) = i.addresses.iter().find(|a| a.overlaps(s) || s.overlaps(a)) {
            k.bad(at, format!("{s} overlaps {a} of interface {name:?}"));
        }
    }
}

/// `[network.firewall]`.
fn firewall(k: &mut Checker, c: &HostConfig) {
    let f = &c.network.firewall;
    if f.inbound == super::types::Inbound::Accept && !f.allow.is_empty() {
        k.bad(
            &["network", "firewall", "allow"],
            "with inbound = \"accept\" every port is open already; set inbound = \"drop\" for allow lists",
        );
    }
    if f.allow.len() > FIREWALL_RULES_MAX {
        k.bad(
            &["network", "firewall", "allow"],
            format!("at most {FIREWALL_RULES_MAX} entries"),
        );
    }
    for (i, a) in f.allow.iter().enumerate() {
        let n = i.to_string();
        if a.ports.is_empty() {
            k.bad(
                &["network", "firewall", "allow", &n, "ports"],
                "lists no port",
            );
        }
        for s in a.from.iter().filter(|s| !s.is_network()) {
            k.bad(
                &["network", "firewall", "allow", &n, "from"],
                format!("{s} has bits set past its prefix; the subnet is written with its first address"),
            );
        }
    }
}

/// Entries of `[[network.firewall.allow]]` at most: each is a rule of
/// its own that every new connection is matched against.
const FIREWALL_RULES_MAX: usize = 64;

/// `[network.containers]` and `[network.networks]`.
fn container_networks(k: &mut Checker, c: &HostConfig) {
    let n = &c.network;
    subnet(
        k,
        &["network", "containers", "subnet"],
        &n.containers.subnet,
        false,
        c,
    );
    if let Some(s6) = &n.containers.subnet6.0 {
        subnet(k, &["network", "containers", "subnet6"], s6, true, c);
    }
    for (name, net) in &n.networks {
        let ok = !name.is_empty()
            && name.len() <= NETWORK_NAME_MAX
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-');
        if !ok {
            k.bad(
                &["network", "networks", name],
                format!("a network name is 1-{NETWORK_NAME_MAX} lowercase letters, digits and '-', not starting with '-'"),
            );
        }
        if name == DEFAULT_NETWORK {
            k.bad(
                &["network", "networks", name],
                "`default` is the network of [network.containers]; set its subnets there",
            );
        }
        if let Some(s) = &net.subnet {
            subnet(k, &["network", "networks", name, "subnet"], s, false, c);
        }
        if let Some(Subnet6(Some(s6))) = &net.subnet6 {
            subnet(k, &["network", "networks", name, "subnet6"], s6, true, c);
        }
    }
    let resolved = networks::resolve(n);
    let mut seen: Vec<(&str, Cidr)> = Vec::new();
    for (name, r) in &resolved {
        if r.v4.is_none() {
            k.bad(
                &["network", "networks", name],
                "no free 10.89.N.0/24 is left for it: give it a `subnet`",
            );
        }
        for s in r.v4.iter().chain(r.v6.iter()) {
            if let Some((other, o)) = seen.iter().find(|(_, o)| o.overlaps(s)) {
                let at = match name.as_str() {
                    DEFAULT_NETWORK => vec!["network", "containers"],
                    _ => vec!["network", "networks", name],
                };
                k.bad(
                    &at,
                    format!("its subnet {s} overlaps {o} of network {other:?}"),
                );
            }
            seen.push((name, *s));
        }
    }
}

fn network(k: &mut Checker, c: &HostConfig) {
    container_networks(k, c);
    firewall(k, c);
    let mut seen = BTreeMap::new();
    let mut macs: BTreeMap<super::values::Mac, String> = BTreeMap::new();
    for (name, i) in &c.network.interfaces {
        interface(k, name, i, &mut seen);
        if let Some(mac) = &i.mac {
            if let Some(other) = macs.insert(*mac, name.clone()) {
                k.bad(
                    &["network", "interfaces", name, "mac"],
                    format!("{mac} already matches interface {other:?}"),
                );
            }
        }
    }
}

fn limits(k: &mut Checker, at: &[&str], l: &Limits) {
    let key = |last: &'static str| {
        let mut p = at.to_vec();
        p.push(last);
        p
    };
    if let Some(m) = l.memory {
        if m.0 < 1 << 20 {
            k.bad(
                &key("memory"),
                format!("{:?} is below the minimum of 1M", m.to_string()),
            );
        }
    }
    if let Some(c) = l.cpus {
        if !(c > 0.0 && c <= 1024.0) {
            k.bad(&key("cpus"), format!("{c} is not a number of CPUs above 0"));
        }
    }
    if l.pids == Some(0) {
        k.bad(&key("pids"), "0 processes leaves nothing to run");
    }
}

fn update(k: &mut Checker, c: &HostConfig) {
    let u = &c.update;
    if let Some(r) = &u.repository {
        if !(r.starts_with("http://") || r.starts_with("https://")) || r.len() < 10 {
            k.bad(
                &["update", "repository"],
                format!("{r:?} is not an http:// or https:// URL"),
            );
        }
    }
    if u.channel.as_deref() == Some("") {
        k.bad(&["update", "channel"], "the channel is empty");
    }
    for (i, key) in u.trusted_keys.iter().enumerate() {
        if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            k.bad(
                &["update", "trusted_keys"],
                format!(
                    "entry {}: not an ed25519 public key (64 hex digits, as `keel keygen` writes)",
                    i + 1
                ),
            );
        }
    }
    if let Some(d) = u.check_interval {
        if d.0 < 60 {
            k.bad(
                &["update", "check_interval"],
                format!("{:?} is below the minimum of 1m", d.to_string()),
            );
        }
    }
    match (&u.reboot, &u.window) {
        (Some(Reboot::Window), None) => k.bad(
            &["update", "reboot"],
            "\"window\" needs `update.window = \"HH:MM-HH:MM\"`",
        ),
        (Some(Reboot::Window), Some(_)) => {}
        (_, Some(_)) => k.bad(
            &["update", "window"],
            "a window only matters with `reboot = \"window\"`",
        ),
        _ => {}
    }
    if let Some(co) = &u.coordination {
        coordination(k, co);
    }
}

fn coordination(k: &mut Checker, co: &crate::hostconfig::types::Coordination) {
    let key = |f: &'static str| ["update", "coordination", f];
    if co.etcd.is_empty() {
        k.bad(&key("etcd"), "names no endpoint");
    }
    for e in &co.etcd {
        let rest = e
            .strip_prefix("https://")
            .or_else(|| e.strip_prefix("http://"));
        if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
            k.bad(
                &key("etcd"),
                format!("{e:?} is not an http:// or https:// URL"),
            );
        }
    }
    if let Err(e) = crate::policy::check_group(&co.group) {
        k.bad(&key("group"), e);
    }
    if co.max_rebooting == 0 {
        k.bad(&key("max_rebooting"), "0 would never reboot");
    }
    if let Some(d) = co.lock_ttl {
        if d.0 < 60 {
            k.bad(
                &key("lock_ttl"),
                format!("{:?} is below the minimum of 1m", d.to_string()),
            );
        }
    }
    if let Some(d) = co.report_interval {
        if d.0 < 5 {
            k.bad(
                &key("report_interval"),
                format!("{:?} is below the minimum of 5s", d.to_string()),
            );
        }
    }
    if co.cert.is_some() != co.key.is_some() {
        k.bad(
            &key(if co.cert.is_some() { "key" } else { "cert" }),
            "a client certificate and its key go together",
        );
    }
    for (f, pem) in [("ca", &co.ca), ("cert", &co.cert), ("key", &co.key)] {
        if let Some(Err(e)) = pem.as_deref().map(|p| pem_field(f, p)) {
            k.bad(&key(f), e);
        }
    }
}

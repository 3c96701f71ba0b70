//! Checks of the person's workloads: containers (names, images, ports,
//! volumes, users) and VMs.

use super::*;
use crate::hostconfig::types::Pull;
use crate::hostconfig::values::ImageSource;

/// A path's parts, `.` and empty ones left out.
fn parts(path: &str) -> Vec<&str> {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect()
}

/// Volume sources neither nest nor touch keel's own folders: a container
/// can put a symlink anywhere in its volume, and keel-init makes and binds
/// a source by its path, so a source inside another volume could be
/// turned into any folder of the host. The same folder shared whole by
/// several containers is fine.
pub(super) fn volume_sources(k: &mut Checker, c: &HostConfig) {
    let mut seen: Vec<(Vec<&str>, String)> = Vec::new();
    for (name, ct) in &c.containers {
        for v in &ct.volumes {
            let src = v.source.as_str();
            if under_var(src).is_err() {
                continue;
            }
            let src_parts = parts(src);
            let overlap = |a: &[&str], b: &[&str]| a.starts_with(b) || b.starts_with(a);
            let at = ["containers", name.as_str(), "volumes"];
            if let Some(own) = crate::host::KEEL_STATE_DIRS
                .iter()
                .find(|d| overlap(&src_parts, &parts(d)))
            {
                k.bad(
                    &at,
                    format!(
                        "{src}: keel keeps its own state in {own}; pick a folder apart from it"
                    ),
                );
                continue;
            }
            if let Some((_, who)) = seen
                .iter()
                .find(|(other, _)| *other != src_parts && overlap(&src_parts, other))
            {
                k.bad(
                    &at,
                    format!(
                        "{src} nests with a volume of {who}: a container could turn the inner folder into a link to any folder of the host; use folders side by side"
                    ),
                );
            }
            seen.push((src_parts, format!("containers.{name}")));
        }
    }
}

pub(super) fn container(
    k: &mut Checker,
    name: &str,
    ct: &UserContainer,
    c: &HostConfig,
    ctx: &Context,
    ports: &mut BTreeMap<(u16, bool), String>,
) {
    let at = |last: &'static str| vec!["containers", name, last];
    // It runs as a service of that name (`keelctl logs NAME`).
    if !is_service_name(name, 32) {
        k.bad(
            &["containers", name],
            "a container name is 1-32 lowercase letters, digits and '-'",
        );
    }
    let image_service = ctx
        .services
        .as_ref()
        .is_some_and(|known| known.iter().any(|s| s == name));
    if c.services.contains_key(name) || image_service {
        k.bad(
            &["containers", name],
            format!("{name:?} is also a system service; give the container another name"),
        );
    }
    match &ct.image {
        ImageSource::Path(path) => {
            k.check(&at("image"), under_var(path));
            if ct.pull != Pull::Missing {
                k.bad(
                    &at("pull"),
                    "`pull` is for images from a registry; this image is a path on the host",
                );
            }
        }
        ImageSource::Registry(_) => {}
    }
    if ct.command.iter().any(String::is_empty) {
        k.bad(&at("command"), "an empty argument");
    }
    for e in ct.env.keys() {
        if !is_env_name(e) {
            k.bad(
                &["containers", name, "env", e],
                "not an environment variable name",
            );
        }
    }
    if ct.network == ContainerNetwork::Host && !ct.ports.is_empty() {
        k.bad(
            &at("ports"),
            "a container on the host's network listens on the host's ports itself; publish ports with network = \"private\"",
        );
    }
    if ct.network == ContainerNetwork::None && !ct.ports.is_empty() {
        k.bad(
            &at("ports"),
            "a container with network = \"none\" has nothing to publish ports on",
        );
    }
    if let Some(nets) = &ct.networks {
        if ct.network != ContainerNetwork::Private {
            k.bad(&at("networks"), "networks are for network = \"private\"");
        }
        if nets.is_empty() {
            k.bad(
                &at("networks"),
                "no network: use network = \"none\" for a container with none",
            );
        }
        // One interface per network: eth0 to eth7.
        if nets.len() > 8 {
            k.bad(&at("networks"), "at most 8 networks");
        }
        for (i, n) in nets.iter().enumerate() {
            if nets[..i].contains(n) {
                k.bad(&at("networks"), format!("{n:?} is listed twice"));
            } else if n != DEFAULT_NETWORK && !c.network.networks.contains_key(n) {
                k.bad(
                    &at("networks"),
                    format!("{n:?} is not a network: declare it as [network.networks.{n}], or use \"default\""),
                );
            }
        }
    }
    for p in &ct.ports {
        let who = format!("containers.{name}");
        if let Some(other) = ports.insert((p.host, p.udp), who) {
            k.bad(
                &at("ports"),
                format!(
                    "host port {}/{} is already published by {other}",
                    p.host,
                    if p.udp { "udp" } else { "tcp" }
                ),
            );
        }
    }
    for v in &ct.volumes {
        let dst = &v.target;
        let r = under_var(&v.source).and_then(|()| {
            if dst.starts_with('/') && !dst.split('/').any(|c| c == "..") {
                Ok(())
            } else {
                Err(format!("{dst:?} must be an absolute path in the container"))
            }
        });
        k.check(&at("volumes"), r);
    }
    limits(k, &["containers", name, "limits"], &ct.limits);
    if let Some(u) = &ct.user {
        user(k, name, u, ct.userns);
    }
}

/// `containers.NAME.user`: ids the container's user namespace (or, with
/// the host's, the host outside the containers' ranges) has.
fn user(k: &mut Checker, name: &str, u: &str, userns: crate::container::Share) {
    let at = |last: &'static str| vec!["containers", name, last];
    let ids = match u.split_once(':') {
        Some((a, b)) => a.parse::<u32>().ok().zip(b.parse::<u32>().ok()),
        None => u.parse::<u32>().ok().map(|a| (a, a)),
    };
    match ids {
        None => k.bad(&at("user"), format!("{u:?} is not uid or uid:gid")),
        Some((uid, gid))
            if userns == crate::container::Share::Private
                && uid.max(gid) >= crate::host::USERNS_IDS =>
        {
            k.bad(
                &at("user"),
                format!(
                    "{u:?}: the container's user namespace has ids 0 to {}; \
                     pick one of those, or set userns = \"host\"",
                    crate::host::USERNS_IDS - 1
                ),
            );
        }
        Some((uid, gid)) if uid.max(gid) >= crate::host::USERNS_FIRST => {
            k.bad(
                &at("user"),
                format!(
                    "{u:?}: ids from {} up are the ranges of user containers' namespaces",
                    crate::host::USERNS_FIRST
                ),
            );
        }
        Some(_) => {}
    }
}

/// A VM's `networks`: one network (it has one NIC), its tap on it.
pub(super) fn vm_network(k: &mut Checker, name: &str, vm: &Vm, c: &HostConfig) {
    let Some(nets) = &vm.networks else {
        return;
    };
    let at = ["vms", name, "networks"];
    if vm.network != crate::hostconfig::types::VmNetwork::Tap {
        k.bad(
            &at,
            "a VM joins a network through its tap: set network = \"tap\"",
        );
    }
    let [n] = nets.as_slice() else {
        k.bad(&at, "a VM has one network interface: name one network");
        return;
    };
    if n != DEFAULT_NETWORK && !c.network.networks.contains_key(n) {
        k.bad(
            &at,
            format!(
                "{n:?} is not a network: declare it as [network.networks.{n}], or use \"default\""
            ),
        );
    }
    // Containers find it by name in their hosts files.
    if c.containers.contains_key(name) {
        k.bad(
            &["vms", name],
            "a container has the same name: on a network, names are for one of them",
        );
    }
    if c.network
        .interfaces
        .contains_key(&crate::host::vm_tap(name))
    {
        k.bad(
            &at,
            format!(
                "its tap is a port of the network's bridge: drop [network.interfaces.{}]",
                crate::host::vm_tap(name)
            ),
        );
    }
}

pub(super) fn vm(k: &mut Checker, name: &str, vm: &Vm) {
    let at = |last: &'static str| vec!["vms", name, last];
    // It runs as the service vm-<name>.
    if !is_service_name(name, 29) {
        k.bad(
            &["vms", name],
            "a VM name is 1-29 lowercase letters, digits and '-'",
        );
    }
    if vm.network == crate::hostconfig::types::VmNetwork::Tap
        && name.len() > crate::host::VM_TAP_NAME_MAX
    {
        k.bad(
            &at("network"),
            format!(
                "a VM with a tap has a name of at most {} characters: its tap is vm-{name}, and interface names are at most 15",
                crate::host::VM_TAP_NAME_MAX
            ),
        );
    }
    k.check(&at("kernel"), under_var(&vm.kernel));
    for (key, p) in [("rootfs", &vm.rootfs), ("initramfs", &vm.initramfs)] {
        if let Some(p) = p {
            k.check(&at(key), under_var(p));
        }
    }
    if !(1..=32).contains(&vm.vcpus) {
        k.bad(&at("vcpus"), format!("{} is not 1..=32", vm.vcpus));
    }
    let memory = vm.memory.to_string();
    if vm.memory.0 < 32 << 20 {
        k.bad(
            &at("memory"),
            format!("{memory:?} is below the minimum of 32M"),
        );
    } else if vm.memory.0 > 3 << 30 {
        k.bad(
            &at("memory"),
            format!("{memory:?} is above the maximum of 3G"),
        );
    }
}

/// Mirrors of one registry, and the PEM bytes of one entry's `ca`: a pull
/// request carries a registry's and its mirrors' settings, and must stay
/// within one API request line (64 KiB).
pub const MAX_MIRRORS: usize = 4;
pub const MAX_CA_BYTES: usize = 8 << 10;

/// `[registries."HOST"]`: hosts as references name them, mirrors that are
/// hosts too, certificates that look like PEM, credentials in pairs. A
/// password is never quoted back.
pub(super) fn registries(k: &mut Checker, c: &HostConfig) {
    for (host, r) in &c.registries {
        let at = |last: &'static str| vec!["registries", host.as_str(), last];
        if matches!(host.as_str(), "index.docker.io" | "registry-1.docker.io") {
            k.bad(
                &["registries", host],
                "Docker Hub's images are named docker.io/…: configure it as [registries.\"docker.io\"]",
            );
        } else if !crate::reference::is_registry_host(host) {
            k.bad(
                &["registries", host],
                format!("{host:?} is not a registry host (name or address, and an optional :port)"),
            );
        }
        if r.mirrors.len() > MAX_MIRRORS {
            k.bad(
                &at("mirrors"),
                format!("{} mirrors; at most {MAX_MIRRORS}", r.mirrors.len()),
            );
        }
        let ca_bytes: usize = r.ca.iter().map(String::len).sum();
        if ca_bytes > MAX_CA_BYTES {
            k.bad(
                &at("ca"),
                format!("{ca_bytes} bytes of certificates; at most {MAX_CA_BYTES}"),
            );
        }
        let mut seen = Vec::new();
        for (i, m) in r.mirrors.iter().enumerate() {
            let n = i + 1;
            if m.contains("://") {
                k.bad(
                    &at("mirrors"),
                    format!("entry {n}: {m:?}: write the host without a scheme; a mirror on plain http gets its own [registries.\"HOST\"] with insecure = true"),
                );
            } else if !crate::reference::is_registry_host(m) {
                k.bad(
                    &at("mirrors"),
                    format!("entry {n}: {m:?} is not a registry host"),
                );
            } else if m == host {
                k.bad(
                    &at("mirrors"),
                    format!("entry {n}: {m:?} is this registry itself"),
                );
            } else if seen.contains(&m) {
                k.bad(&at("mirrors"), format!("entry {n}: {m:?} is listed twice"));
            }
            seen.push(m);
        }
        for (i, pem) in r.ca.iter().enumerate() {
            if let Err(e) = crate::pem::certificates(pem) {
                k.bad(&at("ca"), format!("entry {}: {e}", i + 1));
            }
        }
        match (&r.username, &r.password) {
            (Some(_), None) => k.bad(&at("password"), "a username needs a password"),
            (None, Some(_)) => k.bad(&at("username"), "a password needs a username"),
            _ => {}
        }
        if let Some(u) = &r.username {
            if u.is_empty() || u.contains(':') || u.chars().any(char::is_control) {
                k.bad(
                    &at("username"),
                    "a username is not empty and has no ':' or control characters",
                );
            }
        }
        if let Some(p) = &r.password {
            if p.0.is_empty() || p.0.chars().any(char::is_control) {
                k.bad(
                    &at("password"),
                    "a password is not empty and has no control characters",
                );
            }
        }
    }
}

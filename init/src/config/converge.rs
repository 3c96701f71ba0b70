//! Bringing the host to a config: the one path taken at boot (from
//! nothing) and by `keelctl config apply` (from the config in force). It
//! decides what to change from the old and the new config and the image's
//! definitions, asks [`Effects`] for each host effect, and returns the
//! services the new config runs; [`plan_services`] and
//! [`plan_containers`] then say which services to start, restart or stop,
//! so that only what changed is touched.

use std::collections::BTreeMap;

use keel_api::pull::hosts_for;
use keel_formats::container::ContainerDef;
use keel_formats::hostconfig::types::UserContainer;
use keel_formats::hostconfig::values::ImageSource;
use keel_formats::hostconfig::HostConfig;

use super::derive::{admin_warnings, apply_services, set_tz, tz_rule, DHCP_TEMPLATE};
use super::effects::Effects;

/// What the image gives every config.
#[derive(Debug, Clone, Copy)]
pub struct Image<'a> {
    /// The image's system services before any config, in start order.
    pub defs: &'a [(String, ContainerDef)],
    /// The image's zone table.
    pub zones: Option<&'a BTreeMap<String, String>>,
}

/// The host as the config in force left it.
#[derive(Debug, Clone, Copy)]
pub struct Before<'a> {
    pub config: &'a HostConfig,
    /// The interfaces it runs a DHCP client on.
    pub dhcp: &'a [String],
}

/// What converging did, and what the new config runs.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Converged {
    /// The system services the config runs, in start order.
    pub defs: Vec<(String, ContainerDef)>,
    /// The image's services the config turns off.
    pub disabled: Vec<String>,
    /// The interfaces to run a DHCP client on.
    pub dhcp: Vec<String>,
    /// The `TZ` rule every container gets.
    pub tz: String,
    /// The host-wide settings that changed (none at boot, where everything
    /// is new).
    pub changes: Vec<String>,
    /// What did not take.
    pub warnings: Vec<String>,
}

/// Bring the host from `before` (none: at boot) to `new`. A host effect is
/// asked for only when the part of the config it comes from changed (the
/// host name and sysctls: always), and every one of them at boot.
pub fn converge(
    before: Option<Before<'_>>,
    new: &HostConfig,
    image: Image<'_>,
    fx: &mut dyn Effects,
) -> Converged {
    let old = before.map(|b| b.config);
    let services: Vec<String> = image.defs.iter().map(|(n, _)| n.clone()).collect();
    let mut changes = Vec::new();
    let mut warnings = Vec::new();
    let changed = |what: &str, changes: &mut Vec<String>| {
        if old.is_some() {
            changes.push(what.to_string());
        }
    };
    let vms = differs(old, new, |c| &c.vms);
    let network = differs(old, new, |c| &c.network);
    // Taps first, so that the network config can address them.
    if vms {
        warnings.extend(fx.prepare_vms(new));
    }
    let dhcp = match before {
        Some(b) if !network && !vms => b.dhcp.to_vec(),
        _ => {
            if let Some(o) = old.filter(|_| network) {
                warnings.extend(fx.withdraw_network(o, new));
            }
            let applied = fx.apply_network(new);
            warnings.extend(applied.warnings);
            // The DHCP a config without interfaces gets is the image's
            // to give: an image without the client goes without.
            if !applied.dhcp.is_empty()
                && !new.network.interfaces.is_empty()
                && !services.iter().any(|s| s == DHCP_TEMPLATE)
            {
                warnings.push(format!(
                    "DHCP on {} wanted, but the image has no {DHCP_TEMPLATE} service",
                    applied.dhcp.join(", ")
                ));
            }
            if let Err(e) = fx.write_dns(new) {
                warnings.push(format!("resolv.conf: {e}"));
            }
            if network {
                changed("network", &mut changes);
            }
            applied.dhcp
        }
    };
    // Set on every apply, not only when they changed: writing them again
    // is harmless, and a sysctl that could not take before (a tap that
    // was not there yet) takes now. After the network and the taps, which
    // sysctls may name.
    // The image's name when the config sets none.
    let name = new.hostname.as_deref().unwrap_or("keel");
    if let Err(e) = fx.set_hostname(name) {
        warnings.push(format!("hostname {name}: {e}"));
    }
    if differs(old, new, |c| &c.hostname) {
        changed("hostname", &mut changes);
    }
    for (k, v) in &new.sysctl {
        if let Err(e) = fx.write_sysctl(k, &v.render()) {
            warnings.push(format!("sysctl {k}: {e}"));
        }
    }
    if differs(old, new, |c| &c.sysctl) {
        changed("sysctl", &mut changes);
    }
    if differs(old, new, |c| &c.update) {
        if let Err(e) = fx.write_update_policy(new) {
            warnings.push(format!("update policy: {e}"));
        }
        changed("update policy", &mut changes);
    }
    warnings.extend(admin_warnings(new, &services));
    if differs(old, new, |c| &c.admin) {
        if let Err(e) = fx.write_admin_files(new) {
            warnings.push(format!("admin files: {e}"));
        }
    }
    let mut defs = image.defs.to_vec();
    let disabled = apply_services(new, &mut defs, &dhcp);
    warnings.extend(crate::vms::apply(new, &mut defs));
    let tz = tz_rule(new, image.zones);
    for (_, d) in defs.iter_mut() {
        set_tz(d, &tz);
    }
    Converged {
        defs,
        disabled,
        dhcp,
        tz,
        changes,
        warnings,
    }
}

/// Whether the part of the config `part` picks is new: always at boot.
fn differs<T: PartialEq>(
    old: Option<&HostConfig>,
    new: &HostConfig,
    part: impl Fn(&HostConfig) -> &T,
) -> bool {
    old.is_none_or(|o| part(o) != part(new))
}

/// What to do to the service table so that it runs `wanted`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ServicePlan {
    /// In the table and not wanted: stopped, then dropped.
    pub stop: Vec<String>,
    /// New, or with a new definition (restarted if it runs), or being
    /// stopped and wanted again.
    pub start: Vec<(String, ContainerDef)>,
}

/// `table`: the services in the table that are not on their way out, with
/// their definitions; `users`: the person's containers, which come and go
/// with their images ([`plan_containers`]) and are left alone here.
pub fn plan_services<'a>(
    table: impl IntoIterator<Item = (&'a str, &'a ContainerDef)>,
    wanted: Vec<(String, ContainerDef)>,
    users: &[String],
) -> ServicePlan {
    let table: BTreeMap<&str, &ContainerDef> = table.into_iter().collect();
    let stop = table
        .keys()
        .filter(|n| !wanted.iter().any(|(w, _)| w == *n) && !users.iter().any(|u| u == *n))
        .map(|n| n.to_string())
        .collect();
    let start = wanted
        .into_iter()
        .filter(|(n, d)| table.get(n.as_str()) != Some(&d))
        .collect();
    ServicePlan { stop, start }
}

/// The person's containers to prepare (new, or changed) and to remove.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ContainerPlan {
    pub prepare: Vec<(String, UserContainer)>,
    pub remove: Vec<String>,
}

/// A container is prepared again when its entry changed, or when it pulls
/// from a registry whose `[registries]` settings (mirrors, credentials,
/// CAs) changed: a pull that failed for want of them is tried at once,
/// and one that worked finds its image in the store and changes nothing.
pub fn plan_containers(old: &HostConfig, new: &HostConfig) -> ContainerPlan {
    let hosts = |config: &HostConfig, uc: &UserContainer| match &uc.image {
        ImageSource::Registry(r) => hosts_for(r, &config.registries),
        ImageSource::Path(_) => Vec::new(),
    };
    ContainerPlan {
        prepare: new
            .containers
            .iter()
            .filter(|(n, uc)| {
                old.containers.get(*n) != Some(uc) || hosts(old, uc) != hosts(new, uc)
            })
            .map(|(n, uc)| (n.clone(), uc.clone()))
            .collect(),
        remove: old
            .containers
            .keys()
            .filter(|n| !new.containers.contains_key(*n))
            .cloned()
            .collect(),
    }
}

#[cfg(test)]
#[path = "converge_tests.rs"]
mod tests;

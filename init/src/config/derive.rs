//! What a host config means for the image's services and files: pure
//! functions from the config (and the image's definitions) to what runs
//! and what is written. The host effects are in [`super::effects`].

use std::collections::BTreeMap;

use keel_formats::container::ContainerDef;
use keel_formats::hostconfig::HostConfig;
use keel_formats::limits::Size;
use keel_formats::policy::{Policy, RebootPolicy};

/// The `TZ` every container gets: the rule of the config's zone in the
/// image's zone table (`UTC0` when the config names none or the table
/// lacks it).
pub fn tz_rule(c: &HostConfig, zones: Option<&BTreeMap<String, String>>) -> String {
    let zone = c.timezone.as_deref().unwrap_or("UTC");
    zones
        .and_then(|t| t.get(zone).cloned())
        .unwrap_or_else(|| "UTC0".to_string())
}

/// Give `def` the host's time zone, unless it sets its own `TZ`.
pub fn set_tz(def: &mut ContainerDef, rule: &str) {
    if !def.env.iter().any(|e| e.starts_with("TZ=")) {
        def.env.push(format!("TZ={rule}"));
    }
}

/// The image's admin shell service.
pub const ADMIN: &str = "admin";

/// The image's SSH server: a template run on the config's port.
pub const SSH_TEMPLATE: &str = "ssh";

/// The image's remote API server (keel-remote): a template run on the
/// config's port.
pub const REMOTE_TEMPLATE: &str = "remote";

/// What the config asks of the admin container that this image cannot do.
pub fn admin_warnings(c: &HostConfig, services: &[String]) -> Vec<String> {
    let mut w = Vec::new();
    if c.admin.enabled && c.admin.remote.enabled && !services.iter().any(|s| s == REMOTE_TEMPLATE) {
        w.push(format!(
            "admin.remote: the image has no {REMOTE_TEMPLATE} service (keel-remote); keelctl --host cannot reach this host"
        ));
    }
    if c.admin.enabled && c.admin.ssh.enabled && !services.iter().any(|s| s == SSH_TEMPLATE) {
        w.push(format!(
            "admin.ssh: the image has no {SSH_TEMPLATE} service (an SSH server); the admin shell is on the console only"
        ));
    }
    if c.admin.enabled && c.admin.console && !services.iter().any(|s| s == ADMIN) {
        w.push(format!("admin: the image has no {ADMIN} service"));
    }
    w
}

/// The resolvers the config names: `network.dns`, then each interface's.
pub fn dns_servers(c: &HostConfig) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let all = c
        .network
        .dns
        .iter()
        .chain(c.network.interfaces.values().flat_map(|i| i.dns.iter()));
    for d in all {
        let d = d.to_string();
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

/// A host config's `limits` (validated: sizes parse) over a definition's
/// resources.
pub fn apply_limits(
    l: &keel_formats::hostconfig::types::Limits,
    r: &mut keel_formats::limits::Resources,
) {
    if let Some(m) = l.memory {
        r.memory_max = Some(Size(m.0));
    }
    if let Some(cpus) = l.cpus {
        r.cpu_max_percent = Some((cpus * 100.0).round() as u32);
    }
    if let Some(p) = l.pids {
        r.pids_max = Some(p.into());
    }
}

/// The image's time sync: a template run with the config's NTP servers.
pub const NTP_TEMPLATE: &str = "ntp";

/// The image's DHCP client: a template for one service per interface.
pub const DHCP_TEMPLATE: &str = "dhcp";

/// Apply `services.<name>` to the image's definitions: disabled ones are
/// left out (and returned), env and limits are overridden. Then the DHCP
/// template becomes one `dhcp-<interface>` service per interface in
/// `dhcp` (none: it does not run at all).
pub fn apply_services(
    c: &HostConfig,
    defs: &mut Vec<(String, ContainerDef)>,
    dhcp: &[String],
) -> Vec<String> {
    let mut disabled = Vec::new();
    // The admin container is the console's shell: it runs when the config
    // wants the admin on the console.
    let admin_off = !c.admin.enabled || !c.admin.console;
    defs.retain(|(name, _)| {
        let off = c.services.get(name).and_then(|s| s.enabled) == Some(false)
            || (name == ADMIN && admin_off);
        if off {
            disabled.push(name.clone());
        }
        !off
    });
    for (name, def) in defs.iter_mut() {
        let Some(o) = c.services.get(name) else {
            continue;
        };
        for (k, v) in &o.env {
            def.env
                .retain(|e| e.split_once('=').map(|(n, _)| n) != Some(k.as_str()));
            def.env.push(format!("{k}={v}"));
        }
        apply_limits(&o.limits, &mut def.resources);
    }
    let templates = [
        (SSH_TEMPLATE, c.admin.ssh.enabled, c.admin.ssh.port),
        (REMOTE_TEMPLATE, c.admin.remote.enabled, c.admin.remote.port),
    ];
    for (template, enabled, port) in templates {
        if let Some(at) = defs.iter().position(|(n, _)| n == template) {
            if c.admin.enabled && enabled {
                let port = port.to_string();
                for arg in &mut defs[at].1.command {
                    *arg = arg.replace("{port}", &port);
                }
            } else {
                defs.remove(at);
            }
        }
    }
    if let Some(at) = defs.iter().position(|(n, _)| n == NTP_TEMPLATE) {
        if c.time.ntp.is_empty() {
            defs.remove(at);
        } else {
            let def = &mut defs[at].1;
            def.command = std::mem::take(&mut def.command)
                .into_iter()
                .flat_map(|arg| {
                    if arg == "{servers}" {
                        c.time
                            .ntp
                            .iter()
                            .flat_map(|s| ["-p".to_string(), s.clone()])
                            .collect()
                    } else {
                        vec![arg]
                    }
                })
                .collect();
        }
    }
    if let Some(at) = defs.iter().position(|(n, _)| n == DHCP_TEMPLATE) {
        let (_, template) = defs.remove(at);
        for ifname in dhcp {
            let mut d = template.clone();
            for arg in &mut d.command {
                *arg = arg.replace("{interface}", ifname);
            }
            d.description = format!("{} on {ifname}", d.description);
            d.root_of = Some(DHCP_TEMPLATE.to_string());
            // Service names are a-z, 0-9 and '-'; interface names are freer.
            let suffix: String = ifname
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '-'
                    }
                })
                .collect();
            defs.push((format!("{DHCP_TEMPLATE}-{suffix}"), d));
        }
    }
    disabled
}

/// The update policy in force: the image's (`image`, the text of
/// [`keel_formats::policy::POLICY_FILE`]) with the config's `[update]` over it.
pub fn update_policy(image: Option<&str>, c: &HostConfig) -> Policy {
    use keel_formats::hostconfig::types::Reboot;
    let mut p: Policy = image
        .and_then(|t| toml::from_str(t).ok())
        .unwrap_or_default();
    let u = &c.update;
    if let Some(r) = &u.repository {
        p.repository = Some(r.clone());
    }
    if let Some(ch) = &u.channel {
        p.channel = ch.clone();
    }
    if let Some(s) = u.check_interval {
        p.check_interval_s = s.0;
    }
    if let Some(s) = u.rollout_seed {
        p.rollout_seed = Some(s);
    }
    if let Some(r) = u.reboot {
        p.reboot = match r {
            Reboot::Auto => RebootPolicy::Auto,
            Reboot::Manual => RebootPolicy::Manual,
            Reboot::Window => RebootPolicy::Window,
        };
    }
    if u.window.is_some() {
        p.window = u.window;
    }
    p.trusted_keys.extend(u.trusted_keys.iter().cloned());
    if let Some(co) = &u.coordination {
        p.coordination = Some(keel_formats::policy::Coordination {
            etcd: co.etcd.clone(),
            group: co.group.clone(),
            max_rebooting: co.max_rebooting,
            // Host names are labels: lowercased, they are valid keys.
            host: c.hostname.as_ref().map(|h| h.to_ascii_lowercase()),
            lock_ttl_s: co.lock_ttl.map_or(LOCK_TTL_S, |s| s.0),
            report_interval_s: co.report_interval.map_or(REPORT_INTERVAL_S, |s| s.0),
            ca: co.ca.clone(),
            cert: co.cert.clone(),
            key: co.key.clone(),
            reboot_without_etcd: co.reboot_without_etcd,
        });
    }
    p
}

/// A reboot slot survives a host that went silent for this long: long
/// enough for a slow firmware, a reboot and the health gate.
const LOCK_TTL_S: u64 = 30 * 60;
/// Reports every 5 minutes: 12 renewals an hour per host in steady state.
const REPORT_INTERVAL_S: u64 = 300;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_disabled_or_overridden() {
        let def = |env: &str| {
            ContainerDef::parse(&format!(
                "command = [\"/bin/x\"]\nenv = [{env}]\n[rootfs]\n"
            ))
            .unwrap()
        };
        let mut defs = vec![
            ("admin".to_string(), def("\"A=1\", \"B=2\"")),
            ("web".to_string(), def("")),
        ];
        let c: HostConfig = toml::from_str(
            "[services.web]\nenabled = false\n[services.admin]\nenv = { B = \"3\" }\nlimits = { memory = \"64M\", cpus = 1.5, pids = 9 }\n",
        )
        .unwrap();
        assert_eq!(apply_services(&c, &mut defs, &[]), ["web"]);
        assert_eq!(defs.len(), 1);
        let admin = &defs[0].1;
        assert_eq!(admin.env, ["A=1", "B=3"]);
        assert_eq!(admin.resources.memory_max, Some(Size(64 << 20)));
        assert_eq!(admin.resources.cpu_max_percent, Some(150));
        assert_eq!(admin.resources.pids_max, Some(9));
    }

    #[test]
    fn the_ssh_service_runs_on_the_configured_port_only_when_enabled() {
        let template = ContainerDef::parse(
            "command = [\"/usr/sbin/dropbear\", \"-p\", \"{port}\"]\n[rootfs]\n",
        )
        .unwrap();
        let on: HostConfig = toml::from_str(
            "[admin.ssh]\nenabled = true\nport = 2222\nauthorized_keys = [\"ssh-ed25519 AAAA\"]\n",
        )
        .unwrap();
        let mut defs = vec![("ssh".to_string(), template.clone())];
        apply_services(&on, &mut defs, &[]);
        assert_eq!(defs[0].1.command, ["/usr/sbin/dropbear", "-p", "2222"]);
        assert!(admin_warnings(&on, &["ssh".into(), "admin".into()]).is_empty());
        let mut off = on.clone();
        off.admin.enabled = false;
        let mut defs = vec![("ssh".to_string(), template.clone())];
        apply_services(&off, &mut defs, &[]);
        assert!(defs.is_empty(), "the admin is off altogether");
        let mut defs = vec![("ssh".to_string(), template)];
        apply_services(&HostConfig::default(), &mut defs, &[]);
        assert!(defs.is_empty(), "SSH is off by default");
    }

    #[test]
    fn the_remote_api_runs_on_the_configured_port_only_when_enabled() {
        let template = ContainerDef::parse(
            "command = [\"/usr/bin/keel-remote\", \"--listen\", \"0.0.0.0:{port}\"]\n[rootfs]\n",
        )
        .unwrap();
        let on: HostConfig =
            toml::from_str("[admin.remote]\nenabled = true\nport = 7000\n").unwrap();
        let mut defs = vec![("remote".to_string(), template.clone())];
        apply_services(&on, &mut defs, &[]);
        assert_eq!(
            defs[0].1.command,
            ["/usr/bin/keel-remote", "--listen", "0.0.0.0:7000"]
        );
        assert!(admin_warnings(&on, &["remote".into(), "admin".into()]).is_empty());
        let w = admin_warnings(&on, &["admin".into()]);
        assert!(w[0].contains("no remote service"), "{w:?}");
        let mut off = on.clone();
        off.admin.enabled = false;
        let mut defs = vec![("remote".to_string(), template.clone())];
        apply_services(&off, &mut defs, &[]);
        assert!(defs.is_empty(), "the admin is off altogether");
        let mut defs = vec![("remote".to_string(), template)];
        apply_services(&HostConfig::default(), &mut defs, &[]);
        assert!(defs.is_empty(), "the remote API is off by default");
    }

    #[test]
    fn time_sync_runs_with_the_configured_servers_only() {
        let template = ContainerDef::parse(
            "command = [\"/usr/sbin/ntpd\", \"-n\", \"{servers}\"]\n[rootfs]\n",
        )
        .unwrap();
        let c: HostConfig =
            toml::from_str("[time]\nntp = [\"0.pool.ntp.org\", \"10.0.0.1\"]\n").unwrap();
        let mut defs = vec![("ntp".to_string(), template.clone())];
        apply_services(&c, &mut defs, &[]);
        assert_eq!(
            defs[0].1.command,
            [
                "/usr/sbin/ntpd",
                "-n",
                "-p",
                "0.pool.ntp.org",
                "-p",
                "10.0.0.1"
            ]
        );
        let mut defs = vec![("ntp".to_string(), template)];
        apply_services(&HostConfig::default(), &mut defs, &[]);
        assert!(defs.is_empty(), "no servers: no time sync");
    }

    #[test]
    fn the_admin_container_follows_the_admin_settings() {
        let def = ContainerDef::parse("command = [\"/bin/sh\"]\n[rootfs]\n").unwrap();
        let run = |text: &str| {
            let c: HostConfig = toml::from_str(text).unwrap();
            let mut defs = vec![("admin".to_string(), def.clone())];
            apply_services(&c, &mut defs, &[]);
            (defs.len(), admin_warnings(&c, &["admin".into()]))
        };
        assert_eq!(run(""), (1, vec![]));
        assert_eq!(run("[admin]\nenabled = false\n").0, 0);
        assert_eq!(run("[admin]\nconsole = false\n").0, 0);
        let (n, w) = run("[admin.ssh]\nenabled = true\nauthorized_keys = [\"ssh-ed25519 AAAA\"]\n");
        assert_eq!(n, 1);
        assert!(w[0].contains("no ssh service"), "{w:?}");
    }

    #[test]
    fn resolvers_come_from_the_host_and_its_interfaces_once_each() {
        let c: HostConfig = toml::from_str(
            "[network]\ndns = [\"1.1.1.1\"]\n[network.interfaces.eth0]\ndhcp = true\ndns = [\"9.9.9.9\", \"1.1.1.1\"]\n",
        )
        .unwrap();
        assert_eq!(dns_servers(&c), ["1.1.1.1", "9.9.9.9"]);
        assert!(dns_servers(&HostConfig::default()).is_empty());
    }

    #[test]
    fn update_settings_go_over_the_image_policy() {
        let image = "repository = \"http://a/\"\nchannel = \"stable\"\ncheck_interval_s = 3600\n";
        let c: HostConfig = toml::from_str(
            "[update]\nchannel = \"edge\"\ncheck_interval = \"30m\"\nreboot = \"window\"\nwindow = \"02:00-03:00\"\n\
             trusted_keys = [\"3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29\"]\n",
        )
        .unwrap();
        let p = update_policy(Some(image), &c);
        assert_eq!(
            p.repository.as_deref(),
            Some("http://a/"),
            "kept from the image"
        );
        assert_eq!((p.channel.as_str(), p.check_interval_s), ("edge", 1800));
        assert_eq!(p.reboot, RebootPolicy::Window);
        assert_eq!(p.trusted_keys.len(), 1);
        assert!(p.validate().is_ok());
        assert_eq!(
            update_policy(None, &HostConfig::default()),
            Policy::default()
        );
    }

    #[test]
    fn the_dhcp_template_becomes_one_service_per_interface() {
        let template = ContainerDef::parse(
            "command = [\"/sbin/udhcpc\", \"-i\", \"{interface}\"]\n[rootfs]\n",
        )
        .unwrap();
        let c = HostConfig::default();
        let mut defs = vec![("dhcp".to_string(), template.clone())];
        apply_services(&c, &mut defs, &["eth0".into(), "enp0s3.100".into()]);
        let names: Vec<&str> = defs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["dhcp-eth0", "dhcp-enp0s3-100"]);
        assert_eq!(defs[1].1.command, ["/sbin/udhcpc", "-i", "enp0s3.100"]);
        let mut defs = vec![("dhcp".to_string(), template)];
        apply_services(&c, &mut defs, &[]);
        assert!(
            defs.is_empty(),
            "no DHCP interface: the template does not run"
        );
    }
}

//! The host config at boot: the image's defaults merged with the person's
//! file on the ESP, checked against the image's services. A bad file never
//! stops the host: it boots on the last good config (kept under `/var`),
//! or on the image's defaults when there is none, and says why on the
//! console and in `keelctl status`.

use std::path::Path;

use keel_formats::container::ContainerDef;
use keel_formats::hostconfig::{load, Context, HostConfig, Source};
use keel_formats::limits::Size;
use keel_formats::policy::{Policy, RebootPolicy};

pub use keel_api::init::{ConfigSource, ConfigState};

/// Where the last config that passed every check is kept.
pub const LAST_GOOD: &str = "/var/lib/keel/config/host.toml";

/// The person's host config as keel-init reads it: on the mounted ESP.
fn esp_file() -> std::path::PathBuf {
    Path::new(keel_formats::bootentry::ESP_MOUNT).join(keel_formats::host::ON_ESP)
}

/// The texts a decision is made from.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub defaults: Option<String>,
    pub esp: Option<String>,
    pub last_good: Option<String>,
    pub services: Vec<String>,
    /// The image's zone table.
    pub zones: Option<Vec<String>>,
}

/// Pick the config to run on, and say why.
pub fn choose(i: &Inputs) -> (HostConfig, ConfigSource, Vec<String>) {
    let ctx = Context {
        services: Some(i.services.clone()),
        zones: i.zones.clone(),
    };
    let defaults = i.defaults.as_deref().map(|text| Source {
        name: Path::new(keel_formats::host::DEFAULTS),
        text,
    });
    let lines = |d: Vec<keel_formats::hostconfig::Diagnostic>| -> Vec<String> {
        d.iter().map(ToString::to_string).collect()
    };
    let mut errors = Vec::new();
    if let Some(text) = &i.esp {
        let name = esp_file();
        let user = Source { name: &name, text };
        match load(defaults, Some(user), &ctx) {
            Ok(c) => return (c, ConfigSource::Esp, errors),
            Err(d) => errors = lines(d),
        }
        if let Some(text) = &i.last_good {
            let good = Source {
                name: Path::new(LAST_GOOD),
                text,
            };
            if let Ok(c) = load(None, Some(good), &ctx) {
                return (c, ConfigSource::LastGood, errors);
            }
        }
    }
    match load(defaults, None, &ctx) {
        Ok(c) => (c, ConfigSource::Defaults, errors),
        Err(d) => {
            // An image whose own defaults are bad (keel build refuses
            // those): run with none at all.
            errors.extend(lines(d));
            (HostConfig::default(), ConfigSource::Defaults, errors)
        }
    }
}

/// Host effects of a config, behind a trait so the logic is tested
/// without root.
pub trait Host {
    fn set_hostname(&mut self, name: &str) -> Result<(), String>;
    fn write_sysctl(&mut self, key: &str, value: &str) -> Result<(), String>;
}

/// The real host.
#[derive(Debug, Default)]
pub struct RealHost;

impl Host for RealHost {
    fn set_hostname(&mut self, name: &str) -> Result<(), String> {
        nix::unistd::sethostname(name).map_err(|e| e.to_string())
    }

    fn write_sysctl(&mut self, key: &str, value: &str) -> Result<(), String> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Apply what is host-wide: the host name (the image's name when the
/// config sets none) and the sysctls. Returns what did not take.
pub fn apply_host(c: &HostConfig, host: &mut dyn Host) -> Vec<String> {
    let mut warnings = Vec::new();
    let name = c.hostname.as_deref().unwrap_or("keel");
    if let Err(e) = host.set_hostname(name) {
        warnings.push(format!("hostname {name}: {e}"));
    }
    for (k, v) in &c.sysctl {
        if let Err(e) = host.write_sysctl(k, &v.render()) {
            warnings.push(format!("sysctl {k}: {e}"));
        }
    }
    warnings
}

/// The image's zone table, if it has one.
pub fn zone_table() -> Option<std::collections::BTreeMap<String, String>> {
    std::fs::read_to_string(keel_formats::tz::ZONES)
        .ok()
        .map(|t| keel_formats::tz::parse(&t))
}

/// The `TZ` every container gets: the config's zone's rule (`UTC0` when
/// it names none).
pub fn tz_rule(c: &HostConfig) -> String {
    let zone = c.timezone.as_deref().unwrap_or("UTC");
    zone_table()
        .and_then(|mut t| t.remove(zone))
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

/// Where keel-init puts `admin.ssh.authorized_keys` for the ssh service.
pub const SSH_KEYS_DIR: &str = "/run/keel/ssh";

/// What the config asks of the admin container that this image cannot do.
pub fn admin_warnings(c: &HostConfig, services: &[String]) -> Vec<String> {
    let mut w = Vec::new();
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
        if !out.contains(d) {
            out.push(d.clone());
        }
    }
    out
}

/// Write `admin.ssh.authorized_keys` where the ssh service reads them
/// (the admin user's ~/.ssh): root's, readable by the admin group only
/// and writable by nobody else, as dropbear wants it.
pub fn write_ssh_keys(c: &HostConfig) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = Path::new(SSH_KEYS_DIR);
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let admin = |p: &Path| {
        std::os::unix::fs::chown(p, Some(0), Some(keel_formats::ADMIN_GID)).map_err(|e| err(p, e))
    };
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
        .map_err(|e| err(dir, e))?;
    admin(dir)?;
    let file = dir.join("authorized_keys");
    let keys: String = c
        .admin
        .ssh
        .authorized_keys
        .iter()
        .map(|k| format!("{}\n", k.trim()))
        .collect();
    std::fs::write(&file, keys).map_err(|e| err(&file, e))?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640))
        .map_err(|e| err(&file, e))?;
    admin(&file)
}

/// Write the host's resolv.conf when the config names resolvers (and
/// mark them as the host's, so a DHCP lease's do not replace them); else
/// leave it to the DHCP client, with an empty file until a lease comes.
/// Written in place: containers may bind the file itself.
pub fn write_dns(c: &HostConfig) -> Result<(), String> {
    use keel_formats::host::{DNS_DIR, DNS_STATIC_MARK, RESOLV_CONF};
    let err = |p: &'static str| move |e: std::io::Error| format!("{p}: {e}");
    std::fs::create_dir_all(DNS_DIR).map_err(err(DNS_DIR))?;
    let servers = dns_servers(c);
    if servers.is_empty() {
        let _ = std::fs::remove_file(DNS_STATIC_MARK);
        if !Path::new(RESOLV_CONF).exists() {
            std::fs::write(RESOLV_CONF, "").map_err(err(RESOLV_CONF))?;
        }
        return Ok(());
    }
    let text: String = servers
        .iter()
        .map(|s| format!("nameserver {s}\n"))
        .collect();
    std::fs::write(
        RESOLV_CONF,
        format!("# From the host config (network.dns).\n{text}"),
    )
    .map_err(err(RESOLV_CONF))?;
    std::fs::write(DNS_STATIC_MARK, "").map_err(err(DNS_STATIC_MARK))
}

/// A host config's `limits` (validated: sizes parse) over a definition's
/// resources.
pub fn apply_limits(
    l: &keel_formats::hostconfig::types::Limits,
    r: &mut keel_formats::limits::Resources,
) {
    if let Some(m) = l
        .memory
        .as_deref()
        .and_then(|m| keel_formats::hostconfig::units::parse_size(m).ok())
    {
        r.memory_max = Some(Size(m));
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
    if let Some(at) = defs.iter().position(|(n, _)| n == SSH_TEMPLATE) {
        if c.admin.enabled && c.admin.ssh.enabled {
            let port = c.admin.ssh.port.to_string();
            for arg in &mut defs[at].1.command {
                *arg = arg.replace("{port}", &port);
            }
        } else {
            defs.remove(at);
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
    if let Some(s) = u
        .check_interval
        .as_deref()
        .and_then(|d| keel_formats::hostconfig::units::parse_duration(d).ok())
    {
        p.check_interval_s = s;
    }
    if let Some(r) = u.reboot {
        p.reboot = match r {
            Reboot::Auto => RebootPolicy::Auto,
            Reboot::Manual => RebootPolicy::Manual,
            Reboot::Window => RebootPolicy::Window,
        };
    }
    if u.window.is_some() {
        p.window = u.window.clone();
    }
    p.trusted_keys.extend(u.trusted_keys.iter().cloned());
    p
}

/// Write the policy in force where keel-update reads it first.
pub fn write_update_policy(c: &HostConfig) -> Result<(), String> {
    use keel_formats::policy::{HOST_POLICY_FILE, POLICY_FILE};
    let image = std::fs::read_to_string(POLICY_FILE).ok();
    let p = update_policy(image.as_deref(), c);
    let text = toml::to_string(&p).map_err(|e| e.to_string())?;
    let tmp = format!("{HOST_POLICY_FILE}.tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("{tmp}: {e}"))?;
    std::fs::rename(&tmp, HOST_POLICY_FILE).map_err(|e| format!("{HOST_POLICY_FILE}: {e}"))
}

/// Make `text` the person's config on the ESP (mounted), so that the host
/// boots on it: written beside, synced, renamed over.
pub fn write_esp(text: &str) -> Result<(), String> {
    let path = esp_file();
    let tmp = path.with_extension("toml.new");
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        nix::unistd::sync();
        Ok(())
    };
    write().map_err(|e| format!("{}: {e}", path.display()))
}

/// Keep `c` as the last good config.
pub fn save_last_good(c: &HostConfig) -> Result<(), String> {
    let text = toml::to_string(c).map_err(|e| e.to_string())?;
    let path = Path::new(LAST_GOOD);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, format!("# The last host config that passed every check; keel-init boots on it when the ESP's is bad.\n{text}"))
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// A host config's text (called `name` in problems) as this host reads it:
/// over the image's defaults, against the image's `services`.
pub fn read(name: &str, text: &str, services: &[String]) -> Result<HostConfig, Vec<String>> {
    let defaults = std::fs::read_to_string(keel_formats::host::DEFAULTS).ok();
    let ctx = Context {
        services: Some(services.to_vec()),
        zones: zone_table().map(|t| t.into_keys().collect()),
    };
    let defaults = defaults.as_deref().map(|text| Source {
        name: Path::new(keel_formats::host::DEFAULTS),
        text,
    });
    load(
        defaults,
        Some(Source {
            name: Path::new(name),
            text,
        }),
        &ctx,
    )
    .map_err(|d| d.iter().map(ToString::to_string).collect())
}

/// What boot found: the config to run on and what to show of it.
#[derive(Debug)]
pub struct AtBoot {
    pub config: HostConfig,
    pub state: ConfigState,
    /// Every service of the image, disabled ones included.
    pub services: Vec<String>,
    /// Whether the ESP got mounted to read the file (the health gate and
    /// services binding /efi use that mount).
    pub esp: Option<Result<(), String>>,
    /// Interfaces that get their address by DHCP.
    pub dhcp: Vec<String>,
}

/// Read the host config at boot and apply its service settings to `defs`.
/// `esp`: the host booted from a keel disk, which has an ESP to read.
pub fn at_boot(esp: bool, defs: &mut Vec<(String, ContainerDef)>) -> AtBoot {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let esp_mount = esp.then(crate::pid1::bootgate::mount_esp);
    let esp_text = match &esp_mount {
        Some(Ok(())) => std::fs::read_to_string(esp_file()).ok(),
        _ => None,
    };
    let inputs = Inputs {
        defaults: read(keel_formats::host::DEFAULTS),
        esp: esp_text,
        last_good: read(LAST_GOOD),
        services: defs.iter().map(|(n, _)| n.clone()).collect(),
        zones: zone_table().map(|t| t.into_keys().collect()),
    };
    let (config, source, errors) = choose(&inputs);
    for e in &errors {
        crate::log(format!("error: host config: {e}"));
    }
    match source {
        ConfigSource::LastGood => crate::log(format!(
            "warning: the ESP's host config has {} problem(s); running on the last good config ({LAST_GOOD})",
            errors.len()
        )),
        ConfigSource::Defaults if !errors.is_empty() => crate::log(format!(
            "warning: the ESP's host config has {} problem(s); running on the image's defaults",
            errors.len()
        )),
        _ => {
            if let Err(e) = save_last_good(&config) {
                crate::log(format!("warning: keeping the host config: {e}"));
            }
        }
    }
    let services = inputs.services;
    // Taps first, so that the network config can address them.
    let vm_warnings = crate::vms::prepare(&config, &mut crate::vms::RealVmHost);
    let (dhcp, mut warnings) = apply_network(&config, &services);
    warnings.extend(vm_warnings);
    for w in admin_warnings(&config, &services) {
        crate::log(format!("warning: host config: {w}"));
        warnings.push(w);
    }
    let disabled = apply_services(&config, defs, &dhcp);
    for w in crate::vms::apply(&config, defs) {
        crate::log(format!("warning: host config: {w}"));
        warnings.push(w);
    }
    let tz = tz_rule(&config);
    for (_, d) in defs.iter_mut() {
        set_tz(d, &tz);
    }
    AtBoot {
        services,
        config,
        state: ConfigState {
            source,
            errors,
            disabled,
            warnings,
            trial_until_ms: None,
        },
        esp: esp_mount,
        dhcp,
    }
}

/// Remove the addresses and routes `old` set and `new` no longer lists
/// (config apply on a running host). Returns what did not take, each said
/// on the console.
pub fn withdraw_network(old: &HostConfig, new: &HostConfig) -> Vec<String> {
    let warnings = match crate::net::netlink::Netlink::open() {
        Ok(mut netlink) => crate::net::interfaces::withdraw(old, new, &mut netlink),
        Err(e) => vec![e],
    };
    for w in &warnings {
        crate::log(format!("warning: host config: {w}"));
    }
    warnings
}

/// Apply the config's interfaces over netlink (addresses and routes are
/// added or replaced; [`withdraw_network`] removes). Returns the interfaces to run DHCP
/// on and what did not take, each said on the console.
pub fn apply_network(config: &HostConfig, services: &[String]) -> (Vec<String>, Vec<String>) {
    if config.network.interfaces.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let applied = crate::net::netlink::Netlink::open()
        .map(|mut netlink| crate::net::interfaces::apply(config, &mut netlink))
        .unwrap_or_else(|e| crate::net::interfaces::Applied {
            warnings: vec![e],
            dhcp: Vec::new(),
        });
    let mut warnings = applied.warnings;
    if !applied.dhcp.is_empty() && !services.iter().any(|s| s == DHCP_TEMPLATE) {
        warnings.push(format!(
            "DHCP on {} wanted, but the image has no {DHCP_TEMPLATE} service",
            applied.dhcp.join(", ")
        ));
    }
    for w in &warnings {
        crate::log(format!("warning: host config: {w}"));
    }
    (applied.dhcp, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(esp: Option<&str>, last_good: Option<&str>) -> Inputs {
        Inputs {
            defaults: Some(
                "hostname = \"keel-default\"\n[sysctl]\n\"vm.swappiness\" = 60\n".into(),
            ),
            esp: esp.map(str::to_string),
            last_good: last_good.map(str::to_string),
            services: vec!["admin".into(), "web".into()],
            zones: None,
        }
    }

    #[test]
    fn a_good_file_wins_key_by_key() {
        let (c, src, errors) = choose(&inputs(Some("hostname = \"edge\"\n"), None));
        assert_eq!((src, errors.len()), (ConfigSource::Esp, 0));
        assert_eq!(c.hostname.as_deref(), Some("edge"));
        assert_eq!(c.sysctl["vm.swappiness"].render(), "60");
    }

    #[test]
    fn a_bad_file_falls_back_to_the_last_good_then_the_defaults() {
        let bad = "hostname = 7\n[services.nginx]\nenabled = false\n";
        let (c, src, errors) = choose(&inputs(Some(bad), Some("hostname = \"was-good\"\n")));
        assert_eq!(src, ConfigSource::LastGood);
        assert_eq!(c.hostname.as_deref(), Some("was-good"));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("/efi/keel/host.toml:1:12: `hostname`"),
            "{errors:?}"
        );
        assert!(errors[1].contains("no service \"nginx\""), "{errors:?}");

        let (c, src, errors) = choose(&inputs(Some(bad), None));
        assert_eq!(src, ConfigSource::Defaults);
        assert_eq!(c.hostname.as_deref(), Some("keel-default"));
        assert_eq!(errors.len(), 2);

        let (_, src, errors) = choose(&inputs(None, Some("hostname = \"old\"\n")));
        assert_eq!(
            (src, errors.len()),
            (ConfigSource::Defaults, 0),
            "no file: the defaults"
        );
    }

    #[derive(Default)]
    struct Fake {
        calls: Vec<String>,
    }

    impl Host for Fake {
        fn set_hostname(&mut self, name: &str) -> Result<(), String> {
            self.calls.push(format!("hostname {name}"));
            Ok(())
        }
        fn write_sysctl(&mut self, key: &str, value: &str) -> Result<(), String> {
            if key.starts_with("no.") {
                return Err("No such file or directory".into());
            }
            self.calls.push(format!("{key}={value}"));
            Ok(())
        }
    }

    #[test]
    fn host_settings_are_applied_and_failures_reported() {
        let c: HostConfig = toml::from_str(
            "hostname = \"edge\"\n[sysctl]\n\"net.ipv4.ip_forward\" = true\n\"no.such\" = 1\n",
        )
        .unwrap();
        let mut h = Fake::default();
        let warnings = apply_host(&c, &mut h);
        assert_eq!(h.calls, ["hostname edge", "net.ipv4.ip_forward=1"]);
        assert_eq!(warnings, ["sysctl no.such: No such file or directory"]);
        let mut h = Fake::default();
        apply_host(&HostConfig::default(), &mut h);
        assert_eq!(h.calls, ["hostname keel"]);
    }

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

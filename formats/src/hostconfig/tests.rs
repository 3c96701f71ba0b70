use std::path::Path;

use super::*;

fn src<'a>(name: &'a str, text: &'a str) -> Source<'a> {
    Source {
        name: Path::new(name),
        text,
    }
}

fn errors(text: &str) -> Vec<String> {
    let ctx = Context {
        services: Some(vec!["admin".into(), "web".into(), "update".into()]),
        zones: None,
    };
    match check(src("host.toml", text), &ctx) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(d) => d.iter().map(ToString::to_string).collect(),
    }
}

const FULL: &str = r#"
hostname = "edge-1"
timezone = "Europe/Berlin"

[sysctl]
"net.ipv4.ip_forward" = 1
"vm.swappiness" = 10

[network]
dns = ["1.1.1.1"]

[network.interfaces.eth0]
addresses = ["10.0.0.5/24", "fd00::5/64"]
gateway = "10.0.0.1"
routes = [{ to = "192.168.0.0/16", via = "10.0.0.254" }]
mtu = 1500

[network.interfaces.uplink]
mac = "52:54:00:12:34:56"
dhcp = true

[time]
ntp = ["pool.ntp.org", "192.0.2.1"]

[admin]
console = true
ssh = { enabled = true, authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE me@laptop"] }

[services.web]
enabled = false

[services.update]
env = { RUST_LOG = "debug" }
limits = { memory = "64M", cpus = 0.5, pids = 32 }

[containers.app]
image = "/var/lib/keel/images/app"
ports = ["8080:80", "53:53/udp"]
volumes = ["/var/lib/app:/data", "/var/lib/app-config:/etc/app:ro"]
restart = "on-failure"
limits = { memory = "256M" }

[vms.test]
kernel = "/var/lib/keel/vms/vmlinux"
rootfs = "/var/lib/keel/vms/root.ext4"
vcpus = 2
memory = "256M"
network = "tap"

[update]
repository = "https://updates.example.com/keel"
channel = "stable"
check_interval = "6h"
reboot = "window"
window = "02:00-04:00"
"#;

#[test]
fn a_full_config_is_accepted() {
    let ctx = Context {
        services: Some(vec!["admin".into(), "web".into(), "update".into()]),
        zones: Some(vec!["Europe/Berlin".into()]),
    };
    let c = check(src("host.toml", FULL), &ctx).unwrap_or_else(|d| panic!("{}", render(&d)));
    assert_eq!(c.hostname.as_deref(), Some("edge-1"));
    assert_eq!(c.sysctl["net.ipv4.ip_forward"].render(), "1");
    assert_eq!(c.services["web"].enabled, Some(false));
    assert_eq!(c.containers["app"].restart, types::Restart::OnFailure);
    assert_eq!(c.vms["test"].vcpus, 2);
    assert!(c.admin.ssh.enabled && c.admin.enabled);
}

#[test]
fn syntax_errors_are_placed() {
    let e = errors("hostname = \"a\"\nnetwork = [\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("host.toml:3:1: "), "{e:?}");
}

#[test]
fn unknown_keys_and_wrong_types_are_each_reported_in_place() {
    let e = errors(
        "hostname = \"a\"\ncolour = \"red\"\n\n[services.web]\nenabled = \"no\"\n\n\
         [services.admin]\nrestart = 1\n\n[admin]\nconsole = 3\n",
    );
    assert_eq!(
        e,
        [
            "host.toml:2:1: `colour`: unknown key; a host config has hostname, timezone, sysctl, network, time, admin, services, containers, vms, update, registries, images",
            "host.toml:5:11: `services.web.enabled`: invalid type: string \"no\", expected a boolean",
            "host.toml:8:1: `services.admin.restart`: unknown field `restart`, expected one of `enabled`, `env`, `limits`",
            "host.toml:11:11: `admin.console`: invalid type: integer `3`, expected a boolean",
        ]
    );
}

#[test]
fn bad_values_name_the_key_and_what_was_expected() {
    let e = errors(
        r#"hostname = "-edge"
timezone = "Mars/../Base"

[network.interfaces.eth0]
addresses = ["10.0.0.5/33", "10.0.0.6"]
gateway = "10.0.0.256"
mtu = 20

[services.update]
limits = { memory = "64", cpus = 0.0 }

[update]
check_interval = "10s"
trusted_keys = ["abc"]
"#,
    );
    // Values that do not read as their type first, each at its value (and
    // only the first bad one of an array); then the checks of the rest.
    let want = [
        "host.toml:5:13: `network.interfaces.eth0.addresses`: prefix \"33\" in \"10.0.0.5/33\" is not 0..=32",
        "host.toml:6:11: `network.interfaces.eth0.gateway`: \"10.0.0.256\" is not an IP address",
        "host.toml:10:21: `services.update.limits.memory`: \"64\" needs a unit (B, K, M, G, T, KiB.., KB..)",
        "host.toml:1:1: `hostname`: \"-edge\" is not a host name: 1-63 letters, digits and '-', not at either end",
        "host.toml:2:1: `timezone`: \"Mars/../Base\" is not a zone name like \"Europe/Berlin\" or \"UTC\"",
        "host.toml:7:1: `network.interfaces.eth0.mtu`: 20 is not 68..=65535",
        "host.toml:10:27: `services.update.limits.cpus`: 0 is not a number of CPUs above 0",
        "host.toml:14:1: `update.trusted_keys`: entry 1: not an ed25519 public key (64 hex digits, as `keel keygen` writes)",
        "host.toml:13:1: `update.check_interval`: \"10s\" is below the minimum of 1m",
    ];
    assert_eq!(e, want);
}

#[test]
fn conflicts_are_found_across_sections() {
    let e = errors(
        r#"[network.interfaces.eth0]
addresses = ["10.0.0.5/24"]
[network.interfaces.eth1]
addresses = ["10.0.0.5/16"]

[services.nginx]
enabled = true

[admin.ssh]
enabled = true
port = 2222
authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE"]

[containers.a]
image = "/var/a"
ports = ["8080:80", "2222:22"]
[containers.b]
image = "/opt/b"
ports = ["8080:8080"]
[containers.web]
image = "/var/web"
[containers.Shop_1]
image = "/var/shop"
[containers.edge]
image = "/var/edge"
network = "host"
ports = ["9000:9000"]
[containers.far]
image = "/var/far"
user = "70000"
[containers.hostids]
image = "/var/far"
user = "70000:70000"
userns = "host"
volumes = ["/var/lib/shared:/s", "/var/lib/keel-init:/k"]
[containers.high]
image = "/var/far"
user = "2000000"
userns = "host"
[containers.nest]
image = "/var/far"
volumes = ["/var/lib/shared:/s", "/var/lib/shared/./inner:/i", "/var/cache:/c"]

[vms.thirteen-long]
kernel = "/var/lib/vms/vmlinuz"
network = "tap"
"#,
    );
    for want in [
        "`network.interfaces.eth1.addresses`: 10.0.0.5 is also an address of interface \"eth0\"",
        "host.toml:6:11: `services.nginx`: the image has no service \"nginx\"; it has admin, web, update",
        "`containers.a.ports`: host port 2222/tcp is already published by admin.ssh",
        "`containers.b.ports`: host port 8080/tcp is already published by containers.a",
        "`containers.b.image`: \"/opt/b\" must be a path under /var",
        // It would run as a service of that name.
        "host.toml:20:13: `containers.web`: \"web\" is also a system service; give the container another name",
        "`containers.Shop_1`: a container name is 1-32 lowercase letters, digits and '-'",
        "`containers.edge.ports`: a container on the host's network listens on the host's ports itself",
        "`containers.far.user`: \"70000\": the container's user namespace has ids 0 to 65535; pick one of those, or set userns = \"host\"",
        "`vms.thirteen-long.network`: a VM with a tap has a name of at most 12 characters: its tap is vm-thirteen-long",
    ] {
        assert!(e.iter().any(|l| l.contains(want)), "{want}\nnot in:\n{}", e.join("\n"));
    }
    for want in [
        "`containers.hostids.volumes`: /var/lib/keel-init: keel keeps its own state in /var/lib/keel-init",
        "`containers.nest.volumes`: /var/lib/shared/./inner nests with a volume of containers.hostids",
        "`containers.nest.volumes`: /var/cache: keel keeps its own state in /var/cache/keel",
        "`containers.high.user`: \"2000000\": ids from 1048576 up are the ranges of user containers' namespaces",
    ] {
        assert!(e.iter().any(|l| l.contains(want)), "{want}\nnot in:\n{}", e.join("\n"));
    }
    assert!(
        !e.iter()
            .any(|l| l.contains("containers.hostids.user") || l.contains("/var/lib/shared nests")),
        "the host's ids have no such limit, and a folder shared whole is fine: {e:?}"
    );
}

#[test]
fn the_person_s_file_overrides_the_defaults_key_by_key() {
    let defaults = "hostname = \"keel\"\n[sysctl]\n\"vm.swappiness\" = 60\n[update]\nchannel = \"stable\"\ncheck_interval = \"1h\"\n";
    let user = "[sysctl]\n\"net.ipv4.ip_forward\" = 1\n[update]\nchannel = \"beta\"\n";
    let c = load(
        Some(src("/usr/lib/keel/host.toml", defaults)),
        Some(src("/efi/keel/host.toml", user)),
        &Context::default(),
    )
    .unwrap();
    assert_eq!(c.hostname.as_deref(), Some("keel"));
    assert_eq!(c.sysctl.len(), 2, "tables merge");
    assert_eq!(c.update.channel.as_deref(), Some("beta"));
    assert_eq!(c.update.check_interval, Some(super::values::Seconds(3600)));

    // A problem is placed in the file that set the value.
    let bad_default = "[update]\ncheck_interval = \"5s\"\n";
    let e = load(
        Some(src("defaults.toml", bad_default)),
        Some(src("user.toml", "hostname = \"h\"\n")),
        &Context::default(),
    )
    .unwrap_err();
    assert_eq!(
        render(&e),
        "defaults.toml:2:1: `update.check_interval`: \"5s\" is below the minimum of 1m"
    );
    // Both files' shape problems are reported together.
    let e = load(
        Some(src("defaults.toml", "nope = 1\n")),
        Some(src("user.toml", "hostname = 5\n")),
        &Context::default(),
    )
    .unwrap_err();
    assert_eq!(e.len(), 2, "{}", render(&e));
}

#[test]
fn ssh_without_keys_and_a_window_without_window_reboot_are_refused() {
    let e = errors("[admin.ssh]\nenabled = true\n[update]\nwindow = \"01:00-02:00\"\n");
    assert_eq!(
        e,
        [
            "host.toml:1:8: `admin.ssh.authorized_keys`: SSH is enabled but no key may log in; list at least one public key",
            "host.toml:4:1: `update.window`: a window only matters with `reboot = \"window\"`",
        ]
    );
}

/// The fields a struct has, as serde says when it refuses an unknown one.
fn fields_of<T: serde::de::DeserializeOwned>() -> Vec<String> {
    let e = toml::from_str::<T>("zz_not_a_field = 1\n")
        .map(|_| ())
        .unwrap_err()
        .message()
        .to_string();
    let list = e
        .split("expected one of ")
        .nth(1)
        .or_else(|| e.split("expected ").nth(1))
        .unwrap_or_else(|| panic!("{e}"));
    list.replace(" or ", ",")
        .split([',', '\n'])
        .map(|f| {
            f.trim()
                .trim_start_matches("or ")
                .trim_matches('`')
                .to_string()
        })
        .filter(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect()
}

#[test]
fn the_reference_names_every_key_and_its_example_is_valid() {
    use types::*;
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/host-config.md"),
    )
    .unwrap();
    let groups: Vec<(&str, Vec<String>)> = vec![
        ("", fields_of::<HostConfig>()),
        ("network.", fields_of::<Network>()),
        ("network.interfaces.NAME.", fields_of::<Interface>()),
        ("network.containers.", fields_of::<ContainerSubnets>()),
        ("network.networks.NAME.", fields_of::<NamedNetwork>()),
        ("network.firewall.", fields_of::<Firewall>()),
        ("network.firewall.allow.", fields_of::<Allow>()),
        ("admin.", fields_of::<Admin>()),
        ("admin.ssh.", fields_of::<Ssh>()),
        ("time.", fields_of::<Time>()),
        ("services.NAME.", fields_of::<ServiceOverride>()),
        ("containers.NAME.", fields_of::<UserContainer>()),
        ("limits.", fields_of::<Limits>()),
        ("vms.NAME.", fields_of::<Vm>()),
        ("update.", fields_of::<Update>()),
        ("registries.HOST.", fields_of::<Registry>()),
        ("images.", fields_of::<Images>()),
    ];
    let mut missing = Vec::new();
    for (prefix, fields) in &groups {
        assert!(!fields.is_empty(), "{prefix}");
        for f in fields {
            let key = format!("| `{prefix}{f}`");
            let table = format!("| `{prefix}{f}.");
            if !doc.contains(&key) && !doc.contains(&table) {
                missing.push(format!("{prefix}{f}"));
            }
        }
    }
    assert!(missing.is_empty(), "docs/host-config.md lacks {missing:?}");
    assert_eq!(groups[0].1.len(), load::sections().len());

    let example = doc
        .split("```toml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .unwrap();
    let ctx = Context {
        services: Some(vec!["admin".into(), "web".into(), "update".into()]),
        zones: None,
    };
    check(src("docs/host-config.md", example), &ctx).unwrap_or_else(|d| panic!("{}", render(&d)));
}

#[test]
fn a_zone_the_image_does_not_know_is_an_error() {
    let ctx = Context {
        services: None,
        zones: Some(vec!["Europe/Berlin".into()]),
    };
    let e = check(src("host.toml", "timezone = \"Europe/Berlinn\"\n"), &ctx).unwrap_err();
    assert_eq!(
        render(&e).trim(),
        "host.toml:1:1: `timezone`: no time zone \"Europe/Berlinn\" in the zone database"
    );
    assert!(check(src("host.toml", "timezone = \"UTC\"\n"), &ctx).is_ok());
}

#[test]
fn registry_images_and_registries_are_checked_at_their_keys() {
    let e = errors(concat!(
        "[containers.a]\nimage = \"Team/App:1\"\n\n",
        "[containers.b]\nimage = \"/var/b\"\npull = \"always\"\n\n",
        "[containers.c]\nimage = \"r.example/c:1\"\npull = \"sometimes\"\n\n",
        "[registries.\"index.docker.io\"]\n\n",
        "[registries.\"bad host!\"]\n\n",
        "[registries.\"r.example\"]\nmirrors = [\"https://m.example\", \"r.example\", \"m2\", \"m2\"]\n",
        "ca = [\"not a pem\"]\nusername = \"a:b\"\npassword = \"hunter2\\u0001x\"\n\n",
        "[registries.\"only.user\"]\nusername = \"u\"\n",
    ));
    let all = e.join("\n");
    for want in [
        "`containers.a.image`",
        "`containers.b.pull`: `pull` is for images from a registry",
        "`containers.c.pull`",
        "`registries.\"index.docker.io\"`: Docker Hub's images are named docker.io",
        "`registries.\"bad host!\"`",
        "entry 1: \"https://m.example\": write the host without a scheme",
        "entry 2: \"r.example\" is this registry itself",
        "entry 4: \"m2\" is listed twice",
        "`registries.\"r.example\".ca`: entry 1: not PEM text with a certificate",
        "`registries.\"r.example\".username`",
        "`registries.\"r.example\".password`: a password is not empty",
        "`registries.\"only.user\".password`: a username needs a password",
    ] {
        assert!(all.contains(want), "no {want:?} in:\n{all}");
    }
    assert!(
        !all.contains("hunter2"),
        "a password is quoted back:\n{all}"
    );
}

#[test]
fn a_registry_image_reads_back_as_it_was() {
    let text = "[containers.a]\nimage = \"nginx\"\npull = \"always\"\n\n[registries.\"docker.io\"]\nmirrors = [\"m.example:5000\"]\npassword = \"p\"\nusername = \"u\"\n";
    let ctx = Context::default();
    let c = check(src("host.toml", text), &ctx).unwrap_or_else(|d| panic!("{}", render(&d)));
    assert_eq!(
        c.containers["a"].image.to_string(),
        "docker.io/library/nginx:latest"
    );
    assert_eq!(c.containers["a"].pull, types::Pull::Always);
    let again: HostConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
    assert_eq!(again, c);
}

#[test]
fn a_password_of_the_wrong_type_is_not_quoted_back() {
    for value in [
        "12345678",
        "true",
        "1.5",
        "[\"x9y8z7\"]",
        "{ a = \"x9y8z7\" }",
    ] {
        let e = errors(&format!(
            "[registries.\"r.example\"]\nusername = \"u\"\npassword = {value}\n"
        ))
        .join("\n");
        assert!(e.contains("password"), "{e}");
        assert!(!e.contains("12345678") && !e.contains("x9y8z7"), "{e}");
    }
}

#[test]
fn container_networks_and_the_firewall_are_checked_where_they_are_written() {
    let e = errors(
        "[network.interfaces.eth0]\naddresses = [\"10.88.1.5/24\"]\n\n\
         [network.containers]\nsubnet = \"10.88.0.0/16\"\nsubnet6 = \"fd88::1/64\"\n\n\
         [network.networks.Bad_Name]\n\n\
         [network.networks.default]\n\n\
         [network.networks.twin]\nsubnet = \"10.88.3.0/24\"\n\n\
         [network.firewall]\ncontainers = [\"9-8\"]\n\n\
         [[network.firewall.allow]]\nports = [\"22\"]\nfrom = [\"192.0.2.1/24\"]\n\n\
         [containers.app]\nimage = \"/var/lib/images/app\"\nnetworks = [\"nowhere\", \"twin\", \"twin\"]\n\n\
         [containers.sealed]\nimage = \"/var/lib/images/app\"\nnetwork = \"none\"\nports = [\"80:80\"]\n",
    );
    let all = e.join("\n");
    for want in [
        "`network.containers.subnet`: 10.88.0.0/16 overlaps 10.88.1.5/24 of interface \"eth0\"",
        "`network.containers.subnet6`: fd88::1/64 has bits set past its prefix",
        "`network.networks.Bad_Name`: a network name is",
        "`network.networks.default`: `default` is the network of [network.containers]",
        "`network.networks.twin`: its subnet 10.88.3.0/24 overlaps",
        "\"9-8\": the range ends before it starts",
        "`network.firewall.allow`: with inbound = \"accept\" every port is open already",
        "`network.firewall.allow.0.from`: 192.0.2.1/24 has bits set past its prefix",
        "`containers.app.networks`",
        "`containers.sealed.ports`: a container with network = \"none\" has nothing to publish ports on",
    ] {
        assert!(all.contains(want), "no {want:?} in:\n{all}");
    }
}

#[test]
fn coordination_names_each_bad_field() {
    let e = errors(
        r#"[update.coordination]
etcd = ["10.0.0.5:2379", "https://etcd:2379"]
group = "Web Servers"
max_rebooting = 0
lock_ttl = "30s"
cert = "-----BEGIN CERTIFICATE-----"
ca = "not pem"
"#,
    );
    let joined = e.join("\n");
    for want in [
        "`update.coordination.etcd`: \"10.0.0.5:2379\" is not an http:// or https:// URL",
        "`update.coordination.group`: \"Web Servers\" is not a group name",
        "`update.coordination.max_rebooting`: 0 would never reboot",
        "`update.coordination.lock_ttl`: \"30s\" is below the minimum of 1m",
        "`update.coordination.key`: a client certificate and its key go together",
        "`update.coordination.ca`: not PEM text with a certificate",
        "`update.coordination.cert`: not PEM text with certificates: a block has no -----END CERTIFICATE----- line",
    ] {
        assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
    }
    assert_eq!(e.len(), 7, "{joined}");
    let ctx = Context {
        services: None,
        zones: None,
    };
    let c = check(
        src(
            "host.toml",
            "[update.coordination]\netcd = [\"https://10.0.0.5:2379\"]\n",
        ),
        &ctx,
    )
    .unwrap();
    let co = c.update.coordination.unwrap();
    assert_eq!((co.group.as_str(), co.max_rebooting), ("default", 1));
}

#[test]
fn remote_api_names_each_bad_field() {
    let e = errors(
        r#"[admin.ssh]
enabled = true
port = 50000
authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"]

[admin.remote]
enabled = true
cert = "-----BEGIN CERTIFICATE-----"
key = "-----BEGIN CERTIFICATE-----"
"#,
    );
    let joined = e.join("\n");
    for want in [
        "`admin.remote.port`: port 50000 is admin.ssh's too",
        "`admin.remote.ca`: the remote API is enabled: it needs ca, cert and key",
        "`admin.remote.key`: not PEM text with a private key",
    ] {
        assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
    }
    assert_eq!(e.len(), 4, "{joined}");
    assert!(
        joined.contains("`admin.remote.cert`: not PEM text with certificates: a block has no -----END CERTIFICATE----- line"),
        "{joined}"
    );
    let e = errors("[admin.remote]\nport = 0\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("`admin.remote.port`: 0 is not a port"),
        "{e:?}"
    );
    // Off by default, and nothing is needed while it is off.
    let ctx = Context {
        services: None,
        zones: None,
    };
    let c = check(src("host.toml", "[admin.remote]\nport = 7000\n"), &ctx).unwrap();
    assert!(!c.admin.remote.enabled);
    assert_eq!(c.admin.remote.port, 7000);
}

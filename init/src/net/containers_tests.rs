use super::*;

fn config(text: &str) -> HostConfig {
    toml::from_str(text).unwrap()
}

const TWO_NETWORKS: &str = r#"
[network.networks.backend]
subnet = "10.90.0.0/24"
subnet6 = "none"

[containers.web]
image = "/var/lib/images/web"
ports = ["8080:80", "5353:53/udp"]

[containers.api]
image = "/var/lib/images/api"
networks = ["default", "backend"]

[containers.db]
image = "/var/lib/images/db"
networks = ["backend"]

[containers.tool]
image = "/var/lib/images/tool"
network = "host"

[containers.sealed]
image = "/var/lib/images/sealed"
network = "none"
"#;

#[test]
fn containers_get_addresses_and_gateways_on_their_networks() {
    let c = config(TWO_NETWORKS);
    let l = layout(&c, &mut Given::default());
    assert_eq!(
        l.networks.keys().collect::<Vec<_>>(),
        ["backend", "default"]
    );
    let api = &l.interfaces["api"];
    assert_eq!(api.len(), 2);
    assert_eq!(api[0].bridge, "keel0");
    assert_eq!(
        api[0].addresses,
        [
            ("10.88.0.2".parse().unwrap(), 16),
            ("fd88::2".parse().unwrap(), 64)
        ]
    );
    assert_eq!(
        api[0].gateways,
        [
            "10.88.0.1".parse::<IpAddr>().unwrap(),
            "fd88::1".parse().unwrap()
        ]
    );
    assert_eq!(api[1].bridge, "kn-backend");
    assert_eq!(api[1].addresses, [("10.90.0.2".parse().unwrap(), 24)]);
    assert!(
        api[1].gateways.is_empty(),
        "default routes through eth0 only"
    );
    assert_eq!(
        l.interfaces["db"][0].addresses[0].0.to_string(),
        "10.90.0.3"
    );
    assert_eq!(
        l.interfaces["web"][0].addresses[0].0.to_string(),
        "10.88.0.3"
    );
    assert!(!l.interfaces.contains_key("sealed"), "loopback only");
    assert!(!l.interfaces.contains_key("tool"), "the host's network");
}

#[test]
fn published_ports_are_dnat_to_both_families_of_the_first_interface() {
    let l = layout(&config(TWO_NETWORKS), &mut Given::default());
    let to: Vec<String> = l
        .ruleset
        .dnat
        .iter()
        .map(|d| format!("{:?} {} -> {} {}", d.proto, d.host_port, d.to, d.port))
        .collect();
    assert_eq!(
        to,
        [
            "Tcp 8080 -> 10.88.0.3 80",
            "Tcp 8080 -> fd88::3 80",
            "Udp 5353 -> 10.88.0.3 53",
            "Udp 5353 -> fd88::3 53"
        ]
    );
    let bridges: Vec<&str> = l.ruleset.bridges.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(bridges, ["kn-backend", "keel0"]);
}

#[test]
fn hosts_files_name_the_containers_of_shared_networks_only() {
    let l = layout(&config(TWO_NETWORKS), &mut Given::default());
    let db = &l.hosts["db"];
    assert!(db.contains("10.90.0.3\tdb\n"), "{db}");
    assert!(db.contains("10.90.0.2\tapi\n"), "{db}");
    assert!(!db.contains("web"), "web is on another network: {db}");
    let web = &l.hosts["web"];
    assert!(
        web.contains("10.88.0.2\tapi\n") && !web.contains("db"),
        "{web}"
    );
    assert!(!l.hosts.contains_key("sealed"), "no network, no names");
}

#[test]
fn addresses_stay_with_their_containers_across_changes() {
    let mut given = Given::default();
    let before = layout(&config(TWO_NETWORKS), &mut given);
    // api leaves; a new container comes last in name order, and one
    // comes first: fresh, name order would give them other addresses.
    let changed = TWO_NETWORKS.replace("[containers.api]", "[containers.zzz]")
        + "[containers.aaa]\nimage = \"/var/lib/images/a\"\n[containers.aab]\nimage = \"/var/lib/images/a\"\n";
    let after = layout(&config(&changed), &mut given);
    assert_eq!(after.interfaces["web"], before.interfaces["web"]);
    assert_eq!(after.interfaces["db"], before.interfaces["db"]);
    // The first to come takes the address api left; the other the next.
    assert_eq!(
        after.interfaces["aaa"][0].addresses,
        before.interfaces["api"][0].addresses
    );
    assert_eq!(
        after.interfaces["aab"][0].addresses[0].0.to_string(),
        "10.88.0.4"
    );
    assert_eq!(
        after.interfaces["zzz"][0].addresses[0].0.to_string(),
        "10.88.0.5"
    );
    let fresh = layout(&config(&changed), &mut Given::default());
    assert_ne!(
        fresh.interfaces["web"], after.interfaces["web"],
        "the test means something"
    );
}

#[test]
fn no_private_container_no_network() {
    let l = layout(
        &config("[containers.t]\nimage = \"/var/i\"\nnetwork = \"host\"\n"),
        &mut Given::default(),
    );
    assert!(l.networks.is_empty() && l.ruleset.bridges.is_empty());
}

#[test]
fn a_full_subnet_leaves_the_last_container_without_an_address() {
    let mut text =
        String::from("[network.containers]\nsubnet = \"10.88.0.0/30\"\nsubnet6 = \"none\"\n");
    for n in ["a", "b"] {
        text.push_str(&format!("[containers.{n}]\nimage = \"/var/i\"\n"));
    }
    let l = layout(&config(&text), &mut Given::default());
    assert_eq!(l.interfaces["a"][0].addresses[0].0.to_string(), "10.88.0.2");
    assert!(l.interfaces["b"].is_empty());
}

#[derive(Default)]
struct Record(Vec<String>, bool);

impl NetHost for Record {
    fn bridge(&mut self, name: &str, addresses: &[(IpAddr, u8)]) -> Result<(), String> {
        let a: Vec<String> = addresses.iter().map(|(a, p)| format!("{a}/{p}")).collect();
        self.0.push(format!("bridge {name} {}", a.join(" ")));
        Ok(())
    }
    fn remove_bridge(&mut self, name: &str) -> Result<(), String> {
        self.0.push(format!("remove {name}"));
        Ok(())
    }
    fn attach(&mut self, tap: &str, bridge: Option<&str>) -> Result<(), String> {
        self.0.push(format!("attach {tap} {bridge:?}"));
        Ok(())
    }
    fn ruleset(&mut self, r: &nft::Ruleset) -> Result<(), String> {
        self.0.push(format!(
            "rules {} bridges {} dnat",
            r.bridges.len(),
            r.dnat.len()
        ));
        match self.1 {
            true => Err("refused".into()),
            false => Ok(()),
        }
    }
    fn forwarding(&mut self, on: bool) -> Result<(), String> {
        self.0.push(format!("forwarding {on}"));
        Ok(())
    }
    fn hosts_file(&mut self, container: &str, _: &str) -> Result<(), String> {
        self.0.push(format!("hosts {container}"));
        Ok(())
    }
    fn remove_hosts_file(&mut self, container: &str) {
        self.0.push(format!("no hosts {container}"));
    }
}

#[test]
fn realize_makes_bridges_before_rules_and_removes_what_is_gone() {
    let mut nets = Networks::default();
    let mut host = Record::default();
    let l = layout(&config(TWO_NETWORKS), &mut nets.given);
    assert!(nets.realize(l, &mut host).is_empty());
    assert_eq!(
        host.0[..4],
        [
            "forwarding true",
            "bridge kn-backend 10.90.0.1/24",
            "bridge keel0 10.88.0.1/16 fd88::1/64",
            "rules 2 bridges 4 dnat"
        ]
    );
    // The same again changes nothing.
    host.0.clear();
    let l = layout(&config(TWO_NETWORKS), &mut nets.given);
    assert!(nets.realize(l, &mut host).is_empty());
    assert!(host.0.is_empty(), "{:?}", host.0);
    // Only `tool` and `sealed` left: the bridges, rules and hosts go.
    let only = "[containers.tool]\nimage = \"/var/i\"\nnetwork = \"host\"\n";
    let l = layout(&config(only), &mut nets.given);
    nets.realize(l, &mut host);
    assert_eq!(
        host.0,
        [
            "forwarding false",
            "rules 0 bridges 0 dnat",
            "remove kn-backend",
            "remove keel0",
            "no hosts api",
            "no hosts db",
            "no hosts web"
        ]
    );
}

#[test]
fn the_firewall_becomes_rules_one_protocol_and_source_each() {
    let c = config(
        "[network.firewall]\ninbound = \"drop\"\ncontainers = [\"53\"]\n\
         [[network.firewall.allow]]\nports = [\"22/tcp\", \"8000-8100/udp\"]\n\
         from = [\"192.0.2.0/24\", \"2001:db8::/32\"]\n",
    );
    let r = layout(&c, &mut Given::default()).ruleset;
    let reach: Vec<String> = r
        .containers_may_reach
        .iter()
        .map(|h| format!("{:?} {}-{}", h.proto, h.first, h.last))
        .collect();
    assert_eq!(reach, ["Tcp 53-53", "Udp 53-53"]);
    let allowed: Vec<String> = r
        .inbound
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{:?} {}-{} {:?}",
                a.ports.proto, a.ports.first, a.ports.last, a.from
            )
        })
        .collect();
    assert_eq!(allowed.len(), 4, "{allowed:?}");
    assert_eq!(allowed[0], "Tcp 22-22 Some((192.0.2.0, 24))");
    assert_eq!(allowed[3], "Udp 8000-8100 Some((2001:db8::, 32))");
    // The default: no rules at all, no table.
    assert!(layout(&config(""), &mut Given::default())
        .ruleset
        .is_empty());
}

#[test]
fn what_failed_is_tried_again_and_taps_follow_their_vm() {
    let mut nets = Networks::default();
    let mut host = Record(Vec::new(), true);
    let vm = "[vms.web]\nkernel = \"/var/k\"\nnetwork = \"tap\"\nnetworks = [\"default\"]\n";
    let l = layout(&config(vm), &mut nets.given);
    assert_eq!(l.taps["vm-web"], "keel0");
    assert!(
        l.networks.contains_key("default"),
        "a VM alone needs its bridge"
    );
    assert_eq!(nets.realize(l, &mut host), ["refused"]);
    assert!(
        host.0
            .contains(&"attach vm-web Some(\"keel0\")".to_string()),
        "{:?}",
        host.0
    );
    // The rules were refused: the same layout tries them again, only.
    host.0.clear();
    host.1 = false;
    let l = layout(&config(vm), &mut nets.given);
    assert!(nets.realize(l, &mut host).is_empty());
    assert_eq!(host.0, ["rules 1 bridges 0 dnat"]);
    // The VM goes: its tap leaves the bridge.
    host.0.clear();
    let l = layout(&config(""), &mut nets.given);
    nets.realize(l, &mut host);
    assert!(
        host.0.contains(&"attach vm-web None".to_string()),
        "{:?}",
        host.0
    );
}

#[test]
fn a_config_that_routes_itself_keeps_forwarding() {
    let routes = "sysctl = { \"net.ipv4.ip_forward\" = 1 }\n[containers.a]\nimage = \"/var/i\"\n";
    let mut nets = Networks::default();
    let mut host = Record::default();
    let l = layout(&config(routes), &mut nets.given);
    assert!(l.ruleset.route_others);
    nets.realize(l, &mut host);
    host.0.clear();
    let only_sysctl = "sysctl = { \"net.ipv4.ip_forward\" = 1 }\n";
    let l = layout(&config(only_sysctl), &mut nets.given);
    nets.realize(l, &mut host);
    assert!(
        !host.0.iter().any(|c| c.starts_with("forwarding")),
        "{:?}",
        host.0
    );
    assert!(
        !layout(&config(""), &mut Given::default())
            .ruleset
            .route_others
    );
}

use super::*;
use crate::net::interfaces::Applied;

/// Every effect asked for, in order.
#[derive(Debug, Default)]
struct Fake {
    calls: Vec<String>,
    dhcp: Vec<String>,
}

impl Effects for Fake {
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
    fn prepare_vms(&mut self, _: &HostConfig) -> Vec<String> {
        self.calls.push("vms".into());
        Vec::new()
    }
    fn withdraw_network(&mut self, _: &HostConfig, _: &HostConfig) -> Vec<String> {
        self.calls.push("withdraw".into());
        Vec::new()
    }
    fn apply_network(&mut self, _: &HostConfig) -> Applied {
        self.calls.push("network".into());
        Applied {
            warnings: Vec::new(),
            dhcp: self.dhcp.clone(),
        }
    }
    fn write_dns(&mut self, _: &HostConfig) -> Result<(), String> {
        self.calls.push("dns".into());
        Ok(())
    }
    fn write_update_policy(&mut self, _: &HostConfig) -> Result<(), String> {
        self.calls.push("policy".into());
        Err("read-only file system".into())
    }
    fn write_admin_files(&mut self, _: &HostConfig) -> Result<(), String> {
        self.calls.push("admin files".into());
        Ok(())
    }
}

fn def(command: &str) -> ContainerDef {
    ContainerDef::parse(&format!("command = {command}\n[rootfs]\n")).unwrap()
}

fn image_defs() -> Vec<(String, ContainerDef)> {
    vec![
        ("admin".to_string(), def("[\"/bin/sh\"]")),
        ("web".to_string(), def("[\"/bin/httpd\"]")),
        (
            "dhcp".to_string(),
            def("[\"/sbin/udhcpc\", \"-i\", \"{interface}\"]"),
        ),
    ]
}

fn config(text: &str) -> HostConfig {
    toml::from_str(text).unwrap()
}

fn names(defs: &[(String, ContainerDef)]) -> Vec<&str> {
    defs.iter().map(|(n, _)| n.as_str()).collect()
}

const FIRST: &str =
    "hostname = \"edge\"\n[sysctl]\n\"net.ipv4.ip_forward\" = true\n\"no.such\" = 1\n\
    [network.interfaces.eth0]\ndhcp = true\n";

#[test]
fn boot_asks_for_every_effect_and_reports_what_did_not_take() {
    let defs = image_defs();
    let mut fx = Fake {
        dhcp: vec!["eth0".into()],
        ..Fake::default()
    };
    let image = Image {
        defs: &defs,
        zones: None,
    };
    let out = converge(None, &config(FIRST), image, &mut fx);
    assert_eq!(
        fx.calls,
        [
            "vms",
            "network",
            "dns",
            "hostname edge",
            "net.ipv4.ip_forward=1",
            "policy",
            "admin files"
        ]
    );
    assert!(out.changes.is_empty(), "at boot nothing is a change");
    assert_eq!(
        out.warnings,
        [
            "sysctl no.such: No such file or directory",
            "update policy: read-only file system"
        ]
    );
    assert_eq!(out.dhcp, ["eth0"]);
    assert_eq!(names(&out.defs), ["admin", "web", "dhcp-eth0"]);
    assert_eq!(out.tz, "UTC0");
    assert!(out
        .defs
        .iter()
        .all(|(_, d)| d.env.contains(&"TZ=UTC0".into())));

    let mut fx = Fake::default();
    converge(None, &HostConfig::default(), image, &mut fx);
    assert_eq!(fx.calls[3], "hostname keel", "the image's name by default");
}

/// Converge on `first`, then from it to `second`: the effects asked for the
/// second step and what the service table is told to do.
fn step(first: &str, second: &str) -> (Vec<String>, Converged, ServicePlan) {
    let defs = image_defs();
    let image = Image {
        defs: &defs,
        zones: None,
    };
    let (first, second) = (config(first), config(second));
    let mut fx = Fake {
        dhcp: vec!["eth0".into()],
        ..Fake::default()
    };
    let booted = converge(None, &first, image, &mut fx);
    let mut fx = Fake {
        dhcp: vec!["eth0".into()],
        ..Fake::default()
    };
    let before = Before {
        config: &first,
        dhcp: &booted.dhcp,
    };
    let out = converge(Some(before), &second, image, &mut fx);
    let table = booted.defs.iter().map(|(n, d)| (n.as_str(), d));
    let plan = plan_services(table, out.defs.clone(), &[]);
    (fx.calls, out, plan)
}

#[test]
fn the_same_config_again_changes_nothing() {
    let (calls, out, plan) = step(FIRST, FIRST);
    // Written again, so that one that did not take before takes now.
    assert_eq!(calls, ["hostname edge", "net.ipv4.ip_forward=1"]);
    assert!(out.changes.is_empty());
    assert_eq!(plan, ServicePlan::default());
    assert_eq!(out.dhcp, ["eth0"], "the DHCP interfaces are kept");
}

#[test]
fn a_new_host_name_restarts_nothing() {
    let (calls, out, plan) = step(FIRST, &FIRST.replace("edge", "core"));
    assert_eq!(calls, ["hostname core", "net.ipv4.ip_forward=1"]);
    assert_eq!(out.changes, ["hostname"]);
    assert_eq!(plan, ServicePlan::default());
}

#[test]
fn a_service_override_restarts_that_service_only() {
    let second = format!("{FIRST}[services.web]\nenv = {{ MODE = \"prod\" }}\n");
    let (calls, out, plan) = step(FIRST, &second);
    assert_eq!(calls, ["hostname edge", "net.ipv4.ip_forward=1"]);
    assert!(out.changes.is_empty());
    assert!(plan.stop.is_empty());
    assert_eq!(names(&plan.start), ["web"]);
    assert!(plan.start[0].1.env.contains(&"MODE=prod".to_string()));
}

#[test]
fn a_disabled_service_is_stopped() {
    let second = format!("{FIRST}[services.web]\nenabled = false\n");
    let (_, out, plan) = step(FIRST, &second);
    assert_eq!(out.disabled, ["web"]);
    assert_eq!(plan.stop, ["web"]);
    assert!(plan.start.is_empty());
}

#[test]
fn a_network_change_is_withdrawn_reapplied_and_its_services_follow() {
    let second = FIRST.replace("dhcp = true", "addresses = [\"10.0.0.5/24\"]");
    let defs = image_defs();
    let image = Image {
        defs: &defs,
        zones: None,
    };
    let first = config(FIRST);
    let mut fx = Fake {
        dhcp: vec!["eth0".into()],
        ..Fake::default()
    };
    let booted = converge(None, &first, image, &mut fx);
    let before = Before {
        config: &first,
        dhcp: &booted.dhcp,
    };
    // The interface is static now: no DHCP client.
    let mut fx = Fake::default();
    let out = converge(Some(before), &config(&second), image, &mut fx);
    assert_eq!(
        fx.calls,
        [
            "withdraw",
            "network",
            "dns",
            "hostname edge",
            "net.ipv4.ip_forward=1"
        ],
        "the sysctls after the interfaces they may name"
    );
    assert_eq!(out.changes, ["network"]);
    let table = booted.defs.iter().map(|(n, d)| (n.as_str(), d));
    let plan = plan_services(table, out.defs, &[]);
    assert_eq!(plan.stop, ["dhcp-eth0"]);
    assert!(plan.start.is_empty(), "admin and web are as they were");
}

#[test]
fn a_new_time_zone_restarts_every_service() {
    let mut zones = BTreeMap::new();
    zones.insert("Europe/Berlin".to_string(), "CET-1CEST".to_string());
    let defs = image_defs();
    let image = Image {
        defs: &defs,
        zones: Some(&zones),
    };
    let first = HostConfig::default();
    let booted = converge(None, &first, image, &mut Fake::default());
    let before = Before {
        config: &first,
        dhcp: &[],
    };
    let mut fx = Fake::default();
    let second = config("timezone = \"Europe/Berlin\"\n");
    let out = converge(Some(before), &second, image, &mut fx);
    assert_eq!(fx.calls, ["hostname keel"]);
    assert_eq!(out.tz, "CET-1CEST");
    let table = booted.defs.iter().map(|(n, d)| (n.as_str(), d));
    let plan = plan_services(table, out.defs, &[]);
    assert_eq!(names(&plan.start), ["admin", "web"]);
}

#[test]
fn the_persons_containers_are_left_to_their_own_plan() {
    let web = def("[\"/bin/httpd\"]");
    let mine = def("[\"/app\"]");
    let table = [("web", &web), ("mine", &mine)];
    let plan = plan_services(table, vec![("web".into(), web.clone())], &["mine".into()]);
    assert_eq!(plan, ServicePlan::default());

    let old = config("[containers.a]\nimage = \"/var/a\"\n[containers.b]\nimage = \"/var/b\"\n");
    let new = config("[containers.a]\nimage = \"/var/a2\"\n[containers.c]\nimage = \"/var/c\"\n");
    let plan = plan_containers(&old, &new);
    let prepare: Vec<&str> = plan.prepare.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(prepare, ["a", "c"]);
    assert_eq!(plan.remove, ["b"]);
    assert_eq!(plan_containers(&new, &new), ContainerPlan::default());
}

#[test]
fn new_registry_settings_prepare_the_containers_that_pull_from_it() {
    let base = "[containers.app]\nimage = \"r.example/app:1\"\n\
                [containers.other]\nimage = \"q.example/o:1\"\n\
                [containers.local]\nimage = \"/var/img\"\n";
    let old = config(base);
    let with = |extra: &str| config(&format!("{base}{extra}"));
    let prepared = |new: &HostConfig| -> Vec<String> {
        plan_containers(&old, new)
            .prepare
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    };
    assert_eq!(
        prepared(&with(
            "[registries.\"r.example\"]\nusername = \"u\"\npassword = \"p\"\n"
        )),
        ["app"]
    );
    assert_eq!(
        prepared(&with(
            "[registries.\"q.example\"]\nmirrors = [\"m.example\"]\n"
        )),
        ["other"]
    );
    // A mirror's own settings count for the registries it mirrors.
    let mirrored = config(&format!(
        "{base}[registries.\"r.example\"]\nmirrors = [\"m.example\"]\n"
    ));
    let insecure = config(&format!(
        "{base}[registries.\"r.example\"]\nmirrors = [\"m.example\"]\n\
         [registries.\"m.example\"]\ninsecure = true\n"
    ));
    let plan = plan_containers(&mirrored, &insecure);
    assert_eq!(plan.prepare.len(), 1);
    assert_eq!(plan.prepare[0].0, "app");
    // A registry no container pulls from changes nothing.
    assert!(prepared(&with("[registries.\"z.example\"]\ninsecure = true\n")).is_empty());
}

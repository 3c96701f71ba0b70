//! The host config at boot: a file on the ESP sets the host name, a
//! sysctl and a static address (the web service then answers through
//! `keel run --publish`), disables one service and overrides another's
//! environment; a broken file later leaves the host up on the last good
//! config, with the problems on the console and in `keelctl status`; and
//! `dhcp = true` runs the DHCP client container, which gets QEMU's lease.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::process::Command;

use keel_tests::fixtures::{self, put_config};
use keel_tests::{copy_disk, disk_image, free_port, Guest, BOOT_TIMEOUT, COMMAND_TIMEOUT};

/// The web service's os-release page through the forward on `port`.
fn http_get(port: u16) -> String {
    fixtures::http_get(port, "/os-release", "ID=keel").unwrap()
}

/// Run `command` over SSH as root on 127.0.0.1:`port` with `key`, retried
/// for a minute (the server makes its host keys on first start).
fn ssh(key: &Path, port: u16, command: &str) -> Result<String, String> {
    let mut last = String::new();
    for _ in 0..30 {
        let out = Command::new("ssh")
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=20",
                "-p",
                &port.to_string(),
                "-i",
            ])
            .arg(key)
            .arg("admin@127.0.0.1")
            .arg(command)
            .output()
            .map_err(|e| format!("ssh: {e}"))?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        last = keel_tests::output_text(&out);
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    Err(format!("ssh to port {port} failed: {last}"))
}

fn services(status: &serde_json::Value) -> Vec<String> {
    status["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

// One long scenario rather than many short tests: each step needs the
// state the steps before it left, and a boot costs seconds of the suite.
#[test]
fn the_esp_config_applies_and_a_broken_one_keeps_the_last_good() {
    let dir = tempfile::tempdir().unwrap();
    let disk_path = dir.path().join("disk.img");
    copy_disk(&disk_image(), &disk_path);
    let key = dir.path().join("id_ed25519");
    let public = keel_tests::fixtures::ssh_key(dir.path());
    put_config(
        &disk_path,
        &format!(
            "hostname = \"edge-7\"\ntimezone = \"Europe/Berlin\"\n\n[sysctl]\n\"vm.swappiness\" = 17\n\n\
             [time]\nntp = [\"10.0.2.2\"]\n\n[network]\ndns = [\"10.0.2.3\"]\n\n\
             [network.interfaces.eth0]\naddresses = [\"10.0.2.15/24\"]\ngateway = \"10.0.2.2\"\n\n\
             [admin.ssh]\nenabled = true\nauthorized_keys = [\"{}\"]\n\n\
             [services.update]\nenabled = false\n\n\
             [services.web]\nenv = {{ KEEL_TEST_MARK = \"overridden\" }}\n",
            public.trim()
        ),
    );

    let (port, ssh_port) = (free_port(), free_port());
    let mut g = Guest::boot_publishing(&disk_path, &[(port, 80), (ssh_port, 22)]);
    g.expect("keel: ready ", BOOT_TIMEOUT);
    g.prompt();
    assert_eq!(g.status()["hostname"], "edge-7");
    // The static address makes the guest reachable: the web service
    // answers through QEMU's forward.
    let page = http_get(port);
    assert!(
        page.contains("200 OK") && page.contains("ID=keel"),
        "{page}"
    );
    assert_eq!(g.shell("cat /proc/sys/vm/swappiness").trim(), "17");
    let status = g.status();
    assert_eq!(status["config"]["source"], "esp", "{status}");
    assert_eq!(status["config"]["disabled"], serde_json::json!(["update"]));
    assert!(
        !services(&status).contains(&"update".to_string()),
        "{status}"
    );
    // What runs in the web service gets the overridden environment.
    let env = g.shell("keelctl exec web -- /usr/bin/env");
    assert!(env.contains("KEEL_TEST_MARK=overridden"), "{env}");
    // The zone's rule reaches every container as TZ.
    assert!(env.contains("TZ=CET-1CEST,M3.5.0,M10.5.0/3"), "{env}");
    // The host's resolvers, through the containers' /etc/resolv.conf.
    let resolv = g.shell("cat /etc/resolv.conf");
    assert!(resolv.contains("nameserver 10.0.2.3"), "{resolv}");
    // Time sync runs with the listed server (QEMU's restricted network
    // answers no NTP, so the clock itself is not checked).
    let ntp = g.service("ntp");
    assert_eq!(ntp["state"], "running", "{ntp}");
    assert_eq!(
        ntp["capabilities"],
        serde_json::json!(["CAP_SYS_TIME"]),
        "{ntp}"
    );
    let log = g.poll_shell("cat /var/log/keel/ntp.log", 30, |l| l.contains("10.0.2.2"));
    assert!(log.contains("10.0.2.2"), "{log}");
    let text = g.shell("keelctl status");
    assert!(text.contains("disabled by the config: update"), "{text}");
    // The admin shell over SSH, with the listed key: a real OpenSSH client
    // logs in to dropbear through QEMU's forward and runs keelctl.
    let over_ssh = ssh(
        &key,
        ssh_port,
        "keelctl status --json; echo TZ=$TZ; echo uid=$(id -u); kill -0 1; echo kill-rc=$?",
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", g.shell("keelctl logs ssh")));
    assert!(over_ssh.contains("\"hostname\": \"edge-7\""), "{over_ssh}");
    assert!(over_ssh.contains("TZ=CET-1CEST"), "{over_ssh}");
    // A session is the admin user's, as the console's shell is: it may not
    // signal PID 1.
    assert!(
        over_ssh.contains("uid=37") && over_ssh.contains("kill-rc=1"),
        "{over_ssh}"
    );
    let ssh_status = g.service("ssh");
    assert_eq!(ssh_status["state"], "running", "{ssh_status}");
    g.send("keelctl poweroff\n");
    assert!(g.wait_exit(COMMAND_TIMEOUT).success());

    // A broken file: the host comes up on the last good config and says why.
    put_config(
        &disk_path,
        "hostname = 5\n[services.nginx]\nenabled = false\n",
    );
    let mut g = Guest::boot(&disk_path);
    let before = g.expect("keel: ready ", BOOT_TIMEOUT);
    assert!(
        before.contains("error: host config: /efi/keel/host.toml:1:12: `hostname`: invalid type: integer `5`, expected a string")
            && before.contains("`services.nginx`: the image has no service \"nginx\"")
            && before.contains("running on the last good config"),
        "{before}"
    );
    g.prompt();
    let status = g.status();
    assert_eq!(status["hostname"], "edge-7", "{status}");
    assert_eq!(status["config"]["source"], "last-good", "{status}");
    assert_eq!(
        status["config"]["errors"].as_array().unwrap().len(),
        2,
        "{status}"
    );
    assert!(
        !services(&status).contains(&"update".to_string()),
        "{status}"
    );
    assert_eq!(status["health"], "healthy", "{status}");
    // keelctl checks a file as this host would read it.
    let out = g.shell(
        "printf 'hostname = \"ok\"\\n[services.update]\\nenabled = true\\n[services.nope]\\nenabled = false\\n' > /tmp/h.toml; \
         keelctl config validate /tmp/h.toml; echo rc=$?",
    );
    assert!(
        out.contains("/tmp/h.toml:4:11: `services.nope`: the image has no service \"nope\"")
            && !out.contains("`services.update`")
            && out.contains("rc=1"),
        "{out}"
    );
    g.send("keelctl poweroff\n");
    assert!(g.wait_exit(COMMAND_TIMEOUT).success());

    // DHCP: the client container gets QEMU's lease for eth0, and the web
    // service answers again.
    put_config(
        &disk_path,
        "[network.interfaces.eth0]\ndhcp = true\n\n[update]\nchannel = \"edge\"\ncheck_interval = \"2h\"\n",
    );
    let port = free_port();
    let mut g = Guest::boot_publishing(&disk_path, &[(port, 80)]);
    g.expect("keel: ready ", BOOT_TIMEOUT);
    g.prompt();
    let page = http_get(port);
    assert!(page.contains("ID=keel"), "{page}");
    let dhcp = g.service("dhcp-eth0");
    assert_eq!(dhcp["state"], "running", "{dhcp}");
    let log = g.shell("cat /var/log/keel/dhcp-eth0.log");
    // QEMU's restricted user network leases an address but offers no
    // router or resolver.
    assert!(log.contains("keel-dhcp: eth0 has 10.0.2.15/24"), "{log}");
    assert_eq!(g.status()["config"]["source"], "esp");
    // The updater's policy is the image's with [update] over it.
    let policy = g.shell("cat /run/keel/update.toml");
    assert!(
        policy.contains("channel = \"edge\"") && policy.contains("check_interval_s = 7200"),
        "{policy}"
    );
    g.send("keelctl poweroff\n");
    assert!(g.wait_exit(COMMAND_TIMEOUT).success());
}

//! Container networks in a real guest: private containers on bridges
//! with NAT out of the host, names resolved through the host's resolver
//! (a DNS server in a container, published on UDP port 53 of the host),
//! a page fetched from this machine through QEMU's guestfwd, published
//! ports that show the client's real address, networks that cannot reach
//! each other, a firewall that keeps containers off the host's own
//! services, and `config apply` removing a network without a trace.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::fs;
use std::io::Write;
use std::path::Path;

use keel_tests::fixtures::{busybox_layer, http_get, oci_layout, put_config, Entry, Mounted};
use keel_tests::{
    copy_disk, disk_image, free_port, musl_bin_dir, Guest, BOOT_TIMEOUT, COMMAND_TIMEOUT,
};

/// busybox with the applets the containers run, and keel-probe (the DNS
/// server).
fn net_layout(dir: &Path) {
    let probe = fs::read(musl_bin_dir().join("keel-probe")).unwrap();
    let entries = [Entry::file("bin/keel-probe", &probe, 0o755)];
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&busybox_layer(
            &["sh", "wget", "nc", "tcpsvd", "cat", "sleep", "ip", "echo"],
            &entries,
        ))
        .unwrap();
        e.finish().unwrap()
    };
    oci_layout(
        dir,
        &[&gz],
        r#"{"architecture":"amd64","os":"linux","config":{"Cmd":["sleep","1000000"],"Env":["PATH=/bin"]}}"#,
    );
}

/// The host and its containers. `dns` answers for `updates.test`, which
/// is QEMU's guestfwd to this machine; `app` says who connected; `client`
/// shares `backend` with it; `outsider` is on a network of its own.
fn config(ssh_key: &str, with_outsider: bool, firewall: &str) -> String {
    let mut c = format!(
        r#"[network]
dns = ["10.0.2.15"]

[network.firewall]
containers = ["80/tcp"]
{firewall}

[network.interfaces.eth0]
addresses = ["10.0.2.15/24", "fd00::15/64"]
gateway = "10.0.2.2"

[network.networks.backend]

[admin.ssh]
enabled = true
authorized_keys = ["{ssh_key}"]

[containers.dns]
image = "/var/lib/images/net"
command = ["/bin/keel-probe", "dns", "updates.test=10.0.2.100"]
ports = ["53:53/udp"]

[containers.app]
image = "/var/lib/images/net"
command = ["tcpsvd", "::", "8080", "sh", "-c", "read line; echo client $TCPREMOTEADDR"]
ports = ["9090:8080"]
networks = ["default", "backend"]

[containers.client]
image = "/var/lib/images/net"
networks = ["backend"]
"#
    );
    if with_outsider {
        c.push_str(
            "\n[network.networks.other]\n\n[containers.outsider]\nimage = \"/var/lib/images/net\"\n\
             networks = [\"other\"]\n",
        );
    }
    c
}

fn pid(g: &mut Guest, name: &str) -> i64 {
    let s = g.service(name);
    s["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("{name} not running: {s}"))
}

/// The IPv4 address of `container` on interface `dev`.
fn address(g: &mut Guest, container: &str, dev: &str) -> String {
    address_of(g, container, dev, "inet")
}

/// Its global IPv6 address there.
fn address6(g: &mut Guest, container: &str, dev: &str) -> String {
    address_of(g, container, dev, "inet6")
}

fn address_of(g: &mut Guest, container: &str, dev: &str, family: &str) -> String {
    let flag = if family == "inet" { "-4" } else { "-6" };
    let out = g.shell(&format!(
        "keelctl exec {container} -- /bin/ip {flag} -o addr show dev {dev} scope global"
    ));
    out.split_whitespace()
        .skip_while(|w| *w != family)
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no address on {container}'s {dev}: {out}"))
        .to_string()
}

#[test]
fn containers_reach_the_world_each_other_by_name_and_keep_their_clients_address() {
    let dir = tempfile::tempdir().unwrap();
    let disk_path = dir.path().join("disk.img");
    copy_disk(&disk_image(), &disk_path);
    {
        let var = Mounted::partition(&disk_path, keel_formats::disk::DATA_LABEL);
        net_layout(&var.at.path().join("lib/images/net"));
    }
    let public = keel_tests::fixtures::ssh_key(dir.path());
    put_config(&disk_path, &config(public.trim(), true, ""));
    let site = dir.path().join("site");
    fs::create_dir(&site).unwrap();
    fs::write(site.join("page.txt"), "a page from the build machine\n").unwrap();
    let server = keel_tests::http::serve(&site);

    let (published, ssh) = (free_port(), free_port());
    let mut g =
        Guest::boot_forwarding(&disk_path, &[(80, server)], &[(published, 9090), (ssh, 22)]);
    g.expect("keel: ready ", BOOT_TIMEOUT);
    g.prompt();
    let status = g.status();
    assert_eq!(status["config"]["source"], "esp", "{status}");
    for name in ["dns", "app", "client", "outsider"] {
        g.poll_shell(&format!("keelctl status | grep '^{name} '"), 60, |t| {
            t.contains("running")
        });
    }

    // Out through the bridge and the host's masquerade, the name through
    // the host's resolver: the host's own published UDP port 53.
    let page = g.shell("keelctl exec app -- /bin/wget -qO- http://updates.test/page.txt 2>&1");
    assert!(
        page.contains("a page from the build machine"),
        "{page}\n{}",
        g.shell("keelctl logs dns; cat /etc/resolv.conf; ip addr; ip route")
    );

    // A published port keeps the client's address: QEMU's forward comes
    // from 10.0.2.2 as the guest sees it.
    let seen =
        http_get(published, "/", "client").unwrap_or_else(|e| panic!("{e}\n{}", g.transcript));
    assert!(
        seen.contains("10.0.2.2") && !seen.contains("127.0.0.1"),
        "{seen}"
    );
    // IPv6 too, from the host's own address.
    let seen = g.shell("echo hi | nc -w 5 fd00::15 9090");
    assert!(seen.contains("client [fd00::15]:"), "{seen}");
    let seen = g.shell("echo hi | nc -w 5 127.0.0.1 9090");
    assert!(seen.contains("client"), "from the host's loopback: {seen}");

    // By name on a shared network, from the client's own address there.
    let client_ip = address(&mut g, "client", "eth0");
    assert!(client_ip.starts_with("10.89."), "{client_ip}");
    let seen = g.shell("keelctl exec client -- /bin/sh -c 'echo hi | nc -w 5 app 8080'");
    assert!(
        seen.contains("client") && seen.contains(&client_ip),
        "{seen}"
    );
    let hosts = g.shell("keelctl exec client -- /bin/cat /etc/hosts");
    assert!(
        hosts.contains("\tapp\n") && !hosts.contains("outsider"),
        "{hosts}"
    );

    // Another network reaches neither by name nor by address.
    let web_backend = address(&mut g, "app", "eth1");
    let web_default = address(&mut g, "app", "eth0");
    let web_backend6 = address6(&mut g, "app", "eth1");
    // It reaches the world, so what it cannot reach is the firewall's doing.
    let page = g.shell("keelctl exec outsider -- /bin/wget -qO- http://updates.test/page.txt 2>&1");
    assert!(page.contains("a page from the build machine"), "{page}");
    for to in ["app", &web_backend, &web_default, &web_backend6] {
        let out = g.shell(&format!(
            "keelctl exec outsider -- /bin/sh -c 'echo hi | nc -w 3 {to} 8080' 2>&1; echo rc=$?"
        ));
        assert!(
            !out.contains("client") && out.contains("rc=1"),
            "outsider reached app at {to}: {out}"
        );
    }

    // The host's own services are closed to containers but for what the
    // config opens: SSH answers the host, not a container, on any of its
    // addresses; the web service (port 80, opened) answers both.
    let banner = g.shell("echo | nc -w 3 10.0.2.15 22");
    assert!(banner.contains("SSH-"), "the host's SSH is up: {banner}");
    let bridge = web_default
        .rsplit_once('.')
        .map(|(n, _)| format!("{n}.1"))
        .unwrap();
    // Refused (a TCP reset), not merely unanswered; the host's own port 80
    // (opened) connects from the same container.
    for to in ["10.0.2.15:22", &format!("{bridge}:22"), "[fd00::15]:22"] {
        let out = g.shell(&format!(
            "keelctl exec client -- /bin/keel-probe connect {to}"
        ));
        assert!(
            out.contains("connect: refused"),
            "a container reached SSH at {to}: {out}"
        );
    }
    let out = g.shell("keelctl exec client -- /bin/keel-probe connect 10.0.2.15:80");
    assert!(out.contains("connect: connected"), "{out}");
    for to in ["10.0.2.15", &bridge] {
        let out = g.shell(&format!(
            "keelctl exec app -- /bin/wget -T 5 -qO- http://{to}/os-release 2>&1"
        ));
        assert!(
            out.contains("ID=keel"),
            "port 80 is open to containers at {to}: {out}"
        );
    }

    // `inbound = "drop"`: SSH from a source the allow list does not name
    // (QEMU's forward comes from 10.0.2.2) is dropped; published ports,
    // forwarded before the host's own input, stay open.
    let ssh_banner = || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", ssh)).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .ok()?;
        let mut b = [0u8; 4];
        std::io::Read::read_exact(&mut s, &mut b).ok()?;
        Some(b)
    };
    assert_eq!(
        ssh_banner(),
        Some(*b"SSH-"),
        "SSH reached from outside before"
    );
    let closed = config(
        public.trim(),
        true,
        "inbound = \"drop\"\n\n[[network.firewall.allow]]\nports = [\"22/tcp\"]\nfrom = [\"192.0.2.0/24\"]\n",
    );
    g.write_file("/tmp/closed.toml", &closed);
    let out = g.shell("keelctl config apply /tmp/closed.toml; echo rc=$?");
    assert!(out.contains("rc=0"), "{out}");
    assert_eq!(ssh_banner(), None, "SSH from 10.0.2.2 is dropped");
    let seen = http_get(published, "/", "client").unwrap();
    assert!(seen.contains("10.0.2.2"), "{seen}");

    // A network removed by `config apply`: its bridge and its container's
    // veth go; the other containers run on untouched.
    let before: Vec<i64> = ["dns", "app", "client"]
        .iter()
        .map(|n| pid(&mut g, n))
        .collect();
    assert!(g.shell("ip -o link show").contains("kn-other"));
    g.write_file("/tmp/new.toml", &config(public.trim(), false, ""));
    let out = g.shell("keelctl config apply /tmp/new.toml; echo rc=$?");
    assert!(
        out.contains("stopped container outsider") && out.contains("rc=0"),
        "{out}"
    );
    // The outsider's veth goes with its network namespace, once it has
    // stopped (sleep, as PID 1 of its namespace, waits for the SIGKILL).
    let veths = |t: &str| t.lines().filter(|l| l.contains(": vk")).count();
    let links = g.poll_shell("ip -o link show", 60, |t| {
        !t.contains("kn-other") && veths(t) == 4
    });
    assert_eq!(veths(&links), 4, "dns 1, app 2, client 1: {links}");
    let after: Vec<i64> = ["dns", "app", "client"]
        .iter()
        .map(|n| pid(&mut g, n))
        .collect();
    assert_eq!(before, after, "unaffected containers keep running");
    let seen = g.shell("keelctl exec client -- /bin/sh -c 'echo hi | nc -w 5 app 8080'");
    assert!(seen.contains("client"), "{seen}");
    // The kernel's rules, read back: none names the network that went.
    let net = g.shell("keelctl network");
    assert!(
        net.contains("keel0 bridge") && net.contains("prerouting: "),
        "{net}"
    );
    assert!(!net.contains("kn-other"), "{net}");

    // No private container left: no bridge, no veth, no rule.
    g.write_file(
        "/tmp/none.toml",
        "[network.interfaces.eth0]\naddresses = [\"10.0.2.15/24\", \"fd00::15/64\"]\n",
    );
    let out = g.shell("keelctl config apply /tmp/none.toml; echo rc=$?");
    assert!(out.contains("rc=0"), "{out}");
    let net = g.poll_shell("keelctl network", 60, |t| !t.contains("vk"));
    let rules = net.split("rules of table inet keel:").nth(1).unwrap_or("?");
    assert!(rules.trim().is_empty(), "rules left behind: {net}");
    assert!(!net.contains("bridge"), "{net}");

    g.send("keelctl poweroff\n");
    assert!(g.wait_exit(COMMAND_TIMEOUT).success());
}

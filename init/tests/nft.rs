//! keel-init's nf_tables table against the real kernel, read back with the
//! real `nft`: in a network namespace of the test's own, as root.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use keel_init::net::nft::{
    apply, listing, remove, Allowed, Bridge, Dnat, HostPort, Proto, Ruleset,
};
use std::process::Command;

/// Root, `nft`, and a fresh network namespace for this thread (and the
/// `nft` processes it starts); the test fails without them rather than
/// passing untested.
fn fresh_netns() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (a network namespace, nf_tables); CI runs as root"
    );
    let nft = Command::new("nft").arg("--version").output();
    assert!(
        matches!(&nft, Ok(o) if o.status.success()),
        "this test needs the nft binary (Debian package nftables, \
         `cargo xtask` installs it): {nft:?}"
    );
    // SAFETY: unshare only moves this thread into a new network namespace;
    // nothing here holds sockets of the old one.
    let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        r,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
}

fn nft(args: &[&str]) -> String {
    let out = Command::new("nft").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Trimmed non-empty lines.
fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

fn assert_table(expected: &str) {
    let listed = nft(&["list", "table", "inet", "keel"]);
    assert_eq!(
        lines(&listed),
        lines(expected),
        "nft list table inet keel shows:\n{listed}"
    );
}

fn two_bridges() -> Ruleset {
    Ruleset {
        bridges: vec![
            Bridge {
                name: "keel0".into(),
                v4: Some(("10.88.0.1".parse().unwrap(), 16)),
                v6: Some(("fd00:88::1".parse().unwrap(), 64)),
            },
            Bridge {
                name: "keel1".into(),
                v4: Some(("10.89.3.1".parse().unwrap(), 20)),
                v6: None,
            },
        ],
        dnat: vec![
            Dnat {
                proto: Proto::Tcp,
                host_port: 8080,
                to: "10.88.0.2".parse().unwrap(),
                port: 80,
            },
            Dnat {
                proto: Proto::Udp,
                host_port: 5353,
                to: "fd00:88::2".parse().unwrap(),
                port: 53,
            },
        ],
        containers_may_reach: vec![
            HostPort {
                proto: Proto::Tcp,
                first: 53,
                last: 53,
            },
            HostPort {
                proto: Proto::Udp,
                first: 8000,
                last: 8100,
            },
        ],
        inbound: Some(vec![
            Allowed {
                ports: HostPort {
                    proto: Proto::Tcp,
                    first: 22,
                    last: 22,
                },
                from: Some(("192.0.2.0".parse().unwrap(), 24)),
            },
            Allowed {
                ports: HostPort {
                    proto: Proto::Tcp,
                    first: 443,
                    last: 443,
                },
                from: Some(("2001:db8::".parse().unwrap(), 32)),
            },
            Allowed {
                ports: HostPort {
                    proto: Proto::Udp,
                    first: 60000,
                    last: 60010,
                },
                from: None,
            },
        ]),
        route_others: false,
    }
}

const TWO_BRIDGES: &str = r#"
table inet keel {
    chain guard {
        type filter hook prerouting priority mangle; policy accept;
        iifname "keel0" ip saddr 127.0.0.0/8 drop
        iifname "keel0" ip daddr 127.0.0.0/8 drop
        iifname "keel1" ip saddr 127.0.0.0/8 drop
        iifname "keel1" ip daddr 127.0.0.0/8 drop
    }
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        meta nfproto ipv4 fib daddr type local tcp dport 8080 dnat ip to 10.88.0.2:80
        meta nfproto ipv6 fib daddr type local udp dport 5353 dnat ip6 to [fd00:88::2]:53
    }
    chain output {
        type nat hook output priority -100; policy accept;
        meta nfproto ipv4 fib daddr type local tcp dport 8080 dnat ip to 10.88.0.2:80
        meta nfproto ipv6 fib daddr type local udp dport 5353 dnat ip6 to [fd00:88::2]:53
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr 10.88.0.0/16 oifname != "keel0" masquerade
        ip6 saddr fd00:88::/64 oifname != "keel0" masquerade
        ip saddr 127.0.0.0/8 oifname "keel0" masquerade
        ct status dnat oifname "keel0" iifname "keel0" masquerade
        ip saddr 10.89.0.0/20 oifname != "keel1" masquerade
        ip saddr 127.0.0.0/8 oifname "keel1" masquerade
        ct status dnat oifname "keel1" iifname "keel1" masquerade
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        ct state established,related accept
        ct status dnat accept
        iifname "keel0" oifname "keel1" drop
        iifname "keel1" oifname "keel0" drop
        iifname "keel0" accept
        iifname "keel1" accept
        oifname "keel0" drop
        oifname "keel1" drop
        drop
    }
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "keel0" ct state established,related accept
        iifname "keel0" meta l4proto icmp accept
        iifname "keel0" icmpv6 type nd-router-advert drop
        iifname "keel0" icmpv6 type nd-redirect drop
        iifname "keel0" meta l4proto ipv6-icmp accept
        iifname "keel0" udp dport 67 accept
        iifname "keel0" udp dport 547 accept
        iifname "keel0" tcp dport 53 accept
        iifname "keel0" udp dport 8000-8100 accept
        iifname "keel0" meta l4proto tcp reject with tcp reset
        iifname "keel0" reject
        iifname "keel1" ct state established,related accept
        iifname "keel1" meta l4proto icmp accept
        iifname "keel1" icmpv6 type nd-router-advert drop
        iifname "keel1" icmpv6 type nd-redirect drop
        iifname "keel1" meta l4proto ipv6-icmp accept
        iifname "keel1" udp dport 67 accept
        iifname "keel1" udp dport 547 accept
        iifname "keel1" tcp dport 53 accept
        iifname "keel1" udp dport 8000-8100 accept
        iifname "keel1" meta l4proto tcp reject with tcp reset
        iifname "keel1" reject
        iifname "lo" accept
        ct state established,related accept
        meta l4proto icmp accept
        meta l4proto ipv6-icmp accept
        udp dport 68 accept
        udp dport 546 accept
        ip saddr 192.0.2.0/24 tcp dport 22 accept
        ip6 saddr 2001:db8::/32 tcp dport 443 accept
        udp dport 60000-60010 accept
        drop
    }
}
"#;

/// What is left after the first bridge, its published ports and the host
/// port are gone.
const ONE_BRIDGE: &str = r#"
table inet keel {
    chain guard {
        type filter hook prerouting priority mangle; policy accept;
        iifname "keel1" ip saddr 127.0.0.0/8 drop
        iifname "keel1" ip daddr 127.0.0.0/8 drop
    }
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
    }
    chain output {
        type nat hook output priority -100; policy accept;
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr 10.89.0.0/20 oifname != "keel1" masquerade
        ip saddr 127.0.0.0/8 oifname "keel1" masquerade
        ct status dnat oifname "keel1" iifname "keel1" masquerade
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        ct state established,related accept
        ct status dnat accept
        iifname "keel1" accept
        oifname "keel1" drop
        drop
    }
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "keel1" ct state established,related accept
        iifname "keel1" meta l4proto icmp accept
        iifname "keel1" icmpv6 type nd-router-advert drop
        iifname "keel1" icmpv6 type nd-redirect drop
        iifname "keel1" meta l4proto ipv6-icmp accept
        iifname "keel1" udp dport 67 accept
        iifname "keel1" udp dport 547 accept
        iifname "keel1" meta l4proto tcp reject with tcp reset
        iifname "keel1" reject
    }
}
"#;

// One scenario: each step starts from the table the step before left.
#[test]
fn the_keel_table_is_replaced_whole_and_removed() {
    fresh_netns();
    assert!(
        !nft(&["list", "tables"]).contains("keel"),
        "a fresh namespace has no table"
    );

    apply(&two_bridges()).unwrap();
    assert_table(TWO_BRIDGES);
    // Read back from the kernel, as `keelctl network` shows it: one line
    // per rule nft lists, with the names and addresses in it.
    let rules = listing().unwrap();
    let listed = TWO_BRIDGES
        .lines()
        .filter(|l| l.starts_with("        ") && !l.contains(" hook "))
        .count();
    assert_eq!(rules.len(), listed, "{rules:#?}");
    assert!(
        rules.iter().any(|r| r.starts_with("prerouting: ")
            && r.contains("10.88.0.2")
            && r.contains("8080")),
        "{rules:#?}"
    );
    assert!(rules.iter().any(|r| r.contains("\"keel1\"")), "{rules:#?}");
    // Again, over itself: replaced, not added to.
    apply(&two_bridges()).unwrap();
    assert_table(TWO_BRIDGES);

    let mut smaller = two_bridges();
    smaller.bridges.remove(0);
    smaller.dnat.clear();
    smaller.containers_may_reach.clear();
    smaller.inbound = None;
    apply(&smaller).unwrap();
    assert_table(ONE_BRIDGE);

    remove().unwrap();
    assert_eq!(
        listing().unwrap(),
        Vec::<String>::new(),
        "no table, no rules"
    );
    let tables = nft(&["list", "tables"]);
    assert!(!tables.contains("inet keel"), "still listed: {tables}");
    remove().expect("removing a table already gone");

    // And from nothing, as at boot.
    apply(&smaller).unwrap();
    assert_table(ONE_BRIDGE);
}

//! The ruleset as chains of rules. Each [`Rule`] is built from matches in
//! nft's own words, so its text is what `nft list table inet keel` shows
//! for it (the tests compare the two) and what an error names.

use super::expr::{self, *};
use super::{Allowed, Bridge, Dnat, HostPort, Proto, Ruleset};
use crate::net::netlink::octets;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub(super) const NFPROTO_IPV4: u8 = 2;
pub(super) const NFPROTO_IPV6: u8 = 10;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
/// `linux/rtnetlink.h`: a local address, as `fib daddr type` says.
const RTN_LOCAL: u32 = 2;
/// `linux/netfilter/nf_conntrack_common.h`: `NF_CT_STATE_BIT` of
/// IP_CT_ESTABLISHED (0) and IP_CT_RELATED (1).
const CT_STATE_ESTABLISHED_RELATED: u32 = (1 << 1) | (1 << 2);
/// IPS_DST_NAT.
const CT_STATUS_DNAT: u32 = 1 << 5;

/// `linux/netfilter.h` hooks.
pub(super) const NF_INET_PRE_ROUTING: u32 = 0;
pub(super) const NF_INET_LOCAL_IN: u32 = 1;
pub(super) const NF_INET_FORWARD: u32 = 2;
pub(super) const NF_INET_LOCAL_OUT: u32 = 3;
pub(super) const NF_INET_POST_ROUTING: u32 = 4;

/// How nft names a hook.
pub(super) fn hook_name(hook: u32) -> &'static str {
    match hook {
        NF_INET_PRE_ROUTING => "prerouting",
        NF_INET_LOCAL_IN => "input",
        NF_INET_FORWARD => "forward",
        NF_INET_LOCAL_OUT => "output",
        NF_INET_POST_ROUTING => "postrouting",
        _ => "unknown",
    }
}

/// A base chain with its rules; its policy is accept.
#[derive(Debug)]
pub(super) struct Chain {
    pub(super) name: &'static str,
    /// `nat` or `filter`.
    pub(super) kind: &'static str,
    pub(super) hook: u32,
    pub(super) priority: i32,
    pub(super) rules: Vec<Rule>,
}

/// One rule: its expressions, encoded, and the same in nft's words.
#[derive(Debug, Default)]
pub(super) struct Rule {
    pub(super) text: String,
    pub(super) exprs: Vec<u8>,
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

fn proto_number(p: Proto) -> u8 {
    match p {
        Proto::Tcp => IPPROTO_TCP,
        Proto::Udp => IPPROTO_UDP,
    }
}

/// The first `prefix` bits of `octets` and the mask to compare them under,
/// as nft encodes a prefix: a whole number of bytes is just those bytes
/// (no mask); otherwise the whole address, masked.
pub(super) fn prefix_bytes(octets: &[u8], prefix: u8) -> (Vec<u8>, Option<Vec<u8>>) {
    let (mut value, mut mask) = (Vec::new(), Vec::new());
    let mut left = prefix;
    for o in octets {
        if left == 0 {
            break;
        }
        let bits = left.min(8);
        left = left.saturating_sub(bits);
        // bits is 1..=8: the shift is 0..=7.
        let m = u8::MAX
            .checked_shl(u32::from(8u8.saturating_sub(bits)))
            .unwrap_or(0);
        value.push(o & m);
        mask.push(m);
    }
    if mask.last().is_some_and(|m| *m != u8::MAX) {
        value.resize(octets.len(), 0);
        mask.resize(octets.len(), 0);
        (value, Some(mask))
    } else {
        (value, None)
    }
}

impl Rule {
    fn new() -> Rule {
        Rule::default()
    }

    fn push(mut self, text: &str, exprs: &[Vec<u8>]) -> Rule {
        if !self.text.is_empty() {
            self.text.push(' ');
        }
        self.text.push_str(text);
        for e in exprs {
            self.exprs.extend_from_slice(e);
        }
        self
    }

    /// The check nft adds in front of a network-header match (and shows
    /// only where nothing implies it).
    fn nfproto_exprs(v6: bool) -> [Vec<u8>; 2] {
        let p = if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 };
        [meta(NFT_META_NFPROTO), cmp(NFT_CMP_EQ, &[p])]
    }

    fn nfproto(self, v6: bool) -> Rule {
        let text = if v6 {
            "meta nfproto ipv6"
        } else {
            "meta nfproto ipv4"
        };
        self.push(text, &Rule::nfproto_exprs(v6))
    }

    fn ifname(self, key: u32, name: &str, equal: bool) -> Rule {
        let word = if key == NFT_META_IIFNAME {
            "iifname"
        } else {
            "oifname"
        };
        let (op, cmp_op) = if equal {
            ("", NFT_CMP_EQ)
        } else {
            ("!= ", NFT_CMP_NEQ)
        };
        self.push(
            &format!("{word} {op}\"{name}\""),
            &[meta(key), cmp(cmp_op, &ifname(name))],
        )
    }

    fn iifname(self, name: &str) -> Rule {
        self.ifname(NFT_META_IIFNAME, name, true)
    }

    fn oifname(self, name: &str, equal: bool) -> Rule {
        self.ifname(NFT_META_OIFNAME, name, equal)
    }

    /// `icmpv6 type NAME` (after nft's implicit `meta l4proto ipv6-icmp`).
    fn icmpv6_type(self, kind: u8, name: &str) -> Rule {
        self.push(
            &format!("icmpv6 type {name}"),
            &[
                meta(NFT_META_L4PROTO),
                cmp(NFT_CMP_EQ, &[IPPROTO_ICMPV6]),
                payload(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 1),
                cmp(NFT_CMP_EQ, &[kind]),
            ],
        )
    }

    fn l4proto(self, number: u8, name: &str) -> Rule {
        self.push(
            &format!("meta l4proto {name}"),
            &[meta(NFT_META_L4PROTO), cmp(NFT_CMP_EQ, &[number])],
        )
    }

    /// `tcp dport P` (after nft's implicit `meta l4proto tcp`).
    fn dport(self, proto: Proto, port: u16) -> Rule {
        self.push(
            &format!("{} dport {port}", proto_name(proto)),
            &[
                meta(NFT_META_L4PROTO),
                cmp(NFT_CMP_EQ, &[proto_number(proto)]),
                payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
                cmp(NFT_CMP_EQ, &port.to_be_bytes()),
            ],
        )
    }

    /// `tcp dport A-B` (one port: as [`Rule::dport`]).
    fn dports(self, h: &HostPort) -> Rule {
        if h.first >= h.last {
            return self.dport(h.proto, h.first);
        }
        self.push(
            &format!("{} dport {}-{}", proto_name(h.proto), h.first, h.last),
            &[
                meta(NFT_META_L4PROTO),
                cmp(NFT_CMP_EQ, &[proto_number(h.proto)]),
                payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
                range(&h.first.to_be_bytes(), &h.last.to_be_bytes()),
            ],
        )
    }

    /// `ip saddr NET/PREFIX` or `ip6 saddr ...`; `addr` is masked here.
    fn saddr(self, addr: IpAddr, prefix: u8) -> Rule {
        self.addr_match(addr, prefix, false)
    }

    /// `ip daddr NET/PREFIX` or `ip6 daddr ...`.
    fn daddr(self, addr: IpAddr, prefix: u8) -> Rule {
        self.addr_match(addr, prefix, true)
    }

    fn addr_match(self, addr: IpAddr, prefix: u8, dst: bool) -> Rule {
        let (v6, word, offset, width) = match (addr, dst) {
            (IpAddr::V4(_), false) => (false, "ip saddr", 12, 32),
            (IpAddr::V4(_), true) => (false, "ip daddr", 16, 32),
            (IpAddr::V6(_), false) => (true, "ip6 saddr", 8, 128),
            (IpAddr::V6(_), true) => (true, "ip6 daddr", 24, 128),
        };
        let prefix = prefix.min(width);
        if prefix == 0 {
            return self.nfproto(v6);
        }
        let (value, mask) = prefix_bytes(&octets(&addr), prefix);
        let net = match addr {
            IpAddr::V4(_) => {
                let mut o = [0u8; 4];
                o.iter_mut().zip(&value).for_each(|(d, s)| *d = *s);
                IpAddr::V4(Ipv4Addr::from(o))
            }
            IpAddr::V6(_) => {
                let mut o = [0u8; 16];
                o.iter_mut().zip(&value).for_each(|(d, s)| *d = *s);
                IpAddr::V6(Ipv6Addr::from(o))
            }
        };
        let text = if prefix == width {
            format!("{word} {net}")
        } else {
            format!("{word} {net}/{prefix}")
        };
        let mut exprs = Rule::nfproto_exprs(v6).to_vec();
        // At most 16 bytes.
        exprs.push(payload(
            NFT_PAYLOAD_NETWORK_HEADER,
            offset,
            value.len() as u32,
        ));
        if let Some(m) = mask {
            exprs.push(bitwise(&m));
        }
        exprs.push(cmp(NFT_CMP_EQ, &value));
        self.push(&text, &exprs)
    }

    fn fib_daddr_local(self) -> Rule {
        self.push(
            "fib daddr type local",
            &[fib_daddr_type(), cmp(NFT_CMP_EQ, &RTN_LOCAL.to_ne_bytes())],
        )
    }

    /// `ct state|status BITS`: any of the bits set.
    fn ct_any(self, key: u32, bits: u32, text: &str) -> Rule {
        self.push(
            text,
            &[
                ct(key),
                bitwise(&bits.to_ne_bytes()),
                cmp(NFT_CMP_NEQ, &0u32.to_ne_bytes()),
            ],
        )
    }

    fn ct_established(self) -> Rule {
        self.ct_any(
            NFT_CT_STATE,
            CT_STATE_ESTABLISHED_RELATED,
            "ct state established,related",
        )
    }

    fn ct_dnat(self) -> Rule {
        self.ct_any(NFT_CT_STATUS, CT_STATUS_DNAT, "ct status dnat")
    }

    fn accept(self) -> Rule {
        self.push("accept", &[verdict(NF_ACCEPT)])
    }

    fn drop(self) -> Rule {
        self.push("drop", &[verdict(NF_DROP)])
    }

    fn masquerade(self) -> Rule {
        self.push("masquerade", &[masq()])
    }

    fn dnat_to(self, to: IpAddr, port: u16) -> Rule {
        let (text, nfproto) = match to {
            IpAddr::V4(a) => (format!("dnat ip to {a}:{port}"), NFPROTO_IPV4),
            IpAddr::V6(a) => (format!("dnat ip6 to [{a}]:{port}"), NFPROTO_IPV6),
        };
        self.push(
            &text,
            &[
                immediate(NFT_REG_1, &octets(&to)),
                immediate(NFT_REG_2, &port.to_be_bytes()),
                expr::dnat(nfproto),
            ],
        )
    }

    fn reject_tcp_reset(self) -> Rule {
        self.push("reject with tcp reset", &[reject(NFT_REJECT_TCP_RST, 0)])
    }

    /// ICMP (v4 or v6, as the packet is) port unreachable.
    fn reject_port_unreachable(self) -> Rule {
        self.push(
            "reject",
            &[reject(
                NFT_REJECT_ICMPX_UNREACH,
                NFT_REJECT_ICMPX_PORT_UNREACH,
            )],
        )
    }
}

/// `fib daddr type local <proto> dport H dnat ip to A:P`, for one family.
fn dnat_rule(d: &Dnat) -> Rule {
    Rule::new()
        .nfproto(d.to.is_ipv6())
        .fib_daddr_local()
        .dport(d.proto, d.host_port)
        .dnat_to(d.to, d.port)
}

fn postrouting(bridges: &[Bridge]) -> Vec<Rule> {
    let mut rules = Vec::new();
    for b in bridges {
        let name = b.name.as_str();
        if let Some((a, p)) = b.v4 {
            rules.push(
                Rule::new()
                    .saddr(a.into(), p)
                    .oifname(name, false)
                    .masquerade(),
            );
        }
        if let Some((a, p)) = b.v6 {
            rules.push(
                Rule::new()
                    .saddr(a.into(), p)
                    .oifname(name, false)
                    .masquerade(),
            );
        }
        // The host's own loopback connections DNATed into a container must
        // leave with an address the container can answer (IPv4 only:
        // Linux never routes ::1 off the loopback).
        if b.v4.is_some() {
            let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
            rules.push(Rule::new().saddr(lo, 8).oifname(name, true).masquerade());
        }
        // Hairpin: a container reaching a published port of a container on
        // its own bridge; the answer must come back through the host.
        rules.push(
            Rule::new()
                .ct_dnat()
                .oifname(name, true)
                .iifname(name)
                .masquerade(),
        );
    }
    rules
}

/// Before conntrack's NAT: route_localnet is on for the bridges (the
/// host's own connections to published ports at 127.0.0.1 need it), so
/// nothing from a container may come from or go to 127.0.0.0/8. The
/// answer to such a host connection still has the bridge's address here;
/// it is translated back later.
fn guard(bridges: &[Bridge]) -> Vec<Rule> {
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut rules = Vec::new();
    for b in bridges.iter().filter(|b| b.v4.is_some()) {
        rules.push(Rule::new().iifname(&b.name).saddr(lo, 8).drop());
        rules.push(Rule::new().iifname(&b.name).daddr(lo, 8).drop());
    }
    rules
}

fn forward(bridges: &[Bridge], route_others: bool) -> Vec<Rule> {
    let mut rules = vec![
        Rule::new().ct_established().accept(),
        Rule::new().ct_dnat().accept(),
    ];
    for a in bridges {
        for b in bridges.iter().filter(|b| b.name != a.name) {
            rules.push(Rule::new().iifname(&a.name).oifname(&b.name, true).drop());
        }
    }
    for b in bridges {
        rules.push(Rule::new().iifname(&b.name).accept());
    }
    for b in bridges {
        rules.push(Rule::new().oifname(&b.name, true).drop());
    }
    // The host forwards for its container networks, not between its
    // other interfaces, unless its config routes.
    if !route_others {
        rules.push(Rule::new().drop());
    }
    rules
}

fn input(r: &Ruleset) -> Vec<Rule> {
    let mut rules = Vec::new();
    for b in &r.bridges {
        let n = b.name.as_str();
        rules.push(Rule::new().iifname(n).ct_established().accept());
        rules.push(
            Rule::new()
                .iifname(n)
                .l4proto(IPPROTO_ICMP, "icmp")
                .accept(),
        );
        // Neighbour discovery yes; a container advertising itself as a
        // router, or redirecting the host's routes, no.
        for (kind, name) in [(134, "nd-router-advert"), (137, "nd-redirect")] {
            rules.push(Rule::new().iifname(n).icmpv6_type(kind, name).drop());
        }
        rules.push(
            Rule::new()
                .iifname(n)
                .l4proto(IPPROTO_ICMPV6, "ipv6-icmp")
                .accept(),
        );
        // DHCP and DHCPv6 servers on the host, should there be any.
        rules.push(Rule::new().iifname(n).dport(Proto::Udp, 67).accept());
        rules.push(Rule::new().iifname(n).dport(Proto::Udp, 547).accept());
        for h in &r.containers_may_reach {
            rules.push(Rule::new().iifname(n).dports(h).accept());
        }
        rules.push(
            Rule::new()
                .iifname(n)
                .l4proto(IPPROTO_TCP, "tcp")
                .reject_tcp_reset(),
        );
        rules.push(Rule::new().iifname(n).reject_port_unreachable());
    }
    if let Some(allowed) = &r.inbound {
        rules.extend(inbound(allowed));
    }
    rules
}

/// The host's own interfaces with `inbound = "drop"`, after the bridges'
/// rules (which have decided for every container's packet).
fn inbound(allowed: &[Allowed]) -> Vec<Rule> {
    let mut rules = vec![
        Rule::new().iifname("lo").accept(),
        Rule::new().ct_established().accept(),
        Rule::new().l4proto(IPPROTO_ICMP, "icmp").accept(),
        Rule::new().l4proto(IPPROTO_ICMPV6, "ipv6-icmp").accept(),
        // Replies to the host's DHCP clients (a renewal is a plain UDP
        // exchange, not the raw one of the first lease).
        Rule::new().dport(Proto::Udp, 68).accept(),
        Rule::new().dport(Proto::Udp, 546).accept(),
    ];
    for a in allowed {
        let rule = match a.from {
            Some((addr, prefix)) => Rule::new().saddr(addr, prefix),
            None => Rule::new(),
        };
        rules.push(rule.dports(&a.ports).accept());
    }
    rules.push(Rule::new().drop());
    rules
}

/// Every chain of `table inet keel`, in the order they are created.
pub(super) fn chains(r: &Ruleset) -> Vec<Chain> {
    let dnat: Vec<Rule> = r.dnat.iter().map(dnat_rule).collect();
    let chain = |name, kind, hook, priority, rules| Chain {
        name,
        kind,
        hook,
        priority,
        rules,
    };
    vec![
        chain(
            "guard",
            "filter",
            NF_INET_PRE_ROUTING,
            -150,
            guard(&r.bridges),
        ),
        chain("prerouting", "nat", NF_INET_PRE_ROUTING, -100, dnat),
        chain(
            "output",
            "nat",
            NF_INET_LOCAL_OUT,
            -100,
            r.dnat.iter().map(dnat_rule).collect(),
        ),
        chain(
            "postrouting",
            "nat",
            NF_INET_POST_ROUTING,
            100,
            postrouting(&r.bridges),
        ),
        chain(
            "forward",
            "filter",
            NF_INET_FORWARD,
            0,
            forward(&r.bridges, r.route_others),
        ),
        chain("input", "filter", NF_INET_LOCAL_IN, 0, input(r)),
    ]
}

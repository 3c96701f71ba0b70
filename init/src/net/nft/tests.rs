// Offsets into a batch the test built: overflow would be a test bug.
#![allow(clippy::arithmetic_side_effects)]

use super::*;

/// (type, flags, seq, body) of each message in `b`.
fn msgs(b: &[u8]) -> Vec<(u16, u16, u32, &[u8])> {
    let mut out = Vec::new();
    let mut o = 0;
    while o < b.len() {
        let len = u32::from_ne_bytes(b[o..o + 4].try_into().unwrap()) as usize;
        let t = u16::from_ne_bytes(b[o + 4..o + 6].try_into().unwrap());
        let f = u16::from_ne_bytes(b[o + 6..o + 8].try_into().unwrap());
        let s = u32::from_ne_bytes(b[o + 8..o + 12].try_into().unwrap());
        out.push((t, f, s, &b[o + 16..o + len]));
        o += len.next_multiple_of(4);
    }
    assert_eq!(o, b.len(), "messages fill the batch exactly");
    out
}

/// (type with flags, payload) of each attribute in `b`.
fn attrs(b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut o = 0;
    while o < b.len() {
        let len = u16::from_ne_bytes(b[o..o + 2].try_into().unwrap()) as usize;
        let t = u16::from_ne_bytes(b[o + 2..o + 4].try_into().unwrap());
        out.push((t, &b[o + 4..o + len]));
        o += len.next_multiple_of(4);
    }
    out
}

fn find(b: &[u8], kind: u16) -> &[u8] {
    attrs(b)
        .into_iter()
        .find(|(t, _)| t & 0x7fff == kind)
        .unwrap_or_else(|| panic!("no attribute {kind}"))
        .1
}

fn small() -> Ruleset {
    Ruleset {
        bridges: vec![Bridge {
            name: "keel0".into(),
            v4: Some(("10.88.0.1".parse().unwrap(), 16)),
            v6: None,
        }],
        dnat: vec![Dnat {
            proto: Proto::Tcp,
            host_port: 8080,
            to: "10.88.0.2".parse().unwrap(),
            port: 80,
        }],
        containers_may_reach: vec![HostPort {
            proto: Proto::Udp,
            first: 53,
            last: 53,
        }],
        inbound: None,
        route_others: false,
    }
}

#[test]
fn a_batch_is_framed_by_begin_and_end_with_increasing_seqs() {
    let b = batch(&small(), 1000);
    let m = msgs(&b);
    let (first, last) = (m[0], m[m.len() - 1]);
    assert_eq!(first.0, NFNL_MSG_BATCH_BEGIN);
    assert_eq!(last.0, NFNL_MSG_BATCH_END);
    for end in [first, last] {
        assert_eq!(end.1, NLM_F_REQUEST, "no ack asked of begin and end");
        assert_eq!(
            end.3,
            &[0, 0, 0, 10],
            "AF_UNSPEC, res_id NFNL_SUBSYS_NFTABLES"
        );
    }
    for (i, msg) in m.iter().enumerate() {
        assert_eq!(msg.2, 1000 + i as u32, "seq of message {i}");
    }
    for msg in &m[1..m.len() - 1] {
        assert_eq!(msg.0 >> 8, NFNL_SUBSYS_NFTABLES);
        assert_eq!(msg.1 & 0x5, 0x5, "request, ack");
        assert_eq!(&msg.3[..4], &[NFPROTO_INET, 0, 0, 0]);
    }
    let kinds: Vec<u16> = m[1..4].iter().map(|x| x.0).collect();
    assert_eq!(
        kinds,
        [NFT_MSG_NEWTABLE, NFT_MSG_DELTABLE, NFT_MSG_NEWTABLE]
    );
    for t in &m[1..4] {
        assert_eq!(find(&t.3[4..], NFTA_TABLE_NAME), b"keel\0");
    }
    assert_eq!(m[1].1 & NLM_F_CREATE, NLM_F_CREATE);
}

#[test]
fn chains_carry_their_hook_and_priority_big_endian() {
    let b = batch(&small(), 1);
    let chains: Vec<_> = msgs(&b)
        .into_iter()
        .filter(|m| m.0 == NFT_MSG_NEWCHAIN)
        .map(|m| m.3[4..].to_vec())
        .collect();
    let names: Vec<&[u8]> = chains.iter().map(|c| find(c, NFTA_CHAIN_NAME)).collect();
    let want: [&[u8]; 6] = [
        b"guard\0",
        b"prerouting\0",
        b"output\0",
        b"postrouting\0",
        b"forward\0",
        b"input\0",
    ];
    assert_eq!(names, want);
    let hook = |c: &[u8]| {
        let (t, h) = attrs(c)
            .into_iter()
            .find(|(t, _)| t & 0x7fff == NFTA_CHAIN_HOOK)
            .unwrap();
        assert_eq!(t, NFTA_CHAIN_HOOK | 0x8000, "nested");
        (
            find(h, NFTA_HOOK_HOOKNUM).to_vec(),
            find(h, NFTA_HOOK_PRIORITY).to_vec(),
        )
    };
    assert_eq!(
        hook(&chains[0]),
        (vec![0, 0, 0, 0], vec![0xff, 0xff, 0xff, 0x6a]),
        "guard: prerouting at -150"
    );
    assert_eq!(
        hook(&chains[1]),
        (vec![0, 0, 0, 0], vec![0xff, 0xff, 0xff, 0x9c])
    );
    assert_eq!(hook(&chains[2]).0, vec![0, 0, 0, 3], "output");
    assert_eq!(hook(&chains[3]), (vec![0, 0, 0, 4], vec![0, 0, 0, 100]));
    assert_eq!(hook(&chains[5]), (vec![0, 0, 0, 1], vec![0, 0, 0, 0]));
    assert_eq!(find(&chains[0], NFTA_CHAIN_TYPE), b"filter\0");
    assert_eq!(find(&chains[1], NFTA_CHAIN_TYPE), b"nat\0");
    assert_eq!(find(&chains[4], NFTA_CHAIN_TYPE), b"filter\0");
    assert_eq!(find(&chains[4], NFTA_CHAIN_POLICY), &[0, 0, 0, 1], "accept");
}

#[test]
fn rules_say_in_nft_words_what_they_do() {
    let texts: Vec<String> = rules::chains(&small())
        .iter()
        .flat_map(|c| c.rules.iter().map(|r| format!("{}: {}", c.name, r.text)))
        .collect();
    let dnat = "meta nfproto ipv4 fib daddr type local tcp dport 8080 dnat ip to 10.88.0.2:80";
    let want = [
        r#"guard: iifname "keel0" ip saddr 127.0.0.0/8 drop"#.into(),
        r#"guard: iifname "keel0" ip daddr 127.0.0.0/8 drop"#.into(),
        format!("prerouting: {dnat}"),
        format!("output: {dnat}"),
        r#"postrouting: ip saddr 10.88.0.0/16 oifname != "keel0" masquerade"#.into(),
        r#"postrouting: ip saddr 127.0.0.0/8 oifname "keel0" masquerade"#.into(),
        r#"postrouting: ct status dnat oifname "keel0" iifname "keel0" masquerade"#.into(),
        "forward: ct state established,related accept".into(),
        "forward: ct status dnat accept".into(),
        r#"forward: iifname "keel0" accept"#.into(),
        r#"forward: oifname "keel0" drop"#.into(),
        "forward: drop".into(),
        r#"input: iifname "keel0" ct state established,related accept"#.into(),
        r#"input: iifname "keel0" meta l4proto icmp accept"#.into(),
        r#"input: iifname "keel0" icmpv6 type nd-router-advert drop"#.into(),
        r#"input: iifname "keel0" icmpv6 type nd-redirect drop"#.into(),
        r#"input: iifname "keel0" meta l4proto ipv6-icmp accept"#.into(),
        r#"input: iifname "keel0" udp dport 67 accept"#.into(),
        r#"input: iifname "keel0" udp dport 547 accept"#.into(),
        r#"input: iifname "keel0" udp dport 53 accept"#.into(),
        r#"input: iifname "keel0" meta l4proto tcp reject with tcp reset"#.into(),
        r#"input: iifname "keel0" reject"#.into(),
    ];
    assert_eq!(texts, want);
}

// Bytes as nft 1.0.6 sends them (strace of `nft -f`), lengths in host
// order.
#[cfg(target_endian = "little")]
#[test]
fn expressions_are_encoded_as_nft_encodes_them() {
    let meta_nfproto = b"\x24\x00\x01\x80\x09\x00\x01\x00meta\x00\x00\x00\x00\
        \x14\x00\x02\x80\x08\x00\x02\x00\x00\x00\x00\x0f\x08\x00\x01\x00\x00\x00\x00\x01";
    assert_eq!(expr::meta(expr::NFT_META_NFPROTO), meta_nfproto);
    let cmp_ipv4 = b"\x2c\x00\x01\x80\x08\x00\x01\x00cmp\x00\
        \x20\x00\x02\x80\x08\x00\x01\x00\x00\x00\x00\x01\x08\x00\x02\x00\x00\x00\x00\x00\
        \x0c\x00\x03\x80\x05\x00\x01\x00\x02\x00\x00\x00";
    assert_eq!(expr::cmp(expr::NFT_CMP_EQ, &[2]), cmp_ipv4);
    let icmpx = b"\x24\x00\x01\x80\x0b\x00\x01\x00reject\x00\x00\
        \x14\x00\x02\x80\x08\x00\x01\x00\x00\x00\x00\x02\x05\x00\x02\x00\x01\x00\x00\x00";
    assert_eq!(expr::reject(2, 1), icmpx);
    let masq = b"\x14\x00\x01\x80\x09\x00\x01\x00masq\x00\x00\x00\x00\x04\x00\x02\x80";
    assert_eq!(expr::masq(), masq);
    let accept = b"\x30\x00\x01\x80\x0e\x00\x01\x00immediate\x00\x00\x00\
        \x1c\x00\x02\x80\x08\x00\x01\x00\x00\x00\x00\x00\
        \x10\x00\x02\x80\x0c\x00\x02\x80\x08\x00\x01\x00\x00\x00\x00\x01";
    assert_eq!(expr::verdict(expr::NF_ACCEPT), accept);
}

#[test]
fn prefixes_are_whole_bytes_or_the_masked_address() {
    let a = [10, 89, 3, 1];
    assert_eq!(rules::prefix_bytes(&a, 16), (vec![10, 89], None));
    assert_eq!(
        rules::prefix_bytes(&a, 20),
        (vec![10, 89, 0, 0], Some(vec![255, 255, 240, 0]))
    );
    assert_eq!(rules::prefix_bytes(&a, 32), (a.to_vec(), None));
    assert_eq!(rules::prefix_bytes(&a, 0), (vec![], None));
}

#[test]
fn names_and_prefixes_are_checked_before_anything_is_sent() {
    let mut r = small();
    r.bridges[0].name = "a-name-of-16-chr".into();
    assert_eq!(
        apply(&r),
        Err(NftError::BridgeName("a-name-of-16-chr".into()))
    );
    r.bridges[0].name = "keel 0".into();
    assert!(matches!(apply(&r), Err(NftError::BridgeName(_))));
    let mut r = small();
    r.bridges[0].v6 = Some(("fd00::1".parse().unwrap(), 129));
    assert_eq!(
        validate(&r),
        Err(NftError::Prefix {
            bridge: "keel0".into(),
            addr: "fd00::1".parse().unwrap(),
            prefix: 129,
        })
    );
    assert_eq!(validate(&small()), Ok(()));
}

#[test]
fn a_refusal_names_the_message_by_its_seq() {
    let m = messages(&small());
    assert_eq!(describe(&m, FIRST_SEQ), "the batch (its commit)");
    assert_eq!(describe(&m, FIRST_SEQ + 2), "deleting table inet keel");
    assert_eq!(
        describe(&m, FIRST_SEQ + 4),
        "chain guard (type filter hook prerouting priority -150)"
    );
    assert_eq!(
        describe(&m, FIRST_SEQ + 7),
        "chain prerouting (type nat hook prerouting priority -100)"
    );
    assert_eq!(
        describe(&m, FIRST_SEQ + 8),
        "rule 1 of chain prerouting: meta nfproto ipv4 fib daddr type local \
         tcp dport 8080 dnat ip to 10.88.0.2:80"
    );
    assert!(describe(&m, 9999).contains("not one of the batch"));
    let e = NftError::Refused {
        what: describe(&m, FIRST_SEQ + 2),
        seq: FIRST_SEQ + 2,
        errno: libc::ENOENT,
    };
    assert!(e.to_string().contains("deleting table inet keel"), "{e}");
    assert!(e.to_string().contains("No such file"), "{e}");
}

#[test]
fn seqs_wrap_without_panicking() {
    let b = batch(&Ruleset::default(), u32::MAX - 1);
    let m = msgs(&b);
    assert_eq!(m[0].2, u32::MAX - 1);
    assert_eq!(m[2].2, 0);
    assert_eq!(m[m.len() - 1].0, NFNL_MSG_BATCH_END);
}

//! `table inet keel` as the kernel holds it, read back with an
//! NFT_MSG_GETRULE dump and rendered expression by expression, for
//! `keelctl network`: what is in force, not what keel-init meant to put
//! there (a rule left behind shows up here).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use super::{
    errno, nfgenmsg, NftError, Socket, NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NFT_MSG_NEWRULE, TABLE,
};
use crate::net::netlink::{raw_message, NLA_F_NESTED, NLMSG_ERROR, NLM_F_REQUEST};

const NFT_MSG_GETRULE: u16 = (NFNL_SUBSYS_NFTABLES << 8) | 7;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_DONE: u16 = 3;
/// The one request's sequence number.
const DUMP_SEQ: u32 = 1;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// The attributes in `buf`: (type, nested, payload); a truncated one
/// ends the walk.
fn attrs(buf: &[u8]) -> Vec<(u16, bool, &[u8])> {
    let mut out = Vec::new();
    let mut rest = buf;
    while let (Some(len), Some(kind)) = (
        rest.get(..2)
            .map(|b| usize::from(u16::from_ne_bytes([b[0], b[1]]))),
        rest.get(2..4).map(|b| u16::from_ne_bytes([b[0], b[1]])),
    ) {
        let Some(payload) = rest.get(4..len).filter(|_| len >= 4) else {
            break;
        };
        out.push((kind & NLA_TYPE_MASK, kind & NLA_F_NESTED != 0, payload));
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    out
}

/// A value as it most likely reads: a name, an address, a port, a number.
fn value(b: &[u8]) -> String {
    let text = b.strip_suffix(&[0]).map(|t| {
        let mut t = t;
        while let Some(s) = t.strip_suffix(&[0]) {
            t = s;
        }
        t
    });
    if let Some(t) = text.filter(|t| !t.is_empty() && t.iter().all(|c| c.is_ascii_graphic())) {
        return format!("\"{}\"", String::from_utf8_lossy(t));
    }
    match b.len() {
        2 => u16::from_be_bytes([b[0], b[1]]).to_string(),
        4 => Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(),
        16 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(b);
            Ipv6Addr::from(o).to_string()
        }
        _ => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

/// Whether `p` is attributes end to end: the kernel's dump does not flag
/// the nested attributes of expressions (NLA_F_NESTED), so their shape
/// tells. A raw value (an address, a name, a port) never parses so: its
/// first two bytes as a length overrun it.
fn looks_nested(p: &[u8]) -> bool {
    let mut rest = p;
    while !rest.is_empty() {
        let Some(len) = rest
            .get(..2)
            .map(|b| usize::from(u16::from_ne_bytes([b[0], b[1]])))
        else {
            return false;
        };
        if len < 4 || len > rest.len() {
            return false;
        }
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    !p.is_empty()
}

/// An expression's data: numbers (the kernel's be32 attributes) and,
/// nested, the values it compares or loads.
fn data(buf: &[u8], depth: u8) -> String {
    let parts: Vec<String> = attrs(buf)
        .into_iter()
        .map(|(_, nested, p)| match (nested, p.len()) {
            (true, _) if depth < 4 => data(p, depth.saturating_add(1)),
            (false, _) if depth < 4 && looks_nested(p) => data(p, depth.saturating_add(1)),
            (false, 4) if depth == 0 => u32::from_be_bytes([p[0], p[1], p[2], p[3]]).to_string(),
            _ => value(p),
        })
        .collect();
    parts.join(" ")
}

/// One rule of the dump: `CHAIN: name(data) name(data) ...`.
fn rule(msg: &[u8]) -> Option<String> {
    // nlmsghdr (16), nfgenmsg (4), then the rule's attributes.
    let body = msg.get(20..)?;
    let mut chain = String::new();
    let mut exprs = Vec::new();
    for (kind, _, p) in attrs(body) {
        match kind {
            NFTA_RULE_CHAIN => chain = value(p).trim_matches('"').to_string(),
            NFTA_RULE_EXPRESSIONS => {
                for (_, _, elem) in attrs(p) {
                    let mut name = String::new();
                    let mut args = String::new();
                    for (k, _, q) in attrs(elem) {
                        match k {
                            NFTA_EXPR_NAME => name = value(q).trim_matches('"').to_string(),
                            NFTA_EXPR_DATA => args = data(q, 0),
                            _ => {}
                        }
                    }
                    exprs.push(format!("{name}({args})"));
                }
            }
            _ => {}
        }
    }
    Some(format!("{chain}: {}", exprs.join(" ")))
}

/// Every rule of `table inet keel` in the kernel; none if there is no
/// such table.
pub fn listing() -> Result<Vec<String>, NftError> {
    let s = Socket::open()?;
    let mut body = nfgenmsg(NFPROTO_INET, 0);
    crate::net::netlink::name_attr(&mut body, NFTA_RULE_TABLE, TABLE);
    let req = raw_message(NFT_MSG_GETRULE, NLM_F_REQUEST | NLM_F_DUMP, DUMP_SEQ, &body);
    // SAFETY: req is a live buffer of req.len() bytes; a NULL address
    // with length 0 sends to the kernel.
    let sent = unsafe {
        libc::sendto(
            s.fd.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            std::ptr::null(),
            0,
        )
    };
    if sent < 0 {
        return Err(NftError::Send {
            len: req.len(),
            errno: errno(),
        });
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: buf is a live, writable buffer of buf.len() bytes.
        let n = unsafe { libc::recv(s.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            return Err(NftError::Receive {
                waiting_for: "the rules of table inet keel".into(),
                errno: e,
            });
        };
        let rest = buf.get(..n).unwrap_or_default();
        if rest.is_empty() {
            return Ok(out);
        }
        for msg in crate::net::netlink::messages(rest) {
            let kind = u16::from_ne_bytes([msg[4], msg[5]]);
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    return match crate::net::netlink::ack_errno(msg, DUMP_SEQ).unwrap_or(0) {
                        0 => Ok(out),
                        libc::ENOENT => Ok(Vec::new()),
                        errno => Err(NftError::Receive {
                            waiting_for: "the rules of table inet keel".into(),
                            errno,
                        }),
                    };
                }
                NFT_MSG_NEWRULE => out.extend(rule(msg)),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_as_names_addresses_and_ports() {
        let mut name = b"kn-other".to_vec();
        name.resize(16, 0);
        assert_eq!(value(&name), "\"kn-other\"");
        assert_eq!(value(&[10, 88, 0, 2]), "10.88.0.2");
        assert_eq!(value(&8080u16.to_be_bytes()), "8080");
        assert_eq!(
            value(&[0xfd, 0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]),
            "fd88::2"
        );
        assert_eq!(value(&[1, 2, 3]), "010203");
    }

    #[test]
    fn a_truncated_attribute_ends_the_walk() {
        let mut b = Vec::new();
        crate::net::netlink::attr(&mut b, 2, b"abc\0");
        b.extend_from_slice(&[40, 0, 1, 0]);
        let a = attrs(&b);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].0, 2);
        assert!(rule(&[0; 10]).is_none());
    }
}

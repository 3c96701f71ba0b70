//! nf_tables expressions, each encoded as one `NFTA_LIST_ELEM` of a rule's
//! `NFTA_RULE_EXPRESSIONS`: `NFTA_EXPR_NAME`, then its attributes nested in
//! `NFTA_EXPR_DATA`. Numbers are from the kernel's uapi
//! `linux/netfilter/nf_tables.h`; attribute integers are big-endian, as the
//! kernel reads them (`ntohl(nla_get_be32(..))`). Values compared or loaded
//! into registers are the packet's bytes (ports, addresses: network order)
//! or the kernel's own host-order u32s (ct state and status, fib's route
//! type).

use crate::net::netlink::attr;

use crate::net::netlink::NLA_F_NESTED;

const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;

/// The verdict register, and the first two 16-byte data registers.
const NFT_REG_VERDICT: u32 = 0;
pub(super) const NFT_REG_1: u32 = 1;
pub(super) const NFT_REG_2: u32 = 2;

pub(super) const NF_DROP: u32 = 0;
pub(super) const NF_ACCEPT: u32 = 1;

pub(super) const NFT_META_IIFNAME: u32 = 6;
pub(super) const NFT_META_OIFNAME: u32 = 7;
pub(super) const NFT_META_NFPROTO: u32 = 15;
pub(super) const NFT_META_L4PROTO: u32 = 16;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;

pub(super) const NFT_CMP_EQ: u32 = 0;
pub(super) const NFT_CMP_NEQ: u32 = 1;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;

pub(super) const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub(super) const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;

const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;

const NFTA_FIB_DREG: u16 = 1;
const NFTA_FIB_RESULT: u16 = 2;
const NFTA_FIB_FLAGS: u16 = 3;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;

pub(super) const NFT_CT_STATE: u32 = 0;
pub(super) const NFT_CT_STATUS: u32 = 2;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;

const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;

const NFT_NAT_DNAT: u32 = 1;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFTA_NAT_FLAGS: u16 = 7;
/// `linux/netfilter/nf_nat.h`: the rule gives a port (nft sets it too).
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 1 << 1;

pub(super) const NFT_REJECT_TCP_RST: u32 = 1;
pub(super) const NFT_REJECT_ICMPX_UNREACH: u32 = 2;
pub(super) const NFT_REJECT_ICMPX_PORT_UNREACH: u8 = 1;
const NFTA_REJECT_TYPE: u16 = 1;
const NFTA_REJECT_ICMP_CODE: u16 = 2;

/// A nested attribute.
pub(super) fn nested(out: &mut Vec<u8>, kind: u16, inner: &[u8]) {
    attr(out, kind | NLA_F_NESTED, inner);
}

/// A big-endian u32 attribute.
pub(super) fn be32(out: &mut Vec<u8>, kind: u16, v: u32) {
    attr(out, kind, &v.to_be_bytes());
}

/// A NUL-terminated string attribute, as rtnetlink's names.
pub(super) use crate::net::netlink::name_attr as string;

/// An interface name as `meta iifname` loads it: IFNAMSIZ (16) bytes,
/// zero-padded (longer names are refused before a batch is built; here
/// they would be cut to 15 bytes and the NUL).
pub(super) fn ifname(name: &str) -> [u8; 16] {
    let mut b = [0u8; 16];
    for (d, s) in b.iter_mut().take(15).zip(name.bytes()) {
        *d = s;
    }
    b
}

/// One expression: the list element with its name and data.
fn expr(name: &str, data: &[u8]) -> Vec<u8> {
    let mut e = Vec::new();
    string(&mut e, NFTA_EXPR_NAME, name);
    nested(&mut e, NFTA_EXPR_DATA, data);
    let mut elem = Vec::new();
    nested(&mut elem, NFTA_LIST_ELEM, &e);
    elem
}

/// `NFTA_DATA_VALUE` nested in `kind`.
fn value(out: &mut Vec<u8>, kind: u16, bytes: &[u8]) {
    let mut d = Vec::new();
    attr(&mut d, NFTA_DATA_VALUE, bytes);
    nested(out, kind, &d);
}

/// Load meta `key` into register 1.
pub(super) fn meta(key: u32) -> Vec<u8> {
    let mut d = Vec::new();
    be32(&mut d, NFTA_META_KEY, key);
    be32(&mut d, NFTA_META_DREG, NFT_REG_1);
    expr("meta", &d)
}

/// Compare register 1 with `bytes`.
pub(super) fn cmp(op: u32, bytes: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    be32(&mut d, NFTA_CMP_SREG, NFT_REG_1);
    be32(&mut d, NFTA_CMP_OP, op);
    value(&mut d, NFTA_CMP_DATA, bytes);
    expr("cmp", &d)
}

const NFT_RANGE_EQ: u32 = 0;
const NFTA_RANGE_SREG: u16 = 1;
const NFTA_RANGE_OP: u16 = 2;
const NFTA_RANGE_FROM_DATA: u16 = 3;
const NFTA_RANGE_TO_DATA: u16 = 4;

/// Register 1 within `from..=to` (compared as bytes, so big-endian ports
/// compare as numbers).
pub(super) fn range(from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    be32(&mut d, NFTA_RANGE_SREG, NFT_REG_1);
    be32(&mut d, NFTA_RANGE_OP, NFT_RANGE_EQ);
    value(&mut d, NFTA_RANGE_FROM_DATA, from);
    value(&mut d, NFTA_RANGE_TO_DATA, to);
    expr("range", &d)
}

/// Load `len` bytes at `offset` of header `base` into register 1.
pub(super) fn payload(base: u32, offset: u32, len: u32) -> Vec<u8> {
    let mut d = Vec::new();
    be32(&mut d, NFTA_PAYLOAD_DREG, NFT_REG_1);
    be32(&mut d, NFTA_PAYLOAD_BASE, base);
    be32(&mut d, NFTA_PAYLOAD_OFFSET, offset);
    be32(&mut d, NFTA_PAYLOAD_LEN, len);
    expr("payload", &d)
}

/// Register 1 &= `mask` (xor 0), over the mask's length.
pub(super) fn bitwise(mask: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    be32(&mut d, NFTA_BITWISE_SREG, NFT_REG_1);
    be32(&mut d, NFTA_BITWISE_DREG, NFT_REG_1);
    // A mask is at most an IPv6 address or a u32.
    be32(&mut d, NFTA_BITWISE_LEN, mask.len() as u32);
    value(&mut d, NFTA_BITWISE_MASK, mask);
    value(&mut d, NFTA_BITWISE_XOR, &vec![0; mask.len()]);
    expr("bitwise", &d)
}

/// `fib daddr type`: the route type of the destination into register 1.
pub(super) fn fib_daddr_type() -> Vec<u8> {
    let mut d = Vec::new();
    be32(&mut d, NFTA_FIB_FLAGS, NFTA_FIB_F_DADDR);
    be32(&mut d, NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE);
    be32(&mut d, NFTA_FIB_DREG, NFT_REG_1);
    expr("fib", &d)
}

/// Load conntrack `key` into register 1.
pub(super) fn ct(key: u32) -> Vec<u8> {
    let mut d = Vec::new();
    be32(&mut d, NFTA_CT_KEY, key);
    be32(&mut d, NFTA_CT_DREG, NFT_REG_1);
    expr("ct", &d)
}

/// The verdict: `NF_ACCEPT` or `NF_DROP`.
pub(super) fn verdict(code: u32) -> Vec<u8> {
    let mut v = Vec::new();
    be32(&mut v, NFTA_VERDICT_CODE, code);
    let mut data = Vec::new();
    nested(&mut data, NFTA_DATA_VERDICT, &v);
    let mut d = Vec::new();
    be32(&mut d, NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
    nested(&mut d, NFTA_IMMEDIATE_DATA, &data);
    expr("immediate", &d)
}

/// Load `bytes` into register `reg`.
pub(super) fn immediate(reg: u32, bytes: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    be32(&mut d, NFTA_IMMEDIATE_DREG, reg);
    value(&mut d, NFTA_IMMEDIATE_DATA, bytes);
    expr("immediate", &d)
}

/// DNAT to the address in register 1 and the port in register 2;
/// `nfproto` (NFPROTO_IPV4 or NFPROTO_IPV6) says which family the address
/// is, as an inet-family nat needs.
pub(super) fn dnat(nfproto: u8) -> Vec<u8> {
    let mut d = Vec::new();
    be32(&mut d, NFTA_NAT_TYPE, NFT_NAT_DNAT);
    be32(&mut d, NFTA_NAT_FAMILY, u32::from(nfproto));
    be32(&mut d, NFTA_NAT_REG_ADDR_MIN, NFT_REG_1);
    be32(&mut d, NFTA_NAT_REG_PROTO_MIN, NFT_REG_2);
    be32(&mut d, NFTA_NAT_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED);
    expr("nat", &d)
}

/// Masquerade: SNAT to the outgoing interface's address.
pub(super) fn masq() -> Vec<u8> {
    expr("masq", &[])
}

/// Reject with `kind` (`NFT_REJECT_*`) and `code` (an ICMPX code; a TCP
/// reset has none and nft sends 0).
pub(super) fn reject(kind: u32, code: u8) -> Vec<u8> {
    let mut d = Vec::new();
    be32(&mut d, NFTA_REJECT_TYPE, kind);
    attr(&mut d, NFTA_REJECT_ICMP_CODE, &[code]);
    expr("reject", &d)
}

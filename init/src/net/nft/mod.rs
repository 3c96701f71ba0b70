//! The container networks' NAT and firewall: one nf_tables table,
//! `inet keel`, replaced as a whole in one atomic batch over a
//! NETLINK_NETFILTER socket.
//!
//! Hand-written nfnetlink, like the rtnetlink of [`crate::net::netlink`]
//! (whose framing it shares), because PID 1 can neither link C libraries
//! nor shell out, and no Rust crate fits: rustables is GPL, `nf_tables` 0.1
//! has no nat or ct expressions, `nftnl` needs libnftnl, and `nftables`
//! runs the `nft` binary. Pure functions build the bytes ([`batch`], tested
//! for them); [`apply`] sends them and reads every acknowledgement.
//!
//! The table, in nft's words (`nft list table inet keel` shows these rules):
//! - `guard` (filter, prerouting, -150, before NAT): nothing from a
//!   bridge comes from or goes to `127.0.0.0/8`. The bridges have
//!   `route_localnet` on (the caller sets it per bridge) so that the
//!   host's own connections to published ports at 127.0.0.1 can be sent
//!   on to a container; their answers still have the bridge's address
//!   here.
//! - `prerouting` and `output` (nat, priority -100): per published port,
//!   `meta nfproto ipv4 fib daddr type local tcp dport H dnat ip to A:P`
//!   (ipv6 and `dnat ip6` for a v6 container). `output` is how the host's
//!   own processes reach published ports on the host's addresses.
//! - `postrouting` (nat, 100): per bridge, its subnets masqueraded when
//!   they leave through another interface; the host's loopback sources
//!   (`127.0.0.0/8`) masqueraded into the bridge; and the hairpin,
//!   `ct status dnat oifname BR iifname BR masquerade`, for a container
//!   reaching a published port of a neighbour on its own bridge.
//! - `forward` (filter, 0): established and DNATed traffic passes,
//!   bridges cannot reach each other, a bridge may go anywhere else,
//!   nothing un-DNATed enters a bridge from outside, and the rest is
//!   dropped unless [`Ruleset::route_others`].
//! - `input` (filter, 0, policy accept): from a bridge, the host answers
//!   established traffic, ICMP but router advertisements and redirects,
//!   DHCP and the [`Ruleset::containers_may_reach`] ports, and rejects
//!   the rest: containers do not reach host services by default. With
//!   [`Ruleset::inbound`], the host's other interfaces take only
//!   loopback, replies, ICMP, DHCP replies and the ports allowed, and
//!   drop the rest.
//!
//! Interfaces are matched by name (`iifname`), not index, so the rules do
//! not depend on when the bridges are created, or whether they exist yet.

mod dump;
pub use dump::listing;
mod expr;
mod rules;
#[cfg(test)]
mod tests;

use crate::net::netlink::{acks, message, raw_message, NLM_F_CREATE, NLM_F_REQUEST};
use expr::{be32, nested, string};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// A container bridge: its name and its own address and prefix per family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    pub name: String,
    pub v4: Option<(Ipv4Addr, u8)>,
    pub v6: Option<(Ipv6Addr, u8)>,
}

/// A published port: the host's `host_port` forwarded to `to:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dnat {
    pub proto: Proto,
    pub host_port: u16,
    pub to: IpAddr,
    pub port: u16,
}

/// Ports `first..=last` of the host itself, for one protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub proto: Proto,
    pub first: u16,
    pub last: u16,
}

/// Ports of the host let in from `from` (a subnet), or from anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    pub ports: HostPort,
    pub from: Option<(IpAddr, u8)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    pub bridges: Vec<Bridge>,
    pub dnat: Vec<Dnat>,
    /// Host ports containers may connect to; every other refuses them.
    pub containers_may_reach: Vec<HostPort>,
    /// The host's own interfaces: None takes every connection; Some
    /// takes only replies, loopback, ICMP, DHCP replies and these.
    pub inbound: Option<Vec<Allowed>>,
    /// The host routes between its other interfaces too (its config
    /// turns forwarding on itself): forwarding that is no container
    /// network's is let through rather than dropped.
    pub route_others: bool,
}

impl Ruleset {
    /// Whether it has nothing to say: no table is needed.
    pub fn is_empty(&self) -> bool {
        self.bridges.is_empty() && self.dnat.is_empty() && self.inbound.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NftError {
    #[error(
        "bridge name {0:?} is not an interface name (1 to 15 bytes, no '/', ':', space or NUL)"
    )]
    BridgeName(String),
    #[error("bridge {bridge}: prefix /{prefix} is longer than its address {addr}")]
    Prefix {
        bridge: String,
        addr: IpAddr,
        prefix: u8,
    },
    #[error("opening a NETLINK_NETFILTER socket: {}", os(.errno))]
    Socket { errno: i32 },
    #[error("sending the nf_tables batch ({len} bytes): {}", os(.errno))]
    Send { len: usize, errno: i32 },
    #[error("reading the kernel's answer to {waiting_for}: {}", os(.errno))]
    Receive { waiting_for: String, errno: i32 },
    #[error("nf_tables refused {what} (message seq {seq}): {}", os(.errno))]
    Refused { what: String, seq: u32, errno: i32 },
}

fn os(errno: &i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(*errno)
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// NLMSG_MIN_TYPE and the one after it.
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
/// nf_tables message types: the subsystem in the high byte.
const NFT_MSG_NEWTABLE: u16 = NFNL_SUBSYS_NFTABLES << 8;
const NFT_MSG_DELTABLE: u16 = (NFNL_SUBSYS_NFTABLES << 8) | 2;
const NFT_MSG_NEWCHAIN: u16 = (NFNL_SUBSYS_NFTABLES << 8) | 3;
const NFT_MSG_NEWRULE: u16 = (NFNL_SUBSYS_NFTABLES << 8) | 6;
const NLM_F_APPEND: u16 = 0x800;
const NFPROTO_INET: u8 = 1;
const NFPROTO_UNSPEC: u8 = 0;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;

const TABLE: &str = "keel";

/// One message of a batch before it has a seq, and what it is, for errors.
#[derive(Debug)]
struct Msg {
    kind: u16,
    flags: u16,
    body: Vec<u8>,
    what: String,
}

/// struct nfgenmsg: family, version 0, resource id (big-endian).
fn nfgenmsg(family: u8, res_id: u16) -> Vec<u8> {
    let [hi, lo] = res_id.to_be_bytes();
    vec![family, 0, hi, lo]
}

fn object(kind: u16, flags: u16, attrs: &[u8], what: String) -> Msg {
    let mut body = nfgenmsg(NFPROTO_INET, 0);
    body.extend_from_slice(attrs);
    Msg {
        kind,
        flags,
        body,
        what,
    }
}

fn new_table() -> Msg {
    let mut a = Vec::new();
    string(&mut a, NFTA_TABLE_NAME, TABLE);
    be32(&mut a, NFTA_TABLE_FLAGS, 0);
    object(
        NFT_MSG_NEWTABLE,
        NLM_F_CREATE,
        &a,
        format!("adding table inet {TABLE}"),
    )
}

fn delete_table() -> Msg {
    let mut a = Vec::new();
    string(&mut a, NFTA_TABLE_NAME, TABLE);
    object(
        NFT_MSG_DELTABLE,
        0,
        &a,
        format!("deleting table inet {TABLE}"),
    )
}

fn new_chain(c: &rules::Chain) -> Msg {
    let mut hook = Vec::new();
    be32(&mut hook, NFTA_HOOK_HOOKNUM, c.hook);
    be32(&mut hook, NFTA_HOOK_PRIORITY, c.priority as u32);
    let mut a = Vec::new();
    string(&mut a, NFTA_CHAIN_TABLE, TABLE);
    string(&mut a, NFTA_CHAIN_NAME, c.name);
    string(&mut a, NFTA_CHAIN_TYPE, c.kind);
    be32(&mut a, NFTA_CHAIN_POLICY, expr::NF_ACCEPT);
    nested(&mut a, NFTA_CHAIN_HOOK, &hook);
    object(
        NFT_MSG_NEWCHAIN,
        NLM_F_CREATE,
        &a,
        format!(
            "chain {} (type {} hook {} priority {})",
            c.name,
            c.kind,
            rules::hook_name(c.hook),
            c.priority
        ),
    )
}

fn new_rule(chain: &str, n: usize, r: &rules::Rule) -> Msg {
    let mut a = Vec::new();
    string(&mut a, NFTA_RULE_TABLE, TABLE);
    string(&mut a, NFTA_RULE_CHAIN, chain);
    nested(&mut a, NFTA_RULE_EXPRESSIONS, &r.exprs);
    object(
        NFT_MSG_NEWRULE,
        NLM_F_CREATE | NLM_F_APPEND,
        &a,
        format!("rule {n} of chain {chain}: {}", r.text),
    )
}

/// The table swap: add (so the delete finds it), delete (with whatever it
/// held), add again, then the chains, each followed by its rules.
fn messages(r: &Ruleset) -> Vec<Msg> {
    let mut m = vec![new_table(), delete_table(), new_table()];
    for c in rules::chains(r) {
        m.push(new_chain(&c));
        for (i, rule) in c.rules.iter().enumerate() {
            m.push(new_rule(c.name, i.saturating_add(1), rule));
        }
    }
    m
}

/// The seq of the `i`th message after the batch begin at `seq`.
fn seq_of(seq: u32, i: usize) -> u32 {
    // Batches are far below 4 G messages; seqs wrap as netlink's do.
    seq.wrapping_add(1).wrapping_add(i as u32)
}

/// Frame `msgs` as one batch: begin (`seq`), each message asking for an
/// acknowledgement (`seq + 1`...), end. Begin and end ask for none: kernels
/// before 6.x do not acknowledge them, and a failed commit is reported
/// against the begin's seq anyway.
fn encode(msgs: &[Msg], seq: u32) -> Vec<u8> {
    let batch = nfgenmsg(NFPROTO_UNSPEC, NFNL_SUBSYS_NFTABLES);
    let mut out = raw_message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, &batch);
    for (i, m) in msgs.iter().enumerate() {
        out.extend(message(m.kind, m.flags, seq_of(seq, i), &m.body));
    }
    let end = seq_of(seq, msgs.len());
    out.extend(raw_message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, end, &batch));
    out
}

/// The whole nfnetlink batch that replaces `table inet keel` with `r`,
/// its first message (the batch begin) numbered `seq`. Names and prefixes
/// are as given: [`apply`] checks them first.
pub fn batch(r: &Ruleset, seq: u32) -> Vec<u8> {
    encode(&messages(r), seq)
}

/// A bridge name the kernel would take (`dev_valid_name`) and that fits in
/// IFNAMSIZ with its NUL.
fn valid_name(n: &str) -> bool {
    (1..=15).contains(&n.len())
        && n != "."
        && n != ".."
        && !n
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

fn validate(r: &Ruleset) -> Result<(), NftError> {
    for b in &r.bridges {
        if !valid_name(&b.name) {
            return Err(NftError::BridgeName(b.name.clone()));
        }
        let too_long = [
            b.v4.filter(|(_, p)| *p > 32)
                .map(|(a, p)| (IpAddr::V4(a), p)),
            b.v6.filter(|(_, p)| *p > 128)
                .map(|(a, p)| (IpAddr::V6(a), p)),
        ];
        if let Some((addr, prefix)) = too_long.into_iter().flatten().next() {
            return Err(NftError::Prefix {
                bridge: b.name.clone(),
                addr,
                prefix,
            });
        }
    }
    Ok(())
}

/// Replace `table inet keel` with `r`, atomically: the kernel applies the
/// whole batch or none of it.
pub fn apply(r: &Ruleset) -> Result<(), NftError> {
    validate(r)?;
    Socket::open()?.run(&messages(r))
}

/// Delete `table inet keel` and everything in it; a table already gone is
/// done.
pub fn remove() -> Result<(), NftError> {
    match Socket::open()?.run(&[delete_table()]) {
        Err(NftError::Refused { errno, .. }) if errno == libc::ENOENT => Ok(()),
        r => r,
    }
}

/// The first seq of every batch: each batch has a socket of its own.
const FIRST_SEQ: u32 = 1;
/// How long the kernel may take to answer a batch, in seconds.
const ANSWER_TIMEOUT_SECS: u8 = 10;

/// A NETLINK_NETFILTER socket.
#[derive(Debug)]
struct Socket {
    fd: OwnedFd,
}

impl Socket {
    fn open() -> Result<Socket, NftError> {
        // SAFETY: socket(2) with constant arguments; the result is checked
        // before it is owned.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(NftError::Socket { errno: errno() });
        }
        // SAFETY: fd is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let s = Socket { fd };
        // Errors echo only the failing message's header, not all of it.
        s.set(libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1);
        let timeout = libc::timeval {
            tv_sec: ANSWER_TIMEOUT_SECS.into(),
            tv_usec: 0,
        };
        s.set(libc::SOL_SOCKET, libc::SO_RCVTIMEO, timeout);
        Ok(s)
    }

    /// setsockopt, best effort: a socket without the option still works,
    /// and what then fails (a batch too large to send, lost
    /// acknowledgements) is reported where it does.
    fn set<T>(&self, level: libc::c_int, name: libc::c_int, value: T) -> bool {
        // SAFETY: value is a live T for the call and its size is passed.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                std::ptr::from_ref(&value).cast(),
                std::mem::size_of::<T>() as libc::socklen_t,
            )
        };
        r == 0
    }

    /// Room for `len` bytes: as root past the system's maximum (FORCE),
    /// else up to it.
    fn size_buffer(&self, force: libc::c_int, plain: libc::c_int, len: usize) {
        let len = libc::c_int::try_from(len).unwrap_or(libc::c_int::MAX);
        if !self.set(libc::SOL_SOCKET, force, len) {
            self.set(libc::SOL_SOCKET, plain, len);
        }
    }

    /// Send `msgs` as one batch; wait until each is acknowledged, or the
    /// first refusal.
    fn run(&self, msgs: &[Msg]) -> Result<(), NftError> {
        let bytes = encode(msgs, FIRST_SEQ);
        // The batch must go in one datagram; the kernel queues every
        // acknowledgement before we read one (about 1 KiB each with its
        // socket buffer overhead).
        self.size_buffer(
            libc::SO_SNDBUFFORCE,
            libc::SO_SNDBUF,
            bytes.len().saturating_add(4096),
        );
        let acks_room = msgs.len().saturating_add(16).saturating_mul(2048);
        self.size_buffer(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, acks_room);
        // SAFETY: bytes is a live buffer of bytes.len() bytes; a NULL
        // address with length 0 sends to the kernel on an unconnected
        // netlink socket.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                std::ptr::null(),
                0,
            )
        };
        if sent < 0 {
            return Err(NftError::Send {
                len: bytes.len(),
                errno: errno(),
            });
        }
        let mut pending = vec![true; msgs.len()];
        let mut left = msgs.len();
        let mut buf = vec![0u8; 65536];
        while left > 0 {
            // SAFETY: buf is a live, writable buffer of buf.len() bytes.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let Ok(n) = usize::try_from(n) else {
                let e = errno();
                if e == libc::EINTR {
                    continue;
                }
                let first = pending.iter().position(|p| *p).unwrap_or(0);
                return Err(NftError::Receive {
                    waiting_for: describe(msgs, seq_of(FIRST_SEQ, first)),
                    errno: e,
                });
            };
            for (seq, e) in acks(buf.get(..n).unwrap_or_default()) {
                if e != 0 {
                    return Err(NftError::Refused {
                        what: describe(msgs, seq),
                        seq,
                        errno: e,
                    });
                }
                let i = seq.wrapping_sub(seq_of(FIRST_SEQ, 0)) as usize;
                if let Some(p) = pending.get_mut(i).filter(|p| **p) {
                    *p = false;
                    left = left.saturating_sub(1);
                }
            }
        }
        Ok(())
    }
}

/// What the message numbered `seq` of the batch built from `msgs` is.
fn describe(msgs: &[Msg], seq: u32) -> String {
    if seq == FIRST_SEQ {
        return "the batch (its commit)".to_string();
    }
    let i = seq.wrapping_sub(seq_of(FIRST_SEQ, 0)) as usize;
    match msgs.get(i) {
        Some(m) => m.what.clone(),
        None => format!("message seq {seq}, not one of the batch"),
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

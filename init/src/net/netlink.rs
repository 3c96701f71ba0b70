//! Just enough rtnetlink to configure a host's interfaces from its config:
//! bring a link up (with an MTU), add an address, add a route. Messages are
//! built by pure functions (tested for their bytes); [`Netlink`] sends them
//! and reads the kernel's acknowledgement. The framing (attributes,
//! message headers, acknowledgements) is shared with nf_tables
//! ([`crate::net::nft`]), which speaks the same netlink.

use std::net::IpAddr;

use keel_formats::hostconfig::networks::bridge_mac;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub(crate) const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELADDR: u16 = 21;
const RTM_DELROUTE: u16 = 25;
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
const RTM_DELLINK: u16 = 17;
const NLM_F_EXCL: u16 = 0x200;
const IFLA_IFNAME: u16 = 3;
const IFLA_ADDRESS: u16 = 1;
const IFLA_MTU: u16 = 4;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_PID: u16 = 19;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
/// Nested attributes say so in their type.
/// Set on nested attributes, as libmnl and libnftnl do.
pub(crate) const NLA_F_NESTED: u16 = 0x8000;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
/// Routes keel-init adds say so (`proto static`).
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

fn family(a: &IpAddr) -> u8 {
    if a.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    }
}

pub(crate) fn octets(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

/// Append an attribute (type, payload), padded to 4 bytes.
pub fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    // Payloads are addresses, u32s, names and nf_tables rules of a few
    // expressions: far below the 64 KiB a length can say.
    let len = payload.len().saturating_add(4);
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// A NUL-terminated name, as netlink wants strings.
pub(crate) fn name_attr(out: &mut Vec<u8>, kind: u16, name: &str) {
    let mut z = name.as_bytes().to_vec();
    z.push(0);
    attr(out, kind, &z);
}

/// struct ifinfomsg for a new link: up at once when `up`.
fn ifinfo(index: u32, up: bool) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    b[0] = libc::AF_UNSPEC as u8;
    b[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
    if up {
        b[8..12].copy_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
        b[12..16].copy_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    }
    b
}

/// RTM_NEWLINK body: a bridge called `name`, up, with its own MAC
/// ([`bridge_mac`]).
pub fn new_bridge(name: &str) -> Vec<u8> {
    let mut b = ifinfo(0, true);
    name_attr(&mut b, IFLA_IFNAME, name);
    attr(&mut b, IFLA_ADDRESS, &bridge_mac(name));
    let mut info = Vec::new();
    name_attr(&mut info, IFLA_INFO_KIND, "bridge");
    attr(&mut b, IFLA_LINKINFO | NLA_F_NESTED, &info);
    b
}

/// RTM_NEWLINK body: a veth pair whose end `host` is up on the bridge
/// `master` and whose other end, `peer`, is created in the network
/// namespace of process `pid` (down: the container brings it up).
pub fn new_veth(host: &str, master: u32, peer: &str, pid: u32) -> Vec<u8> {
    let mut b = ifinfo(0, true);
    name_attr(&mut b, IFLA_IFNAME, host);
    attr(&mut b, IFLA_MASTER, &master.to_ne_bytes());
    let mut peer_msg = ifinfo(0, false);
    name_attr(&mut peer_msg, IFLA_IFNAME, peer);
    attr(&mut peer_msg, IFLA_NET_NS_PID, &pid.to_ne_bytes());
    let mut data = Vec::new();
    attr(&mut data, VETH_INFO_PEER | NLA_F_NESTED, &peer_msg);
    let mut info = Vec::new();
    name_attr(&mut info, IFLA_INFO_KIND, "veth");
    attr(&mut info, IFLA_INFO_DATA | NLA_F_NESTED, &data);
    attr(&mut b, IFLA_LINKINFO | NLA_F_NESTED, &info);
    b
}

/// RTM_DELLINK body: the link called `name`.
pub fn del_link(name: &str) -> Vec<u8> {
    let mut b = ifinfo(0, false);
    name_attr(&mut b, IFLA_IFNAME, name);
    b
}

/// A whole netlink request that asks for an acknowledgement: header, then
/// `body`.
pub fn message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    raw_message(kind, flags | NLM_F_REQUEST | NLM_F_ACK, seq, body)
}

/// A whole netlink message with exactly `flags`: header, then `body`.
pub(crate) fn raw_message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    // Bodies are a few attributes, far below 4 GiB.
    let len = body.len().saturating_add(16);
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m
}

/// RTM_NEWLINK body: set IFF_UP on `index`, and the MTU if given.
pub fn link_up(index: u32, mtu: Option<u32>) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    // struct ifinfomsg: family, pad, type, index, flags, change.
    b[0] = libc::AF_UNSPEC as u8;
    b[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
    b[8..12].copy_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    b[12..16].copy_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    if let Some(m) = mtu {
        attr(&mut b, IFLA_MTU, &m.to_ne_bytes());
    }
    b
}

/// RTM_NEWADDR body: `addr/prefix` on `index`.
pub fn address(index: u32, addr: &IpAddr, prefix: u8) -> Vec<u8> {
    // struct ifaddrmsg: family, prefixlen, flags, scope, index.
    let mut b = vec![family(addr), prefix, 0, RT_SCOPE_UNIVERSE];
    b.extend_from_slice(&index.to_ne_bytes());
    let o = octets(addr);
    if addr.is_ipv4() {
        attr(&mut b, IFA_LOCAL, &o);
    }
    attr(&mut b, IFA_ADDRESS, &o);
    b
}

/// [`address`] usable at once: an IPv6 address keel-init hands out on
/// its own bridge is unique by construction, and duplicate address
/// detection would hold it back for a second or more.
pub fn address_nodad(index: u32, addr: &IpAddr, prefix: u8) -> Vec<u8> {
    let mut b = address(index, addr, prefix);
    if addr.is_ipv6() {
        attr(&mut b, IFA_FLAGS, &IFA_F_NODAD.to_ne_bytes());
    }
    b
}

/// RTM_NEWROUTE body: `dst/prefix` out of `index`, through `via` if given
/// (else the destination is on the link).
pub fn route(index: u32, dst: &IpAddr, prefix: u8, via: Option<&IpAddr>) -> Vec<u8> {
    let scope = if via.is_some() {
        RT_SCOPE_UNIVERSE
    } else {
        RT_SCOPE_LINK
    };
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope,
    // type, flags.
    let mut b = vec![
        family(dst),
        prefix,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_STATIC,
        scope,
        RTN_UNICAST,
    ];
    b.extend_from_slice(&0u32.to_ne_bytes());
    if prefix > 0 {
        attr(&mut b, RTA_DST, &octets(dst));
    }
    if let Some(g) = via {
        attr(&mut b, RTA_GATEWAY, &octets(g));
    }
    attr(&mut b, RTA_OIF, &index.to_ne_bytes());
    b
}

/// The error number in an acknowledgement (0: done), if `reply` is one for
/// `seq`.
pub fn ack_errno(reply: &[u8], seq: u32) -> Option<i32> {
    let u16_at = |o: usize| {
        Some(u16::from_ne_bytes(
            reply.get(o..)?.get(..2)?.try_into().ok()?,
        ))
    };
    let u32_at = |o: usize| {
        Some(u32::from_ne_bytes(
            reply.get(o..)?.get(..4)?.try_into().ok()?,
        ))
    };
    if u16_at(4)? != NLMSG_ERROR || u32_at(8)? != seq {
        return None;
    }
    // A negative errno; i32::MIN, which is none, still reads as a failure.
    Some((u32_at(16)? as i32).saturating_neg())
}

/// The index of interface `name` in this network namespace.
pub fn index_of(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: if_nametoindex reads the NUL-terminated string it is given.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Every acknowledgement among the messages of one read, as (seq, errno);
/// other messages and a truncated tail are skipped.
pub(crate) fn acks(buf: &[u8]) -> Vec<(u32, i32)> {
    messages(buf)
        .into_iter()
        .filter_map(|msg| {
            let seq = u32::from_ne_bytes(msg.get(8..12)?.try_into().ok()?);
            Some((seq, ack_errno(msg, seq)?))
        })
        .collect()
}

/// The whole messages of one read, each with its header (at least 16
/// bytes); a truncated tail is left out.
pub(crate) fn messages(buf: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = buf;
    while let Some(len) = rest.get(..4).and_then(|b| b.try_into().ok()) {
        let len = u32::from_ne_bytes(len) as usize;
        let Some(msg) = rest.get(..len).filter(|_| len >= 16) else {
            break;
        };
        out.push(msg);
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    out
}

/// A NETLINK_ROUTE socket.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    pub fn open() -> Result<Netlink, String> {
        // SAFETY: socket(2) with constant arguments; the result is checked
        // before it is owned.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(format!(
                "netlink socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: fd is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Netlink { fd, seq: 0 })
    }

    /// Create bridge `name` (up), or leave the one there as it is.
    pub fn ensure_bridge(&mut self, name: &str) -> Result<u32, String> {
        match self.send(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &new_bridge(name)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(format!("creating bridge {name}: {e}")),
        }
        let index = index_of(name).ok_or_else(|| format!("bridge {name}: gone after creation"))?;
        // One that was there, down, comes up too.
        self.request(
            RTM_NEWLINK,
            0,
            &link_up(index, None),
            &format!("bringing {name} up"),
        )?;
        Ok(index)
    }

    /// A veth pair: `host` up on bridge `master`, `peer` in the network
    /// namespace of `pid`.
    pub fn add_veth(
        &mut self,
        host: &str,
        master: u32,
        peer: &str,
        pid: u32,
    ) -> Result<(), String> {
        self.request(
            RTM_NEWLINK,
            NLM_F_CREATE | NLM_F_EXCL,
            &new_veth(host, master, peer, pid),
            &format!("creating veth {host}"),
        )
    }

    /// Link `index` a port of bridge `master`.
    pub fn set_master(&mut self, index: u32, master: u32) -> Result<(), String> {
        let mut body = ifinfo(index, false);
        attr(&mut body, IFLA_MASTER, &master.to_ne_bytes());
        self.request(
            RTM_NEWLINK,
            0,
            &body,
            &format!("putting link {index} on bridge {master}"),
        )
    }

    /// Remove link `name`; one already gone is fine.
    pub fn delete_link(&mut self, name: &str) -> Result<(), String> {
        self.remove(
            RTM_DELLINK,
            &del_link(name),
            libc::ENODEV,
            &format!("removing {name}"),
        )
    }

    /// `addr/prefix` on `index`, without duplicate address detection.
    pub fn add_address_nodad(
        &mut self,
        index: u32,
        addr: &IpAddr,
        prefix: u8,
    ) -> Result<(), String> {
        self.request(
            RTM_NEWADDR,
            NLM_F_CREATE | NLM_F_REPLACE,
            &address_nodad(index, addr, prefix),
            &format!("adding {addr}/{prefix}"),
        )
    }

    fn request(&mut self, kind: u16, flags: u16, body: &[u8], what: &str) -> Result<(), String> {
        self.send(kind, flags, body)
            .map_err(|e| format!("{what}: {e}"))
    }

    /// A removal: what is already gone (`gone`, the kernel's errno for
    /// that) is done.
    fn remove(&mut self, kind: u16, body: &[u8], gone: i32, what: &str) -> Result<(), String> {
        match self.send(kind, 0, body) {
            Err(e) if e.raw_os_error() == Some(gone) => Ok(()),
            r => r.map_err(|e| format!("{what}: {e}")),
        }
    }

    fn send(&mut self, kind: u16, flags: u16, body: &[u8]) -> std::io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let msg = message(kind, flags, self.seq, body);
        // SAFETY: msg is a live buffer of msg.len() bytes; a NULL address
        // with length 0 sends to the kernel on an unconnected netlink socket.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                std::ptr::null(),
                0,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: buf is a live, writable buffer of buf.len() bytes.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            match ack_errno(&buf[..n as usize], self.seq) {
                Some(0) => return Ok(()),
                Some(e) => return Err(std::io::Error::from_raw_os_error(e)),
                None => continue,
            }
        }
    }
}

/// The host's own network: interfaces from sysfs, changes through this
/// socket.
impl crate::net::interfaces::Net for Netlink {
    fn interfaces(&self) -> Vec<crate::net::interfaces::Iface> {
        crate::net::interfaces::sysfs_interfaces()
    }

    fn link_up(&mut self, index: u32, mtu: Option<u32>) -> Result<(), String> {
        self.request(RTM_NEWLINK, 0, &link_up(index, mtu), "bringing the link up")
    }

    fn add_address(&mut self, index: u32, addr: &IpAddr, prefix: u8) -> Result<(), String> {
        self.request(
            RTM_NEWADDR,
            NLM_F_CREATE | NLM_F_REPLACE,
            &address(index, addr, prefix),
            &format!("adding {addr}/{prefix}"),
        )
    }

    fn add_route(
        &mut self,
        index: u32,
        dst: &IpAddr,
        prefix: u8,
        via: Option<&IpAddr>,
    ) -> Result<(), String> {
        self.request(
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_REPLACE,
            &route(index, dst, prefix, via),
            &format!("adding the route to {dst}/{prefix}"),
        )
    }

    fn del_address(&mut self, index: u32, addr: &IpAddr, prefix: u8) -> Result<(), String> {
        self.remove(
            RTM_DELADDR,
            &address(index, addr, prefix),
            libc::EADDRNOTAVAIL,
            &format!("removing {addr}/{prefix}"),
        )
    }

    fn del_route(
        &mut self,
        index: u32,
        dst: &IpAddr,
        prefix: u8,
        via: Option<&IpAddr>,
    ) -> Result<(), String> {
        self.remove(
            RTM_DELROUTE,
            &route(index, dst, prefix, via),
            libc::ESRCH,
            &format!("removing the route to {dst}/{prefix}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bridge_mac_is_its_own_unicast_and_stable() {
        let m = bridge_mac("keel0");
        assert_eq!(m[0] & 0x03, 0x02, "locally administered, unicast");
        assert_eq!(m, bridge_mac("keel0"));
        assert_ne!(m, bridge_mac("kn-backend"));
        assert!(new_bridge("keel0").windows(6).any(|w| w == m));
    }

    #[test]
    fn an_ipv4_address_carries_local_and_address() {
        let b = address(2, &"10.0.2.15".parse().unwrap(), 24);
        assert_eq!(&b[..4], &[libc::AF_INET as u8, 24, 0, 0]);
        assert_eq!(u32::from_ne_bytes(b[4..8].try_into().unwrap()), 2);
        // IFA_LOCAL then IFA_ADDRESS, 8 bytes each.
        assert_eq!(b.len(), 8 + 8 + 8);
        assert_eq!(&b[8..16], &[8, 0, 2, 0, 10, 0, 2, 15]);
        assert_eq!(&b[16..24], &[8, 0, 1, 0, 10, 0, 2, 15]);
        let v6 = address(2, &"fd00::5".parse().unwrap(), 64);
        assert_eq!(v6.len(), 8 + 20, "IFA_ADDRESS only");
    }

    #[test]
    fn a_default_route_has_no_destination_and_a_gateway() {
        let gw: IpAddr = "10.0.2.2".parse().unwrap();
        let b = route(2, &"0.0.0.0".parse().unwrap(), 0, Some(&gw));
        assert_eq!(b[1], 0, "dst_len");
        assert_eq!(b[6], RT_SCOPE_UNIVERSE);
        assert_eq!(b.len(), 12 + 8 + 8, "RTA_GATEWAY and RTA_OIF");
        let link = route(2, &"192.168.0.0".parse().unwrap(), 16, None);
        assert_eq!(link[6], RT_SCOPE_LINK);
        assert_eq!(link.len(), 12 + 8 + 8, "RTA_DST and RTA_OIF");
    }

    #[test]
    fn messages_ask_for_an_ack_and_acks_are_read() {
        let m = message(RTM_NEWLINK, 0, 7, &link_up(3, Some(1400)));
        assert_eq!(
            u32::from_ne_bytes(m[..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(
            u16::from_ne_bytes(m[6..8].try_into().unwrap()),
            NLM_F_REQUEST | NLM_F_ACK
        );
        assert_eq!(m.len(), 16 + 16 + 8);
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack[8..12].copy_from_slice(&7u32.to_ne_bytes());
        assert_eq!(ack_errno(&ack, 7), Some(0));
        ack[16..20].copy_from_slice(&(-17i32).to_ne_bytes());
        assert_eq!(ack_errno(&ack, 7), Some(17));
        assert_eq!(ack_errno(&ack, 8), None, "another request's answer");
        ack[16..20].copy_from_slice(&i32::MIN.to_ne_bytes());
        assert_eq!(ack_errno(&ack, 7), Some(i32::MAX), "still a failure");
    }

    #[test]
    fn one_read_of_several_messages_yields_every_ack() {
        let ack = |seq: u32, errno: i32| {
            let mut body = errno.wrapping_neg().to_ne_bytes().to_vec();
            body.extend_from_slice(&[0; 16]);
            raw_message(NLMSG_ERROR, 0, seq, &body)
        };
        let mut buf = ack(3, 0);
        buf.extend(raw_message(RTM_NEWLINK, 0, 9, &[0; 4]));
        buf.extend(ack(4, 2));
        buf.extend_from_slice(&[40, 0, 0, 0, 2, 0]);
        assert_eq!(
            acks(&buf),
            vec![(3, 0), (4, 2)],
            "not the link, not the tail"
        );
        assert_eq!(acks(&[0; 20]), vec![], "a zero length ends the walk");
    }
}

//! Just enough rtnetlink to configure a host's interfaces from its config:
//! bring a link up (with an MTU), add an address, add a route. Messages are
//! built by pure functions (tested for their bytes); [`Netlink`] sends them
//! and reads the kernel's acknowledgement.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELADDR: u16 = 21;
const RTM_DELROUTE: u16 = 25;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const IFLA_MTU: u16 = 4;
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

fn octets(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

/// Append a route attribute (type, payload), padded to 4 bytes.
fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    // Payloads are addresses and u32s, at most 16 bytes.
    let len = payload.len().saturating_add(4);
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// A whole netlink message: header, then `body`.
pub fn message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    // Bodies are the few fixed-size attributes above.
    let len = body.len().saturating_add(16);
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
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
}

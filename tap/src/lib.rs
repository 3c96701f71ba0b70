//! Linux tap devices as keel uses them: keel-init makes each VM's tap
//! persistent and gives it to keel-vmm's user, keel-vmm then attaches to
//! it unprivileged. Both speak the same TUNSETIFF request, so it is
//! written once, here. Hand-written over libc rather than taken from a
//! tun crate: it is a handful of ioctls, and keel-vmm keeps to rust-vmm's
//! crates and libc.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// The tun/tap control device.
pub const TUN: &str = "/dev/net/tun";

/// Linux's interface names are at most 15 bytes, and a NUL.
pub const IFNAMSIZ: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap {name:?}: an interface name is 1 to {} bytes, not . or .., without /, :, white space or NUL", IFNAMSIZ - 1)]
    Name { name: String },
    #[error("{TUN}: {source}")]
    Tun { source: io::Error },
    #[error("tap {name}: {ioctl}: {source}")]
    Ioctl {
        name: String,
        ioctl: &'static str,
        source: io::Error,
    },
}

impl TapError {
    /// The system's error number, if the system refused.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            TapError::Name { .. } => None,
            TapError::Tun { source } | TapError::Ioctl { source, .. } => source.raw_os_error(),
        }
    }
}

/// What Linux accepts as an interface name (its dev_valid_name): 1 to 15
/// bytes, not `.` or `..`, without `/`, `:`, white space or NUL. The one
/// rule for the host config's interfaces, VM taps and keel-vmm's `--tap`.
pub fn is_interface_name(name: &str) -> bool {
    (1..IFNAMSIZ).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

/// A MAC address, `52:54:00:12:34:56`: six pairs of hex digits (either
/// case).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        // from_str_radix alone would take "+a".
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// An interface request (struct ifreq) naming interface `name`, the rest
/// zero: for TUNSETIFF here, and SIOCGIFFLAGS/SIOCSIFFLAGS in keel-init.
/// A name the kernel would cut or refuse is refused here, never truncated
/// into another interface's.
pub fn ifreq(name: &str) -> Result<libc::ifreq, TapError> {
    if !is_interface_name(name) {
        return Err(TapError::Name {
            name: name.to_string(),
        });
    }
    // SAFETY: ifreq is plain C data (bytes, integers, pointers in a
    // union) for which all zeros is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // The name is shorter than ifr_name: its last byte stays the NUL.
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// TUNSETIFF's request for tap `name`: plain Ethernet frames, no
/// packet-info header.
fn request(name: &str) -> Result<libc::ifreq, TapError> {
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    Ok(req)
}

/// A tap device attached by name, non-blocking: frames are read from and
/// written to it, one per call.
#[derive(Debug)]
pub struct Tap {
    name: String,
    file: File,
}

impl Tap {
    /// Attach to tap `name`, making it if it is not there (which takes
    /// CAP_NET_ADMIN; without, the tap must exist and belong to this
    /// user or group, as [`Tap::persist_for`] leaves it).
    pub fn attach(name: &str) -> Result<Tap, TapError> {
        let mut req = request(name)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN)
            .map_err(|source| TapError::Tun { source })?;
        let tap = Tap {
            name: name.to_string(),
            file,
        };
        // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is and
        // which outlives the call; the fd is ours and open, and the
        // kernel keeps no pointer to `req`.
        let rc = unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        tap.check("TUNSETIFF", rc)?;
        Ok(tap)
    }

    /// Keep the tap after its last fd closes, belonging to `uid` and
    /// `gid`: what lets keel-vmm attach to it without CAP_NET_ADMIN.
    pub fn persist_for(&self, uid: u32, gid: u32) -> Result<(), TapError> {
        let fd = self.file.as_raw_fd();
        // SAFETY: TUNSETOWNER takes a uid by value on an attached fd,
        // which `fd` is; no memory is passed.
        let rc = unsafe { libc::ioctl(fd, libc::TUNSETOWNER, libc::c_ulong::from(uid)) };
        self.check("TUNSETOWNER", rc)?;
        // SAFETY: as TUNSETOWNER, with a gid.
        let rc = unsafe { libc::ioctl(fd, libc::TUNSETGROUP, libc::c_ulong::from(gid)) };
        self.check("TUNSETGROUP", rc)?;
        // SAFETY: as TUNSETOWNER, with a flag.
        let rc = unsafe { libc::ioctl(fd, libc::TUNSETPERSIST, 1 as libc::c_ulong) };
        self.check("TUNSETPERSIST", rc)
    }

    /// The attached fd, to read and write frames on.
    pub fn into_file(self) -> File {
        self.file
    }

    fn check(&self, ioctl: &'static str, rc: libc::c_int) -> Result<(), TapError> {
        if rc < 0 {
            return Err(TapError::Ioctl {
                name: self.name.clone(),
                ioctl,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_names_a_plain_ethernet_tap() {
        let req = request("vm-web").unwrap();
        let name: Vec<u8> = req.ifr_name.iter().map(|&c| c as u8).collect();
        assert_eq!(&name[..7], b"vm-web\0");
        assert!(name.iter().skip(6).all(|&b| b == 0));
        // SAFETY: `request` set the flags member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        assert_eq!(
            flags,
            (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
            "no packet-info header"
        );
        let longest = "a".repeat(IFNAMSIZ - 1);
        let req = request(&longest).unwrap();
        assert_eq!(req.ifr_name[IFNAMSIZ - 1], 0, "still NUL-terminated");
    }

    #[test]
    fn a_name_the_kernel_would_cut_is_refused() {
        for name in ["", "a-name-of-16-byt", "vm\0web"] {
            assert!(
                matches!(request(name), Err(TapError::Name { name: n }) if n == name),
                "{name:?}"
            );
            assert!(matches!(Tap::attach(name), Err(TapError::Name { .. })));
        }
    }

    /// Needs root (CAP_NET_ADMIN), as CI has; without, it fails and says so.
    #[test]
    fn a_persistent_tap_stays_and_belongs_to_whom_it_is_given() {
        let name = format!("keeltap{}", std::process::id() % 100_000);
        let tap = Tap::attach(&name)
            .unwrap_or_else(|e| panic!("making a tap needs root with CAP_NET_ADMIN: {e}"));
        tap.persist_for(4242, 4343).unwrap();
        drop(tap);
        let sys = std::path::Path::new("/sys/class/net").join(&name);
        let read = |f: &str| std::fs::read_to_string(sys.join(f)).unwrap();
        let owners = (read("owner"), read("group"));
        // Attached again (it outlived its fd), then let go for good.
        let again = Tap::attach(&name).unwrap();
        // SAFETY: TUNSETPERSIST takes a flag by value on an attached fd.
        let rc = unsafe {
            libc::ioctl(
                again.file.as_raw_fd(),
                libc::TUNSETPERSIST,
                0 as libc::c_ulong,
            )
        };
        again.check("TUNSETPERSIST", rc).unwrap();
        drop(again);
        assert_eq!((owners.0.trim(), owners.1.trim()), ("4242", "4343"));
        assert!(!sys.exists(), "gone once not persistent");
    }
}

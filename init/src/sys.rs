//! Thin wrappers over the system calls keel-init makes, with errors that
//! name the call and its path.

use std::path::Path;

use nix::mount::{MntFlags, MsFlags};

#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {errno}")]
pub struct SysError {
    pub what: &'static str,
    pub path: String,
    pub errno: nix::errno::Errno,
}

pub type Result<T> = std::result::Result<T, SysError>;

fn err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(nix::errno::Errno) -> SysError + 'a {
    move |errno| SysError {
        what,
        path: path.display().to_string(),
        errno,
    }
}

pub fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    nix::mount::mount(source, target, fstype, flags, data).map_err(err("mount", target))
}

pub fn bind(source: &Path, target: &Path, readonly: bool) -> Result<()> {
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err("bind mount", target))?;
    if readonly {
        // A bind mount ignores MS_RDONLY until remounted.
        remount_readonly(target)?;
    }
    Ok(())
}

pub fn remount_readonly(target: &Path) -> Result<()> {
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    nix::mount::mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
        .map_err(err("remount read-only", target))
}

pub fn move_mount(source: &Path, target: &Path) -> Result<()> {
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_MOVE,
        None::<&str>,
    )
    .map_err(err("move mount", target))
}

pub fn umount_detach(target: &Path) -> Result<()> {
    nix::mount::umount2(target, MntFlags::MNT_DETACH).map_err(err("unmount", target))
}

pub fn mkdir_p(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| SysError {
            what: "mkdir",
            path: path.display().to_string(),
            errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        })
}

/// Create a block device node for (major, minor) at `path`.
pub fn mknod_block(path: &Path, dev: (u32, u32)) -> Result<()> {
    let _ = std::fs::remove_file(path);
    nix::sys::stat::mknod(
        path,
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(u64::from(dev.0), u64::from(dev.1)),
    )
    .map_err(err("mknod", path))
}

/// The filesystem magic of the filesystem holding `path`.
pub fn fs_magic(path: &Path) -> Result<i64> {
    let st = nix::sys::statfs::statfs(path).map_err(err("statfs", path))?;
    #[allow(clippy::unnecessary_cast)]
    Ok(st.filesystem_type().0 as i64)
}

pub const RAMFS_MAGIC: i64 = 0x8584_58f6;
pub const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Bring up the loopback interface: services on the host network expect it.
pub fn loopback_up() -> Result<()> {
    let lo = Path::new("lo");
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(err("socket for", lo))?;
    // "lo" is a valid interface name: this cannot fail.
    let Ok(mut req) = keel_tap::ifreq("lo") else {
        return Err(err("ifreq for", lo)(nix::errno::Errno::EINVAL));
    };
    use std::os::fd::AsRawFd;
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write a struct ifreq,
    // which `req` is; SIOCGIFFLAGS filled the flags member of its union,
    // the one read and written here.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            return Err(err("SIOCGIFFLAGS", lo)(nix::errno::Errno::last()));
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) < 0 {
            return Err(err("SIOCSIFFLAGS", lo)(nix::errno::Errno::last()));
        }
    }
    Ok(())
}

/// Give a folder and what is directly in it to (uid, gid), never
/// following a symlink: a service's persistent folder (files a root
/// service made there before, dropbear's host keys, stay readable when it
/// runs as a user), a volume folder keel-init made for a container.
pub fn give_folder(dir: &Path, (uid, gid): (Option<u32>, Option<u32>)) -> Result<()> {
    use nix::fcntl::AtFlags;
    let uid = uid.map(nix::unistd::Uid::from_raw);
    let gid = gid.map(nix::unistd::Gid::from_raw);
    let chown = |p: &Path| {
        nix::unistd::fchownat(None, p, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(err("chown", p))
    };
    chown(dir)?;
    let entries = std::fs::read_dir(dir).map_err(|e| SysError {
        what: "read_dir",
        path: dir.display().to_string(),
        errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
    })?;
    for e in entries.flatten() {
        chown(&e.path())?;
    }
    Ok(())
}

/// Whether the firmware booted with Secure Boot enforced, from its
/// `SecureBoot` variable; None without UEFI variables (or a firmware that
/// has no such variable).
pub fn secure_boot() -> Option<bool> {
    use keel_formats::efi;
    let path = Path::new(efi::EFIVARS).join(efi::efivar_file("SecureBoot", efi::GLOBAL_VARIABLE));
    std::fs::read(path)
        .ok()
        .and_then(|b| efi::bool_variable(&b))
}

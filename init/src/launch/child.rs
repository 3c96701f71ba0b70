//! The child of clone3: carries out the [`Step`]s of its plan, one system
//! call (or a few) each, and execs. What to do and in what order is
//! decided in [`super::plan`]; here is only how.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::MsFlags;

use super::confine::{self, ConfineError};
use super::error::{encode, StepKind};
use super::masks;
use super::plan::Step;
use crate::sys;

/// A failed call: its errno, and its own message for the report.
#[derive(Debug)]
struct Fail {
    errno: Errno,
    error: String,
}

impl From<Errno> for Fail {
    fn from(errno: Errno) -> Fail {
        Fail {
            errno,
            error: errno.to_string(),
        }
    }
}

impl From<sys::SysError> for Fail {
    fn from(e: sys::SysError) -> Fail {
        Fail {
            errno: e.errno,
            error: e.to_string(),
        }
    }
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Fail {
        Fail {
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            error: e.to_string(),
        }
    }
}

impl From<ConfineError> for Fail {
    fn from(e: ConfineError) -> Fail {
        Fail {
            errno: e.errno(),
            error: e.to_string(),
        }
    }
}

/// `r`, its error naming `call`: for steps of several calls.
fn call<T, E: Into<Fail>>(call: &str, r: Result<T, E>) -> Result<T, Fail> {
    r.map_err(|e| {
        let f = e.into();
        Fail {
            errno: f.errno,
            error: format!("{call}: {}", f.error),
        }
    })
}

/// Run `steps`, which end in exec: returns only if one fails, with the
/// report for the parent ([`super::error::decode`]).
pub(super) fn run(steps: &[Step<'_>]) -> Vec<u8> {
    for step in steps {
        if let Err(f) = run_step(step) {
            return encode(step.kind(), f.errno, &step.to_string(), &f.error);
        }
    }
    encode(
        StepKind::Exec,
        Errno::EINVAL,
        "exec",
        "the plan has no exec",
    )
}

const NODEV: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);
const DEV_OPTIONS: &str = "mode=0755,size=64k";

fn run_step(step: &Step<'_>) -> Result<(), Fail> {
    let mount = |fs: &str, at: &Path, flags: MsFlags, data: Option<&str>| {
        sys::mount(Some(fs), at, Some(fs), flags, data)
    };
    match step {
        Step::BecomeRoot => super::userns::become_root_or_errno().map_err(|(c, e)| Fail {
            errno: e,
            error: format!("{c}: {e}"),
        })?,
        Step::ClearSignalMask => nix::sys::signal::sigprocmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&nix::sys::signal::SigSet::empty()),
            None,
        )?,
        Step::Setsid => drop(nix::unistd::setsid()?),
        Step::MakePrivate => sys::mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None,
        )?,
        Step::BindRoot { root } => sys::bind(root, root, false)?,
        Step::MountProc { target } => mount("proc", target, NODEV, None)?,
        Step::MountSys { target } => mount("sysfs", target, NODEV | MsFlags::MS_RDONLY, None)?,
        Step::MountCgroup { target } => mount("cgroup2", target, NODEV | MsFlags::MS_RDONLY, None)?,
        Step::ReadOnly { at, .. } => masks::read_only(at)?,
        Step::Mask { at, .. } => masks::mask(at)?,
        Step::MountDev { dev } => mount(
            "tmpfs",
            dev,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some(DEV_OPTIONS),
        )?,
        Step::BindDevice { host, target } => {
            call("create device file", File::create(target))?;
            sys::bind(host, target, false)?;
        }
        Step::DevLink { link, target } => std::os::unix::fs::symlink(target, link)?,
        Step::MakeDir { path } => sys::mkdir_p(path, 0o755)?,
        Step::MountDevPts { pts } => mount(
            "devpts",
            pts,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        )?,
        Step::RemountDevReadonly { dev } => sys::mount(
            None,
            dev,
            None,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some(DEV_OPTIONS),
        )?,
        Step::Tmpfs {
            target, options, ..
        } => mount(
            "tmpfs",
            target,
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options),
        )?,
        Step::MakeMountPoint { target, .. } => {
            if !target.exists() {
                sys::mkdir_p(target, 0o755)?;
            }
        }
        Step::Bind {
            src,
            target,
            readonly,
            ..
        } => bind_host_folder(src, target, *readonly)?,
        Step::PivotRoot { root } => pivot_root(root)?,
        Step::RemountRootReadonly => remount_root_readonly()?,
        Step::LoopbackUp => sys::loopback_up()?,
        Step::Interfaces { list } => interfaces(list)?,
        Step::SetHostname { name } => nix::unistd::sethostname(name)?,
        Step::ConsoleStdio => console_stdio()?,
        Step::NullStdin => null_stdin()?,
        Step::Dup { from, to } => drop(nix::unistd::dup2(*from, *to)?),
        Step::KeepOpen { fd } => drop(nix::fcntl::fcntl(
            *fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )?),
        Step::Confine { confine } => confine::apply(confine)?,
        Step::Chdir { dir } => nix::unistd::chdir(*dir)?,
        Step::Exec { argv, env } => return exec(argv, env),
    }
    Ok(())
}

/// Returns only if execve fails.
fn exec(argv: &[std::ffi::CString], env: &[std::ffi::CString]) -> Result<(), Fail> {
    let prog = argv.first().ok_or(Errno::ENOENT)?;
    match nix::unistd::execve(prog, argv, env) {
        Ok(never) => match never {},
        Err(e) => Err(e.into()),
    }
}

fn null_stdin() -> Result<(), Fail> {
    let null = call("open /dev/null", File::open("/dev/null"))?;
    nix::unistd::dup2(null.as_raw_fd(), 0)?;
    Ok(())
}

/// pivot_root(".", ".") stacks the old root on top of the new one; a lazy
/// unmount then drops it, without needing a writable put_old directory in
/// the read-only root.
fn pivot_root(root: &Path) -> Result<(), Fail> {
    call("chdir root", nix::unistd::chdir(root))?;
    call("pivot_root", nix::unistd::pivot_root(".", "."))?;
    call("detach old root", sys::umount_detach(Path::new(".")))?;
    call("chdir /", nix::unistd::chdir("/"))
}

fn remount_root_readonly() -> sys::Result<()> {
    let root = Path::new("/");
    sys::mount(
        None,
        root,
        None,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | locked_flags(root),
        None,
    )
}

/// The console becomes the controlling terminal and stdin, stdout and
/// stderr of a console service.
fn console_stdio() -> Result<(), Fail> {
    let tty = call(
        "open /dev/console",
        File::options().read(true).write(true).open("/dev/console"),
    )?;
    // SAFETY: TIOCSCTTY on an open tty fd with an integer argument.
    let r = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSCTTY as _, 1) };
    if r != 0 {
        return call("TIOCSCTTY", Err(Errno::last()));
    }
    for fd in 0..3 {
        call("dup2 console", nix::unistd::dup2(tty.as_raw_fd(), fd))?;
    }
    Ok(())
}

/// Bind a host folder (a volume, a persistent writable path, an API
/// folder) into the container: never with device files or set-id programs
/// that work, so that a device node made there (user containers keep
/// CAP_MKNOD, as Docker gives it) cannot open a host disk.
fn bind_host_folder(src: &Path, target: &Path, readonly: bool) -> sys::Result<()> {
    sys::bind(src, target, false)?;
    let mut flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | locked_flags(target);
    // A remount without MS_RDONLY would make a bind of a read-only mount
    // writable.
    let source_ro = nix::sys::statvfs::statvfs(target)
        .is_ok_and(|st| st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY));
    if readonly || source_ro {
        flags |= MsFlags::MS_RDONLY;
    }
    sys::mount(None, target, None, flags, None)
}

/// The flags a remount must keep: in a user namespace the kernel refuses a
/// remount that would clear the atime, exec, dev or suid flags the mount
/// was given outside.
fn locked_flags(path: &Path) -> MsFlags {
    use nix::sys::statvfs::FsFlags;
    let Ok(st) = nix::sys::statvfs::statvfs(path) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (have, want) in [
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
    ] {
        if f.contains(have) {
            out |= want;
        }
    }
    // ST_RELATIME (4096) is not in every libc's flag set.
    if f.bits() & 4096 != 0 {
        out |= MsFlags::MS_RELATIME;
    }
    out
}

/// The container's side of its veths, in its own network namespace:
/// each `ethN` up with its addresses, the default routes through the
/// first one's bridge.
fn interfaces(list: &[keel_formats::container::NetInterface]) -> Result<(), Fail> {
    use crate::net::interfaces::Net;
    let fail = |e: String| Fail {
        errno: Errno::EINVAL,
        error: e,
    };
    let mut nl = crate::net::netlink::Netlink::open().map_err(fail)?;
    for (i, iface) in list.iter().enumerate() {
        let name = super::plan::inside_name(i);
        let index = crate::net::netlink::index_of(&name)
            .ok_or_else(|| fail(format!("{name}: not in the container's network namespace")))?;
        for (addr, prefix) in &iface.addresses {
            nl.add_address_nodad(index, addr, *prefix).map_err(fail)?;
        }
        nl.link_up(index, None).map_err(fail)?;
        for gw in &iface.gateways {
            let any = match gw {
                std::net::IpAddr::V4(_) => std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                std::net::IpAddr::V6(_) => std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            };
            nl.add_route(index, &any, 0, Some(gw)).map_err(fail)?;
        }
    }
    Ok(())
}

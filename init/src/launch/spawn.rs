//! clone3 of a container's process into its namespaces and cgroup, and
//! the wait for its exec: the parent's side of a launch.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::unistd::Pid;

use super::error::{decode, LaunchError};
use super::plan::{steps, ChildFds, Plan};
use super::{child, userns};

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Where a container's output goes and, for a notify readiness probe,
/// where it reports ready.
#[derive(Debug, Default, Clone, Copy)]
pub struct Io<'a> {
    /// stdout and stderr (none: inherited, or the console).
    pub out: Option<&'a File>,
    /// Becomes fd 3 ([`NOTIFY_FD`]) in the container.
    pub notify: Option<&'a File>,
}

/// The fd on which a service with `readiness.notify` writes `READY=1`.
pub const NOTIFY_FD: RawFd = 3;

/// A container whose process exists and is setting itself up: it has not
/// run its command yet. Several can set up at once, each on its own CPU.
#[derive(Debug)]
#[must_use = "a started container is only confirmed by wait_exec"]
pub struct Spawned {
    pid: Pid,
    /// Closed by the child's exec (O_CLOEXEC); carries its error otherwise.
    errors: File,
}

impl Spawned {
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Wait until the container runs its command, or report why it could
    /// not (the child is reaped then).
    pub fn wait_exec(self) -> Result<Pid, LaunchError> {
        let mut report = Vec::new();
        let mut errors = self.errors;
        let _ = errors.read_to_end(&mut report);
        if !report.is_empty() {
            let _ = nix::sys::wait::waitpid(self.pid, None);
            return Err(decode(report));
        }
        Ok(self.pid)
    }
}

/// Start a container and wait until it runs its command.
pub fn spawn(plan: &Plan, cgroup: &File, io: Io<'_>) -> Result<Pid, LaunchError> {
    begin(plan, cgroup, io)?.wait_exec()
}

/// Create the container's process and let it set itself up; the caller
/// confirms the exec with [`Spawned::wait_exec`]. The caller must be
/// single-threaded: clone3 copies only the calling thread.
pub fn begin(plan: &Plan, cgroup: &File, io: Io<'_>) -> Result<Spawned, LaunchError> {
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(LaunchError::Pipe)?;
    // A child in a user namespace waits until its id maps are written.
    let (go_rd, go_wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(LaunchError::Pipe)?;
    let mut args = CloneArgs {
        flags: plan.flags | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..Default::default()
    };
    // SAFETY: clone3 with no stack behaves like fork: the child gets a copy
    // of this single-threaded process and continues below. `args` is a valid
    // clone_args of the size passed.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid < 0 {
        return Err(LaunchError::Clone(Errno::last()));
    }
    if pid == 0 {
        let fds = ChildFds {
            out: io.out.map(AsRawFd::as_raw_fd),
            notify: io.notify.map(AsRawFd::as_raw_fd),
        };
        in_child(plan, fds, (rd, wr), (go_rd, go_wr));
    }
    // A pid is an i32 on Linux; a value that were not one must never
    // become -1, which kill() takes for every process.
    let Ok(pid) = i32::try_from(pid).map(Pid::from_raw) else {
        return Err(LaunchError::Clone(Errno::EOVERFLOW));
    };
    drop(go_rd);
    if let Some((uid_map, gid_map)) = &plan.user_maps {
        if let Err(e) = userns::write_maps(pid.as_raw(), uid_map, gid_map) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
            return Err(LaunchError::UserMaps(e));
        }
    }
    if let Err(e) = veths(plan, pid) {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
        return Err(LaunchError::Network(e));
    }
    let _ = File::from(go_wr).write_all(b"g");
    // Dropped now, not at exec confirmation: a container begun next must
    // not inherit this write end, or this one's EOF would wait for its exec.
    drop(wr);
    // The write end closes on a successful exec (O_CLOEXEC): EOF with no
    // report means the service is running its command.
    Ok(Spawned {
        pid,
        errors: File::from(rd),
    })
}

/// The child's side of [`begin`]: waits for its id maps if it has a user
/// namespace, runs its steps and never returns.
fn in_child(
    plan: &Plan,
    fds: ChildFds,
    (rd, wr): (OwnedFd, OwnedFd),
    (go_rd, go_wr): (OwnedFd, OwnedFd),
) -> ! {
    drop(rd);
    drop(go_wr);
    // Its id maps and its veths must be there before it sets up.
    if plan.user_maps.is_some() || !plan.interfaces.is_empty() {
        let mut byte = [0u8; 1];
        let _ = File::from(go_rd).read(&mut byte);
    } else {
        drop(go_rd);
    }
    // Keep the error pipe clear of the fds the service gets.
    let wr = match nix::fcntl::fcntl(wr.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(64)) {
        // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
        Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
        Err(_) => wr,
    };
    let report = child::run(&steps(plan, fds));
    let _ = File::from(wr).write_all(&report);
    // SAFETY: _exit never returns and runs no destructors or atexit
    // handlers that belong to the parent.
    unsafe { libc::_exit(127) }
}

/// The host side of the child's interfaces: a veth each, its host end up
/// on the interface's bridge, its other end in the child's network
/// namespace. The kernel removes them when that namespace goes.
fn veths(plan: &Plan, pid: Pid) -> Result<(), String> {
    if plan.interfaces.is_empty() {
        return Ok(());
    }
    let mut nl = crate::net::netlink::Netlink::open()?;
    let pid = u32::try_from(pid.as_raw()).map_err(|_| format!("pid {pid}"))?;
    for (i, iface) in plan.interfaces.iter().enumerate() {
        let master = crate::net::netlink::index_of(&iface.bridge)
            .ok_or_else(|| format!("bridge {} is not there", iface.bridge))?;
        nl.add_veth(
            &plan.veth_name(i),
            master,
            &super::plan::inside_name(i),
            pid,
        )?;
    }
    Ok(())
}

/// An fd of a service's cgroup folder, for CLONE_INTO_CGROUP.
pub fn open_cgroup(path: &Path) -> std::io::Result<File> {
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

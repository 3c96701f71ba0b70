//! Starting one system container: clone3 into new namespaces and the
//! service's cgroup, then, in the child, build its mount namespace around
//! the read-only root, drop privileges and exec.
//!
//! keel-init is single-threaded, so the child of clone3 may allocate and
//! use the standard library freely until it execs.

pub mod caps;
pub mod cgroup;
pub mod confine;
pub mod masks;
pub mod userns;

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::unistd::Pid;

use keel_formats::container::{ContainerDef, Share};
use keel_formats::CONTAINERS_DIR;

use keel_formats::limits::{UserNamespace, WritableKind};

use crate::sys;
use confine::Confinement;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{0}")]
    Setup(String),
    #[error("clone3: {0}")]
    Clone(std::io::Error),
    #[error("in the container: {0}")]
    Child(String),
}

/// Everything the child needs, prepared by the parent before clone3.
#[derive(Debug)]
pub struct Plan {
    pub name: String,
    pub root: PathBuf,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    pub cwd: PathBuf,
    pub hostname: Option<String>,
    pub flags: u64,
    pub confine: Confinement,
    /// (target inside the root, tmpfs size or None for a persistent bind
    /// of the given host folder).
    pub writable: Vec<(PathBuf, Writable)>,
    /// Host device paths made available under the container's /dev.
    pub devices: Vec<PathBuf>,
    /// The tty behind the kernel console (`ttyS0`), for console services.
    pub console: Option<String>,
    pub private_pid: bool,
    pub mounts: Vec<(PathBuf, PathBuf, bool)>,
    /// uid_map and gid_map text, for a service in a user namespace.
    pub user_maps: Option<(String, String)>,
    /// sysfs (and the cgroup tree under it) can be mounted: not when a
    /// user namespace shares the host's network namespace, which it does
    /// not own.
    pub mount_sys: bool,
    /// Kernel files hidden and made read-only ([`masks`]).
    pub masked: Vec<&'static str>,
    pub readonly: Vec<&'static str>,
}

/// The device the kernel console writes to: the last, primary, entry of
/// /sys/class/tty/console/active.
pub fn console_tty() -> String {
    std::fs::read_to_string("/sys/class/tty/console/active")
        .ok()
        .and_then(|s| s.split_whitespace().last().map(str::to_string))
        .unwrap_or_else(|| "ttyS0".to_string())
}

/// Host devices bind-mounted into every container's private /dev.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

fn cstrings(items: &[String], what: &str) -> Result<Vec<CString>, LaunchError> {
    items
        .iter()
        .map(|s| {
            CString::new(s.as_str())
                .map_err(|_| LaunchError::Setup(format!("{what} {s:?} contains a NUL byte")))
        })
        .collect()
}

/// Work out the clone flags and everything else from a definition.
pub fn plan(name: &str, def: &ContainerDef) -> Result<Plan, LaunchError> {
    plan_with(
        name,
        def,
        Confinement::from_def(def).map_err(LaunchError::Setup)?,
    )
}

/// [`plan`] with the confinement already worked out (keel-init keeps it
/// per service: compiling the seccomp filter is the costly part).
pub fn plan_with(
    name: &str,
    def: &ContainerDef,
    confine: Confinement,
) -> Result<Plan, LaunchError> {
    let ns = &def.namespaces;
    let mut flags = (libc::CLONE_NEWNS) as u64;
    for (share, flag) in [
        (
            if def.user_namespace.is_some() {
                Share::Private
            } else {
                Share::Host
            },
            libc::CLONE_NEWUSER,
        ),
        (ns.pid, libc::CLONE_NEWPID),
        (ns.pid, libc::CLONE_NEWCGROUP),
        (ns.net, libc::CLONE_NEWNET),
        (ns.ipc, libc::CLONE_NEWIPC),
        (ns.uts, libc::CLONE_NEWUTS),
    ] {
        if share == Share::Private {
            flags |= flag as u64;
        }
    }
    Ok(Plan {
        name: name.to_string(),
        root: match &def.root_dir {
            Some(dir) => PathBuf::from(dir),
            None => Path::new(CONTAINERS_DIR)
                .join(def.root_of.as_deref().unwrap_or(name))
                .join("rootfs"),
        },
        argv: cstrings(&def.command, "command argument")?,
        env: {
            let mut env = def.env.clone();
            if def.readiness.as_ref().is_some_and(|r| r.notify) {
                env.push(format!("KEEL_NOTIFY_FD={NOTIFY_FD}"));
            }
            cstrings(&env, "env entry")?
        },
        cwd: PathBuf::from(&def.cwd),
        hostname: (ns.uts == Share::Private).then(|| def.hostname_for(name).to_string()),
        flags,
        confine,
        writable: def
            .writable
            .iter()
            .map(|w| {
                let rel = w.path.trim_start_matches('/');
                let how = match (w.kind, w.size) {
                    (WritableKind::Tmpfs, size) => Writable::Tmpfs(size.map(|s| s.0)),
                    (WritableKind::Persistent, _) => {
                        Writable::Persistent(Path::new(PERSISTENT_DIR).join(name).join(rel))
                    }
                };
                (PathBuf::from(rel), how)
            })
            .collect(),
        devices: def.devices.iter().map(PathBuf::from).collect(),
        user_maps: def.user_namespace.as_ref().map(|u| {
            (
                UserNamespace::map_text(&u.uid_map),
                UserNamespace::map_text(&u.gid_map),
            )
        }),
        mount_sys: def.user_namespace.is_none() || ns.net == Share::Private,
        masked: def.system_paths.masked().collect(),
        readonly: def.system_paths.readonly().collect(),
        console: def.console.then(console_tty),
        private_pid: ns.pid == Share::Private,
        mounts: def
            .mounts
            .iter()
            .map(|m| {
                (
                    PathBuf::from(&m.source),
                    PathBuf::from(&m.target),
                    m.readonly,
                )
            })
            .collect(),
    })
}

/// Where persistent writable paths of services live on the host.
pub const PERSISTENT_DIR: &str = "/var/lib/keel";

/// How a writable path is provided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writable {
    /// A tmpfs, optionally limited to this many bytes.
    Tmpfs(Option<u64>),
    /// A bind mount of this host folder.
    Persistent(PathBuf),
}

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

/// Start the container: returns its PID once it has exec'd its command, or
/// the reason it could not.
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
        let mut msg = String::new();
        let mut errors = self.errors;
        let _ = errors.read_to_string(&mut msg);
        if !msg.is_empty() {
            let _ = nix::sys::wait::waitpid(self.pid, None);
            return Err(LaunchError::Child(msg));
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
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| LaunchError::Setup(format!("pipe: {e}")))?;
    // A child in a user namespace waits until its id maps are written.
    let (go_rd, go_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| LaunchError::Setup(format!("pipe: {e}")))?;
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
        return Err(LaunchError::Clone(std::io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(rd);
        drop(go_wr);
        if plan.user_maps.is_some() {
            let mut byte = [0u8; 1];
            let _ = File::from(go_rd).read(&mut byte);
        } else {
            drop(go_rd);
        }
        // Keep the error pipe clear of the fds the service gets.
        let wr = match nix::fcntl::fcntl(wr.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(64))
        {
            // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            Err(_) => wr,
        };
        let err = child(
            plan,
            io.out.map(AsRawFd::as_raw_fd),
            io.notify.map(AsRawFd::as_raw_fd),
        );
        let mut w = File::from(wr);
        let _ = w.write_all(err.as_bytes());
        // SAFETY: _exit never returns and runs no destructors or atexit
        // handlers that belong to the parent.
        unsafe { libc::_exit(127) };
    }
    drop(go_rd);
    if let Some((uid_map, gid_map)) = &plan.user_maps {
        if let Err(e) = userns::write_maps(pid as i32, uid_map, gid_map) {
            let _ = nix::sys::signal::kill(
                Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None);
            return Err(LaunchError::Setup(e));
        }
    }
    let _ = File::from(go_wr).write_all(b"g");
    // Dropped now, not at exec confirmation: a container begun next must
    // not inherit this write end, or this one's EOF would wait for its exec.
    drop(wr);
    // The write end closes on a successful exec (O_CLOEXEC): EOF with no
    // message means the service is running its command.
    Ok(Spawned {
        pid: Pid::from_raw(pid as i32),
        errors: File::from(rd),
    })
}

/// The child's side: never returns on success (exec), returns the error
/// text otherwise.
fn child(p: &Plan, stdout: Option<RawFd>, notify: Option<RawFd>) -> String {
    match setup(p, stdout, notify) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

fn step<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn setup(p: &Plan, stdout: Option<RawFd>, notify: Option<RawFd>) -> Result<Never, String> {
    if p.user_maps.is_some() {
        userns::become_root()?;
    }
    // keel-init blocks signals to read them from a signalfd; its children
    // must start with a clean slate.
    step(
        "sigprocmask",
        nix::sys::signal::sigprocmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&nix::sys::signal::SigSet::empty()),
            None,
        ),
    )?;
    step("setsid", nix::unistd::setsid())?;
    step(
        "make / private",
        sys::mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None,
        ),
    )?;

    let root = &p.root;
    step("bind root", sys::bind(root, root, false))?;
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    step(
        "mount /proc",
        sys::mount(Some("proc"), &root.join("proc"), Some("proc"), nodev, None),
    )?;
    // sysfs and the cgroup tree, read-only. A container with its own PID
    // namespace also has its own cgroup namespace, so its /sys/fs/cgroup
    // is its own cgroup; one that shares the host's PIDs sees the host's.
    let ro = nodev | MsFlags::MS_RDONLY;
    if p.mount_sys {
        step(
            "mount /sys",
            sys::mount(Some("sysfs"), &root.join("sys"), Some("sysfs"), ro, None),
        )?;
        step(
            "mount /sys/fs/cgroup",
            sys::mount(
                Some("cgroup2"),
                &root.join("sys/fs/cgroup"),
                Some("cgroup2"),
                ro,
                None,
            ),
        )?;
    }
    masks::apply(root, &p.masked, &p.readonly)?;
    let dev = root.join("dev");
    step(
        "mount /dev",
        sys::mount(
            Some("tmpfs"),
            &dev,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("mode=0755,size=64k"),
        ),
    )?;
    let mut devices: Vec<(String, String)> = DEVICES
        .iter()
        .map(|d| (format!("/dev/{d}"), (*d).to_string()))
        .collect();
    if let Some(tty) = &p.console {
        // The service's console is the real tty, so that it can become the
        // controlling terminal; /dev/console is the same device.
        devices.push((format!("/dev/{tty}"), "console".into()));
        devices.push((format!("/dev/{tty}"), tty.clone()));
    }
    for (host, name) in &devices {
        let target = dev.join(name);
        step("create device file", File::create(&target))?;
        step("bind device", sys::bind(Path::new(host), &target, false))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        step(
            "dev link",
            std::os::unix::fs::symlink(target, dev.join(link)),
        )?;
    }
    let pts = dev.join("pts");
    step("mkdir /dev/pts", sys::mkdir_p(&pts, 0o755))?;
    step(
        "mount /dev/pts",
        sys::mount(
            Some("devpts"),
            &pts,
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ),
    )?;
    for d in &p.devices {
        let target = dev.join(d.strip_prefix("/dev").unwrap_or(d));
        if let Some(parent) = target.parent() {
            step("mkdir device folder", sys::mkdir_p(parent, 0o755))?;
        }
        step("create device file", File::create(&target))?;
        step(
            &format!("bind {}", d.display()),
            sys::bind(d, &target, false),
        )?;
    }
    step(
        "remount /dev read-only",
        sys::mount(
            None,
            &dev,
            None,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("mode=0755,size=64k"),
        ),
    )?;
    for d in ["tmp", "run"] {
        step(
            "mount tmpfs",
            sys::mount(
                Some("tmpfs"),
                &root.join(d),
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some("mode=1777,size=16m"),
            ),
        )?;
    }
    for (src, dst, ro) in &p.mounts {
        let target = root.join(dst.strip_prefix("/").unwrap_or(dst));
        // A target under /tmp or /run lives on the tmpfs just mounted, not
        // in the image; elsewhere the image builder made it.
        if !target.exists() {
            step(
                &format!("mkdir {}", dst.display()),
                sys::mkdir_p(&target, 0o755),
            )?;
        }
        step(
            &format!("bind {}", src.display()),
            bind_host_folder(src, &target, *ro),
        )?;
    }
    for (rel, how) in &p.writable {
        let target = root.join(rel);
        if !target.exists() {
            step(
                &format!("mkdir /{}", rel.display()),
                sys::mkdir_p(&target, 0o755),
            )?;
        }
        match how {
            Writable::Tmpfs(size) => {
                // The service's own: one that runs as a user of its own
                // (the admin shell) writes its scratch space too.
                let mut opts = format!("mode=0755,uid={},gid={}", p.confine.uid, p.confine.gid);
                if let Some(s) = size {
                    opts.push_str(&format!(",size={s}"));
                }
                step(
                    &format!("tmpfs /{}", rel.display()),
                    sys::mount(
                        Some("tmpfs"),
                        &target,
                        Some("tmpfs"),
                        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                        Some(&opts),
                    ),
                )?;
            }
            Writable::Persistent(host) => {
                step(
                    &format!("bind /{}", rel.display()),
                    bind_host_folder(host, &target, false),
                )?;
            }
        }
    }

    // pivot_root(".", ".") stacks the old root on top of the new one; a lazy
    // unmount then drops it, without needing a writable put_old directory
    // in the read-only root.
    step("chdir root", nix::unistd::chdir(root))?;
    step("pivot_root", nix::unistd::pivot_root(".", "."))?;
    step("detach old root", sys::umount_detach(Path::new(".")))?;
    step("chdir /", nix::unistd::chdir("/"))?;
    step(
        "remount / read-only",
        sys::mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | locked_flags(Path::new("/")),
            None,
        ),
    )?;
    if p.flags & libc::CLONE_NEWNET as u64 != 0 {
        // A new network namespace starts with loopback down.
        step("loopback", sys::loopback_up())?;
    }
    if let Some(h) = &p.hostname {
        step("sethostname", nix::unistd::sethostname(h))?;
    }

    if p.console.is_some() {
        let tty = step(
            "open /dev/console",
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/console"),
        )?;
        // SAFETY: TIOCSCTTY on an open tty fd with an integer argument.
        let r = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSCTTY as _, 1) };
        if r != 0 {
            return Err(format!("TIOCSCTTY: {}", std::io::Error::last_os_error()));
        }
        for fd in 0..3 {
            step("dup2 console", nix::unistd::dup2(tty.as_raw_fd(), fd))?;
        }
    } else {
        let null = step("open /dev/null", File::open("/dev/null"))?;
        step("dup2 stdin", nix::unistd::dup2(null.as_raw_fd(), 0))?;
        if let Some(out) = stdout {
            step("dup2 stdout", nix::unistd::dup2(out, 1))?;
            step("dup2 stderr", nix::unistd::dup2(out, 2))?;
        }
    }

    if let Some(fd) = notify {
        if fd == NOTIFY_FD {
            // dup2 onto itself would keep close-on-exec.
            step(
                "notify fd",
                nix::fcntl::fcntl(
                    fd,
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                ),
            )?;
        } else {
            step("notify fd", nix::unistd::dup2(fd, NOTIFY_FD))?;
        }
    }
    step("confine", confine::apply(&p.confine))?;
    step(
        &format!("chdir {}", p.cwd.display()),
        nix::unistd::chdir(&p.cwd),
    )?;
    let prog = p.argv.first().ok_or("empty command")?;
    let e = nix::unistd::execve(prog, &p.argv, &p.env)
        .err()
        .unwrap_or(nix::errno::Errno::UnknownErrno);
    Err(format!("exec {}: {e}", prog.to_string_lossy()))
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

/// Facts about a running service read from /proc, for `keelctl status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcFacts {
    /// PID inside the service's own PID namespace (last NSpid field).
    pub ns_pid: Option<i32>,
    /// Whether the process's root mount is read-only.
    pub root_readonly: Option<bool>,
}

pub fn parse_ns_pid(status: &str) -> Option<i32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|v| v.split_whitespace().next_back())
        .and_then(|v| v.parse().ok())
}

/// From mountinfo: is the mount at "/" read-only?
pub fn parse_root_readonly(mountinfo: &str) -> Option<bool> {
    mountinfo
        .lines()
        .rfind(|l| l.split_whitespace().nth(4) == Some("/"))
        .and_then(|l| l.split_whitespace().nth(5))
        .map(|opts| opts.split(',').any(|o| o == "ro"))
}

pub fn proc_facts(pid: Pid) -> ProcFacts {
    let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).ok();
    ProcFacts {
        ns_pid: read("status").as_deref().and_then(parse_ns_pid),
        root_readonly: read("mountinfo").as_deref().and_then(parse_root_readonly),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ns_pid_and_root_mode() {
        assert_eq!(parse_ns_pid("Name:\thttpd\nNSpid:\t57\t1\n"), Some(1));
        assert_eq!(parse_ns_pid("NSpid:\t42\n"), Some(42));
        let mi = "21 1 0:20 / / ro,nosuid,nodev - erofs /dev/keel-root ro\n22 21 0:5 / /proc rw - proc proc rw\n";
        assert_eq!(parse_root_readonly(mi), Some(true));
        assert_eq!(
            parse_root_readonly("1 0 8:1 / / rw,relatime - ext4 /dev/sda rw\n"),
            Some(false)
        );
    }

    #[test]
    fn plan_sets_namespaces_from_the_definition() {
        let def = ContainerDef::parse(
            "command = [\"/bin/httpd\", \"-f\"]\ncapabilities = [\"CAP_NET_BIND_SERVICE\"]\n[namespaces]\nnet = \"private\"\n[rootfs]\ncontents = [\"busybox\"]\n",
        )
        .unwrap();
        let p = plan("web", &def).unwrap();
        let want = (libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWCGROUP
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS) as u64;
        assert_eq!(p.flags, want);
        assert_eq!(p.confine.caps, 1 << 10);
        assert!(p.confine.no_new_privs && p.confine.seccomp.is_some());
        assert_eq!(p.hostname.as_deref(), Some("web"));
        assert!(p.root.ends_with("web/rootfs"));
    }
}

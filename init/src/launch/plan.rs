//! What starting a container does, as data: [`plan_with`] turns a
//! definition into a [`Plan`], and [`steps`] turns a plan into the ordered
//! [`Step`]s that its child of clone3 carries out ([`super::child`]). Both
//! are pure, so the order the kernel insists on is tested without root.

use std::ffi::CString;
use std::fmt;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use keel_formats::container::{ContainerDef, NetInterface, Share};
use keel_formats::limits::{UserNamespace, WritableKind};
use keel_formats::CONTAINERS_DIR;

use super::confine::Confinement;
use super::error::{LaunchError, StepKind};
use super::NOTIFY_FD;

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
    /// Kernel files hidden and made read-only ([`super::masks`]).
    pub masked: Vec<&'static str>,
    pub readonly: Vec<&'static str>,
    /// Interfaces on container networks: `eth0` onwards inside, each a
    /// veth whose host end is [`Plan::veth_name`].
    pub interfaces: Vec<NetInterface>,
    /// What the host ends of this start's veths are called before their
    /// number: a name of their own for every start, as the kernel takes
    /// a while to remove the veths of a network namespace that is gone.
    pub veth_base: String,
}

impl Plan {
    /// The host end of interface `i`.
    pub fn veth_name(&self, i: usize) -> String {
        format!("{}.{i}", self.veth_base)
    }
}

/// The name of interface `i` inside a container.
pub fn inside_name(i: usize) -> String {
    format!("eth{i}")
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

/// The links every container's /dev has.
const DEV_LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

fn cstrings(items: &[String], what: &'static str) -> Result<Vec<CString>, LaunchError> {
    items
        .iter()
        .map(|s| {
            CString::new(s.as_str()).map_err(|_| LaunchError::Nul {
                what,
                value: s.clone(),
            })
        })
        .collect()
}

/// Work out the clone flags and everything else from a definition.
pub fn plan(name: &str, def: &ContainerDef) -> Result<Plan, LaunchError> {
    plan_with(name, def, Confinement::from_def(def)?)
}

fn clone_flags(def: &ContainerDef) -> u64 {
    let ns = &def.namespaces;
    let user = match def.user_namespace {
        Some(_) => Share::Private,
        None => Share::Host,
    };
    let mut flags = libc::CLONE_NEWNS as u64;
    for (share, flag) in [
        (user, libc::CLONE_NEWUSER),
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
    flags
}

/// [`plan`] with the confinement already worked out (keel-init keeps it
/// per service: compiling the seccomp filter is the costly part).
pub fn plan_with(
    name: &str,
    def: &ContainerDef,
    confine: Confinement,
) -> Result<Plan, LaunchError> {
    let ns = &def.namespaces;
    let argv = cstrings(&def.command, "command argument")?;
    if argv.is_empty() {
        return Err(LaunchError::EmptyCommand);
    }
    let mut env = def.env.clone();
    if def.readiness.as_ref().is_some_and(|r| r.notify) {
        env.push(format!("KEEL_NOTIFY_FD={NOTIFY_FD}"));
    }
    let writable = def.writable.iter().map(|w| {
        let rel = w.path.trim_start_matches('/');
        let how = match (w.kind, w.size) {
            (WritableKind::Tmpfs, size) => Writable::Tmpfs(size.map(|s| s.0)),
            (WritableKind::Persistent, _) => {
                Writable::Persistent(Path::new(PERSISTENT_DIR).join(name).join(rel))
            }
        };
        (PathBuf::from(rel), how)
    });
    let mounts = def.mounts.iter().map(|m| {
        let (src, dst) = (PathBuf::from(&m.source), PathBuf::from(&m.target));
        (src, dst, m.readonly)
    });
    Ok(Plan {
        name: name.to_string(),
        root: match &def.root_dir {
            Some(dir) => PathBuf::from(dir),
            None => Path::new(CONTAINERS_DIR)
                .join(def.root_of.as_deref().unwrap_or(name))
                .join("rootfs"),
        },
        argv,
        env: cstrings(&env, "env entry")?,
        cwd: PathBuf::from(&def.cwd),
        hostname: (ns.uts == Share::Private).then(|| def.hostname_for(name).to_string()),
        flags: clone_flags(def),
        confine,
        writable: writable.collect(),
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
        mounts: mounts.collect(),
        interfaces: match ns.net {
            Share::Private => def.interfaces.clone(),
            Share::Host => Vec::new(),
        },
        veth_base: String::new(),
    })
}

/// The parent's fds the child turns into the service's: its output
/// (stdout and stderr; none: inherited) and its notify pipe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChildFds {
    pub out: Option<RawFd>,
    pub notify: Option<RawFd>,
}

/// One thing the child of clone3 does on its way to exec. Paths are the
/// host's view from before pivot_root; `inside` is the container's.
#[derive(Debug)]
pub enum Step<'p> {
    /// setgroups, setresgid and setresuid to 0 in the new user namespace.
    BecomeRoot,
    /// Unblock every signal: keel-init blocks them for its signalfd.
    ClearSignalMask,
    Setsid,
    /// Make every mount private, so nothing below reaches the host.
    MakePrivate,
    /// Bind the root onto itself: pivot_root needs a mount point.
    BindRoot {
        root: &'p Path,
    },
    MountProc {
        target: PathBuf,
    },
    /// sysfs, read-only.
    MountSys {
        target: PathBuf,
    },
    /// The cgroup2 tree, read-only.
    MountCgroup {
        target: PathBuf,
    },
    /// Bind a kernel file onto itself read-only, if this kernel has it.
    ReadOnly {
        at: PathBuf,
        path: &'static str,
    },
    /// Hide a kernel file under /dev/null (a folder under an empty tmpfs),
    /// if this kernel has it.
    Mask {
        at: PathBuf,
        path: &'static str,
    },
    /// The container's private /dev, a small tmpfs.
    MountDev {
        dev: PathBuf,
    },
    /// Create an empty file at `target` and bind the host device onto it.
    BindDevice {
        host: PathBuf,
        target: PathBuf,
    },
    DevLink {
        link: PathBuf,
        target: &'static str,
    },
    MakeDir {
        path: PathBuf,
    },
    /// A devpts instance of the container's own.
    MountDevPts {
        pts: PathBuf,
    },
    RemountDevReadonly {
        dev: PathBuf,
    },
    Tmpfs {
        target: PathBuf,
        inside: PathBuf,
        options: String,
    },
    /// Make a mount point unless the image (or a tmpfs) has it already:
    /// it may be a file, for a bind of a file.
    MakeMountPoint {
        target: PathBuf,
        inside: PathBuf,
    },
    /// Bind a host folder, never with working devices or set-id programs.
    Bind {
        src: &'p Path,
        target: PathBuf,
        inside: PathBuf,
        readonly: bool,
    },
    /// Make the root the process's `/` and drop the host's.
    PivotRoot {
        root: &'p Path,
    },
    RemountRootReadonly,
    LoopbackUp,
    /// Addresses and routes on the veths the parent put in the network
    /// namespace.
    Interfaces {
        list: &'p [NetInterface],
    },
    SetHostname {
        name: &'p str,
    },
    /// The console as controlling terminal and fds 0 to 2.
    ConsoleStdio,
    NullStdin,
    Dup {
        from: RawFd,
        to: RawFd,
    },
    /// Clear close-on-exec of an fd that already has its number.
    KeepOpen {
        fd: RawFd,
    },
    Confine {
        confine: &'p Confinement,
    },
    Chdir {
        dir: &'p Path,
    },
    Exec {
        argv: &'p [CString],
        env: &'p [CString],
    },
}

/// The steps of starting `p`, in the order they must run.
pub fn steps<'p>(p: &'p Plan, fds: ChildFds) -> Vec<Step<'p>> {
    let mut s = Vec::with_capacity(48);
    // Before anything else: a mount made while still the host's root by
    // kernel id would not be the namespace root's.
    if p.user_maps.is_some() {
        s.push(Step::BecomeRoot);
    }
    s.extend([Step::ClearSignalMask, Step::Setsid, Step::MakePrivate]);
    mount_kernel_files(p, &mut s);
    mount_dev(p, &mut s);
    mount_writable(p, &mut s);
    // pivot_root needs every mount of the new root in place; the root goes
    // read-only only after it, being the bind of BindRoot.
    s.extend([Step::PivotRoot { root: &p.root }, Step::RemountRootReadonly]);
    if p.flags & libc::CLONE_NEWNET as u64 != 0 {
        s.push(Step::LoopbackUp);
        if !p.interfaces.is_empty() {
            s.push(Step::Interfaces {
                list: &p.interfaces,
            });
        }
    }
    if let Some(name) = &p.hostname {
        s.push(Step::SetHostname { name });
    }
    stdio(p, fds, &mut s);
    // Confinement drops the privileges every step above needs; chdir and
    // exec are then checked as the service's user.
    s.extend([
        Step::Confine {
            confine: &p.confine,
        },
        Step::Chdir { dir: &p.cwd },
        Step::Exec {
            argv: &p.argv,
            env: &p.env,
        },
    ]);
    s
}

/// The root's bind, /proc, /sys and the masks over what they show.
fn mount_kernel_files<'p>(p: &'p Plan, s: &mut Vec<Step<'p>>) {
    let root = &p.root;
    s.extend([
        Step::BindRoot { root },
        Step::MountProc {
            target: root.join("proc"),
        },
    ]);
    // A container with its own PID namespace also has its own cgroup
    // namespace, so its /sys/fs/cgroup is its own cgroup; one that shares
    // the host's PIDs sees the host's.
    if p.mount_sys {
        s.extend([
            Step::MountSys {
                target: root.join("sys"),
            },
            Step::MountCgroup {
                target: root.join("sys/fs/cgroup"),
            },
        ]);
    }
    // Masks cover files of /proc and /sys, so they come after those.
    let at = |path: &str| root.join(path.trim_start_matches('/'));
    s.extend(
        p.readonly
            .iter()
            .map(|&path| Step::ReadOnly { at: at(path), path }),
    );
    s.extend(
        p.masked
            .iter()
            .map(|&path| Step::Mask { at: at(path), path }),
    );
}

/// The private /dev: devices, links and devpts, then read-only.
fn mount_dev<'p>(p: &'p Plan, s: &mut Vec<Step<'p>>) {
    let dev = p.root.join("dev");
    s.push(Step::MountDev { dev: dev.clone() });
    let mut devices: Vec<(PathBuf, &str)> = DEVICES
        .iter()
        .map(|d| (Path::new("/dev").join(d), *d))
        .collect();
    if let Some(tty) = &p.console {
        // The service's console is the real tty, so that it can become the
        // controlling terminal; /dev/console is the same device.
        let host = Path::new("/dev").join(tty);
        devices.push((host.clone(), "console"));
        devices.push((host, tty));
    }
    s.extend(devices.into_iter().map(|(host, name)| Step::BindDevice {
        host,
        target: dev.join(name),
    }));
    s.extend(DEV_LINKS.iter().map(|(link, target)| Step::DevLink {
        link: dev.join(link),
        target,
    }));
    let pts = dev.join("pts");
    s.extend([
        Step::MakeDir { path: pts.clone() },
        Step::MountDevPts { pts },
    ]);
    for d in &p.devices {
        let target = dev.join(d.strip_prefix("/dev").unwrap_or(d));
        if let Some(parent) = target.parent() {
            s.push(Step::MakeDir {
                path: parent.to_path_buf(),
            });
        }
        s.push(Step::BindDevice {
            host: d.clone(),
            target,
        });
    }
    // Everything bound into /dev is in place: nothing may be added now.
    s.push(Step::RemountDevReadonly { dev });
}

/// /tmp and /run, volumes, then the definition's writable paths: a target
/// under /tmp or /run is made on its tmpfs, not in the image.
fn mount_writable<'p>(p: &'p Plan, s: &mut Vec<Step<'p>>) {
    let root = &p.root;
    for d in ["tmp", "run"] {
        s.push(Step::Tmpfs {
            target: root.join(d),
            inside: Path::new("/").join(d),
            options: "mode=1777,size=16m".into(),
        });
    }
    for (src, dst, readonly) in &p.mounts {
        let target = root.join(dst.strip_prefix("/").unwrap_or(dst));
        s.push(Step::MakeMountPoint {
            target: target.clone(),
            inside: dst.clone(),
        });
        s.push(Step::Bind {
            src,
            target,
            inside: dst.clone(),
            readonly: *readonly,
        });
    }
    for (rel, how) in &p.writable {
        let target = root.join(rel);
        let inside = Path::new("/").join(rel);
        s.push(Step::MakeMountPoint {
            target: target.clone(),
            inside: inside.clone(),
        });
        s.push(match how {
            Writable::Tmpfs(size) => {
                // The service's own: one that runs as a user of its own
                // (the admin shell) writes its scratch space too.
                let mut options = format!("mode=0755,uid={},gid={}", p.confine.uid, p.confine.gid);
                if let Some(size) = size {
                    options.push_str(&format!(",size={size}"));
                }
                Step::Tmpfs {
                    target,
                    inside,
                    options,
                }
            }
            Writable::Persistent(host) => Step::Bind {
                src: host,
                target,
                inside,
                readonly: false,
            },
        });
    }
}

/// fds 0 to 2 and the notify fd. The console must be opened after
/// pivot_root: it is the container's /dev/console.
fn stdio<'p>(p: &'p Plan, fds: ChildFds, s: &mut Vec<Step<'p>>) {
    if p.console.is_some() {
        s.push(Step::ConsoleStdio);
    } else {
        s.push(Step::NullStdin);
        if let Some(out) = fds.out {
            s.extend([
                Step::Dup { from: out, to: 1 },
                Step::Dup { from: out, to: 2 },
            ]);
        }
    }
    match fds.notify {
        // dup2 onto itself would keep close-on-exec.
        Some(fd) if fd == NOTIFY_FD => s.push(Step::KeepOpen { fd }),
        Some(fd) => s.push(Step::Dup {
            from: fd,
            to: NOTIFY_FD,
        }),
        None => {}
    }
}

impl Step<'_> {
    pub fn kind(&self) -> StepKind {
        use StepKind as K;
        match self {
            Step::BecomeRoot => K::BecomeRoot,
            Step::ClearSignalMask => K::ClearSignalMask,
            Step::Setsid => K::Setsid,
            Step::MakePrivate => K::MakePrivate,
            Step::BindRoot { .. } => K::BindRoot,
            Step::MountProc { .. } => K::MountProc,
            Step::MountSys { .. } => K::MountSys,
            Step::MountCgroup { .. } => K::MountCgroup,
            Step::ReadOnly { .. } => K::ReadOnly,
            Step::Mask { .. } => K::Mask,
            Step::MountDev { .. } => K::MountDev,
            Step::BindDevice { .. } => K::BindDevice,
            Step::DevLink { .. } => K::DevLink,
            Step::MakeDir { .. } => K::MakeDir,
            Step::MountDevPts { .. } => K::MountDevPts,
            Step::RemountDevReadonly { .. } => K::RemountDevReadonly,
            Step::Tmpfs { .. } => K::Tmpfs,
            Step::MakeMountPoint { .. } => K::MakeMountPoint,
            Step::Bind { .. } => K::Bind,
            Step::PivotRoot { .. } => K::PivotRoot,
            Step::RemountRootReadonly => K::RemountRootReadonly,
            Step::LoopbackUp => K::LoopbackUp,
            Step::Interfaces { .. } => K::Interfaces,
            Step::SetHostname { .. } => K::SetHostname,
            Step::ConsoleStdio => K::ConsoleStdio,
            Step::NullStdin => K::NullStdin,
            Step::Dup { .. } => K::Dup,
            Step::KeepOpen { .. } => K::KeepOpen,
            Step::Confine { .. } => K::Confine,
            Step::Chdir { .. } => K::Chdir,
            Step::Exec { .. } => K::Exec,
        }
    }
}

/// What the step is, for an error: names the path or command.
impl fmt::Display for Step<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::BecomeRoot => f.write_str("become root of the user namespace"),
            Step::ClearSignalMask => f.write_str("sigprocmask"),
            Step::Setsid => f.write_str("setsid"),
            Step::MakePrivate => f.write_str("make / private"),
            Step::BindRoot { root } => write!(f, "bind root {}", root.display()),
            Step::MountProc { .. } => f.write_str("mount /proc"),
            Step::MountSys { .. } => f.write_str("mount /sys"),
            Step::MountCgroup { .. } => f.write_str("mount /sys/fs/cgroup"),
            Step::ReadOnly { path, .. } => write!(f, "read-only {path}"),
            Step::Mask { path, .. } => write!(f, "masking {path}"),
            Step::MountDev { .. } => f.write_str("mount /dev"),
            Step::BindDevice { host, .. } => write!(f, "bind device {}", host.display()),
            Step::DevLink { link, .. } => write!(f, "dev link {}", link.display()),
            Step::MakeDir { path } => write!(f, "mkdir {}", path.display()),
            Step::MountDevPts { .. } => f.write_str("mount /dev/pts"),
            Step::RemountDevReadonly { .. } => f.write_str("remount /dev read-only"),
            Step::Tmpfs { inside, .. } => write!(f, "tmpfs {}", inside.display()),
            Step::MakeMountPoint { inside, .. } => write!(f, "mkdir {}", inside.display()),
            Step::Bind { src, inside, .. } => {
                write!(f, "bind {} onto {}", src.display(), inside.display())
            }
            Step::PivotRoot { root } => write!(f, "pivot_root into {}", root.display()),
            Step::RemountRootReadonly => f.write_str("remount / read-only"),
            Step::LoopbackUp => f.write_str("loopback"),
            Step::Interfaces { list } => write!(f, "{} network interface(s)", list.len()),
            Step::SetHostname { name } => write!(f, "sethostname {name}"),
            Step::ConsoleStdio => f.write_str("console as stdin, stdout and stderr"),
            Step::NullStdin => f.write_str("/dev/null as stdin"),
            Step::Dup { from, to } => write!(f, "dup2 {from} onto fd {to}"),
            Step::KeepOpen { fd } => write!(f, "keep fd {fd} open across exec"),
            Step::Confine { .. } => f.write_str("confine"),
            Step::Chdir { dir } => write!(f, "chdir {}", dir.display()),
            Step::Exec { argv, .. } => match argv.first() {
                Some(prog) => write!(f, "exec {}", prog.to_string_lossy()),
                None => f.write_str("exec of an empty command"),
            },
        }
    }
}

//! PID 1 proper: mount the runtime filesystems, set up cgroup v2, start
//! every system container, reap, restart, serve the API, and shut down.
//!
//! PID 1 must never exit: every error here is reported and survived.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::MsFlags;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::reboot::RebootMode;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use keel_spec::container::{self, ContainerDef};
use keel_spec::limits::WritableKind;
use keel_spec::{API_DIR, API_SOCKET, CONTAINERS_DIR};

use crate::api::{Request, Response, Status};
use crate::launch::{self, ProcFacts};
use crate::supervisor::{Exit, Health, Launcher, Probe, Supervisor};
use crate::{log, sys};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const SERVICES_CGROUP: &str = "/sys/fs/cgroup/system";
const LOG_DIR: &str = "/var/log/keel";
/// Added to the services' stop timeouts before shutdown goes on regardless.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Starts containers for real.
#[derive(Debug)]
struct HostLauncher;

impl Launcher for HostLauncher {
    fn start(&mut self, name: &str, def: &ContainerDef) -> Result<Pid, String> {
        let cg = Path::new(SERVICES_CGROUP).join(name);
        sys::mkdir_p(&cg, 0o755).map_err(|e| e.to_string())?;
        crate::cgroup::apply(&cg, &def.resources)?;
        let cgroup =
            launch::open_cgroup(&cg).map_err(|e| format!("cgroup {}: {e}", cg.display()))?;
        for w in def
            .writable
            .iter()
            .filter(|w| w.kind == WritableKind::Persistent)
        {
            let host = Path::new(launch::PERSISTENT_DIR)
                .join(name)
                .join(w.path.trim_start_matches('/'));
            sys::mkdir_p(&host, 0o755).map_err(|e| e.to_string())?;
        }
        let log_path = Path::new(LOG_DIR).join(format!("{name}.log"));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let plan = launch::plan(name, def).map_err(|e| e.to_string())?;
        launch::spawn(&plan, &cgroup, Some(&log_file)).map_err(|e| e.to_string())
    }

    fn signal(&mut self, pid: Pid, signal: Signal) {
        let _ = nix::sys::signal::kill(pid, signal);
    }

    fn facts(&self, pid: Pid) -> ProcFacts {
        launch::proc_facts(pid)
    }

    fn probe(&mut self, _name: &str, pid: Pid, def: &ContainerDef) -> Probe {
        match &def.readiness {
            Some(r) => crate::probe::run(pid, def, r),
            None => Probe::Ready,
        }
    }
}

fn warn(what: &str, r: Result<(), impl std::fmt::Display>) {
    if let Err(e) = r {
        log(format!("warning: {what}: {e}"));
    }
}

fn mount_runtime() {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    warn(
        "/run",
        sys::mount(
            Some("tmpfs"),
            Path::new("/run"),
            Some("tmpfs"),
            nosuid,
            Some("mode=0755,size=20%"),
        ),
    );
    warn(
        "/tmp",
        sys::mount(
            Some("tmpfs"),
            Path::new("/tmp"),
            Some("tmpfs"),
            nosuid,
            Some("mode=1777"),
        ),
    );
    warn(
        "/sys/fs/cgroup",
        sys::mount(
            Some("cgroup2"),
            Path::new(CGROUP_ROOT),
            Some("cgroup2"),
            nosuid | MsFlags::MS_NOEXEC,
            Some("nsdelegate"),
        ),
    );
    for d in ["/dev/pts", "/dev/shm"] {
        warn(d, sys::mkdir_p(Path::new(d), 0o755));
    }
    warn(
        "/dev/pts",
        sys::mount(
            Some("devpts"),
            Path::new("/dev/pts"),
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("mode=0620,ptmxmode=0666"),
        ),
    );
    warn(
        "/dev/shm",
        sys::mount(
            Some("tmpfs"),
            Path::new("/dev/shm"),
            Some("tmpfs"),
            nosuid,
            Some("mode=1777"),
        ),
    );
    for (d, mode) in [(API_DIR, 0o700), (LOG_DIR, 0o755), ("/var/lib/keel", 0o755)] {
        warn(d, sys::mkdir_p(Path::new(d), mode));
    }
}

/// Give every controller to the services' subtree, so each service's
/// cgroup can be limited.
fn setup_cgroups() -> Result<(), String> {
    let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"));
    let controllers = read(&format!("{CGROUP_ROOT}/cgroup.controllers"))?;
    let enable: String = controllers
        .split_whitespace()
        .map(|c| format!("+{c} "))
        .collect();
    let write = |p: String| std::fs::write(&p, enable.trim()).map_err(|e| format!("{p}: {e}"));
    write(format!("{CGROUP_ROOT}/cgroup.subtree_control"))?;
    sys::mkdir_p(Path::new(SERVICES_CGROUP), 0o755).map_err(|e| e.to_string())?;
    write(format!("{SERVICES_CGROUP}/cgroup.subtree_control"))
}

/// The system containers in the image, in name order. A definition that
/// does not parse is reported and left out; the rest still start.
fn load_definitions(dir: &Path) -> Vec<(String, ContainerDef)> {
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect(),
        Err(e) => {
            log(format!("error: {}: {e}", dir.display()));
            return Vec::new();
        }
    };
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let name = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let def = std::fs::read_to_string(&p)
            .map_err(|e| e.to_string())
            .and_then(|t| ContainerDef::parse(&t).map_err(|e| e.to_string()))
            .and_then(|d| {
                container::validate(&name, &d)
                    .map(|()| d)
                    .map_err(|e| e.to_string())
            });
        match def {
            Ok(d) => out.push((name, d)),
            Err(e) => log(format!("error: {}: {e}", p.display())),
        }
    }
    out
}

fn os_version() -> String {
    std::fs::read_to_string("/usr/lib/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("VERSION_ID=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into())
}

fn booted_slot() -> String {
    std::fs::read_to_string("/proc/cmdline")
        .ok()
        .and_then(|c| keel_spec::cmdline::BootParams::parse(&c).ok())
        .map_or_else(|| "unknown".into(), |p| p.slot.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shutdown {
    Poweroff,
    Reboot,
}

struct Init {
    sup: Supervisor<HostLauncher>,
    version: String,
    slot: String,
    /// The health last announced on the console.
    said: Health,
}

impl Init {
    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.exited(pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => self.exited(pid, Exit::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    fn exited(&mut self, pid: Pid, how: Exit) {
        let name = self
            .sup
            .services
            .iter()
            .find(|s| s.state.pid() == Some(pid))
            .map(|s| s.name.clone());
        if self.sup.on_exit(pid, how, Instant::now()) {
            log(format!("{}: exited ({how:?})", name.unwrap_or_default()));
        }
    }

    /// Announce the health gate's verdict once it changes from starting.
    fn check_ready(&mut self) {
        let health = self.sup.health();
        if health == self.said {
            return;
        }
        let (ready, total) = self.sup.counts();
        let ms = crate::boot_ms();
        match health {
            Health::Healthy if self.said == Health::Starting => log(format!(
                "ready version={} slot={} services={ready}/{total} ms={ms}",
                self.version, self.slot
            )),
            Health::Failed => {
                let failed: Vec<String> = self
                    .sup
                    .services
                    .iter()
                    .filter(|s| s.def.required && s.last_error.is_some() && s.state.pid().is_none())
                    .map(|s| format!("{} ({})", s.name, s.last_error.clone().unwrap_or_default()))
                    .collect();
                log(format!(
                    "unhealthy version={} slot={} ms={ms}: {}",
                    self.version,
                    self.slot,
                    failed.join(", ")
                ));
            }
            _ => {}
        }
        self.said = health;
    }

    fn status(&self) -> Status {
        let health = self.sup.health();
        Status {
            version: self.version.clone(),
            slot: self.slot.clone(),
            uptime_ms: crate::boot_ms(),
            ready: health == Health::Healthy,
            health: match health {
                Health::Starting => "starting",
                Health::Healthy => "healthy",
                Health::Failed => "failed",
            }
            .into(),
            services: self.sup.status(),
        }
    }

    /// Answer one API connection; returns a shutdown request if any.
    fn serve(&self, stream: UnixStream) -> Option<Shutdown> {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        let mut line = String::new();
        let mut reader = BufReader::new(&stream);
        let (response, shutdown) = match reader
            .read_line(&mut line)
            .map_err(|e| e.to_string())
            .and_then(|_| {
                serde_json::from_str::<Request>(&line).map_err(|e| format!("bad request: {e}"))
            }) {
            Ok(Request::Status) => (Response::Status(self.status()), None),
            Ok(Request::Poweroff) => (Response::Ok, Some(Shutdown::Poweroff)),
            Ok(Request::Reboot) => (Response::Ok, Some(Shutdown::Reboot)),
            Err(e) => (Response::Error(e), None),
        };
        let mut out = serde_json::to_string(&response).unwrap_or_default();
        out.push('\n');
        let _ = (&stream).write_all(out.as_bytes());
        shutdown
    }

    fn shutdown(&mut self, sfd: &SignalFd, how: Shutdown) -> ! {
        log(format!("{how:?}: stopping services"));
        // Services stop in reverse dependency order, each with its own
        // signal and timeout; the overall bound only guards against a
        // process that SIGKILL cannot end (stuck in the kernel).
        let longest: u64 = self
            .sup
            .services
            .iter()
            .map(|s| s.def.stop_timeout_ms)
            .sum();
        let deadline = Instant::now() + Duration::from_millis(longest) + STOP_GRACE;
        loop {
            self.sup.stop_tick(Instant::now());
            if self.sup.all_stopped() || Instant::now() > deadline {
                break;
            }
            let mut fds = [PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(50u16));
            while let Ok(Some(_)) = sfd.read_signal() {}
            self.reap();
        }
        nix::unistd::sync();
        if let Err(e) = sys::umount_detach(Path::new("/var")) {
            log(format!("warning: {e}"));
        }
        nix::unistd::sync();
        log(format!("{how:?}"));
        let mode = match how {
            Shutdown::Poweroff => RebootMode::RB_POWER_OFF,
            Shutdown::Reboot => RebootMode::RB_AUTOBOOT,
        };
        let err = nix::sys::reboot::reboot(mode).err();
        // reboot(2) returned: there is nothing left to do but wait.
        log(format!("error: reboot: {err:?}"));
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// Run PID 1. Never returns.
pub fn run() -> ! {
    // Ctrl-Alt-Del becomes SIGINT to PID 1 instead of an immediate reboot.
    warn(
        "disable Ctrl-Alt-Del",
        nix::sys::reboot::set_cad_enabled(false),
    );
    mount_runtime();
    warn("hostname", nix::unistd::sethostname("keel"));
    warn("loopback", sys::loopback_up());
    warn("cgroups", setup_cgroups());

    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGPWR,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        mask.add(s);
    }
    warn("sigprocmask", mask.thread_block());
    let sfd = match SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
        Ok(s) => s,
        Err(e) => {
            log(format!(
                "fatal: signalfd: {e}; cannot supervise, halting here"
            ));
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    };
    let _ = std::fs::remove_file(API_SOCKET);
    let listener = UnixListener::bind(API_SOCKET)
        .and_then(|l| {
            std::fs::set_permissions(API_SOCKET, std::fs::Permissions::from_mode(0o600))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .map_err(|e| log(format!("warning: API socket {API_SOCKET}: {e}")))
        .ok();

    let mut defs = load_definitions(Path::new(CONTAINERS_DIR));
    // keel build refuses a bad graph, so this is for images made otherwise:
    // the services caught in it never start, and the health gate says so.
    match keel_spec::lifecycle::start_order(&defs) {
        Ok(order) => defs.sort_by_key(|(n, _)| order.iter().position(|o| o == n)),
        Err(e) => log(format!("error: {e}")),
    }
    let mut init = Init {
        sup: Supervisor::new(HostLauncher, defs, Instant::now(), crate::boot_ms()),
        version: os_version(),
        slot: booted_slot(),
        said: Health::Starting,
    };
    init.sup.tick(Instant::now());
    init.check_ready();

    loop {
        let timeout = init
            .sup
            .next_deadline()
            .map(|d| {
                d.saturating_duration_since(Instant::now())
                    .as_millis()
                    .min(60_000) as i32
            })
            .unwrap_or(60_000);
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        if let Some(l) = &listener {
            fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
        }
        let _ = poll(
            &mut fds,
            PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX),
        );
        let mut shutdown = None;
        while let Ok(Some(info)) = sfd.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGTERM) => shutdown = Some(Shutdown::Poweroff),
                Ok(Signal::SIGINT) => shutdown = Some(Shutdown::Reboot),
                _ => {}
            }
        }
        init.reap();
        if let Some(l) = &listener {
            while let Ok((stream, _)) = l.accept() {
                if let Some(s) = init.serve(stream) {
                    shutdown = Some(s);
                }
            }
        }
        if let Some(how) = shutdown {
            init.shutdown(&sfd, how);
        }
        init.sup.tick(Instant::now());
        init.check_ready();
    }
}

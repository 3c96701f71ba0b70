//! PID 1 proper: mount the runtime filesystems, set up cgroup v2, start
//! every system container, reap, restart, serve the API, and shut down.
//!
//! PID 1 must never exit: every error here is reported and survived.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::reboot::RebootMode;
use nix::sys::signal::Signal;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use keel_formats::bootentry::ESP_MOUNT;

use crate::pid1::bootgate::Verdict;
use crate::supervisor::{Exit, Health, State, Supervisor};
use crate::{log, sys};
use keel_api::init::Response;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The controllers `[resources]` can set limits with.
const USED_CONTROLLERS: [&str; 4] = ["cpu", "io", "memory", "pids"];
const SERVICES_CGROUP: &str = "/sys/fs/cgroup/system";
const LOG_DIR: &str = "/var/log/keel";
/// Added to the services' stop timeouts before shutdown goes on regardless.
const STOP_GRACE: Duration = Duration::from_secs(5);

mod apply;
pub mod bootgate;
mod conns;
pub mod exec;
mod host;
mod images;
pub mod logs;
mod machine_id;
mod netsync;
pub mod probe;
mod retry;
mod serve;
mod setup;

use apply::Configured;
use host::{Esp, HostLauncher};
use setup::{
    api_listener, definitions, esp_state, mount_runtime, no_config, os_version, root_hash,
    setup_cgroups, signal_mask,
};

fn warn(what: &str, r: Result<(), impl std::fmt::Display>) {
    if let Err(e) = r {
        log(format!("warning: {what}: {e}"));
    }
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
    /// When userland began (stage 1's start), if this process ran stage 1.
    init_start_ms: Option<u64>,
    /// `keelctl exec` sessions: the process to wait for, the caller to tell.
    sessions: BTreeMap<Pid, UnixStream>,
    /// The running root hash, when booted from a slot: it names the boot
    /// entry the health gate blesses or marks bad.
    root_hash: Option<String>,
    /// A shutdown decided outside a signal or an API call (the gate).
    want_shutdown: Option<Shutdown>,
    /// The host config in force, and what it runs besides the image.
    cfg: Configured,
    /// API connections whose request has not come whole yet.
    conns: conns::Conns,
    /// Whether the firmware enforced Secure Boot, read once at boot.
    secure_boot: Option<bool>,
    /// What stage 1 mounted as `/var`.
    var: Option<keel_api::init::VarStorage>,
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
        if let Some(stream) = self.sessions.remove(&pid) {
            let code = match how {
                Exit::Code(c) => c,
                Exit::Signal(s) => 128i32.saturating_add(s),
            };
            keel_api::wire::respond(&stream, &Response::Exited { code });
            return;
        }
        let name = self
            .sup
            .services()
            .iter()
            .find(|s| s.state.pid() == Some(pid))
            .map(|s| s.name.clone());
        if self.sup.on_exit(pid, how, Instant::now()) {
            let name = name.unwrap_or_default();
            self.sup.launcher_mut().drain_pipes();
            self.sup
                .launcher_mut()
                .sink(&name)
                .note(&format!("exited ({how:?})"), SystemTime::now());
            log(format!("{name}: exited ({how:?})"));
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
            Health::Healthy if self.said == Health::Starting => {
                log(format!(
                    "ready version={} slot={} services={ready}/{total} ms={ms} init_start_ms={}",
                    self.version,
                    self.slot,
                    self.init_start_ms
                        .map_or_else(|| "?".to_string(), |ms| ms.to_string())
                ));
                self.gate(true);
            }
            Health::Failed => {
                let failed: Vec<String> = self
                    .sup
                    .services()
                    .iter()
                    .filter(|s| {
                        s.def.required
                            && s.last_error.is_some()
                            && !matches!(s.state, State::Running { .. } | State::Done)
                    })
                    .map(|s| format!("{} ({})", s.name, s.last_error.clone().unwrap_or_default()))
                    .collect();
                log(format!(
                    "unhealthy version={} slot={} ms={ms}: {}",
                    self.version,
                    self.slot,
                    failed.join(", ")
                ));
                self.gate(false);
            }
            _ => {}
        }
        let first_verdict = self.said == Health::Starting;
        self.said = health;
        if first_verdict {
            // The services that waited for the verdict start now.
            self.sup.tick(Instant::now());
        }
    }

    /// The boot health gate: keep the booted entry, or, if it is on trial
    /// and unhealthy, give it no more tries and reboot into the other slot.
    fn gate(&mut self, healthy: bool) {
        let Some(hash) = &self.root_hash else { return };
        self.sup.launcher_mut().ensure_esp();
        match crate::pid1::bootgate::decide(healthy, hash) {
            Ok(Verdict::Blessed { from, to }) => {
                log(format!("boot entry {from} is healthy: blessed as {to}"))
            }
            Ok(Verdict::MarkedBad { from, to }) => {
                log(format!(
                    "boot entry {from} failed its health gate: marked {to}; rebooting into the other slot"
                ));
                self.want_shutdown = Some(Shutdown::Reboot);
            }
            Ok(Verdict::Settled(_)) => {}
            Err(e) => log(format!("warning: boot health gate: {e}")),
        }
    }

    fn shutdown(&mut self, sfd: &SignalFd, how: Shutdown) -> ! {
        log(format!("{how:?}: stopping services"));
        // Services stop in reverse dependency order, each with its own
        // signal and timeout; the overall bound only guards against a
        // process that SIGKILL cannot end (stuck in the kernel).
        let longest: u64 = self
            .sup
            .services()
            .iter()
            .map(|s| s.def.stop_timeout_ms)
            .fold(0, u64::saturating_add);
        let deadline = crate::deadline(
            Instant::now(),
            Duration::from_millis(longest).saturating_add(STOP_GRACE),
        );
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
        // The ESP too, when keel-init mounted it: a clean unmount clears
        // FAT's dirty bit.
        let esp = (self.sup.launcher().esp == Esp::Mounted).then_some(ESP_MOUNT);
        for m in esp.into_iter().chain(["/var"]) {
            if let Err(e) = sys::umount_detach(Path::new(m)) {
                log(format!("warning: {e}"));
            }
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
/// `booted`: what stage 1 found, when keel-init started as stage 1.
pub fn run(booted: Option<crate::stage1::Booted>) -> ! {
    // Panics are reported on the console, where someone can see them;
    // `run` catches them so PID 1 lives on.
    std::panic::set_hook(Box::new(|info| log(format!("error: panic: {info}"))));
    // Ctrl-Alt-Del becomes SIGINT to PID 1 instead of an immediate reboot.
    warn(
        "disable Ctrl-Alt-Del",
        nix::sys::reboot::set_cad_enabled(false),
    );
    // Signals are blocked before any thread exists, so that every thread
    // inherits the mask and they all wait for the signalfd.
    let mask = signal_mask();
    warn("sigprocmask", mask.thread_block());
    // Independent set-up steps run side by side: each is mostly waiting on
    // the kernel (page-in through dm-verity, netlink, cgroup controllers).
    // Both threads end before the first container is cloned.
    let booted_from_slot = booted.is_some();
    let loopback = std::thread::spawn(move || {
        sys::loopback_up().map_err(|e| e.to_string())?;
        if booted_from_slot {
            crate::pid1::bootgate::link_partitions()?;
        }
        Ok::<(), String>(())
    });
    // /run is mounted first: converging on the host config writes there
    // (keel-update's policy, the resolvers, the SSH keys).
    mount_runtime();
    // Before any service starts: keel-update reads it for its seed.
    match machine_id::ensure(
        Path::new(keel_formats::host::MACHINE_ID),
        Path::new(keel_formats::host::RUN_MACHINE_ID),
    ) {
        Ok((_, true)) => log("drew a new machine id"),
        Ok(_) => {}
        Err(e) => log(format!("warning: machine id: {e}")),
    }
    // The host config decides which services run and how, so it is read
    // with the definitions (mounting the ESP on the way).
    let definitions = std::thread::spawn(move || {
        let (defs, confinements) = definitions();
        let zones = crate::config::zone_table();
        let config = crate::config::at_boot(
            booted_from_slot,
            &defs,
            zones.as_ref(),
            &mut crate::config::RealHost,
        );
        (defs, zones, confinements, config)
    });
    warn("cgroups", setup_cgroups());

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
    let listener = api_listener();

    warn(
        "loopback, partition links",
        loopback.join().unwrap_or_else(|_| Err("panicked".into())),
    );
    let (image_defs, zones, confinements, config) = definitions.join().unwrap_or_else(|_| {
        log("error: loading the container definitions and the host config panicked");
        (Vec::new(), None, BTreeMap::new(), no_config())
    });
    let launcher = HostLauncher::new(confinements, esp_state(&config.esp));
    let mut init = Init {
        sup: Supervisor::new(
            launcher,
            config.converged.defs.clone(),
            Instant::now(),
            crate::boot_ms(),
        ),
        version: os_version(),
        slot: booted.map_or_else(|| "unknown".into(), |b| b.slot.to_string()),
        said: Health::Starting,
        init_start_ms: booted.map(|b| b.started_ms),
        root_hash: booted.and_then(|_| root_hash()),
        want_shutdown: None,
        sessions: BTreeMap::new(),
        cfg: Configured::new(image_defs, zones, config),
        conns: conns::Conns::default(),
        secure_boot: booted.map_or_else(crate::sys::secure_boot, |b| b.secure_boot),
        var: booted.map(|b| b.var),
    };
    // Bridges, rules and VMs' taps on them before the first services
    // start.
    init.sync_networks(Instant::now());
    init.sup.tick(Instant::now());
    init.check_ready();
    let containers: Vec<_> = init.cfg.config.containers.clone().into_iter().collect();
    init.prepare(containers);

    loop {
        // PID 1 must not die: a bug in one turn of the loop is reported
        // and the next turn goes on.
        let turn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            turn(&mut init, &sfd, listener.as_ref())
        }));
        if turn.is_err() {
            log("error: internal error in the main loop (reported above); carrying on");
        }
    }
}

/// One turn of PID 1's loop: wait for a signal, an API call, service
/// output or a deadline, then act on it.
fn turn(init: &mut Init, sfd: &SignalFd, listener: Option<&UnixListener>) {
    let timeout = init
        .sup
        .next_deadline()
        .into_iter()
        .chain(init.trial_deadline())
        .chain(init.retry_deadline())
        .chain(init.nets_deadline())
        .chain(init.conns.deadline())
        .min()
        .map(|d| {
            d.saturating_duration_since(Instant::now())
                .as_millis()
                .min(60_000) as i32
        })
        .unwrap_or(60_000);
    {
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        if let Some(l) = listener {
            fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
        }
        for c in init.conns.fds() {
            fds.push(PollFd::new(c, PollFlags::POLLIN));
        }
        for pipe in init.sup.launcher().pipes.values() {
            fds.push(PollFd::new(pipe.as_fd(), PollFlags::POLLIN));
        }
        for pipe in init.preparing_fds() {
            fds.push(PollFd::new(pipe, PollFlags::POLLIN));
        }
        let _ = poll(
            &mut fds,
            PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX),
        );
    }
    init.sup.launcher_mut().drain_pipes();
    let mut shutdown = None;
    while let Ok(Some(info)) = sfd.read_signal() {
        match Signal::try_from(info.ssi_signo as i32) {
            Ok(Signal::SIGTERM) => shutdown = Some(Shutdown::Poweroff),
            Ok(Signal::SIGINT) => shutdown = Some(Shutdown::Reboot),
            _ => {}
        }
    }
    init.reap();
    if let Some(l) = listener {
        for received in init.conns.poll(l, Instant::now()) {
            if let Some(s) = init.serve(received) {
                shutdown = Some(s);
            }
        }
    }
    if let Some(how) = shutdown {
        init.shutdown(sfd, how);
    }
    init.workloads_ready();
    init.retry_due();
    init.retry_networks();
    init.check_trial();
    init.sup.tick(Instant::now());
    init.check_ready();
    if let Some(how) = init.want_shutdown.take() {
        init.shutdown(sfd, how);
    }
}

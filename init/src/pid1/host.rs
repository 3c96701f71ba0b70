//! The launcher PID 1 uses for real: clone3 into cgroups and namespaces,
//! service output into logs, readiness pipes, probes, the ESP on demand.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::SystemTime;

use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use keel_formats::bootentry::ESP_MOUNT;
use keel_formats::container::ContainerDef;
use keel_formats::limits::WritableKind;

use crate::launch::confine::{ConfineError, Confinement};
use crate::launch::{self, ProcFacts};
use crate::pid1::logs::LogSink;
use crate::supervisor::{Launcher, Probe, StartError};
use crate::{log, sys};

use super::{LOG_DIR, SERVICES_CGROUP};

/// Starts containers for real.
#[derive(Debug, Default)]
pub(super) struct HostLauncher {
    /// Each service's log, kept across restarts.
    logs: BTreeMap<String, LogSink>,
    /// Read ends of the pipes that carry services' stdout and stderr.
    pub(super) pipes: BTreeMap<String, File>,
    /// Read ends of notify-readiness pipes, and what came through so far.
    notify: BTreeMap<String, (File, Vec<u8>)>,
    /// Each service's confinement, seccomp filter compiled, from its first
    /// start on.
    confinements: BTreeMap<String, Confinement>,
    /// The ESP at /efi: mounted at boot to read the host config; if that
    /// failed, tried once more when the health gate or a service binding
    /// /efi needs it.
    pub(super) esp: Esp,
    /// Starts so far, for names of their own for each start's veths.
    starts: u32,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) enum Esp {
    /// Not booted from a slot: no ESP to mount.
    #[default]
    None,
    Unmounted,
    Mounted,
    /// Mounting failed; said once, not tried again.
    Failed,
}

/// The log of service `name`, made on first use.
fn sink_in<'a>(logs: &'a mut BTreeMap<String, LogSink>, name: &str) -> &'a mut LogSink {
    logs.entry(name.to_string())
        .or_insert_with(|| LogSink::new(Some(Path::new(LOG_DIR).join(format!("{name}.log")))))
}

impl HostLauncher {
    pub(super) fn new(confinements: BTreeMap<String, Confinement>, esp: Esp) -> HostLauncher {
        HostLauncher {
            confinements,
            esp,
            ..HostLauncher::default()
        }
    }
}

impl HostLauncher {
    /// Mount the ESP if it is due and not mounted yet.
    pub(super) fn ensure_esp(&mut self) {
        if self.esp == Esp::Unmounted {
            self.esp = match crate::pid1::bootgate::mount_esp() {
                Ok(()) => Esp::Mounted,
                Err(e) => {
                    log(format!("warning: ESP at {ESP_MOUNT}: {e}"));
                    Esp::Failed
                }
            };
        }
    }

    /// Service `name`'s confinement, worked out (seccomp filter compiled)
    /// once and reused by every start, probe and exec.
    pub(super) fn confinement(
        &mut self,
        name: &str,
        def: &ContainerDef,
    ) -> Result<&Confinement, ConfineError> {
        use std::collections::btree_map::Entry;
        Ok(match self.confinements.entry(name.to_string()) {
            Entry::Occupied(c) => c.into_mut(),
            Entry::Vacant(v) => v.insert(Confinement::from_def(def)?),
        })
    }

    pub(super) fn sink(&mut self, name: &str) -> &mut LogSink {
        sink_in(&mut self.logs, name)
    }

    /// Move whatever services have written into their logs; close pipes
    /// whose writers are all gone.
    pub(super) fn drain_pipes(&mut self) {
        let mut closed = Vec::new();
        let mut buf = [0u8; 8192];
        let now = SystemTime::now();
        for (name, pipe) in &mut self.pipes {
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => {
                        closed.push(name.clone());
                        break;
                    }
                    Ok(n) => sink_in(&mut self.logs, name).ingest(&buf[..n], now),
                    Err(_) => break,
                }
            }
        }
        for name in closed {
            self.pipes.remove(&name);
            self.sink(&name).flush(now);
        }
    }
}

/// What keel-init cannot do for a start on the host side (a cgroup, a
/// folder, a pipe) may work next time.
fn transient(e: impl std::fmt::Display) -> StartError {
    StartError::Transient(e.to_string())
}

fn pipe_error(e: nix::errno::Errno) -> StartError {
    launch::LaunchError::Pipe(e).into()
}

impl From<launch::LaunchError> for StartError {
    fn from(e: launch::LaunchError) -> StartError {
        match e.is_permanent() {
            true => StartError::Permanent(e.to_string()),
            false => StartError::Transient(e.to_string()),
        }
    }
}

/// A service between clone and exec.
struct Pending {
    spawned: launch::Spawned,
    /// Read end of its output pipe; None for a console service.
    out: Option<File>,
}

impl HostLauncher {
    /// Everything up to the container's clone: its cgroup, persistent
    /// folders, confinement and pipes.
    fn begin(&mut self, name: &str, def: &ContainerDef) -> Result<Pending, StartError> {
        if def
            .mounts
            .iter()
            .any(|m| Path::new(&m.source).starts_with(ESP_MOUNT))
        {
            self.ensure_esp();
        }
        let cg = Path::new(SERVICES_CGROUP).join(name);
        sys::mkdir_p(&cg, 0o755).map_err(transient)?;
        crate::launch::cgroup::apply(&cg, &def.resources).map_err(StartError::Transient)?;
        let cgroup = launch::open_cgroup(&cg)
            .map_err(|e| transient(format!("cgroup {}: {e}", cg.display())))?;
        for w in def
            .writable
            .iter()
            .filter(|w| w.kind == WritableKind::Persistent)
        {
            let host = Path::new(launch::PERSISTENT_DIR)
                .join(name)
                .join(w.path.trim_start_matches('/'));
            sys::mkdir_p(&host, 0o755).map_err(transient)?;
            // Root inside a user namespace is someone else outside: the
            // folder must belong to the service's mapped user.
            // So is a service that runs as a user of its own.
            let owner = match &def.user_namespace {
                Some(u) => (u.outside_uid(def.user.uid), u.outside_gid(def.user.gid)),
                None if def.user.uid != 0 => (Some(def.user.uid), Some(def.user.gid)),
                None => (None, None),
            };
            if owner != (None, None) {
                sys::give_folder(&host, owner).map_err(transient)?;
            }
        }
        let confine = self
            .confinement(name, def)
            .map_err(launch::LaunchError::from)?
            .clone();
        let mut plan = launch::plan_with(name, def, confine)?;
        self.starts = self.starts.wrapping_add(1);
        plan.veth_base = format!("vk{:x}", self.starts);
        // Output goes through a pipe so keel-init can stamp, keep and
        // rotate it; a console service writes to the console instead.
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(pipe_error)?;
        let read = File::from(read);
        nix::fcntl::fcntl(
            read.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
        )
        .map_err(pipe_error)?;
        let write = File::from(write);
        let notify = match def.readiness.as_ref().is_some_and(|r| r.notify) {
            true => {
                let (r, w) =
                    nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(pipe_error)?;
                Some((File::from(r), File::from(w)))
            }
            false => None,
        };
        let io = launch::Io {
            out: (!def.console).then_some(&write),
            notify: notify.as_ref().map(|(_, w)| w),
        };
        let spawned = launch::begin(&plan, &cgroup, io)?;
        if let Some((r, _)) = notify {
            self.notify.insert(name.to_string(), (r, Vec::new()));
        }
        Ok(Pending {
            spawned,
            out: (!def.console).then_some(read),
        })
    }

    /// Wait for a begun service's exec and record the outcome in its log.
    fn finish(
        &mut self,
        name: &str,
        begun: Result<Pending, StartError>,
    ) -> Result<Pid, StartError> {
        let pid = begun.and_then(|p| {
            let pid = p.spawned.wait_exec()?;
            if let Some(out) = p.out {
                self.pipes.insert(name.to_string(), out);
            }
            Ok(pid)
        });
        self.drain_pipes();
        let note = match &pid {
            Ok(pid) => format!("started, pid {pid}"),
            Err(e) => format!("cannot start: {e}"),
        };
        self.sink(name).note(&note, SystemTime::now());
        pid
    }
}

impl Launcher for HostLauncher {
    fn start(&mut self, name: &str, def: &ContainerDef) -> Result<Pid, StartError> {
        let begun = self.begin(name, def);
        self.finish(name, begun)
    }

    /// Every container of the batch is cloned before any exec is awaited,
    /// so their setups (mounts, pivot_root, first page-in of the command)
    /// overlap instead of queueing.
    fn start_all(&mut self, batch: &[(&str, &ContainerDef)]) -> Vec<Result<Pid, StartError>> {
        let begun: Vec<_> = batch.iter().map(|(n, d)| self.begin(n, d)).collect();
        batch
            .iter()
            .zip(begun)
            .map(|((n, _), b)| self.finish(n, b))
            .collect()
    }

    fn signal(&mut self, pid: Pid, signal: Signal) {
        let _ = nix::sys::signal::kill(pid, signal);
    }

    fn facts(&self, pid: Pid) -> ProcFacts {
        launch::proc_facts(pid)
    }

    fn probe(&mut self, name: &str, pid: Pid, def: &ContainerDef) -> Probe {
        match &def.readiness {
            Some(r) if r.notify => {
                let Some((pipe, seen)) = self.notify.get_mut(name) else {
                    return Probe::NotYet("no notify pipe".into());
                };
                let mut buf = [0u8; 256];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    seen.extend_from_slice(&buf[..n]);
                    seen.truncate(4096);
                }
                if String::from_utf8_lossy(seen)
                    .lines()
                    .any(|l| l.trim() == "READY=1")
                {
                    self.notify.remove(name);
                    Probe::Ready
                } else {
                    Probe::NotYet("no READY=1 on the notify fd yet".into())
                }
            }
            Some(r) => match self.confinement(name, def) {
                Ok(c) => crate::pid1::probe::run(pid, def, r, c),
                Err(e) => Probe::NotYet(e.to_string()),
            },
            None => Probe::Ready,
        }
    }

    fn forget(&mut self, name: &str) {
        self.confinements.remove(name);
    }
}

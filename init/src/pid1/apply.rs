//! A host config on a running host: the person's containers (unpacked by
//! helper processes, added as they are ready, on the container networks
//! of [`super::netsync`]) and `keelctl config apply [--try]` /
//! `confirm`, which restart only what a new config changes and revert a
//! trial that is not confirmed in time. The helpers are processes, not
//! threads: PID 1 clones containers and must stay single-threaded.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::process::{ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use keel_formats::container::{ContainerDef, Share};
use keel_formats::hostconfig::types::UserContainer;
use keel_formats::hostconfig::values::ImageSource;
use keel_formats::hostconfig::HostConfig;

use crate::config::converge::{plan_containers, plan_services};
use crate::config::{self, ConfigSource, ConfigState, RealHost};
use crate::containers::idranges;
use crate::containers::{self, Unpacked};
use crate::log;
use crate::supervisor::Change;
use keel_api::init::{Response, MAX_TRIAL_S};
use keel_api::pull::{hosts_for, PullRequest};

use super::Init;

/// keel-init itself, for its helper processes.
const SELF: &str = "/proc/self/exe";

/// A container whose image a helper is unpacking.
#[derive(Debug)]
pub(super) struct Preparing {
    /// The entry it is prepared from (a result for an entry since changed
    /// is dropped).
    uc: UserContainer,
    /// The first host id of its user namespace's range, if it has one.
    range: Option<u32>,
    out: ChildStdout,
    got: Vec<u8>,
}

/// The host config side of PID 1's state.
#[derive(Debug)]
pub(super) struct Configured {
    /// The image's service definitions before any host config.
    pub image_defs: Vec<(String, ContainerDef)>,
    /// The config in force.
    pub config: HostConfig,
    pub state: ConfigState,
    /// Every service of the image, for checking host configs.
    pub services: Vec<String>,
    /// The image's zone table.
    pub zones: Option<BTreeMap<String, String>>,
    /// Interfaces with a DHCP client.
    pub dhcp: Vec<String>,
    /// The `TZ` rule of the config in force.
    pub tz: String,
    pub preparing: BTreeMap<String, Preparing>,
    /// The container networks on the host.
    pub nets: crate::net::containers::Networks,
    /// When to try again what of the networks failed.
    pub nets_retry: Option<Instant>,
    /// Remove unused unpacked roots once the boot's containers are ready.
    pub prune_pending: bool,
    /// Keep the image store within its budget once the containers of the
    /// boot, or of an apply, are ready.
    pub collect_pending: bool,
    pub trial: Option<Trial>,
    /// Registry images whose pull failed, to try again.
    pub retries: super::retry::Retries,
}

/// A config applied with `--try`.
#[derive(Debug)]
pub(super) struct Trial {
    pub until: Instant,
    /// What to go back to.
    pub previous: HostConfig,
    pub previous_state: ConfigState,
    /// The tried file's text, written to the ESP once confirmed.
    pub text: String,
}

/// When a trial of `s` seconds that starts `now` ends, or why it cannot.
pub(super) fn trial_end(now: Instant, s: u64) -> Result<Instant, String> {
    if !(1..=MAX_TRIAL_S).contains(&s) {
        return Err(format!(
            "--try {s}s: a trial lasts from 1 s to {} s",
            MAX_TRIAL_S
        ));
    }
    now.checked_add(Duration::from_secs(s))
        .ok_or_else(|| format!("--try {s}s: past the end of this clock"))
}

impl Configured {
    pub(super) fn new(
        image_defs: Vec<(String, ContainerDef)>,
        zones: Option<BTreeMap<String, String>>,
        at_boot: config::AtBoot,
    ) -> Configured {
        Configured {
            services: image_defs.iter().map(|(n, _)| n.clone()).collect(),
            image_defs,
            zones,
            config: at_boot.config,
            state: at_boot.state,
            dhcp: at_boot.converged.dhcp,
            tz: at_boot.converged.tz,
            preparing: BTreeMap::new(),
            nets: Default::default(),
            nets_retry: None,
            prune_pending: true,
            collect_pending: true,
            trial: None,
            retries: Default::default(),
        }
    }
}

impl Init {
    /// Start unpacking the images of `which`, each in a helper process.
    pub(super) fn prepare(&mut self, which: Vec<(String, UserContainer)>) {
        for (name, uc) in which {
            let range = match uc.userns {
                Share::Private => match idranges::range_of(Path::new(idranges::RANGES_FILE), &name)
                {
                    Ok(base) => Some(base),
                    Err(e) => {
                        self.warn(format!("containers.{name}: its id range: {e}"));
                        continue;
                    }
                },
                Share::Host => None,
            };
            // A registry image's pull request (with the registry's
            // credentials) goes to the helper on stdin.
            let (image, request) = match &uc.image {
                ImageSource::Path(path) => (path.clone(), None),
                ImageSource::Registry(reference) => {
                    let req = PullRequest {
                        reference: reference.to_string(),
                        policy: uc.pull,
                        hosts: hosts_for(reference, &self.cfg.config.registries),
                    };
                    match serde_json::to_vec(&req) {
                        Ok(text) => ("-".to_string(), Some(text)),
                        Err(e) => {
                            self.warn(format!("containers.{name}: its pull request: {e}"));
                            continue;
                        }
                    }
                }
            };
            let spawned = Command::new(SELF)
                .args(["prepare-container", containers::ROOTS_DIR, &image])
                .args(range.map(|b| b.to_string()))
                .stdin(if request.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .spawn();
            let out = spawned.map_err(|e| e.to_string()).and_then(|mut child| {
                if let (Some(text), Some(mut stdin)) = (&request, child.stdin.take()) {
                    // Far below a pipe's buffer: this does not wait on the
                    // helper. Dropping stdin ends the request.
                    std::io::Write::write_all(&mut stdin, text).map_err(|e| e.to_string())?;
                }
                let out = child.stdout.take().ok_or("no pipe")?;
                let fd = std::os::fd::AsRawFd::as_raw_fd(&out);
                let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)
                    .map_err(|e| e.to_string())?;
                let flags =
                    nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
                nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags))
                    .map_err(|e| e.to_string())?;
                // Reaped by PID 1's loop like any other child.
                drop(child);
                Ok(out)
            });
            match out {
                Ok(out) => {
                    self.cfg.preparing.insert(
                        name,
                        Preparing {
                            uc,
                            range,
                            out,
                            got: Vec::new(),
                        },
                    );
                }
                Err(e) => self.warn(format!("containers.{name}: starting its preparation: {e}")),
            }
        }
    }

    /// A warning about container `name` that replaces its earlier ones: a
    /// pull tried again and again says so once, with the latest reason.
    fn warn_container(&mut self, name: &str, w: String) {
        let prefix = format!("containers.{name}: ");
        self.cfg
            .state
            .warnings
            .retain(|old| !old.starts_with(&prefix));
        self.warn(format!("{prefix}{w}"));
    }

    /// When the next failed pull is tried again.
    pub(super) fn retry_deadline(&self) -> Option<Instant> {
        self.cfg.retries.next()
    }

    /// Prepare again the containers whose retry is due.
    pub(super) fn retry_due(&mut self) {
        let due = self
            .cfg
            .retries
            .due(Instant::now(), &self.cfg.config.containers);
        if !due.is_empty() {
            for (name, _) in &due {
                log(format!("{name}: pulling its image again"));
            }
            self.prepare(due);
        }
    }

    pub(super) fn warn(&mut self, w: String) {
        log(format!("error: {w}"));
        self.cfg.state.warnings.push(w);
    }

    /// The pipes of the helpers still unpacking, for PID 1's poll.
    pub(super) fn preparing_fds(&self) -> Vec<BorrowedFd<'_>> {
        self.cfg.preparing.values().map(|p| p.out.as_fd()).collect()
    }

    /// Add the containers whose images are unpacked.
    pub(super) fn workloads_ready(&mut self) {
        let now = Instant::now();
        let mut done = Vec::new();
        for (name, p) in self.cfg.preparing.iter_mut() {
            let mut buf = [0u8; 4096];
            loop {
                match p.out.read(&mut buf) {
                    Ok(0) => {
                        done.push(name.clone());
                        break;
                    }
                    Ok(n) => p.got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        done.push(name.clone());
                        break;
                    }
                }
            }
        }
        for name in done {
            let Some(p) = self.cfg.preparing.remove(&name) else {
                continue;
            };
            if self.cfg.config.containers.get(&name) != Some(&p.uc) {
                continue;
            }
            let unpacked = serde_json::from_slice::<Result<Unpacked, String>>(&p.got)
                .unwrap_or_else(|_| {
                    Err("the preparing helper ended without a result (see the console)".into())
                });
            let mut w = match unpacked.and_then(|u| containers::finish(&name, &p.uc, &u, p.range)) {
                Ok(w) => w,
                Err(e) if matches!(p.uc.image, ImageSource::Registry(_)) => {
                    let at = self.cfg.retries.failed(&name, &p.uc, now);
                    let wait = at.saturating_duration_since(now).as_secs();
                    self.warn_container(&name, format!("{e} (trying again in {wait} s)"));
                    continue;
                }
                Err(e) => {
                    self.warn(format!("containers.{name}: {e}"));
                    continue;
                }
            };
            self.cfg.retries.forget(&name);
            let stale = format!("containers.{name}: ");
            self.cfg.state.warnings.retain(|w| !w.starts_with(&stale));
            config::derive::set_tz(&mut w.def, &self.cfg.tz);
            w.def.interfaces = self.interfaces_of(&name);
            match self.sup.upsert(&name, w.def, now) {
                Change::Added => log(format!("{name}: container added")),
                Change::Replaced => log(format!("{name}: container changed, restarting")),
                Change::Unchanged => {}
            }
        }
        // Once the boot's containers are ready and the boot's verdict is
        // in: a helper started earlier competes with the services the
        // verdict waits for. Roots are pruned once a boot (a root being
        // unpacked by a later apply must not meet a prune that does not
        // know it); the store, which keel-pull guards, after every apply.
        if self.cfg.preparing.is_empty() && self.said != crate::supervisor::Health::Starting {
            if std::mem::take(&mut self.cfg.prune_pending) {
                self.prune_roots();
            }
            if std::mem::take(&mut self.cfg.collect_pending) {
                self.collect_images();
            }
        }
    }

    /// Run on config `new`: converged on from the config in force, then
    /// every service and container whose definition changed restarted and
    /// the ones gone stopped. Returns what changed and what did not take.
    fn run_on(&mut self, new: HostConfig, source: ConfigSource) -> (Vec<String>, Vec<String>) {
        let now = Instant::now();
        let old = std::mem::replace(&mut self.cfg.config, new);
        let image = config::Image {
            defs: &self.cfg.image_defs,
            zones: self.cfg.zones.as_ref(),
        };
        let before = config::Before {
            config: &old,
            dhcp: &self.cfg.dhcp,
        };
        let out = config::converge(Some(before), &self.cfg.config, image, &mut RealHost);
        for w in &out.warnings {
            log(format!("warning: host config: {w}"));
        }
        let mut changes = out.changes;
        let users: Vec<String> = old.containers.keys().cloned().collect();
        let table = self
            .sup
            .services()
            .iter()
            .filter(|s| !s.retiring)
            .map(|s| (s.name.as_str(), &s.def));
        let plan = plan_services(table, out.defs, &users);
        for name in plan.stop {
            if self.sup.retire(&name, now).is_ok() {
                changes.push(format!("stopped {name}"));
            }
        }
        for (name, def) in plan.start {
            match self.sup.upsert(&name, def, now) {
                Change::Replaced => changes.push(format!("restarted {name}")),
                Change::Added | Change::Unchanged => changes.push(format!("started {name}")),
            }
        }
        // The person's containers: new or changed ones are prepared anew.
        let containers = plan_containers(&old, &self.cfg.config);
        for name in containers.remove {
            self.cfg.preparing.remove(&name);
            if self.sup.retire(&name, now).is_ok() {
                changes.push(format!("stopped container {name}"));
            }
        }
        for (name, _) in &containers.prepare {
            changes.push(format!("preparing container {name}"));
        }
        self.prepare(containers.prepare);
        // Networks follow the new config before its containers start
        // (they are being prepared): a container added to a network
        // finds its bridge there.
        self.sync_networks(now);
        self.cfg.collect_pending = true;
        self.cfg.dhcp = out.dhcp;
        self.cfg.tz = out.tz;
        self.cfg.state = ConfigState {
            source,
            errors: Vec::new(),
            disabled: out.disabled,
            warnings: out.warnings.clone(),
            trial_until_ms: None,
        };
        (changes, out.warnings)
    }

    /// `keelctl config apply`: check the file as at boot, then run on it.
    pub(super) fn apply_config(&mut self, name: &str, text: &str, try_s: Option<u64>) -> Response {
        // Checked before anything changes: the config must not be applied
        // by a request that is then refused.
        let until = match try_s.map(|s| trial_end(Instant::now(), s)).transpose() {
            Ok(u) => u,
            Err(e) => return Response::Error(e),
        };
        let new = match config::read(name, text, &self.cfg.services, self.cfg.zones.as_ref()) {
            Ok(c) => c,
            Err(problems) => return Response::Problems(problems),
        };
        // A trial replaced by another keeps the config from before both.
        let previous = match self.cfg.trial.take() {
            Some(t) => (t.previous, t.previous_state),
            None => (self.cfg.config.clone(), self.cfg.state.clone()),
        };
        let source = if try_s.is_some() {
            ConfigSource::Trial
        } else {
            ConfigSource::Esp
        };
        let (mut changes, mut warnings) = self.run_on(new, source);
        match try_s {
            Some(s) => {
                let until = until.unwrap_or_else(Instant::now);
                // s <= MAX_TRIAL_S: neither overflows.
                self.cfg.state.trial_until_ms =
                    Some(crate::boot_ms().saturating_add(s.saturating_mul(1000)));
                self.cfg.trial = Some(Trial {
                    until,
                    previous: previous.0,
                    previous_state: previous.1,
                    text: text.to_string(),
                });
                changes.push(format!(
                    "on trial for {s} s: `keelctl config confirm` keeps it"
                ));
            }
            None => warnings.extend(self.keep(text)),
        }
        log(format!("host config applied: {}", changes.join("; ")));
        Response::Applied { changes, warnings }
    }

    /// Make the config in force the one the host boots on.
    fn keep(&mut self, text: &str) -> Option<String> {
        if let Err(e) = config::save_last_good(&self.cfg.config) {
            log(format!("warning: keeping the host config: {e}"));
        }
        self.sup.launcher_mut().ensure_esp();
        if self.sup.launcher().esp != super::host::Esp::Mounted {
            let w = "no ESP mounted: the config lasts until the next boot".to_string();
            log(format!("warning: {w}"));
            return Some(w);
        }
        config::write_esp(text)
            .err()
            .inspect(|e| log(format!("error: {e}")))
    }

    /// `keelctl config confirm`.
    pub(super) fn confirm_config(&mut self) -> Response {
        let Some(trial) = self.cfg.trial.take() else {
            return Response::Error("no config is on trial".into());
        };
        self.cfg.state.source = ConfigSource::Esp;
        self.cfg.state.trial_until_ms = None;
        let warnings: Vec<String> = self.keep(&trial.text).into_iter().collect();
        log("host config confirmed");
        Response::Applied {
            changes: vec!["confirmed: the host boots on it".into()],
            warnings,
        }
    }

    /// When a trial ends, if one is running.
    pub(super) fn trial_deadline(&self) -> Option<Instant> {
        self.cfg.trial.as_ref().map(|t| t.until)
    }

    /// Go back to the config from before the trial once it has run out.
    pub(super) fn check_trial(&mut self) {
        let now = Instant::now();
        if self.cfg.trial.as_ref().is_none_or(|t| now < t.until) {
            return;
        }
        let Some(trial) = self.cfg.trial.take() else {
            return;
        };
        log("host config trial not confirmed in time: going back to the previous config");
        let (changes, _) = self.run_on(trial.previous, trial.previous_state.source);
        let mut state = trial.previous_state;
        state
            .warnings
            .push("a trial config was not confirmed and was reverted".into());
        self.cfg.state = state;
        log(format!("host config reverted: {}", changes.join("; ")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trial_is_bounded_before_anything_is_applied() {
        let now = Instant::now();
        assert_eq!(trial_end(now, 60).unwrap(), now + Duration::from_secs(60));
        assert!(trial_end(now, MAX_TRIAL_S).is_ok());
        // The request, which used to overflow Instant + Duration.
        let e = trial_end(now, 18_000_000_000_000_000_000).unwrap_err();
        assert!(
            e.starts_with("--try 18000000000000000000s: a trial lasts"),
            "{e}"
        );
        assert!(trial_end(now, 0).is_err());
        assert!(trial_end(now, MAX_TRIAL_S + 1).is_err());
    }
}

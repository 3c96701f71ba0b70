//! The update agent: check the repository, apply a bundle, roll back. It
//! keeps a status that `keelctl update status` reads while it works.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ed25519_dalek::VerifyingKey;

use keel_api::update::{Progress, UpdateState, UpdateStatus};
use keel_formats::bootentry::EntryName;
use keel_formats::cmdline::{to_hex, BootParams};
use keel_formats::disk::Slot;
use keel_formats::policy::{Policy, RebootPolicy};

use crate::entries::Entries;
use crate::error::{io_err, UpdateError};
use crate::install::{check_fits, check_policy, install, Disk, Running};
use crate::slots::Partitions;
use crate::state::{settle, Pending, Store};
use crate::verify::{Head, Verified};
use crate::{fetch, verify};

/// Where things are on a host; tests point these at temporary folders.
/// What a check, an install or a rollback did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    /// In words, for the caller and `last_result`.
    pub message: String,
    /// Whether the entry that boots next changed (the host reboots into
    /// it as its policy says).
    pub changed: bool,
}

impl std::fmt::Display for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Debug, Clone)]
pub struct Paths {
    pub partitions: PathBuf,
    pub entries: PathBuf,
    pub state: PathBuf,
    pub keys: PathBuf,
    /// The host's machine id (keel_formats::host::RUN_MACHINE_ID).
    pub machine_id: PathBuf,
    /// The kernel's id of this boot (/proc/sys/kernel/random/boot_id).
    pub boot_id: PathBuf,
}

#[derive(Debug)]
pub struct Agent {
    pub disk: Disk,
    pub store: Store,
    pub keys_dir: PathBuf,
    pub policy: Policy,
    pub running: Running,
    pub slot: Slot,
    /// The host's place in staged rollouts.
    pub place: u32,
    /// Reboots coordinated with the host's group, if the policy says so.
    pub coordinator: Option<crate::coordinate::Coordinator>,
    pub status: Arc<Mutex<UpdateStatus>>,
    /// This boot's id; none where the kernel has none to read.
    pub boot_id: Option<String>,
    /// Serialises check, apply and rollback.
    busy: Mutex<()>,
}

/// What a check of the repository found.
enum Next {
    /// Downloaded: install it (the bundle, its version, how it came).
    Install(PathBuf, String, String),
    UpToDate,
    /// Newer, but this host's wave of its rollout is not open: why.
    Wait(String),
}

/// A host's turn in a rollout, in words.
fn rollout_words(place: u32, version: &str, turn: keel_formats::rollout::Turn, now: u64) -> String {
    use keel_formats::rollout::{Turn, PLACES};
    match turn {
        Turn::Wave { wave, opens } if opens <= now => {
            format!("place {place} of {PLACES}: wave {wave} of {version}'s rollout is open")
        }
        Turn::Wave { wave, opens } => format!(
            "place {place} of {PLACES}: waiting for wave {wave} of {version}'s rollout, which opens in {} s (at {opens})",
            opens.saturating_sub(now)
        ),
        Turn::NotYet => format!(
            "place {place} of {PLACES}: no wave of {version}'s rollout reaches this host yet"
        ),
    }
}

/// Eight bytes from the kernel's random pool.
fn random_seed() -> Result<u64, UpdateError> {
    use std::io::Read;
    let mut b = [0u8; 8];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| UpdateError::State(format!("/dev/urandom: {e}")))?;
    Ok(u64::from_ne_bytes(b))
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `KEY=value` of an os-release text.
fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim_matches('"').to_string())
}

impl Agent {
    pub fn new(
        paths: &Paths,
        policy: Policy,
        cmdline: &str,
        os_release: &str,
    ) -> Result<Agent, UpdateError> {
        let params = BootParams::parse(cmdline)
            .map_err(|e| UpdateError::State(format!("/proc/cmdline: {e}")))?;
        let field = |k: &str| {
            os_release_value(os_release, k)
                .ok_or_else(|| UpdateError::State(format!("os-release lacks {k}")))
        };
        let running = Running {
            variant: field("IMAGE_ID")?,
            version: field("VERSION_ID")?,
            verity: params.verity,
        };
        let disk = Disk {
            parts: Partitions {
                dir: paths.partitions.clone(),
            },
            entries: Entries {
                dir: paths.entries.clone(),
            },
        };
        let slot = disk.parts.booted_slot(&running.verity)?;
        let store = Store {
            dir: paths.state.clone(),
        };
        let mut state = store.load()?;
        // The config's seed, else the one this host had before machine
        // ids (its place must not move under a rollout), else the machine
        // id's, else one of its own.
        let machine = fs::read_to_string(&paths.machine_id)
            .ok()
            .and_then(|t| keel_formats::host::parse_machine_id(&t))
            .map(|id| keel_formats::host::rollout_seed(&id));
        let seed = match (policy.rollout_seed, state.seed, machine) {
            (Some(s), _, _) | (None, Some(s), _) | (None, None, Some(s)) => s,
            (None, None, None) => {
                let s = random_seed()?;
                state.seed = Some(s);
                store.save(&state)?;
                s
            }
        };
        let place = keel_formats::rollout::place(seed);
        let coordinator = policy.coordination.as_ref().map(|c| {
            let host = c
                .host
                .clone()
                .unwrap_or_else(|| format!("keel-{seed:016x}"));
            crate::coordinate::Coordinator::new(c, host)
        });
        let status = UpdateStatus {
            version: running.version.clone(),
            slot: slot.to_string(),
            state: UpdateState::Idle,
            repository: policy.repository.clone(),
            channel: policy.channel.clone(),
            last_result: state.last_result.clone(),
            outcome: state.outcome.clone(),
            rollout: Some(format!(
                "place {place} of {} in staged rollouts",
                keel_formats::rollout::PLACES
            )),
            ..UpdateStatus::default()
        };
        let agent = Agent {
            disk,
            store,
            keys_dir: paths.keys.clone(),
            policy,
            running,
            slot,
            place,
            coordinator,
            status: Arc::new(Mutex::new(status)),
            boot_id: fs::read_to_string(&paths.boot_id)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
            busy: Mutex::new(()),
        };
        // Not fatal: status requests settle again.
        if let Err(e) = agent.settle() {
            eprintln!("keel-update: {e}");
        }
        Ok(agent)
    }

    /// An update is installed and this boot is from before it: the host
    /// still has to reboot into it.
    pub fn awaiting_reboot(&self) -> bool {
        self.store.load().is_ok_and(|s| {
            s.pending
                .is_some_and(|p| p.boot.is_some() && p.boot == self.boot_id)
        })
    }

    /// Record what became of a pending update, once that is known: the
    /// host came back on the old version, or the new one was blessed.
    pub fn settle(&self) -> Result<(), UpdateError> {
        let mut state = self.store.load()?;
        if state.pending.is_none() {
            return Ok(());
        }
        let running_hash = to_hex(&self.running.verity.root_hash);
        let blessed = self
            .disk
            .entries
            .find(&running_hash)?
            .is_some_and(|e| e.name.tries_left.is_none());
        if let Some(msg) = settle(
            &mut state,
            &self.running.version,
            blessed,
            now(),
            self.boot_id.as_deref(),
        ) {
            eprintln!("keel-update: {msg}");
            self.store.save(&state)?;
            self.set(|s| {
                s.last_result = Some(msg);
                s.outcome = state.outcome.clone();
            });
        }
        Ok(())
    }

    /// The image's keys, the host config's and those introduced by signed
    /// indexes.
    fn trusted(&self) -> Result<Vec<VerifyingKey>, UpdateError> {
        let mut keys = Vec::new();
        if let Ok(dir) = fs::read_dir(&self.keys_dir) {
            for e in dir.flatten() {
                let text = fs::read_to_string(e.path()).map_err(io_err(&e.path()))?;
                keys.push(
                    keel_formats::keys::parse_public(&text).map_err(|err| {
                        UpdateError::State(format!("{}: {err}", e.path().display()))
                    })?,
                );
            }
        }
        // The host config's keys (validated before they got here), then
        // those introduced by signed indexes.
        for k in self
            .policy
            .trusted_keys
            .iter()
            .chain(&self.store.load()?.keys)
        {
            if let Ok(k) = keel_formats::keys::parse_public_hex(k) {
                keys.push(k);
            }
        }
        Ok(keys)
    }

    pub(crate) fn set(&self, f: impl FnOnce(&mut UpdateStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    fn progress(&self, phase: UpdateState, total: u64) -> impl FnMut(u64) + '_ {
        let mut p = self.progress_of(phase);
        move |bytes| p(bytes, total)
    }

    /// Progress whose total is known only on the way (a delta's).
    fn progress_of(&self, phase: UpdateState) -> impl FnMut(u64, u64) + '_ {
        let started = Instant::now();
        self.set(|s| s.state = phase);
        move |bytes, total| {
            let secs = started.elapsed().as_secs_f64().max(0.001);
            self.set(|s| {
                s.progress = Some(Progress {
                    phase,
                    bytes,
                    total,
                    rate_bytes_per_s: (bytes as f64 / secs) as u64,
                })
            });
        }
    }

    fn finish(&self, result: &Result<Done, UpdateError>) {
        let text = match result {
            Ok(d) => d.message.clone(),
            Err(e) => format!("refused: {e}"),
        };
        eprintln!("keel-update: {text}");
        if let Ok(mut st) = self.store.load() {
            st.last_result = Some(text.clone());
            let _ = self.store.save(&st);
        }
        self.set(|s| {
            s.last_result = Some(text);
            if s.state != UpdateState::Installed {
                s.state = UpdateState::Idle;
            }
            s.progress = None;
        });
    }

    /// Install the bundle in `file`, which its owner may still change: it
    /// is copied into the updater's storage while it is verified, and
    /// installed from that copy. Nothing is written to a slot before the
    /// whole bundle has been verified.
    pub fn apply(&self, file: File) -> Result<Done, UpdateError> {
        let _busy = self.busy.lock();
        let r = self.apply_foreign(file);
        self.finish(&r);
        r
    }

    fn apply_foreign(&self, mut file: File) -> Result<Done, UpdateError> {
        let head = self.admit(&mut file)?;
        let dir = self.store.downloads();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let total = verify::payload_bytes(&head.manifest);
        let free = nix::sys::statvfs::statvfs(&dir)
            .map(|v| v.blocks_available().saturating_mul(v.fragment_size()))
            .map_err(|e| io_err(&dir)(e.into()))?;
        if free < total {
            return Err(UpdateError::State(format!(
                "{} has {free} bytes free; the bundle's copy needs {total}",
                dir.display()
            )));
        }
        // Unlinked at once, so that nothing is left behind (a power cut
        // just here leaves a file that the next download clears).
        let name = dir.join("apply.bundle");
        let _ = fs::remove_file(&name);
        let copy = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&name)
            .map_err(io_err(&name))?;
        fs::remove_file(&name).map_err(io_err(&name))?;
        let mut bundle = verify::copy_checked(
            &mut file,
            head,
            (copy, &dir),
            &mut self.progress(UpdateState::Verifying, total),
        )?;
        self.install_verified(&mut bundle, None)
    }

    /// Install a bundle the updater downloaded itself (`how`, in words).
    fn apply_own(&self, path: &Path, how: &str) -> Result<Done, UpdateError> {
        let mut file = File::open(path).map_err(io_err(path))?;
        let head = self.admit(&mut file)?;
        let total = verify::payload_bytes(&head.manifest);
        let mut bundle = verify::check_own(
            file,
            head,
            &mut self.progress(UpdateState::Verifying, total),
        )?;
        self.install_verified(&mut bundle, Some(how))
    }

    /// The bundle's signed head, if this host may install it.
    fn admit(&self, file: &mut File) -> Result<Head, UpdateError> {
        let head = verify::read_head(file, &self.trusted()?)?;
        self.admit_head(head)
    }

    fn admit_head(&self, head: Head) -> Result<Head, UpdateError> {
        check_policy(&head.manifest, &self.running)?;
        check_fits(&head.manifest, &self.disk, self.slot.other())?;
        Ok(head)
    }

    fn install_verified(
        &self,
        bundle: &mut Verified,
        how: Option<&str>,
    ) -> Result<Done, UpdateError> {
        let head = bundle.head().clone();
        let m = &head.manifest;
        let target = self.slot.other();
        let total = verify::payload_bytes(m);
        let mut state = self.store.load()?;
        // Recorded before the first write: if power fails from here on,
        // the next boot knows an update was under way.
        state.pending = Some(Pending {
            version: m.version.clone(),
            from: self.running.version.clone(),
            boot: self.boot_id.clone(),
        });
        self.store.save(&state)?;
        let written = install(
            bundle,
            &self.disk,
            &self.running,
            target,
            &mut self.progress(UpdateState::Installing, total),
        );
        let entry = match written {
            Ok(e) => e,
            Err(e) => {
                state.pending = None;
                self.store.save(&state)?;
                return Err(e);
            }
        };
        // systemd-boot tries the newest version first: an allowed
        // downgrade boots only if the running entry has no tries left. It
        // still boots, last, if the downgrade never comes up.
        if keel_formats::bundle::parse_version("version", &m.version)?
            < keel_formats::bundle::parse_version("version", &self.running.version)?
        {
            let running_hash = to_hex(&self.running.verity.root_hash);
            if let Some(cur) = self.disk.entries.find(&running_hash)? {
                self.disk.entries.rename(&cur.file, &cur.name.bad())?;
            }
        }
        self.set(|s| {
            s.state = UpdateState::Installed;
            s.other = Some(entry.clone());
        });
        Ok(Done {
            message: format!(
                "installed {} into slot {target} as {entry} (signed by {}{}); {}",
                m.version,
                head.signed_by,
                how.map_or_else(String::new, |h| format!("; {h}")),
                match self.policy.reboot {
                    RebootPolicy::Auto => "rebooting".to_string(),
                    RebootPolicy::Manual => "reboot to use it".to_string(),
                    RebootPolicy::Window => format!(
                        "rebooting in the window {}",
                        self.policy
                            .window
                            .map_or_else(|| "?".to_string(), |w| w.to_string())
                    ),
                }
            ),
            changed: true,
        })
    }

    /// Check the repository and install what is newer.
    pub fn check(&self) -> Result<Done, UpdateError> {
        let Some(base) = self.policy.repository.clone() else {
            return Err(UpdateError::State(
                "no repository configured (update.policy.repository)".into(),
            ));
        };
        let _busy = self.busy.lock();
        self.set(|s| s.state = UpdateState::Checking);
        let r = self.check_locked(&base).and_then(|next| match next {
            Next::Install(path, version, how) => {
                let r = self.apply_own(&path, &how);
                match &r {
                    Ok(_) => {
                        let _ = fs::remove_file(&path);
                    }
                    Err(_) => self.record_failed(&version),
                }
                r
            }
            Next::UpToDate => Ok(Done {
                message: format!("up to date: {}", self.running.version),
                changed: false,
            }),
            Next::Wait(words) => Ok(Done {
                message: words,
                changed: false,
            }),
        });
        self.finish(&r);
        r
    }

    /// The downloaded bundle to install, if the repository has a newer one.
    fn check_locked(&self, base: &str) -> Result<Next, UpdateError> {
        let bytes = fetch::get_index(base)?;
        let mut state = self.store.load()?;
        let index = fetch::check_index(&bytes, &self.trusted()?, now(), state.last_index_version)?;
        state.last_index_version = index.index_version;
        for k in &index.keys {
            if !state.keys.contains(k) {
                state.keys.push(k.clone());
            }
        }
        self.store.save(&state)?;
        let Some(entry) = index.channels.get(&self.policy.channel) else {
            return Err(UpdateError::Fetch(format!(
                "the index has no channel {:?}",
                self.policy.channel
            )));
        };
        let newer = keel_formats::bundle::parse_version("version", &entry.version)?
            > keel_formats::bundle::parse_version("version", &self.running.version)?;
        if !newer {
            return Ok(Next::UpToDate);
        }
        if let Some(r) = &entry.rollout {
            let turn = r.turn(self.place);
            let words = rollout_words(self.place, &entry.version, turn, now());
            self.set(|s| s.rollout = Some(words.clone()));
            if !r.open_to(self.place, now()) {
                return Ok(Next::Wait(words));
            }
        }
        let trusted = self.trusted()?;
        let check = |bytes: &[u8]| self.admit_head(verify::read_head(&mut &bytes[..], &trusted)?);
        let fetched = fetch::obtain(
            base,
            entry,
            &self.store.downloads(),
            &crate::delta::host_sources(&self.disk, &self.running, self.slot),
            &check,
            &mut self.progress_of(UpdateState::Downloading),
        )
        .inspect_err(|_| self.record_failed(&entry.version))?;
        Ok(Next::Install(
            fetched.path,
            entry.version.clone(),
            fetched.words,
        ))
    }

    /// Remember, for the fleet, that `version` failed before its reboot.
    fn record_failed(&self, version: &str) {
        let outcome = keel_api::update::Outcome {
            kind: keel_api::update::OutcomeKind::Failed,
            version: version.to_string(),
            at: now(),
        };
        if let Ok(mut st) = self.store.load() {
            st.outcome = Some(outcome.clone());
            let _ = self.store.save(&st);
        }
        self.set(|s| s.outcome = Some(outcome));
    }

    /// Make the other slot boot next, if it is intact.
    pub fn rollback(&self) -> Result<Done, UpdateError> {
        let _busy = self.busy.lock();
        let running_hash = to_hex(&self.running.verity.root_hash);
        let entries = self.disk.entries.list()?;
        let current = entries
            .iter()
            .find(|e| e.root_hash().as_deref() == Some(running_hash.as_str()))
            .ok_or_else(|| UpdateError::State("the running entry is not on the ESP".into()))?;
        let other = entries
            .iter()
            .find(|e| {
                e.params.as_ref().is_some_and(|p| {
                    p.verity.root_hash != self.running.verity.root_hash
                        && self.disk.parts.slot_holds(self.slot.other(), &p.verity)
                })
            })
            .ok_or_else(|| {
                UpdateError::State(format!(
                    "slot {} has no intact installation to go back to",
                    self.slot.other()
                ))
            })?;
        self.disk
            .entries
            .rename(&other.file, &other.name.blessed())?;
        let demoted: EntryName = current.name.bad();
        self.disk.entries.rename(&current.file, &demoted)?;
        let r = Ok(Done {
            message: format!(
                "slot {} ({}) boots next; {} is now {}",
                self.slot.other(),
                other.name.version,
                current.file,
                demoted.file_name()
            ),
            changed: true,
        });
        self.finish(&r);
        r
    }
}

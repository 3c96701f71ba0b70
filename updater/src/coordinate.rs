//! Reboots coordinated with the host's group through etcd, and the
//! host's report to the fleet (docs/update.md, "Reboots coordinated
//! through etcd"). Before rebooting into an installed update the host
//! takes a slot of the group's reboot semaphore; it keeps the slot's
//! lease alive across the reboot and gives the slot back once the update
//! has settled: blessed by the health gate, or rolled back.

use std::sync::Mutex;
use std::time::Duration;

use keel_api::init::{Health, Request, Response};
use keel_fleet::lock::{Attempt, RebootLock};
use keel_fleet::report::{HostReport, Reporter};
use keel_fleet::{Etcd, Tls};
use keel_formats::policy::Coordination;

use crate::agent::Agent;

/// How long a host waits between attempts at a reboot slot, and between
/// renewals while it holds one.
const RETRY: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Coordinator {
    /// The client, or why there is none (its TLS material is bad): then
    /// the host never reboots into an update unless the policy allows it
    /// without etcd, and says why.
    etcd: Result<Etcd, String>,
    pub lock: RebootLock,
    reporter: Mutex<Reporter>,
    pub reboot_without_etcd: bool,
    pub report_interval: Duration,
    pub retry: Duration,
}

impl Coordinator {
    pub fn new(c: &Coordination, host: String) -> Coordinator {
        let tls = Tls {
            ca: c.ca.clone(),
            cert: c.cert.clone(),
            key: c.key.clone(),
        };
        Coordinator {
            etcd: Etcd::new(&c.etcd, &tls).map_err(|e| e.to_string()),
            reporter: Mutex::new(Reporter::new(&c.group, &host, c.report_interval_s)),
            lock: RebootLock {
                group: c.group.clone(),
                host,
                max: c.max_rebooting,
                ttl_s: c.lock_ttl_s,
            },
            reboot_without_etcd: c.reboot_without_etcd,
            report_interval: Duration::from_secs(c.report_interval_s),
            retry: RETRY,
        }
    }

    fn etcd(&self) -> Result<&Etcd, String> {
        self.etcd.as_ref().map_err(String::clone)
    }
}

/// What keel-init says of the host's health; a host whose keel-init does
/// not answer is still starting, as far as the fleet can tell.
fn health() -> Health {
    match keel_api::wire::call(keel_formats::API_SOCKET, &Request::Status, &[]) {
        Ok((Response::Status(s), _)) => s.health,
        _ => Health::Starting,
    }
}

impl Agent {
    fn say(&self, words: String) {
        let changed = self
            .status
            .lock()
            .map(|s| s.coordination.as_deref() != Some(words.as_str()))
            .unwrap_or(true);
        if changed {
            eprintln!("keel-update: {words}");
            self.set(|s| s.coordination = Some(words));
        }
    }

    /// Wait until this host may reboot into the update it installed: it
    /// holds a slot of its group's reboot semaphore (recorded in its state
    /// before it returns), or etcd cannot be reached and the policy allows
    /// a reboot without it. Returns at once without coordination.
    pub fn wait_for_reboot_slot(&self) {
        let Some(c) = &self.coordinator else { return };
        let group = &c.lock.group;
        loop {
            let tried = c
                .etcd()
                .and_then(|kv| c.lock.acquire(kv).map_err(|e| e.to_string()));
            match tried {
                Ok(Attempt::Taken(held)) => {
                    let saved = self.store.load().and_then(|mut st| {
                        st.lock = Some(held.clone());
                        self.store.save(&st)
                    });
                    match saved {
                        Ok(()) => {
                            self.say(format!(
                                "took reboot slot {} of group {group} (lease {:x}); rebooting",
                                held.key, held.lease
                            ));
                            return;
                        }
                        Err(e) => {
                            // Not knowing it holds the slot, the host
                            // could never give it back: give it back now.
                            if let Ok(kv) = c.etcd() {
                                let _ = c.lock.release(kv, &held);
                            }
                            self.say(format!("not rebooting: recording the reboot slot: {e}"));
                        }
                    }
                }
                Ok(Attempt::Full(holders)) => self.say(format!(
                    "waiting for a reboot slot of group {group}: {} of {} held, by {}",
                    holders.len(),
                    c.lock.max,
                    holders.join(", ")
                )),
                Err(e) if c.reboot_without_etcd => {
                    self.say(format!(
                        "rebooting without a reboot slot (reboot_without_etcd): {e}"
                    ));
                    return;
                }
                Err(e) => self.say(format!(
                    "not rebooting until etcd answers: {e}; trying again every {} s",
                    c.retry.as_secs()
                )),
            }
            std::thread::sleep(c.retry);
        }
    }

    /// The reboot could not be asked for: give the slot back.
    pub fn release_reboot_slot(&self) {
        let Some(c) = &self.coordinator else { return };
        let Ok(mut st) = self.store.load() else {
            return;
        };
        let Some(held) = st.lock.clone() else { return };
        match c
            .etcd()
            .and_then(|kv| c.lock.release(kv, &held).map_err(|e| e.to_string()))
        {
            Ok(()) => {
                st.lock = None;
                if self.store.save(&st).is_ok() {
                    self.say(format!("gave back reboot slot {}", held.key));
                }
            }
            Err(e) => self.say(format!(
                "cannot give back reboot slot {} yet: {e}",
                held.key
            )),
        }
    }

    /// One round of the fleet loop: keep or give back the reboot slot,
    /// then report. Returns how long to sleep before the next round.
    pub fn tend(&self) -> Duration {
        let Some(c) = &self.coordinator else {
            return Duration::from_secs(3600);
        };
        if let Err(e) = self.settle() {
            eprintln!("keel-update: {e}");
        }
        let st = self.store.load().unwrap_or_default();
        let holding = match (&st.lock, &st.pending) {
            (None, _) => false,
            // Settled (blessed or rolled back): the group may go on.
            (Some(_), None) => {
                self.release_reboot_slot();
                self.store.load().is_ok_and(|s| s.lock.is_some())
            }
            // Rebooting into it, or on trial: keep the slot.
            (Some(held), Some(_)) => {
                match c
                    .etcd()
                    .and_then(|kv| c.lock.renew(kv, held).map_err(|e| e.to_string()))
                {
                    Ok(true) => {}
                    Ok(false) => {
                        let mut st = st.clone();
                        st.lock = None;
                        if self.store.save(&st).is_ok() {
                            self.say(format!(
                                "reboot slot {} lost: its lease ran out before the update settled",
                                held.key
                            ));
                        }
                    }
                    Err(e) => self.say(format!("cannot renew reboot slot {}: {e}", held.key)),
                }
                true
            }
        };
        if let Err(e) = self.report(c, holding) {
            eprintln!("keel-update: reporting to etcd: {e}");
        }
        if holding {
            c.retry
        } else {
            c.report_interval
        }
    }

    fn report(&self, c: &Coordinator, rebooting: bool) -> Result<(), String> {
        let s = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        let r = HostReport {
            host: c.lock.host.clone(),
            group: c.lock.group.clone(),
            version: s.version,
            slot: s.slot,
            health: health(),
            update: s.state,
            outcome: s.outcome,
            place: self.place,
            wave: s.rollout,
            rebooting,
        };
        let kv = c.etcd()?;
        c.reporter
            .lock()
            .map_err(|_| "the reporter's lock is poisoned".to_string())?
            .report(kv, &r)
            .map_err(|e| e.to_string())
    }
}

//! keel-pull: the system container that brings images from registries
//! into the host's store for keel-init. It runs as its own unprivileged
//! user with no capabilities, the host's network and its own persistent
//! folder (the store and its socket) and nothing else, so a registry that
//! finds a hole in the client finds nothing of the host behind it.
//!
//! Every request is hostile (it comes over a socket): a bad one gets a
//! `Failed` event naming what was wrong, and the daemon serves on.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockWriteGuard, TryLockError};
use std::time::{Duration, Instant};

use keel_api::pull::{ImageInfo, PullEvent, PullRequest, PullerRequest, SOCKET_NAME, STORE_NAME};
use keel_formats::hostconfig::types::Pull;
use keel_registry::auth::Credentials;
use keel_registry::client::{Client, Options, Progress};
use keel_registry::manifest::{self, Parsed, Platform};
use keel_registry::reference::{is_registry_host, Digest, Reference};
use keel_registry::store::{Prune, Removed, Store, StoreError};

/// Pulls at once; more wait for a turn (each is mostly waiting on the
/// network, but each holds a connection and a thread).
const MAX_PULLS: usize = 4;
/// Connections at once (each a thread); past this one is answered busy.
const MAX_CONNECTIONS: usize = 32;
/// A request arrives at once; a client that sends nothing is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that reads no event for this long has gone; the pull goes on.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Hosts of one request: a registry's mirrors and itself.
const MAX_HOSTS: usize = 16;
/// Images a prune keeps: far more than a host config has containers.
const MAX_KEEP: usize = 4096;
/// A waiting request says so this often: the client (keel-init's helper)
/// takes five silent minutes for a hung keel-pull.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Progress at most this often per blob (plus its last).
const PROGRESS_BYTES: u64 = 256 << 10;
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum PullerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PullerError + '_ {
    move |source| PullerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Serve requests on `dir`/pull.sock into the store at `dir`/store.
pub fn serve(dir: &Path) -> Result<(), PullerError> {
    let puller = Arc::new(Puller::open(&dir.join(STORE_NAME))?);
    let socket = dir.join(SOCKET_NAME);
    // Bound under another name and renamed once it is root's and ours
    // only: no client ever reaches a socket others could reach too.
    let fresh = dir.join(format!(".{SOCKET_NAME}.new"));
    let _ = std::fs::remove_file(&fresh);
    let listener = UnixListener::bind(&fresh).map_err(io_err(&fresh))?;
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(&fresh))?;
    std::fs::rename(&fresh, &socket).map_err(io_err(&socket))?;
    eprintln!("keel-pull: serving on {}", socket.display());
    let connections = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        if connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            connections.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
            let busy = PullEvent::Failed {
                message: format!("keel-pull is busy: {MAX_CONNECTIONS} requests at once"),
            };
            let _ = keel_api::wire::send_line(&stream, &busy, &[]);
            continue;
        }
        let (puller, connections) = (puller.clone(), connections.clone());
        std::thread::spawn(move || {
            puller.handle(&stream);
            connections.fetch_sub(1, Ordering::SeqCst);
        });
    }
    Ok(())
}

/// The store, and who may use it when.
#[derive(Debug)]
pub struct Puller {
    store: Store,
    /// Pulls and listings read; removals and prunes write, so that a blob a
    /// pull found in the store is not deleted before the pull tags the
    /// image that needs it.
    gc: RwLock<()>,
    /// Pulls running, and pulls waiting for a turn.
    turns: Mutex<(usize, usize)>,
    turn_free: Condvar,
}

/// A pull's turn, given back when it ends (even by a panic).
struct Turn<'a>(&'a Puller);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut t = self.0.turns.lock().unwrap_or_else(|p| p.into_inner());
        t.0 = t.0.saturating_sub(1);
        self.0.turn_free.notify_one();
    }
}

impl Puller {
    pub fn open(store: &Path) -> Result<Puller, PullerError> {
        Ok(Puller {
            store: Store::open(store)?,
            gc: RwLock::new(()),
            turns: Mutex::new((0, 0)),
            turn_free: Condvar::new(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// One connection: its request, its events.
    fn handle(&self, stream: &UnixStream) {
        let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let mut gone = false;
        let mut send = |event: &PullEvent| {
            if !gone && keel_api::wire::send_line(stream, event, &[]).is_err() {
                gone = true;
            }
        };
        let outcome = match keel_api::wire::receive(stream) {
            Ok((line, _fds)) => self.answer(&line, &mut send),
            Err(message) => PullEvent::Failed { message },
        };
        if let PullEvent::Failed { message } = &outcome {
            eprintln!("keel-pull: {message}");
        }
        send(&outcome);
    }

    /// The answer to request `line`: a pull's events go to `events`, and
    /// the last event is returned.
    pub fn answer(&self, line: &str, events: &mut dyn FnMut(&PullEvent)) -> PullEvent {
        let outcome = match serde_json::from_str::<PullerRequest>(line.trim_end()) {
            Err(e) => Err(format!("the request: {e}")),
            Ok(PullerRequest::Pull(req)) => {
                // An image the store has needs no turn (a boot with many
                // containers asks for each).
                let _reading = self.gc.read().unwrap_or_else(|p| p.into_inner());
                match in_store(&req, &self.store) {
                    Some(found) => found,
                    None => {
                        drop(_reading);
                        let _turn = self.take_turn(events);
                        let _reading = self.gc.read().unwrap_or_else(|p| p.into_inner());
                        pull(req, &self.store, events)
                    }
                }
            }
            Ok(PullerRequest::List {}) => {
                let _reading = self.gc.read().unwrap_or_else(|p| p.into_inner());
                list(&self.store)
            }
            Ok(PullerRequest::Remove { reference }) => {
                let _writing = self.exclusive(events);
                remove(&self.store, &reference)
            }
            Ok(PullerRequest::Prune { keep, budget }) => {
                let _writing = self.exclusive(events);
                prune(&self.store, &keep, budget)
            }
        };
        outcome.unwrap_or_else(|message| PullEvent::Failed { message })
    }

    /// Wait for a pull's turn, saying so if it has to, and again every
    /// [`KEEP_ALIVE`]: the client gives up on a silent pull.
    fn take_turn(&self, events: &mut dyn FnMut(&PullEvent)) -> Turn<'_> {
        let lock = || self.turns.lock().unwrap_or_else(|p| p.into_inner());
        let ahead = {
            let mut t = lock();
            if t.0 < MAX_PULLS {
                t.0 = t.0.saturating_add(1);
                return Turn(self);
            }
            t.1 = t.1.saturating_add(1);
            t.1.saturating_sub(1)
        };
        // Events go out with no lock held: a slow client holds up no one.
        events(&PullEvent::Queued { ahead });
        let mut said = Instant::now();
        let mut t = lock();
        loop {
            if t.0 < MAX_PULLS {
                t.0 = t.0.saturating_add(1);
                t.1 = t.1.saturating_sub(1);
                return Turn(self);
            }
            t = match self.turn_free.wait_timeout(t, Duration::from_secs(1)) {
                Ok((t, _)) => t,
                Err(p) => p.into_inner().0,
            };
            if said.elapsed() >= KEEP_ALIVE {
                drop(t);
                events(&PullEvent::Queued { ahead });
                said = Instant::now();
                t = lock();
            }
        }
    }

    /// The store to itself (no pull running), for a removal or a prune;
    /// the client hears every [`KEEP_ALIVE`] while it waits. Tried rather
    /// than waited for, so that pulls asked for meanwhile are not held up
    /// behind it.
    fn exclusive(&self, events: &mut dyn FnMut(&PullEvent)) -> RwLockWriteGuard<'_, ()> {
        let mut said = Instant::now();
        loop {
            match self.gc.try_write() {
                Ok(g) => return g,
                Err(TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            }
            if said.elapsed() >= KEEP_ALIVE {
                events(&PullEvent::Queued { ahead: 0 });
                said = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A pull's answer from the store alone, if its policy lets the store
/// answer and the store has the image whole.
fn in_store(req: &PullRequest, store: &Store) -> Option<Result<PullEvent, String>> {
    if req.policy == Pull::Always {
        return None;
    }
    let reference: Reference = req.reference.parse().ok()?;
    let digest = present(store, &reference)?;
    Some(Ok(PullEvent::Pulled {
        manifest: digest.to_string(),
        fetched: 0,
        host: String::new(),
    }))
}

fn list(store: &Store) -> Result<PullEvent, String> {
    let images = store.images().map_err(|e| e.to_string())?;
    Ok(PullEvent::Images {
        images: images
            .into_iter()
            .map(|i| ImageInfo {
                reference: i.name,
                manifest: i.manifest.to_string(),
                id: i.config.map(|c| c.to_string()),
                size: i.size,
                whole: i.whole,
            })
            .collect(),
    })
}

fn removed(r: Removed) -> PullEvent {
    PullEvent::Removed {
        references: r.names,
        freed: r.freed,
        size: r.size,
    }
}

fn remove(store: &Store, reference: &str) -> Result<PullEvent, String> {
    let r: Reference = reference.parse().map_err(|e| format!("{e}"))?;
    match store.remove(&r.to_string()).map_err(|e| e.to_string())? {
        Some(r) => Ok(removed(r)),
        None => Err(format!("{r}: no such image in the store")),
    }
}

fn prune(store: &Store, keep: &[String], budget: Option<u64>) -> Result<PullEvent, String> {
    if keep.len() > MAX_KEEP {
        return Err(format!(
            "a prune keeping {} images; at most {MAX_KEEP} are allowed",
            keep.len()
        ));
    }
    // Kept by the names the store gives them: the references in full.
    let keep = keep
        .iter()
        .map(|k| k.parse::<Reference>().map(|r| r.to_string()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("an image to keep: {e}"))?;
    let how = match budget {
        Some(budget) => Prune::ToBudget {
            keep: &keep,
            budget,
        },
        None => Prune::Unused { keep: &keep },
    };
    store.prune(how).map(removed).map_err(|e| e.to_string())
}

fn pull(
    req: PullRequest,
    store: &Store,
    events: &mut dyn FnMut(&PullEvent),
) -> Result<PullEvent, String> {
    let reference: Reference = req.reference.parse().map_err(|e| format!("{e}"))?;
    if req.hosts.is_empty() || req.hosts.len() > MAX_HOSTS {
        return Err(format!(
            "{reference}: {} hosts to pull from; 1 to {MAX_HOSTS} are allowed",
            req.hosts.len()
        ));
    }
    if let Some(bad) = req.hosts.iter().find(|h| !is_registry_host(&h.host)) {
        return Err(format!(
            "{reference}: {:?} is not a registry host",
            bad.host
        ));
    }
    // Again after the turn: a pull of the same image may have brought it
    // in while this one waited.
    if req.policy != Pull::Always {
        if let Some(digest) = present(store, &reference) {
            return Ok(PullEvent::Pulled {
                manifest: digest.to_string(),
                fetched: 0,
                host: String::new(),
            });
        }
        if req.policy == Pull::Never {
            return Err(format!(
                "{reference} is not in the store, and pull = \"never\" (set pull = \"missing\" to pull it)"
            ));
        }
    }
    let mut clients = req
        .hosts
        .into_iter()
        .map(|h| {
            let credentials = match (h.username, h.password) {
                (Some(username), Some(password)) => Some(Credentials {
                    username,
                    password: password.0,
                }),
                _ => None,
            };
            Client::new(
                &h.host,
                Options {
                    insecure: h.insecure,
                    ca_pems: h.ca,
                    credentials,
                },
            )
            .map_err(|e| format!("{reference}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut throttle = Throttle::default();
    let pulled = keel_registry::pull::pull(
        &mut clients,
        &reference,
        &Platform::host(),
        store,
        &mut |p: Progress<'_>| {
            if throttle.due(&p) {
                events(&PullEvent::Progress {
                    digest: p.digest.to_string(),
                    done: p.done,
                    total: p.total,
                });
            }
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(PullEvent::Pulled {
        manifest: pulled.manifest.digest.to_string(),
        fetched: pulled.fetched,
        host: pulled.host,
    })
}

/// The manifest `reference` names in the store, if the store has it and
/// every blob it needs: a name whose blobs were pruned is pulled again.
pub fn present(store: &Store, reference: &Reference) -> Option<Digest> {
    let d = store.tagged(&reference.to_string()).ok()??;
    let max = u64::try_from(manifest::MAX_MANIFEST).unwrap_or(u64::MAX);
    let bytes = store.read(&d.digest, max).ok()?;
    let Parsed::Manifest(m) = manifest::parse(Some(&d.media_type), &bytes).ok()? else {
        return None;
    };
    // A pin by an index's digest: keel-init checks the image against it,
    // so the index must be there too.
    let pinned = reference.digest.as_ref().is_none_or(|p| store.has(p));
    let whole = store.has(&m.config.digest) && m.layers.iter().all(|l| store.has(&l.digest));
    (whole && pinned).then_some(d.digest)
}

/// When a blob's progress is worth an event.
#[derive(Default)]
struct Throttle {
    digest: Option<Digest>,
    done: u64,
    at: Option<Instant>,
}

impl Throttle {
    fn due(&mut self, p: &Progress<'_>) -> bool {
        let same = self.digest.as_ref() == Some(p.digest);
        let due = !same
            || p.done == p.total
            || p.done.saturating_sub(self.done) >= PROGRESS_BYTES
            || self.at.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY);
        if due {
            self.digest = Some(p.digest.clone());
            self.done = p.done;
            self.at = Some(Instant::now());
        }
        due
    }
}

#[cfg(test)]
mod tests;

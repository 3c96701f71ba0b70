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
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use keel_api::pull::{PullEvent, PullRequest, SOCKET_NAME, STORE_NAME};
use keel_formats::hostconfig::types::Pull;
use keel_registry::auth::Credentials;
use keel_registry::client::{Client, Options, Progress};
use keel_registry::manifest::{self, Parsed, Platform};
use keel_registry::reference::{is_registry_host, Digest, Reference};
use keel_registry::store::{Store, StoreError};

/// Pulls at once; more wait for a turn (each is mostly waiting on the
/// network, but each holds a connection and a thread).
const MAX_PULLS: usize = 4;
/// A request arrives at once; a client that sends nothing is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that reads no event for this long has gone; the pull goes on.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Hosts of one request: a registry's mirrors and itself.
const MAX_HOSTS: usize = 16;
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
    let store = Arc::new(Store::open(&dir.join(STORE_NAME))?);
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
    let turns = Arc::new((Mutex::new(0usize), Condvar::new()));
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        take_turn(&turns);
        let (store, turns) = (store.clone(), turns.clone());
        std::thread::spawn(move || {
            handle(&stream, &store);
            give_turn(&turns);
        });
    }
    Ok(())
}

fn take_turn(turns: &(Mutex<usize>, Condvar)) {
    let (count, cv) = turns;
    let mut n = count.lock().unwrap_or_else(|p| p.into_inner());
    while *n >= MAX_PULLS {
        n = cv.wait(n).unwrap_or_else(|p| p.into_inner());
    }
    *n = n.saturating_add(1);
}

fn give_turn(turns: &(Mutex<usize>, Condvar)) {
    let (count, cv) = turns;
    let mut n = count.lock().unwrap_or_else(|p| p.into_inner());
    *n = n.saturating_sub(1);
    cv.notify_one();
}

/// One connection: its request, its events.
fn handle(stream: &UnixStream, store: &Store) {
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut gone = false;
    let mut send = |event: &PullEvent| {
        if !gone && keel_api::wire::send_line(stream, event, &[]).is_err() {
            gone = true;
        }
    };
    let outcome = match keel_api::wire::receive(stream) {
        Ok((line, _fds)) => answer(&line, store, &mut send),
        Err(message) => PullEvent::Failed { message },
    };
    if let PullEvent::Failed { message } = &outcome {
        eprintln!("keel-pull: {message}");
    }
    send(&outcome);
}

/// The answer to request `line`: the events of its pull go to `events`,
/// and the outcome (Pulled or Failed) is returned.
pub fn answer(line: &str, store: &Store, events: &mut dyn FnMut(&PullEvent)) -> PullEvent {
    match pull(line, store, events) {
        Ok(event) => event,
        Err(message) => PullEvent::Failed { message },
    }
}

fn pull(
    line: &str,
    store: &Store,
    events: &mut dyn FnMut(&PullEvent),
) -> Result<PullEvent, String> {
    let req: PullRequest =
        serde_json::from_str(line.trim_end()).map_err(|e| format!("the request: {e}"))?;
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
    let whole = store.has(&m.config.digest) && m.layers.iter().all(|l| store.has(&l.digest));
    whole.then_some(d.digest)
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

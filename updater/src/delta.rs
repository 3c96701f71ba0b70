//! Delta downloads (docs/update.md, "Delta updates"): the bundle file is
//! put together in the updater's storage from the chunks this host already
//! has (its running slot, its UKI, an interrupted earlier attempt) and
//! HTTP Range requests for the rest, from the same bundle file on the
//! same server. Every chunk is checked against the signed manifest before
//! it is written; the caller then checks the whole file against the
//! index's sha256 and installs it exactly as a full download.
//!
//! The server is behind [`Remote`], so that the logic here is tested
//! without one; fetch.rs has the HTTP implementation.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use keel_formats::chunking;
use keel_formats::cmdline::to_hex;
use keel_formats::disk::{verity_image_len, Slot, VERITY_BLOCK_SIZE};
use keel_formats::signed::{self, Kind};

use crate::error::{io_err, UpdateError};
use crate::install::{Disk, Running};
use crate::verify::{payload_bytes, Head};

/// What the first request asks for: the envelope's header, which says
/// how long the signed head is, and the head itself if it is short; a
/// second request fetches the rest, so that no payload byte comes
/// unasked (the head holds about 85 bytes per 16 KiB of payload).
const HEAD_PROBE: u64 = keel_formats::bundle::ALIGN;
/// Below this share of the payloads on the host (in percent), one full
/// download costs less than many ranges.
const MIN_REUSE_PERCENT: u64 = 10;
/// A delta file is synced after this many fetched bytes, so that a power
/// cut loses at most this much of a long fetch.
const SYNC_EVERY: u64 = 4 << 20;

/// How a server answered a Range request.
pub enum Reply {
    /// Bytes `from .. from + len` follow.
    Part(Box<dyn Read>),
    /// The whole file follows instead: the server ignores Range.
    Whole,
    /// Something a whole download may still get past (an error status, a
    /// range other than the one asked for): why.
    Refused(String),
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Part(_) => f.write_str("Part(..)"),
            Reply::Whole => f.write_str("Whole"),
            Reply::Refused(why) => f.debug_tuple("Refused").field(why).finish(),
        }
    }
}

/// The bundle on its server.
pub trait Remote {
    /// Bytes `from .. from + len` of the bundle. An error is the
    /// network's (the delta file is kept for the next attempt).
    fn range(&mut self, from: u64, len: u64) -> Result<Reply, UpdateError>;
}

/// Something on this host that may hold chunks of the new bundle.
#[derive(Debug, Clone)]
pub struct Local {
    /// For log lines.
    pub name: String,
    pub path: PathBuf,
    /// Bytes of it to read: a partition holds more than its payload.
    pub len: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Payload bytes taken from this host (or an earlier attempt).
    pub reused: u64,
    /// Body bytes received, the head included.
    pub fetched: u64,
    pub requests: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The bundle file is complete at the given path (its whole sha256
    /// still to be checked).
    Assembled(Stats),
    /// Nothing was installed; download the whole bundle instead, because:
    Fallback(String),
}

/// What this host has that a new bundle may share: the running slot's
/// root and verity tree, and the running UKI.
pub fn host_sources(disk: &Disk, running: &Running, slot: Slot) -> Vec<Local> {
    let data_blocks = running.verity.data_blocks;
    let mut out = vec![
        Local {
            name: "the running root".into(),
            path: disk.parts.path(slot.root_label()),
            len: data_blocks.saturating_mul(VERITY_BLOCK_SIZE),
        },
        Local {
            name: "the running verity tree".into(),
            path: disk.parts.path(slot.verity_label()),
            len: verity_image_len(data_blocks).unwrap_or(0),
        },
    ];
    if let Ok(Some(e)) = disk.entries.find(&to_hex(&running.verity.root_hash)) {
        let path = disk.entries.dir.join(&e.file);
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        out.push(Local {
            name: "the running UKI".into(),
            path,
            len,
        });
    }
    out
}

/// One chunk of the new bundle.
struct Want {
    /// From the start of the bundle file.
    at: u64,
    size: u64,
    sha256: [u8; 32],
    done: bool,
}

fn fetch_err(what: String) -> UpdateError {
    UpdateError::Fetch(what)
}

fn read_exact(r: &mut dyn Read, buf: &mut [u8], at: u64) -> Result<(), UpdateError> {
    r.read_exact(buf)
        .map_err(|e| fetch_err(format!("reading bundle bytes from {at}: {e}")))
}

/// The bytes of a reply, or why a whole download it is.
fn part_of(reply: Reply) -> Result<Box<dyn Read>, String> {
    match reply {
        Reply::Part(r) => Ok(r),
        Reply::Whole => Err("the server does not honour Range requests".into()),
        Reply::Refused(why) => Err(why),
    }
}

/// Fetch and check the signed head: `check` verifies the signature and
/// whether this host may install it (an error there is a refusal, which a
/// full download would only meet later). Returns the head and its bytes,
/// or why a whole download it is.
fn fetch_head(
    remote: &mut dyn Remote,
    size: u64,
    check: &dyn Fn(&[u8]) -> Result<Head, UpdateError>,
    stats: &mut Stats,
) -> Result<Result<(Head, Vec<u8>), String>, UpdateError> {
    let first = size.min(HEAD_PROBE);
    stats.requests = stats.requests.saturating_add(1);
    let mut r = match part_of(remote.range(0, first)?) {
        Ok(r) => r,
        Err(why) => return Ok(Err(why)),
    };
    let mut head = vec![0u8; usize::try_from(first).unwrap_or(0)];
    read_exact(&mut *r, &mut head, 0)?;
    stats.fetched = stats.fetched.saturating_add(first);
    let h = signed::parse_header(Kind::Bundle, &head)?;
    let total = h.total_len() as u64;
    if total > size {
        // The whole download reports it as the bundle's own error.
        return Ok(Err(format!(
            "the signed head is {total} bytes, the index's bundle {size}"
        )));
    }
    if total > first {
        // The header bounds the body (signed::MAX_BODY).
        stats.requests = stats.requests.saturating_add(1);
        let rest = total.saturating_sub(first);
        let mut r = match part_of(remote.range(first, rest)?) {
            Ok(r) => r,
            Err(why) => return Ok(Err(why)),
        };
        let mut more = vec![0u8; usize::try_from(rest).unwrap_or(0)];
        read_exact(&mut *r, &mut more, first)?;
        stats.fetched = stats.fetched.saturating_add(rest);
        head.extend_from_slice(&more);
    }
    head.truncate(h.total_len());
    let parsed = check(&head)?;
    Ok(Ok((parsed, head)))
}

/// Every chunk of the bundle `head` describes, in file order.
fn wants(head: &Head) -> Result<Vec<Want>, UpdateError> {
    let mut out = Vec::new();
    for p in &head.manifest.payloads {
        let (start, _) = head.span(p)?;
        for (at, c) in p.spans() {
            let mut sha256 = [0u8; 32];
            hex::decode_to_slice(&c.sha256, &mut sha256)
                .map_err(|_| UpdateError::State(format!("chunk hash {:?} is not hex", c.sha256)))?;
            out.push(Want {
                at: start.saturating_add(at),
                size: c.size,
                sha256,
                done: false,
            });
        }
    }
    Ok(out)
}

/// Put the bundle (`size` bytes, as the index says) together in `part`.
/// `progress(fetched, to_fetch)`.
pub fn assemble(
    remote: &mut dyn Remote,
    size: u64,
    check: &dyn Fn(&[u8]) -> Result<Head, UpdateError>,
    locals: &[Local],
    part: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Outcome, UpdateError> {
    let mut stats = Stats::default();
    let (head, head_bytes) = match fetch_head(remote, size, check, &mut stats)? {
        Ok(h) => h,
        Err(why) => return Ok(Outcome::Fallback(why)),
    };
    let described = head
        .payload_start
        .saturating_add(head.manifest.payloads_len());
    if described != size {
        return Ok(Outcome::Fallback(format!(
            "the manifest describes a bundle of {described} bytes, the index one of {size}"
        )));
    }
    let mut wants = wants(&head)?;
    let earlier = std::fs::metadata(part).is_ok_and(|m| m.len() == size);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(part)
        .map_err(io_err(part))?;
    file.set_len(size).map_err(io_err(part))?;
    file.write_all_at(&head_bytes, 0).map_err(io_err(part))?;

    let mut buf = vec![0u8; chunking::MAX];
    if earlier {
        // An interrupted attempt: what it wrote and still checks is kept.
        for w in wants.iter_mut() {
            let b = &mut buf[..usize::try_from(w.size).map_or(0, |n| n.min(chunking::MAX))];
            if file.read_exact_at(b, w.at).is_ok() && Sha256::digest(&*b)[..] == w.sha256 {
                w.done = true;
            }
        }
    }
    let earlier_bytes = done_bytes(&wants);
    reuse(locals, &mut wants, &file, part)?;
    let have = done_bytes(&wants);
    stats.reused = have;
    let total = payload_bytes(&head.manifest);
    let missing = total.saturating_sub(have);
    if have.saturating_mul(100) < total.saturating_mul(MIN_REUSE_PERCENT) {
        return Ok(Outcome::Fallback(format!(
            "only {have} of the {total} payload bytes are on this host"
        )));
    }
    eprintln!(
        "keel-update: delta: {have} of {total} payload bytes on this host ({} from an earlier attempt); fetching {missing}",
        earlier_bytes
    );
    let mut fetched = 0u64;
    let mut synced = 0u64;
    let mut i = 0;
    while i < wants.len() {
        if wants[i].done {
            i = i.saturating_add(1);
            continue;
        }
        // A run of adjacent missing chunks, one request.
        let mut end = i.saturating_add(1);
        while end < wants.len()
            && !wants[end].done
            && wants[end.saturating_sub(1)]
                .at
                .saturating_add(wants[end.saturating_sub(1)].size)
                == wants[end].at
        {
            end = end.saturating_add(1);
        }
        if let Some(why) = fetch_run(
            remote,
            &mut wants[i..end],
            &file,
            part,
            &mut stats,
            &mut buf,
            &mut |n| {
                fetched = fetched.saturating_add(n);
                progress(fetched, missing);
                if fetched.saturating_sub(synced) >= SYNC_EVERY {
                    synced = fetched;
                    return true;
                }
                false
            },
        )? {
            return Ok(Outcome::Fallback(why));
        }
        i = end;
    }
    file.sync_all().map_err(io_err(part))?;
    Ok(Outcome::Assembled(stats))
}

fn done_bytes(wants: &[Want]) -> u64 {
    wants
        .iter()
        .filter(|w| w.done)
        .map(|w| w.size)
        .fold(0, u64::saturating_add)
}

/// Cut each local source as the builder cut the payloads and copy every
/// chunk the bundle wants to each place it wants it.
fn reuse(
    locals: &[Local],
    wants: &mut [Want],
    file: &File,
    part: &Path,
) -> Result<(), UpdateError> {
    let mut by_hash: HashMap<[u8; 32], Vec<usize>> = HashMap::new();
    for (i, w) in wants.iter().enumerate() {
        if !w.done {
            by_hash.entry(w.sha256).or_default().push(i);
        }
    }
    for l in locals {
        if by_hash.is_empty() {
            break;
        }
        let src = match File::open(&l.path) {
            Ok(f) => f,
            Err(e) => {
                // Only a saving lost: the chunks are fetched instead.
                eprintln!(
                    "keel-update: delta: not reusing {} ({}): {e}",
                    l.name,
                    l.path.display()
                );
                continue;
            }
        };
        for cut in chunking::cut(BufReader::with_capacity(1 << 20, src).take(l.len)) {
            let cut = match cut {
                Ok(c) => c,
                Err(e) => {
                    eprintln!(
                        "keel-update: delta: reading {} ({}): {e}",
                        l.name,
                        l.path.display()
                    );
                    break;
                }
            };
            let Some(places) = by_hash.remove(&cut.sha256) else {
                continue;
            };
            for i in places {
                // The chunk was hashed as it was cut: it is what the
                // signed manifest names.
                let w = &mut wants[i];
                file.write_all_at(&cut.data, w.at).map_err(io_err(part))?;
                w.done = true;
            }
        }
    }
    Ok(())
}

/// Fetch one run of adjacent chunks, checking each before it is written.
/// A chunk that differs from the manifest is asked for once more; if it
/// differs again the delta gives up (returns why). `fetched(n)` as chunks
/// are written; it says when to sync the file.
fn fetch_run(
    remote: &mut dyn Remote,
    run: &mut [Want],
    file: &File,
    part: &Path,
    stats: &mut Stats,
    buf: &mut [u8],
    fetched: &mut dyn FnMut(u64) -> bool,
) -> Result<Option<String>, UpdateError> {
    let mut k = 0;
    let mut retried = false;
    while k < run.len() {
        let from = run[k].at;
        let len = run
            .iter()
            .skip(k)
            .map(|w| w.size)
            .fold(0, u64::saturating_add);
        stats.requests = stats.requests.saturating_add(1);
        let mut r = match remote.range(from, len)? {
            Reply::Part(r) => r,
            Reply::Whole => return Ok(Some("the server stopped honouring Range requests".into())),
            Reply::Refused(why) => return Ok(Some(why)),
        };
        while k < run.len() {
            let w = &mut run[k];
            // Validated manifests have no longer chunk; a longer one
            // would fail its hash.
            let b = &mut buf[..usize::try_from(w.size).map_or(0, |n| n.min(chunking::MAX))];
            read_exact(&mut *r, b, w.at)?;
            stats.fetched = stats.fetched.saturating_add(w.size);
            if Sha256::digest(&*b)[..] != w.sha256 {
                if retried {
                    return Ok(Some(format!(
                        "the chunk at byte {} of the bundle differs from the signed manifest again after a retry",
                        w.at
                    )));
                }
                eprintln!(
                    "keel-update: delta: the chunk at byte {} of the bundle differs from the signed manifest; fetching it again",
                    w.at
                );
                retried = true;
                break;
            }
            file.write_all_at(b, w.at).map_err(io_err(part))?;
            w.done = true;
            k = k.saturating_add(1);
            if fetched(w.size) {
                file.sync_data().map_err(io_err(part))?;
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
#[path = "delta_tests.rs"]
mod tests;

//! The repository over HTTP(S): the signed index, checked for signature,
//! expiry and replay; bundles put together from what the host has and the
//! chunks it lacks ([`crate::delta`]), or else downloaded whole, in `/var`
//! with resume (Range), so that an interrupted download, even across a
//! reboot, goes on where it was.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};

use keel_formats::repo::{ChannelEntry, Index, INDEX_FILE};
use keel_formats::signed::{Envelope, Kind};

use crate::error::{io_err, UpdateError};

fn client() -> Result<reqwest::blocking::Client, UpdateError> {
    reqwest::blocking::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(None)
        .build()
        .map_err(|e| UpdateError::Fetch(e.to_string()))
}

pub fn url(base: &str, rel: &str) -> String {
    format!("{}/{}", base.trim_end_matches('/'), rel)
}

/// Verify a fetched index: signature by a trusted key, not expired, not
/// older than `last_seen`.
pub fn check_index(
    bytes: &[u8],
    trusted: &[VerifyingKey],
    now: u64,
    last_seen: u64,
) -> Result<Index, UpdateError> {
    let env = Envelope::parse(Kind::Index, bytes)?;
    env.verify(trusted)?;
    let index = Index::parse(&env.body)?;
    if index.expires <= now {
        return Err(UpdateError::Expired {
            expires: index.expires,
            now,
        });
    }
    if index.index_version < last_seen {
        return Err(UpdateError::Replayed {
            got: index.index_version,
            seen: last_seen,
        });
    }
    Ok(index)
}

pub fn get_index(base: &str) -> Result<Vec<u8>, UpdateError> {
    let u = url(base, INDEX_FILE);
    let r = client()?
        .get(&u)
        .send()
        .and_then(|r| r.error_for_status())
        .map_err(|e| UpdateError::Fetch(format!("{u}: {e}")))?;
    r.bytes()
        .map(|b| b.to_vec())
        .map_err(|e| UpdateError::Fetch(format!("{u}: {e}")))
}

/// The bundle file over HTTP Range requests.
struct Http {
    client: reqwest::blocking::Client,
    url: String,
    /// The bundle's size, as the index says.
    size: u64,
}

impl crate::delta::Remote for Http {
    fn range(&mut self, from: u64, len: u64) -> Result<crate::delta::Reply, UpdateError> {
        use crate::delta::Reply;
        let u = &self.url;
        let last = from
            .checked_add(len)
            .and_then(|end| end.checked_sub(1))
            .ok_or_else(|| UpdateError::Fetch(format!("{u}: no bytes from {from} on")))?;
        let r = self
            .client
            .get(u)
            .header(reqwest::header::RANGE, format!("bytes={from}-{last}"))
            // A stalled server must not hold the update (and its lock)
            // forever: a minute, and more at 32 KiB/s for long ranges.
            .timeout(std::time::Duration::from_secs(
                (len / (32 << 10)).saturating_add(60),
            ))
            .send()
            .map_err(|e| UpdateError::Fetch(format!("{u}: {e}")))?;
        let status = r.status();
        if status == reqwest::StatusCode::OK {
            return Ok(Reply::Whole);
        }
        if status != reqwest::StatusCode::PARTIAL_CONTENT {
            return Ok(Reply::Refused(format!(
                "{u}: the server answered a Range request with {status}"
            )));
        }
        // A server that answers another range than asked is not to be
        // trusted with the offsets of the rest either.
        let want = format!("bytes {from}-{last}/{}", self.size);
        let got = r
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if got != want {
            return Ok(Reply::Refused(format!(
                "{u}: asked for {want:?}, the server sent Content-Range {got:?}"
            )));
        }
        Ok(Reply::Part(Box::new(r.take(len))))
    }
}

/// What [`obtain`] did, in words for the update's result.
#[derive(Debug)]
pub struct Fetched {
    pub path: PathBuf,
    pub words: String,
}

/// Length and sha256 (hex) of a file.
fn file_sha256(path: &Path) -> Result<(u64, String), UpdateError> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h).map_err(io_err(path))?;
    Ok((n, hex::encode(h.finalize())))
}

/// The bundle `entry` names, complete in `dir`: put together from
/// `locals` and Range requests where that works (`check` verifies its
/// signed head and whether this host takes it), else downloaded whole.
/// `progress(bytes, total)` of what goes over the network.
pub fn obtain(
    base: &str,
    entry: &ChannelEntry,
    dir: &Path,
    locals: &[crate::delta::Local],
    check: &dyn Fn(&[u8]) -> Result<crate::verify::Head, UpdateError>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Fetched, UpdateError> {
    use crate::delta::{assemble, Outcome};
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let done = dir.join(format!("{}.bundle", entry.sha256));
    if done.exists() {
        return Ok(Fetched {
            path: done,
            words: "downloaded before".into(),
        });
    }
    let part = dir.join(format!("{}.part", entry.sha256));
    let delta = dir.join(format!("{}.delta", entry.sha256));
    // Anything else in the folder is an older download: drop it.
    for e in fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        if e.path() != part && e.path() != delta {
            let _ = fs::remove_file(e.path());
        }
    }
    let why = if part.exists() {
        "a whole download was under way".to_string()
    } else {
        let mut remote = Http {
            client: client()?,
            url: url(base, &entry.bundle),
            size: entry.size,
        };
        match assemble(&mut remote, entry.size, check, locals, &delta, progress)? {
            Outcome::Assembled(stats) => match file_sha256(&delta)? {
                (n, sha) if n == entry.size && sha == entry.sha256 => {
                    fs::rename(&delta, &done).map_err(io_err(&done))?;
                    return Ok(Fetched {
                        path: done,
                        words: format!(
                            "fetched {} of the bundle's {} bytes in {} requests, {} bytes from this host",
                            stats.fetched, entry.size, stats.requests, stats.reused
                        ),
                    });
                }
                // Every chunk matched the signed manifest but the file
                // does not match the index: the server's file is not the
                // one published. The whole download says where.
                _ => "the assembled bundle differs from the index's sha256".to_string(),
            },
            Outcome::Fallback(why) => why,
        }
    };
    let _ = fs::remove_file(&delta);
    eprintln!("keel-update: downloading the whole bundle: {why}");
    let path = download(base, entry, dir, progress)?;
    Ok(Fetched {
        path,
        words: format!("downloaded the whole bundle ({} bytes): {why}", entry.size),
    })
}

/// Download the bundle `entry` names into `dir`, resuming a partial file;
/// `progress(bytes, total)`. Returns the complete file, whose size and
/// sha256 match the index.
pub fn download(
    base: &str,
    entry: &ChannelEntry,
    dir: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PathBuf, UpdateError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let done = dir.join(format!("{}.bundle", entry.sha256));
    if done.exists() {
        return Ok(done);
    }
    // Anything else in the folder is an older download: drop it.
    let part = dir.join(format!("{}.part", entry.sha256));
    for e in fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        if e.path() != part {
            let _ = fs::remove_file(e.path());
        }
    }
    let have = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let u = url(base, &entry.bundle);
    if have < entry.size {
        let mut req = client()?.get(&u);
        if have > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let mut r = req
            .send()
            .and_then(|r| r.error_for_status())
            .map_err(|e| UpdateError::Fetch(format!("{u}: {e}")))?;
        // A server that ignores Range sends everything again.
        let resumed = r.status() == reqwest::StatusCode::PARTIAL_CONTENT;
        let mut f = OpenOptions::new()
            .create(true)
            .append(resumed)
            .write(true)
            .truncate(!resumed)
            .open(&part)
            .map_err(io_err(&part))?;
        let mut got = if resumed { have } else { 0 };
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = r
                .read(&mut buf)
                .map_err(|e| UpdateError::Fetch(format!("{u}: {e}")))?;
            if n == 0 {
                break;
            }
            got = got
                .checked_add(n as u64)
                .filter(|&total| total <= entry.size)
                .ok_or_else(|| {
                    UpdateError::Fetch(format!(
                        "{u}: more than the {} bytes the index announces",
                        entry.size
                    ))
                })?;
            f.write_all(&buf[..n]).map_err(io_err(&part))?;
            progress(got, entry.size);
        }
        f.sync_all().map_err(io_err(&part))?;
    }
    let (n, sha) = file_sha256(&part)?;
    if n != entry.size {
        return Err(UpdateError::Fetch(format!(
            "{u}: got {n} bytes, the index announces {}",
            entry.size
        )));
    }
    if sha != entry.sha256 {
        let _ = fs::remove_file(&part);
        return Err(UpdateError::Fetch(format!(
            "{u}: sha256 differs from the index; download discarded"
        )));
    }
    fs::rename(&part, &done).map_err(io_err(&done))?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use std::collections::BTreeMap;

    fn signed(version: u64, expires: u64, key: &SigningKey) -> Vec<u8> {
        let i = Index {
            format: 1,
            index_version: version,
            expires,
            channels: BTreeMap::new(),
            keys: vec![],
        };
        Envelope::sign(Kind::Index, serde_json::to_vec(&i).unwrap(), &[key]).to_bytes()
    }

    #[test]
    fn index_refusals() {
        let k = SigningKey::from_bytes(&[1; 32]);
        let t = [k.verifying_key()];
        assert!(check_index(&signed(5, 100, &k), &t, 50, 5).is_ok());
        assert!(matches!(
            check_index(&signed(5, 100, &k), &t, 100, 0),
            Err(UpdateError::Expired { .. })
        ));
        assert!(matches!(
            check_index(&signed(4, 100, &k), &t, 50, 5),
            Err(UpdateError::Replayed { got: 4, seen: 5 })
        ));
        let other = SigningKey::from_bytes(&[2; 32]);
        let e = check_index(&signed(5, 100, &other), &t, 50, 0).unwrap_err();
        assert!(e.to_string().contains("unknown key"), "{e}");
    }
}

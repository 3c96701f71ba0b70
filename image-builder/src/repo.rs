//! `keel repo add`: a static update repository, served by any HTTP server:
//! `index.keel` (signed) and `bundles/`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use keel_formats::repo::{ChannelEntry, Index, INDEX_FILE};
use keel_formats::signed::{Envelope, Kind};

use crate::bundle::{read_head, BundleError};

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("{path}: {message}")]
    Index { path: PathBuf, message: String },
    #[error("{path}: not signed by this key ({message}); pass the key that signed it")]
    WrongKey { path: PathBuf, message: String },
    #[error("rollout: {0}")]
    Rollout(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RepoError + '_ {
    move |source| RepoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug)]
pub struct AddOptions<'a> {
    pub bundle: &'a Path,
    pub repo: &'a Path,
    pub key: &'a SigningKey,
    pub channel: &'a str,
    /// Seconds from now until hosts refuse the index.
    pub valid_for_s: u64,
    /// Public keys to introduce to hosts (key rotation).
    pub trust: &'a [VerifyingKey],
    /// Seconds since the epoch.
    pub now: u64,
    /// The release's staged rollout, if any (checked here).
    pub rollout: Option<keel_formats::rollout::Rollout>,
}

/// Add a bundle to a repository and publish a new index; returns it.
pub fn add(o: &AddOptions<'_>) -> Result<Index, RepoError> {
    if let Some(r) = &o.rollout {
        r.check().map_err(RepoError::Rollout)?;
    }
    let (env, manifest) = read_head(o.bundle)?;
    env.verify(&[o.key.verifying_key()])
        .map_err(|e| RepoError::WrongKey {
            path: o.bundle.to_path_buf(),
            message: e.to_string(),
        })?;
    let mut index = read_index(o.repo, o.key)?;

    let dir = o.repo.join("bundles");
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let name = format!("{}-{}.bundle", manifest.variant, manifest.version);
    let dest = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::copy(o.bundle, &tmp).map_err(io_err(&tmp))?;
    fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
    let bytes = fs::read(&dest).map_err(io_err(&dest))?;

    index.index_version += 1;
    index.expires = o.now + o.valid_for_s;
    index.channels.insert(
        o.channel.to_string(),
        ChannelEntry {
            version: manifest.version.clone(),
            bundle: format!("bundles/{name}"),
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
            rollout: o.rollout.clone(),
        },
    );
    for k in o.trust {
        let h = hex::encode(k.as_bytes());
        if !index.keys.contains(&h) {
            index.keys.push(h);
        }
    }
    publish(o.repo, &index, o.key)?;
    Ok(index)
}

/// The repository's index, checked against the publisher's key; a new
/// one if there is none yet.
fn read_index(repo: &Path, key: &SigningKey) -> Result<Index, RepoError> {
    let index_path = repo.join(INDEX_FILE);
    match fs::read(&index_path) {
        Ok(bytes) => {
            let bad = |message: String| RepoError::Index {
                path: index_path.clone(),
                message,
            };
            let env = Envelope::parse(Kind::Index, &bytes).map_err(|e| bad(e.to_string()))?;
            env.verify(&[key.verifying_key()])
                .map_err(|e| RepoError::WrongKey {
                    path: index_path.clone(),
                    message: e.to_string(),
                })?;
            Index::parse(&env.body).map_err(|e| bad(e.to_string()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index {
            format: keel_formats::repo::FORMAT,
            index_version: 0,
            expires: 0,
            channels: Default::default(),
            keys: Vec::new(),
        }),
        Err(e) => Err(io_err(&index_path)(e)),
    }
}

/// Sign `index` and put it in place, atomically.
fn publish(repo: &Path, index: &Index, key: &SigningKey) -> Result<(), RepoError> {
    let index_path = repo.join(INDEX_FILE);
    let body = serde_json::to_vec_pretty(index).unwrap_or_default();
    let env = Envelope::sign(Kind::Index, body, &[key]);
    // Bundles first, index last: a host never sees an index that names a
    // bundle not there yet.
    let tmp = repo.join(format!(".{INDEX_FILE}.tmp"));
    fs::write(&tmp, env.to_bytes()).map_err(io_err(&tmp))?;
    fs::rename(&tmp, &index_path).map_err(io_err(&index_path))
}

/// Pause the release on `channel`: publish the index again with a rollout
/// whose only wave reaches no host, so that no host that has not taken it
/// yet starts to. Hosts that took it keep it. Returns the paused version.
pub fn pause(
    repo: &Path,
    key: &SigningKey,
    channel: &str,
    valid_for_s: u64,
    now: u64,
) -> Result<String, RepoError> {
    use keel_formats::rollout::{Rollout, Wave};
    let mut index = read_index(repo, key)?;
    let entry = index
        .channels
        .get_mut(channel)
        .ok_or_else(|| RepoError::Index {
            path: repo.join(INDEX_FILE),
            message: format!("no channel {channel:?}"),
        })?;
    entry.rollout = Some(Rollout {
        start: entry.rollout.as_ref().map_or(now, |r| r.start),
        waves: vec![Wave {
            after: 0,
            percent: 0,
        }],
    });
    let version = entry.version.clone();
    index.index_version += 1;
    index.expires = now + valid_for_s;
    publish(repo, &index, key)?;
    Ok(version)
}

/// The release on `channel`, and whether its rollout is paused (opens to
/// no host at all).
pub fn channel_release(
    repo: &Path,
    key: &SigningKey,
    channel: &str,
) -> Result<(String, bool), RepoError> {
    let index = read_index(repo, key)?;
    let entry = index
        .channels
        .get(channel)
        .ok_or_else(|| RepoError::Index {
            path: repo.join(INDEX_FILE),
            message: format!("no channel {channel:?}"),
        })?;
    let paused = entry
        .rollout
        .as_ref()
        .is_some_and(|r| r.waves.iter().all(|w| w.percent == 0));
    Ok((entry.version.clone(), paused))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollout_that_is_no_rollout_is_refused_before_anything_is_read_or_written() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[7; 32]);
        let e = add(&AddOptions {
            bundle: &dir.path().join("missing.bundle"),
            repo: &dir.path().join("repo"),
            key: &key,
            channel: "stable",
            valid_for_s: 60,
            trust: &[],
            now: 0,
            rollout: Some(keel_formats::rollout::Rollout {
                start: 0,
                waves: Vec::new(),
            }),
        })
        .unwrap_err();
        assert!(matches!(e, RepoError::Rollout(_)), "{e}");
        assert!(!dir.path().join("repo").exists());
    }
}

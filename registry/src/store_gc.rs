//! What the store holds, and taking it away: `keelctl image list`, `rm`
//! and `prune`, and the collection that keeps the store within the host
//! config's budget. A blob goes when no name reaches it (name → manifest
//! → config and layers); a name goes when asked, or when the store is
//! over its budget and no container uses it, least recently pulled first
//! (a pull tags last, and a tag goes to the end of index.json).
//!
//! The caller keeps pulls out while this runs (keel-pull holds its lock
//! exclusively): a pull that found a blob in the store must not see it
//! deleted before it tags the manifest that needs it.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{io_err, ref_name, Store, StoreError};
use crate::manifest::{self, Descriptor, Parsed};
use crate::reference::Digest;

/// A download, or a blob no name reaches, that no pull has touched for
/// this long is given up on by a collection to the budget (a prune removes
/// every one).
const STALE: Duration = Duration::from_secs(24 * 3600);

/// One named image in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    pub manifest: Digest,
    /// Its config's digest (the image id, as Docker shows it), if its
    /// manifest is there and reads.
    pub config: Option<Digest>,
    /// Bytes of its manifest, config and layers (shared ones included).
    pub size: u64,
    /// Every blob it needs is in the store.
    pub whole: bool,
}

/// What a removal or a prune took away.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    /// The names removed, in the order they went.
    pub names: Vec<String>,
    /// Bytes of blobs and partial downloads deleted.
    pub freed: u64,
    /// Bytes the store holds now.
    pub size: u64,
}

/// Which images a prune keeps, and how far it goes.
#[derive(Debug, Clone, Copy)]
pub enum Prune<'a> {
    /// Every image not named here goes, and every partial download.
    Unused { keep: &'a [String] },
    /// Images not named here go, least recently pulled first, while the
    /// store holds more than `budget` bytes; partial downloads go once
    /// they are stale.
    ToBudget { keep: &'a [String], budget: u64 },
}

impl Store {
    /// Every named image, least recently pulled first.
    pub fn images(&self) -> Result<Vec<Image>, StoreError> {
        let mut out = Vec::new();
        for (name, d) in self.list()? {
            let (blobs, config) = self.reached_from(&d);
            let whole = config.is_some() && blobs.iter().all(|b| self.has(b));
            let size = blobs.iter().map(|b| self.blob_size(b)).sum();
            out.push(Image {
                name,
                manifest: d.digest,
                config,
                size,
                whole,
            });
        }
        Ok(out)
    }

    /// Remove the name `name` and the blobs nothing else needs; None if
    /// the store has no such name.
    pub fn remove(&self, name: &str) -> Result<Option<Removed>, StoreError> {
        let Some(freed) = self.drop_name(name)? else {
            return Ok(None);
        };
        Ok(Some(Removed {
            names: vec![name.to_string()],
            freed,
            size: self.usage()?,
        }))
    }

    /// Remove what `how` says. A prune of the unused takes every blob no
    /// name needs; a collection to the budget only those untouched for a
    /// day, since a pull that failed keeps the layers it brought in for
    /// its next try (its name comes last).
    pub fn prune(&self, how: Prune<'_>) -> Result<Removed, StoreError> {
        let (keep, budget, stale) = match how {
            Prune::Unused { keep } => (keep, None, Duration::ZERO),
            Prune::ToBudget { keep, budget } => (keep, Some(budget), STALE),
        };
        let mut freed = self.sweep_partials(stale)?;
        freed = freed.saturating_add(self.sweep_blobs(stale)?);
        let mut names = Vec::new();
        let mut size = self.usage()?;
        for (name, _) in self.list()? {
            if budget.is_some_and(|b| size <= b) {
                break;
            }
            if keep.contains(&name) {
                continue;
            }
            let gone = self.drop_name(&name)?.unwrap_or(0);
            freed = freed.saturating_add(gone);
            size = size.saturating_sub(gone);
            names.push(name);
        }
        Ok(Removed {
            names,
            freed,
            size: self.usage()?,
        })
    }

    /// Untag `name` and delete the blobs it reached that no other name
    /// does (not every unreached blob: a failed pull's layers wait for its
    /// next try); the bytes freed, or None if there was no such name.
    fn drop_name(&self, name: &str) -> Result<Option<u64>, StoreError> {
        let _lock = self.lock_index()?;
        let mut index = self.read_index()?;
        let Some(at) = index
            .manifests
            .iter()
            .position(|d| ref_name(d) == Some(name))
        else {
            return Ok(None);
        };
        let gone = index.manifests.remove(at);
        let mine = self.reached_from(&gone).0;
        self.write_index(&index)?;
        let others = self.reached_by_names(&index.manifests);
        let mut freed = 0u64;
        for digest in mine {
            if !others.contains(&digest.hex()) {
                freed = freed.saturating_add(remove_file(&self.blob_path(&digest))?);
            }
        }
        Ok(Some(freed))
    }

    /// Bytes of every blob and partial download.
    pub fn usage(&self) -> Result<u64, StoreError> {
        let mut total = 0u64;
        for dir in [self.root.join("blobs/sha256"), self.root.join("ingest")] {
            for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
                let entry = entry.map_err(io_err(&dir))?;
                if let Ok(m) = entry.metadata() {
                    if m.is_file() {
                        total = total.saturating_add(m.size());
                    }
                }
            }
        }
        Ok(total)
    }

    /// The blobs a name reaches: its manifest, and the config and layers
    /// the manifest lists if it is there and parses; and the config's
    /// digest then.
    fn reached_from(&self, d: &Descriptor) -> (Vec<Digest>, Option<Digest>) {
        let mut blobs = vec![d.digest.clone()];
        let index = d.annotations.as_ref().and_then(|a| a.get(super::INDEX_OF));
        blobs.extend(index.and_then(|i| i.parse::<Digest>().ok()));
        let max = u64::try_from(manifest::MAX_MANIFEST).unwrap_or(u64::MAX);
        let parsed = self
            .read(&d.digest, max)
            .ok()
            .and_then(|bytes| manifest::parse(Some(&d.media_type), &bytes).ok());
        match parsed {
            Some(Parsed::Manifest(m)) => {
                blobs.push(m.config.digest.clone());
                blobs.extend(m.layers.into_iter().map(|l| l.digest));
                (blobs, Some(m.config.digest))
            }
            // keel tags platform manifests only; an index here was put by
            // another tool, and what it lists is not kept for it.
            Some(Parsed::Index(_)) | None => (blobs, None),
        }
    }

    fn blob_size(&self, digest: &Digest) -> u64 {
        fs::metadata(self.blob_path(digest)).map_or(0, |m| m.size())
    }

    /// The blobs (by hex) the names among `entries` reach.
    fn reached_by_names(&self, entries: &[Descriptor]) -> BTreeSet<String> {
        entries
            .iter()
            .filter(|d| ref_name(d).is_some())
            .flat_map(|d| self.reached_from(d).0)
            .map(|b| b.hex())
            .collect()
    }

    /// Delete every blob no name reaches and untouched for `stale` or
    /// longer; the bytes freed.
    fn sweep_blobs(&self, stale: Duration) -> Result<u64, StoreError> {
        let _lock = self.lock_index()?;
        let reached = self.reached_by_names(&self.read_index()?.manifests);
        let dir = self.root.join("blobs/sha256");
        let now = SystemTime::now();
        let mut freed = 0u64;
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name();
            if reached.contains(name.to_string_lossy().as_ref()) {
                continue;
            }
            if !stale.is_zero() && age(&entry.path(), now) < stale {
                continue;
            }
            freed = freed.saturating_add(remove_file(&entry.path())?);
        }
        Ok(freed)
    }

    /// Delete partial downloads untouched for `stale` or longer whose lock
    /// no pull holds; the bytes freed.
    fn sweep_partials(&self, stale: Duration) -> Result<u64, StoreError> {
        let dir = self.root.join("ingest");
        let now = SystemTime::now();
        let mut freed = 0u64;
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let path = entry.path();
            let Ok(file) = fs::File::open(&path) else {
                continue;
            };
            // A pull of another process (the `pull --store` command) may
            // hold it: that one is not stale, whatever its age.
            if age(&path, now) < stale || file.try_lock().is_err() {
                continue;
            }
            freed = freed.saturating_add(remove_file(&path)?);
        }
        Ok(freed)
    }
}

/// How long ago `path` was last written (nothing known: just now).
fn age(path: &Path, now: SystemTime) -> Duration {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| now.duration_since(t).ok())
        .unwrap_or(Duration::ZERO)
}

/// Delete a file of the store; its size. Gone already is not an error.
fn remove_file(path: &Path) -> Result<u64, StoreError> {
    let size = fs::symlink_metadata(path).map_or(0, |m| m.size());
    match fs::remove_file(path) {
        Ok(()) => Ok(size),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err(path)(e)),
    }
}

#[cfg(test)]
#[path = "store_gc_tests.rs"]
mod tests;

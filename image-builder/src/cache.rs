//! A content-addressed build cache: an entry is a folder named by the
//! sha256 of everything that went into it, created under a temporary name
//! and renamed into place only when complete, so an interrupted build never
//! leaves a half entry that a later build would trust.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("no cache folder: set --cache-dir, XDG_CACHE_HOME or HOME")]
    NoHome,
}

#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// Accumulates the inputs of a cache key.
#[derive(Debug, Default)]
pub struct Key(Sha256);

impl Key {
    pub fn new(kind: &str) -> Self {
        let mut k = Key(Sha256::new());
        k.add(kind.as_bytes());
        k
    }

    /// Add one input; inputs are length-prefixed so that their boundaries
    /// count.
    pub fn add(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    pub fn hex(self) -> String {
        keel_formats::cmdline::to_hex(&self.0.finalize())
    }
}

impl Cache {
    pub fn new(root: PathBuf) -> Self {
        Cache { root }
    }

    /// `--cache-dir`, else `$XDG_CACHE_HOME/keel`, else `~/.cache/keel`.
    pub fn default_root() -> Result<PathBuf, CacheError> {
        if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
            return Ok(PathBuf::from(x).join("keel"));
        }
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".cache/keel"))
            .ok_or(CacheError::NoHome)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The finished entry for `kind`/`key`, if there is one.
    pub fn get(&self, kind: &str, key: &str) -> Option<PathBuf> {
        let p = self.root.join(kind).join(key);
        p.is_dir().then_some(p)
    }

    /// A fresh scratch folder in which to build the entry.
    pub fn scratch(&self, kind: &str, key: &str) -> Result<PathBuf, CacheError> {
        let p = self
            .root
            .join(kind)
            .join(format!("{key}.tmp-{}", std::process::id()));
        let io_err = |source| CacheError::Io {
            path: p.clone(),
            source,
        };
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(io_err)?;
        }
        std::fs::create_dir_all(&p).map_err(io_err)?;
        Ok(p)
    }

    /// Publish a scratch folder as the entry.
    pub fn commit(&self, kind: &str, key: &str, scratch: &Path) -> Result<PathBuf, CacheError> {
        let dst = self.root.join(kind).join(key);
        std::fs::rename(scratch, &dst).map_err(|source| CacheError::Io {
            path: dst.clone(),
            source,
        })?;
        Ok(dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_appear_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().to_path_buf());
        let mut k = Key::new("kernel");
        k.add(b"a").add(b"bc");
        let key = k.hex();
        let mut other = Key::new("kernel");
        other.add(b"ab").add(b"c");
        assert_ne!(key, other.hex(), "boundaries between inputs must count");
        assert!(cache.get("kernel", &key).is_none());
        let s = cache.scratch("kernel", &key).unwrap();
        std::fs::write(s.join("bzImage"), b"x").unwrap();
        assert!(cache.get("kernel", &key).is_none());
        let done = cache.commit("kernel", &key, &s).unwrap();
        assert_eq!(cache.get("kernel", &key), Some(done));
    }
}

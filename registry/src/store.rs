//! The content-addressed store pulls land in: one OCI image layout
//! (`oci-layout`, `index.json`, `blobs/sha256/<hex>`), so any OCI tool
//! reads it and keel-oci opens images from it, plus `ingest/` for blobs
//! still downloading. What it holds is listed and collected in [`gc`].
//!
//! Power cuts: a blob reaches `blobs/` only by a rename after its bytes
//! were checked against its digest and synced, so a blob there is whole; a
//! partial download stays under `ingest/` and is hashed again from its
//! start before a pull resumes it (its bytes are not trusted either).
//! `index.json` is replaced by a synced rename too, and a manifest is
//! tagged only after every blob it names is in, so a tag never names an
//! image with a missing part.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::manifest::Descriptor;
use crate::reference::Digest;

/// The annotation an OCI layout's index names an image with.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// keel's annotation on a name's entry: the multi-platform index the
/// reference named, kept (and kept from collection) for a pin by the
/// index's digest.
pub const INDEX_OF: &str = "dev.keel.index";
const LAYOUT_MARKER: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;
/// No index.json keel writes comes near this; a bigger one is not ours.
const MAX_INDEX: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("blob {digest}: {got} bytes where the manifest says {want}")]
    Size { digest: Digest, want: u64, got: u64 },
    #[error("blob {digest}: its bytes hash to {actual}; refused")]
    Digest { digest: Digest, actual: Digest },
    #[error("{path}: {message}")]
    Index { path: PathBuf, message: String },
    #[error("blob {digest} is larger than {max} bytes")]
    TooLarge { digest: Digest, max: u64 },
    #[error("the image needs {need} bytes more in {path}, which has {free} free (keelctl image prune frees what no container uses)")]
    NoRoom { path: PathBuf, need: u64, free: u64 },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `index.json` as this store writes it. Unknown fields are kept out on
/// purpose: the store is keel's, and it rewrites the file whole.
#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The store at `root`, made if it is not there yet.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        for dir in [
            root.to_path_buf(),
            root.join("blobs/sha256"),
            root.join("ingest"),
        ] {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        let marker = root.join("oci-layout");
        if !marker.is_file() {
            write_synced(&marker, LAYOUT_MARKER.as_bytes())?;
        }
        let store = Store {
            root: root.to_path_buf(),
        };
        if !store.index_path().is_file() {
            store.write_index(&IndexFile {
                schema_version: 2,
                media_type: Some(crate::manifest::OCI_INDEX.to_string()),
                manifests: Vec::new(),
            })?;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Refuse a pull that would fill the store's filesystem: `need` bytes
    /// must fit with a reserve left (5% of the filesystem, at most 64 MiB)
    /// for the logs and services that share it.
    pub fn check_room(&self, need: u64) -> Result<(), StoreError> {
        let st = nix::sys::statvfs::statvfs(&self.root)
            .map_err(|e| io_err(&self.root)(std::io::Error::from(e)))?;
        let unit = st.fragment_size();
        let free = st.blocks_available().saturating_mul(unit);
        let size = st.blocks().saturating_mul(unit);
        let reserve = (size / 20).min(64 << 20);
        if need.saturating_add(reserve) <= free {
            return Ok(());
        }
        Err(StoreError::NoRoom {
            path: self.root.clone(),
            need,
            free,
        })
    }

    /// Bytes a partial download of `digest` holds (0 without one).
    pub fn partial_size(&self, digest: &Digest) -> u64 {
        fs::metadata(self.partial_path(digest)).map_or(0, |m| m.len())
    }

    fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("ingest")
            .join(format!("{}.partial", digest.hex()))
    }

    pub fn has(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Start or resume writing blob `digest` of `size` bytes.
    pub fn ingest(&self, digest: &Digest, size: u64) -> Result<Ingest, StoreError> {
        Ingest::open(self, digest, size)
    }

    /// Store `bytes` as a blob (a manifest or config already in memory).
    pub fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        if self.has(digest) {
            return Ok(());
        }
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        let mut ingest = self.ingest(digest, len)?;
        ingest.restart()?;
        ingest.write(bytes)?;
        ingest.commit()
    }

    /// A blob's bytes, at most `max` of them. Blobs are checked when they
    /// come in; this checks again, since a disk can rot.
    pub fn read(&self, digest: &Digest, max: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        let f = File::open(&path).map_err(io_err(&path))?;
        let mut bytes = Vec::new();
        f.take(max.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io_err(&path))?;
        if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > max {
            return Err(StoreError::TooLarge {
                digest: digest.clone(),
                max,
            });
        }
        let actual = Digest::of(&bytes);
        if &actual != digest {
            return Err(StoreError::Digest {
                digest: digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Name the manifest `manifest` `name` (replacing what had that name).
    pub fn tag(&self, name: &str, manifest: &Descriptor) -> Result<(), StoreError> {
        let _lock = self.lock_index()?;
        let mut index = self.read_index()?;
        index.manifests.retain(|d| ref_name(d) != Some(name));
        let mut entry = manifest.clone();
        entry
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(REF_NAME.to_string(), name.to_string());
        index.manifests.push(entry);
        self.write_index(&index)
    }

    /// Remove the name `name`; whether it was there.
    pub fn untag(&self, name: &str) -> Result<bool, StoreError> {
        let _lock = self.lock_index()?;
        let mut index = self.read_index()?;
        let before = index.manifests.len();
        index.manifests.retain(|d| ref_name(d) != Some(name));
        if index.manifests.len() == before {
            return Ok(false);
        }
        self.write_index(&index)?;
        Ok(true)
    }

    /// The manifest named `name`, if any.
    pub fn tagged(&self, name: &str) -> Result<Option<Descriptor>, StoreError> {
        Ok(self
            .read_index()?
            .manifests
            .into_iter()
            .find(|d| ref_name(d) == Some(name)))
    }

    /// Every name and the manifest it names.
    pub fn list(&self) -> Result<Vec<(String, Descriptor)>, StoreError> {
        Ok(self
            .read_index()?
            .manifests
            .into_iter()
            .filter_map(|d| Some((ref_name(&d)?.to_string(), d.clone())))
            .collect())
    }

    /// Held while index.json is read, changed and replaced, so that two
    /// pulls tagging at once both keep their tags.
    fn lock_index(&self) -> Result<File, StoreError> {
        let path = self.root.join("index.lock");
        let f = File::create(&path).map_err(io_err(&path))?;
        f.lock().map_err(io_err(&path))?;
        Ok(f)
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    fn read_index(&self) -> Result<IndexFile, StoreError> {
        let path = self.index_path();
        let f = File::open(&path).map_err(io_err(&path))?;
        let mut text = Vec::new();
        f.take(MAX_INDEX.saturating_add(1))
            .read_to_end(&mut text)
            .map_err(io_err(&path))?;
        if u64::try_from(text.len()).unwrap_or(u64::MAX) > MAX_INDEX {
            return Err(StoreError::Index {
                path,
                message: format!("larger than {MAX_INDEX} bytes"),
            });
        }
        serde_json::from_slice(&text).map_err(|e| StoreError::Index {
            path,
            message: e.to_string(),
        })
    }

    fn write_index(&self, index: &IndexFile) -> Result<(), StoreError> {
        let path = self.index_path();
        let text = serde_json::to_vec_pretty(index).map_err(|e| StoreError::Index {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let tmp = self.root.join("index.json.tmp");
        write_synced(&tmp, &text)?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.root)
    }
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations.as_ref()?.get(REF_NAME).map(String::as_str)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut f = File::create(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// A blob being written: its bytes so far are hashed as they go, so the
/// digest is known the moment the last byte is in.
#[derive(Debug)]
pub struct Ingest {
    file: File,
    path: PathBuf,
    blobs: PathBuf,
    digest: Digest,
    size: u64,
    written: u64,
    hash: Sha256,
}

impl Ingest {
    fn open(store: &Store, digest: &Digest, size: u64) -> Result<Ingest, StoreError> {
        let path = store.partial_path(digest);
        // Two pulls of one layer (two images share it) take turns. The one
        // that waited may hold a file the other has since moved into
        // blobs/: it opens the name again until the lock it holds is on
        // the file under that name.
        let mut file = loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io_err(&path))?;
            file.lock().map_err(io_err(&path))?;
            let held = file.metadata().map_err(io_err(&path))?;
            match fs::metadata(&path) {
                Ok(named) if named.ino() == held.ino() && named.dev() == held.dev() => break file,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path)(e)),
            }
        };
        // What an earlier pull left is hashed again from its first byte: the
        // file may end in bytes a power cut left half-written, and only a
        // prefix no longer than the blob can be part of it.
        let mut hash = Sha256::new();
        let mut written = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf).map_err(io_err(&path))?;
            if n == 0 {
                break;
            }
            let n64 = u64::try_from(n).unwrap_or(u64::MAX);
            if written.saturating_add(n64) > size {
                written = 0;
                hash = Sha256::new();
                file.set_len(0).map_err(io_err(&path))?;
                break;
            }
            hash.update(buf.get(..n).unwrap_or_default());
            written = written.saturating_add(n64);
        }
        file.seek(SeekFrom::Start(written)).map_err(io_err(&path))?;
        Ok(Ingest {
            file,
            path,
            blobs: store.root.join("blobs/sha256"),
            digest: digest.clone(),
            size,
            written,
            hash,
        })
    }

    /// How many bytes are in: where a download resumes.
    pub fn offset(&self) -> u64 {
        self.written
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Throw away what is in and start from the first byte (a registry
    /// that ignored a Range request sends the whole blob).
    pub fn restart(&mut self) -> Result<(), StoreError> {
        self.file.set_len(0).map_err(io_err(&self.path))?;
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(io_err(&self.path))?;
        self.written = 0;
        self.hash = Sha256::new();
        Ok(())
    }

    /// Append `bytes`; more than the blob's size is refused.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        let after = self.written.saturating_add(len);
        if after > self.size {
            return Err(StoreError::Size {
                digest: self.digest.clone(),
                want: self.size,
                got: after,
            });
        }
        self.file.write_all(bytes).map_err(io_err(&self.path))?;
        self.hash.update(bytes);
        self.written = after;
        Ok(())
    }

    /// Check the blob is whole and is what its digest says, then move it
    /// into `blobs/`. A blob that does not match is deleted: resuming it
    /// could never make it right.
    pub fn commit(self) -> Result<(), StoreError> {
        if self.written != self.size {
            return Err(StoreError::Size {
                digest: self.digest,
                want: self.size,
                got: self.written,
            });
        }
        let actual = Digest::from_sha256(self.hash.finalize().into());
        if actual != self.digest {
            let _ = fs::remove_file(&self.path);
            return Err(StoreError::Digest {
                digest: self.digest,
                actual,
            });
        }
        let dest = self.blobs.join(self.digest.hex());
        if dest.is_file() {
            // Another pull of the same blob got it in while this one
            // waited for the lock; both were checked, keep the first.
            let _ = fs::remove_file(&self.path);
            return Ok(());
        }
        self.file.sync_all().map_err(io_err(&self.path))?;
        fs::rename(&self.path, &dest).map_err(io_err(&dest))?;
        sync_dir(&self.blobs)
    }

    /// Give up on this blob and delete what was written.
    pub fn discard(self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[path = "store_gc.rs"]
mod gc;
pub use gc::{Image, Prune, Removed};

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;

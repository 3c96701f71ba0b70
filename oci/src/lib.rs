//! System container roots from OCI images: an OCI image layout folder or a
//! `docker save` archive. Every blob is checked against its sha256 digest;
//! layers are applied in order with their whiteouts; the image config's
//! Entrypoint, Cmd, Env, WorkingDir and User become the defaults of the
//! container definition (see [`resolve`]), for `keel build` and keel-init
//! alike.

mod copyout;
mod inroot;
mod run;
mod unpack;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use keel_formats::manifest::{
    self, Descriptor, Index, Manifest, ManifestError, Parsed, Platform, MAX_CONFIG, MAX_LAYERS,
};
use keel_formats::reference::{Digest, ReferenceError};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use copyout::copy_image;
pub use inroot::{InRoot, Owners};
pub use run::{lookup_user, resolve, Given, ImageRoot, Resolved, RunError, DEFAULT_PATH};
pub use unpack::{unpack, unpack_as, unpack_keeping_owners, Layers};

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: blob {digest} does not match its digest (sha256 {actual})")]
    Digest {
        path: PathBuf,
        digest: String,
        actual: String,
    },
    #[error("{path}: layer {layer}: {message}")]
    Layer {
        path: PathBuf,
        layer: String,
        message: String,
    },
    #[error("{path}: {source}")]
    Manifest {
        path: PathBuf,
        source: ManifestError,
    },
    #[error("{path}: {source}")]
    BadDigest {
        path: PathBuf,
        source: ReferenceError,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OciError + '_ {
    move |source| OciError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn format_err(path: &Path, message: impl Into<String>) -> OciError {
    OciError::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn manifest_err(path: &Path) -> impl FnOnce(ManifestError) -> OciError + '_ {
    move |source| OciError::Manifest {
        path: path.to_path_buf(),
        source,
    }
}

/// A digest handed in as a string (by keel-init, from what a pull
/// reported), held to the same rule as the digests in manifests.
fn parse_digest(path: &Path, digest: &str) -> Result<Digest, OciError> {
    digest.parse().map_err(|source| OciError::BadDigest {
        path: path.to_path_buf(),
        source,
    })
}

/// What the image config says about running it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct RunConfig {
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ConfigBlob {
    #[serde(default)]
    pub config: RunConfig,
}

/// `manifest.json` of a `docker save` archive: one entry per image. Not an
/// OCI document (it names member files, not blobs), so it has its own
/// struct; a member named like a blob is checked as [`Digest`] says.
#[derive(Debug, Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// An image ready to unpack: its layer files in order and its config.
#[derive(Debug)]
pub struct Image {
    pub source: PathBuf,
    /// The image ID: the sha256 (hex) of its config blob, as Docker has it.
    pub id: String,
    /// (name for messages, file)
    pub layers: Vec<(String, PathBuf)>,
    pub config: RunConfig,
    /// Each layer's sha256 (hex), where it was checked when the image was
    /// opened (an OCI layout's blobs, a newer `docker save`'s).
    checked: Vec<Option<String>>,
    /// A `docker save` archive is extracted here first.
    _scratch: Option<tempfile::TempDir>,
}

impl Image {
    /// An image of these layer files (not checked against any digest) and
    /// no config: for unpacking layers that come from elsewhere, and for
    /// fuzzing the unpacker.
    pub fn from_layers(source: PathBuf, layers: Vec<(String, PathBuf)>) -> Image {
        Image {
            source,
            id: String::new(),
            checked: vec![None; layers.len()],
            layers,
            config: RunConfig::default(),
            _scratch: None,
        }
    }
}

impl Image {
    /// What names this image's unpacked root: its ID and its layers'
    /// digests. The ID alone is not enough: a config without `diff_ids`
    /// may come with any layers, and two images must not share a root
    /// because they share a config. A layer whose digest was not checked
    /// when the image was opened is hashed here.
    pub fn root_key(&self) -> Result<String, OciError> {
        let mut h = Sha256::new();
        h.update(self.id.as_bytes());
        for (i, (_, path)) in self.layers.iter().enumerate() {
            let digest = match self.checked.get(i).cloned().flatten() {
                Some(hex) => hex,
                None => sha256_of(path)?,
            };
            h.update(b"\n");
            h.update(digest.as_bytes());
        }
        Ok(hex::encode(h.finalize()))
    }
}

/// At most `max` bytes of `path` and one more if it has it, so that a file
/// past a limit is told from one at it without reading it all.
fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, OciError> {
    let f = fs::File::open(path).map_err(io_err(path))?;
    let mut bytes = Vec::new();
    f.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    Ok(bytes)
}

/// A JSON file no larger than `max`: a config or `manifest.json` is small,
/// and one that is not is hostile.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path, max: u64) -> Result<T, OciError> {
    let bytes = read_capped(path, max)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > max {
        return Err(format_err(path, format!("larger than {max} bytes")));
    }
    serde_json::from_slice(&bytes).map_err(|e| format_err(path, e.to_string()))
}

/// A manifest or an index, by the rules a registry's are read by;
/// `media_type` is what the descriptor that named it says it is.
fn read_manifest(path: &Path, media_type: Option<&str>) -> Result<Parsed, OciError> {
    let max = u64::try_from(manifest::MAX_MANIFEST).unwrap_or(u64::MAX);
    let bytes = read_capped(path, max)?;
    manifest::parse(media_type, &bytes).map_err(manifest_err(path))
}

/// keel opens one platform's image: an index where a manifest belongs is
/// refused rather than followed.
fn image_manifest(parsed: Parsed, path: &Path) -> Result<Manifest, OciError> {
    match parsed {
        Parsed::Manifest(m) => Ok(m),
        Parsed::Index(_) => Err(format_err(path, "an image index, not an image manifest")),
    }
}

/// The file of blob `digest` in an OCI layout, checked against the digest.
fn blob(layout: &Path, digest: &Digest) -> Result<PathBuf, OciError> {
    let path = layout.join("blobs/sha256").join(digest.hex());
    check_digest(&path, digest)?;
    Ok(path)
}

fn sha256_of(path: &Path) -> Result<String, OciError> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io_err(path))?;
    Ok(hex::encode(h.finalize()))
}

fn check_digest(path: &Path, digest: &Digest) -> Result<(), OciError> {
    let actual = sha256_of(path)?;
    if actual != digest.hex() {
        return Err(OciError::Digest {
            path: path.to_path_buf(),
            digest: digest.to_string(),
            actual,
        });
    }
    Ok(())
}

/// An image's layers (name for messages, file), run config and ID.
type Opened = (Vec<(String, PathBuf)>, RunConfig, String);

fn is_layout(path: &Path) -> Result<(), OciError> {
    if !path.join("oci-layout").is_file() {
        return Err(OciError::Format {
            path: path.to_path_buf(),
            message: "no oci-layout file: not an OCI image layout".into(),
        });
    }
    Ok(())
}

fn open_layout(path: &Path) -> Result<Opened, OciError> {
    is_layout(path)?;
    let index_path = path.join("index.json");
    let index = match read_manifest(&index_path, None)? {
        Parsed::Index(index) => index,
        Parsed::Manifest(_) => {
            return Err(format_err(&index_path, "an image manifest, not an index"))
        }
    };
    let chosen = choose(&index).map_err(manifest_err(&index_path))?;
    open_layout_manifest(path, &chosen.digest, Some(&chosen.media_type))
}

/// The host's image among an index's, as a pull chooses it; an index of
/// one entry that names no platform (as `docker save` and `skopeo copy`
/// write them) is that entry's.
fn choose(index: &Index) -> Result<&Descriptor, ManifestError> {
    manifest::choose(index, &Platform::host()).or_else(|e| match index.manifests.as_slice() {
        [only] if only.platform.is_none() => Ok(only),
        _ => Err(e),
    })
}

/// The image of manifest `digest` in the OCI layout at `path`.
fn open_layout_manifest(
    path: &Path,
    digest: &Digest,
    media_type: Option<&str>,
) -> Result<Opened, OciError> {
    let manifest_file = blob(path, digest)?;
    let manifest = image_manifest(read_manifest(&manifest_file, media_type)?, &manifest_file)?;
    let config_file = blob(path, &manifest.config.digest)?;
    let config: ConfigBlob = read_json(&config_file, MAX_CONFIG)?;
    let layers = manifest
        .layers
        .iter()
        .map(|l| Ok((l.digest.to_string(), blob(path, &l.digest)?)))
        .collect::<Result<_, OciError>>()?;
    Ok((layers, config.config, manifest.config.digest.hex()))
}

/// The image of manifest `digest` ("sha256:<hex>") in the OCI image layout
/// at `layout`: how keel-init opens an image a pull put in the store, by
/// the digest the pull reported, whatever else the layout's index names.
pub fn open_manifest(layout: &Path, digest: &str) -> Result<Image, OciError> {
    is_layout(layout)?;
    let digest = parse_digest(layout, digest)?;
    let (layers, config, id) = open_layout_manifest(layout, &digest, None)?;
    Ok(Image {
        source: layout.to_path_buf(),
        id,
        checked: layout_digests(&layers),
        layers,
        config,
        _scratch: None,
    })
}

/// Open the OCI image layout folder or `docker save` archive at `path`.
pub fn open(path: &Path) -> Result<Image, OciError> {
    open_in(path, &std::env::temp_dir())
}

/// [`open`], extracting a `docker save` archive under `scratch` (keel-init
/// keeps that on disk rather than in a RAM-backed /tmp).
pub fn open_in(path: &Path, scratch: &Path) -> Result<Image, OciError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    if meta.is_dir() {
        let (layers, config, id) = open_layout(path)?;
        return Ok(Image {
            source: path.to_path_buf(),
            id,
            checked: layout_digests(&layers),
            layers,
            config,
            _scratch: None,
        });
    }
    // `docker save`: a tar of manifest.json, the config and the layers
    // (and, from Docker 25 on, an OCI layout as well).
    let scratch = tempfile::tempdir_in(scratch).map_err(io_err(scratch))?;
    let f = fs::File::open(path).map_err(io_err(path))?;
    let mut archive = tar::Archive::new(f);
    for entry in archive.entries().map_err(io_err(path))? {
        let mut e = entry.map_err(io_err(path))?;
        if !e.header().entry_type().is_file() && !e.header().entry_type().is_dir() {
            continue;
        }
        if !e.unpack_in(scratch.path()).map_err(io_err(path))? {
            return Err(format_err(path, "a member's path leaves the archive"));
        }
    }
    let dir = scratch.path();
    let (layers, checked, config, id) = if dir.join("oci-layout").is_file() {
        let (layers, config, id) = open_layout(dir)?;
        (layers.clone(), layout_digests(&layers), config, id)
    } else {
        let manifest_json = dir.join("manifest.json");
        let max = u64::try_from(manifest::MAX_MANIFEST).unwrap_or(u64::MAX);
        let entries: Vec<DockerEntry> = read_json(&manifest_json, max)?;
        let [entry] = entries.as_slice() else {
            return Err(format_err(
                path,
                format!("holds {} images; save exactly one", entries.len()),
            ));
        };
        if entry.layers.len() > MAX_LAYERS {
            return Err(manifest_err(path)(ManifestError::TooManyLayers(
                entry.layers.len(),
            )));
        }
        // A member the manifest names: a file extracted from the archive
        // (never a path out of it: `/etc/...`, `../`), and its digest if
        // its name is one, checked.
        let inside = |rel: &str| {
            let plain = !rel.is_empty()
                && Path::new(rel)
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            let p = dir.join(rel);
            if !plain || !fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
                return Err(format_err(
                    path,
                    format!("manifest.json names {rel:?}, which is not a file of the archive"),
                ));
            }
            // Docker names blobs by their digest: check those.
            let digest = match rel.strip_prefix("blobs/sha256/") {
                Some(hex) => {
                    let digest = parse_digest(path, &format!("sha256:{hex}"))?;
                    check_digest(&p, &digest)?;
                    Some(digest.hex())
                }
                None => None,
            };
            Ok::<_, OciError>((p, digest))
        };
        let (config_file, _) = inside(&entry.config)?;
        let config: ConfigBlob = read_json(&config_file, MAX_CONFIG)?;
        let mut layers = Vec::new();
        let mut checked = Vec::new();
        for l in &entry.layers {
            let (p, digest) = inside(l)?;
            layers.push((l.clone(), p));
            checked.push(digest);
        }
        (layers, checked, config.config, sha256_of(&config_file)?)
    };
    Ok(Image {
        source: path.to_path_buf(),
        id,
        layers,
        checked,
        config,
        _scratch: Some(scratch),
    })
}

/// An OCI layout's layers are named by their digests, checked by [`blob`].
fn layout_digests(layers: &[(String, PathBuf)]) -> Vec<Option<String>> {
    layers
        .iter()
        .map(|(name, _)| name.strip_prefix("sha256:").map(str::to_string))
        .collect()
}

/// How a layer file is compressed, from its first bytes (the media type
/// says the same, but a docker save archive carries none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

/// How the layer open as `f` is compressed.
fn compression(f: &fs::File, path: &Path) -> Result<Compression, OciError> {
    use std::os::unix::fs::FileExt;
    let mut magic = [0u8; 4];
    let mut n = 0;
    // A short read is only the end of a file shorter than the magic.
    while n < magic.len() {
        match f.read_at(&mut magic[n..], n as u64).map_err(io_err(path))? {
            0 => break,
            got => n += got,
        }
    }
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd] => Compression::Zstd,
        _ => Compression::None,
    })
}

#[cfg(test)]
mod tests;

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
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OciError + '_ {
    move |source| OciError::Io {
        path: path.to_path_buf(),
        source,
    }
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

#[derive(Debug, Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Debug, Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct ImageManifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// `manifest.json` of a `docker save` archive: one entry per image.
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

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, OciError> {
    let text = fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&text).map_err(|e| OciError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The file of blob `digest` in an OCI layout, checked against the digest.
fn blob(layout: &Path, digest: &str) -> Result<PathBuf, OciError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| is_sha256_hex(h))
        .ok_or_else(|| OciError::Format {
            path: layout.to_path_buf(),
            message: format!("digest {digest:?} is not sha256:<64 hex digits>"),
        })?;
    let path = layout.join("blobs/sha256").join(hex);
    check_digest(&path, hex)?;
    Ok(path)
}

fn sha256_of(path: &Path) -> Result<String, OciError> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io_err(path))?;
    Ok(hex::encode(h.finalize()))
}

fn check_digest(path: &Path, hex: &str) -> Result<(), OciError> {
    let actual = sha256_of(path)?;
    if actual != hex {
        return Err(OciError::Digest {
            path: path.to_path_buf(),
            digest: format!("sha256:{hex}"),
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
    let index: Index = read_json(&path.join("index.json"))?;
    // An index may list several platforms: take linux/amd64, or the only one.
    let chosen = index
        .manifests
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .or(match index.manifests.as_slice() {
            [only] => Some(only),
            _ => None,
        })
        .ok_or_else(|| OciError::Format {
            path: path.join("index.json"),
            message: "no linux/amd64 image among its manifests".into(),
        })?;
    open_layout_manifest(path, &chosen.digest)
}

/// The image of manifest `digest` in the OCI layout at `path`.
fn open_layout_manifest(path: &Path, digest: &str) -> Result<Opened, OciError> {
    let manifest: ImageManifest = read_json(&blob(path, digest)?)?;
    let config_file = blob(path, &manifest.config.digest)?;
    let config: ConfigBlob = read_json(&config_file)?;
    let layers = manifest
        .layers
        .iter()
        .map(|l| Ok((l.digest.clone(), blob(path, &l.digest)?)))
        .collect::<Result<_, OciError>>()?;
    let id = manifest
        .config
        .digest
        .trim_start_matches("sha256:")
        .to_string();
    Ok((layers, config.config, id))
}

/// The image of manifest `digest` ("sha256:<hex>") in the OCI image layout
/// at `layout`: how keel-init opens an image a pull put in the store, by
/// the digest the pull reported, whatever else the layout's index names.
pub fn open_manifest(layout: &Path, digest: &str) -> Result<Image, OciError> {
    is_layout(layout)?;
    let (layers, config, id) = open_layout_manifest(layout, digest)?;
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
            return Err(OciError::Format {
                path: path.to_path_buf(),
                message: "a member's path leaves the archive".into(),
            });
        }
    }
    let dir = scratch.path();
    let (layers, checked, config, id) = if dir.join("oci-layout").is_file() {
        let (layers, config, id) = open_layout(dir)?;
        (layers.clone(), layout_digests(&layers), config, id)
    } else {
        let entries: Vec<DockerEntry> = read_json(&dir.join("manifest.json"))?;
        let [entry] = entries.as_slice() else {
            return Err(OciError::Format {
                path: path.to_path_buf(),
                message: format!("holds {} images; save exactly one", entries.len()),
            });
        };
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
                return Err(OciError::Format {
                    path: path.to_path_buf(),
                    message: format!(
                        "manifest.json names {rel:?}, which is not a file of the archive"
                    ),
                });
            }
            // Docker names blobs by their digest: check those.
            let digest = match rel.strip_prefix("blobs/sha256/") {
                Some(hex) => {
                    check_digest(&p, hex)?;
                    Some(hex.to_string())
                }
                None => None,
            };
            Ok::<_, OciError>((p, digest))
        };
        let (config_file, _) = inside(&entry.config)?;
        let config: ConfigBlob = read_json(&config_file)?;
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

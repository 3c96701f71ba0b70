//! OCI image manifests and indexes, and their Docker schema 2 twins, as a
//! registry serves them and as image layouts on disk hold them: which kind
//! a body is, the platform's entry of an index (as containerd picks it),
//! and which layers keel can unpack. Anything else (schema 1, artifacts,
//! foreign layers) is refused by name. Here rather than in keel-registry
//! because keel-oci reads the same documents from layouts and `docker save`
//! archives, and both must hold them to the same rules.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::reference::{shown, Digest};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MAX_MANIFEST: usize = 4 << 20;
pub const MAX_CONFIG: u64 = 16 << 20;
pub const MAX_LAYERS: usize = 1000;
pub const MAX_ENTRIES: usize = 1000;
/// How many platforms a NoPlatform error lists before "and N more".
const MAX_LISTED: usize = 16;

const SCHEMA1: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];
/// What registries and static file servers send when they do not know the
/// type: says nothing, so the body decides.
const GENERIC_TYPES: [&str; 4] = [
    "application/json",
    "application/octet-stream",
    "binary/octet-stream",
    "text/plain",
];
const LAYER_TYPES: [&str; 4] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];
const NON_DISTRIBUTABLE_PREFIXES: [&str; 2] = [
    "application/vnd.docker.image.rootfs.foreign.",
    "application/vnd.oci.image.layer.nondistributable.",
];
const REFERENCE_TYPE: &str = "vnd.docker.reference.type";
const ATTESTATION: &str = "attestation-manifest";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest of {0} bytes is larger than {MAX_MANIFEST}")]
    TooLarge(usize),
    #[error("manifest is not valid JSON for its kind: {0}")]
    Json(String),
    #[error("manifest has schemaVersion {0:?}, not 2")]
    SchemaVersion(Option<i64>),
    #[error("manifest is Docker schema 1 ({0:?}), which keel does not support: push the image again with a current Docker or buildah")]
    Schema1(String),
    #[error("manifest is served as {header:?} but says it is {body:?}")]
    MediaTypeMismatch { header: String, body: String },
    #[error("unknown manifest media type {0:?}")]
    UnknownMediaType(String),
    #[error("manifest has no media type, and neither \"manifests\" nor \"config\" and \"layers\" say what it is")]
    UnknownShape,
    #[error("manifest has {0} layers, more than {MAX_LAYERS}")]
    TooManyLayers(usize),
    #[error("index has {0} entries, more than {MAX_ENTRIES}")]
    TooManyEntries(usize),
    #[error("image config {digest} is {size} bytes, more than {MAX_CONFIG}")]
    ConfigTooLarge { digest: Digest, size: u64 },
    #[error("the index has no image for {wanted} (it has: {available})")]
    NoPlatform { wanted: String, available: String },
    #[error(
        "layer {digest} is non-distributable ({media_type:?}): its content is not in the registry"
    )]
    NonDistributable { media_type: String, digest: Digest },
    #[error("layer {digest} has media type {media_type:?}, which keel cannot unpack")]
    UnsupportedLayer { media_type: String, digest: Digest },
}

fn json_error(e: serde_json::Error) -> ManifestError {
    ManifestError::Json(shown(&e.to_string()))
}

/// Unknown fields (`urls`, `artifactType`, …) are ignored, as the OCI spec
/// asks of readers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// `os.version` and `os.features` are ignored: they matter for Windows only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary was built for, in Go's names as indexes
    /// use them. 32-bit arm's variant needs the CPU's features at run time,
    /// so it is left for [`choose`] to take as v7.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "powerpc64" => ("ppc64", None),
            "loongarch64" => ("loong64", None),
            "mips64" if cfg!(target_endian = "little") => ("mips64le", None),
            // arm, riscv64, s390x and the rest have the same name in Go.
            other => (other, None),
        };
        Platform {
            architecture: architecture.to_owned(),
            os: "linux".to_owned(),
            variant: variant.map(str::to_owned),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawManifest")]
pub struct Manifest {
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

impl TryFrom<RawManifest> for Manifest {
    type Error = ManifestError;

    fn try_from(raw: RawManifest) -> Result<Manifest, ManifestError> {
        check_schema_version(raw.schema_version)?;
        if raw.layers.len() > MAX_LAYERS {
            return Err(ManifestError::TooManyLayers(raw.layers.len()));
        }
        if raw.config.size > MAX_CONFIG {
            return Err(ManifestError::ConfigTooLarge {
                digest: raw.config.digest,
                size: raw.config.size,
            });
        }
        Ok(Manifest {
            media_type: raw.media_type.unwrap_or_else(|| OCI_MANIFEST.to_owned()),
            config: raw.config,
            layers: raw.layers,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawIndex")]
pub struct Index {
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIndex {
    schema_version: Option<i64>,
    media_type: Option<String>,
    manifests: Vec<Descriptor>,
}

impl TryFrom<RawIndex> for Index {
    type Error = ManifestError;

    fn try_from(raw: RawIndex) -> Result<Index, ManifestError> {
        check_schema_version(raw.schema_version)?;
        if raw.manifests.len() > MAX_ENTRIES {
            return Err(ManifestError::TooManyEntries(raw.manifests.len()));
        }
        Ok(Index {
            media_type: raw.media_type.unwrap_or_else(|| OCI_INDEX.to_owned()),
            manifests: raw.manifests,
        })
    }
}

fn check_schema_version(version: Option<i64>) -> Result<(), ManifestError> {
    match version {
        Some(2) => Ok(()),
        Some(1) => Err(ManifestError::Schema1("schemaVersion 1".to_owned())),
        other => Err(ManifestError::SchemaVersion(other)),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Manifest(Manifest),
    Index(Index),
}

/// Just enough of a body to tell what it is before reading it as that.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<i64>,
    media_type: Option<String>,
    manifests: Option<IgnoredAny>,
    config: Option<IgnoredAny>,
    layers: Option<IgnoredAny>,
}

enum Kind {
    Manifest,
    Index,
}

fn kind(media_type: &str) -> Option<Kind> {
    if media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST {
        Some(Kind::Manifest)
    } else if media_type == OCI_INDEX || media_type == DOCKER_LIST {
        Some(Kind::Index)
    } else {
        None
    }
}

/// The media type of a Content-Type, lowercased (RFC 6838: they are
/// case-insensitive), or None if it says nothing about the body.
fn header_media_type(content_type: &str) -> Option<String> {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let essence = essence.to_ascii_lowercase();
    (!essence.is_empty() && !GENERIC_TYPES.contains(&essence.as_str())).then_some(essence)
}

/// A manifest or an index, from the body and the response's Content-Type.
/// The header says what the body is; the body's `mediaType`, which OCI
/// lets it leave out, must then agree; with neither, the body's shape
/// decides.
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Parsed, ManifestError> {
    if body.len() > MAX_MANIFEST {
        return Err(ManifestError::TooLarge(body.len()));
    }
    // serde reads a JSON array into a struct field by field; a manifest is
    // an object, and anything else is refused rather than reinterpreted.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ManifestError::Json("not a JSON object".to_owned()));
    }
    let probe: Probe = serde_json::from_slice(body).map_err(json_error)?;
    let header = content_type.and_then(header_media_type);
    let in_body = probe.media_type.as_deref().map(str::to_ascii_lowercase);
    for media_type in [&header, &in_body].into_iter().flatten() {
        if SCHEMA1.contains(&media_type.as_str()) {
            return Err(ManifestError::Schema1(shown(media_type)));
        }
    }
    if probe.schema_version == Some(1) {
        return Err(ManifestError::Schema1("schemaVersion 1".to_owned()));
    }
    let media_type = match (header, in_body) {
        (Some(header), Some(body)) if header != body => {
            return Err(ManifestError::MediaTypeMismatch {
                header: shown(&header),
                body: shown(&body),
            })
        }
        (Some(media_type), _) | (None, Some(media_type)) => media_type,
        (None, None) => {
            let is_manifest = probe.config.is_some() && probe.layers.is_some();
            match (probe.manifests.is_some(), is_manifest) {
                (true, false) => OCI_INDEX.to_owned(),
                (false, true) => OCI_MANIFEST.to_owned(),
                _ => return Err(ManifestError::UnknownShape),
            }
        }
    };
    match kind(&media_type) {
        Some(Kind::Manifest) => {
            let raw: RawManifest = serde_json::from_slice(body).map_err(json_error)?;
            let mut manifest = Manifest::try_from(raw)?;
            manifest.media_type = media_type;
            Ok(Parsed::Manifest(manifest))
        }
        Some(Kind::Index) => {
            let raw: RawIndex = serde_json::from_slice(body).map_err(json_error)?;
            let mut index = Index::try_from(raw)?;
            index.media_type = media_type;
            Ok(Parsed::Index(index))
        }
        None => Err(ManifestError::UnknownMediaType(shown(&media_type))),
    }
}

/// An entry keel could pull: an image manifest for a real platform, not an
/// attestation (buildx's provenance and SBOMs) or a nested index.
fn candidate(entry: &Descriptor) -> Option<&Platform> {
    let media_type = entry.media_type.to_ascii_lowercase();
    if !matches!(kind(&media_type), Some(Kind::Manifest)) {
        return None;
    }
    let attestation = entry
        .annotations
        .as_ref()
        .and_then(|a| a.get(REFERENCE_TYPE))
        .is_some_and(|t| t == ATTESTATION);
    let platform = entry.platform.as_ref()?;
    if attestation || (platform.os == "unknown" && platform.architecture == "unknown") {
        return None;
    }
    Some(platform)
}

/// containerd's `platforms.Normalize`, for comparing: lowercase, Go's
/// names for common aliases, and the default variant made explicit so that
/// `arm64` and `arm64/v8` are the same platform.
fn normalized(p: &Platform) -> (String, String, String) {
    let os = p.os.to_ascii_lowercase();
    let architecture = p.architecture.to_ascii_lowercase();
    let variant = p
        .variant
        .as_deref()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let (architecture, variant) = match (architecture.as_str(), variant.as_str()) {
        ("aarch64" | "arm64", "" | "8" | "v8" | "v8.0") => ("arm64", "v8".to_owned()),
        ("aarch64" | "arm64", _) => ("arm64", variant),
        ("armhf", _) => ("arm", "v7".to_owned()),
        ("armel", _) => ("arm", "v6".to_owned()),
        ("arm", "" | "7") => ("arm", "v7".to_owned()),
        ("arm", "5" | "6" | "8") => ("arm", format!("v{variant}")),
        ("x86_64" | "x86-64" | "amd64", "v1") => ("amd64", String::new()),
        ("x86_64" | "x86-64" | "amd64", _) => ("amd64", variant),
        ("i386", _) => ("386", variant),
        (other, _) => (other, variant),
    };
    (os, architecture.to_owned(), variant)
}

/// Whether an image for `offered` runs on `host`, by the same rule as
/// [`choose`]: an image without an index says its platform in its config.
pub fn runs_on(offered: &Platform, host: &Platform) -> Result<(), ManifestError> {
    if normalized(offered) == normalized(host) {
        return Ok(());
    }
    Err(ManifestError::NoPlatform {
        wanted: host.to_string().escape_debug().to_string(),
        available: shown(&offered.to_string()).escape_debug().to_string(),
    })
}

/// The entry of an index for `platform`, as containerd's platforms matcher:
/// os, architecture and (normalized) variant equal, an entry that names the
/// wanted variant exactly first, then index order.
pub fn choose<'a>(index: &'a Index, platform: &Platform) -> Result<&'a Descriptor, ManifestError> {
    let wanted = normalized(platform);
    let mut fallback = None;
    for entry in &index.manifests {
        let Some(offered) = candidate(entry) else {
            continue;
        };
        if normalized(offered) != wanted {
            continue;
        }
        if offered.variant == platform.variant {
            return Ok(entry);
        }
        fallback.get_or_insert(entry);
    }
    fallback.ok_or_else(|| ManifestError::NoPlatform {
        wanted: platform.to_string().escape_debug().to_string(),
        available: available(index),
    })
}

fn available(index: &Index) -> String {
    let mut listed: Vec<String> = Vec::new();
    for platform in index.manifests.iter().filter_map(candidate) {
        // The registry's strings, so escaped and cut for a terminal.
        let shown = shown(&platform.to_string()).escape_debug().to_string();
        if !listed.contains(&shown) {
            listed.push(shown);
        }
    }
    if listed.is_empty() {
        return "no image manifests".to_owned();
    }
    let more = listed.len().saturating_sub(MAX_LISTED);
    listed.truncate(MAX_LISTED);
    let mut text = listed.join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

/// A layer descriptor keel can unpack: a tar, plain or gzip or zstd. Foreign
/// and non-distributable layers are refused apart: they are not in the
/// registry at all, so pulling them would fetch from wherever `urls` says.
pub fn check_layer(layer: &Descriptor) -> Result<(), ManifestError> {
    let media_type = layer.media_type.to_ascii_lowercase();
    if LAYER_TYPES.contains(&media_type.as_str()) {
        return Ok(());
    }
    let media_type_shown = shown(&layer.media_type);
    if NON_DISTRIBUTABLE_PREFIXES
        .iter()
        .any(|p| media_type.starts_with(p))
    {
        return Err(ManifestError::NonDistributable {
            media_type: media_type_shown,
            digest: layer.digest.clone(),
        });
    }
    Err(ManifestError::UnsupportedLayer {
        media_type: media_type_shown,
        digest: layer.digest.clone(),
    })
}

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;

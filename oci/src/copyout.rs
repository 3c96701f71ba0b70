//! An image out of a store someone else writes (keel-pull's, owned by its
//! unprivileged user), into a folder of root's: every path resolved inside
//! the store's root (a symlink there means nothing outside it), only
//! regular files read, sizes bounded, and each blob hashed as it is
//! copied. What root unpacks then is the copy, which nobody else can
//! change between the check and the use.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;

use pathrs::flags::OpenFlags;
use pathrs::Root;
use sha2::{Digest as _, Sha256};

use keel_formats::manifest::{self, Parsed, MAX_CONFIG};
use keel_formats::reference::Digest;

use crate::{format_err, image_manifest, manifest_err, parse_digest, OciError};

/// A layer is bounded by what its manifest says; this bounds the claim.
const MAX_LAYER: u64 = 64 << 30;

/// Copy the image of manifest `manifest` ("sha256:<hex>") from the OCI
/// layout at `layout` (a path inside `root`, resolved there) into a new
/// layout at `dest`. With `pin` (the digest the person named), the
/// manifest must be it, or be listed in the index that is it.
pub fn copy_image(
    root: &Path,
    layout: &Path,
    manifest: &str,
    pin: Option<&str>,
    dest: &Path,
) -> Result<(), OciError> {
    let store = Root::open(root).map_err(|e| format_err(root, e.to_string()))?;
    let blobs = dest.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(crate::io_err(&blobs))?;
    let manifest = parse_digest(root, manifest)?;
    let pin = pin.map(|p| parse_digest(root, p)).transpose()?;
    let copy = |digest: &Digest, max: u64| -> Result<Vec<u8>, OciError> {
        copy_blob(&store, root, layout, digest, max, &blobs)
    };
    let max_manifest = u64::try_from(manifest::MAX_MANIFEST).unwrap_or(u64::MAX);
    // Where the copy is, for messages: the store's files are someone else's.
    let copied = |d: &Digest| blobs.join(d.hex());
    let bytes = copy(&manifest, max_manifest)?;
    let parsed = manifest::parse(None, &bytes).map_err(manifest_err(&copied(&manifest)))?;
    let m = image_manifest(parsed, &copied(&manifest))?;
    if let Some(pin) = pin.filter(|p| *p != manifest) {
        let bytes = copy(&pin, max_manifest)?;
        let index = match manifest::parse(None, &bytes).map_err(manifest_err(&copied(&pin)))? {
            Parsed::Index(index) => index,
            Parsed::Manifest(_) => {
                return Err(format_err(
                    dest,
                    format!("the pinned {pin} is neither {manifest} nor an index"),
                ))
            }
        };
        if !index.manifests.iter().any(|d| d.digest == manifest) {
            return Err(format_err(
                dest,
                format!("the pinned {pin} does not list {manifest}; refused"),
            ));
        }
    }
    copy(&m.config.digest, MAX_CONFIG)?;
    for l in &m.layers {
        copy(&l.digest, MAX_LAYER)?;
    }
    let marker = dest.join("oci-layout");
    fs::write(&marker, r#"{"imageLayoutVersion":"1.0.0"}"#).map_err(crate::io_err(&marker))?;
    Ok(())
}

/// Blob `digest` of the layout into `blobs`, checked while it is copied;
/// the bytes too when they are small enough to be a manifest or config.
fn copy_blob(
    store: &Root,
    root: &Path,
    layout: &Path,
    digest: &Digest,
    max: u64,
    blobs: &Path,
) -> Result<Vec<u8>, OciError> {
    let hex = digest.hex();
    let rel = layout.join("blobs/sha256").join(&hex);
    let shown = root.join(&rel);
    let handle = store
        .resolve(&rel)
        .map_err(|e| format_err(&shown, e.to_string()))?;
    // Opened through the handle: the same inode that was resolved, and a
    // fifo or a device is refused before it is opened for reading.
    let probe = File::from(std::os::fd::OwnedFd::from(
        handle
            .try_clone()
            .map_err(|e| format_err(&shown, e.to_string()))?,
    ));
    let meta = probe.metadata().map_err(crate::io_err(&shown))?;
    if !meta.is_file() {
        return Err(format_err(&shown, "not a regular file"));
    }
    if meta.len() > max {
        return Err(format_err(&shown, format!("larger than {max} bytes")));
    }
    let mut from = handle
        .reopen(OpenFlags::O_RDONLY)
        .map_err(|e| format_err(&shown, e.to_string()))?
        .take(max);
    let to_path = blobs.join(&hex);
    let mut to = File::create(&to_path).map_err(crate::io_err(&to_path))?;
    let keep = max <= MAX_CONFIG;
    let mut kept = Vec::new();
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = from.read(&mut buf).map_err(crate::io_err(&shown))?;
        if n == 0 {
            break;
        }
        let chunk = buf.get(..n).unwrap_or_default();
        hash.update(chunk);
        to.write_all(chunk).map_err(crate::io_err(&to_path))?;
        if keep {
            kept.extend_from_slice(chunk);
        }
    }
    let actual = hex::encode(hash.finalize());
    if actual != hex {
        let _ = fs::remove_file(&to_path);
        return Err(OciError::Digest {
            path: shown,
            digest: digest.to_string(),
            actual,
        });
    }
    Ok(kept)
}

//! Installing a verified bundle into the inactive slot. The order is what
//! makes a power cut harmless at any moment:
//!
//! 1. every boot entry but the running one is removed, so nothing can boot
//!    the slot while it is half written;
//! 2. root and verity are written from the verified bundle in the
//!    updater's own storage (see [`Verified`]), synced, dropped from the
//!    page cache, read back from the device and checked chunk by chunk
//!    against the signed manifest;
//! 3. only then the UKI goes to the ESP as `keel-VERSION+3.efi`, written
//!    under a temporary name, synced and renamed.
//!
//! Until step 3 completes the running slot is the only one that boots.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};

use sha2::{Digest, Sha256};

use keel_formats::bootentry::{EntryName, TRIES};
use keel_formats::bundle::{parse_version, Manifest, Payload, PayloadName};
use keel_formats::chunking;
use keel_formats::cmdline::{to_hex, VerityParams};
use keel_formats::disk::Slot;

use crate::entries::Entries;
use crate::error::{io_err, UpdateError};
use crate::slots::{drop_cache, Partitions};
use crate::verify::Verified;

/// What is running now.
#[derive(Debug, Clone)]
pub struct Running {
    pub variant: String,
    pub version: String,
    pub verity: VerityParams,
}

/// The host's disk as the updater sees it.
#[derive(Debug, Clone)]
pub struct Disk {
    pub parts: Partitions,
    pub entries: Entries,
}

/// Whether `m` may replace what runs: variant, version order, min_version.
pub fn check_policy(m: &Manifest, running: &Running) -> Result<(), UpdateError> {
    if m.variant != running.variant {
        return Err(UpdateError::Variant {
            bundle: m.variant.clone(),
            host: running.variant.clone(),
        });
    }
    let new = parse_version("version", &m.version)?;
    let cur = parse_version("running version", &running.version)?;
    if new == cur {
        return Err(UpdateError::SameVersion(m.version.clone()));
    }
    if new < cur && !m.allow_downgrade {
        return Err(UpdateError::Downgrade {
            bundle: m.version.clone(),
            running: running.version.clone(),
        });
    }
    if let Some(min) = &m.min_version {
        if cur < parse_version("min_version", min)? {
            return Err(UpdateError::TooOld {
                bundle: m.version.clone(),
                min: min.clone(),
                running: running.version.clone(),
            });
        }
    }
    Ok(())
}

/// Refuse payloads larger than the target slot's partitions.
pub fn check_fits(m: &Manifest, disk: &Disk, target: Slot) -> Result<(), UpdateError> {
    for (name, label) in [
        (PayloadName::Root, target.root_label()),
        (PayloadName::Verity, target.verity_label()),
    ] {
        let p = m
            .payload(name)
            .ok_or_else(|| UpdateError::State(format!("no {} payload", name.as_str())))?;
        let room = disk.parts.size(label)?;
        if p.size > room {
            return Err(UpdateError::TooLarge {
                payload: name.as_str(),
                size: p.size,
                partition: label.to_string(),
                room,
            });
        }
    }
    Ok(())
}

/// Read back the first `p.size` bytes of a partition and compare them
/// chunk by chunk with the manifest.
fn read_back(path: &std::path::Path, label: &str, p: &Payload) -> Result<(), UpdateError> {
    let mut f = std::io::BufReader::with_capacity(1 << 20, File::open(path).map_err(io_err(path))?);
    drop_cache(f.get_ref(), path)?;
    let mut buf = vec![0u8; chunking::MAX];
    for (at, c) in p.spans() {
        // At most chunking::MAX in a validated manifest.
        let len = usize::try_from(c.size).unwrap_or(usize::MAX).min(buf.len());
        f.read_exact(&mut buf[..len]).map_err(io_err(path))?;
        if hex::encode(Sha256::digest(&buf[..len])) != c.sha256 {
            return Err(UpdateError::WriteCheck {
                partition: label.to_string(),
                offset: at,
            });
        }
    }
    Ok(())
}

/// Install `bundle` into slot `target`; returns the new entry's file name.
/// `progress` gets bytes written.
pub fn install(
    bundle: &mut Verified,
    disk: &Disk,
    running: &Running,
    target: Slot,
    progress: &mut dyn FnMut(u64),
) -> Result<String, UpdateError> {
    let m = bundle.head().manifest.clone();
    check_fits(&m, disk, target)?;
    let running_hash = to_hex(&running.verity.root_hash);
    let keep = disk
        .entries
        .find(&running_hash)?
        .map(|e| e.file)
        .ok_or_else(|| {
            UpdateError::State(format!(
                "no boot entry on the ESP carries the running root hash {running_hash}"
            ))
        })?;
    disk.entries.remove_all_but(&keep)?;

    let mut base = 0u64;
    for (name, label) in [
        (PayloadName::Root, target.root_label()),
        (PayloadName::Verity, target.verity_label()),
    ] {
        let Some(p) = m.payload(name) else { continue };
        let path = disk.parts.path(label);
        let started = std::time::Instant::now();
        let mut out = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        bundle.copy_payload(
            p,
            &mut |chunk| out.write_all(chunk).map_err(io_err(&path)),
            &mut |n| progress(base.saturating_add(n)),
        )?;
        out.sync_all().map_err(io_err(&path))?;
        let written = started.elapsed();
        drop(out);
        read_back(&path, label, p)?;
        // For operators and `cargo xtask bench update`.
        eprintln!(
            "keel-update: {}: {} bytes to {label}: written and synced in {:.3} s, read back and checked in {:.3} s",
            name.as_str(),
            p.size,
            written.as_secs_f64(),
            started.elapsed().saturating_sub(written).as_secs_f64()
        );
        base = base.saturating_add(p.size);
    }

    let uki = m
        .payload(PayloadName::Uki)
        .ok_or_else(|| UpdateError::State("no uki payload".into()))?;
    let name = EntryName {
        version: m.version.clone(),
        tries_left: Some(TRIES),
        tries_done: 0,
    };
    disk.entries.install(&name, &mut |f| {
        // The UKI is not read back: it is checked on its way instead.
        bundle.stream_payload(
            uki,
            &mut |chunk| {
                f.write_all(chunk).map_err(|e| UpdateError::Io {
                    path: "UKI".into(),
                    source: e,
                })
            },
            &mut |n| progress(base.saturating_add(n)),
        )
    })?;
    Ok(name.file_name())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(version: &str) -> Manifest {
        let h = "00".repeat(32);
        Manifest {
            format: 1,
            os: "keel".into(),
            variant: "keel".into(),
            version: version.into(),
            created: 0,
            min_version: None,
            allow_downgrade: false,
            verity: keel_formats::bundle::VerityInfo {
                root_hash: h,
                salt: String::new(),
                data_blocks: 2,
            },
            payloads: Vec::new(),
        }
    }

    fn running(version: &str) -> Running {
        Running {
            variant: "keel".into(),
            version: version.into(),
            verity: VerityParams {
                data_blocks: 2,
                salt: Vec::new(),
                root_hash: [0; 32],
            },
        }
    }

    #[test]
    fn versions_variant_and_min_version() {
        assert!(check_policy(&manifest("0.2.0"), &running("0.1.0")).is_ok());
        let e = check_policy(&manifest("0.1.0"), &running("0.2.0")).unwrap_err();
        assert!(matches!(e, UpdateError::Downgrade { .. }), "{e}");
        let mut m = manifest("0.1.0");
        m.allow_downgrade = true;
        assert!(check_policy(&m, &running("0.2.0")).is_ok());
        assert!(matches!(
            check_policy(&manifest("0.2.0"), &running("0.2.0")),
            Err(UpdateError::SameVersion(_))
        ));
        let mut m = manifest("0.3.0");
        m.variant = "keel-edge".into();
        assert_eq!(
            check_policy(&m, &running("0.1.0")).unwrap_err().to_string(),
            "wrong variant: the bundle is for \"keel-edge\", this host runs \"keel\""
        );
        let mut m = manifest("0.3.0");
        m.min_version = Some("0.2.0".into());
        assert_eq!(
            check_policy(&m, &running("0.1.0")).unwrap_err().to_string(),
            "0.3.0 may only replace 0.2.0 or newer; this host runs 0.1.0"
        );
        assert!(check_policy(&m, &running("0.2.5")).is_ok());
    }
}

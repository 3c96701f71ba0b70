//! `keel flash IMAGE TARGET`: put a keel disk image on a block device or
//! into a file, the way coreos-installer does: refuse a target that is in
//! use, or that holds partitions unless forced; write the partitions, then
//! the boot-critical bytes (the ESP and the partition table) last; sync;
//! read everything back and compare hashes. The data partition grows to the
//! end of the target (keel-init grows its filesystem on first boot).

mod target;

use std::fs::File;
use std::io::Cursor;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use keel_formats::disk::{DATA_LABEL, ESP_LABEL};

use crate::disk::{self, DiskError, Layout};
use crate::esp::{self, EspError};

pub use target::{Kind, Target};

const MIB: u64 = 1 << 20;
/// Bytes copied per write; progress is reported per chunk.
const CHUNK: usize = 4 << 20;
/// Where the ESP keeps the user's host config (DESIGN.md, "Disk layout").
pub const HOST_CONFIG_ON_ESP: &str = keel_formats::host::ON_ESP;

#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{target}: {what} is in use ({how}); unmount it or stop what holds it first")]
    InUse {
        target: PathBuf,
        what: String,
        how: String,
    },
    #[error("{target} already holds a partition table; add --force to overwrite it")]
    HasPartitions { target: PathBuf },
    #[error("{target} is {size} bytes; the image needs at least {need}")]
    TooSmall {
        target: PathBuf,
        size: u64,
        need: u64,
    },
    #[error("{path}: not a keel disk image: {why}")]
    NotKeel { path: PathBuf, why: String },
    #[error("{path} is not a valid host config; nothing was written:\n{message}")]
    Config { path: PathBuf, message: String },
    #[error("{target}: read back differs from what was written: {what}")]
    Verify { target: PathBuf, what: String },
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Esp(#[from] EspError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FlashError + '_ {
    move |source| FlashError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug)]
pub struct Options<'a> {
    pub image: &'a Path,
    pub target: &'a Path,
    /// A host config for the ESP (`keel/host.toml`).
    pub config: Option<&'a Path>,
    /// Overwrite a target that holds a partition table.
    pub force: bool,
}

/// What `flash` did.
#[derive(Debug)]
pub struct Report {
    pub kind: Kind,
    pub target_size: u64,
    /// Bytes written (zeroed ranges not counted).
    pub written: u64,
    /// Size of the data partition on the target.
    pub data_size: u64,
    /// sha256 of every partition as read back from the target, in order.
    pub partitions: Vec<(String, String)>,
    /// Why the kernel did not re-read the new partition table, if it did
    /// not (the partitions appear at the next attach or boot).
    pub reread_failed: Option<String>,
}

/// Whether the target may be written: never while in use; with a
/// partition table only when forced; never when too small.
pub fn check(path: &Path, t: &Target, need: u64, force: bool) -> Result<(), FlashError> {
    if let Some((what, how)) = t.in_use.first() {
        return Err(FlashError::InUse {
            target: path.to_path_buf(),
            what: what.clone(),
            how: how.clone(),
        });
    }
    if t.has_table && !force {
        return Err(FlashError::HasPartitions {
            target: path.to_path_buf(),
        });
    }
    if t.kind == Kind::Block && t.size < need {
        return Err(FlashError::TooSmall {
            target: path.to_path_buf(),
            size: t.size,
            need,
        });
    }
    Ok(())
}

/// The image's layout with the data partition reaching to the end of a
/// target of `size` bytes (1 MiB before it, as `keel build` leaves).
pub fn grown(layout: &Layout, size: u64) -> Result<Layout, FlashError> {
    let mut l = layout.clone();
    let last = l
        .parts
        .iter_mut()
        .max_by_key(|p| p.offset)
        .ok_or_else(|| FlashError::NotKeel {
            path: PathBuf::from("image"),
            why: "no partitions".into(),
        })?;
    if last.label == DATA_LABEL {
        let end = (size.saturating_sub(MIB)) / MIB * MIB;
        if end > last.offset + last.size {
            last.size = end - last.offset;
        }
    }
    l.size = size.max(layout.size);
    Ok(l)
}

/// Check the host config (every problem, each with its line and column)
/// before anything is written. The image's services are not known here, so
/// `services.<name>` is checked again on the host at boot.
fn read_config(path: &Path) -> Result<Vec<u8>, FlashError> {
    use keel_formats::hostconfig::{check, render, Context, Source};
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    check(
        Source {
            name: path,
            text: &text,
        },
        &Context::default(),
    )
    .map_err(|d| FlashError::Config {
        path: path.to_path_buf(),
        message: render(&d),
    })?;
    Ok(text.into_bytes())
}

/// A range of the target and what it must hold.
struct Piece {
    label: String,
    offset: u64,
    source: Source,
}

enum Source {
    /// `len` bytes of the image from `from`.
    Image {
        from: u64,
        len: u64,
    },
    Bytes(Vec<u8>),
}

impl Piece {
    fn len(&self) -> u64 {
        match &self.source {
            Source::Image { len, .. } => *len,
            Source::Bytes(b) => b.len() as u64,
        }
    }
}

/// Write `o.image` to `o.target`. `progress` gets (bytes done, total).
pub fn flash(o: &Options<'_>, progress: &mut dyn FnMut(u64, u64)) -> Result<Report, FlashError> {
    let layout = disk::read_layout(o.image)?;
    for need in [ESP_LABEL, DATA_LABEL] {
        if !layout.parts.iter().any(|p| p.label == need) {
            return Err(FlashError::NotKeel {
                path: o.image.to_path_buf(),
                why: format!("it has no {need} partition"),
            });
        }
    }
    let config = o.config.map(read_config).transpose()?;
    let t = target::probe(o.target)?;
    check(o.target, &t, layout.size, o.force)?;

    let image = File::open(o.image).map_err(io_err(o.image))?;
    let out = target::open(o.target, &t)?;
    let size = match t.kind {
        Kind::Block => t.size,
        Kind::File => {
            // A file target keeps a larger size it already has (someone
            // made room for /var) and grows to the image's otherwise.
            let size = t.size.max(layout.size);
            out.set_len(size).map_err(io_err(o.target))?;
            size
        }
    };
    let new_layout = grown(&layout, size)?;

    // The ESP, with the host config added, is boot-critical: last but one.
    let mut pieces: Vec<Piece> = Vec::new();
    let mut esp_piece = None;
    for p in &layout.parts {
        if p.label == ESP_LABEL {
            let mut bytes = vec![0u8; usize::try_from(p.size).unwrap_or(usize::MAX)];
            image
                .read_exact_at(&mut bytes, p.offset)
                .map_err(io_err(o.image))?;
            if let Some(c) = &config {
                bytes = esp::add_files(bytes, &[(HOST_CONFIG_ON_ESP.to_string(), c.clone())])?;
            }
            esp_piece = Some(Piece {
                label: p.label.clone(),
                offset: p.offset,
                source: Source::Bytes(bytes),
            });
        } else {
            pieces.push(Piece {
                label: p.label.clone(),
                offset: p.offset,
                source: Source::Image {
                    from: p.offset,
                    len: p.size,
                },
            });
        }
    }
    pieces.sort_by_key(|p| p.offset);
    pieces.extend(esp_piece);

    let total: u64 = pieces.iter().map(Piece::len).sum();
    let mut done = 0u64;
    let mut written = 0u64;
    let mut expected = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    for piece in &pieces {
        let mut h = Sha256::new();
        let mut at = 0u64;
        while at < piece.len() {
            let n = (piece.len() - at).min(CHUNK as u64) as usize;
            let chunk: &[u8] = match &piece.source {
                Source::Image { from, .. } => {
                    image
                        .read_exact_at(&mut buf[..n], from + at)
                        .map_err(io_err(o.image))?;
                    &buf[..n]
                }
                Source::Bytes(b) => &b[at as usize..at as usize + n],
            };
            h.update(chunk);
            if chunk.iter().all(|&b| b == 0) {
                target::zero(&out, &t, piece.offset + at, n as u64).map_err(io_err(o.target))?;
            } else {
                out.write_all_at(chunk, piece.offset + at)
                    .map_err(io_err(o.target))?;
                written += n as u64;
            }
            at += n as u64;
            done += n as u64;
            progress(done, total);
        }
        expected.push((
            piece.label.clone(),
            piece.offset,
            piece.len(),
            hex::encode(h.finalize()),
        ));
    }
    // The partition table last: until it is written the target does not
    // describe a half-written keel disk.
    out.sync_all().map_err(io_err(o.target))?;
    disk::write_table(&out, o.target, &new_layout)?;
    out.sync_all().map_err(io_err(o.target))?;

    // Read back from the device, not the page cache.
    target::drop_cache(&out, &t).map_err(io_err(o.target))?;
    let mut partitions = Vec::new();
    for (label, offset, len, want) in &expected {
        let mut h = Sha256::new();
        let mut at = 0u64;
        while at < *len {
            let n = (len - at).min(CHUNK as u64) as usize;
            out.read_exact_at(&mut buf[..n], offset + at)
                .map_err(io_err(o.target))?;
            h.update(&buf[..n]);
            at += n as u64;
        }
        let got = hex::encode(h.finalize());
        if got != *want {
            return Err(FlashError::Verify {
                target: o.target.to_path_buf(),
                what: format!("partition {label}: sha256 {got}, wrote {want}"),
            });
        }
        partitions.push((label.clone(), got));
    }
    let back = disk::read_layout_from(&out, o.target)?;
    if back.parts != new_layout.parts {
        return Err(FlashError::Verify {
            target: o.target.to_path_buf(),
            what: format!(
                "partition table: {:?}, wrote {:?}",
                back.parts, new_layout.parts
            ),
        });
    }
    let reread_failed = match t.kind {
        Kind::Block => target::reread_partitions(&out).err().map(|e| e.to_string()),
        Kind::File => None,
    };
    if let Some(c) = &config {
        let esp = new_layout
            .parts
            .iter()
            .find(|p| p.label == ESP_LABEL)
            .map(|p| (p.offset, p.size));
        if let Some((offset, len)) = esp {
            let mut bytes = vec![0u8; len as usize];
            out.read_exact_at(&mut bytes, offset)
                .map_err(io_err(o.target))?;
            if esp::read_file(Cursor::new(bytes), HOST_CONFIG_ON_ESP)? != *c {
                return Err(FlashError::Verify {
                    target: o.target.to_path_buf(),
                    what: format!("{HOST_CONFIG_ON_ESP} on the ESP"),
                });
            }
        }
    }
    let data_size = new_layout
        .parts
        .iter()
        .find(|p| p.label == DATA_LABEL)
        .map_or(0, |p| p.size);
    Ok(Report {
        kind: t.kind,
        target_size: size,
        written,
        data_size,
        partitions,
        reread_failed,
    })
}

#[cfg(test)]
mod tests;

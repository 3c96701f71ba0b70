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
///
/// Everything that can refuse the flash runs before the first write;
/// images are verified while they stream and boot-critical bytes are
/// written last, then synced; then all of it is read back.
pub fn flash(o: &Options<'_>, progress: &mut dyn FnMut(u64, u64)) -> Result<Report, FlashError> {
    let layout = keel_layout(o.image)?;
    let config = o.config.map(read_config).transpose()?;
    let t = target::probe(o.target)?;
    check(o.target, &t, layout.size, o.force)?;

    let f = Flashing {
        o,
        image: File::open(o.image).map_err(io_err(o.image))?,
        out: target::open(o.target, &t)?,
        t,
    };
    let size = f.target_size(&layout)?;
    let new_layout = grown(&layout, size)?;
    let pieces = f.pieces(&layout, config.as_deref())?;
    let (written, expected) = f.stream(&pieces, progress)?;
    f.write_table(&new_layout)?;

    let partitions = f.read_back(&expected)?;
    f.check_table(&new_layout)?;
    let reread_failed = match f.t.kind {
        Kind::Block => target::reread_partitions(&f.out)
            .err()
            .map(|e| e.to_string()),
        Kind::File => None,
    };
    if let Some(c) = &config {
        f.check_config(&new_layout, c)?;
    }
    let data_size = new_layout
        .parts
        .iter()
        .find(|p| p.label == DATA_LABEL)
        .map_or(0, |p| p.size);
    Ok(Report {
        kind: f.t.kind,
        target_size: size,
        written,
        data_size,
        partitions,
        reread_failed,
    })
}

/// The image's layout, refused unless it has the partitions flashing
/// changes: the ESP (for the host config) and the data partition (grown).
fn keel_layout(image: &Path) -> Result<Layout, FlashError> {
    let layout = disk::read_layout(image)?;
    for need in [ESP_LABEL, DATA_LABEL] {
        if !layout.parts.iter().any(|p| p.label == need) {
            return Err(FlashError::NotKeel {
                path: image.to_path_buf(),
                why: format!("it has no {need} partition"),
            });
        }
    }
    Ok(layout)
}

/// What a piece held as it was written, to compare with the read back.
struct Written {
    label: String,
    offset: u64,
    len: u64,
    sha256: String,
}

/// One flash in progress: the image read, the target written.
struct Flashing<'a> {
    o: &'a Options<'a>,
    t: Target,
    image: File,
    out: File,
}

impl Flashing<'_> {
    fn target_size(&self, layout: &Layout) -> Result<u64, FlashError> {
        Ok(match self.t.kind {
            Kind::Block => self.t.size,
            Kind::File => {
                // A file target keeps a larger size it already has (someone
                // made room for /var) and grows to the image's otherwise.
                let size = self.t.size.max(layout.size);
                self.out.set_len(size).map_err(io_err(self.o.target))?;
                size
            }
        })
    }

    /// What to write, in order: the partitions by offset, then the ESP.
    fn pieces(&self, layout: &Layout, config: Option<&[u8]>) -> Result<Vec<Piece>, FlashError> {
        // The ESP, with the host config added, is boot-critical: last but one.
        let mut pieces: Vec<Piece> = Vec::new();
        let mut esp_piece = None;
        for p in &layout.parts {
            if p.label == ESP_LABEL {
                let mut bytes = vec![0u8; usize::try_from(p.size).unwrap_or(usize::MAX)];
                self.image
                    .read_exact_at(&mut bytes, p.offset)
                    .map_err(io_err(self.o.image))?;
                if let Some(c) = config {
                    bytes = esp::add_files(bytes, &[(HOST_CONFIG_ON_ESP.to_string(), c.to_vec())])?;
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
        Ok(pieces)
    }

    /// Write `pieces` in order, hashing each as it streams; zero ranges
    /// are zeroed rather than written. Returns the bytes written and what
    /// each piece should read back as.
    fn stream(
        &self,
        pieces: &[Piece],
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(u64, Vec<Written>), FlashError> {
        let (image, out, t) = (&self.image, &self.out, &self.t);
        let total: u64 = pieces.iter().map(Piece::len).sum();
        let mut done = 0u64;
        let mut written = 0u64;
        let mut expected = Vec::new();
        let mut buf = vec![0u8; CHUNK];
        for piece in pieces {
            let mut h = Sha256::new();
            let mut at = 0u64;
            while at < piece.len() {
                let n = (piece.len() - at).min(CHUNK as u64) as usize;
                let chunk: &[u8] = match &piece.source {
                    Source::Image { from, .. } => {
                        image
                            .read_exact_at(&mut buf[..n], from + at)
                            .map_err(io_err(self.o.image))?;
                        &buf[..n]
                    }
                    Source::Bytes(b) => &b[at as usize..at as usize + n],
                };
                h.update(chunk);
                if chunk.iter().all(|&b| b == 0) {
                    target::zero(out, t, piece.offset + at, n as u64)
                        .map_err(io_err(self.o.target))?;
                } else {
                    out.write_all_at(chunk, piece.offset + at)
                        .map_err(io_err(self.o.target))?;
                    written += n as u64;
                }
                at += n as u64;
                done += n as u64;
                progress(done, total);
            }
            expected.push(Written {
                label: piece.label.clone(),
                offset: piece.offset,
                len: piece.len(),
                sha256: hex::encode(h.finalize()),
            });
        }
        Ok((written, expected))
    }

    /// The partition table last: until it is written the target does not
    /// describe a half-written keel disk.
    fn write_table(&self, layout: &Layout) -> Result<(), FlashError> {
        self.out.sync_all().map_err(io_err(self.o.target))?;
        disk::write_table(&self.out, self.o.target, layout)?;
        self.out.sync_all().map_err(io_err(self.o.target))?;
        Ok(())
    }

    /// Each piece's sha256 as read back, refused unless it is what was
    /// written.
    fn read_back(&self, expected: &[Written]) -> Result<Vec<(String, String)>, FlashError> {
        // Read back from the device, not the page cache.
        target::drop_cache(&self.out, &self.t).map_err(io_err(self.o.target))?;
        let mut buf = vec![0u8; CHUNK];
        let mut partitions = Vec::new();
        for w in expected {
            let mut h = Sha256::new();
            let mut at = 0u64;
            while at < w.len {
                let n = (w.len - at).min(CHUNK as u64) as usize;
                self.out
                    .read_exact_at(&mut buf[..n], w.offset + at)
                    .map_err(io_err(self.o.target))?;
                h.update(&buf[..n]);
                at += n as u64;
            }
            let got = hex::encode(h.finalize());
            if got != w.sha256 {
                return Err(FlashError::Verify {
                    target: self.o.target.to_path_buf(),
                    what: format!("partition {}: sha256 {got}, wrote {}", w.label, w.sha256),
                });
            }
            partitions.push((w.label.clone(), got));
        }
        Ok(partitions)
    }

    fn check_table(&self, layout: &Layout) -> Result<(), FlashError> {
        let back = disk::read_layout_from(&self.out, self.o.target)?;
        if back.parts != layout.parts {
            return Err(FlashError::Verify {
                target: self.o.target.to_path_buf(),
                what: format!(
                    "partition table: {:?}, wrote {:?}",
                    back.parts, layout.parts
                ),
            });
        }
        Ok(())
    }

    /// The host config as read back from the ESP on the target.
    fn check_config(&self, layout: &Layout, config: &[u8]) -> Result<(), FlashError> {
        let esp = layout
            .parts
            .iter()
            .find(|p| p.label == ESP_LABEL)
            .map(|p| (p.offset, p.size));
        if let Some((offset, len)) = esp {
            let mut bytes = vec![0u8; len as usize];
            self.out
                .read_exact_at(&mut bytes, offset)
                .map_err(io_err(self.o.target))?;
            if esp::read_file(Cursor::new(bytes), HOST_CONFIG_ON_ESP)? != config {
                return Err(FlashError::Verify {
                    target: self.o.target.to_path_buf(),
                    what: format!("{HOST_CONFIG_ON_ESP} on the ESP"),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

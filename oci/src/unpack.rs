//! Applying layers: each is read twice, first for its whiteouts (which
//! delete from the layers below), then for its entries, so an opaque
//! directory keeps what its own layer puts in it.

use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use super::inroot::{Meta, Owners, Tree};
use super::{compression, io_err, Compression, Image, OciError};

pub(super) const WHITEOUT: &str = ".wh.";
pub(super) const OPAQUE: &str = ".wh..wh..opq";

/// The tar stream of the layer open as `file`, from its start, `path` for
/// messages. It reads with an offset of its own: two reads of one open
/// layer do not disturb each other.
fn read_layer(file: &fs::File, path: &Path) -> Result<Box<dyn Read>, OciError> {
    let file = file.try_clone().map_err(io_err(path))?;
    let kind = compression(&file, path)?;
    let f = std::io::BufReader::new(ReadAt { file, at: 0 });
    Ok(match kind {
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(f)),
        Compression::Zstd => Box::new(Zstd::new(f, path)?),
        Compression::None => Box::new(f),
    })
}

/// A file read with pread from `at` on.
struct ReadAt {
    file: fs::File,
    at: u64,
}

impl Read for ReadAt {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.at)?;
        // A read never passes the end of a file, whose size fits in u64.
        self.at = self.at.saturating_add(n as u64);
        Ok(n)
    }
}

/// A zstd stream of one or more frames (as `zstd` and containerd write
/// layers), decoded frame after frame.
struct Zstd<R: std::io::BufRead> {
    frame: Option<ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>>,
}

impl<R: std::io::BufRead> Zstd<R> {
    fn new(source: R, path: &Path) -> Result<Self, OciError> {
        let frame =
            ruzstd::decoding::StreamingDecoder::new(source).map_err(|e| OciError::Format {
                path: path.to_path_buf(),
                message: format!("zstd: {e}"),
            })?;
        Ok(Zstd { frame: Some(frame) })
    }
}

impl<R: std::io::BufRead> Read for Zstd<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let Some(frame) = self.frame.as_mut() else {
                return Ok(0);
            };
            let n = frame.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            // This frame is done; another may follow.
            let Some(frame) = self.frame.take() else {
                return Ok(0);
            };
            let mut source = frame.into_inner();
            if source.fill_buf()?.is_empty() {
                return Ok(0);
            }
            self.frame = Some(
                ruzstd::decoding::StreamingDecoder::new(source)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
            );
        }
    }
}

/// A member path made relative and free of `..` and NUL bytes; None if it
/// leaves the root.
pub(super) fn clean(p: &Path) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    // tar keeps a NUL inside a long name; the system would cut the name
    // there (`..\0x` is `..`), so such a name leaves the root too.
    if p.as_os_str().as_bytes().contains(&0) {
        return None;
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// An error with what caused it: tar's own messages leave out the
/// system's reason.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut at = e.source();
    while let Some(cause) = at {
        out.push_str(&format!(": {cause}"));
        at = cause.source();
    }
    out
}

/// Unpack `image`'s layers, in order, into `dest`. Ownership is not kept
/// (the root filesystem is built with every file owned by root); device
/// nodes and fifos are skipped (keel gives each container its own /dev).
pub fn unpack(image: &Image, dest: &Path) -> Result<(), OciError> {
    unpack_as(image, dest, Owners::Unpacker)
}

/// [`unpack`], giving files the owners the layers record (needs root): for
/// roots that are used as they are rather than packed into an image.
pub fn unpack_keeping_owners(image: &Image, dest: &Path) -> Result<(), OciError> {
    unpack_as(image, dest, Owners::AsRecorded)
}

/// [`unpack`] with the owners `owners` says. Nothing is written outside
/// `dest`, whatever the layers hold (see [`crate::inroot`]).
pub fn unpack_as(image: &Image, dest: &Path, owners: Owners) -> Result<(), OciError> {
    image.open_layers()?.unpack(dest, owners)
}

/// An image's layer files, open: a process that cannot open them by name
/// (one in a user namespace, for which the image's files belong to nobody)
/// unpacks from these.
#[derive(Debug)]
pub struct Layers {
    source: PathBuf,
    /// (name for messages, path for messages, file)
    files: Vec<(String, PathBuf, fs::File)>,
}

impl Image {
    pub fn open_layers(&self) -> Result<Layers, OciError> {
        let files = self
            .layers
            .iter()
            .map(|(name, path)| {
                let f = fs::File::open(path).map_err(io_err(path))?;
                Ok((name.clone(), path.clone(), f))
            })
            .collect::<Result<_, OciError>>()?;
        Ok(Layers {
            source: self.source.clone(),
            files,
        })
    }
}

impl Layers {
    /// The open layer files, for a process that must keep them.
    pub fn fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.files.iter().map(|(_, _, f)| f.as_raw_fd()).collect()
    }

    /// Unpack the layers, in order, into `dest` (see [`unpack_as`]).
    pub fn unpack(&self, dest: &Path, owners: Owners) -> Result<(), OciError> {
        fs::create_dir_all(dest).map_err(io_err(dest))?;
        let mut tree = Tree::open(dest, owners).map_err(|message| OciError::Format {
            path: dest.to_path_buf(),
            message,
        })?;
        for (name, path, file) in &self.files {
            let err = |message: String| OciError::Layer {
                path: self.source.clone(),
                layer: name.clone(),
                message,
            };
            apply_layer(&mut tree, &|| read_layer(file, path), &err)?;
        }
        tree.finish().map_err(|message| OciError::Format {
            path: dest.to_path_buf(),
            message,
        })
    }
}

/// One layer, which `open` reads from its start.
fn apply_layer(
    tree: &mut Tree,
    open: &dyn Fn() -> Result<Box<dyn Read>, OciError>,
    err: &dyn Fn(String) -> OciError,
) -> Result<(), OciError> {
    // Pass 1: whiteouts, which delete from the layers below.
    let mut a = tar::Archive::new(open()?);
    for entry in a.entries().map_err(|e| err(e.to_string()))? {
        let e = entry.map_err(|e| err(with_causes(&e)))?;
        let p = e.path().map_err(|e| err(e.to_string()))?.into_owned();
        let Some(file) = p.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        if !file.starts_with(WHITEOUT) {
            continue;
        }
        let rel = clean(&p).ok_or_else(|| err(format!("{} leaves the root", p.display())))?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        if file == OPAQUE {
            tree.clear(parent).map_err(err)?;
        } else if let Some(gone) = file.strip_prefix(WHITEOUT) {
            if !gone.is_empty() && !gone.starts_with(WHITEOUT) {
                tree.remove(&parent.join(gone)).map_err(err)?;
            }
        }
    }
    // Pass 2: everything else.
    let mut a = tar::Archive::new(open()?);
    for entry in a.entries().map_err(|e| err(e.to_string()))? {
        let mut e = entry.map_err(|e| err(with_causes(&e)))?;
        let p = e.path().map_err(|e| err(e.to_string()))?.into_owned();
        if p.file_name()
            .and_then(|f| f.to_str())
            .is_some_and(|f| f.starts_with(WHITEOUT))
        {
            continue;
        }
        let rel = clean(&p).ok_or_else(|| err(format!("{} leaves the root", p.display())))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let meta = Meta::of(e.header()).map_err(|m| err(format!("{}: {m}", p.display())))?;
        let kind = e.header().entry_type();
        let link = || -> Result<PathBuf, OciError> {
            e.link_name()
                .map_err(|x| err(format!("{}: link name: {x}", p.display())))?
                .map(|l| l.into_owned())
                .ok_or_else(|| err(format!("{}: a link without a target", p.display())))
        };
        match kind {
            EntryType::Directory => tree.dir(&rel, meta),
            EntryType::Regular | EntryType::Continuous => tree.file(&rel, meta, &mut e),
            EntryType::Symlink => tree.symlink(&rel, &link()?, meta),
            EntryType::Link => {
                let target = link()?;
                let target = clean(&target).ok_or_else(|| {
                    err(format!(
                        "{}: link target {} leaves the root",
                        p.display(),
                        target.display()
                    ))
                })?;
                tree.hardlink(&rel, &target)
            }
            _ => continue,
        }
        .map_err(err)?;
    }
    Ok(())
}

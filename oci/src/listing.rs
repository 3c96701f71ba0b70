//! An image's files as its layers merge them, looked at without
//! unpacking: `keel build` works out a definition before it stages any
//! root, so it probes the image through its layers. Paths resolve as
//! [`crate::InRoot`] resolves them in an unpacked root: symlinks are
//! followed inside the image, never anywhere else (there is nowhere else:
//! nothing here touches a file of the host but the layers).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use super::unpack::{clean, layer_reader, OPAQUE, WHITEOUT};
use super::{io_err, Image, ImageRoot, OciError};

/// The most symlinks followed resolving one path, as Linux's MAXSYMLINKS:
/// a loop in a hostile image ends here.
const MAX_LINKS: usize = 40;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink(PathBuf),
    /// A hard link, device, fifo: there, but not read.
    Other,
}

/// An image's merged tree, from its layers: each path (relative to the
/// image's root) and what is there.
#[derive(Debug)]
pub struct InLayers<'a> {
    image: &'a Image,
    entries: BTreeMap<PathBuf, Kind>,
}

impl Image {
    /// This image's files as its layers merge them (each layer read once).
    pub fn in_layers(&self) -> Result<InLayers<'_>, OciError> {
        let mut entries: BTreeMap<PathBuf, Kind> = BTreeMap::new();
        for (_, path) in &self.layers {
            let mut archive = tar::Archive::new(layer_reader(path)?);
            // What this layer hides of the layers below: whited-out paths
            // with all under them, and what is under an opaque folder or
            // a path this layer puts something else than a folder on.
            let (mut gone, mut emptied, mut added) = (Vec::new(), Vec::new(), Vec::new());
            for entry in archive.entries().map_err(io_err(path))? {
                let e = entry.map_err(io_err(path))?;
                let Some(rel) = e.path().ok().and_then(|p| clean(&p)) else {
                    continue;
                };
                let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
                let name = rel.file_name().map(|n| n.to_string_lossy().into_owned());
                match name.as_deref() {
                    Some(OPAQUE) => emptied.push(parent),
                    Some(n) if n.starts_with(WHITEOUT) => {
                        // As unpacking has it: `.wh.` alone, or a
                        // whiteout of a whiteout, hides nothing.
                        let hidden = n.strip_prefix(WHITEOUT).unwrap_or_default();
                        if !hidden.is_empty() && !hidden.starts_with(WHITEOUT) {
                            gone.push(parent.join(hidden));
                        }
                    }
                    Some(_) => {
                        let kind = match e.header().entry_type() {
                            EntryType::Directory => Kind::Dir,
                            EntryType::Regular | EntryType::Continuous => Kind::File,
                            EntryType::Symlink => match e.link_name() {
                                Ok(Some(target)) => Kind::Symlink(target.into_owned()),
                                _ => Kind::Other,
                            },
                            _ => Kind::Other,
                        };
                        if kind != Kind::Dir {
                            emptied.push(rel.clone());
                        }
                        added.push((rel, kind));
                    }
                    None => {}
                }
            }
            entries.retain(|p, _| {
                !gone.iter().any(|g| p.starts_with(g))
                    && !emptied.iter().any(|d| p.starts_with(d) && p != d)
            });
            for (rel, kind) in added {
                // A layer may leave out the folders above what it adds.
                for up in rel.ancestors().skip(1) {
                    if !up.as_os_str().is_empty() {
                        entries.entry(up.to_path_buf()).or_insert(Kind::Dir);
                    }
                }
                entries.insert(rel, kind);
            }
        }
        Ok(InLayers {
            image: self,
            entries,
        })
    }
}

impl InLayers<'_> {
    /// Where `path` is in the image and what is there, as the container
    /// would resolve it: symlinks on the way followed inside the image
    /// (an absolute one from its root, `..` stopping there), the last one
    /// too if `follow`. None if nothing is there, a part on the way is
    /// not a folder, or the links go on too long.
    fn resolve(&self, path: &Path, follow: bool) -> Option<(PathBuf, &Kind)> {
        const ROOT: &Kind = &Kind::Dir;
        let mut links = 0;
        let mut at = PathBuf::new();
        let mut rest = parts(path);
        while let Some(part) = rest.pop() {
            if part == ".." {
                at.pop();
                continue;
            }
            let next = at.join(&part);
            let last = rest.is_empty();
            match self.entries.get(&next)? {
                Kind::Symlink(target) if follow || !last => {
                    links += 1;
                    if links > MAX_LINKS {
                        return None;
                    }
                    if target.is_absolute() {
                        at = PathBuf::new();
                    }
                    rest.extend(parts(target));
                }
                Kind::Dir => at = next,
                _ if last => at = next,
                _ => return None,
            }
        }
        let kind = if at.as_os_str().is_empty() {
            ROOT
        } else {
            self.entries.get(&at)?
        };
        Some((at, kind))
    }
}

/// The parts of `path` to walk, last first (`.` dropped, `..` kept).
fn parts(path: &Path) -> Vec<OsString> {
    let mut out: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    out.reverse();
    out
}

impl ImageRoot for InLayers<'_> {
    fn exists(&self, path: &Path) -> bool {
        self.resolve(path, false).is_some()
    }

    fn read_text(&self, path: &Path) -> Option<String> {
        let (at, Kind::File) = self.resolve(path, true)? else {
            return None;
        };
        let data = self.image.file(at.to_str()?).ok().flatten()?;
        Some(String::from_utf8_lossy(&data).into_owned())
    }
}

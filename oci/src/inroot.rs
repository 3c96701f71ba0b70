//! Writing a layer's entries into a destination folder without ever
//! leaving it.
//!
//! Every path is resolved by libpathrs (`openat2` with `RESOLVE_IN_ROOT`
//! where the kernel has it, a checked userspace walk elsewhere): a symlink
//! the image made, absolute or full of `..`, resolves as it would inside
//! the container, never to the host. Names are created, replaced and
//! removed relative to a directory handle that was resolved that way, and
//! a trailing symlink is never followed. tar's own `unpack_in` checks a
//! path once and then writes through it by name, which is how a symlink
//! earlier in the same layer could point its writes outside.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use pathrs::error::ErrorKind;
use pathrs::flags::OpenFlags;
use pathrs::{InodeType, Root};

/// Whose files the unpacked tree holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owners {
    /// The unpacking user's: the layers' owners are not kept (a root that
    /// is packed into an image with every file owned by root).
    Unpacker,
    /// The owners the layers record (needs root).
    AsRecorded,
    /// The recorded owners moved into a user namespace's range on the
    /// host: id N inside is `base + N` outside; an id at or past `size` has
    /// no owner outside and the layer is refused.
    Shifted { base: u32, size: u32 },
}

impl Owners {
    /// The host id of an id recorded in a layer, or None to leave the owner.
    fn host_id(self, id: u64, what: &str) -> Result<Option<u32>, String> {
        let inside = u32::try_from(id).map_err(|_| format!("{what} {id} is out of range"))?;
        match self {
            Owners::Unpacker => Ok(None),
            Owners::AsRecorded => Ok(Some(inside)),
            Owners::Shifted { base, size } => {
                if inside >= size {
                    return Err(format!(
                        "{what} {inside} is outside the container's {size} ids"
                    ));
                }
                base.checked_add(inside)
                    .map(Some)
                    .ok_or_else(|| format!("{what} {inside} + {base} overflows"))
            }
        }
    }
}

/// What the tar header says about an entry's metadata.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
}

impl Meta {
    pub fn of(h: &tar::Header) -> Result<Self, String> {
        let field = |r: std::io::Result<u64>, what: &str| r.map_err(|e| format!("{what}: {e}"));
        Ok(Meta {
            mode: h.mode().map_err(|e| format!("mode: {e}"))? & 0o7777,
            uid: field(h.uid(), "uid")?,
            gid: field(h.gid(), "gid")?,
            mtime: field(h.mtime(), "mtime")?,
        })
    }
}

/// A destination folder, written only through in-root resolution.
pub(crate) struct Tree {
    root: Root,
    owners: Owners,
    /// Folders' modes and times, set once every layer is in: a mode
    /// without write permission must not stop the entries below it (when
    /// not root), and writing entries changes a folder's time.
    dirs: Vec<(PathBuf, Meta)>,
}

fn is_errno(e: &pathrs::error::Error, errno: i32) -> bool {
    e.kind() == ErrorKind::OsError(Some(errno))
}

fn msg(what: &str, rel: &Path, e: impl std::fmt::Display) -> String {
    format!("{what} /{}: {e}", rel.display())
}

fn cstr(name: &std::ffi::OsStr) -> Result<CString, String> {
    CString::new(name.as_bytes()).map_err(|_| format!("{name:?} holds a NUL byte"))
}

fn last_os(what: &str, rel: &Path) -> String {
    msg(what, rel, std::io::Error::last_os_error())
}

impl Tree {
    pub fn open(dest: &Path, owners: Owners) -> Result<Self, String> {
        let root = Root::open(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
        Ok(Tree {
            root,
            owners,
            dirs: Vec::new(),
        })
    }

    /// Remove `rel` whatever it is (a folder with everything in it); a
    /// path that is not there, or whose folder is not, is fine.
    pub fn remove(&self, rel: &Path) -> Result<(), String> {
        match self.root.remove_all(rel) {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ENOENT) || is_errno(&e, libc::ENOTDIR) => Ok(()),
            Err(e) => Err(msg("removing", rel, e)),
        }
    }

    /// Empty the folder `rel` (an opaque whiteout); nothing if it is not a
    /// folder.
    pub fn clear(&self, rel: &Path) -> Result<(), String> {
        // An opaque whiteout at the top of a layer empties the root.
        let at = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let handle = match self.root.resolve(at) {
            Ok(h) => h,
            Err(e) if is_errno(&e, libc::ENOENT) || is_errno(&e, libc::ENOTDIR) => return Ok(()),
            Err(e) => return Err(msg("opening", rel, e)),
        };
        let dir = match handle.reopen(OpenFlags::O_RDONLY | OpenFlags::O_DIRECTORY) {
            Ok(d) => d,
            Err(e) if is_errno(&e, libc::ENOTDIR) => return Ok(()),
            Err(e) => return Err(msg("opening", rel, e)),
        };
        let mut names = Vec::new();
        let mut listing = nix::dir::Dir::from_fd(std::os::fd::IntoRawFd::into_raw_fd(dir))
            .map_err(|e| msg("listing", rel, e))?;
        for entry in listing.iter() {
            let entry = entry.map_err(|e| msg("listing", rel, e))?;
            let name = std::ffi::OsStr::from_bytes(entry.file_name().to_bytes());
            if name != "." && name != ".." {
                names.push(rel.join(name));
            }
        }
        for child in names {
            self.remove(&child)?;
        }
        Ok(())
    }

    /// Whether `rel` is a folder (not following a final symlink).
    fn is_dir(&self, rel: &Path) -> bool {
        self.root
            .resolve_nofollow(rel)
            .ok()
            .and_then(|h| File::from(std::os::fd::OwnedFd::from(h)).metadata().ok())
            .is_some_and(|m| m.is_dir())
    }

    /// Make the folders above `rel` that a layer left out.
    fn parents(&self, rel: &Path) -> Result<(), String> {
        let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) else {
            return Ok(());
        };
        use std::os::unix::fs::PermissionsExt;
        self.root
            .mkdir_all(parent, &std::fs::Permissions::from_mode(0o755))
            .map(drop)
            .map_err(|e| msg("making the folder", parent, e))
    }

    /// A folder: merged with one already there, replacing anything else.
    pub fn dir(&mut self, rel: &Path, meta: Meta) -> Result<(), String> {
        self.parents(rel)?;
        if !self.is_dir(rel) {
            self.remove(rel)?;
            use std::os::unix::fs::PermissionsExt;
            self.root
                .create(
                    rel,
                    &InodeType::Directory(std::fs::Permissions::from_mode(0o755)),
                )
                .map_err(|e| msg("making the folder", rel, e))?;
        }
        let (uid, gid) = self.ids(meta)?;
        if uid.is_some() || gid.is_some() {
            self.at_parent(rel, |dir, name| {
                chown_at(dir, name, uid, gid).map_err(|()| last_os("chown", rel))
            })?;
        }
        self.dirs.push((rel.to_path_buf(), meta));
        Ok(())
    }

    fn ids(&self, meta: Meta) -> Result<(Option<u32>, Option<u32>), String> {
        Ok((
            self.owners.host_id(meta.uid, "uid")?,
            self.owners.host_id(meta.gid, "gid")?,
        ))
    }

    /// Run `f` with the folder above `rel` (resolved in the root) and the
    /// last name of `rel`.
    fn at_parent<T>(
        &self,
        rel: &Path,
        f: impl FnOnce(std::os::fd::BorrowedFd<'_>, &CString) -> Result<T, String>,
    ) -> Result<T, String> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        let name = cstr(
            rel.file_name()
                .ok_or_else(|| msg("naming", rel, "no name"))?,
        )?;
        let dir = self
            .root
            .resolve(if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            })
            .map_err(|e| msg("opening", parent, e))?;
        f(dir.as_fd(), &name)
    }

    /// A regular file with `data`, replacing whatever is at `rel`.
    pub fn file(&self, rel: &Path, meta: Meta, data: &mut dyn Read) -> Result<(), String> {
        self.parents(rel)?;
        self.remove(rel)?;
        use std::os::unix::fs::PermissionsExt;
        let mut f = self
            .root
            .create_file(
                rel,
                OpenFlags::O_WRONLY | OpenFlags::O_EXCL | OpenFlags::O_NOFOLLOW,
                &std::fs::Permissions::from_mode(0o600),
            )
            .map_err(|e| msg("creating", rel, e))?;
        std::io::copy(data, &mut f).map_err(|e| msg("writing", rel, e))?;
        let (uid, gid) = self.ids(meta)?;
        let fd = f.as_raw_fd();
        // SAFETY: fchown on a file this function opened and still holds,
        // with plain integer arguments.
        unsafe {
            if (uid.is_some() || gid.is_some())
                && libc::fchown(fd, uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX)) != 0
            {
                return Err(last_os("chown", rel));
            }
        }
        // After chown, which clears set-id bits.
        mode_and_time(&f, rel, meta)
    }

    /// A symlink to `target` (kept as written: it is only ever resolved
    /// inside a root), replacing whatever is at `rel`.
    pub fn symlink(&self, rel: &Path, target: &Path, meta: Meta) -> Result<(), String> {
        self.parents(rel)?;
        self.remove(rel)?;
        self.root
            .create(rel, &InodeType::Symlink(target.to_path_buf()))
            .map_err(|e| msg("making the symlink", rel, e))?;
        let (uid, gid) = self.ids(meta)?;
        self.at_parent(rel, |dir, name| {
            if uid.is_some() || gid.is_some() {
                chown_at(dir, name, uid, gid).map_err(|()| last_os("chown", rel))?;
            }
            // SAFETY: utimensat on a name under a directory fd this call
            // holds, not following the symlink, with a live times array.
            let r = unsafe {
                libc::utimensat(
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    times(meta.mtime).as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            if r != 0 {
                return Err(last_os("setting the time of", rel));
            }
            Ok(())
        })
    }

    /// A hard link to `target`, a path of the same tree (resolved in it;
    /// a symlink there is linked itself, never followed).
    pub fn hardlink(&self, rel: &Path, target: &Path) -> Result<(), String> {
        self.parents(rel)?;
        if rel == target {
            return Ok(());
        }
        self.remove(rel)?;
        self.root
            .create(rel, &InodeType::Hardlink(target.to_path_buf()))
            .map_err(|e| format!("linking /{} to /{}: {e}", rel.display(), target.display()))
    }

    /// Give the folders their modes and times, deepest first.
    pub fn finish(mut self) -> Result<(), String> {
        // A folder listed twice (merged by a later layer) takes the later
        // entry's metadata.
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.reverse();
        let mut seen = std::collections::HashSet::new();
        dirs.retain(|(rel, _)| seen.insert(rel.clone()));
        dirs.sort_by_key(|(rel, _)| std::cmp::Reverse(rel.components().count()));
        for (rel, meta) in dirs {
            let handle = match self.root.resolve_nofollow(&rel) {
                Ok(h) => h,
                // Removed or replaced by a later layer.
                Err(_) => continue,
            };
            let Ok(dir) = handle.reopen(OpenFlags::O_RDONLY | OpenFlags::O_DIRECTORY) else {
                continue;
            };
            mode_and_time(&dir, &rel, meta)?;
        }
        Ok(())
    }
}

/// Give the open file `f` (at `rel`) the layer's mode and time.
fn mode_and_time(f: &File, rel: &Path, meta: Meta) -> Result<(), String> {
    let fd = f.as_raw_fd();
    // SAFETY: fchmod and futimens on an fd the caller holds open, with an
    // integer mode and a live times array.
    unsafe {
        if libc::fchmod(fd, meta.mode) != 0 {
            return Err(last_os("chmod", rel));
        }
        if libc::futimens(fd, times(meta.mtime).as_ptr()) != 0 {
            return Err(last_os("setting the time of", rel));
        }
    }
    Ok(())
}

/// chown of `name` under `dir`, not following a symlink; None keeps that id.
fn chown_at(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &CString,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<(), ()> {
    // SAFETY: fchownat on a name under a live directory fd, with plain
    // integer arguments (-1, u32::MAX, keeps an id).
    let r = unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid.unwrap_or(u32::MAX),
            gid.unwrap_or(u32::MAX),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(())
    }
}

/// Access and modification time both set to `mtime` (seconds).
fn times(mtime: u64) -> [libc::timespec; 2] {
    let t = libc::timespec {
        // time_t is i64 on x86-64, glibc and musl alike (libc deprecates
        // naming it for musl's 32-bit history).
        tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    [t, t]
}

/// An unpacked root looked at as its container would see it: every path
/// resolved inside it, so that a symlink in the image (`/etc/passwd ->
/// /dev/zero`, `/bin -> /usr/bin`) means what it means in the container
/// and never a file of the host. For the host side that reads a root a
/// hostile image made.
#[derive(Debug)]
pub struct InRoot {
    root: Root,
}

impl InRoot {
    pub fn open(root: &Path) -> Result<Self, String> {
        let root = Root::open(root).map_err(|e| format!("{}: {e}", root.display()))?;
        Ok(InRoot { root })
    }

    /// Whether `path` is there (a dangling symlink counts: it is there).
    pub fn exists(&self, path: &Path) -> bool {
        self.root.resolve_nofollow(path).is_ok()
    }

    /// The contents of regular file `path`, at most `max` bytes of it;
    /// None if it is not there or not a regular file (a fifo or a device
    /// is never opened).
    pub fn read(&self, path: &Path, max: u64) -> Result<Option<Vec<u8>>, String> {
        let Ok(handle) = self.root.resolve(path) else {
            return Ok(None);
        };
        let meta = File::from(std::os::fd::OwnedFd::from(
            handle.try_clone().map_err(|e| msg("reading", path, e))?,
        ))
        .metadata()
        .map_err(|e| msg("reading", path, e))?;
        if !meta.is_file() {
            return Ok(None);
        }
        if meta.len() > max {
            return Err(msg("reading", path, format!("larger than {max} bytes")));
        }
        let f = handle
            .reopen(OpenFlags::O_RDONLY)
            .map_err(|e| msg("reading", path, e))?;
        let mut data = Vec::new();
        f.take(max)
            .read_to_end(&mut data)
            .map_err(|e| msg("reading", path, e))?;
        Ok(Some(data))
    }
}

//! What a flash target is, and the few block-device calls writing it
//! needs. The decisions made from these facts live in the parent module
//! and are unit-tested; these are tested for real on a loop device.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{io_err, FlashError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Block,
    /// A regular file, or none yet.
    File,
}

/// A target as found before writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: Kind,
    pub size: u64,
    /// (what, how): a partition mounted somewhere, a device held by
    /// device-mapper, a file backing a loop device, swap.
    pub in_use: Vec<(String, String)>,
    /// An MBR or GPT signature in the first two sectors.
    pub has_table: bool,
}

nix::ioctl_none!(blkflsbuf, 0x12, 97);
nix::ioctl_none!(blkrrpart, 0x12, 95);
nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);

/// An MBR boot signature or a GPT header in the first 1024 bytes.
pub fn has_table(first: &[u8]) -> bool {
    let mbr = first.get(510..512) == Some(&[0x55, 0xaa][..]);
    let gpt = first.get(512..520) == Some(&b"EFI PART"[..]);
    mbr || gpt
}

/// The mounts (from /proc/self/mountinfo) of any device in `devs`
/// ("major:minor", name).
pub fn mounted(mountinfo: &str, devs: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(dev), Some(at)) = (f.get(2), f.get(4)) else {
            continue;
        };
        if let Some((_, name)) = devs.iter().find(|(d, _)| d == dev) {
            out.push((format!("/dev/{name}"), format!("mounted at {at}")));
        }
    }
    out
}

fn read_sys(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The device and its partitions: ("major:minor", name, sysfs folder).
fn family(sys: &Path) -> Vec<(String, String, PathBuf)> {
    let name = sys
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = Vec::new();
    if let Some(dev) = read_sys(&sys.join("dev")) {
        out.push((dev, name, sys.to_path_buf()));
    }
    if let Ok(rd) = std::fs::read_dir(sys) {
        for e in rd.flatten() {
            let p = e.path();
            if p.join("partition").exists() {
                if let Some(dev) = read_sys(&p.join("dev")) {
                    out.push((dev, e.file_name().to_string_lossy().into_owned(), p));
                }
            }
        }
    }
    out
}

/// Loop devices whose backing file is `path`.
fn loop_users(path: &Path) -> Vec<(String, String)> {
    let Ok(me) = std::fs::canonicalize(path) else {
        return Vec::new();
    };
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let backing = read_sys(&e.path().join("loop/backing_file"))?;
            (Path::new(&backing) == me).then(|| {
                (
                    path.display().to_string(),
                    format!("backs /dev/{}", e.file_name().to_string_lossy()),
                )
            })
        })
        .collect()
}

/// Look at `path` without changing it.
pub fn probe(path: &Path) -> Result<Target, FlashError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Target {
                kind: Kind::File,
                size: 0,
                in_use: Vec::new(),
                has_table: false,
            })
        }
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut first = [0u8; 1024];
    let read_first = |first: &mut [u8; 1024]| -> Result<(), FlashError> {
        let f = File::open(path).map_err(io_err(path))?;
        let n = f.read_at(first, 0).map_err(io_err(path))?;
        first[n..].fill(0);
        Ok(())
    };
    if meta.file_type().is_block_device() {
        let rdev = meta.rdev();
        let (major, minor) = (libc::major(rdev), libc::minor(rdev));
        let sys = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}"))
            .map_err(io_err(path))?;
        let fam = family(&sys);
        let devs: Vec<(String, String)> =
            fam.iter().map(|(d, n, _)| (d.clone(), n.clone())).collect();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(io_err(Path::new("/proc/self/mountinfo")))?;
        let mut in_use = mounted(&mountinfo, &devs);
        for (_, name, dir) in &fam {
            if let Ok(rd) = std::fs::read_dir(dir.join("holders")) {
                for h in rd.flatten() {
                    in_use.push((
                        format!("/dev/{name}"),
                        format!("held by {}", h.file_name().to_string_lossy()),
                    ));
                }
            }
        }
        let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
        for (_, name, _) in &fam {
            let dev = format!("/dev/{name}");
            if swaps
                .lines()
                .skip(1)
                .any(|l| l.split_whitespace().next() == Some(&dev))
            {
                in_use.push((dev, "used as swap".into()));
            }
        }
        let size = read_sys(&sys.join("size"))
            .and_then(|s| s.parse::<u64>().ok())
            .map_or(0, |sectors| sectors * 512);
        read_first(&mut first)?;
        Ok(Target {
            kind: Kind::Block,
            size,
            in_use,
            has_table: has_table(&first),
        })
    } else if meta.file_type().is_file() {
        read_first(&mut first)?;
        Ok(Target {
            kind: Kind::File,
            size: meta.len(),
            in_use: loop_users(path),
            has_table: has_table(&first),
        })
    } else {
        Err(io_err(path)(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "neither a block device nor a regular file",
        )))
    }
}

/// Open the target for writing. A block device is opened exclusively: the
/// kernel refuses while anything mounts or holds it, closing the gap
/// between [`probe`] and the first write.
pub fn open(path: &Path, t: &Target) -> Result<File, FlashError> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    match t.kind {
        Kind::Block => {
            o.custom_flags(libc::O_EXCL);
        }
        Kind::File => {
            o.create(true).mode(0o644);
        }
    }
    o.open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            FlashError::InUse {
                target: path.to_path_buf(),
                what: path.display().to_string(),
                how: "the kernel refused exclusive access".into(),
            }
        } else {
            io_err(path)(e)
        }
    })
}

/// Make `len` bytes at `offset` read as zeroes without writing them where
/// the device can: a hole in a file, WRITE ZEROES on a device (the kernel
/// writes zero pages where the device has no such command).
pub fn zero(f: &File, t: &Target, offset: u64, len: u64) -> std::io::Result<()> {
    let fd = f.as_raw_fd();
    let r = match t.kind {
        Kind::Block => {
            let range = [offset, len];
            // SAFETY: `fd` is an open block device and `range` a live
            // [start, length] pair, as BLKZEROOUT reads it.
            unsafe { blkzeroout(fd, &range) }.map(drop)
        }
        Kind::File => nix::fcntl::fallocate(
            fd,
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            offset as i64,
            len as i64,
        ),
    };
    match r {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::ENOTTY) => {
            let zeros = vec![0u8; len as usize];
            f.write_all_at(&zeros, offset)
        }
        Err(e) => Err(e.into()),
    }
}

/// Drop the target's cached pages, so that reading it back reads the
/// device. The caller has synced it.
pub fn drop_cache(f: &File, t: &Target) -> std::io::Result<()> {
    let fd = f.as_raw_fd();
    match t.kind {
        // SAFETY: `fd` is an open block device; BLKFLSBUF takes no argument.
        Kind::Block => unsafe { blkflsbuf(fd) }.map(drop).map_err(Into::into),
        Kind::File => nix::fcntl::posix_fadvise(
            fd,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .map_err(Into::into),
    }
}

/// Ask the kernel to read the new partition table, so that the partitions'
/// device nodes appear; an error is reported, not fatal (a loop device
/// without partition scanning has none).
pub fn reread_partitions(f: &File) -> std::io::Result<()> {
    // SAFETY: `f` is an open block device; BLKRRPART takes no argument.
    unsafe { blkrrpart(f.as_raw_fd()) }
        .map(drop)
        .map_err(Into::into)
}

//! The EFI System Partition, written as a FAT image in memory with the
//! `fatfs` crate: no loop device, no mount, and every timestamp fixed so the
//! image is reproducible.

use std::io::{self, Cursor, Read, Write};

use fatfs::{Date, DateTime, FileSystem, FormatVolumeOptions, FsOptions, Time, TimeProvider};

#[derive(Debug, thiserror::Error)]
pub enum EspError {
    #[error("ESP: formatting a {size}-byte FAT volume: {source}")]
    Format { size: u64, source: io::Error },
    #[error("ESP: writing {path}: {source}")]
    Write { path: String, source: io::Error },
    #[error("ESP: reading {path}: {source}")]
    Read { path: String, source: io::Error },
}

/// Every file gets 1980-01-01 00:00, FAT's epoch.
#[derive(Debug)]
struct Epoch;

impl TimeProvider for Epoch {
    fn get_current_date(&self) -> Date {
        Date {
            year: 1980,
            month: 1,
            day: 1,
        }
    }
    fn get_current_date_time(&self) -> DateTime {
        DateTime {
            date: self.get_current_date(),
            time: Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

static EPOCH: Epoch = Epoch;

fn options() -> FsOptions {
    FsOptions::new()
        .time_provider(&EPOCH)
        .update_accessed_date(false)
}

/// Build a FAT volume of `size` bytes holding `files` (paths with `/`,
/// directories created as needed).
pub fn build(size: u64, volume_id: u32, files: &[(String, Vec<u8>)]) -> Result<Vec<u8>, EspError> {
    let len = usize::try_from(size).map_err(|_| EspError::Format {
        size,
        source: io::Error::new(io::ErrorKind::InvalidInput, "too large"),
    })?;
    let mut disk = Cursor::new(vec![0u8; len]);
    let fmt = FormatVolumeOptions::new()
        .volume_id(volume_id)
        .volume_label(*b"ESP        ");
    fatfs::format_volume(&mut disk, fmt).map_err(|source| EspError::Format { size, source })?;
    add_files(disk.into_inner(), files)
}

/// Add `files` to the FAT volume `image` (paths with `/`, directories
/// created as needed, files replaced).
pub fn add_files(image: Vec<u8>, files: &[(String, Vec<u8>)]) -> Result<Vec<u8>, EspError> {
    let size = image.len() as u64;
    let mut disk = Cursor::new(image);
    {
        let fs = FileSystem::new(&mut disk, options())
            .map_err(|source| EspError::Format { size, source })?;
        let root = fs.root_dir();
        for (path, data) in files {
            let werr = |source| EspError::Write {
                path: path.clone(),
                source,
            };
            let mut dir = root.clone();
            let mut parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
            let name = parts.pop().unwrap_or_default();
            for p in parts {
                dir = match dir.open_dir(p) {
                    Ok(d) => d,
                    Err(_) => dir.create_dir(p).map_err(werr)?,
                };
            }
            let mut f = dir.create_file(name).map_err(werr)?;
            f.truncate().map_err(werr)?;
            f.write_all(data).map_err(werr)?;
            f.flush().map_err(werr)?;
        }
        drop(root);
        fs.unmount()
            .map_err(|source| EspError::Format { size, source })?;
    }
    let mut image = disk.into_inner();
    fix_dot_entries(&mut image).map_err(|source| EspError::Format { size, source })?;
    Ok(image)
}

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes([b[at], b[at + 1]]) as usize
}

fn u32_at(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
}

const ENTRY: usize = 32;
const ATTR_LFN: u8 = 0x0f;
const ATTR_DIR: u8 = 0x10;
const ATTR_VOLUME: u8 = 0x08;

/// fatfs 0.3 writes long-name entries in front of every new directory's
/// "." and ".." (rafalh/rust-fatfs#117), where FAT requires "." and ".."
/// to be the directory's first two entries. Linux's vfat then corrupts such
/// a directory when it changes it (a renamed boot entry became unreadable
/// to the firmware after a power cut), so the entries are dropped here and
/// the rest moved up.
fn fix_dot_entries(img: &mut [u8]) -> io::Result<()> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    if img.len() < 512 {
        return Err(bad("FAT volume smaller than its boot sector"));
    }
    let bps = u16_at(img, 11);
    let spc = img[13] as usize;
    let reserved = u16_at(img, 14);
    let fats = img[16] as usize;
    let root_entries = u16_at(img, 17);
    let fat_size = match u16_at(img, 22) {
        0 => u32_at(img, 36),
        n => n,
    };
    let total = match u16_at(img, 19) {
        0 => u32_at(img, 32),
        n => n,
    };
    if bps == 0 || spc == 0 {
        return Err(bad("FAT boot sector has no geometry"));
    }
    let root_sectors = (root_entries * ENTRY).div_ceil(bps);
    let data_start = reserved + fats * fat_size + root_sectors;
    let clusters = (total - data_start) / spc;
    let fat32 = clusters >= 65525;
    if clusters < 4085 {
        return Err(bad("FAT12 volumes are not supported"));
    }
    let cluster_size = bps * spc;
    let fat_at = reserved * bps;
    let cluster_range = |c: usize| {
        let at = (data_start + (c - 2) * spc) * bps;
        at..at + cluster_size
    };
    let chain = |img: &[u8], mut c: usize| -> Vec<usize> {
        let mut out = Vec::new();
        while c >= 2 && c < clusters + 2 && out.len() <= clusters {
            out.push(c);
            c = if fat32 {
                u32_at(img, fat_at + c * 4) & 0x0fff_ffff
            } else {
                u16_at(img, fat_at + c * 2)
            };
        }
        out
    };
    let root: Vec<std::ops::Range<usize>> = if fat32 {
        chain(img, u32_at(img, 44))
            .into_iter()
            .map(cluster_range)
            .collect()
    } else {
        let at = (reserved + fats * fat_size) * bps;
        // One region: the fixed root directory of FAT16.
        std::iter::once(at..at + root_entries * ENTRY).collect()
    };
    let mut pending = vec![root];
    while let Some(ranges) = pending.pop() {
        let mut entries: Vec<[u8; ENTRY]> = Vec::new();
        for r in &ranges {
            for e in img[r.clone()].chunks_exact(ENTRY) {
                let mut a = [0u8; ENTRY];
                a.copy_from_slice(e);
                entries.push(a);
            }
        }
        let mut kept: Vec<[u8; ENTRY]> = Vec::new();
        let mut lfn: Vec<[u8; ENTRY]> = Vec::new();
        for e in entries.iter().take_while(|e| e[0] != 0) {
            let attr = e[11];
            if attr == ATTR_LFN {
                lfn.push(*e);
                continue;
            }
            let dot = &e[..11] == b".          " || &e[..11] == b"..         ";
            if !dot {
                kept.append(&mut lfn);
            }
            lfn.clear();
            kept.push(*e);
            let live = e[0] != 0xe5 && attr & ATTR_VOLUME == 0;
            if live && attr & ATTR_DIR != 0 && !dot {
                let first = u16_at(e, 26) | (u16_at(e, 20) << 16);
                let sub: Vec<_> = chain(img, first).into_iter().map(cluster_range).collect();
                pending.push(sub);
            }
        }
        kept.resize(entries.len(), [0u8; ENTRY]);
        let mut it = kept.iter();
        for r in &ranges {
            for slot in img[r.clone()].chunks_exact_mut(ENTRY) {
                if let Some(e) = it.next() {
                    slot.copy_from_slice(e);
                }
            }
        }
    }
    Ok(())
}

/// Names of the entries in directory `dir` of a FAT image (for tests and
/// `keel inspect`): what systemd-boot's boot counting renamed shows here.
pub fn list_dir<T: Read + Write + io::Seek>(image: T, dir: &str) -> Result<Vec<String>, EspError> {
    let rerr = |source| EspError::Read {
        path: dir.to_string(),
        source,
    };
    let fs = FileSystem::new(image, options()).map_err(rerr)?;
    let root = fs.root_dir();
    let d = if dir.trim_matches('/').is_empty() {
        root
    } else {
        root.open_dir(dir).map_err(rerr)?
    };
    let mut names = Vec::new();
    for e in d.iter() {
        let e = e.map_err(rerr)?;
        let name = e.file_name();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The contents of one file of a FAT image.
pub fn read_file<T: Read + Write + io::Seek>(image: T, path: &str) -> Result<Vec<u8>, EspError> {
    let rerr = |source| EspError::Read {
        path: path.to_string(),
        source,
    };
    let fs = FileSystem::new(image, options()).map_err(rerr)?;
    let mut f = fs.root_dir().open_file(path).map_err(rerr)?;
    let mut out = Vec::new();
    f.read_to_end(&mut out).map_err(rerr)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> Vec<(String, Vec<u8>)> {
        vec![
            ("EFI/BOOT/BOOTX64.EFI".into(), vec![0x4d; 3000]),
            ("loader/loader.conf".into(), b"timeout 0\n".to_vec()),
            ("EFI/Linux/keel-0.1.0+3.efi".into(), vec![1; 10_000]),
        ]
    }

    #[test]
    fn files_round_trip_with_long_names() {
        let img = build(48 << 20, 0x1234_5678, &files()).unwrap();
        assert_eq!(
            list_dir(Cursor::new(img.clone()), "EFI/Linux").unwrap(),
            ["keel-0.1.0+3.efi"]
        );
        assert_eq!(
            read_file(Cursor::new(img.clone()), "loader/loader.conf").unwrap(),
            b"timeout 0\n"
        );
        assert_eq!(
            read_file(Cursor::new(img), "EFI/BOOT/BOOTX64.EFI")
                .unwrap()
                .len(),
            3000
        );
    }

    /// fsck.fat (dosfstools) must find nothing to fix: Linux and the
    /// firmware both write to this volume later.
    #[test]
    fn fsck_finds_a_clean_volume() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("esp.img");
        std::fs::write(&p, build(48 << 20, 7, &files()).unwrap()).unwrap();
        let out = std::process::Command::new("fsck.fat")
            .arg("-n")
            .arg(&p)
            .output()
            .expect("fsck.fat (apt-get install dosfstools; cargo xtask deps does)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(!text.contains("Expected a valid"), "{text}");
    }

    #[test]
    fn reproducible() {
        assert_eq!(
            build(48 << 20, 7, &files()).unwrap(),
            build(48 << 20, 7, &files()).unwrap()
        );
    }
}

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
    disk.set_position(0);
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
    Ok(disk.into_inner())
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

    #[test]
    fn reproducible() {
        assert_eq!(
            build(48 << 20, 7, &files()).unwrap(),
            build(48 << 20, 7, &files()).unwrap()
        );
    }
}

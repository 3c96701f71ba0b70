//! The GPT disk image (DESIGN.md, "Disk layout"), written into a regular
//! file: partition contents first, the partition table last, then synced.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use gpt::disk::LogicalBlockSize;
use gpt::partition::Partition;
use gpt::partition_types::{OperatingSystem, Type};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use keel_formats::disk::{Role, SECTOR_SIZE};

const MIB: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: writing the partition table: {source}")]
    Gpt {
        path: PathBuf,
        source: gpt::GptError,
    },
    #[error("{path}: protective MBR: {source}")]
    Mbr {
        path: PathBuf,
        source: gpt::mbr::MBRError,
    },
    #[error("{what} is {size} bytes but partition {label} holds only {capacity}")]
    TooLarge {
        what: String,
        size: u64,
        label: &'static str,
        capacity: u64,
    },
    #[error("partition {0} must be at least 1 MiB")]
    TooSmall(&'static str),
    #[error("{path}: no partition labelled {label}")]
    NoSuchPartition { path: PathBuf, label: String },
}

/// What fills one partition.
#[derive(Debug)]
pub enum Content<'a> {
    Empty,
    Bytes(&'a [u8]),
    File(&'a Path),
}

/// One partition of the layout, in GPT entry order.
#[derive(Debug)]
pub struct PartSpec<'a> {
    pub role: Role,
    pub size_mib: u64,
    pub content: Content<'a>,
}

/// Where a partition ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub label: String,
    pub type_guid: String,
    pub offset: u64,
    pub size: u64,
}

/// A GUID that depends only on `seed` and `what`, in the RFC 4122 variant
/// with version 4 bits, so that two builds of the same inputs agree.
pub fn stable_guid(seed: &str, what: &str) -> Uuid {
    let h = Sha256::digest(format!("keel-guid\0{seed}\0{what}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Uuid::from_bytes(b)
}

/// Copy `from` into `f` at `offset`, seeking over blocks of zeroes so the
/// image stays sparse (the file is already zero-filled by `set_len`).
fn write_sparse(f: &mut File, offset: u64, from: &mut impl Read) -> io::Result<()> {
    const CHUNK: usize = 64 * 1024;
    let mut buf = vec![0u8; CHUNK];
    let mut at = offset;
    loop {
        let mut filled = 0;
        while filled < CHUNK {
            match from.read(&mut buf[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            return Ok(());
        }
        if buf[..filled].iter().any(|&b| b != 0) {
            f.seek(SeekFrom::Start(at))?;
            f.write_all(&buf[..filled])?;
        }
        at += filled as u64;
    }
}

/// Write the disk image at `path`. `seed` makes the disk and partition
/// GUIDs (name and version of the image).
pub fn write(path: &Path, seed: &str, parts: &[PartSpec<'_>]) -> Result<Vec<Placed>, DiskError> {
    let io_err = |source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut offset = MIB;
    let mut placed = Vec::new();
    for p in parts {
        if p.size_mib == 0 {
            return Err(DiskError::TooSmall(p.role.label()));
        }
        let size = p.size_mib * MIB;
        placed.push(Placed {
            label: p.role.label().to_string(),
            type_guid: p.role.type_guid().to_string(),
            offset,
            size,
        });
        offset += size;
    }
    // One MiB at the end keeps the backup table clear of the last partition.
    let total = offset + MIB;

    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_err)?;
    f.set_len(total).map_err(io_err)?;

    for (p, at) in parts.iter().zip(&placed) {
        let capacity = at.size;
        let check = |what: String, size: u64| {
            if size > capacity {
                Err(DiskError::TooLarge {
                    what,
                    size,
                    label: p.role.label(),
                    capacity,
                })
            } else {
                Ok(())
            }
        };
        match &p.content {
            Content::Empty => {}
            Content::Bytes(b) => {
                check(format!("{} image", p.role.label()), b.len() as u64)?;
                write_sparse(&mut f, at.offset, &mut &b[..]).map_err(io_err)?;
            }
            Content::File(src) => {
                let src_err = |source| DiskError::Io {
                    path: src.to_path_buf(),
                    source,
                };
                let mut s = File::open(src).map_err(src_err)?;
                let len = s.metadata().map_err(src_err)?.len();
                check(src.display().to_string(), len)?;
                write_sparse(&mut f, at.offset, &mut s).map_err(src_err)?;
            }
        }
    }

    let mut parts_out = Vec::new();
    for (p, at) in parts.iter().zip(&placed) {
        let type_guid = Uuid::parse_str(p.role.type_guid()).map_err(|e| DiskError::Io {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })?;
        parts_out.push(LayoutPart {
            label: p.role.label().to_string(),
            type_guid,
            part_guid: stable_guid(seed, p.role.label()),
            offset: at.offset,
            size: at.size,
        });
    }
    write_table(
        &f,
        path,
        &Layout {
            disk_guid: stable_guid(seed, "disk"),
            size: total,
            parts: parts_out,
        },
    )?;
    f.sync_all().map_err(io_err)?;
    Ok(placed)
}

/// A GPT disk as keel writes it: every GUID, so that `keel flash` can write
/// the same table onto a larger target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub disk_guid: Uuid,
    /// Bytes of the whole disk.
    pub size: u64,
    /// In GPT entry order.
    pub parts: Vec<LayoutPart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutPart {
    pub label: String,
    pub type_guid: Uuid,
    pub part_guid: Uuid,
    pub offset: u64,
    pub size: u64,
}

/// Write a protective MBR and the primary and backup GPT of `layout` to
/// `f` (of `layout.size` bytes at least; the backup goes at its end).
pub fn write_table(f: &File, path: &Path, layout: &Layout) -> Result<(), DiskError> {
    let mut dev = f;
    let last_lba = layout.size / SECTOR_SIZE - 1;
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(last_lba).unwrap_or(u32::MAX));
    mbr.overwrite_lba0(&mut dev)
        .map_err(|source| DiskError::Mbr {
            path: path.to_path_buf(),
            source,
        })?;
    let gpt_err = |source| DiskError::Gpt {
        path: path.to_path_buf(),
        source,
    };
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .change_partition_count(true)
        .create_from_device(dev, Some(layout.disk_guid))
        .map_err(gpt_err)?;
    let mut table = BTreeMap::new();
    for (i, p) in layout.parts.iter().enumerate() {
        let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
        table.insert(
            n,
            Partition {
                part_type_guid: Type {
                    guid: p.type_guid,
                    os: OperatingSystem::None,
                },
                part_guid: p.part_guid,
                first_lba: p.offset / SECTOR_SIZE,
                last_lba: (p.offset + p.size) / SECTOR_SIZE - 1,
                flags: 0,
                name: p.label.clone(),
            },
        );
    }
    disk.update_partitions(table).map_err(gpt_err)?;
    disk.write().map_err(gpt_err)?;
    Ok(())
}

/// The layout of the disk image at `path`.
pub fn read_layout(path: &Path) -> Result<Layout, DiskError> {
    let f = File::open(path).map_err(|source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_layout_from(&f, path)
}

/// The layout of the disk open as `f` (`path` names it in errors).
pub fn read_layout_from(f: &File, path: &Path) -> Result<Layout, DiskError> {
    let io_err = |source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut dev = f;
    let size = dev.seek(SeekFrom::End(0)).map_err(io_err)?;
    let disk = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(LogicalBlockSize::Lb512)
        .open_from_device(dev)
        .map_err(|source| DiskError::Gpt {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(Layout {
        disk_guid: *disk.guid(),
        size,
        parts: disk
            .partitions()
            .values()
            .map(|p| LayoutPart {
                label: p.name.clone(),
                type_guid: p.part_type_guid.guid,
                part_guid: p.part_guid,
                offset: p.first_lba * SECTOR_SIZE,
                size: (p.last_lba + 1 - p.first_lba) * SECTOR_SIZE,
            })
            .collect(),
    })
}

/// Read the partition table of a disk image.
pub fn read_table(path: &Path) -> Result<Vec<Placed>, DiskError> {
    let gpt_err = |source| DiskError::Gpt {
        path: path.to_path_buf(),
        source,
    };
    let disk = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(LogicalBlockSize::Lb512)
        .open(path)
        .map_err(gpt_err)?;
    Ok(disk
        .partitions()
        .values()
        .map(|p| Placed {
            label: p.name.clone(),
            type_guid: p.part_type_guid.guid.to_string().to_uppercase(),
            offset: p.first_lba * SECTOR_SIZE,
            size: (p.last_lba + 1 - p.first_lba) * SECTOR_SIZE,
        })
        .collect())
}

/// Read the whole partition `label` of the disk image at `path`.
pub fn read_partition(path: &Path, label: &str) -> Result<Vec<u8>, DiskError> {
    let table = read_table(path)?;
    let p = table
        .iter()
        .find(|p| p.label == label)
        .ok_or_else(|| DiskError::NoSuchPartition {
            path: path.to_path_buf(),
            label: label.to_string(),
        })?;
    let io_err = |source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(io_err)?;
    f.seek(SeekFrom::Start(p.offset)).map_err(io_err)?;
    let mut buf = vec![0u8; usize::try_from(p.size).unwrap_or(usize::MAX)];
    f.read_exact(&mut buf).map_err(io_err)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_formats::disk::Slot;

    #[test]
    fn layout_round_trips_through_the_gpt_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let root = vec![0x5au8; 4096 * 3];
        let parts: Vec<PartSpec> = Role::LAYOUT
            .iter()
            .map(|&role| PartSpec {
                role,
                size_mib: 2,
                content: if role == Role::Root(Slot::A) {
                    Content::Bytes(&root)
                } else {
                    Content::Empty
                },
            })
            .collect();
        let placed = write(&path, "keel 0.1.0", &parts).unwrap();
        let table = read_table(&path).unwrap();
        assert_eq!(table, placed);
        let labels: Vec<_> = table.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "esp",
                "keel-root-a",
                "keel-verity-a",
                "keel-root-b",
                "keel-verity-b",
                "keel-data"
            ]
        );
        assert_eq!(table[0].offset, MIB);
        assert_eq!(table[1].type_guid, keel_formats::disk::TYPE_ROOT_X86_64);
        let got = read_partition(&path, "keel-root-a").unwrap();
        assert_eq!(&got[..root.len()], &root[..]);
        assert!(got[root.len()..].iter().all(|&b| b == 0));

        // Zeroes are not written: the image stays sparse.
        let allocated =
            std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&path).unwrap()) * 512;
        assert!(
            allocated < MIB,
            "{allocated} bytes allocated for a mostly empty disk"
        );

        // Same inputs, same bytes.
        let again = dir.path().join("again.img");
        write(&again, "keel 0.1.0", &parts).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(&again).unwrap()
        );
    }

    #[test]
    fn content_larger_than_its_partition_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![0u8; (MIB + 1) as usize];
        let parts = [PartSpec {
            role: Role::Esp,
            size_mib: 1,
            content: Content::Bytes(&big),
        }];
        let err = write(&dir.path().join("d.img"), "s", &parts).unwrap_err();
        assert!(
            matches!(err, DiskError::TooLarge { label: "esp", .. }),
            "{err}"
        );
    }

    #[test]
    fn guids_are_stable_and_distinct() {
        assert_eq!(stable_guid("a", "disk"), stable_guid("a", "disk"));
        assert_ne!(stable_guid("a", "disk"), stable_guid("b", "disk"));
        assert_eq!(stable_guid("a", "disk").get_version_num(), 4);
    }
}

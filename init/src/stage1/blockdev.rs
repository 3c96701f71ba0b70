//! Finding partitions by their GPT name, from sysfs: no udev and no
//! /dev/disk/by-partlabel in an initramfs.

use std::path::Path;

/// A block device found in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDev {
    pub name: String,
    pub major: u32,
    pub minor: u32,
}

/// Read `PARTNAME`, `MAJOR`, `MINOR` and `DEVNAME` from a uevent file.
pub fn parse_uevent(text: &str) -> (Option<String>, Option<BlockDev>) {
    let mut partname = None;
    let (mut major, mut minor, mut devname) = (None, None, None);
    for line in text.lines() {
        match line.split_once('=') {
            Some(("PARTNAME", v)) => partname = Some(v.to_string()),
            Some(("MAJOR", v)) => major = v.parse().ok(),
            Some(("MINOR", v)) => minor = v.parse().ok(),
            Some(("DEVNAME", v)) => devname = Some(v.to_string()),
            _ => {}
        }
    }
    let dev = match (devname, major, minor) {
        (Some(name), Some(major), Some(minor)) => Some(BlockDev { name, major, minor }),
        _ => None,
    };
    (partname, dev)
}

/// The partition whose GPT name is `label`, among the block devices under
/// `sys_class_block` (normally `/sys/class/block`).
pub fn find_by_label(sys_class_block: &Path, label: &str) -> std::io::Result<Option<BlockDev>> {
    let mut entries: Vec<_> = std::fs::read_dir(sys_class_block)?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let Ok(text) = std::fs::read_to_string(e.path().join("uevent")) else {
            continue;
        };
        if let (Some(name), Some(dev)) = parse_uevent(&text) {
            if name == label {
                return Ok(Some(dev));
            }
        }
    }
    Ok(None)
}

/// Mount the ESP (found by its GPT name) at `target`: vfat, nothing on it
/// executable or readable but by root. Stage 1 reads a recovery key from
/// it, PID 1 renames boot entries on it.
pub fn mount_esp(target: &Path) -> Result<(), String> {
    use keel_formats::disk::ESP_LABEL;
    use nix::mount::MsFlags;
    let dev = find_by_label(Path::new("/sys/class/block"), ESP_LABEL)
        .map_err(|e| format!("/sys/class/block: {e}"))?
        .ok_or_else(|| format!("no partition labelled {ESP_LABEL}"))?;
    crate::sys::mount(
        Some(&format!("/dev/{}", dev.name)),
        target,
        Some("vfat"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("umask=0077"),
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_partition_by_gpt_name() {
        let dir = tempfile::tempdir().unwrap();
        for (dev, n, label) in [
            ("vda1", 1, "esp"),
            ("vda2", 2, "keel-root-a"),
            ("vda3", 3, "keel-verity-a"),
        ] {
            std::fs::create_dir(dir.path().join(dev)).unwrap();
            std::fs::write(
                dir.path().join(dev).join("uevent"),
                format!("MAJOR=254\nMINOR={n}\nDEVNAME={dev}\nDEVTYPE=partition\nPARTN={n}\nPARTNAME={label}\n"),
            )
            .unwrap();
        }
        std::fs::create_dir(dir.path().join("vda")).unwrap();
        std::fs::write(
            dir.path().join("vda/uevent"),
            "MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n",
        )
        .unwrap();
        let got = find_by_label(dir.path(), "keel-root-a").unwrap().unwrap();
        assert_eq!(
            got,
            BlockDev {
                name: "vda2".into(),
                major: 254,
                minor: 2
            }
        );
        assert_eq!(find_by_label(dir.path(), "keel-root-b").unwrap(), None);
    }
}

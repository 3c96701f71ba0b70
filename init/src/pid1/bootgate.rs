//! The boot health gate's hands: the ESP mounted at `/efi`, partitions
//! named under `/dev/disk/by-partlabel` (for the update container), and the
//! renames that bless the booted entry or mark it bad (systemd-boot's boot
//! counting: `keel-V+LEFT-DONE.efi` → `keel-V.efi` or `keel-V+0-DONE.efi`).

use std::path::{Path, PathBuf};

use keel_formats::bootentry::{EntryName, ENTRIES_DIR, ESP_MOUNT};

use crate::stage1::blockdev::parse_uevent;
use crate::sys;

pub use keel_formats::disk::BY_PARTLABEL;

/// Link every named partition as `/dev/disk/by-partlabel/NAME`, as udev
/// would, so that container definitions can name devices portably.
pub fn link_partitions() -> Result<(), String> {
    sys::mkdir_p(Path::new(BY_PARTLABEL), 0o755).map_err(|e| e.to_string())?;
    let dir =
        std::fs::read_dir("/sys/class/block").map_err(|e| format!("/sys/class/block: {e}"))?;
    for e in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path().join("uevent")) else {
            continue;
        };
        if let (Some(label), Some(dev)) = parse_uevent(&text) {
            let link = Path::new(BY_PARTLABEL).join(&label);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(format!("../../{}", dev.name), &link)
                .map_err(|err| format!("{}: {err}", link.display()))?;
        }
    }
    Ok(())
}

/// Mount the ESP read-write at `/efi`: the updater installs entries there
/// and the health gate renames them.
pub fn mount_esp() -> Result<(), String> {
    crate::stage1::blockdev::mount_esp(Path::new(ESP_MOUNT))
}

fn entries_dir() -> PathBuf {
    Path::new(ESP_MOUNT).join(ENTRIES_DIR)
}

/// The booted entry: the one whose command line has the running root hash.
fn booted_entry(dir: &Path, root_hash: &str) -> Result<Option<(String, EntryName)>, String> {
    keel_formats::bootentry::find_by_root_hash(dir, root_hash)
        .map_err(|e| format!("{}: {e}", dir.display()))
}

/// Rename an entry with [`keel_formats::bootentry::rename_synced`].
fn rename(dir: &Path, from: &str, to: &EntryName) -> Result<(), String> {
    keel_formats::bootentry::rename_synced(dir, &dir.join(from), &to.file_name())
        .map_err(|(p, e)| format!("{}: {e}", p.display()))
}

/// What the gate did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The entry was on trial; now it is kept.
    Blessed { from: String, to: String },
    /// The entry was on trial and failed: it goes last in the boot order.
    MarkedBad { from: String, to: String },
    /// The entry was not on trial (already blessed): nothing to do.
    Settled(String),
}

/// Healthy: drop the booted entry's boot counter. Unhealthy: give it no
/// tries left, if it was on trial. `root_hash` identifies it.
pub fn decide(healthy: bool, root_hash: &str) -> Result<Verdict, String> {
    decide_in(&entries_dir(), healthy, root_hash)
}

fn decide_in(dir: &Path, healthy: bool, root_hash: &str) -> Result<Verdict, String> {
    let (file, name) = booted_entry(dir, root_hash)?
        .ok_or_else(|| format!("no entry in {} has root hash {root_hash}", dir.display()))?;
    if name.tries_left.is_none() {
        return Ok(Verdict::Settled(file));
    }
    let to = if healthy { name.blessed() } else { name.bad() };
    rename(dir, &file, &to)?;
    let to = to.file_name();
    Ok(if healthy {
        Verdict::Blessed { from: file, to }
    } else {
        Verdict::MarkedBad { from: file, to }
    })
}

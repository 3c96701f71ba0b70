//! The GPT layout of a keel disk (see DESIGN.md, "Disk layout").
//!
//! Type GUIDs come from the Discoverable Partitions Specification so that
//! generic tools (systemd-dissect, fdisk) recognise every partition.

use std::fmt;
use std::str::FromStr;

/// EFI System Partition.
pub const TYPE_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// Root partition, x86-64.
pub const TYPE_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
/// Root verity partition, x86-64.
pub const TYPE_ROOT_VERITY_X86_64: &str = "2C7357ED-EBD2-46D9-AEC9-23D8D62B25E1";
/// `/var` partition.
pub const TYPE_VAR: &str = "4D21B016-B534-45C2-A9FB-5C16E091FD2D";

/// Logical block size keel writes and expects.
pub const SECTOR_SIZE: u64 = 512;

/// dm-verity data and hash block size.
pub const VERITY_BLOCK_SIZE: u64 = 4096;

/// Bytes of a dm-verity hash image (superblock, then the tree, as
/// veritysetup and the builder write it) over `data_blocks` blocks; none
/// for no blocks.
pub fn verity_image_len(data_blocks: u64) -> Option<u64> {
    let per_block = VERITY_BLOCK_SIZE / 32;
    let mut total = VERITY_BLOCK_SIZE;
    let mut n = data_blocks;
    if n == 0 {
        return None;
    }
    // One data block is its own root: no tree at all.
    while n > 1 {
        n = n.div_ceil(per_block);
        total = total.checked_add(n.checked_mul(VERITY_BLOCK_SIZE)?)?;
    }
    Some(total)
}

/// One of the two A/B slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// GPT partition name of this slot's root filesystem.
    pub fn root_label(self) -> &'static str {
        match self {
            Slot::A => "keel-root-a",
            Slot::B => "keel-root-b",
        }
    }

    /// GPT partition name of this slot's dm-verity hash tree.
    pub fn verity_label(self) -> &'static str {
        match self {
            Slot::A => "keel-verity-a",
            Slot::B => "keel-verity-b",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown slot {0:?}: expected \"a\" or \"b\"")]
pub struct UnknownSlot(pub String);

impl FromStr for Slot {
    type Err = UnknownSlot;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "a" | "A" => Ok(Slot::A),
            "b" | "B" => Ok(Slot::B),
            other => Err(UnknownSlot(other.to_string())),
        }
    }
}

/// GPT partition name of the EFI System Partition.
pub const ESP_LABEL: &str = "esp";
/// GPT partition name of the persistent data partition mounted at `/var`.
pub const DATA_LABEL: &str = "keel-data";

/// What a partition of the keel layout is for, in on-disk order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Esp,
    Root(Slot),
    Verity(Slot),
    Data,
}

impl Role {
    /// The partitions of a keel disk, in GPT entry order (entry 1 first).
    pub const LAYOUT: [Role; 6] = [
        Role::Esp,
        Role::Root(Slot::A),
        Role::Verity(Slot::A),
        Role::Root(Slot::B),
        Role::Verity(Slot::B),
        Role::Data,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Role::Esp => ESP_LABEL,
            Role::Root(s) => s.root_label(),
            Role::Verity(s) => s.verity_label(),
            Role::Data => DATA_LABEL,
        }
    }

    pub fn type_guid(self) -> &'static str {
        match self {
            Role::Esp => TYPE_ESP,
            Role::Root(_) => TYPE_ROOT_X86_64,
            Role::Verity(_) => TYPE_ROOT_VERITY_X86_64,
            Role::Data => TYPE_VAR,
        }
    }
}

/// Name of the UKI file for `version` with `tries` boot attempts left,
/// following systemd-boot's boot counting scheme.
pub fn uki_file_name(version: &str, tries: Option<u32>) -> String {
    match tries {
        Some(n) => format!("keel-{version}+{n}.efi"),
        None => format!("keel-{version}.efi"),
    }
}

/// Where keel-init links every named partition (`NAME` → its device), as
/// udev would, and where keel-update finds the slots.
pub const BY_PARTLABEL: &str = "/dev/disk/by-partlabel";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_slots_pair_up() {
        let labels: std::collections::HashSet<_> = Role::LAYOUT.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), Role::LAYOUT.len());
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!("b".parse::<Slot>().unwrap(), Slot::B);
        assert!("c".parse::<Slot>().is_err());
    }

    #[test]
    fn uki_names_follow_boot_counting() {
        assert_eq!(uki_file_name("0.1.0", Some(3)), "keel-0.1.0+3.efi");
        assert_eq!(uki_file_name("0.1.0", None), "keel-0.1.0.efi");
    }
}

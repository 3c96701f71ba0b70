//! The kernel command line keys through which a UKI tells `keel-init` how
//! to verify its root filesystem.
//!
//! A UKI does not name its slot: the same signed UKI serves whichever slot
//! an update writes it to. Stage 1 finds the slot whose hash tree has this
//! root hash ([`VerityParams::is_top_block`]). `keel.slot=` may still force
//! a slot, for debugging.
//!
//! The command line is inside the signed UKI, so these values are as
//! trustworthy as the UKI itself: the root hash vouches for every block of
//! the root filesystem.

use std::fmt::Write as _;

use crate::disk::{Slot, UnknownSlot};

pub const KEY_SLOT: &str = "keel.slot";
pub const KEY_ROOT_HASH: &str = "keel.roothash";
pub const KEY_SALT: &str = "keel.verity_salt";
pub const KEY_DATA_BLOCKS: &str = "keel.verity_blocks";

/// dm-verity parameters of one root filesystem (sha256, 4 KiB blocks,
/// format version 1, hash tree after a superblock in its own partition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityParams {
    /// Number of 4 KiB data blocks covered by the tree.
    pub data_blocks: u64,
    pub salt: Vec<u8>,
    pub root_hash: [u8; 32],
}

/// What `keel-init` needs from the command line to bring up a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    /// A slot forced by hand; normally absent.
    pub slot: Option<Slot>,
    pub verity: VerityParams,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error("kernel command line lacks {0}=")]
    Missing(&'static str),
    #[error("kernel command line: {key}={value:?} is not valid hex")]
    BadHex { key: &'static str, value: String },
    #[error("kernel command line: {key}={value:?} must be {expected} bytes of hex")]
    BadLength {
        key: &'static str,
        value: String,
        expected: usize,
    },
    #[error("kernel command line: {key}={value:?} is not a number")]
    BadNumber { key: &'static str, value: String },
    #[error("kernel command line: {0}")]
    Slot(#[from] UnknownSlot),
}

impl BootParams {
    /// The `key=value` words to put on the command line.
    pub fn render(&self) -> String {
        let slot = self
            .slot
            .map(|s| format!("{KEY_SLOT}={s} "))
            .unwrap_or_default();
        format!(
            "{slot}{KEY_ROOT_HASH}={} {KEY_SALT}={} {KEY_DATA_BLOCKS}={}",
            to_hex(&self.verity.root_hash),
            to_hex(&self.verity.salt),
            self.verity.data_blocks
        )
    }

    /// Parse the keel keys out of a whole kernel command line, ignoring the
    /// words that belong to the kernel or to nobody.
    pub fn parse(cmdline: &str) -> Result<Self, CmdlineError> {
        let find = |key: &'static str| -> Result<&str, CmdlineError> {
            cmdline
                .split_ascii_whitespace()
                .filter_map(|w| w.split_once('='))
                .filter(|(k, _)| *k == key)
                .map(|(_, v)| v)
                .next_back()
                .ok_or(CmdlineError::Missing(key))
        };
        let slot = match find(KEY_SLOT) {
            Ok(s) => Some(s.parse()?),
            Err(_) => None,
        };
        let root_hex = find(KEY_ROOT_HASH)?;
        let root = from_hex(KEY_ROOT_HASH, root_hex)?;
        let root_hash: [u8; 32] = root.try_into().map_err(|_| CmdlineError::BadLength {
            key: KEY_ROOT_HASH,
            value: root_hex.to_string(),
            expected: 32,
        })?;
        let salt = from_hex(KEY_SALT, find(KEY_SALT)?)?;
        let blocks = find(KEY_DATA_BLOCKS)?;
        let data_blocks = blocks.parse().map_err(|_| CmdlineError::BadNumber {
            key: KEY_DATA_BLOCKS,
            value: blocks.to_string(),
        })?;
        Ok(BootParams {
            slot,
            verity: VerityParams {
                data_blocks,
                salt,
                root_hash,
            },
        })
    }
}

impl VerityParams {
    /// Whether `block`, the first hash block after the superblock in a
    /// verity partition (the top of the tree), hashes to this root hash:
    /// then that partition holds this root's tree.
    pub fn is_top_block(&self, block: &[u8]) -> bool {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(&self.salt);
        h.update(block);
        // A one-block root has no tree to find; keel images are larger.
        self.data_blocks > 1 && h.finalize().as_slice() == self.root_hash
    }
}

/// Byte offset of the top hash block in a verity partition.
pub const TOP_BLOCK_OFFSET: u64 = crate::disk::VERITY_BLOCK_SIZE;

pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn from_hex(key: &'static str, value: &str) -> Result<Vec<u8>, CmdlineError> {
    let bad = || CmdlineError::BadHex {
        key,
        value: value.to_string(),
    };
    if !value.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..value.len())
        .step_by(2)
        .map(|i| {
            value
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(bad)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BootParams {
        BootParams {
            slot: Some(Slot::B),
            verity: VerityParams {
                data_blocks: 777,
                salt: vec![0xab; 32],
                root_hash: [0x5a; 32],
            },
        }
    }

    #[test]
    fn round_trips_inside_a_real_command_line() {
        let line = format!("console=ttyS0 panic=5 {} quiet\n", sample().render());
        assert_eq!(BootParams::parse(&line).unwrap(), sample());
    }

    #[test]
    fn names_the_missing_or_bad_key() {
        assert_eq!(
            BootParams::parse("console=ttyS0"),
            Err(CmdlineError::Missing(KEY_ROOT_HASH))
        );
        let no_slot = sample().render().replace("keel.slot=b ", "");
        assert_eq!(BootParams::parse(&no_slot).unwrap().slot, None);
        let bad = sample()
            .render()
            .replace("keel.roothash=5a", "keel.roothash=zz");
        assert!(matches!(
            BootParams::parse(&bad),
            Err(CmdlineError::BadHex {
                key: KEY_ROOT_HASH,
                ..
            })
        ));
        let short = sample().render().replace(&"5a".repeat(32), "5a5a");
        assert!(matches!(
            BootParams::parse(&short),
            Err(CmdlineError::BadLength {
                key: KEY_ROOT_HASH,
                ..
            })
        ));
        let slot = sample().render().replace("keel.slot=b", "keel.slot=q");
        assert!(matches!(
            BootParams::parse(&slot),
            Err(CmdlineError::Slot(_))
        ));
    }
}

//! The A/B partitions, by GPT name, and which slot is running.
//!
//! keel-init links every partition as `/dev/disk/by-partlabel/NAME`; the
//! update container gets the ones it writes. Tests point [`Partitions`] at
//! a folder of plain files, which the same code reads and writes.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use keel_formats::cmdline::{to_hex, VerityParams, TOP_BLOCK_OFFSET};
use keel_formats::disk::{Slot, VERITY_BLOCK_SIZE};

use crate::error::{io_err, UpdateError};

pub use keel_formats::disk::BY_PARTLABEL;

#[derive(Debug, Clone)]
pub struct Partitions {
    pub dir: PathBuf,
}

impl Partitions {
    pub fn path(&self, label: &str) -> PathBuf {
        self.dir.join(label)
    }

    /// Bytes a partition holds.
    pub fn size(&self, label: &str) -> Result<u64, UpdateError> {
        let p = self.path(label);
        let mut f = File::open(&p).map_err(io_err(&p))?;
        f.seek(SeekFrom::End(0)).map_err(io_err(&p))
    }

    /// Whether `slot`'s verity partition holds the tree of `verity`.
    pub fn slot_holds(&self, slot: Slot, verity: &VerityParams) -> bool {
        let p = self.path(slot.verity_label());
        let mut top = vec![0u8; VERITY_BLOCK_SIZE as usize];
        File::open(&p)
            .and_then(|f| f.read_exact_at(&mut top, TOP_BLOCK_OFFSET))
            .is_ok_and(|()| verity.is_top_block(&top))
    }

    /// The slot the running root came from (stage 1 chose it the same way).
    pub fn booted_slot(&self, verity: &VerityParams) -> Result<Slot, UpdateError> {
        [Slot::A, Slot::B]
            .into_iter()
            .find(|s| self.slot_holds(*s, verity))
            .ok_or_else(|| UpdateError::NoBootedSlot(to_hex(&verity.root_hash)))
    }
}

/// Drop a file's cached pages, so that the next read comes from the
/// device: a read-back check must see what the disk holds.
pub fn drop_cache(f: &File, path: &Path) -> Result<(), UpdateError> {
    nix::fcntl::posix_fadvise(
        std::os::fd::AsRawFd::as_raw_fd(f),
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .map_err(|e| io_err(path)(e.into()))
}

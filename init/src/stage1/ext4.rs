//! Growing the data filesystem to fill its partition. `keel flash` makes
//! the data partition reach the end of the disk, but the ext4 inside is the
//! size the image was built with; stage 1 grows it online, right after
//! mounting it, so that `/var` gets the whole disk on first boot.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

const MAGIC: u16 = 0xef53;
const INCOMPAT_64BIT: u32 = 0x80;

nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);

/// (blocks, block size) of an ext4 superblock (the 1024 bytes at offset
/// 1024 of the device); None if it is not one.
pub fn geometry(sb: &[u8]) -> Option<(u64, u64)> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(sb.get(at..)?.get(..4)?.try_into().ok()?))
    };
    let magic = u16::from_le_bytes(sb.get(0x38..0x3a)?.try_into().ok()?);
    if magic != MAGIC {
        return None;
    }
    let log = u32_at(0x18)?;
    if log > 6 {
        return None;
    }
    let block = 1024u64 << log;
    let mut blocks = u64::from(u32_at(0x04)?);
    if u32_at(0x60)? & INCOMPAT_64BIT != 0 {
        blocks |= u64::from(u32_at(0x150)?) << 32;
    }
    Some((blocks, block))
}

/// The size in bytes of a partition of `sectors` 512-byte sectors (as
/// sysfs gives it).
pub fn sectors_to_bytes(sectors: u64) -> Result<u64, String> {
    sectors
        .checked_mul(512)
        .ok_or_else(|| format!("partition size of {sectors} sectors is too large"))
}

/// Grow the ext4 on `dev` (of `dev_size` bytes), mounted at `mountpoint`,
/// to fill the device. Returns (old, new) size in bytes if it grew.
pub fn grow(dev: &Path, dev_size: u64, mountpoint: &Path) -> Result<Option<(u64, u64)>, String> {
    let f = std::fs::File::open(dev).map_err(|e| format!("{}: {e}", dev.display()))?;
    let mut sb = [0u8; 1024];
    f.read_exact_at(&mut sb, 1024)
        .map_err(|e| format!("{}: {e}", dev.display()))?;
    let (blocks, block) =
        geometry(&sb).ok_or_else(|| format!("{}: no ext4 superblock", dev.display()))?;
    let want = dev_size
        .checked_div(block)
        .ok_or_else(|| format!("{}: ext4 block size is 0", dev.display()))?;
    // Less than a MiB to gain is not worth a resize.
    if want.saturating_sub(blocks).saturating_mul(block) < 1 << 20 {
        return Ok(None);
    }
    let dir =
        std::fs::File::open(mountpoint).map_err(|e| format!("{}: {e}", mountpoint.display()))?;
    // SAFETY: `dir` is open on the mounted ext4 and `want` a live u64, the
    // new block count that EXT4_IOC_RESIZE_FS reads.
    unsafe { ext4_resize_fs(dir.as_raw_fd(), &want) }
        .map_err(|e| format!("growing the filesystem on {}: {e}", dev.display()))?;
    // Both are at most dev_size: blocks < want <= dev_size / block.
    Ok(Some((
        blocks.saturating_mul(block),
        want.saturating_mul(block),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_size_past_u64_bytes_is_refused() {
        assert_eq!(sectors_to_bytes(8), Ok(4096));
        let e = sectors_to_bytes(u64::MAX / 256).unwrap_err();
        assert!(e.contains(&format!("{} sectors", u64::MAX / 256)), "{e}");
    }

    #[test]
    fn reads_the_size_of_an_ext4_superblock() {
        let mut sb = vec![0u8; 1024];
        assert_eq!(geometry(&sb), None, "no magic");
        sb[0x38..0x3a].copy_from_slice(&MAGIC.to_le_bytes());
        sb[0x04..0x08].copy_from_slice(&65536u32.to_le_bytes());
        sb[0x18..0x1c].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(geometry(&sb), Some((65536, 1024)));
        sb[0x18..0x1c].copy_from_slice(&2u32.to_le_bytes());
        sb[0x60..0x64].copy_from_slice(&INCOMPAT_64BIT.to_le_bytes());
        sb[0x150..0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(geometry(&sb), Some(((1 << 32) + 65536, 4096)));
    }
}

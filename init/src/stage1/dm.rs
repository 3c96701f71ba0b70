//! Device-mapper through its ioctl interface (linux/dm-ioctl.h), enough to
//! create a read-only dm-verity device and the dm-crypt device of an
//! encrypted `/var` without any userspace tool.

use std::fs::File;
use std::os::fd::AsRawFd;

use keel_formats::cmdline::{to_hex, VerityParams};
use keel_formats::disk::VERITY_BLOCK_SIZE;

const DM_IOCTL_SIZE: usize = 312;
const TARGET_SPEC_SIZE: usize = 40;
const DM_NAME_LEN: usize = 128;
const DM_READONLY_FLAG: u32 = 1;
/// Room for what the kernel writes back.
const BUFFER_SIZE: usize = 16 * 1024;

const DM_DEV_CREATE: u8 = 3;
const DM_DEV_SUSPEND: u8 = 6;
const DM_TABLE_LOAD: u8 = 9;
const DM_DEV_REMOVE: u8 = 4;

#[derive(Debug, thiserror::Error)]
pub enum DmError {
    #[error("/dev/mapper/control: {0}")]
    Control(std::io::Error),
    #[error("device-mapper {op} {name}: {source}")]
    Ioctl {
        op: &'static str,
        name: String,
        source: std::io::Error,
    },
    #[error("device-mapper name {0:?} is too long")]
    Name(String),
    #[error("verity data_blocks {0} is too large for a device-mapper table")]
    DataBlocks(u64),
}

/// `_IOWR(0xfd, nr, struct dm_ioctl)`.
fn request(nr: u8) -> u64 {
    (3u64 << 30) | ((DM_IOCTL_SIZE as u64) << 16) | (0xfdu64 << 8) | u64::from(nr)
}

/// The verity target's table line: `<version> <data dev> <hash dev>
/// <data block size> <hash block size> <data blocks> <hash start block>
/// <algorithm> <root hash> <salt>`. The hash tree starts after the
/// superblock, at block 1.
pub fn verity_table(data_dev: (u32, u32), hash_dev: (u32, u32), p: &VerityParams) -> String {
    format!(
        "1 {}:{} {}:{} {bs} {bs} {} 1 sha256 {} {}",
        data_dev.0,
        data_dev.1,
        hash_dev.0,
        hash_dev.1,
        p.data_blocks,
        to_hex(&p.root_hash),
        if p.salt.is_empty() {
            "-".to_string()
        } else {
            to_hex(&p.salt)
        },
        bs = VERITY_BLOCK_SIZE
    )
}

/// A `struct dm_ioctl` for device `name`, with `targets` (start sector,
/// length in sectors, target type, parameters) appended.
pub fn ioctl_buffer(
    name: &str,
    flags: u32,
    targets: &[(u64, u64, &str, &str)],
) -> Result<Vec<u8>, DmError> {
    if name.len() >= DM_NAME_LEN {
        return Err(DmError::Name(name.to_string()));
    }
    let mut b = vec![0u8; BUFFER_SIZE];
    b[0..4].copy_from_slice(&4u32.to_ne_bytes()); // interface version 4.0.0
    b[12..16].copy_from_slice(&(BUFFER_SIZE as u32).to_ne_bytes());
    b[16..20].copy_from_slice(&(DM_IOCTL_SIZE as u32).to_ne_bytes());
    b[20..24].copy_from_slice(&(targets.len() as u32).to_ne_bytes());
    b[28..32].copy_from_slice(&flags.to_ne_bytes());
    b[48..][..name.len()].copy_from_slice(name.as_bytes());
    let mut at = DM_IOCTL_SIZE;
    for (start, len, kind, params) in targets {
        let too_large = || DmError::Name(format!("table for {name} is too large"));
        let spec_len = TARGET_SPEC_SIZE
            .checked_add(params.len())
            .and_then(|n| n.checked_add(1))
            .and_then(|n| n.checked_next_multiple_of(8))
            .ok_or_else(too_large)?;
        let end = at.checked_add(spec_len).ok_or_else(too_large)?;
        if end > BUFFER_SIZE || kind.len() >= 16 {
            return Err(too_large());
        }
        // The spec is at least TARGET_SPEC_SIZE + params + NUL long, and
        // `kind` is shorter than its 16-byte field at 24.
        let spec = &mut b[at..end];
        spec[0..8].copy_from_slice(&start.to_ne_bytes());
        spec[8..16].copy_from_slice(&len.to_ne_bytes());
        spec[20..24].copy_from_slice(&(spec_len as u32).to_ne_bytes()); // next
        spec[24..][..kind.len()].copy_from_slice(kind.as_bytes());
        spec[TARGET_SPEC_SIZE..][..params.len()].copy_from_slice(params.as_bytes());
        at = end;
    }
    Ok(b)
}

/// The length of the verity target in 512-byte sectors.
fn verity_sectors(p: &VerityParams) -> Result<u64, DmError> {
    p.data_blocks
        .checked_mul(VERITY_BLOCK_SIZE / 512)
        .ok_or(DmError::DataBlocks(p.data_blocks))
}

fn ioctl(ctl: &File, op: &'static str, nr: u8, buf: &mut [u8], name: &str) -> Result<(), DmError> {
    // SAFETY: `buf` is a live, writable buffer of BUFFER_SIZE bytes whose
    // header says so (data_size); the kernel reads and writes within it.
    let r = unsafe { libc::ioctl(ctl.as_raw_fd(), request(nr) as _, buf.as_mut_ptr()) };
    if r < 0 {
        return Err(DmError::Ioctl {
            op,
            name: name.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Create the read-only verity device `name` and return its (major, minor).
pub fn create_verity(
    name: &str,
    data_dev: (u32, u32),
    hash_dev: (u32, u32),
    p: &VerityParams,
) -> Result<(u32, u32), DmError> {
    let sectors = verity_sectors(p)?;
    let table = verity_table(data_dev, hash_dev, p);
    create(name, DM_READONLY_FLAG, sectors, "verity", &table)
}

/// The crypt target's table line: AES-XTS with `key`, over `dev` from
/// sector `offset` on.
pub fn crypt_table(dev: (u32, u32), key: &[u8], offset: u64) -> String {
    format!(
        "{} {} 0 {}:{} {offset}",
        keel_formats::varcrypt::CIPHER,
        to_hex(key),
        dev.0,
        dev.1
    )
}

/// Create the read-write dm-crypt device `name` of `sectors` over `dev`
/// from sector `offset`, and return its (major, minor).
pub fn create_crypt(
    name: &str,
    dev: (u32, u32),
    key: &[u8],
    offset: u64,
    sectors: u64,
) -> Result<(u32, u32), DmError> {
    create(name, 0, sectors, "crypt", &crypt_table(dev, key, offset))
}

/// Remove device `name` (one whose filesystem did not mount, say).
pub fn remove(name: &str) -> Result<(), DmError> {
    let ctl = control()?;
    let mut remove = ioctl_buffer(name, 0, &[])?;
    ioctl(&ctl, "remove", DM_DEV_REMOVE, &mut remove, name)
}

fn control() -> Result<File, DmError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")
        .map_err(DmError::Control)
}

/// Create device `name` with one target of `sectors` and return its
/// (major, minor).
fn create(
    name: &str,
    flags: u32,
    sectors: u64,
    kind: &str,
    table: &str,
) -> Result<(u32, u32), DmError> {
    let ctl = control()?;
    let mut create = ioctl_buffer(name, 0, &[])?;
    ioctl(&ctl, "create", DM_DEV_CREATE, &mut create, name)?;
    let dev = u64::from_ne_bytes(create[40..48].try_into().unwrap_or([0; 8]));
    let result = ioctl_buffer(name, flags, &[(0, sectors, kind, table)]).and_then(|mut load| {
        let loaded = ioctl(&ctl, "load table", DM_TABLE_LOAD, &mut load, name);
        // The table of a crypt target holds its key: this copy is cleared
        // once the kernel has it (the caller's key buffers are its own).
        load.fill(0);
        loaded?;
        // DM_DEV_SUSPEND without the suspend flag resumes: the table goes live.
        let mut resume = ioctl_buffer(name, 0, &[])?;
        ioctl(&ctl, "resume", DM_DEV_SUSPEND, &mut resume, name)
    });
    if let Err(e) = result {
        // Leave no half-made device behind.
        if let Ok(mut remove) = ioctl_buffer(name, 0, &[]) {
            let _ = ioctl(&ctl, "remove", DM_DEV_REMOVE, &mut remove, name);
        }
        return Err(e);
    }
    Ok((libc::major(dev), libc::minor(dev)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_dm_ioctl_h() {
        // Values from the kernel headers: DM_DEV_CREATE = 0xc138fd03.
        assert_eq!(request(DM_DEV_CREATE), 0xc138_fd03);
        assert_eq!(request(DM_TABLE_LOAD), 0xc138_fd09);
        assert_eq!(request(DM_DEV_SUSPEND), 0xc138_fd06);
    }

    #[test]
    fn buffer_layout() {
        let b = ioctl_buffer("keel-root", DM_READONLY_FLAG, &[(0, 80, "verity", "1 2 3")]).unwrap();
        assert_eq!(&b[48..57], b"keel-root");
        assert_eq!(u32::from_ne_bytes(b[20..24].try_into().unwrap()), 1);
        assert_eq!(u32::from_ne_bytes(b[28..32].try_into().unwrap()), 1);
        assert_eq!(u64::from_ne_bytes(b[320..328].try_into().unwrap()), 80);
        assert_eq!(&b[336..342], b"verity");
        assert_eq!(&b[352..358], b"1 2 3\0");
        assert_eq!(u32::from_ne_bytes(b[332..336].try_into().unwrap()), 48);
    }

    #[test]
    fn sectors_of_too_many_data_blocks_are_refused() {
        let mut p = VerityParams {
            data_blocks: 10,
            salt: vec![],
            root_hash: [1; 32],
        };
        assert_eq!(verity_sectors(&p).unwrap(), 80);
        p.data_blocks = u64::MAX / 4;
        let e = verity_sectors(&p).unwrap_err().to_string();
        assert!(
            e.contains("data_blocks") && e.contains(&p.data_blocks.to_string()),
            "{e}"
        );
    }

    #[test]
    fn crypt_table_line() {
        assert_eq!(
            crypt_table((259, 7), &[0xab, 0x01], 2048),
            "aes-xts-plain64 ab01 0 259:7 2048"
        );
    }

    #[test]
    fn table_line() {
        let p = VerityParams {
            data_blocks: 10,
            salt: vec![0xab],
            root_hash: [1; 32],
        };
        let t = verity_table((254, 2), (254, 3), &p);
        assert_eq!(
            t,
            format!("1 254:2 254:3 4096 4096 10 1 sha256 {} ab", "01".repeat(32))
        );
    }
}

//! Enrolling keys into an OVMF variable store file, rootless and without
//! booting: the firmware volume's authenticated variable store gets PK,
//! KEK and db written as OVMF itself stores them once enrolled.
//!
//! Written by hand because no crate writes edk2's variable store; the
//! layout is edk2's `VariableFormat.h` (`VARIABLE_STORE_HEADER`,
//! `AUTHENTICATED_VARIABLE_HEADER`), which `virt-fw-vars` writes too.

use keel_formats::efi::{Guid, SECURE_BOOT_ATTRIBUTES};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VarsError {
    #[error("not an OVMF variable store: {0}")]
    NotAStore(&'static str),
    #[error("the variable store already holds {0}: start from OVMF's empty template")]
    Exists(String),
    #[error("the variable store is full: {needed} bytes needed, {free} free")]
    Full { needed: usize, free: usize },
}

/// `gEfiAuthenticatedVariableGuid`: the store holds time-authenticated
/// variables, which Secure Boot's need.
const AUTHENTICATED_STORE: Guid = Guid::new(
    0xaaf32c78,
    0x947b,
    0x439a,
    [0xa1, 0x80, 0x2e, 0x14, 0x4e, 0xc3, 0x77, 0x92],
);
const FV_SIGNATURE: &[u8; 4] = b"_FVH";
const STORE_HEADER: usize = 28;
const VAR_HEADER: usize = 60;
const START_ID: u16 = 0x55aa;
/// `VAR_ADDED`: a whole, live variable.
const VAR_ADDED: u8 = 0x3f;
const STORE_FORMATTED: u8 = 0x5a;
const STORE_HEALTHY: u8 = 0xfe;

/// One variable to write.
#[derive(Debug, Clone)]
pub struct Variable<'a> {
    pub name: &'a str,
    pub vendor: Guid,
    pub attributes: u32,
    pub data: &'a [u8],
}

impl<'a> Variable<'a> {
    /// A Secure Boot key variable (PK, KEK, db) holding `list`.
    pub fn key(v: keel_formats::efi::KeyVariable, list: &'a [u8]) -> Variable<'a> {
        Variable {
            name: v.name(),
            vendor: v.vendor(),
            attributes: SECURE_BOOT_ATTRIBUTES,
            data: list,
        }
    }
}

fn header_align(n: usize) -> usize {
    (n + 3) & !3
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn utf16z(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(u16::to_le_bytes)
        .collect()
}

/// Where the variable store starts and ends in `image`.
fn store_bounds(image: &[u8]) -> Result<(usize, usize), VarsError> {
    if image.len() < 0x48 || &image[0x28..0x2c] != FV_SIGNATURE {
        return Err(VarsError::NotAStore("no firmware volume header"));
    }
    let start = usize::from(u16_at(image, 0x30));
    let header_end = start
        .checked_add(STORE_HEADER)
        .filter(|e| *e <= image.len())
        .ok_or(VarsError::NotAStore(
            "firmware volume header runs past the file",
        ))?;
    let h = &image[start..header_end];
    if h[..16] != AUTHENTICATED_STORE.0 {
        return Err(VarsError::NotAStore(
            "the store is not an authenticated variable store",
        ));
    }
    if h[20] != STORE_FORMATTED || h[21] != STORE_HEALTHY {
        return Err(VarsError::NotAStore(
            "the store is not formatted and healthy",
        ));
    }
    let end = start
        .checked_add(u32_at(h, 16) as usize)
        .filter(|e| *e <= image.len())
        .ok_or(VarsError::NotAStore("the store's size runs past the file"))?;
    Ok((header_end, end))
}

/// The variables already in the store (name, state) and where free space
/// begins.
fn walk(image: &[u8], mut at: usize, end: usize) -> Result<(Vec<(String, u8)>, usize), VarsError> {
    let mut found = Vec::new();
    loop {
        at = header_align(at);
        if at + VAR_HEADER > end || u16_at(image, at) != START_ID {
            return Ok((found, at));
        }
        let state = image[at + 2];
        let name_size = u32_at(image, at + 36) as usize;
        let data_size = u32_at(image, at + 40) as usize;
        let name_end = (at + VAR_HEADER)
            .checked_add(name_size)
            .filter(|e| *e <= end)
            .ok_or(VarsError::NotAStore(
                "a variable's name runs past the store",
            ))?;
        let next = name_end
            .checked_add(data_size)
            .filter(|e| *e <= end)
            .ok_or(VarsError::NotAStore(
                "a variable's data runs past the store",
            ))?;
        let units: Vec<u16> = image[at + VAR_HEADER..name_end]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        found.push((String::from_utf16_lossy(&units), state));
        at = next;
    }
}

/// `template` (OVMF's `OVMF_VARS_4M.fd`) with `vars` added. A store that
/// already holds one of them is refused rather than given a second copy.
pub fn enroll(template: &[u8], vars: &[Variable<'_>]) -> Result<Vec<u8>, VarsError> {
    let (first, end) = store_bounds(template)?;
    let (existing, mut at) = walk(template, first, end)?;
    for v in vars {
        if existing
            .iter()
            .any(|(name, state)| name == v.name && *state == VAR_ADDED)
        {
            return Err(VarsError::Exists(v.name.to_string()));
        }
    }
    let mut image = template.to_vec();
    for v in vars {
        let name = utf16z(v.name);
        let size = VAR_HEADER + name.len() + v.data.len();
        let free = end.saturating_sub(at);
        if size > free {
            return Err(VarsError::Full { needed: size, free });
        }
        let mut h = Vec::with_capacity(VAR_HEADER);
        h.extend_from_slice(&START_ID.to_le_bytes());
        h.push(VAR_ADDED);
        h.push(0);
        h.extend_from_slice(&v.attributes.to_le_bytes());
        // Monotonic count, then an all-zero EFI_TIME: any later signed
        // update (a db append, a rotation) carries a newer time.
        h.extend_from_slice(&0u64.to_le_bytes());
        h.extend_from_slice(&[0u8; 16]);
        h.extend_from_slice(&0u32.to_le_bytes());
        // Sizes fit u32: the store itself is smaller than 4 GiB.
        h.extend_from_slice(&(name.len() as u32).to_le_bytes());
        h.extend_from_slice(&(v.data.len() as u32).to_le_bytes());
        h.extend_from_slice(&v.vendor.0);
        image[at..at + VAR_HEADER].copy_from_slice(&h);
        let name_at = at + VAR_HEADER;
        image[name_at..name_at + name.len()].copy_from_slice(&name);
        let data_at = name_at + name.len();
        image[data_at..data_at + v.data.len()].copy_from_slice(v.data);
        at = header_align(data_at + v.data.len());
    }
    Ok(image)
}

/// The names of the live variables in a store, for tests and `keel
/// inspect`.
pub fn names(image: &[u8]) -> Result<Vec<String>, VarsError> {
    let (first, end) = store_bounds(image)?;
    let (found, _) = walk(image, first, end)?;
    Ok(found
        .into_iter()
        .filter(|(_, s)| *s == VAR_ADDED)
        .map(|(n, _)| n)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_formats::efi::KeyVariable;

    /// The shape of OVMF's empty 4M store, small.
    fn template() -> Vec<u8> {
        let mut t = vec![0xffu8; 0x2000];
        t[..0x48].fill(0);
        t[0x28..0x2c].copy_from_slice(FV_SIGNATURE);
        t[0x30..0x32].copy_from_slice(&0x48u16.to_le_bytes());
        t[0x48..0x58].copy_from_slice(&AUTHENTICATED_STORE.0);
        t[0x58..0x5c].copy_from_slice(&0x1000u32.to_le_bytes());
        t[0x5c] = STORE_FORMATTED;
        t[0x5d] = STORE_HEALTHY;
        t[0x5e..0x64].fill(0);
        t
    }

    #[test]
    fn keys_are_written_as_authenticated_variables_in_order() {
        let lists: Vec<Vec<u8>> = (1..=3u8).map(|i| vec![i; 45]).collect();
        let vars: Vec<Variable> = KeyVariable::ALL
            .iter()
            .zip(&lists)
            .map(|(k, l)| Variable::key(*k, l))
            .collect();
        let img = enroll(&template(), &vars).unwrap();
        assert_eq!(names(&img).unwrap(), ["PK", "KEK", "db"]);
        // The first variable sits right after the store header.
        assert_eq!(u16_at(&img, 0x64), START_ID);
        assert_eq!(u32_at(&img, 0x64 + 4), SECURE_BOOT_ATTRIBUTES);
        // "PK\0" in UTF-16, then the data.
        assert_eq!(u32_at(&img, 0x64 + 36), 6);
        assert_eq!(&img[0x64 + 60..0x64 + 66], b"P\0K\0\0\0");
        assert_eq!(&img[0x64 + 66..0x64 + 66 + 45], &[1u8; 45][..]);
        // The next header is 4-byte aligned.
        let next = header_align(0x64 + 66 + 45);
        assert_eq!(u16_at(&img, next), START_ID);
        assert_eq!(&img[next + 44..next + 60], &KeyVariable::Kek.vendor().0);
        // Enrolling twice is refused.
        assert_eq!(
            enroll(&img, &vars[2..]).unwrap_err(),
            VarsError::Exists("db".into())
        );
    }

    #[test]
    fn bad_templates_and_full_stores_are_errors() {
        assert!(matches!(
            enroll(&[0u8; 10], &[]),
            Err(VarsError::NotAStore(_))
        ));
        let mut t = template();
        t[0x48] ^= 1;
        assert!(matches!(enroll(&t, &[]), Err(VarsError::NotAStore(_))));
        let mut t = template();
        t[0x58..0x5c].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(enroll(&t, &[]), Err(VarsError::NotAStore(_))));
        let big = vec![0u8; 0x1000];
        let v = Variable::key(KeyVariable::Db, &big);
        assert!(matches!(
            enroll(&template(), &[v]),
            Err(VarsError::Full { .. })
        ));
        // A variable whose sizes run past the store.
        let mut t = template();
        t[0x64..0x66].copy_from_slice(&START_ID.to_le_bytes());
        t[0x64 + 36..0x64 + 40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(names(&t), Err(VarsError::NotAStore(_))));
    }
}

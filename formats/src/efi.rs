//! UEFI formats keel writes and reads: GUIDs in the byte order firmware
//! stores them in, and signature lists (`EFI_SIGNATURE_LIST`, the data of
//! the Secure Boot variables PK, KEK and db).
//!
//! The builder writes them into OVMF's variable store and into the auth
//! files a user enrolls; a host reads them back from efivarfs.

use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EfiError {
    #[error("{0:?} is not a GUID (8-4-4-4-12 hex digits)")]
    Guid(String),
    #[error("signature list at byte {offset}: {reason}")]
    SignatureList { offset: usize, reason: &'static str },
    #[error("a certificate of {0} bytes does not fit a signature list")]
    TooLarge(usize),
}

/// A GUID as firmware stores it: the first three fields little-endian.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    pub const fn new(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Guid {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }

    /// `8be4df61-93ca-11d2-aa0d-00e098032b8c`, any case.
    pub fn parse(s: &str) -> Result<Guid, EfiError> {
        let bad = || EfiError::Guid(s.to_string());
        let parts: Vec<&str> = s.trim().split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if parts.len() != 5 || parts.iter().zip(lens).any(|(p, n)| p.len() != n) {
            return Err(bad());
        }
        let hex_all = hex::decode(parts.concat()).map_err(|_| bad())?;
        let mut d4 = [0u8; 8];
        d4.copy_from_slice(&hex_all[8..16]);
        let d1 = u32::from_be_bytes([hex_all[0], hex_all[1], hex_all[2], hex_all[3]]);
        let d2 = u16::from_be_bytes([hex_all[4], hex_all[5]]);
        let d3 = u16::from_be_bytes([hex_all[6], hex_all[7]]);
        Ok(Guid::new(d1, d2, d3, d4))
    }

    /// A random (version 4) GUID from 16 random bytes.
    pub fn from_random(mut bytes: [u8; 16]) -> Guid {
        // Version and variant bits sit in d3's high nibble and d4[0].
        bytes[7] = (bytes[7] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Guid(bytes)
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{}-{}",
            b[3],
            b[2],
            b[1],
            b[0],
            b[5],
            b[4],
            b[7],
            b[6],
            hex::encode(&b[8..10]),
            hex::encode(&b[10..16])
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The vendor of PK and KEK (and of SecureBoot, SetupMode).
pub const GLOBAL_VARIABLE: Guid = Guid::new(
    0x8be4df61,
    0x93ca,
    0x11d2,
    [0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c],
);
/// The vendor of db and dbx.
pub const IMAGE_SECURITY_DATABASE: Guid = Guid::new(
    0xd719b2cb,
    0x3d3a,
    0x4596,
    [0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f],
);
/// A signature list entry that is a DER X.509 certificate.
pub const CERT_X509: Guid = Guid::new(
    0xa5c059a1,
    0x94e4,
    0x4aa7,
    [0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72],
);

/// Where efivarfs is mounted (read-only, by keel-init's stage 1).
pub const EFIVARS: &str = "/sys/firmware/efi/efivars";

/// The efivarfs file name of a variable.
pub fn efivar_file(name: &str, vendor: Guid) -> String {
    format!("{name}-{vendor}")
}

/// A one-byte boolean variable (SecureBoot, SetupMode) as efivarfs gives
/// it: 4 attribute bytes, then the value. None: not that shape.
pub fn bool_variable(file: &[u8]) -> Option<bool> {
    match file {
        [_, _, _, _, v] => Some(*v == 1),
        _ => None,
    }
}

/// Variable attributes.
pub const NON_VOLATILE: u32 = 0x01;
pub const BOOTSERVICE_ACCESS: u32 = 0x02;
pub const RUNTIME_ACCESS: u32 = 0x04;
pub const TIME_BASED_AUTHENTICATED_WRITE_ACCESS: u32 = 0x20;
/// What PK, KEK and db are stored with.
pub const SECURE_BOOT_ATTRIBUTES: u32 =
    NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS | TIME_BASED_AUTHENTICATED_WRITE_ACCESS;

/// A Secure Boot key variable: its name and vendor GUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyVariable {
    Pk,
    Kek,
    Db,
}

impl KeyVariable {
    pub const ALL: [KeyVariable; 3] = [KeyVariable::Pk, KeyVariable::Kek, KeyVariable::Db];

    /// The variable's name, which is also the stem of keel's files for it
    /// (`PK.crt`, `db.auth`), as systemd-boot names them under
    /// `loader/keys/`.
    pub fn name(self) -> &'static str {
        match self {
            KeyVariable::Pk => "PK",
            KeyVariable::Kek => "KEK",
            KeyVariable::Db => "db",
        }
    }

    pub fn vendor(self) -> Guid {
        match self {
            KeyVariable::Pk | KeyVariable::Kek => GLOBAL_VARIABLE,
            KeyVariable::Db => IMAGE_SECURITY_DATABASE,
        }
    }
}

/// One entry of a signature list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub kind: Guid,
    pub owner: Guid,
    pub data: Vec<u8>,
}

const LIST_HEADER: usize = 28;

/// A signature list holding one X.509 certificate (DER) owned by `owner`.
pub fn x509_signature_list(owner: Guid, der: &[u8]) -> Result<Vec<u8>, EfiError> {
    let size = der
        .len()
        .checked_add(16)
        .and_then(|s| u32::try_from(s).ok())
        .ok_or(EfiError::TooLarge(der.len()))?;
    let list_size = size
        .checked_add(LIST_HEADER as u32)
        .ok_or(EfiError::TooLarge(der.len()))?;
    let mut out = Vec::with_capacity(list_size as usize);
    out.extend_from_slice(&CERT_X509.0);
    out.extend_from_slice(&list_size.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&owner.0);
    out.extend_from_slice(der);
    Ok(out)
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn guid_at(b: &[u8], at: usize) -> Guid {
    let mut g = [0u8; 16];
    g.copy_from_slice(&b[at..at + 16]);
    Guid(g)
}

/// Every entry of the signature lists in `data` (a variable's content,
/// as efivarfs gives it after its 4 attribute bytes).
pub fn parse_signature_lists(data: &[u8]) -> Result<Vec<Signature>, EfiError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let bad = |reason| EfiError::SignatureList { offset: at, reason };
        let rest = &data[at..];
        if rest.len() < LIST_HEADER {
            return Err(bad("shorter than a list header"));
        }
        let kind = guid_at(rest, 0);
        let list_size = le32(rest, 16) as usize;
        let header_size = le32(rest, 20) as usize;
        let sig_size = le32(rest, 24) as usize;
        if list_size > rest.len() || list_size < LIST_HEADER {
            return Err(bad("list size past the data"));
        }
        let body_start = LIST_HEADER
            .checked_add(header_size)
            .filter(|s| *s <= list_size)
            .ok_or_else(|| bad("header size past the list"))?;
        if sig_size < 16 || !(list_size - body_start).is_multiple_of(sig_size) {
            return Err(bad("entries do not fill the list"));
        }
        let mut e = body_start;
        while e < list_size {
            out.push(Signature {
                kind,
                owner: guid_at(rest, e),
                data: rest[e + 16..e + sig_size].to_vec(),
            });
            e += sig_size;
        }
        at += list_size;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_print_as_they_parse_and_store_mixed_endian() {
        let s = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
        let g = Guid::parse(s).unwrap();
        assert_eq!(g, GLOBAL_VARIABLE);
        assert_eq!(g.to_string(), s);
        assert_eq!(&g.0[..4], &[0x61, 0xdf, 0xe4, 0x8b]);
        assert_eq!(
            Guid::parse("D719B2CB-3D3A-4596-A3BC-DAD00E67656F").unwrap(),
            IMAGE_SECURITY_DATABASE
        );
        for bad in [
            "",
            "8be4df61-93ca-11d2-aa0d",
            "8be4df6g-93ca-11d2-aa0d-00e098032b8c",
        ] {
            assert_eq!(Guid::parse(bad), Err(EfiError::Guid(bad.into())));
        }
        let r = Guid::from_random([0xff; 16]);
        assert!(r.to_string().starts_with("ffffffff-ffff-4fff-bfff-"));
    }

    #[test]
    fn booleans_come_after_the_attributes() {
        assert_eq!(bool_variable(&[6, 0, 0, 0, 1]), Some(true));
        assert_eq!(bool_variable(&[6, 0, 0, 0, 0]), Some(false));
        assert_eq!(bool_variable(&[6, 0, 0, 0]), None);
        assert_eq!(
            efivar_file("SecureBoot", GLOBAL_VARIABLE),
            "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
        );
    }

    #[test]
    fn a_certificate_list_round_trips() {
        let owner = Guid::from_random([7; 16]);
        let list = x509_signature_list(owner, b"not really DER").unwrap();
        assert_eq!(list.len(), 28 + 16 + 14);
        let mut two = list.clone();
        two.extend_from_slice(&list);
        let sigs = parse_signature_lists(&two).unwrap();
        assert_eq!(sigs.len(), 2);
        assert_eq!(sigs[0].kind, CERT_X509);
        assert_eq!(sigs[0].owner, owner);
        assert_eq!(sigs[1].data, b"not really DER");
    }

    #[test]
    fn hostile_lists_are_errors_not_panics() {
        let list = x509_signature_list(Guid([1; 16]), b"abc").unwrap();
        for cut in 0..list.len() {
            assert!(parse_signature_lists(&list[..cut]).is_err() || cut == 0);
        }
        let mut zero_sig = list.clone();
        zero_sig[24..28].copy_from_slice(&0u32.to_le_bytes());
        assert!(parse_signature_lists(&zero_sig).is_err());
        let mut huge_header = list.clone();
        huge_header[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_signature_lists(&huge_header).is_err());
        let mut small = list;
        small[16..20].copy_from_slice(&3u32.to_le_bytes());
        assert!(parse_signature_lists(&small).is_err());
    }
}

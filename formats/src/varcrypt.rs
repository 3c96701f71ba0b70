//! The header of an encrypted `/var`: keel's own, at the start of the data
//! partition, in front of a dm-crypt (AES-XTS) volume. keel's rather than
//! LUKS2 because stage 1 opens it without cryptsetup: the header is one
//! checksummed JSON block, written twice (a torn write of one copy leaves
//! the other), and the volume starts 1 MiB in.
//!
//! The volume key is held by key slots: one sealed by the TPM to the boot
//! chain, one wrapped by a recovery key. Each slot's secret is checked
//! against `key_check` before the volume is opened, so a wrong key is a
//! clear error instead of a garbage filesystem.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One header copy: a 512-byte sector multiple that stays inside the
/// first MiB with its backup.
pub const HEADER_SIZE: usize = 4096;
/// Where the two copies are, in bytes from the partition's start.
pub const HEADER_OFFSETS: [u64; 2] = [0, 512 * 1024];
/// Where the encrypted volume starts, in 512-byte sectors.
pub const DATA_OFFSET_SECTORS: u64 = 2048;
pub const MAGIC: &[u8; 8] = b"KEELVAR\x01";
/// What a first boot writes where the backup header goes before it writes
/// the volume: a boot that finds it knows the plain filesystem in front of
/// it is half overwritten.
pub const PENDING_MAGIC: &[u8; 8] = b"KEELVAR\x00";
pub const CIPHER: &str = "aes-xts-plain64";
/// AES-256-XTS: two 256-bit keys.
pub const KEY_BYTES: usize = 64;
/// The recovery key: 256 random bits, shown as 8 groups of 8 modhex
/// characters as systemd-cryptenroll shows its recovery keys.
pub const RECOVERY_BYTES: usize = 32;
const MODHEX: &[u8; 16] = b"cbdefghijklnrtuv";
const PREFIX: usize = 8 + 4 + 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VarCryptError {
    #[error("no keel /var header (magic)")]
    NoHeader,
    #[error("a first boot was making the encrypted /var and did not finish")]
    Pending,
    #[error("/var header: JSON of {0} bytes does not fit its block")]
    Length(usize),
    #[error("/var header: checksum mismatch")]
    Checksum,
    #[error("/var header: {0}")]
    Json(String),
    #[error("/var header: {field} = {value:?}: {why}")]
    Field {
        field: &'static str,
        value: String,
        why: &'static str,
    },
    #[error(
        "not a recovery key ({0} characters): expected 8 groups of 8 characters of {modhex}",
        modhex = "cbdefghijklnrtuv"
    )]
    /// The text is not echoed: a mistyped key is most of a key.
    RecoveryKey(usize),
}

/// The header as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderConfig {
    /// Raised on every rewrite: of two valid copies that differ (a power
    /// cut between their writes), the higher one is the newer.
    pub seq: u64,
    pub cipher: String,
    pub data_offset_sectors: u64,
    /// HMAC-SHA256 of [`KEY_CHECK_LABEL`] under the volume key, hex.
    pub key_check: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm2: Option<Tpm2SlotConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoverySlotConfig>,
}

/// What `key_check` authenticates.
pub const KEY_CHECK_LABEL: &[u8] = b"keel /var volume key";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tpm2SlotConfig {
    /// PCRs the policy holds at their sealing-time values.
    pub pcrs: Vec<u32>,
    /// PCRs the policy takes as the signing key approves.
    pub signed_pcrs: Vec<u32>,
    /// SHA-256 of the PCR signing key's DER SubjectPublicKeyInfo, hex.
    pub pkfp: String,
    /// The sealed object's TPM2B_PUBLIC and TPM2B_PRIVATE contents, hex.
    pub public: String,
    pub private: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoverySlotConfig {
    /// HKDF-SHA256 salt, AES-256-GCM nonce and the wrapped volume key
    /// (with its tag), hex.
    pub salt: String,
    pub nonce: String,
    pub wrapped: String,
}

/// A validated header: bytes, not hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub seq: u64,
    pub key_check: [u8; 32],
    pub tpm2: Option<Tpm2Slot>,
    pub recovery: Option<RecoverySlot>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tpm2Slot {
    pub pkfp: [u8; 32],
    pub public: Vec<u8>,
    pub private: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoverySlot {
    pub salt: [u8; 16],
    pub nonce: [u8; 12],
    pub wrapped: Vec<u8>,
}

fn unhex<const N: usize>(field: &'static str, v: &str) -> Result<[u8; N], VarCryptError> {
    unhex_vec(field, v)?
        .try_into()
        .map_err(|_| VarCryptError::Field {
            field,
            value: v.into(),
            why: "wrong length",
        })
}

fn unhex_vec(field: &'static str, v: &str) -> Result<Vec<u8>, VarCryptError> {
    hex::decode(v).map_err(|_| VarCryptError::Field {
        field,
        value: v.into(),
        why: "not hex",
    })
}

impl HeaderConfig {
    pub fn validate(&self) -> Result<Header, VarCryptError> {
        if self.cipher != CIPHER {
            return Err(VarCryptError::Field {
                field: "cipher",
                value: self.cipher.clone(),
                why: "keel opens aes-xts-plain64 only",
            });
        }
        if self.data_offset_sectors != DATA_OFFSET_SECTORS {
            return Err(VarCryptError::Field {
                field: "data_offset_sectors",
                value: self.data_offset_sectors.to_string(),
                why: "must be 2048",
            });
        }
        let tpm2 = match &self.tpm2 {
            None => None,
            Some(t) => {
                if t.pcrs != [7] || t.signed_pcrs != [11] {
                    return Err(VarCryptError::Field {
                        field: "tpm2.pcrs",
                        value: format!("{:?} {:?}", t.pcrs, t.signed_pcrs),
                        why: "keel seals to PCR 7 and signed PCR 11",
                    });
                }
                Some(Tpm2Slot {
                    pkfp: unhex("tpm2.pkfp", &t.pkfp)?,
                    public: unhex_vec("tpm2.public", &t.public)?,
                    private: unhex_vec("tpm2.private", &t.private)?,
                })
            }
        };
        let recovery = match &self.recovery {
            None => None,
            Some(r) => Some(RecoverySlot {
                salt: unhex("recovery.salt", &r.salt)?,
                nonce: unhex("recovery.nonce", &r.nonce)?,
                wrapped: unhex_vec("recovery.wrapped", &r.wrapped)?,
            }),
        };
        Ok(Header {
            seq: self.seq,
            key_check: unhex("key_check", &self.key_check)?,
            tpm2,
            recovery,
        })
    }
}

impl Header {
    pub fn to_config(&self) -> HeaderConfig {
        HeaderConfig {
            seq: self.seq,
            cipher: CIPHER.into(),
            data_offset_sectors: DATA_OFFSET_SECTORS,
            key_check: hex::encode(self.key_check),
            tpm2: self.tpm2.as_ref().map(|t| Tpm2SlotConfig {
                pcrs: vec![7],
                signed_pcrs: vec![11],
                pkfp: hex::encode(t.pkfp),
                public: hex::encode(&t.public),
                private: hex::encode(&t.private),
            }),
            recovery: self.recovery.as_ref().map(|r| RecoverySlotConfig {
                salt: hex::encode(r.salt),
                nonce: hex::encode(r.nonce),
                wrapped: hex::encode(&r.wrapped),
            }),
        }
    }

    /// One header block: magic, JSON length (LE u32), SHA-256 of the JSON,
    /// the JSON, zeros.
    pub fn encode(&self) -> Result<Vec<u8>, VarCryptError> {
        let json = serde_json::to_vec(&self.to_config())
            .map_err(|e| VarCryptError::Json(e.to_string()))?;
        if json.len() > HEADER_SIZE - PREFIX {
            return Err(VarCryptError::Length(json.len()));
        }
        let mut b = Vec::with_capacity(HEADER_SIZE);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&(json.len() as u32).to_le_bytes());
        b.extend_from_slice(&Sha256::digest(&json));
        b.extend_from_slice(&json);
        b.resize(HEADER_SIZE, 0);
        Ok(b)
    }

    /// Parse one header block (hostile: it comes from a disk).
    pub fn decode(block: &[u8]) -> Result<Header, VarCryptError> {
        if block.get(..8) != Some(MAGIC.as_slice()) {
            return Err(VarCryptError::NoHeader);
        }
        let len = block
            .get(8..12)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or(VarCryptError::NoHeader)? as usize;
        let json = block
            .get(PREFIX..)
            .and_then(|b| b.get(..len))
            .filter(|_| len <= HEADER_SIZE - PREFIX)
            .ok_or(VarCryptError::Length(len))?;
        if block.get(12..PREFIX) != Some(Sha256::digest(json).as_slice()) {
            return Err(VarCryptError::Checksum);
        }
        let config: HeaderConfig =
            serde_json::from_slice(json).map_err(|e| VarCryptError::Json(e.to_string()))?;
        config.validate()
    }

    /// The newer valid copy of (primary, backup): the header, and whether
    /// the copies need rewriting. `NoHeader` when neither has the magic,
    /// `Pending` when the backup says a first boot was making the volume;
    /// otherwise the first copy's error that has the magic.
    pub fn decode_either(primary: &[u8], backup: &[u8]) -> Result<(Header, bool), VarCryptError> {
        match (Header::decode(primary), Header::decode(backup)) {
            (Ok(h), Ok(b)) if h == b => Ok((h, false)),
            (Ok(h), Ok(b)) => Ok((if b.seq > h.seq { b } else { h }, true)),
            (Ok(h), Err(_)) => Ok((h, true)),
            (Err(_), Ok(b)) => Ok((b, true)),
            (Err(VarCryptError::NoHeader), Err(VarCryptError::NoHeader)) => {
                if backup.get(..8) == Some(PENDING_MAGIC.as_slice()) {
                    Err(VarCryptError::Pending)
                } else {
                    Err(VarCryptError::NoHeader)
                }
            }
            (Err(VarCryptError::NoHeader), Err(e)) | (Err(e), _) => Err(e),
        }
    }
}

/// A recovery key as shown: 8 dash-separated groups of 8 modhex
/// characters.
pub fn recovery_key_text(key: &[u8; RECOVERY_BYTES]) -> String {
    let chars: Vec<u8> = key
        .iter()
        .flat_map(|b| [MODHEX[usize::from(b >> 4)], MODHEX[usize::from(b & 15)]])
        .collect();
    chars
        .chunks(8)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

/// A recovery key as typed: dashes and whitespace are ignored, case too.
pub fn parse_recovery_key(text: &str) -> Result<[u8; RECOVERY_BYTES], VarCryptError> {
    let bad = || VarCryptError::RecoveryKey(text.trim().chars().count());
    let digits: Vec<u8> = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| {
            MODHEX
                .iter()
                .position(|m| char::from(*m) == c.to_ascii_lowercase())
                .and_then(|p| u8::try_from(p).ok())
                .ok_or_else(bad)
        })
        .collect::<Result<_, _>>()?;
    if digits.len() != RECOVERY_BYTES * 2 {
        return Err(bad());
    }
    let mut key = [0u8; RECOVERY_BYTES];
    for (k, pair) in key.iter_mut().zip(digits.chunks(2)) {
        *k = (pair[0] << 4) | pair[1];
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            seq: 1,
            key_check: [3; 32],
            tpm2: Some(Tpm2Slot {
                pkfp: [4; 32],
                public: vec![1, 2, 3],
                private: vec![4, 5],
            }),
            recovery: Some(RecoverySlot {
                salt: [5; 16],
                nonce: [6; 12],
                wrapped: vec![7; 80],
            }),
        }
    }

    #[test]
    fn a_header_round_trips_and_a_damaged_copy_falls_back_to_the_other() {
        let h = header();
        let block = h.encode().unwrap();
        assert_eq!(block.len(), HEADER_SIZE);
        assert_eq!(Header::decode(&block).unwrap(), h);
        let mut torn = block.clone();
        torn[100] ^= 1;
        assert_eq!(Header::decode(&torn), Err(VarCryptError::Checksum));
        assert_eq!(
            Header::decode_either(&torn, &block).unwrap(),
            (h.clone(), true)
        );
        assert_eq!(
            Header::decode_either(&block, &block).unwrap(),
            (h.clone(), false)
        );
        assert_eq!(
            Header::decode_either(&[0; HEADER_SIZE], &[0; HEADER_SIZE]),
            Err(VarCryptError::NoHeader)
        );
        // A power cut between the two writes of a rewrite: the backup is
        // newer, and wins whichever copy it is.
        let mut newer = h.clone();
        newer.seq = 2;
        newer.tpm2 = None;
        let nb = newer.encode().unwrap();
        assert_eq!(
            Header::decode_either(&block, &nb).unwrap(),
            (newer.clone(), true)
        );
        assert_eq!(Header::decode_either(&nb, &block).unwrap(), (newer, true));
        let mut pending = PENDING_MAGIC.to_vec();
        pending.resize(HEADER_SIZE, 0);
        assert_eq!(
            Header::decode_either(&[0; HEADER_SIZE], &pending),
            Err(VarCryptError::Pending)
        );
        // A damaged backup with no primary is an error, not "no header".
        assert_eq!(
            Header::decode_either(&[0; HEADER_SIZE], &torn),
            Err(VarCryptError::Checksum)
        );
    }

    #[test]
    fn hostile_headers_are_errors_that_name_the_field() {
        for len in [u32::MAX, (HEADER_SIZE - PREFIX + 1) as u32] {
            let mut b = header().encode().unwrap();
            b[8..12].copy_from_slice(&len.to_le_bytes());
            assert!(matches!(Header::decode(&b), Err(VarCryptError::Length(_))));
        }
        assert!(Header::decode(&MAGIC[..]).is_err());
        let reencode = |c: HeaderConfig| {
            let json = serde_json::to_vec(&c).unwrap();
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&(json.len() as u32).to_le_bytes());
            b.extend_from_slice(&Sha256::digest(&json));
            b.extend_from_slice(&json);
            Header::decode(&b)
        };
        let mut c = header().to_config();
        c.cipher = "cipher_null".into();
        assert!(matches!(
            reencode(c),
            Err(VarCryptError::Field {
                field: "cipher",
                ..
            })
        ));
        let mut c = header().to_config();
        c.data_offset_sectors = 0;
        assert!(matches!(
            reencode(c),
            Err(VarCryptError::Field {
                field: "data_offset_sectors",
                ..
            })
        ));
        let mut c = header().to_config();
        c.key_check = "abcd".into();
        assert!(matches!(
            reencode(c),
            Err(VarCryptError::Field {
                field: "key_check",
                ..
            })
        ));
        let mut c = header().to_config();
        if let Some(t) = c.tpm2.as_mut() {
            t.pcrs = vec![];
        }
        assert!(matches!(
            reencode(c),
            Err(VarCryptError::Field {
                field: "tpm2.pcrs",
                ..
            })
        ));
    }

    #[test]
    fn recovery_keys_read_back_as_shown_and_typos_are_refused() {
        let key: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        let text = recovery_key_text(&key);
        assert_eq!(text.len(), 8 * 8 + 7);
        assert_eq!(parse_recovery_key(&text).unwrap(), key);
        assert_eq!(
            parse_recovery_key(&format!(" {}\n", text.to_uppercase())).unwrap(),
            key
        );
        let typo = format!("a{}", &text[1..]);
        assert!(matches!(
            parse_recovery_key(&typo),
            Err(VarCryptError::RecoveryKey(_))
        ));
        assert!(parse_recovery_key(&text[..text.len() - 1]).is_err());
    }
}

/// Where the initramfs holds the template of a fresh `/var` filesystem
/// (only in UKIs that can seal a key: stage 1 writes it into the new
/// encrypted volume on first boot, having no mkfs of its own).
pub const TEMPLATE_PATH: &str = "usr/lib/keel/var.template";
const TEMPLATE_MAGIC: &[u8; 8] = b"KEELVTPL";
const TEMPLATE_BLOCK: usize = 4096;

/// A filesystem image as its non-zero 4 KiB blocks: a fresh ext4 of 64 MiB
/// is a dozen of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template<'a> {
    /// The image's size in blocks.
    pub blocks: u64,
    /// (block number, its 4 KiB) in increasing block order.
    pub data: Vec<(u64, &'a [u8])>,
}

impl Template<'_> {
    pub const BLOCK: usize = TEMPLATE_BLOCK;

    /// Magic, the block count (LE u64), then (LE u64 block number, the
    /// block) for each non-zero block.
    pub fn encode(image: &[u8]) -> Vec<u8> {
        let mut out = TEMPLATE_MAGIC.to_vec();
        out.extend_from_slice(&(image.len().div_ceil(TEMPLATE_BLOCK) as u64).to_le_bytes());
        for (i, block) in image.chunks(TEMPLATE_BLOCK).enumerate() {
            if block.iter().any(|&b| b != 0) {
                out.extend_from_slice(&(i as u64).to_le_bytes());
                out.extend_from_slice(block);
                out.resize(out.len() + TEMPLATE_BLOCK - block.len(), 0);
            }
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Template<'_>, VarCryptError> {
        let bad = |why| VarCryptError::Field {
            field: "var template",
            value: TEMPLATE_PATH.into(),
            why,
        };
        if b.get(..8) != Some(TEMPLATE_MAGIC.as_slice()) {
            return Err(bad("no magic"));
        }
        let word = |at: usize| {
            b.get(at..at + 8)
                .and_then(|w| w.try_into().ok())
                .map(u64::from_le_bytes)
        };
        let blocks = word(8).ok_or(bad("truncated"))?;
        let mut data = Vec::new();
        let mut at = 16;
        while at < b.len() {
            let n = word(at).ok_or(bad("truncated"))?;
            let block = b
                .get(at + 8..at + 8 + TEMPLATE_BLOCK)
                .ok_or(bad("truncated"))?;
            if n >= blocks || data.last().is_some_and(|(last, _)| *last >= n) {
                return Err(bad("block numbers out of order or past the end"));
            }
            data.push((n, block));
            at += 8 + TEMPLATE_BLOCK;
        }
        Ok(Template { blocks, data })
    }
}

#[cfg(test)]
mod template_tests {
    use super::*;

    #[test]
    fn a_template_keeps_the_non_zero_blocks_in_order() {
        let mut image = vec![0u8; 10 * 4096 + 100];
        image[5] = 1;
        image[3 * 4096 + 7] = 2;
        image[10 * 4096 + 99] = 3;
        let t = Template::encode(&image);
        let d = Template::decode(&t).unwrap();
        assert_eq!(d.blocks, 11);
        let nums: Vec<u64> = d.data.iter().map(|(n, _)| *n).collect();
        assert_eq!(nums, [0, 3, 10]);
        assert_eq!(d.data[1].1[7], 2);
        assert!(Template::decode(&t[..t.len() - 1]).is_err());
        let mut swapped = t.clone();
        swapped[8..16].copy_from_slice(&2u64.to_le_bytes());
        assert!(Template::decode(&swapped).is_err());
    }
}

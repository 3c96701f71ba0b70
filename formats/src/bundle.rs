//! The update bundle: a signed manifest ([`crate::signed`]) followed by the
//! payloads it describes. docs/update.md specifies the layout.
//!
//! Payloads are hashed whole and in content-defined chunks
//! ([`crate::chunking`]): the whole-payload sha256 is what an auditor
//! compares; the chunk hashes let a reader check each piece before it
//! writes it, name the offset at which a payload went wrong, and let a
//! host fetch only the chunks it does not already have (delta updates).

use serde::{Deserialize, Serialize};

use crate::signed::{self, Envelope, Kind};

/// 2: content-defined chunks (format 1 had 1 MiB pieces).
pub const FORMAT: u32 = 2;
pub const OS: &str = "keel";
/// Payloads start, and each is padded, on this boundary.
pub const ALIGN: u64 = 4096;

/// The payloads of a bundle, in the order they are stored and written:
/// the boot-critical UKI last.
pub const PAYLOADS: [PayloadName; 3] = [PayloadName::Root, PayloadName::Verity, PayloadName::Uki];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadName {
    Root,
    Verity,
    Uki,
}

impl PayloadName {
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadName::Root => "root",
            PayloadName::Verity => "verity",
            PayloadName::Uki => "uki",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    pub name: PayloadName,
    /// From the start of the payload area.
    pub offset: u64,
    pub size: u64,
    /// sha256 of the whole payload, hex.
    pub sha256: String,
    /// Only "none": root images and kernels are compressed already.
    pub compression: String,
    /// The payload cut by [`crate::chunking::cut`], in order.
    pub chunks: Vec<Chunk>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    pub size: u64,
    /// sha256 of the chunk, hex.
    pub sha256: String,
}

impl Chunk {
    pub fn of(cut: &crate::chunking::Cut) -> Chunk {
        Chunk {
            size: cut.data.len() as u64,
            sha256: hex::encode(cut.sha256),
        }
    }
}

impl Payload {
    /// Each chunk with its offset from the payload's start. In a validated
    /// manifest the offsets do not overflow and end at `size`.
    pub fn spans(&self) -> impl Iterator<Item = (u64, &Chunk)> {
        self.chunks.iter().scan(0u64, |at, c| {
            let start = *at;
            *at = at.saturating_add(c.size);
            Some((start, c))
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerityInfo {
    pub root_hash: String,
    pub salt: String,
    pub data_blocks: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub os: String,
    /// The image name of the recipe: a host only takes its own variant.
    pub variant: String,
    pub version: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// The oldest version this bundle may replace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<String>,
    /// Whether it may replace a newer version.
    #[serde(default)]
    pub allow_downgrade: bool,
    pub verity: VerityInfo,
    pub payloads: Vec<Payload>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error(transparent)]
    Signed(#[from] signed::SignedError),
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("manifest: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> BundleError {
    BundleError::Invalid(msg.into())
}

fn check_hex(what: &str, value: &str, bytes: usize) -> Result<(), BundleError> {
    match hex::decode(value) {
        Ok(v) if v.len() == bytes => Ok(()),
        _ => Err(invalid(format!(
            "{what} {value:?} is not {bytes} bytes of hex"
        ))),
    }
}

pub fn parse_version(what: &str, v: &str) -> Result<semver::Version, BundleError> {
    semver::Version::parse(v).map_err(|e| invalid(format!("{what} {v:?}: {e}")))
}

impl Manifest {
    pub fn parse(body: &[u8]) -> Result<Manifest, BundleError> {
        let m: Manifest =
            serde_json::from_slice(body).map_err(|e| BundleError::Json(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    /// Everything a reader relies on before it reads a payload byte.
    pub fn validate(&self) -> Result<(), BundleError> {
        if self.format != FORMAT {
            return Err(invalid(format!(
                "format {} is not the supported {FORMAT}",
                self.format
            )));
        }
        if self.os != OS {
            return Err(invalid(format!("os {:?} is not {OS:?}", self.os)));
        }
        parse_version("version", &self.version)?;
        if let Some(min) = &self.min_version {
            parse_version("min_version", min)?;
        }
        check_hex("verity.root_hash", &self.verity.root_hash, 32)?;
        if hex::decode(&self.verity.salt).map_or(true, |s| s.len() > 256) {
            return Err(invalid("verity.salt is not hex of at most 256 bytes"));
        }
        let names: Vec<PayloadName> = self.payloads.iter().map(|p| p.name).collect();
        if names != PAYLOADS {
            return Err(invalid(format!(
                "payloads must be root, verity, uki in that order, not {names:?}"
            )));
        }
        let mut next = 0u64;
        for p in &self.payloads {
            let name = p.name.as_str();
            if p.offset != next {
                return Err(invalid(format!(
                    "payload {name} at offset {} instead of {next}",
                    p.offset
                )));
            }
            if p.size == 0 {
                return Err(invalid(format!("payload {name} is empty")));
            }
            if p.compression != "none" {
                return Err(invalid(format!(
                    "payload {name}: compression {:?} is not supported",
                    p.compression
                )));
            }
            check_hex(&format!("payload {name} sha256"), &p.sha256, 32)?;
            let mut total = 0u64;
            for (i, c) in p.chunks.iter().enumerate() {
                if c.size == 0 || c.size > crate::chunking::MAX as u64 {
                    return Err(invalid(format!(
                        "payload {name}: chunk {i} has {} bytes, not 1 to {}",
                        c.size,
                        crate::chunking::MAX
                    )));
                }
                check_hex(&format!("payload {name} chunk {i} sha256"), &c.sha256, 32)?;
                // At most MAX per chunk and far fewer chunks than 2^48:
                // a sum that overflows is a hostile manifest.
                total = total
                    .checked_add(c.size)
                    .ok_or_else(|| invalid(format!("payload {name}: chunk sizes overflow")))?;
            }
            if total != p.size {
                return Err(invalid(format!(
                    "payload {name}: its {} chunks hold {total} bytes, not its size {}",
                    p.chunks.len(),
                    p.size
                )));
            }
            next = p
                .offset
                .checked_add(
                    aligned(p.size)
                        .ok_or_else(|| invalid(format!("payload {name} size overflows")))?,
                )
                .ok_or_else(|| invalid(format!("payload {name} size overflows")))?;
        }
        Ok(())
    }

    pub fn payload(&self, name: PayloadName) -> Option<&Payload> {
        self.payloads.iter().find(|p| p.name == name)
    }

    /// Bytes of the payload area.
    pub fn payloads_len(&self) -> u64 {
        self.payloads.last().map_or(0, |p| {
            // Validated manifests fit; a saturated length fails the
            // size checks that follow it.
            p.offset.saturating_add(aligned(p.size).unwrap_or(u64::MAX))
        })
    }
}

/// `size` rounded up to [`ALIGN`], if that fits.
fn aligned(size: u64) -> Option<u64> {
    size.div_ceil(ALIGN).checked_mul(ALIGN)
}

/// Where the payload area starts in a bundle whose signed part ends at
/// `signed_len`.
pub fn payload_start(signed_len: u64) -> u64 {
    // A signed part near 2^64 bytes cannot be read; saturating keeps the
    // start past it.
    aligned(signed_len).unwrap_or(u64::MAX)
}

/// The bytes in front of the payloads: signed manifest, then zero padding.
pub fn head_bytes(envelope: &Envelope) -> Vec<u8> {
    debug_assert_eq!(envelope.kind, Kind::Bundle);
    let mut out = envelope.to_bytes();
    out.resize(payload_start(out.len() as u64) as usize, 0);
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn manifest() -> Manifest {
        let h = "ab".repeat(32);
        let payload = |name, offset, size: u64| Payload {
            name,
            offset,
            size,
            sha256: h.clone(),
            compression: "none".into(),
            chunks: (0..size.div_ceil(65536))
                .map(|i| Chunk {
                    size: (size - i * 65536).min(65536),
                    sha256: h.clone(),
                })
                .collect(),
        };
        Manifest {
            format: 2,
            os: "keel".into(),
            variant: "keel".into(),
            version: "0.2.0".into(),
            created: 1_700_000_000,
            min_version: None,
            allow_downgrade: false,
            verity: VerityInfo {
                root_hash: h.clone(),
                salt: "00ff".into(),
                data_blocks: 600,
            },
            payloads: vec![
                payload(PayloadName::Root, 0, 3 << 20),
                payload(PayloadName::Verity, 3 << 20, 5000),
                payload(PayloadName::Uki, (3 << 20) + 8192, 100),
            ],
        }
    }

    #[test]
    fn a_good_manifest_round_trips() {
        let m = manifest();
        let json = serde_json::to_vec(&m).unwrap();
        assert_eq!(Manifest::parse(&json).unwrap(), m);
        assert_eq!(m.payloads_len(), (3 << 20) + 8192 + 4096);
        assert_eq!(payload_start(1), 4096);
        assert_eq!(payload_start(4096), 4096);
    }

    #[test]
    fn bad_manifests_say_what_is_wrong() {
        type Edit = fn(&mut Manifest);
        let cases: Vec<(Edit, &str)> = vec![
            (|m| m.format = 1, "format 1 is not the supported 2"),
            (|m| m.os = "flatcar".into(), "os \"flatcar\""),
            (|m| m.version = "two".into(), "version \"two\""),
            (|m| m.payloads.swap(0, 1), "root, verity, uki"),
            (|m| m.payloads[1].offset = 5, "payload verity at offset 5"),
            (
                |m| m.payloads[2].compression = "zstd".into(),
                "compression \"zstd\"",
            ),
            (
                |m| m.payloads[0].chunks.pop().map(drop).unwrap_or(()),
                "its 47 chunks hold 3080192 bytes, not its size 3145728",
            ),
            (
                |m| m.payloads[0].chunks[3].size = 65537,
                "payload root: chunk 3 has 65537 bytes",
            ),
            (|m| m.payloads[1].chunks[0].size = 0, "chunk 0 has 0 bytes"),
            (
                |m| m.payloads[2].chunks[0].sha256 = "00".into(),
                "payload uki chunk 0 sha256",
            ),
            (
                |m| m.payloads[0].sha256 = "xyz".into(),
                "payload root sha256",
            ),
            (|m| m.verity.root_hash = "00".into(), "verity.root_hash"),
        ];
        for (edit, expect) in cases {
            let mut m = manifest();
            edit(&mut m);
            let e = m.validate().unwrap_err().to_string();
            assert!(e.contains(expect), "{e:?} should contain {expect:?}");
        }
        let e = Manifest::parse(b"{\"format\":1,\"extra\":2}").unwrap_err();
        assert!(matches!(e, BundleError::Json(_)), "{e}");
    }
}

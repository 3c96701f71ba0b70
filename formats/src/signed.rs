//! The signed envelope shared by update bundles and repository indexes: a
//! small fixed header, a JSON body, and ed25519 signatures over the body.
//! docs/update.md specifies it byte by byte.
//!
//! The signatures cover exactly the body bytes as stored (prefixed with a
//! context string per kind, so that an index signature can never pass for
//! a manifest signature), so no canonical JSON is needed.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// Length of the fixed header.
pub const HEADER_LEN: usize = 16;
/// A public key and a signature, as stored after the body.
pub const SIGNATURE_LEN: usize = 32 + 64;
/// Bodies are JSON documents: an index, or a bundle manifest with its
/// chunk list (about 85 bytes per 16 KiB of payload, so 4 MiB covers
/// some 750 MiB of payloads); anything larger is not ours.
pub const MAX_BODY: u32 = 4 << 20;
pub const MAX_SIGNATURES: u16 = 16;

/// What an envelope holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bundle,
    Index,
}

impl Kind {
    pub fn magic(self) -> &'static [u8; 8] {
        match self {
            Kind::Bundle => b"KEELBND1",
            Kind::Index => b"KEELIDX1",
        }
    }

    fn context(self) -> &'static [u8] {
        match self {
            Kind::Bundle => b"keel bundle manifest v1\0",
            Kind::Index => b"keel repository index v1\0",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Bundle => "bundle",
            Kind::Index => "index",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignedError {
    #[error("not a keel {expected}: it starts with {found:?}, not {magic:?}")]
    BadMagic {
        expected: &'static str,
        found: String,
        magic: &'static str,
    },
    #[error("{what}: {value} is out of range (at most {max})")]
    OutOfRange {
        what: &'static str,
        value: u64,
        max: u64,
    },
    #[error("reserved header bytes are not zero")]
    Reserved,
    #[error("truncated: {what} needs {needed} bytes, {got} present")]
    Truncated {
        what: &'static str,
        needed: usize,
        got: usize,
    },
    #[error("no signatures")]
    Unsigned,
    #[error("signed only by unknown keys ({0}); the trusted keys are listed in /etc/keel/keys")]
    UnknownKey(String),
    #[error("bad signature by key {0}")]
    BadSignature(String),
}

/// The lengths a fixed header announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub body_len: u32,
    pub signatures: u16,
}

impl Header {
    /// Bytes from the start of the envelope to the end of its signatures.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.body_len as usize + self.signatures as usize * SIGNATURE_LEN
    }
}

/// Parse the fixed header of a `kind` envelope.
pub fn parse_header(kind: Kind, bytes: &[u8]) -> Result<Header, SignedError> {
    if bytes.len() < HEADER_LEN {
        return Err(SignedError::Truncated {
            what: "the header",
            needed: HEADER_LEN,
            got: bytes.len(),
        });
    }
    if &bytes[..8] != kind.magic() {
        return Err(SignedError::BadMagic {
            expected: kind.name(),
            found: String::from_utf8_lossy(&bytes[..8]).into_owned(),
            magic: std::str::from_utf8(kind.magic()).unwrap_or_default(),
        });
    }
    let body_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let signatures = u16::from_le_bytes([bytes[12], bytes[13]]);
    if bytes[14..16] != [0, 0] {
        return Err(SignedError::Reserved);
    }
    if body_len == 0 || body_len > MAX_BODY {
        return Err(SignedError::OutOfRange {
            what: "body length",
            value: body_len.into(),
            max: MAX_BODY.into(),
        });
    }
    if signatures > MAX_SIGNATURES {
        return Err(SignedError::OutOfRange {
            what: "signature count",
            value: signatures.into(),
            max: MAX_SIGNATURES.into(),
        });
    }
    Ok(Header {
        body_len,
        signatures,
    })
}

/// A parsed envelope whose signatures are not checked yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub kind: Kind,
    pub body: Vec<u8>,
    pub signatures: Vec<([u8; 32], [u8; 64])>,
}

impl Envelope {
    /// Parse a whole envelope from the start of `bytes`; trailing bytes
    /// (a bundle's payloads) are left alone.
    pub fn parse(kind: Kind, bytes: &[u8]) -> Result<Envelope, SignedError> {
        let h = parse_header(kind, bytes)?;
        if bytes.len() < h.total_len() {
            return Err(SignedError::Truncated {
                what: "the body and signatures",
                needed: h.total_len(),
                got: bytes.len(),
            });
        }
        let body_end = HEADER_LEN + h.body_len as usize;
        let body = bytes[HEADER_LEN..body_end].to_vec();
        let signatures = bytes[body_end..h.total_len()]
            .chunks_exact(SIGNATURE_LEN)
            .map(|c| {
                let mut key = [0u8; 32];
                let mut sig = [0u8; 64];
                key.copy_from_slice(&c[..32]);
                sig.copy_from_slice(&c[32..]);
                (key, sig)
            })
            .collect();
        Ok(Envelope {
            kind,
            body,
            signatures,
        })
    }

    /// Sign `body` with every key in `keys`.
    pub fn sign(kind: Kind, body: Vec<u8>, keys: &[&SigningKey]) -> Envelope {
        let msg = [kind.context(), &body].concat();
        let signatures = keys
            .iter()
            .map(|k| (k.verifying_key().to_bytes(), k.sign(&msg).to_bytes()))
            .collect();
        Envelope {
            kind,
            body,
            signatures,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            HEADER_LEN + self.body.len() + self.signatures.len() * SIGNATURE_LEN,
        );
        out.extend_from_slice(self.kind.magic());
        out.extend_from_slice(&(self.body.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.signatures.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.body);
        for (key, sig) in &self.signatures {
            out.extend_from_slice(key);
            out.extend_from_slice(sig);
        }
        out
    }

    /// Check the signatures against `trusted`: at least one signature must
    /// be by a trusted key, and every signature by a trusted key must hold.
    /// Returns the key that vouched for the body.
    pub fn verify(&self, trusted: &[VerifyingKey]) -> Result<VerifyingKey, SignedError> {
        if self.signatures.is_empty() {
            return Err(SignedError::Unsigned);
        }
        let msg = [self.kind.context(), &self.body].concat();
        let mut good = None;
        for (key, sig) in &self.signatures {
            let Some(k) = trusted.iter().find(|t| t.as_bytes() == key) else {
                continue;
            };
            k.verify_strict(&msg, &Signature::from_bytes(sig))
                .map_err(|_| SignedError::BadSignature(key_id(key)))?;
            good = Some(*k);
        }
        good.ok_or_else(|| {
            SignedError::UnknownKey(
                self.signatures
                    .iter()
                    .map(|(k, _)| key_id(k))
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })
    }
}

/// How keys are named in messages: the first 8 bytes of the public key.
pub fn key_id(public: &[u8; 32]) -> String {
    hex::encode(&public[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn round_trip_and_verify() {
        let k = key(1);
        let env = Envelope::sign(Kind::Bundle, b"{\"a\":1}".to_vec(), &[&k]);
        let bytes = env.to_bytes();
        assert_eq!(&bytes[..8], b"KEELBND1");
        assert_eq!(bytes.len(), HEADER_LEN + 7 + SIGNATURE_LEN);
        let mut with_payload = bytes.clone();
        with_payload.extend_from_slice(b"payload");
        let parsed = Envelope::parse(Kind::Bundle, &with_payload).unwrap();
        assert_eq!(parsed, env);
        assert_eq!(
            parsed.verify(&[k.verifying_key()]).unwrap(),
            k.verifying_key()
        );
    }

    #[test]
    fn refusals_say_why() {
        let (k, other) = (key(1), key(2));
        let env = Envelope::sign(Kind::Bundle, b"{}".to_vec(), &[&k]);
        let e = env.verify(&[other.verifying_key()]).unwrap_err();
        assert_eq!(
            e,
            SignedError::UnknownKey(key_id(&k.verifying_key().to_bytes()))
        );

        let mut tampered = env.clone();
        tampered.body = b"{ }".to_vec();
        assert!(matches!(
            tampered.verify(&[k.verifying_key()]),
            Err(SignedError::BadSignature(_))
        ));

        // An index signature does not make a valid manifest signature.
        let idx = Envelope::sign(Kind::Index, b"{}".to_vec(), &[&k]);
        let as_bundle = Envelope {
            kind: Kind::Bundle,
            ..idx
        };
        assert!(as_bundle.verify(&[k.verifying_key()]).is_err());

        let bytes = env.to_bytes();
        assert!(matches!(
            Envelope::parse(Kind::Index, &bytes),
            Err(SignedError::BadMagic { .. })
        ));
        assert!(matches!(
            Envelope::parse(Kind::Bundle, &bytes[..bytes.len() - 1]),
            Err(SignedError::Truncated { .. })
        ));
        let unsigned = Envelope::sign(Kind::Bundle, b"{}".to_vec(), &[]);
        assert_eq!(
            unsigned.verify(&[k.verifying_key()]),
            Err(SignedError::Unsigned)
        );
    }

    #[test]
    fn a_second_trusted_signature_must_hold_too() {
        let (a, b) = (key(1), key(2));
        let mut env = Envelope::sign(Kind::Index, b"{}".to_vec(), &[&a, &b]);
        env.signatures[1].1[0] ^= 1;
        assert!(env.verify(&[a.verifying_key()]).is_ok());
        assert!(matches!(
            env.verify(&[a.verifying_key(), b.verifying_key()]),
            Err(SignedError::BadSignature(_))
        ));
    }
}

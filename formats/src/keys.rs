//! Key files: one line, a tag and 32 bytes of hex. Public keys are what an
//! image trusts (`/etc/keel/keys/*.pub`); secret keys stay on the build
//! machine, in files only their owner can read.

use ed25519_dalek::{SigningKey, VerifyingKey};

pub const PUBLIC_TAG: &str = "keel-ed25519-public";
pub const SECRET_TAG: &str = "keel-ed25519-secret";
/// Where an image keeps the public keys it trusts.
pub const TRUSTED_DIR: &str = "/etc/keel/keys";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("expected \"{expected} <64 hex digits>\"")]
    Format { expected: &'static str },
    #[error("{0:?} is not 32 bytes of hex")]
    Hex(String),
    #[error("not a valid ed25519 public key")]
    Point,
}

fn decode32(hex_str: &str) -> Result<[u8; 32], KeyError> {
    hex::decode(hex_str)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| KeyError::Hex(hex_str.to_string()))
}

fn tagged<'a>(text: &'a str, tag: &'static str) -> Result<&'a str, KeyError> {
    text.trim()
        .strip_prefix(tag)
        .map(str::trim)
        .ok_or(KeyError::Format { expected: tag })
}

pub fn parse_public_hex(hex_str: &str) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_bytes(&decode32(hex_str)?).map_err(|_| KeyError::Point)
}

pub fn parse_public(text: &str) -> Result<VerifyingKey, KeyError> {
    parse_public_hex(tagged(text, PUBLIC_TAG)?)
}

pub fn parse_secret(text: &str) -> Result<SigningKey, KeyError> {
    Ok(SigningKey::from_bytes(&decode32(tagged(
        text, SECRET_TAG,
    )?)?))
}

pub fn render_public(key: &VerifyingKey) -> String {
    format!("{PUBLIC_TAG} {}\n", hex::encode(key.as_bytes()))
}

pub fn render_secret(key: &SigningKey) -> String {
    format!("{SECRET_TAG} {}\n", hex::encode(key.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let k = SigningKey::from_bytes(&[7; 32]);
        let s = render_secret(&k);
        assert_eq!(parse_secret(&s).unwrap().to_bytes(), k.to_bytes());
        let p = render_public(&k.verifying_key());
        assert_eq!(parse_public(&p).unwrap(), k.verifying_key());
        assert_eq!(
            parse_public(&s),
            Err(KeyError::Format {
                expected: PUBLIC_TAG
            })
        );
        assert!(matches!(
            parse_public("keel-ed25519-public abc"),
            Err(KeyError::Hex(_))
        ));
    }
}

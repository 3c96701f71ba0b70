//! The PCR signing key: what lets a new UKI unseal the `/var` key sealed
//! under an old one. Each build predicts the PCR 11 value its UKI leaves
//! in stage 1 and signs the policy that accepts it, as `systemd-measure
//! sign` does; the UKI carries the public key (`.pcrpkey`, measured) and
//! the signature (`.pcrsig`, not measured), which systemd-stub hands to
//! stage 1 as `/.extra/tpm2-pcr-public-key.pem` and
//! `/.extra/tpm2-pcr-signature.json`.

use std::path::{Path, PathBuf};

use base64::Engine;
use keel_tpm::pcrsig::{Entry, PcrSignature};
use keel_tpm::policy::{policy_pcr, predict_pcr11, PCR_KERNEL};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::signature::{SignatureEncoding, Signer as _};
use sha2::Sha256;

use crate::files::write_new;

/// The key pair's files in a key folder, named as systemd names them.
pub const PRIVATE: &str = "tpm2-pcr-private-key.pem";
pub const PUBLIC: &str = "tpm2-pcr-public-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum PcrKeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {error}")]
    Key { path: PathBuf, error: String },
}

/// A loaded PCR signing key.
#[derive(Debug, Clone)]
pub struct PcrKey {
    key: rsa::pkcs1v15::SigningKey<Sha256>,
    /// The public key as `.pcrpkey` carries it (PEM).
    pub public_pem: String,
    /// SHA-256 of the DER public key, hex: how `.pcrsig` names the key.
    pub fingerprint: String,
}

/// Make the pair in `dir` (never over an existing one).
pub fn keygen(dir: &Path) -> Result<(), PcrKeyError> {
    let key_err = |error: String| PcrKeyError::Key {
        path: dir.join(PRIVATE),
        error,
    };
    let rsa =
        rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).map_err(|e| key_err(e.to_string()))?;
    let private = rsa
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| key_err(e.to_string()))?;
    let public = rsa
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| key_err(e.to_string()))?;
    for (name, bytes, mode) in [
        (PRIVATE, private.as_bytes(), 0o600),
        (PUBLIC, public.as_bytes(), 0o644),
    ] {
        let path = dir.join(name);
        write_new(&path, bytes, mode).map_err(|source| PcrKeyError::Io { path, source })?;
    }
    Ok(())
}

impl PcrKey {
    /// The key of folder `dir`, if it has one.
    pub fn load(dir: &Path) -> Result<Option<PcrKey>, PcrKeyError> {
        let path = dir.join(PRIVATE);
        if !path.exists() {
            return Ok(None);
        }
        let pem = std::fs::read_to_string(&path).map_err(|source| PcrKeyError::Io {
            path: path.clone(),
            source,
        })?;
        let rsa = rsa::RsaPrivateKey::from_pkcs8_pem(&pem).map_err(|e| PcrKeyError::Key {
            path: path.clone(),
            error: e.to_string(),
        })?;
        let public = rsa.to_public_key();
        let der = public.to_public_key_der().map_err(|e| PcrKeyError::Key {
            path: path.clone(),
            error: e.to_string(),
        })?;
        let public_pem =
            public
                .to_public_key_pem(LineEnding::LF)
                .map_err(|e| PcrKeyError::Key {
                    path: path.clone(),
                    error: e.to_string(),
                })?;
        Ok(Some(PcrKey {
            key: rsa::pkcs1v15::SigningKey::new(rsa),
            public_pem,
            fingerprint: hex::encode(keel_tpm::policy::fingerprint(der.as_bytes())),
        }))
    }

    /// `.pcrsig` for a UKI of `sections` (which include `.pcrpkey`): the
    /// policy "PCR 11 holds what stage 1 sees", signed.
    pub fn pcrsig(&self, sections: &[(&str, &[u8])]) -> Vec<u8> {
        let pcr11 = predict_pcr11(sections);
        // One PCR, one value: the selection is always valid.
        let approved = policy_pcr(&[0; 32], &[PCR_KERNEL], &[pcr11]).unwrap_or_default();
        // RSASSA-PKCS1-v1_5 over SHA-256(approved): the digest that
        // TPM2_VerifySignature checks (with an empty policyRef).
        let sig = self.key.sign(&approved).to_bytes();
        PcrSignature {
            sha256: vec![Entry {
                pcrs: vec![PCR_KERNEL],
                pkfp: self.fingerprint.clone(),
                pol: hex::encode(approved),
                sig: base64::engine::general_purpose::STANDARD.encode(sig),
            }],
        }
        .to_json()
    }
}

//! Authenticode-signing EFI binaries with the db key, through Debian's
//! `sbsign` (sbsigntool): what Ubuntu and Debian sign their boot chains
//! with, and the signer the firmware's verifier is tested against.
//!
//! sbsign puts a signing time in the signature, so two signed builds of
//! the same inputs differ in the signature only; `sbattach --remove` gives
//! back the same unsigned bytes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tool::{self, ToolError};

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is missing: a Secure Boot key needs its certificate beside it (keel keygen --secure-boot writes both)")]
    NoCert(PathBuf),
    #[error("{key} and {cert} are not one key pair: what they sign does not verify")]
    Mismatch { key: PathBuf, cert: PathBuf },
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Pcr(#[from] super::pcr::PcrKeyError),
}

/// The db key and its certificate.
#[derive(Debug, Clone)]
pub struct Signer {
    pub key: PathBuf,
    pub cert: PathBuf,
    /// The folder's PCR signing key, when it has one: UKIs then carry a
    /// signed PCR 11 policy, and a host with a TPM encrypts `/var`.
    pub pcr: Option<super::pcr::PcrKey>,
}

impl Signer {
    /// `key` (`DIR/db.key`) and the certificate beside it (`DIR/db.crt`).
    pub fn from_key(key: &Path) -> Result<Signer, SignError> {
        fs::metadata(key).map_err(|source| SignError::Io {
            path: key.to_path_buf(),
            source,
        })?;
        let cert = key.with_extension("crt");
        if !cert.is_file() {
            return Err(SignError::NoCert(cert));
        }
        let pcr = super::pcr::PcrKey::load(key.parent().unwrap_or(Path::new(".")))?;
        Ok(Signer {
            key: key.to_path_buf(),
            cert,
            pcr,
        })
    }

    /// The folder the key came from, where the other public files are.
    pub fn dir(&self) -> &Path {
        self.key.parent().unwrap_or(Path::new("."))
    }

    /// `bytes` signed; `scratch` is a folder for the files sbsign works on.
    pub fn sign(&self, bytes: &[u8], scratch: &Path, name: &str) -> Result<Vec<u8>, SignError> {
        let unsigned = scratch.join(format!("{name}.unsigned"));
        let signed = scratch.join(format!("{name}.signed"));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SignError::Io { path, source }
        };
        fs::write(&unsigned, bytes).map_err(io(&unsigned))?;
        tool::run(
            Command::new("sbsign")
                .arg("--key")
                .arg(&self.key)
                .arg("--cert")
                .arg(&self.cert)
                .arg("--output")
                .arg(&signed)
                .arg(&unsigned),
        )?;
        // sbsign signs with whatever key it is given; a key that is not the
        // certificate's would make a boot chain no firmware accepts.
        let verified = tool::run(
            Command::new("sbverify")
                .arg("--cert")
                .arg(&self.cert)
                .arg(&signed),
        );
        if let Err(ToolError::Failed { .. }) = verified {
            return Err(SignError::Mismatch {
                key: self.key.clone(),
                cert: self.cert.clone(),
            });
        }
        verified?;
        let out = fs::read(&signed).map_err(io(&signed))?;
        let _ = fs::remove_file(&unsigned);
        let _ = fs::remove_file(&signed);
        Ok(out)
    }
}

//! `keel keygen --secure-boot DIR`: PK, KEK and db as RSA-2048 keys with
//! self-signed certificates (what firmware verifies Authenticode with),
//! their signature lists, and the auth files that enroll them; and the
//! PCR signing key pair.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use keel_formats::efi::{self, EfiError, Guid, KeyVariable};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};

use super::file;
use crate::files::write_new;
use crate::tool::{self, ToolError};

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} exists: Secure Boot keys are never overwritten")]
    Exists(PathBuf),
    #[error("generating the {name} key: {error}")]
    Rsa { name: &'static str, error: String },
    #[error("making the {name} certificate: {source}")]
    Cert {
        name: &'static str,
        source: rcgen::Error,
    },
    #[error(transparent)]
    Efi(#[from] EfiError),
    #[error(transparent)]
    Pcr(#[from] super::pcr::PcrKeyError),
    #[error(transparent)]
    Tool(#[from] ToolError),
}

/// The signature owner GUID of every list in the folder, as text.
pub const OWNER_FILE: &str = "owner.guid";

/// Which key signs each variable's update: the platform key signs itself
/// and KEK; KEK signs db (UEFI 2.10 §32.3).
fn signer(v: KeyVariable) -> KeyVariable {
    match v {
        KeyVariable::Pk | KeyVariable::Kek => KeyVariable::Pk,
        KeyVariable::Db => KeyVariable::Kek,
    }
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeysError> {
    write_new(path, bytes, mode).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => KeysError::Exists(path.to_path_buf()),
        _ => KeysError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    })
}

/// Make the three keys in `dir` (created if missing), their certificates
/// named `{common_name} PK` and so on. Returns the owner GUID.
pub fn keygen(dir: &Path, common_name: &str) -> Result<Guid, KeysError> {
    fs::create_dir_all(dir).map_err(|source| KeysError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    // Refuse before making anything, so a second run never leaves half a
    // folder of mismatched keys.
    for v in KeyVariable::ALL {
        for ext in ["key", "crt", "esl", "auth"] {
            let p = file(dir, v, ext);
            if p.exists() {
                return Err(KeysError::Exists(p));
            }
        }
    }
    for p in [OWNER_FILE, super::pcr::PRIVATE, super::pcr::PUBLIC].map(|f| dir.join(f)) {
        if p.exists() {
            return Err(KeysError::Exists(p));
        }
    }
    let owner_path = dir.join(OWNER_FILE);
    let mut random = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut random);
    let owner = Guid::from_random(random);
    for v in KeyVariable::ALL {
        let name = v.name();
        let rsa =
            rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).map_err(|e| KeysError::Rsa {
                name,
                error: e.to_string(),
            })?;
        let pem = rsa
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeysError::Rsa {
                name,
                error: e.to_string(),
            })?;
        let cert_err = |source| KeysError::Cert { name, source };
        let pair = rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256)
            .map_err(cert_err)?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{common_name} {name}"));
        let cert = params.self_signed(&pair).map_err(cert_err)?;
        write(&file(dir, v, "key"), pem.as_bytes(), 0o600)?;
        write(&file(dir, v, "crt"), cert.pem().as_bytes(), 0o644)?;
        let list = efi::x509_signature_list(owner, cert.der())?;
        write(&file(dir, v, "esl"), &list, 0o644)?;
    }
    for v in KeyVariable::ALL {
        let by = signer(v);
        tool::run(
            Command::new("sbvarsign")
                .arg("--key")
                .arg(file(dir, by, "key"))
                .arg("--cert")
                .arg(file(dir, by, "crt"))
                .args([
                    "--attr",
                    "NON_VOLATILE,BOOTSERVICE_ACCESS,RUNTIME_ACCESS,TIME_BASED_AUTHENTICATED_WRITE_ACCESS",
                    "--output",
                ])
                .arg(file(dir, v, "auth"))
                .arg(v.name())
                .arg(file(dir, v, "esl")),
        )?;
    }
    super::pcr::keygen(dir)?;
    write(&owner_path, format!("{owner}\n").as_bytes(), 0o644)?;
    Ok(owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pk_signs_itself_and_kek_and_kek_signs_db() {
        assert_eq!(signer(KeyVariable::Pk), KeyVariable::Pk);
        assert_eq!(signer(KeyVariable::Kek), KeyVariable::Pk);
        assert_eq!(signer(KeyVariable::Db), KeyVariable::Kek);
    }

    #[test]
    fn an_existing_key_is_never_overwritten() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("KEK.crt"), "mine").unwrap();
        let e = keygen(d.path(), "test").unwrap_err();
        assert!(matches!(e, KeysError::Exists(p) if p.ends_with("KEK.crt")));
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }
}

//! Secure Boot: the keys a platform owner enrolls (`keel keygen
//! --secure-boot`), signing systemd-boot and every UKI with the db key
//! (`keel build --secure-boot-key`), and a firmware variable store with the
//! keys enrolled for `keel run --secure-boot`.
//!
//! A key folder holds, for each of PK, KEK and db, `NAME.key` (PKCS#8,
//! 0600), `NAME.crt` (PEM), `NAME.esl` (the signature list firmware stores)
//! and `NAME.auth` (that list signed for `SetVariable`: PK and KEK by PK, db
//! by KEK), as systemd-boot's `loader/keys/NAME/` and sbctl lay them out.
//! A build copies the public files into `out/secure-boot/`. The folder
//! also holds the PCR signing key pair (`tpm2-pcr-*-key.pem`, [`pcr`]),
//! with which a build signs the PCR 11 policy that unseals an encrypted
//! `/var`.

pub mod keys;
pub mod pcr;
pub mod sign;
pub mod vars;

use std::path::{Path, PathBuf};

use keel_formats::efi::KeyVariable;

/// The folder of the output (and the ESP's `loader/keys/`) that holds the
/// public Secure Boot files.
pub const OUT_DIR: &str = "secure-boot";

/// The name systemd-boot shows for the enrollment entry (`loader/keys/keel/`).
pub const ENROLL_NAME: &str = "keel";

/// A file of a key folder.
pub fn file(dir: &Path, v: KeyVariable, ext: &str) -> PathBuf {
    dir.join(format!("{}.{ext}", v.name()))
}

/// The public files a build copies out of a key folder, when present.
pub const PUBLIC_EXTENSIONS: [&str; 3] = ["crt", "esl", "auth"];

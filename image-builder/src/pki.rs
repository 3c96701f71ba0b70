//! `keel pki`: a certificate authority in a folder, and the certificates
//! it issues: for servers (etcd, a host's remote API) with their names
//! as subject alternative names, and for clients (hosts reaching etcd, an
//! operator's keelctl) with a role in the subject's organization, as
//! talosctl's and Kubernetes' client certificates carry theirs.

use std::fs;
use std::path::{Path, PathBuf};

use keel_formats::pki::Role;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} exists: a CA is never overwritten")]
    Exists(PathBuf),
    #[error("{path}: {error}")]
    Ca { path: PathBuf, error: String },
    #[error("certificate name {0:?}: use 1 to 63 of a-z, 0-9, '-', '_', '.'")]
    Name(String),
    #[error("server name {name:?}: {error}")]
    ServerName { name: String, error: String },
    #[error("making the certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write `text` to a new file with `mode`; never over an existing one.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), PkiError> {
    crate::files::write_new(path, text.as_bytes(), mode).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => PkiError::Exists(path.to_path_buf()),
        _ => io(path)(e),
    })
}

fn validity(days: u32) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    // An hour back: a host whose clock lags still accepts it.
    (
        now - std::time::Duration::from_secs(3600),
        now + std::time::Duration::from_secs(u64::from(days) * 86_400),
    )
}

/// Make a CA in `dir`: `ca.pem` and `ca.key` (0600). The certificate.
pub fn init(dir: &Path, name: &str, days: u32) -> Result<PathBuf, PkiError> {
    use rcgen::{BasicConstraints, DnType, IsCa, KeyUsagePurpose};
    fs::create_dir_all(dir).map_err(io(dir))?;
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(PkiError::Exists(p.clone()));
        }
    }
    let mut p = rcgen::CertificateParams::default();
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (p.not_before, p.not_after) = validity(days);
    let key = rcgen::KeyPair::generate()?;
    let cert = p.self_signed(&key)?;
    write_new(&key_path, &key.serialize_pem(), 0o600)?;
    write_new(&cert_path, &cert.pem(), 0o644)?;
    Ok(cert_path)
}

/// What to issue.
#[derive(Debug, Clone)]
pub struct Issue<'a> {
    /// File names (NAME.pem, NAME.key) and the subject's common name.
    pub name: &'a str,
    /// DNS names or IP addresses a server answers as; none: a client
    /// certificate only.
    pub servers: &'a [String],
    /// A client's role; none: no role (a server, or etcd's clients).
    pub role: Option<Role>,
    pub days: u32,
}

/// Issue a certificate with the CA in `dir`: `NAME.pem` and `NAME.key`.
pub fn issue(dir: &Path, what: &Issue<'_>) -> Result<(PathBuf, PathBuf), PkiError> {
    use rcgen::{DnType, ExtendedKeyUsagePurpose, KeyUsagePurpose, SanType};
    if keel_formats::policy::check_group(what.name).is_err() {
        return Err(PkiError::Name(what.name.to_string()));
    }
    let (ca_cert, ca_key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    let read = |p: &Path| fs::read_to_string(p).map_err(io(p));
    let key_pem = read(&ca_key)?;
    let ca_key_pair = rcgen::KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Ca {
        path: ca_key.clone(),
        error: e.to_string(),
    })?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&read(&ca_cert)?, ca_key_pair).map_err(|e| {
        PkiError::Ca {
            path: ca_cert.clone(),
            error: e.to_string(),
        }
    })?;
    let mut p = rcgen::CertificateParams::default();
    for s in what.servers {
        let san = match s.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                let bad = |error: String| PkiError::ServerName {
                    name: s.clone(),
                    error,
                };
                let label_ok = |l: &str| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                };
                if s.len() > 253 || !s.split('.').all(label_ok) {
                    return Err(bad("not an IP address or a DNS name".into()));
                }
                SanType::DnsName(
                    s.clone()
                        .try_into()
                        .map_err(|e: rcgen::Error| bad(e.to_string()))?,
                )
            }
        };
        p.subject_alt_names.push(san);
    }
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, what.name);
    if let Some(r) = what.role {
        p.distinguished_name
            .push(DnType::OrganizationName, r.organization());
    }
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if !what.servers.is_empty() {
        p.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    p.use_authority_key_identifier_extension = true;
    (p.not_before, p.not_after) = validity(what.days);
    let key = rcgen::KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    let (cert_path, key_path) = (
        dir.join(format!("{}.pem", what.name)),
        dir.join(format!("{}.key", what.name)),
    );
    write_new(&key_path, &key.serialize_pem(), 0o600)?;
    write_new(&cert_path, &cert.pem(), 0o644)?;
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_and_never_overwrites() {
        let d = tempfile::tempdir().unwrap();
        let ca = init(d.path(), "keel CA", 3650).unwrap();
        assert!(fs::read_to_string(&ca)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(matches!(
            init(d.path(), "again", 1),
            Err(PkiError::Exists(_))
        ));
        let servers = ["127.0.0.1".to_string(), "etcd.example".to_string()];
        let (c, k) = issue(
            d.path(),
            &Issue {
                name: "etcd",
                servers: &servers,
                role: None,
                days: 365,
            },
        )
        .unwrap();
        assert!(c.ends_with("etcd.pem") && k.ends_with("etcd.key"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(
            issue(
                d.path(),
                &Issue {
                    name: "etcd",
                    servers: &[],
                    role: None,
                    days: 1
                }
            ),
            Err(PkiError::Exists(_))
        ));
        assert!(matches!(
            issue(
                d.path(),
                &Issue {
                    name: "../x",
                    servers: &[],
                    role: None,
                    days: 1
                }
            ),
            Err(PkiError::Name(_))
        ));
        assert!(matches!(
            issue(
                d.path(),
                &Issue {
                    name: "s",
                    servers: &["bad name".to_string()],
                    role: None,
                    days: 1
                }
            ),
            Err(PkiError::ServerName { .. })
        ));
        issue(
            d.path(),
            &Issue {
                name: "ops",
                servers: &[],
                role: Some(Role::ReadOnly),
                days: 1,
            },
        )
        .unwrap();
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            issue(
                empty.path(),
                &Issue {
                    name: "x",
                    servers: &[],
                    role: None,
                    days: 1
                }
            ),
            Err(PkiError::Io { .. })
        ));
    }
}

//! TLS for the remote API, both ends, from PEM: the server requires a
//! client certificate signed by one of the CAs the host config trusts,
//! the client checks the host's certificate against the CA it was given.
//! Roles are read from the client certificate's subject (O=`keel:admin`,
//! `keel:read-only`; [`keel_formats::pki`]).

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use keel_formats::pki::Role;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: {message}")]
    Pem { what: String, message: String },
    #[error("{what}: holds no certificate")]
    NoCert { what: String },
    #[error("{what}: {message}")]
    Setup { what: String, message: String },
    #[error("the client certificate: {0}")]
    Peer(String),
}

/// PEM text and what to call it in errors (its file's path).
#[derive(Debug, Clone, Copy)]
pub struct Pem<'a> {
    pub what: &'a str,
    pub text: &'a [u8],
}

/// One end's material: the CA it trusts for the other end, and its own
/// certificate chain and key.
#[derive(Debug, Clone, Copy)]
pub struct Material<'a> {
    pub ca: Pem<'a>,
    pub cert: Pem<'a>,
    pub key: Pem<'a>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(p: Pem<'_>) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(p.text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: p.what.into(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert {
            what: p.what.into(),
        });
    }
    Ok(certs)
}

fn key(p: Pem<'_>) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(p.text).map_err(|e| TlsError::Pem {
        what: p.what.into(),
        message: format!("no private key: {e}"),
    })
}

fn roots(p: Pem<'_>) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certs(p)? {
        store.add(c).map_err(|e| TlsError::Setup {
            what: p.what.into(),
            message: e.to_string(),
        })?;
    }
    Ok(Arc::new(store))
}

fn setup(what: &str) -> impl Fn(rustls::Error) -> TlsError + '_ {
    move |e| TlsError::Setup {
        what: what.into(),
        message: e.to_string(),
    }
}

/// The server's side: client certificates from `m.ca` only.
pub fn server_config(m: &Material<'_>) -> Result<ServerConfig, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(m.ca)?, provider())
        .build()
        .map_err(|e| TlsError::Setup {
            what: m.ca.what.into(),
            message: e.to_string(),
        })?;
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(setup(m.cert.what))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(m.cert)?, key(m.key)?)
        .map_err(setup(m.key.what))
}

/// The client's side: the host's certificate must chain to `m.ca`.
pub fn client_config(m: &Material<'_>) -> Result<ClientConfig, TlsError> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(setup(m.ca.what))?
        .with_root_certificates(roots(m.ca)?)
        .with_client_auth_cert(certs(m.cert)?, key(m.key)?)
        .map_err(setup(m.key.what))
}

/// Who a verified client certificate names, and the role it grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The subject's common name.
    pub name: String,
    /// The highest role among the subject's organizations; none: it
    /// may do nothing.
    pub role: Option<Role>,
}

/// Read the subject of a client certificate (DER) rustls verified.
pub fn peer(der: &[u8]) -> Result<Peer, TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::Peer(e.to_string()))?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .find_map(|a| a.as_str().ok())
        .unwrap_or("(no common name)")
        .to_string();
    let roles: Vec<Role> = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok())
        .filter_map(Role::from_organization)
        .collect();
    let role = if roles.contains(&Role::Admin) {
        Some(Role::Admin)
    } else {
        roles.first().copied()
    };
    Ok(Peer { name, role })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(cn: &str, orgs: &[&str]) -> Vec<u8> {
        make(cn, orgs).der().to_vec()
    }

    fn make(cn: &str, orgs: &[&str]) -> rcgen::Certificate {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, cn.to_string());
        for o in orgs {
            p.distinguished_name
                .push(rcgen::DnType::OrganizationName, o.to_string());
        }
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap()
    }

    #[test]
    fn the_role_comes_from_the_subjects_organization() {
        let p = peer(&cert_with("ops", &["keel:admin"])).unwrap();
        assert_eq!(
            p,
            Peer {
                name: "ops".into(),
                role: Some(Role::Admin)
            }
        );
        let p = peer(&cert_with("dash", &["keel:read-only"])).unwrap();
        assert_eq!(p.role, Some(Role::ReadOnly));
        let p = peer(&cert_with("both", &["keel:read-only", "keel:admin"])).unwrap();
        assert_eq!(p.role, Some(Role::Admin));
        let p = peer(&cert_with("none", &["Example Corp", "keel:root"])).unwrap();
        assert_eq!(p.role, None);
        assert!(peer(b"not DER").is_err());
    }

    #[test]
    fn bad_material_names_the_file() {
        let m = Material {
            ca: Pem {
                what: "/x/ca.pem",
                text: b"nothing here",
            },
            cert: Pem {
                what: "/x/cert.pem",
                text: b"",
            },
            key: Pem {
                what: "/x/key.pem",
                text: b"",
            },
        };
        let e = server_config(&m).unwrap_err().to_string();
        assert_eq!(e, "/x/ca.pem: holds no certificate");
        let ca_pem = make("ca", &[]).pem();
        let m = Material {
            ca: Pem {
                what: "/x/ca.pem",
                text: ca_pem.as_bytes(),
            },
            cert: Pem {
                what: "/x/cert.pem",
                text: ca_pem.as_bytes(),
            },
            ..m
        };
        let e = client_config(&m).unwrap_err().to_string();
        assert!(e.starts_with("/x/key.pem: no private key"), "{e}");
    }
}

//! PEM text a host config carries (CAs, certificates, keys), checked once
//! here for every field that holds some: each block must decode, and the
//! kind the field needs must be there. What the DER inside means is left
//! to the TLS library that uses it.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The parser's complaint in words (its own quotes raw bytes).
fn words(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { end_marker } => format!(
            "a block has no -----END {}----- line",
            String::from_utf8_lossy(end_marker)
        ),
        Error::IllegalSectionStart { .. } => "a -----BEGIN line is malformed".into(),
        Error::Base64Decode(_) => "a block is not base64".into(),
        Error::NoItemsFound => "no block of that kind".into(),
        other => other.to_string(),
    }
}

/// How many certificates `text` holds: at least one, each whole.
pub fn certificates(text: &str) -> Result<usize, String> {
    let mut n = 0usize;
    for c in CertificateDer::pem_slice_iter(text.as_bytes()) {
        c.map_err(|e| format!("not PEM text with certificates: {}", words(&e)))?;
        n = n.saturating_add(1);
    }
    if n == 0 {
        return Err(
            "not PEM text with a certificate (-----BEGIN CERTIFICATE----- … -----END CERTIFICATE-----)"
                .into(),
        );
    }
    Ok(n)
}

/// Whether `text` holds a private key (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(text: &str) -> Result<(), String> {
    PrivateKeyDer::from_pem_slice(text.as_bytes())
        .map(|_| ())
        .map_err(|e| {
            format!(
                "not PEM text with a private key (-----BEGIN PRIVATE KEY-----): {}",
                words(&e)
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n";

    #[test]
    fn certificates_are_counted_and_broken_ones_refused() {
        assert_eq!(certificates(CERT), Ok(1));
        assert_eq!(certificates(&format!("{CERT}{CERT}")), Ok(2));
        assert!(certificates("not pem").is_err());
        assert!(certificates("-----BEGIN CERTIFICATE-----").is_err());
        assert!(
            certificates("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").is_err()
        );
        assert!(
            certificates("-----BEGIN PRIVATE KEY-----\nMIIBAA==\n-----END PRIVATE KEY-----\n")
                .is_err()
        );
    }

    #[test]
    fn keys_need_a_key_block() {
        assert!(
            private_key("-----BEGIN PRIVATE KEY-----\nMIIBAA==\n-----END PRIVATE KEY-----\n")
                .is_ok()
        );
        assert!(private_key(CERT).is_err());
        assert!(private_key("").is_err());
    }
}

//! A test CA and the server certificates it signs, for TLS registries.

/// A CA for test registries' certificates.
#[derive(Debug, Clone)]
pub struct TestCa {
    pub cert_pem: String,
    key_pem: String,
}

impl TestCa {
    /// The CA's parameters; an issuer needs them again to sign.
    fn params() -> rcgen::CertificateParams {
        use rcgen::{BasicConstraints, DnType, IsCa, KeyUsagePurpose};
        let mut p = rcgen::CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, "keel test CA");
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p
    }

    pub fn generate() -> TestCa {
        let key = rcgen::KeyPair::generate().expect("generating the CA's key");
        let cert = TestCa::params()
            .self_signed(&key)
            .expect("self-signing the CA");
        TestCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A server certificate for `names` (IP addresses or DNS names, as
    /// subject alternative names), signed by this CA: (cert PEM, key PEM).
    pub fn server_cert(&self, names: &[&str]) -> (String, String) {
        use rcgen::{DnType, ExtendedKeyUsagePurpose, KeyUsagePurpose};
        let ca_key = rcgen::KeyPair::from_pem(&self.key_pem).expect("reading the CA's key");
        let issuer = rcgen::Issuer::new(TestCa::params(), ca_key);
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("certificate names");
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate().expect("generating a server key");
        let cert = p
            .signed_by(&key, &issuer)
            .expect("signing a server certificate");
        (cert.pem(), key.serialize_pem())
    }
}

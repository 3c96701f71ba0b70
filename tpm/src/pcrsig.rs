//! systemd's signed PCR policy (`.pcrsig` in a UKI, which systemd-stub
//! hands to the initrd as `/.extra/tpm2-pcr-signature.json`): for each
//! bank, the PCRs, the signing key's fingerprint, the approved policy
//! digest and its signature. keel writes and reads the same format so
//! that systemd's tools can read what keel signs, and the reverse.

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::policy::Sha256Digest;

#[derive(Debug, thiserror::Error)]
pub enum PcrSigError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("no SHA-256 entry for PCR {0} signed by key {1}")]
    NoEntry(u32, String),
    #[error("policy digest {0:?} is not 32 bytes of hex")]
    Policy(String),
    #[error("signature is not base64: {0}")]
    Signature(base64::DecodeError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub pcrs: Vec<u32>,
    /// SHA-256 of the signing key's DER SubjectPublicKeyInfo, hex.
    pub pkfp: String,
    /// The approved policy digest, hex.
    pub pol: String,
    /// The RSASSA-SHA256 signature of H(pol), base64.
    pub sig: String,
}

/// The file: entries per bank. Banks other than SHA-256 are kept but not
/// used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PcrSignature {
    #[serde(default)]
    pub sha256: Vec<Entry>,
}

/// A policy and its signature, ready for the TPM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub approved: Sha256Digest,
    pub signature: Vec<u8>,
}

impl PcrSignature {
    pub fn parse(json: &[u8]) -> Result<Self, PcrSigError> {
        Ok(serde_json::from_slice(json)?)
    }

    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings and numbers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The entry for exactly `pcrs`, signed by the key with fingerprint
    /// `pkfp` (there is one per boot phase in systemd's files; keel's
    /// UKIs carry the one stage 1 unseals in).
    pub fn find(&self, pcr: u32, pkfp: &str) -> Result<Signed, PcrSigError> {
        let e = self
            .sha256
            .iter()
            .find(|e| e.pcrs == [pcr] && e.pkfp.eq_ignore_ascii_case(pkfp))
            .ok_or_else(|| PcrSigError::NoEntry(pcr, pkfp.into()))?;
        let approved = hex::decode(&e.pol)
            .ok()
            .and_then(|v| Sha256Digest::try_from(v).ok())
            .ok_or_else(|| PcrSigError::Policy(e.pol.clone()))?;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(&e.sig)
            .map_err(PcrSigError::Signature)?;
        Ok(Signed {
            approved,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_entry_of_the_key_and_refuses_bad_fields() {
        let json = br#"{"sha256":[{"pcrs":[11],"pkfp":"AB","pol":"00000000000000000000000000000000000000000000000000000000000000ff","sig":"AQI="}]}"#;
        let s = PcrSignature::parse(json).unwrap();
        let e = s.find(11, "ab").unwrap();
        assert_eq!(e.approved[31], 0xff);
        assert_eq!(e.signature, [1, 2]);
        assert!(matches!(s.find(11, "cd"), Err(PcrSigError::NoEntry(11, _))));
        assert!(matches!(s.find(7, "ab"), Err(PcrSigError::NoEntry(7, _))));
        let bad = br#"{"sha256":[{"pcrs":[11],"pkfp":"ab","pol":"zz","sig":"AQI="}]}"#;
        assert!(matches!(
            PcrSignature::parse(bad).unwrap().find(11, "ab"),
            Err(PcrSigError::Policy(_))
        ));
        assert!(PcrSignature::parse(b"{\"sha256\":7}").is_err());
        assert_eq!(PcrSignature::parse(&s.to_json()).unwrap(), s);
    }
}

//! What a sealed key's policy is, computed without a TPM: the build signs
//! the PCR 11 policy of each UKI it makes, and stage 1 seals to the same
//! digests the TPM computes as it runs the policy commands. The formulas
//! are TPM 2.0 Part 3's PolicyUpdate, PolicyPCR and PolicyAuthorize.

use sha2::{Digest, Sha256};

use crate::wire::Writer;
use crate::TpmError;

pub const ALG_RSA: u16 = 0x0001;
pub const ALG_KEYEDHASH: u16 = 0x0008;
pub const ALG_SHA256: u16 = 0x000B;
pub const ALG_NULL: u16 = 0x0010;
pub const ALG_RSASSA: u16 = 0x0014;
pub const ALG_ECC: u16 = 0x0023;
pub const ALG_AES: u16 = 0x0006;
pub const ALG_CFB: u16 = 0x0043;
pub const CC_POLICY_AUTHORIZE: u32 = 0x0000_016A;
pub const CC_POLICY_PCR: u32 = 0x0000_017F;

/// The PCR that the firmware extends with the Secure Boot state and keys.
pub const PCR_SECURE_BOOT: u32 = 7;
/// The PCR that systemd-stub extends with the UKI's sections.
pub const PCR_KERNEL: u32 = 11;

/// What stage 1 extends PCR 11 with before it unseals and after (the
/// words systemd-pcrphase uses): a key sealed to the "enter-initrd" value
/// cannot be unsealed again once the host has left stage 1.
pub const PHASE_ENTER_INITRD: &str = "enter-initrd";
pub const PHASE_LEAVE_INITRD: &str = "leave-initrd";

pub type Sha256Digest = [u8; 32];

/// `TPML_PCR_SELECTION` of the SHA-256 bank for `pcrs` (each below 24).
pub fn pcr_selection(pcrs: &[u32]) -> Result<Vec<u8>, TpmError> {
    let mut select = [0u8; 3];
    for &p in pcrs {
        let byte = select
            .get_mut(usize::try_from(p / 8).unwrap_or(usize::MAX))
            .ok_or(TpmError::Pcr(p))?;
        *byte |= 1 << (p % 8);
    }
    let mut w = Writer::default();
    w.u32(1).u16(ALG_SHA256).u8(3).bytes(&select);
    Ok(w.0)
}

/// The policy digest after `TPM2_PolicyPCR(pcrs)` when they hold `values`
/// (in PCR order), starting from `old`.
pub fn policy_pcr(
    old: &Sha256Digest,
    pcrs: &[u32],
    values: &[Sha256Digest],
) -> Result<Sha256Digest, TpmError> {
    let mut pcr_digest = Sha256::new();
    for v in values {
        pcr_digest.update(v);
    }
    let mut h = Sha256::new();
    h.update(old);
    h.update(CC_POLICY_PCR.to_be_bytes());
    h.update(pcr_selection(pcrs)?);
    h.update(pcr_digest.finalize());
    Ok(h.finalize().into())
}

/// The policy digest after `TPM2_PolicyAuthorize` by the key named
/// `key_name` with an empty policyRef: it replaces whatever came before,
/// which is what lets a key sealed to it follow every policy that key
/// signs.
pub fn policy_authorize(key_name: &[u8]) -> Sha256Digest {
    let mut h = Sha256::new();
    h.update([0u8; 32]);
    h.update(CC_POLICY_AUTHORIZE.to_be_bytes());
    h.update(key_name);
    let d = h.finalize();
    // PolicyUpdate's second hash, over the (empty) policyRef.
    Sha256::digest(d).into()
}

/// What the signing key signs for a policy: TPM2_VerifySignature's
/// digest, H(approvedPolicy || policyRef) with an empty policyRef.
pub fn authorization_digest(approved: &Sha256Digest) -> Sha256Digest {
    Sha256::digest(approved).into()
}

/// The sealed key's policy: authorized by `key_name` (PCR 11 as the
/// image's signing key approves), then PCR 7 at `pcr7`.
pub fn sealing_policy(key_name: &[u8], pcr7: &Sha256Digest) -> Result<Sha256Digest, TpmError> {
    policy_pcr(&policy_authorize(key_name), &[PCR_SECURE_BOOT], &[*pcr7])
}

/// `PCR ← H(PCR || H(data))`, as TPM2_PCR_Event and the EFI TCG protocol
/// extend.
pub fn extend(pcr: &mut Sha256Digest, data: &[u8]) {
    let mut h = Sha256::new();
    h.update(*pcr);
    h.update(Sha256::digest(data));
    *pcr = h.finalize().into();
}

/// The sections of a UKI that systemd-stub measures into PCR 11, in the
/// order it measures them (`.pcrsig` is not measured: it holds the
/// signature of this very value).
pub const MEASURED_SECTIONS: [&str; 7] = [
    ".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey",
];

/// PCR 11 as stage 1 sees it before unsealing: systemd-stub has measured
/// each present section's name (with its NUL) and contents, and stage 1
/// has extended [`PHASE_ENTER_INITRD`]. `sections` are (name, contents)
/// in any order; names outside [`MEASURED_SECTIONS`] are ignored.
pub fn predict_pcr11(sections: &[(&str, &[u8])]) -> Sha256Digest {
    let mut pcr = [0u8; 32];
    for name in MEASURED_SECTIONS {
        if let Some((_, data)) = sections.iter().find(|(n, _)| *n == name) {
            let mut with_nul = name.as_bytes().to_vec();
            with_nul.push(0);
            extend(&mut pcr, &with_nul);
            extend(&mut pcr, data);
        }
    }
    extend(&mut pcr, PHASE_ENTER_INITRD.as_bytes());
    pcr
}

/// A public key's fingerprint as systemd's `.pcrsig` names keys: SHA-256
/// of its DER SubjectPublicKeyInfo.
pub fn fingerprint(spki_der: &[u8]) -> Sha256Digest {
    Sha256::digest(spki_der).into()
}

const RSA_ENCRYPTION: spki::ObjectIdentifier =
    spki::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// An RSA public key as the TPM loads it for signature checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaPublic {
    pub modulus: Vec<u8>,
    pub exponent: u32,
}

impl RsaPublic {
    /// From a PEM `PUBLIC KEY` (SubjectPublicKeyInfo), as systemd's
    /// `.pcrpkey` holds it.
    pub fn from_pem(pem: &str) -> Result<Self, TpmError> {
        Ok(Self::from_pem_with_fingerprint(pem)?.0)
    }

    /// [`RsaPublic::from_pem`], and the key's fingerprint as `.pcrsig`
    /// names it: SHA-256 of its DER SubjectPublicKeyInfo.
    pub fn from_pem_with_fingerprint(pem: &str) -> Result<(Self, Sha256Digest), TpmError> {
        use spki::der::{DecodePem, Encode};
        let spki = spki::SubjectPublicKeyInfoOwned::from_pem(pem)
            .map_err(|e| TpmError::PublicKey(e.to_string()))?;
        let der = spki
            .to_der()
            .map_err(|e| TpmError::PublicKey(e.to_string()))?;
        Ok((Self::from_spki(&spki)?, fingerprint(&der)))
    }

    /// From DER SubjectPublicKeyInfo.
    pub fn from_der(der: &[u8]) -> Result<Self, TpmError> {
        use spki::der::Decode;
        let spki = spki::SubjectPublicKeyInfoOwned::from_der(der)
            .map_err(|e| TpmError::PublicKey(e.to_string()))?;
        Self::from_spki(&spki)
    }

    fn from_spki(spki: &spki::SubjectPublicKeyInfoOwned) -> Result<Self, TpmError> {
        use pkcs1::der::Decode;
        if spki.algorithm.oid != RSA_ENCRYPTION {
            return Err(TpmError::PublicKey(format!(
                "algorithm {} is not RSA",
                spki.algorithm.oid
            )));
        }
        let bits = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| TpmError::PublicKey("key bits are not whole bytes".into()))?;
        let key =
            pkcs1::RsaPublicKey::from_der(bits).map_err(|e| TpmError::PublicKey(e.to_string()))?;
        let modulus = key.modulus.as_bytes().to_vec();
        if modulus.len() != 256 {
            return Err(TpmError::PublicKey(format!(
                "an RSA key of {} bits; the TPM checks RSA-2048",
                modulus.len() * 8
            )));
        }
        let e = key.public_exponent.as_bytes();
        if e.len() > 4 {
            return Err(TpmError::PublicKey(
                "RSA exponent wider than 32 bits".into(),
            ));
        }
        let exponent = e.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        Ok(RsaPublic { modulus, exponent })
    }

    /// `TPMT_PUBLIC` for TPM2_LoadExternal: a signing key, usable without
    /// any authorization, as systemd loads its PCR key.
    pub fn tpmt_public(&self) -> Result<Vec<u8>, TpmError> {
        const SIGN_ENCRYPT: u32 = 1 << 18;
        const DECRYPT: u32 = 1 << 17;
        const USER_WITH_AUTH: u32 = 1 << 6;
        let mut w = Writer::default();
        w.u16(ALG_RSA)
            .u16(ALG_SHA256)
            .u32(SIGN_ENCRYPT | DECRYPT | USER_WITH_AUTH)
            .tpm2b(&[])?
            .u16(ALG_NULL) // symmetric
            .u16(ALG_NULL) // scheme
            .u16(2048)
            // 0 means the default exponent, and the TPM rejects an
            // explicit 65537 on some implementations.
            .u32(if self.exponent == 65537 {
                0
            } else {
                self.exponent
            })
            .tpm2b(&self.modulus)?;
        Ok(w.0)
    }

    /// The key's TPM name: nameAlg, then the hash of its `TPMT_PUBLIC`.
    pub fn name(&self) -> Result<Vec<u8>, TpmError> {
        let mut name = ALG_SHA256.to_be_bytes().to_vec();
        name.extend_from_slice(&Sha256::digest(self.tpmt_public()?));
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcr_selection_is_a_bitmap_of_three_bytes() {
        assert_eq!(
            pcr_selection(&[7, 11]).unwrap(),
            [0, 0, 0, 1, 0, 0x0b, 3, 0x80, 0x08, 0]
        );
        assert!(matches!(pcr_selection(&[24]), Err(TpmError::Pcr(24))));
    }

    #[test]
    fn an_authorized_policy_does_not_depend_on_what_came_before() {
        let a = policy_authorize(b"\x00\x0bname");
        assert_eq!(a, policy_authorize(b"\x00\x0bname"));
        assert_ne!(a, policy_authorize(b"\x00\x0bother"));
        let s = sealing_policy(b"\x00\x0bname", &[1; 32]).unwrap();
        assert_ne!(s, sealing_policy(b"\x00\x0bname", &[2; 32]).unwrap());
    }
}

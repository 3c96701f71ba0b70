//! The two flows: seal a secret to this boot chain (first boot), and
//! unseal it (every boot). The policy is systemd-cryptenroll's with
//! `--tpm2-public-key` and `--tpm2-pcrs=7`: PCR 11 as the image's signing
//! key approves it (so a newly signed UKI still unseals), then PCR 7 as it
//! was when sealed (the Secure Boot state and keys).

use crate::pcrsig::Signed;
use crate::policy::{authorization_digest, sealing_policy, RsaPublic, PCR_KERNEL, PCR_SECURE_BOOT};
use crate::{Handle, Sealed, Tpm, TpmError, Transport};

/// Which check refused the secret: what that means for the host differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Setting up the storage key or the session.
    Setup,
    /// The sealed object did not load: it was sealed by another TPM (or
    /// this one was cleared).
    Load,
    /// The signature is not one of the sealing key by the PCR key.
    Signature,
    /// PCR 11 is not the value the key signed: this UKI, or what ran
    /// after it, is not the signed one.
    Kernel,
    /// The sealed policy is not met though PCR 11 was: PCR 7 differs from
    /// when the secret was sealed (Secure Boot is off, or its keys
    /// changed), or the object was sealed to another PCR key (which stage 1
    /// rules out first by the key's fingerprint).
    SecureBoot,
}

#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", match .step {
    Step::Setup => "setting up the TPM",
    Step::Load => "the key was sealed by another TPM (or this TPM was cleared)",
    Step::Signature => "the PCR policy signature is not valid for the sealing key",
    Step::Kernel => "PCR 11 is not the value the image's key signed (another UKI, or not in stage 1)",
    Step::SecureBoot => "PCR 7 changed since the key was sealed (Secure Boot off, or other keys)",
})]
pub struct UnsealError {
    pub step: Step,
    pub source: TpmError,
}

fn at(step: Step) -> impl FnOnce(TpmError) -> UnsealError {
    move |source| UnsealError { step, source }
}

/// Seal `secret` so that [`unseal`] gives it back on this TPM while PCR 7
/// holds its current value and PCR 11 a value `key` signed.
pub fn seal<T: Transport>(
    tpm: &mut Tpm<T>,
    key: &RsaPublic,
    secret: &[u8],
) -> Result<Sealed, TpmError> {
    let pcr7 = tpm.pcr_read(PCR_SECURE_BOOT)?;
    let policy = sealing_policy(&key.name()?, &pcr7)?;
    let primary = tpm.create_primary()?;
    let sealed = tpm.seal(primary, secret, &policy);
    let flushed = tpm.flush(primary);
    let sealed = sealed?;
    flushed?;
    Ok(sealed)
}

/// Unseal what [`seal`] sealed, with `signed` (the approved PCR 11 policy
/// and its signature, from the UKI). Every handle is flushed on the way
/// out, whatever failed.
pub fn unseal<T: Transport>(
    tpm: &mut Tpm<T>,
    key: &RsaPublic,
    signed: &Signed,
    sealed: &Sealed,
    nonce: &[u8; 32],
) -> Result<Vec<u8>, UnsealError> {
    let mut loaded: Vec<Handle> = Vec::new();
    let r = unseal_inner(tpm, key, signed, sealed, nonce, &mut loaded);
    for h in loaded {
        let _ = tpm.flush(h);
    }
    r
}

fn unseal_inner<T: Transport>(
    tpm: &mut Tpm<T>,
    key: &RsaPublic,
    signed: &Signed,
    sealed: &Sealed,
    nonce: &[u8; 32],
    loaded: &mut Vec<Handle>,
) -> Result<Vec<u8>, UnsealError> {
    let primary = tpm.create_primary().map_err(at(Step::Setup))?;
    loaded.push(primary);
    let object = tpm.load(primary, sealed).map_err(at(Step::Load))?;
    loaded.push(object);
    let session = tpm.start_policy_session(nonce).map_err(at(Step::Setup))?;
    loaded.push(session);
    let (pubkey, name) = tpm.load_external(key).map_err(at(Step::Setup))?;
    loaded.push(pubkey);
    let ticket = tpm
        .verify_signature(
            pubkey,
            &authorization_digest(&signed.approved),
            &signed.signature,
        )
        .map_err(at(Step::Signature))?;
    tpm.policy_pcr(session, &[PCR_KERNEL])
        .map_err(at(Step::Setup))?;
    tpm.policy_authorize(session, &signed.approved, &name, &ticket)
        .map_err(at(Step::Kernel))?;
    tpm.policy_pcr(session, &[PCR_SECURE_BOOT])
        .map_err(at(Step::Setup))?;
    let secret = tpm.unseal(object, session).map_err(at(Step::SecureBoot))?;
    // The session was used up by Unseal (continueSession off).
    loaded.retain(|h| *h != session);
    Ok(secret)
}

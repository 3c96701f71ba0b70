//! The encrypted `/var`: made on first boot when the host can seal its key
//! (a TPM, Secure Boot enforced, and a UKI whose PCR policy is signed),
//! opened on every boot after. The header is `keel_formats::varcrypt`'s;
//! the key is sealed by `keel_tpm::seal` to PCR 7 and the signed PCR 11.
//!
//! Creation is power-cut safe without a journal: the fresh filesystem is
//! written into the volume first and the header (backup copy, then the
//! primary) last, so a boot that finds no header still finds the pristine
//! plain filesystem the image shipped, and starts over.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use keel_formats::varcrypt::{
    parse_recovery_key, recovery_key_text, Header, RecoverySlot, Template, Tpm2Slot, VarCryptError,
    DATA_OFFSET_SECTORS, HEADER_OFFSETS, HEADER_SIZE, KEY_BYTES, KEY_CHECK_LABEL, RECOVERY_BYTES,
    TEMPLATE_PATH,
};
use keel_tpm::pcrsig::{PcrSignature, Signed};
use keel_tpm::policy::{RsaPublic, PCR_KERNEL, PHASE_ENTER_INITRD, PHASE_LEAVE_INITRD};
use keel_tpm::seal::UnsealError;
use keel_tpm::{Device, Tpm, TpmError};
use ring::rand::SecureRandom;

use super::dm;
use crate::log;

/// What systemd-stub hands stage 1 from the UKI's `.pcrpkey` and `.pcrsig`.
pub const PCR_PUBLIC_KEY: &str = "/.extra/tpm2-pcr-public-key.pem";
pub const PCR_SIGNATURE: &str = "/.extra/tpm2-pcr-signature.json";
/// Where a recovery key is put on the ESP to open `/var` on a host whose
/// TPM no longer unseals it; stage 1 removes it once it has opened `/var`
/// with it (and resealed the key, when this boot can).
pub const RECOVERY_FILE: &str = "keel/var-recovery-key";
/// The dm-crypt device's name.
pub const MAPPER_NAME: &str = "keel-var";

#[derive(Debug, thiserror::Error)]
pub enum VarError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Header(#[from] VarCryptError),
    #[error(transparent)]
    Tpm(#[from] TpmError),
    #[error("/var is encrypted and stays locked: {tpm}; no recovery key in ESP:/{RECOVERY_FILE}")]
    Locked { tpm: String },
    #[error("ESP:/{RECOVERY_FILE}: {0}")]
    Recovery(String),
    #[error(transparent)]
    Dm(#[from] dm::DmError),
    #[error("{0}")]
    Pcr(String),
    #[error("random numbers: {0}")]
    Random(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VarError + '_ {
    move |source| VarError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The PCR policy the booted UKI carries.
#[derive(Debug)]
pub struct BootPolicy {
    pub key: RsaPublic,
    pub pkfp: [u8; 32],
    pub signed: Signed,
}

/// What this boot offers to seal or unseal with.
#[derive(Debug)]
pub struct Offer {
    pub tpm: Option<PathBuf>,
    pub policy: Option<Result<BootPolicy, VarError>>,
    pub secure_boot: bool,
}

impl Offer {
    /// `secure_boot`: the firmware's SecureBoot variable, read once for
    /// stage 1 and PID 1.
    pub fn probe(secure_boot: Option<bool>) -> Offer {
        let tpm = keel_tpm::DEVICES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        let policy = Path::new(PCR_PUBLIC_KEY)
            .exists()
            .then(|| boot_policy(Path::new(PCR_PUBLIC_KEY), Path::new(PCR_SIGNATURE)));
        Offer {
            tpm,
            policy,
            secure_boot: secure_boot == Some(true),
        }
    }

    /// Why this boot does not make an encrypted `/var`, if it does not.
    fn cannot_seal(&self) -> Option<String> {
        match (&self.tpm, &self.policy) {
            (None, _) => Some("no TPM".into()),
            (_, None) => Some("the UKI carries no signed PCR policy".into()),
            (_, Some(Err(e))) => Some(format!("the UKI's PCR policy: {e}")),
            _ if !self.secure_boot => Some(
                "Secure Boot is not enforced (a key sealed to that state protects nothing)".into(),
            ),
            _ => None,
        }
    }
}

fn boot_policy(key: &Path, sig: &Path) -> Result<BootPolicy, VarError> {
    let pem = std::fs::read_to_string(key).map_err(io(key))?;
    let (key, pkfp) = RsaPublic::from_pem_with_fingerprint(&pem)?;
    let json = std::fs::read(sig).map_err(io(sig))?;
    let signed = PcrSignature::parse(&json)
        .and_then(|s| s.find(PCR_KERNEL, &hex::encode(pkfp)))
        .map_err(|e| VarError::Pcr(format!("{PCR_SIGNATURE}: {e}")))?;
    Ok(BootPolicy { key, pkfp, signed })
}

/// Extend PCR 11 with a boot phase, as systemd-pcrphase does; a host
/// without a TPM has nothing to extend.
fn enter_phase(offer: &Offer, phase: &str) -> Result<(), TpmError> {
    let Some(path) = &offer.tpm else {
        return Ok(());
    };
    Tpm::new(Device::open(path)?).pcr_extend(PCR_KERNEL, phase.as_bytes())
}

/// Before unsealing: PCR 11 reaches the value the image key signed. A
/// failure only means the TPM will not unseal.
pub fn enter_initrd(offer: &Offer) {
    if let Err(e) = enter_phase(offer, PHASE_ENTER_INITRD) {
        log(format!(
            "warning: extending PCR 11 with {PHASE_ENTER_INITRD}: {e}"
        ));
    }
}

/// After this, the running system cannot unseal `/var`'s key again; the
/// caller stops the boot if this fails while the key is unsealable.
pub fn leave_initrd(offer: &Offer) -> Result<(), VarError> {
    enter_phase(offer, PHASE_LEAVE_INITRD).map_err(|e| {
        VarError::Pcr(format!(
            "extending PCR 11 with {PHASE_LEAVE_INITRD} failed ({e}): the running host could unseal /var's key"
        ))
    })
}

fn random<const N: usize>() -> Result<[u8; N], VarError> {
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|e| VarError::Random(e.to_string()))?;
    Ok(b)
}

fn key_check(key: &[u8]) -> [u8; 32] {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&k, KEY_CHECK_LABEL);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// The AES-256-GCM key a recovery key wraps the volume key with:
/// HKDF-SHA256 of it (256 random bits need no password stretching).
fn recovery_aead(recovery: &[u8], salt: &[u8; 16]) -> Result<ring::aead::LessSafeKey, VarError> {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, salt).extract(recovery);
    let okm = prk
        .expand(&[b"keel /var recovery"], &ring::aead::AES_256_GCM)
        .map_err(|_| VarError::Random("HKDF".into()))?;
    Ok(ring::aead::LessSafeKey::new(ring::aead::UnboundKey::from(
        okm,
    )))
}

fn wrap(recovery: &[u8; RECOVERY_BYTES], key: &[u8]) -> Result<RecoverySlot, VarError> {
    let salt = random::<16>()?;
    let nonce = random::<12>()?;
    let mut wrapped = key.to_vec();
    recovery_aead(recovery, &salt)?
        .seal_in_place_append_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::empty(),
            &mut wrapped,
        )
        .map_err(|_| VarError::Random("AES-GCM".into()))?;
    Ok(RecoverySlot {
        salt,
        nonce,
        wrapped,
    })
}

fn unwrap(recovery: &[u8; RECOVERY_BYTES], slot: &RecoverySlot) -> Option<Vec<u8>> {
    let mut buf = slot.wrapped.clone();
    let key = recovery_aead(recovery, &slot.salt)
        .ok()?
        .open_in_place(
            ring::aead::Nonce::assume_unique_for_key(slot.nonce),
            ring::aead::Aad::empty(),
            &mut buf,
        )
        .ok()?
        .to_vec();
    Some(key)
}

/// The data partition, open for what this module does to it.
#[derive(Debug)]
pub struct Partition {
    pub node: PathBuf,
    pub dev: (u32, u32),
    pub sectors: u64,
}

/// The device stage 1 mounts as `/var`, and its sysfs name.
#[derive(Debug)]
pub struct Opened {
    pub node: PathBuf,
    pub sysfs_name: Option<String>,
}

fn read_headers(f: &File, node: &Path) -> Result<[Vec<u8>; 2], VarError> {
    let mut copies = [vec![0u8; HEADER_SIZE], vec![0u8; HEADER_SIZE]];
    for (copy, at) in copies.iter_mut().zip(HEADER_OFFSETS) {
        f.read_exact_at(copy, at).map_err(io(node))?;
    }
    Ok(copies)
}

fn write_header(f: &File, node: &Path, h: &Header) -> Result<(), VarError> {
    let block = h.encode()?;
    // Backup first: a power cut during the primary's write leaves the
    // backup whole.
    for at in [HEADER_OFFSETS[1], HEADER_OFFSETS[0]] {
        f.write_all_at(&block, at).map_err(io(node))?;
        f.sync_all().map_err(io(node))?;
    }
    Ok(())
}

/// Open the data partition: the dm-crypt volume if it has a header, a new
/// one if this boot can seal and the plain filesystem is the untouched one
/// the image shipped, else the plain filesystem.
pub fn open(part: &Partition, offer: &Offer) -> Result<Opened, VarError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&part.node)
        .map_err(io(&part.node))?;
    let [primary, backup] = read_headers(&f, &part.node)?;
    let plain = Opened {
        node: part.node.clone(),
        sysfs_name: None,
    };
    match Header::decode_either(&primary, &backup) {
        Ok((header, stale)) => {
            let (key, recovered) = unlock(header.clone(), offer)?;
            match &recovered {
                Some(h) => write_header(&f, &part.node, h)?,
                None if stale => write_header(&f, &part.node, &header)?,
                None => {}
            }
            // Only now that the header with the new TPM slot is on disk.
            if recovered.is_some() {
                remove_recovery_file();
            }
            crypt(part, &key)
        }
        Err(VarCryptError::Pending) => match offer.cannot_seal() {
            None => create(part, &f, offer),
            Some(why) => Err(VarError::Pcr(format!(
                "{}, and this boot cannot finish it: {why}",
                VarCryptError::Pending
            ))),
        },
        Err(VarCryptError::NoHeader) => {
            if let Some(why) = offer.cannot_seal() {
                if offer.tpm.is_some() {
                    log(format!("stage 1: /var is not encrypted: {why}"));
                }
                return Ok(plain);
            }
            if !pristine(&primary) {
                log("stage 1: /var is not encrypted: it holds data from before this image could seal it (keel encrypts /var on the first boot only)".to_string());
                return Ok(plain);
            }
            create(part, &f, offer)
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether `first` (the partition's first 4 KiB) holds the ext4 the image
/// shipped, never mounted nor checked since mkfs: no mounts, no mount
/// time, and its last write the mkfs itself (a mount, or an e2fsck that
/// resets the mount count, each write the superblock's time).
fn pristine(first: &[u8]) -> bool {
    let sb = first.get(1024..2048).unwrap_or(&[]);
    let u32_at = |at: usize| {
        sb.get(at..at.saturating_add(4))
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let mounts = sb.get(0x34..0x36).map(|b| u16::from_le_bytes([b[0], b[1]]));
    super::ext4::geometry(sb).is_some()
        && mounts == Some(0)
        && u32_at(0x2c) == Some(0)
        && u32_at(0x30).is_some()
        && u32_at(0x30) == u32_at(0x108)
}

/// The volume key, and the header to write when the recovery key opened
/// it (resealed to this TPM when this boot can seal).
fn unlock(header: Header, offer: &Offer) -> Result<(Vec<u8>, Option<Header>), VarError> {
    let start = crate::boot_ms();
    let tpm_err = match unseal(&header, offer) {
        Ok(key) => {
            log(format!(
                "stage 1: /var unsealed by the TPM in {} ms",
                crate::boot_ms().saturating_sub(start)
            ));
            return Ok((key, None));
        }
        Err(e) => e,
    };
    log(format!("stage 1: the TPM does not open /var: {tpm_err}"));
    let Some(text) = read_recovery_file()? else {
        return Err(VarError::Locked { tpm: tpm_err });
    };
    let recovery = parse_recovery_key(&text)?;
    let key = header
        .recovery
        .as_ref()
        .and_then(|slot| unwrap(&recovery, slot))
        .filter(|k| key_check(k) == header.key_check)
        .ok_or_else(|| VarError::Recovery("that is not this /var's recovery key".into()))?;
    log("stage 1: /var opened with its recovery key".to_string());
    let mut new = header.clone();
    new.seq = new.seq.saturating_add(1);
    match offer.cannot_seal() {
        Some(why) => log(format!("stage 1: /var stays sealed as it was: {why}")),
        None => match seal(&key, offer) {
            Ok(slot) => {
                new.tpm2 = Some(slot);
                log("stage 1: /var's key sealed to this TPM and boot chain again".to_string());
            }
            Err(e) => log(format!("warning: resealing /var's key: {e}")),
        },
    }
    Ok((key, Some(new)))
}

fn unseal(header: &Header, offer: &Offer) -> Result<Vec<u8>, String> {
    let slot = header.tpm2.as_ref().ok_or("the header has no TPM slot")?;
    let path = offer.tpm.as_ref().ok_or("no TPM")?;
    let policy = match &offer.policy {
        None => return Err("the UKI carries no signed PCR policy".into()),
        Some(Err(e)) => return Err(format!("the UKI's PCR policy: {e}")),
        Some(Ok(p)) => p,
    };
    if policy.pkfp != slot.pkfp {
        return Err(format!(
            "the UKI's PCR key {} is not the key /var was sealed to ({})",
            hex::encode(policy.pkfp),
            hex::encode(slot.pkfp)
        ));
    }
    let mut tpm = Tpm::new(Device::open(path).map_err(|e| e.to_string())?);
    let sealed = keel_tpm::Sealed {
        public: slot.public.clone(),
        private: slot.private.clone(),
    };
    let nonce = random::<32>().map_err(|e| e.to_string())?;
    let key = keel_tpm::seal::unseal(&mut tpm, &policy.key, &policy.signed, &sealed, &nonce)
        .map_err(|e: UnsealError| e.to_string())?;
    if key_check(&key) != header.key_check {
        return Err("the TPM's key is not this /var's key".into());
    }
    Ok(key)
}

fn seal(key: &[u8], offer: &Offer) -> Result<Tpm2Slot, VarError> {
    let (Some(path), Some(Ok(policy))) = (&offer.tpm, &offer.policy) else {
        return Err(VarError::Pcr("nothing to seal with".into()));
    };
    let mut tpm = Tpm::new(Device::open(path)?);
    let sealed = keel_tpm::seal::seal(&mut tpm, &policy.key, key)?;
    Ok(Tpm2Slot {
        pkfp: policy.pkfp,
        public: sealed.public,
        private: sealed.private,
    })
}

fn crypt(part: &Partition, key: &[u8]) -> Result<Opened, VarError> {
    let sectors = part.sectors.saturating_sub(DATA_OFFSET_SECTORS);
    let dev = dm::create_crypt(MAPPER_NAME, part.dev, key, DATA_OFFSET_SECTORS, sectors)?;
    let node = PathBuf::from(format!("/dev/{MAPPER_NAME}"));
    crate::sys::mknod_block(&node, dev).map_err(|e| VarError::Pcr(e.to_string()))?;
    Ok(Opened {
        node,
        sysfs_name: Some(format!("dm-{}", dev.1)),
    })
}

/// First boot: a new volume key, sealed and wrapped by a new recovery
/// key, the image's fresh filesystem written into the volume, the header
/// last.
fn create(part: &Partition, f: &File, offer: &Offer) -> Result<Opened, VarError> {
    let start = crate::boot_ms();
    let template_bytes =
        std::fs::read(Path::new("/").join(TEMPLATE_PATH)).map_err(io(Path::new(TEMPLATE_PATH)))?;
    let template = Template::decode(&template_bytes)?;
    let key = random::<KEY_BYTES>()?;
    let recovery = random::<RECOVERY_BYTES>()?;
    let header = Header {
        seq: 1,
        key_check: key_check(&key),
        tpm2: Some(seal(&key, offer)?),
        recovery: Some(wrap(&recovery, &key)?),
    };
    // Unseal it once before anything is written: a PCR 11 prediction
    // that does not match this firmware and stub would otherwise make a
    // /var that no later boot opens.
    if let Err(why) = unseal(&header, offer) {
        log(format!(
            "stage 1: /var is not encrypted: the key this boot sealed does not unseal ({why})"
        ));
        return Ok(Opened {
            node: part.node.clone(),
            sysfs_name: None,
        });
    }
    let mut pending = vec![0u8; HEADER_SIZE];
    pending[..8].copy_from_slice(keel_formats::varcrypt::PENDING_MAGIC);
    f.write_all_at(&pending, HEADER_OFFSETS[1])
        .and_then(|()| f.sync_all())
        .map_err(io(&part.node))?;
    let opened = crypt(part, &key)?;
    let size = part
        .sectors
        .saturating_sub(DATA_OFFSET_SECTORS)
        .saturating_mul(512);
    let written = write_template(&opened.node, size, &template)
        .and_then(|()| write_header(f, &part.node, &header));
    if let Err(e) = written {
        let _ = dm::remove(MAPPER_NAME);
        return Err(e);
    }
    log(format!(
        "stage 1: /var encrypted, its key sealed to this TPM (PCR 7 and the image key's PCR 11), in {} ms",
        crate::boot_ms().saturating_sub(start)
    ));
    log(format!(
        "stage 1: /var recovery key (shown once; keep it off this host): {}",
        recovery_key_text(&recovery)
    ));
    Ok(opened)
}

/// Write `t` whole into `node` (of `size` bytes): its blocks, and zeros
/// between them (an encrypted zero is not a zero on disk).
fn write_template(node: &Path, size: u64, t: &Template<'_>) -> Result<(), VarError> {
    const CHUNK_BLOCKS: usize = 256;
    let bs = Template::BLOCK;
    let too_large = || VarError::Pcr(format!("the /var template is larger than {size} bytes"));
    let total = t
        .blocks
        .checked_mul(bs as u64)
        .filter(|n| *n <= size)
        .ok_or_else(too_large)?;
    let out = std::fs::OpenOptions::new()
        .write(true)
        .open(node)
        .map_err(io(node))?;
    let mut buf = vec![0u8; CHUNK_BLOCKS.saturating_mul(bs)];
    let mut next = t.data.iter().peekable();
    let mut at: u64 = 0;
    while at < total {
        let len = usize::try_from(total.saturating_sub(at))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let chunk = &mut buf[..len];
        chunk.fill(0);
        let end = at.saturating_add(len as u64);
        while let Some((b, data)) = next.next_if(|(b, _)| b.saturating_mul(bs as u64) < end) {
            let off = usize::try_from(b.saturating_mul(bs as u64).saturating_sub(at))
                .unwrap_or(usize::MAX);
            if let Some(dst) = chunk.get_mut(off..off.saturating_add(bs)) {
                dst.copy_from_slice(data);
            }
        }
        out.write_all_at(chunk, at).map_err(io(node))?;
        at = end;
    }
    out.sync_all().map_err(io(node))
}

/// The ESP, mounted for a moment to read or remove the recovery file;
/// None (and why, logged) if it did not mount.
fn with_esp<T>(f: impl FnOnce(&Path) -> T) -> Option<T> {
    let dir = Path::new("/esp");
    let mounted = crate::sys::mkdir_p(dir, 0o700)
        .map_err(|e| e.to_string())
        .and_then(|()| super::blockdev::mount_esp(dir));
    if let Err(e) = mounted {
        log(format!("warning: mounting the ESP: {e}"));
        return None;
    }
    let r = f(dir);
    let _ = nix::mount::umount(dir);
    Some(r)
}

fn read_recovery_file() -> Result<Option<String>, VarError> {
    match with_esp(|esp| std::fs::read_to_string(esp.join(RECOVERY_FILE))) {
        None => {
            log("warning: the ESP did not mount: no recovery key read from it".to_string());
            Ok(None)
        }
        Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Some(Err(e)) => Err(VarError::Recovery(e.to_string())),
        Some(Ok(text)) => Ok(Some(text)),
    }
}

fn remove_recovery_file() {
    let removed = with_esp(|esp| {
        let p = esp.join(RECOVERY_FILE);
        let r = std::fs::remove_file(&p);
        // FAT has no journal: the removal is on disk before /var is used.
        nix::unistd::sync();
        r
    });
    match removed {
        Some(Ok(())) => {}
        Some(Err(e)) => log(format!("warning: removing ESP:/{RECOVERY_FILE}: {e}")),
        None => log(format!(
            "warning: the ESP did not mount: ESP:/{RECOVERY_FILE} is still there; delete it"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recovery_key_unwraps_only_its_own_volume_key() {
        let key = [9u8; KEY_BYTES];
        let recovery = [1u8; RECOVERY_BYTES];
        let slot = wrap(&recovery, &key).unwrap();
        assert_eq!(unwrap(&recovery, &slot).unwrap(), key);
        assert_eq!(unwrap(&[2u8; RECOVERY_BYTES], &slot), None);
        let mut bad = slot.clone();
        bad.wrapped[3] ^= 1;
        assert_eq!(unwrap(&recovery, &bad), None);
        assert_eq!(key_check(&key), key_check(&key));
        assert_ne!(key_check(&key), key_check(&[8u8; KEY_BYTES]));
    }

    #[test]
    fn only_a_never_mounted_ext4_is_pristine() {
        let mut first = vec![0u8; 4096];
        assert!(!pristine(&first));
        first[1024 + 0x38..1024 + 0x3a].copy_from_slice(&0xef53u16.to_le_bytes());
        first[1024 + 4..1024 + 8].copy_from_slice(&1000u32.to_le_bytes());
        // mkfs with E2FSPROGS_FAKE_TIME=1: written at 1, made at 1.
        first[1024 + 0x30] = 1;
        first[1024 + 0x108] = 1;
        assert!(pristine(&first));
        let mut mounted = first.clone();
        mounted[1024 + 0x34] = 1;
        assert!(!pristine(&mounted));
        // e2fsck resets the mount count but writes the superblock anew.
        let mut checked = first.clone();
        checked[1024 + 0x30] = 7;
        assert!(!pristine(&checked));
        let mut once = first.clone();
        once[1024 + 0x2c] = 9;
        assert!(!pristine(&once));
    }

    #[test]
    fn an_offer_without_tpm_key_or_secure_boot_does_not_seal() {
        let mut o = Offer {
            tpm: None,
            policy: None,
            secure_boot: true,
        };
        assert_eq!(o.cannot_seal().unwrap(), "no TPM");
        o.tpm = Some("/dev/tpmrm0".into());
        assert!(o.cannot_seal().unwrap().contains("no signed PCR policy"));
        o.policy = Some(Err(VarError::Pcr("bad".into())));
        assert!(o.cannot_seal().unwrap().contains("bad"));
        o.policy = Some(Ok(BootPolicy {
            key: RsaPublic {
                modulus: vec![1; 256],
                exponent: 65537,
            },
            pkfp: [0; 32],
            signed: Signed {
                approved: [0; 32],
                signature: vec![],
            },
        }));
        assert_eq!(o.cannot_seal(), None);
        o.secure_boot = false;
        assert!(o
            .cannot_seal()
            .unwrap()
            .contains("Secure Boot is not enforced"));
    }
}

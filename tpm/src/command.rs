//! The TPM 2.0 commands keel uses, marshalled by hand: no maintained
//! pure-Rust TSS builds for a static musl PID 1 (tss-esapi binds the C
//! tpm2-tss), and keel needs a dozen commands, each a few fields.

use crate::policy::{pcr_selection, RsaPublic, Sha256Digest, ALG_AES, ALG_CFB, ALG_ECC};
use crate::policy::{ALG_KEYEDHASH, ALG_NULL, ALG_RSASSA, ALG_SHA256};
use crate::wire::{Reader, Writer};
use crate::{TpmError, Transport};

const ST_NO_SESSIONS: u16 = 0x8001;
const ST_SESSIONS: u16 = 0x8002;
const RH_OWNER: u32 = 0x4000_0001;
const RH_NULL: u32 = 0x4000_0007;
const RS_PW: u32 = 0x4000_0009;
const SE_POLICY: u8 = 0x01;
const ECC_NIST_P256: u16 = 0x0003;

const CC_CREATE_PRIMARY: u32 = 0x131;
const CC_CREATE: u32 = 0x153;
const CC_LOAD: u32 = 0x157;
const CC_UNSEAL: u32 = 0x15E;
const CC_FLUSH_CONTEXT: u32 = 0x165;
const CC_LOAD_EXTERNAL: u32 = 0x167;
const CC_POLICY_AUTHORIZE: u32 = crate::policy::CC_POLICY_AUTHORIZE;
const CC_START_AUTH_SESSION: u32 = 0x176;
const CC_VERIFY_SIGNATURE: u32 = 0x177;
const CC_PCR_READ: u32 = 0x17E;
const CC_POLICY_PCR: u32 = crate::policy::CC_POLICY_PCR;
const CC_PCR_EXTEND: u32 = 0x182;

/// A loaded object or session; flushed by [`Tpm::flush`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle(pub u32);

/// A sealed object as the TPM returns it from TPM2_Create: both halves are
/// what is stored on disk (the private half is encrypted to the TPM's
/// storage key, so it opens only on this TPM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub public: Vec<u8>,
    pub private: Vec<u8>,
}

/// A TPM reached through `T`.
#[derive(Debug)]
pub struct Tpm<T> {
    transport: T,
}

/// What one command sends: its code, handles, whether the handles need a
/// session (and which), and its parameters.
struct Command {
    code: u32,
    handles: Vec<u32>,
    session: Option<u32>,
    params: Vec<u8>,
}

impl<T: Transport> Tpm<T> {
    pub fn new(transport: T) -> Self {
        Tpm { transport }
    }

    /// Send `c`; the response's handles and parameters (after the
    /// parameter size, when there are sessions).
    fn run(
        &mut self,
        name: &'static str,
        c: Command,
        out_handles: usize,
    ) -> Result<Vec<u8>, TpmError> {
        let mut body = Writer::default();
        for h in &c.handles {
            body.u32(*h);
        }
        if let Some(session) = c.session {
            // One session: its handle, an empty nonce, continueSession off
            // (a policy session is used once), an empty HMAC/password.
            let mut auth = Writer::default();
            auth.u32(session).u16(0).u8(0).u16(0);
            body.u32(auth.0.len() as u32).bytes(&auth.0);
        }
        body.bytes(&c.params);
        let mut cmd = Writer::default();
        let size = u32::try_from(10 + body.0.len()).map_err(|_| TpmError::TooLong(body.0.len()))?;
        cmd.u16(if c.session.is_some() {
            ST_SESSIONS
        } else {
            ST_NO_SESSIONS
        })
        .u32(size)
        .u32(c.code)
        .bytes(&body.0);
        let resp = self.transport.transact(&cmd.0)?;
        let mut r = Reader::new(&resp);
        let tag = r.u16("response tag")?;
        let _size = r.u32("response size")?;
        let rc = r.u32("response code")?;
        if rc != 0 {
            return Err(TpmError::Response {
                command: name,
                code: rc,
            });
        }
        let mut out = r.take(4 * out_handles, "response handles")?.to_vec();
        if tag == ST_SESSIONS {
            let n = r.u32("parameter size")?;
            out.extend_from_slice(r.take(n as usize, "response parameters")?);
        } else {
            out.extend_from_slice(r.rest());
        }
        Ok(out)
    }

    /// The storage root key: an ECC P-256 primary under the owner
    /// hierarchy with the attributes of TCG's SRK template (and an empty
    /// unique field), the same key on every call because the TPM derives
    /// it from its owner seed and the template.
    pub fn create_primary(&mut self) -> Result<Handle, TpmError> {
        const ATTRS: u32 =
            (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 10) | (1 << 16) | (1 << 17);
        let mut public = Writer::default();
        public
            .u16(ALG_ECC)
            .u16(ALG_SHA256)
            .u32(ATTRS)
            .tpm2b(&[])?
            .u16(ALG_AES)
            .u16(128)
            .u16(ALG_CFB)
            .u16(ALG_NULL) // scheme
            .u16(ECC_NIST_P256)
            .u16(ALG_NULL) // kdf
            .tpm2b(&[])?
            .tpm2b(&[])?;
        let mut p = Writer::default();
        p.tpm2b(&[0, 0, 0, 0])? // sensitive: empty userAuth and data
            .tpm2b(&public.0)?
            .tpm2b(&[])? // outsideInfo
            .u32(0); // creationPCR
        let out = self.run(
            "CreatePrimary",
            Command {
                code: CC_CREATE_PRIMARY,
                handles: vec![RH_OWNER],
                session: Some(RS_PW),
                params: p.0,
            },
            1,
        )?;
        Ok(Handle(Reader::new(&out).u32("primary handle")?))
    }

    /// Seal `secret` under `parent` so that only a policy session whose
    /// digest is `policy` unseals it.
    pub fn seal(
        &mut self,
        parent: Handle,
        secret: &[u8],
        policy: &Sha256Digest,
    ) -> Result<Sealed, TpmError> {
        // fixedTPM | fixedParent, and no userWithAuth: the policy is the
        // only way in.
        const ATTRS: u32 = (1 << 1) | (1 << 4);
        let mut sensitive = Writer::default();
        sensitive.tpm2b(&[])?.tpm2b(secret)?;
        let mut public = Writer::default();
        public
            .u16(ALG_KEYEDHASH)
            .u16(ALG_SHA256)
            .u32(ATTRS)
            .tpm2b(policy)?
            .u16(ALG_NULL)
            .tpm2b(&[])?;
        let mut p = Writer::default();
        p.tpm2b(&sensitive.0)?.tpm2b(&public.0)?.tpm2b(&[])?.u32(0);
        let out = self.run(
            "Create",
            Command {
                code: CC_CREATE,
                handles: vec![parent.0],
                session: Some(RS_PW),
                params: p.0,
            },
            0,
        )?;
        let mut r = Reader::new(&out);
        let private = r.tpm2b("outPrivate")?.to_vec();
        let public = r.tpm2b("outPublic")?.to_vec();
        Ok(Sealed { public, private })
    }

    /// Load a sealed object under `parent`. On another TPM this fails:
    /// the private half does not decrypt under its storage key.
    pub fn load(&mut self, parent: Handle, sealed: &Sealed) -> Result<Handle, TpmError> {
        let mut p = Writer::default();
        p.tpm2b(&sealed.private)?.tpm2b(&sealed.public)?;
        let out = self.run(
            "Load",
            Command {
                code: CC_LOAD,
                handles: vec![parent.0],
                session: Some(RS_PW),
                params: p.0,
            },
            1,
        )?;
        Ok(Handle(Reader::new(&out).u32("object handle")?))
    }

    /// A policy session with no salt and no binding.
    pub fn start_policy_session(&mut self, nonce: &[u8; 32]) -> Result<Handle, TpmError> {
        let mut p = Writer::default();
        p.tpm2b(nonce)?
            .tpm2b(&[])?
            .u8(SE_POLICY)
            .u16(ALG_NULL)
            .u16(ALG_SHA256);
        let out = self.run(
            "StartAuthSession",
            Command {
                code: CC_START_AUTH_SESSION,
                handles: vec![RH_NULL, RH_NULL],
                session: None,
                params: p.0,
            },
            1,
        )?;
        Ok(Handle(Reader::new(&out).u32("session handle")?))
    }

    /// Extend `session`'s policy with the current values of `pcrs`.
    pub fn policy_pcr(&mut self, session: Handle, pcrs: &[u32]) -> Result<(), TpmError> {
        let mut p = Writer::default();
        p.tpm2b(&[])?.bytes(&pcr_selection(pcrs)?);
        self.run(
            "PolicyPCR",
            Command {
                code: CC_POLICY_PCR,
                handles: vec![session.0],
                session: None,
                params: p.0,
            },
            0,
        )?;
        Ok(())
    }

    /// Load `key` for signature checks; its handle and TPM name.
    pub fn load_external(&mut self, key: &RsaPublic) -> Result<(Handle, Vec<u8>), TpmError> {
        let mut p = Writer::default();
        // The owner hierarchy: a ticket from the null hierarchy is one
        // PolicyAuthorize refuses.
        p.tpm2b(&[])?.tpm2b(&key.tpmt_public()?)?.u32(RH_OWNER);
        let out = self.run(
            "LoadExternal",
            Command {
                code: CC_LOAD_EXTERNAL,
                handles: vec![],
                session: None,
                params: p.0,
            },
            1,
        )?;
        let mut r = Reader::new(&out);
        let h = Handle(r.u32("key handle")?);
        Ok((h, r.tpm2b("key name")?.to_vec()))
    }

    /// Have the TPM check an RSASSA-SHA256 `signature` of `digest` by
    /// `key`; the ticket that proves it did.
    pub fn verify_signature(
        &mut self,
        key: Handle,
        digest: &Sha256Digest,
        signature: &[u8],
    ) -> Result<Vec<u8>, TpmError> {
        let mut p = Writer::default();
        p.tpm2b(digest)?
            .u16(ALG_RSASSA)
            .u16(ALG_SHA256)
            .tpm2b(signature)?;
        let out = self.run(
            "VerifySignature",
            Command {
                code: CC_VERIFY_SIGNATURE,
                handles: vec![key.0],
                session: None,
                params: p.0,
            },
            0,
        )?;
        // TPMT_TK_VERIFIED: tag, hierarchy, digest; passed back as is.
        let mut r = Reader::new(&out);
        let head = r.take(6, "ticket")?;
        let digest = r.tpm2b("ticket digest")?;
        let mut t = Writer::default();
        t.bytes(head).tpm2b(digest)?;
        Ok(t.0)
    }

    /// Replace `session`'s policy, which must be `approved`, with the
    /// authorization of the key named `key_name`, proven by `ticket`.
    pub fn policy_authorize(
        &mut self,
        session: Handle,
        approved: &Sha256Digest,
        key_name: &[u8],
        ticket: &[u8],
    ) -> Result<(), TpmError> {
        let mut p = Writer::default();
        p.tpm2b(approved)?
            .tpm2b(&[])?
            .tpm2b(key_name)?
            .bytes(ticket);
        self.run(
            "PolicyAuthorize",
            Command {
                code: CC_POLICY_AUTHORIZE,
                handles: vec![session.0],
                session: None,
                params: p.0,
            },
            0,
        )?;
        Ok(())
    }

    /// The sealed data of `object`, if `session` satisfies its policy.
    pub fn unseal(&mut self, object: Handle, session: Handle) -> Result<Vec<u8>, TpmError> {
        let out = self.run(
            "Unseal",
            Command {
                code: CC_UNSEAL,
                handles: vec![object.0],
                session: Some(session.0),
                params: vec![],
            },
            0,
        )?;
        Ok(Reader::new(&out).tpm2b("sealed data")?.to_vec())
    }

    /// The SHA-256 value of one PCR.
    pub fn pcr_read(&mut self, pcr: u32) -> Result<Sha256Digest, TpmError> {
        let out = self.run(
            "PCR_Read",
            Command {
                code: CC_PCR_READ,
                handles: vec![],
                session: None,
                params: pcr_selection(&[pcr])?,
            },
            0,
        )?;
        let mut r = Reader::new(&out);
        r.u32("update counter")?;
        let n = r.u32("selection count")?;
        for _ in 0..n {
            r.u16("selection hash")?;
            let size = r.u8("selection size")?;
            r.take(usize::from(size), "selection")?;
        }
        if r.u32("digest count")? != 1 {
            return Err(TpmError::Pcr(pcr));
        }
        r.tpm2b("pcr value")?
            .try_into()
            .map_err(|_| TpmError::Pcr(pcr))
    }

    /// Extend `pcr` in the SHA-256 bank with the hash of `data`.
    pub fn pcr_extend(&mut self, pcr: u32, data: &[u8]) -> Result<(), TpmError> {
        use sha2::Digest;
        let mut p = Writer::default();
        p.u32(1).u16(ALG_SHA256).bytes(&sha2::Sha256::digest(data));
        self.run(
            "PCR_Extend",
            Command {
                code: CC_PCR_EXTEND,
                handles: vec![pcr],
                session: Some(RS_PW),
                params: p.0,
            },
            0,
        )?;
        Ok(())
    }

    /// Forget a loaded object or session.
    pub fn flush(&mut self, h: Handle) -> Result<(), TpmError> {
        let mut p = Writer::default();
        p.u32(h.0);
        self.run(
            "FlushContext",
            Command {
                code: CC_FLUSH_CONTEXT,
                handles: vec![],
                session: None,
                params: p.0,
            },
            0,
        )?;
        Ok(())
    }
}

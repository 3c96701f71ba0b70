//! The seal and unseal flows against a real TPM: Debian's swtpm, over its
//! socket, with keys and signatures made by openssl (an independent
//! implementation of what `keel build` signs).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use keel_tpm::pcrsig::Signed;
use keel_tpm::policy::{policy_pcr, RsaPublic, PCR_KERNEL, PCR_SECURE_BOOT};
use keel_tpm::seal::{seal, unseal, Step};
use keel_tpm::{Tpm, TpmError, Transport};

struct Swtpm {
    child: Child,
    _state: tempfile::TempDir,
    port: u16,
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn swtpm() -> Swtpm {
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let ctrl = free_port();
    let mut child = Command::new("swtpm")
        .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
        .arg("--tpmstate")
        .arg(format!("dir={}", state.path().display()))
        .args([
            "--server",
            &format!("type=tcp,port={port},bindaddr=127.0.0.1"),
        ])
        .args([
            "--ctrl",
            &format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"),
        ])
        .spawn()
        .expect("swtpm (Debian package swtpm) must be installed: cargo xtask deps");
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            // swtpm serves one connection at a time; that probe was one.
            std::thread::sleep(std::time::Duration::from_millis(50));
            return Swtpm {
                child,
                _state: state,
                port,
            };
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("swtpm did not listen on port {port}");
}

/// swtpm's data socket carries raw TPM commands and responses.
struct Socket(TcpStream);

impl Transport for Socket {
    fn transact(&mut self, command: &[u8]) -> Result<Vec<u8>, TpmError> {
        let io = |source| TpmError::Device {
            path: "swtpm".into(),
            source,
        };
        self.0.write_all(command).map_err(io)?;
        let mut head = [0u8; 10];
        self.0.read_exact(&mut head).map_err(io)?;
        let size = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as usize;
        let mut resp = head.to_vec();
        resp.resize(size.max(10), 0);
        self.0.read_exact(&mut resp[10..]).map_err(io)?;
        Ok(resp)
    }
}

fn connect(s: &Swtpm) -> Tpm<Socket> {
    Tpm::new(Socket(TcpStream::connect(("127.0.0.1", s.port)).unwrap()))
}

fn openssl(args: &[&str]) {
    let st = Command::new("openssl")
        .args(args)
        .status()
        .expect("openssl");
    assert!(st.success(), "openssl {args:?}");
}

/// An RSA-2048 key pair: (private PEM path, public key).
fn keypair(dir: &Path, name: &str) -> (PathBuf, RsaPublic) {
    let key = dir.join(format!("{name}.key"));
    let pem = dir.join(format!("{name}.pem"));
    openssl(&["genrsa", "-out", key.to_str().unwrap(), "2048"]);
    openssl(&[
        "rsa",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-out",
        pem.to_str().unwrap(),
    ]);
    let public = RsaPublic::from_pem(&std::fs::read_to_string(&pem).unwrap()).unwrap();
    (key, public)
}

/// Approve PCR 11 holding `pcr11`, signed by `key` as `keel build` signs.
fn sign(dir: &Path, key: &Path, pcr11: &[u8; 32]) -> Signed {
    let approved = policy_pcr(&[0; 32], &[PCR_KERNEL], &[*pcr11]).unwrap();
    let msg = dir.join("approved");
    let sig = dir.join("sig");
    std::fs::write(&msg, approved).unwrap();
    openssl(&[
        "dgst",
        "-sha256",
        "-sign",
        key.to_str().unwrap(),
        "-out",
        sig.to_str().unwrap(),
        msg.to_str().unwrap(),
    ]);
    Signed {
        approved,
        signature: std::fs::read(&sig).unwrap(),
    }
}

#[test]
fn a_sealed_key_opens_only_for_signed_pcr_11_the_same_pcr_7_and_the_same_tpm() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keypair(dir.path(), "pcr");
    let (other_key, other_public) = keypair(dir.path(), "other");
    let s = swtpm();
    let mut tpm = connect(&s);
    let nonce = [7u8; 32];

    // What keel computes as the key's name is what the TPM computes.
    let (h, name) = tpm.load_external(&public).unwrap();
    assert_eq!(name, public.name().unwrap());
    tpm.flush(h).unwrap();

    let secret = [0x5au8; 64];
    let sealed = seal(&mut tpm, &public, &secret).unwrap();
    let pcr11 = tpm.pcr_read(PCR_KERNEL).unwrap();
    let good = sign(dir.path(), &key, &pcr11);
    assert_eq!(
        unseal(&mut tpm, &public, &good, &sealed, &nonce).unwrap(),
        secret
    );

    // A signature by another key over the same policy.
    let forged = sign(dir.path(), &other_key, &pcr11);
    let e = unseal(&mut tpm, &public, &forged, &sealed, &nonce).unwrap_err();
    assert_eq!(e.step, Step::Signature, "{e}");
    // Another key's own valid signature does not satisfy the sealed
    // policy, which names the image's key.
    let e = unseal(&mut tpm, &other_public, &forged, &sealed, &nonce).unwrap_err();
    assert_eq!(e.step, Step::SecureBoot, "{e}");

    // After stage 1 leaves, PCR 11 moves on and the same signature no
    // longer opens it; a signature for the new value (an update) does.
    tpm.pcr_extend(PCR_KERNEL, b"leave-initrd").unwrap();
    let e = unseal(&mut tpm, &public, &good, &sealed, &nonce).unwrap_err();
    assert_eq!(e.step, Step::Kernel, "{e}");
    assert!(e.to_string().contains("PCR 11"), "{e}");
    let pcr11 = tpm.pcr_read(PCR_KERNEL).unwrap();
    let update = sign(dir.path(), &key, &pcr11);
    assert_eq!(
        unseal(&mut tpm, &public, &update, &sealed, &nonce).unwrap(),
        secret
    );

    // The Secure Boot state changes.
    tpm.pcr_extend(PCR_SECURE_BOOT, b"secure boot off").unwrap();
    let e = unseal(&mut tpm, &public, &update, &sealed, &nonce).unwrap_err();
    assert_eq!(e.step, Step::SecureBoot, "{e}");

    // Another TPM: the same blob does not even load.
    let s2 = swtpm();
    let mut tpm2 = connect(&s2);
    let e = unseal(&mut tpm2, &public, &update, &sealed, &nonce).unwrap_err();
    assert_eq!(e.step, Step::Load, "{e}");

    // Nothing was left loaded: a TPM holds only a few transient objects,
    // and every flow above flushed its own.
    for _ in 0..8 {
        let h = tpm.create_primary().unwrap();
        tpm.flush(h).unwrap();
    }
}

#[test]
fn a_hostile_sealed_blob_is_an_error_from_the_tpm_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keypair(dir.path(), "pcr");
    let s = swtpm();
    let mut tpm = connect(&s);
    let pcr11 = tpm.pcr_read(PCR_KERNEL).unwrap();
    let good = sign(dir.path(), &key, &pcr11);
    let mut sealed = seal(&mut tpm, &public, b"secret").unwrap();
    sealed.private[20] ^= 1;
    let e = unseal(&mut tpm, &public, &good, &sealed, &[1; 32]).unwrap_err();
    assert_eq!(e.step, Step::Load, "{e}");
    sealed.private.clear();
    assert!(unseal(&mut tpm, &public, &good, &sealed, &[1; 32]).is_err());
}

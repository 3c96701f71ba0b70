//! TPM 2.0 for keel: the few commands that seal `/var`'s key to the boot
//! chain and unseal it in stage 1 ([`command`]), the policy digests they
//! produce, computed without a TPM so the build can sign them
//! ([`policy`]), systemd's signed-policy format ([`pcrsig`]) and the two
//! flows stage 1 runs ([`seal`]).
//!
//! The host effect is one seam, [`Transport`]: a command's bytes in, the
//! response's bytes out. [`Device`] is the kernel's TPM character device;
//! the tests drive a real swtpm over its socket.

pub mod command;
pub mod pcrsig;
pub mod policy;
pub mod seal;
pub mod wire;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub use command::{Handle, Sealed, Tpm};

#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    #[error("{path}: {source}")]
    Device {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TPM2_{command} failed: response code {code:#x}")]
    Response { command: &'static str, code: u32 },
    #[error("TPM response ends inside its {0}")]
    Short(&'static str),
    #[error("a {0}-byte TPM buffer is too long")]
    TooLong(usize),
    #[error("PCR {0} is not a SHA-256 PCR this TPM reads")]
    Pcr(u32),
    #[error("PCR signing key: {0}")]
    PublicKey(String),
}

/// One TPM command's bytes in, its response out.
pub trait Transport {
    fn transact(&mut self, command: &[u8]) -> Result<Vec<u8>, TpmError>;
}

/// The kernel's TPM device. `/dev/tpmrm0` (the in-kernel resource manager,
/// which also flushes what a crashed caller left loaded) when there is
/// one, else `/dev/tpm0`.
#[derive(Debug)]
pub struct Device {
    path: PathBuf,
    file: std::fs::File,
}

/// Where the kernel puts TPM devices.
pub const DEVICES: [&str; 2] = ["/dev/tpmrm0", "/dev/tpm0"];

impl Device {
    pub fn open(path: &Path) -> Result<Self, TpmError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| TpmError::Device {
                path: path.into(),
                source,
            })?;
        Ok(Device {
            path: path.into(),
            file,
        })
    }
}

impl Transport for Device {
    fn transact(&mut self, command: &[u8]) -> Result<Vec<u8>, TpmError> {
        let err = |source| TpmError::Device {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(command).map_err(err)?;
        // The driver hands back one whole response per read; 4096 bytes is
        // the largest TPM 2.0 response buffer.
        let mut buf = vec![0u8; 4096];
        let n = self
            .file
            .read(&mut buf)
            .map_err(|source| TpmError::Device {
                path: self.path.clone(),
                source,
            })?;
        buf.truncate(n);
        Ok(buf)
    }
}

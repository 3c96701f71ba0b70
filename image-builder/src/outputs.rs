//! What a build leaves besides the raw disk: a qcow2 disk, the kernel and
//! initramfs for direct boot, and a manifest of every component for audit.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::progress::Progress;
use crate::tool::{self, ToolError};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tool(#[from] ToolError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Direct-boot files beside the disk: `keel run --direct` boots them with
/// QEMU's own loader, without firmware or boot loader.
pub const DIRECT_KERNEL: &str = "vmlinuz";
pub const DIRECT_INITRD: &str = "initramfs.img";
pub const DIRECT_CMDLINE: &str = "cmdline.txt";
pub const MANIFEST: &str = "manifest.json";

/// Write the kernel, initramfs and command line for direct boot into `out`.
pub fn write_direct(
    out: &Path,
    kernel: &[u8],
    initrd: &[u8],
    cmdline: &str,
) -> Result<(), OutputError> {
    for (name, bytes) in [
        (DIRECT_KERNEL, kernel),
        (DIRECT_INITRD, initrd),
        (DIRECT_CMDLINE, cmdline.as_bytes()),
    ] {
        let p = out.join(name);
        fs::write(&p, bytes).map_err(io_err(&p))?;
    }
    Ok(())
}

/// Convert the raw disk to a compressed qcow2 with `qemu-img`, relaying
/// its progress.
pub fn qcow2(raw: &Path, out: &Path, progress: &mut dyn Progress) -> Result<(), OutputError> {
    let _ = fs::remove_file(out);
    tool::run_reading(
        Command::new("qemu-img")
            .args(["convert", "-p", "-c", "-f", "raw", "-O", "qcow2"])
            .arg(raw)
            .arg(out),
        |stdout| relay_qemu_img_progress(stdout, progress),
    )?;
    Ok(())
}

/// `qemu-img -p` rewrites `    (12.50/100%)` on one line with `\r`: each
/// becomes hundredths of a percent done.
pub fn relay_qemu_img_progress(mut from: impl std::io::Read, progress: &mut dyn Progress) {
    let mut pending = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\r' || b == b'\n') {
            let item: Vec<u8> = pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&item);
            let pct = text
                .trim()
                .strip_prefix('(')
                .and_then(|t| t.split_once('/'))
                .and_then(|(p, _)| p.parse::<f64>().ok());
            if let Some(p) = pct {
                progress.advance((p * 100.0).round() as u64, 10_000);
            }
        }
    }
}

/// One input or artifact of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    pub name: String,
    pub version: String,
    /// Where it came from: a Debian package, a source package, keel itself,
    /// a file of the recipe.
    pub source: String,
    pub sha256: String,
}

/// `manifest.json`: everything that went into an image and everything it
/// came out as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub image: String,
    pub version: String,
    pub root_hash: String,
    pub components: Vec<Component>,
    pub artifacts: Vec<Component>,
}

pub fn sha256_file(p: &Path) -> Result<String, OutputError> {
    let mut f = fs::File::open(p).map_err(io_err(p))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io_err(p))?;
    Ok(hex::encode(h.finalize()))
}

pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The installed version of Debian package `pkg`, as dpkg knows it.
pub fn debian_version(pkg: &str) -> Option<String> {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", pkg])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
}

pub fn write_manifest(out: &Path, m: &Manifest) -> Result<PathBuf, OutputError> {
    let p = out.join(MANIFEST);
    let text = serde_json::to_string_pretty(m).map_err(|e| io_err(&p)(e.into()))?;
    fs::write(&p, text + "\n").map_err(io_err(&p))?;
    Ok(p)
}

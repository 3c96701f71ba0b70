//! `keel run`: boot a disk in QEMU.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::bail;

use keel_image_builder::qemu::{self, Accel, RunOptions};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    pub disk: PathBuf,
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,
    #[arg(long, default_value_t = 512)]
    pub memory: u32,
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Firmware variable store; created from OVMF's template if missing.
    /// Default: DISK.vars beside the disk.
    #[arg(long)]
    pub vars: Option<PathBuf>,
    /// Exit instead of rebooting the guest.
    #[arg(long)]
    pub no_reboot: bool,
    /// GUEST:HOST — guest connections to 10.0.2.100:GUEST reach
    /// 127.0.0.1:HOST.
    #[arg(long = "forward", value_parser = parse_forward)]
    pub forwards: Vec<(u16, u16)>,
    /// HOST:GUEST — 127.0.0.1:HOST on this machine reaches the guest's
    /// port GUEST (`--publish 8080:80` for the web service).
    #[arg(long = "publish", short = 'p', value_parser = parse_publish)]
    pub publish: Vec<(u16, u16)>,
    /// Boot with Secure Boot enforced: OVMF's Secure Boot firmware and a
    /// variable store (DISK.secboot.vars unless --vars) that has the keys
    /// of --secure-boot-keys enrolled when it is made.
    #[arg(long, conflicts_with = "direct")]
    pub secure_boot: bool,
    /// The folder with PK.esl, KEK.esl and db.esl; default: the
    /// `secure-boot` folder beside the disk, which a signed build writes.
    #[arg(long, requires = "secure_boot")]
    pub secure_boot_keys: Option<PathBuf>,
    /// Boot the kernel and initramfs beside the disk (the recipe's
    /// `direct` output) without firmware: faster, for iterating. The
    /// disk still holds the root and /var.
    #[arg(long)]
    pub direct: bool,
    /// Give the guest a TPM 2.0 (swtpm) whose state lives in this folder:
    /// the same folder is the same TPM on the next run, another folder
    /// another TPM.
    #[arg(long)]
    pub tpm: Option<PathBuf>,
}

fn parse_publish(s: &str) -> Result<(u16, u16), String> {
    let (h, g) = s.split_once(':').ok_or("expected HOST:GUEST")?;
    Ok((
        h.parse().map_err(|_| format!("bad host port {h:?}"))?,
        g.parse().map_err(|_| format!("bad guest port {g:?}"))?,
    ))
}

fn parse_forward(s: &str) -> Result<(u16, u16), String> {
    let (g, h) = s.split_once(':').ok_or("expected GUEST:HOST")?;
    Ok((
        g.parse().map_err(|_| format!("bad guest port {g:?}"))?,
        h.parse().map_err(|_| format!("bad host port {h:?}"))?,
    ))
}

/// `keel run`: never returns on success (QEMU replaces this process).
pub fn run_cmd(a: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        disk,
        accel,
        memory,
        cpus,
        vars,
        no_reboot,
        forwards,
        publish,
        direct,
        secure_boot,
        secure_boot_keys,
        tpm,
    } = a;
    let direct = if direct {
        Some(qemu::Direct::beside(&disk)?)
    } else {
        None
    };
    let vars = vars.unwrap_or_else(|| {
        let mut v = disk.clone().into_os_string();
        v.push(if secure_boot {
            ".secboot.vars"
        } else {
            ".vars"
        });
        v.into()
    });
    let secure_boot = secure_boot.then(|| {
        secure_boot_keys.unwrap_or_else(|| {
            disk.parent()
                .unwrap_or(Path::new("."))
                .join(keel_image_builder::secureboot::OUT_DIR)
        })
    });
    let o = RunOptions {
        disk,
        vars,
        accel,
        memory_mib: memory,
        cpus,
        no_reboot,
        forwards,
        publish,
        direct,
        secure_boot,
        tpm,
    };
    let kvm = qemu::prepare(&o)?;
    if let Some(state) = &o.tpm {
        qemu::start_tpm(state)?;
    }
    let err = Command::new("qemu-system-x86_64")
        .args(qemu::qemu_args(&o, kvm))
        .exec();
    bail!("starting qemu-system-x86_64 (apt-get install qemu-system-x86): {err}")
}

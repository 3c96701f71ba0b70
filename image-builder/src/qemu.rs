//! `keel run`: boot a disk image in QEMU through OVMF with the serial
//! console on stdio. Guest networking is QEMU's user network with
//! `restrict=on`, so nothing the guest sends leaves the machine.

use std::path::{Path, PathBuf};

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// OVMF built with Secure Boot and SMM: only code in SMM may write the
/// variable store, so a guest's OS cannot rewrite its own keys.
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM where it can run ordinary guests, TCG elsewhere.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub disk: PathBuf,
    pub vars: PathBuf,
    pub accel: Accel,
    pub memory_mib: u32,
    pub cpus: u32,
    pub no_reboot: bool,
    /// `guestfwd` rules: (guest port on 10.0.2.100, host port on 127.0.0.1).
    pub forwards: Vec<(u16, u16)>,
    /// `hostfwd` rules: (host port on 127.0.0.1, guest port): a service of
    /// the guest reachable from this machine.
    pub publish: Vec<(u16, u16)>,
    /// Boot this kernel and initramfs with QEMU's loader instead of the
    /// firmware (`keel run --direct`); the disk still holds the root.
    pub direct: Option<Direct>,
    /// Boot with OVMF's Secure Boot firmware; a missing variable store is
    /// made with the signature lists of this folder enrolled.
    pub secure_boot: Option<PathBuf>,
    /// Give the guest a TPM 2.0: Debian's swtpm, keeping its state in
    /// this folder (the same folder is the same TPM on the next run).
    pub tpm: Option<PathBuf>,
}

/// swtpm's control socket inside its state folder.
pub fn tpm_socket(state: &Path) -> PathBuf {
    state.join("swtpm.sock")
}

#[derive(Debug, Clone)]
pub struct Direct {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
}

impl Direct {
    /// The direct-boot files `keel build` wrote beside `disk`.
    pub fn beside(disk: &Path) -> Result<Direct, RunError> {
        let dir = disk.parent().unwrap_or(Path::new("."));
        let file = |name: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(RunError::NoDirect(p))
            }
        };
        let cmdline_path = file(crate::outputs::DIRECT_CMDLINE)?;
        let cmdline = std::fs::read_to_string(&cmdline_path).map_err(|source| RunError::Io {
            path: cmdline_path,
            source,
        })?;
        Ok(Direct {
            kernel: file(crate::outputs::DIRECT_KERNEL)?,
            initrd: file(crate::outputs::DIRECT_INITRD)?,
            cmdline: cmdline.trim().to_string(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("starting the TPM emulator: {0}")]
    Tpm(crate::tool::ToolError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is missing: apt-get install ovmf")]
    NoOvmf(PathBuf),
    #[error("{0}: no such disk image or block device (build one with `keel build`)")]
    NoDisk(PathBuf),
    #[error("{0} is missing: direct boot needs the recipe's `direct` output")]
    NoDirect(PathBuf),
    #[error("{0} is missing: --secure-boot enrolls the keys a signed build (keel build --secure-boot-key) writes there")]
    NoKeys(PathBuf),
    #[error("{path}: {source}")]
    Vars {
        path: PathBuf,
        source: crate::secureboot::vars::VarsError,
    },
}

/// Whether `/dev/kvm` can run an ordinary guest here. The paravirtual KVM
/// of `kvm_pvm` hosts cannot (QEMU hangs booting Linux on it).
pub fn kvm_usable() -> bool {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    dev && !Path::new("/sys/module/kvm_pvm").exists()
}

/// The QEMU command line for `o` (`kvm`: whether KVM is to be used).
pub fn qemu_args(o: &RunOptions, kvm: bool) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    // SMM, and flash that only SMM may write, are what make the Secure
    // Boot firmware's variables tamper-proof from the guest.
    let machine = if o.secure_boot.is_some() && o.direct.is_none() {
        "q35,smm=on"
    } else {
        "q35"
    };
    push(&[
        "-machine",
        machine,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
    ]);
    if kvm {
        push(&["-accel", "kvm", "-cpu", "host"]);
    } else {
        push(&["-accel", "tcg", "-cpu", "max"]);
    }
    a.extend([
        "-smp".into(),
        o.cpus.to_string(),
        "-m".into(),
        o.memory_mib.to_string(),
    ]);
    match &o.direct {
        Some(d) => a.extend([
            "-kernel".into(),
            d.kernel.display().to_string(),
            "-initrd".into(),
            d.initrd.display().to_string(),
            "-append".into(),
            d.cmdline.clone(),
        ]),
        None => a.extend([
            "-global".into(),
            format!(
                "driver=cfi.pflash01,property=secure,value={}",
                if o.secure_boot.is_some() { "on" } else { "off" }
            ),
            "-drive".into(),
            format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                if o.secure_boot.is_some() {
                    OVMF_CODE_SECBOOT
                } else {
                    OVMF_CODE
                }
            ),
            "-drive".into(),
            format!("if=pflash,format=raw,unit=1,file={}", o.vars.display()),
        ]),
    }
    a.extend([
        "-drive".into(),
        format!("if=none,id=disk0,format=raw,file={}", o.disk.display()),
        "-device".into(),
        "virtio-blk-pci,drive=disk0".into(),
    ]);
    let mut net = "user,id=n0,restrict=on".to_string();
    for (guest, host) in &o.forwards {
        net.push_str(&format!(
            ",guestfwd=tcp:10.0.2.100:{guest}-cmd:socat - TCP:127.0.0.1:{host}"
        ));
    }
    // Loopback only: a published port is for this machine, not its network.
    for (host, guest) in &o.publish {
        net.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
    }
    a.extend([
        "-netdev".into(),
        net,
        "-device".into(),
        "virtio-net-pci,netdev=n0".into(),
    ]);
    a.extend([
        "-device".into(),
        "virtio-rng-pci".into(),
        "-serial".into(),
        "mon:stdio".into(),
    ]);
    if let Some(state) = &o.tpm {
        a.extend([
            "-chardev".into(),
            format!("socket,id=tpmchr,path={}", tpm_socket(state).display()),
            "-tpmdev".into(),
            "emulator,id=tpm0,chardev=tpmchr".into(),
            // CRB, as TPM 2.0 on current PCs: what OVMF measures through.
            "-device".into(),
            "tpm-crb,tpmdev=tpm0".into(),
        ]);
    }
    if o.no_reboot {
        a.push("-no-reboot".into());
    }
    a
}

/// Start swtpm for `state` in the background; it exits when QEMU closes
/// its socket.
pub fn start_tpm(state: &Path) -> Result<(), RunError> {
    std::fs::create_dir_all(state).map_err(|source| RunError::Io {
        path: state.to_path_buf(),
        source,
    })?;
    let sock = tpm_socket(state);
    let _ = std::fs::remove_file(&sock);
    crate::tool::run(
        std::process::Command::new("swtpm")
            .args(["socket", "--tpm2", "--daemon", "--terminate"])
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", sock.display())),
    )
    .map_err(RunError::Tpm)?;
    // --daemon returns once the socket listens; wait briefly regardless,
    // for versions that fork first.
    for _ in 0..100 {
        if sock.exists() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(RunError::Io {
        path: sock,
        source: std::io::Error::from(std::io::ErrorKind::TimedOut),
    })
}

/// Check inputs and create the writable firmware variable store if needed.
pub fn prepare(o: &RunOptions) -> Result<bool, RunError> {
    // A flashed block device boots as well as an image file.
    let usable = std::fs::metadata(&o.disk).is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.is_file() || m.file_type().is_block_device()
    });
    if !usable {
        return Err(RunError::NoDisk(o.disk.clone()));
    }
    // Direct boot needs no firmware.
    if o.direct.is_none() {
        let code = if o.secure_boot.is_some() {
            OVMF_CODE_SECBOOT
        } else {
            OVMF_CODE
        };
        for f in [code, OVMF_VARS] {
            if !Path::new(f).is_file() {
                return Err(RunError::NoOvmf(f.into()));
            }
        }
        if !o.vars.exists() {
            match &o.secure_boot {
                Some(keys) => write_enrolled_vars(keys, &o.vars)?,
                None => {
                    std::fs::copy(OVMF_VARS, &o.vars).map_err(|source| RunError::Io {
                        path: o.vars.clone(),
                        source,
                    })?;
                }
            }
        }
    }
    Ok(match o.accel {
        Accel::Kvm => true,
        Accel::Tcg => false,
        Accel::Auto => kvm_usable(),
    })
}

/// OVMF's empty variable store with PK, KEK and db from `keys` (their
/// `.esl` files) enrolled: the firmware starts in user mode, Secure Boot
/// enforced.
pub fn write_enrolled_vars(keys: &Path, vars: &Path) -> Result<(), RunError> {
    use crate::secureboot::{file, vars as store};
    use keel_formats::efi::KeyVariable;
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| RunError::Io {
            path: p.to_path_buf(),
            source,
        })
    };
    let mut lists = Vec::new();
    for v in KeyVariable::ALL {
        let p = file(keys, v, "esl");
        if !p.is_file() {
            return Err(RunError::NoKeys(p));
        }
        lists.push((v, read(&p)?));
    }
    let template = read(Path::new(OVMF_VARS))?;
    let variables: Vec<store::Variable> = lists
        .iter()
        .map(|(v, l)| store::Variable::key(*v, l))
        .collect();
    let image = store::enroll(&template, &variables).map_err(|source| RunError::Vars {
        path: OVMF_VARS.into(),
        source,
    })?;
    std::fs::write(vars, image).map_err(|source| RunError::Io {
        path: vars.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> RunOptions {
        RunOptions {
            disk: "out/disk.img".into(),
            vars: "out/disk.img.vars".into(),
            accel: Accel::Tcg,
            memory_mib: 512,
            cpus: 2,
            no_reboot: true,
            forwards: vec![(80, 8080)],
            publish: vec![(18080, 80)],
            direct: None,
            secure_boot: None,
            tpm: None,
        }
    }

    #[test]
    fn direct_boot_skips_the_firmware() {
        let mut o = opts();
        o.direct = Some(Direct {
            kernel: "out/vmlinuz".into(),
            initrd: "out/initramfs.img".into(),
            cmdline: "console=ttyS0 keel.roothash=ab".into(),
        });
        let a = qemu_args(&o, false);
        assert!(!a.join(" ").contains("pflash"));
        let at = a.iter().position(|x| x == "-append").unwrap();
        assert_eq!(a[at + 1], "console=ttyS0 keel.roothash=ab");
        assert!(a
            .join(" ")
            .contains("-kernel out/vmlinuz -initrd out/initramfs.img"));
    }

    #[test]
    fn network_is_restricted_and_forwards_use_a_bridge_per_connection() {
        let a = qemu_args(&opts(), false).join(" ");
        assert!(a.contains("-netdev user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:80-cmd:socat - TCP:127.0.0.1:8080,hostfwd=tcp:127.0.0.1:18080-:80"), "{a}");
        assert!(a.contains("-accel tcg -cpu max"));
        assert!(a.contains("readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"));
        assert!(a.contains("file=out/disk.img "));
        assert!(a.ends_with("-no-reboot"));
        assert!(qemu_args(&opts(), true)
            .join(" ")
            .contains("-accel kvm -cpu host"));
        assert!(a.contains("property=secure,value=off"));
    }

    #[test]
    fn secure_boot_uses_the_smm_firmware() {
        let mut o = opts();
        o.secure_boot = Some("out/secure-boot".into());
        let a = qemu_args(&o, false).join(" ");
        assert!(a.contains("-machine q35,smm=on"), "{a}");
        assert!(a.contains("driver=cfi.pflash01,property=secure,value=on"));
        assert!(a.contains("file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"));
    }
}

//! `keel-vmm`: one microVM from command-line flags.

use std::path::PathBuf;

use clap::Parser;

use keel_vmm::config::{DiskConfig, NetConfig, SerialOut, VmConfig};

/// Boot a Linux kernel in a KVM microVM. The VMM ends when the guest
/// reboots (exit status 0), shuts down (2) or fails (3).
#[derive(Debug, Parser)]
#[command(name = "keel-vmm", version)]
pub struct Cli {
    /// bzImage or ELF vmlinux.
    #[arg(long)]
    pub kernel: PathBuf,
    #[arg(long)]
    pub initramfs: Option<PathBuf>,
    /// Default: [`keel_vmm::config::DEFAULT_CMDLINE`].
    #[arg(long, default_value = keel_vmm::config::DEFAULT_CMDLINE)]
    pub cmdline: String,
    /// Added to the end of the command line (after a space), whichever
    /// it is: keel-init gives a VM on a container network its address
    /// this way.
    #[arg(long)]
    pub append: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
    /// Guest memory in MiB.
    #[arg(long = "memory", default_value_t = 128)]
    pub memory_mib: u32,
    /// `stdout` (input from stdin), `null`, `socket:PATH` (a Unix
    /// socket to attach to, for output and input) or a file to append
    /// to.
    #[arg(long, default_value = "stdout")]
    pub serial: String,
    /// A virtio disk backed by a file or block device: `PATH`, then
    /// `,ro` for read-only and `,root` to boot from it (root=/dev/vdX on
    /// the command line). Repeat for more; the first is /dev/vda.
    #[arg(long = "disk", value_name = "PATH[,ro][,root]", value_parser = parse_disk)]
    pub disks: Vec<DiskConfig>,
    /// A virtio network device on this host tap interface.
    #[arg(long)]
    pub tap: Option<String>,
    /// The guest's MAC address (default: one derived from the tap's
    /// name).
    #[arg(long, requires = "tap")]
    pub mac: Option<String>,
}

impl Cli {
    pub fn config(&self) -> VmConfig {
        VmConfig {
            kernel: self.kernel.clone(),
            initramfs: self.initramfs.clone(),
            cmdline: match &self.append {
                Some(a) => format!("{} {a}", self.cmdline),
                None => self.cmdline.clone(),
            },
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            serial: match self.serial.as_str() {
                "stdout" => SerialOut::Stdout,
                "null" => SerialOut::Null,
                s => match s.strip_prefix("socket:") {
                    Some(path) => SerialOut::Socket(PathBuf::from(path)),
                    None => SerialOut::File(PathBuf::from(s)),
                },
            },
            disks: self.disks.clone(),
            net: self.tap.as_ref().map(|tap| NetConfig {
                tap: tap.clone(),
                mac: self.mac.clone(),
            }),
        }
    }
}

/// `PATH[,ro][,root]`: options come last, so a path may hold commas.
fn parse_disk(arg: &str) -> Result<DiskConfig, String> {
    let mut disk = DiskConfig {
        path: PathBuf::new(),
        read_only: false,
        root: false,
    };
    let mut rest = arg;
    loop {
        if let Some(r) = rest.strip_suffix(",ro") {
            disk.read_only = true;
            rest = r;
        } else if let Some(r) = rest.strip_suffix(",root") {
            disk.root = true;
            rest = r;
        } else {
            break;
        }
    }
    if rest.is_empty() {
        return Err(format!("{arg:?}: no path before the options"));
    }
    disk.path = PathBuf::from(rest);
    Ok(disk)
}

pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let exit = keel_vmm::vm::run(&cli.config())?;
    match &exit {
        keel_vmm::vm::Exit::Failed(why) => eprintln!("keel-vmm: {why}"),
        // Said in the log: an exit status alone does not tell a triple
        // fault from anything else.
        keel_vmm::vm::Exit::Shutdown => {
            eprintln!("keel-vmm: the guest shut the machine down (a triple fault or KVM shutdown)")
        }
        keel_vmm::vm::Exit::Reset => {}
    }
    std::process::exit(exit.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_options_follow_the_path() {
        let d = parse_disk("/var/a,b.img,root,ro").unwrap();
        assert_eq!(d.path, PathBuf::from("/var/a,b.img"));
        assert!(d.read_only && d.root);
        let d = parse_disk("disk.img").unwrap();
        assert!(!d.read_only && !d.root);
        assert!(parse_disk(",ro").is_err());
    }
}

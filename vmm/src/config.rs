//! What a VM is made of, as the command line or the host config says it.
//! Types only: `validate` checks them, `vm` acts on them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One microVM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// bzImage or ELF vmlinux.
    pub kernel: PathBuf,
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    #[serde(default = "one")]
    pub vcpus: u8,
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    #[serde(default)]
    pub serial: SerialOut,
    /// virtio block devices, in order: the first is the guest's
    /// /dev/vda.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// A virtio network device on a tap.
    #[serde(default)]
    pub net: Option<NetConfig>,
}

/// A disk backed by a file or block device on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    /// The guest's root filesystem: `root=/dev/vdX` (with `ro` or
    /// `rw`) goes on the kernel command line.
    #[serde(default)]
    pub root: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The host's tap interface.
    pub tap: String,
    /// The guest's MAC address (aa:bb:cc:dd:ee:ff); by default one
    /// derived from the tap's name.
    #[serde(default)]
    pub mac: Option<String>,
}

/// Where the guest's serial console goes (and, for a terminal or a
/// socket, where its input comes from).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerialOut {
    /// Output to stdout, input from stdin.
    #[default]
    Stdout,
    /// Appended to this file.
    File(PathBuf),
    /// A Unix socket the VMM listens on: one client at a time gets the
    /// output and types the input.
    Socket(PathBuf),
    /// Nowhere.
    Null,
}

/// The guest's command line unless one is given. The i8042 options spare
/// the guest probing for a mouse and a controller self-test the VMM does
/// not emulate.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}

fn one() -> u8 {
    1
}

fn default_memory() -> u32 {
    128
}

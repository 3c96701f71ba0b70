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
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerialOut {
    #[default]
    Stdout,
    /// Appended to this file.
    File(PathBuf),
    /// Nowhere.
    Null,
}

fn default_cmdline() -> String {
    "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"
        .to_string()
}

fn one() -> u8 {
    1
}

fn default_memory() -> u32 {
    128
}

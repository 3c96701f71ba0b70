//! Checks of a [`VmConfig`] that need no I/O; the files it names are
//! checked when they are opened.

use crate::config::VmConfig;

/// The least memory a Linux guest boots in here.
pub const MIN_MEMORY_MIB: u32 = 32;
/// Guest RAM below the 32-bit MMIO gap only, for now.
pub const MAX_MEMORY_MIB: u32 = 3072;
pub const MAX_VCPUS: u8 = 32;
/// The kernel reads at most this much of the command line (x86).
pub const MAX_CMDLINE: usize = 2048;
/// Each virtio device takes an IOAPIC pin; eight disks leave plenty.
pub const MAX_DISKS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("memory: {0} MiB is too small; a Linux guest needs at least {MIN_MEMORY_MIB} MiB")]
    MemoryTooSmall(u32),
    #[error("memory: {0} MiB is more than the {MAX_MEMORY_MIB} MiB keel-vmm can give a guest")]
    MemoryTooLarge(u32),
    #[error("vcpus: {0} is not between 1 and {MAX_VCPUS}")]
    Vcpus(u8),
    #[error("cmdline: {0} bytes is longer than the {MAX_CMDLINE} bytes the kernel reads")]
    CmdlineTooLong(usize),
    #[error("cmdline: contains a NUL byte")]
    CmdlineNul,
    #[error("disks: {0} disks is more than the {MAX_DISKS} keel-vmm gives a guest")]
    TooManyDisks(usize),
    #[error("disks: only one disk can be the root")]
    TwoRoots,
    #[error("net.tap: {0:?} is not an interface name (1 to 15 bytes, no '/', ':' or blanks)")]
    TapName(String),
    #[error("net.mac: {0:?} is not a unicast MAC address like 02:00:00:00:00:01")]
    Mac(String),
}

pub fn validate(c: &VmConfig) -> Result<(), ConfigError> {
    if c.memory_mib < MIN_MEMORY_MIB {
        return Err(ConfigError::MemoryTooSmall(c.memory_mib));
    }
    if c.memory_mib > MAX_MEMORY_MIB {
        return Err(ConfigError::MemoryTooLarge(c.memory_mib));
    }
    if c.vcpus == 0 || c.vcpus > MAX_VCPUS {
        return Err(ConfigError::Vcpus(c.vcpus));
    }
    if c.cmdline.len() >= MAX_CMDLINE {
        return Err(ConfigError::CmdlineTooLong(c.cmdline.len()));
    }
    if c.cmdline.contains('\0') {
        return Err(ConfigError::CmdlineNul);
    }
    if c.disks.len() > MAX_DISKS {
        return Err(ConfigError::TooManyDisks(c.disks.len()));
    }
    if c.disks.iter().filter(|d| d.root).count() > 1 {
        return Err(ConfigError::TwoRoots);
    }
    if let Some(net) = &c.net {
        if !is_interface_name(&net.tap) {
            return Err(ConfigError::TapName(net.tap.clone()));
        }
        if let Some(mac) = &net.mac {
            parse_mac(mac)?;
        }
    }
    Ok(())
}

pub use keel_tap::is_interface_name;

/// `aa:bb:cc:dd:ee:ff`, unicast (the first byte's low bit clear).
pub fn parse_mac(text: &str) -> Result<[u8; 6], ConfigError> {
    keel_tap::parse_mac(text)
        .filter(|mac| mac[0] & 1 == 0)
        .ok_or_else(|| ConfigError::Mac(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> VmConfig {
        toml::from_str(&format!("kernel = \"/k\"\n{extra}")).unwrap()
    }

    #[test]
    fn defaults_are_valid_and_limits_are_named() {
        let c = config("");
        assert_eq!((c.vcpus, c.memory_mib), (1, 128));
        assert_eq!(validate(&c), Ok(()));
        let e = validate(&config("memory_mib = 16")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "memory: 16 MiB is too small; a Linux guest needs at least 32 MiB"
        );
        assert_eq!(validate(&config("vcpus = 0")), Err(ConfigError::Vcpus(0)));
        assert_eq!(
            validate(&config("memory_mib = 4096")),
            Err(ConfigError::MemoryTooLarge(4096))
        );
        let long = format!("cmdline = \"{}\"", "x".repeat(3000));
        assert_eq!(
            validate(&config(&long)),
            Err(ConfigError::CmdlineTooLong(3000))
        );
        assert!(toml::from_str::<VmConfig>("kernel = \"/k\"\ncolour = 1").is_err());
    }

    #[test]
    fn devices_are_checked() {
        let disks = (0..9)
            .map(|i| format!("[[disks]]\npath = \"/d{i}\"\n"))
            .collect::<String>();
        assert_eq!(validate(&config(&disks)), Err(ConfigError::TooManyDisks(9)));
        let c = config("[[disks]]\npath = \"/d\"\nread_only = true");
        assert!(c.disks[0].read_only);
        assert_eq!(validate(&c), Ok(()));
        let two = "[[disks]]\npath = \"/a\"\nroot = true\n[[disks]]\npath = \"/b\"\nroot = true";
        assert_eq!(validate(&config(two)), Err(ConfigError::TwoRoots));
        for tap in ["", "a/b", "sixteen-letters!", "a b"] {
            let c = config(&format!("[net]\ntap = \"{tap}\""));
            assert_eq!(validate(&c), Err(ConfigError::TapName(tap.into())));
        }
        assert_eq!(validate(&config("[net]\ntap = \"tap0\"")), Ok(()));
        assert_eq!(parse_mac("02:6b:00:00:00:0a"), Ok([2, 0x6b, 0, 0, 0, 10]));
        for bad in [
            "01:00:00:00:00:00",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "zz:00:00:00:00:00",
            "2:00:00:00:00:000",
        ] {
            assert_eq!(parse_mac(bad), Err(ConfigError::Mac(bad.into())), "{bad}");
        }
    }
}

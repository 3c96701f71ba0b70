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
    Ok(())
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
}

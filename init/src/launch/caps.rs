//! Dropping capabilities in a container's process before exec.
//!
//! A process running as uid 0 gains its whole bounding set on exec, so the
//! bounding set is what really limits it; effective, permitted and
//! inheritable are set to the same list so nothing is left behind, and for
//! a non-root user the list is raised in the ambient set to survive exec.

use keel_formats::container::capability_number;

#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("unknown capability {0:?}")]
    Unknown(String),
    #[error("dropping capability {cap} from the bounding set: {source}")]
    Bounding { cap: u32, source: std::io::Error },
    #[error("raising capability {cap} in the ambient set: {source}")]
    Ambient { cap: u32, source: std::io::Error },
    #[error("capset: {0}")]
    Capset(std::io::Error),
}

/// The bit of capability `cap` in a 64-bit mask; none for a capability
/// past 63 (a kernel's cap_last_cap may name one), which no mask keeps.
fn bit(cap: u32) -> u64 {
    1u64.checked_shl(cap).unwrap_or(0)
}

/// The 64-bit capability mask of `names`.
pub fn mask(names: &[String]) -> Result<u64, CapsError> {
    names.iter().try_fold(0u64, |m, n| {
        capability_number(n)
            .map(|c| m | bit(c))
            .ok_or_else(|| CapsError::Unknown(n.clone()))
    })
}

/// The highest capability the running kernel knows.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Drop every capability not in `keep` (a mask) from the bounding set;
/// `last` from [`last_cap`], read before the process's /proc went away.
pub fn drop_bounding(keep: u64, last: u32) -> Result<(), CapsError> {
    for cap in 0..=last {
        if keep & bit(cap) == 0 {
            // SAFETY: prctl with integer arguments only.
            let r =
                unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
            if r != 0 {
                return Err(CapsError::Bounding {
                    cap,
                    source: std::io::Error::last_os_error(),
                });
            }
        }
    }
    Ok(())
}

/// Set the effective, permitted and inheritable sets to `keep`.
pub fn set(keep: u64) -> Result<(), CapsError> {
    let lo = keep as u32;
    let hi = (keep >> 32) as u32;
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: lo,
            permitted: lo,
            inheritable: lo,
        },
        CapData {
            effective: hi,
            permitted: hi,
            inheritable: hi,
        },
    ];
    // SAFETY: header and a two-element data array as capset(2) requires for
    // version 3; both outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if r != 0 {
        return Err(CapsError::Capset(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Raise `keep` in the ambient set, so that a non-root user keeps them
/// across exec.
pub fn raise_ambient(keep: u64, last: u32) -> Result<(), CapsError> {
    for cap in (0..=last).filter(|&c| keep & bit(c) != 0) {
        // SAFETY: prctl with integer arguments only.
        let r = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                libc::c_ulong::from(cap),
                0,
                0,
            )
        };
        if r != 0 {
            return Err(CapsError::Ambient {
                cap,
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_by_name() {
        assert_eq!(mask(&[]).unwrap(), 0);
        assert_eq!(mask(&["CAP_NET_BIND_SERVICE".into()]).unwrap(), 1 << 10);
        assert_eq!(
            mask(&["CAP_CHOWN".into(), "CAP_BPF".into()]).unwrap(),
            1 | (1 << 39)
        );
        assert!(matches!(
            mask(&["CAP_NOPE".into()]),
            Err(CapsError::Unknown(_))
        ));
    }

    #[test]
    fn a_capability_past_63_has_no_bit() {
        assert_eq!(bit(63), 1 << 63);
        assert_eq!(bit(64), 0);
    }
}

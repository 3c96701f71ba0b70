//! The kernel files a container must not read or write (the lists are
//! [`keel_formats::syspaths`]): hidden under /dev/null or an empty read-only
//! tmpfs, or bound read-only onto themselves. Runs in the container's
//! child, after its /proc and /sys are mounted and before pivot_root.

use std::path::Path;

use nix::mount::MsFlags;

use crate::sys;

/// The flags every mount here keeps: /proc and /sys have them, and in a
/// user namespace a remount may not clear them.
fn locked() -> MsFlags {
    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
}

/// Hide `masked` and make `readonly` read-only, each a path inside the
/// container (`/proc/kcore`) under `root`. A path this kernel does not
/// have is left alone.
pub fn apply(root: &Path, masked: &[&str], readonly: &[&str]) -> Result<(), String> {
    for path in readonly {
        let at = root.join(path.trim_start_matches('/'));
        if std::fs::symlink_metadata(&at).is_err() {
            continue;
        }
        sys::bind(&at, &at, false).map_err(|e| e.to_string())?;
        sys::mount(
            None,
            &at,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked(),
            None,
        )
        .map_err(|e| format!("read-only {path}: {e}"))?;
    }
    for path in masked {
        let at = root.join(path.trim_start_matches('/'));
        let Ok(meta) = std::fs::symlink_metadata(&at) else {
            continue;
        };
        if meta.is_dir() {
            sys::mount(
                Some("tmpfs"),
                &at,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | locked(),
                Some("size=4k,mode=0555"),
            )
        } else {
            sys::bind(Path::new("/dev/null"), &at, false)
        }
        .map_err(|e| format!("masking {path}: {e}"))?;
    }
    Ok(())
}

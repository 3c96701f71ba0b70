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

/// Make `at` (a kernel file under the container's root) read-only. A path
/// this kernel does not have is left alone.
pub fn read_only(at: &Path) -> sys::Result<()> {
    if std::fs::symlink_metadata(at).is_err() {
        return Ok(());
    }
    sys::bind(at, at, false)?;
    sys::mount(
        None,
        at,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked(),
        None,
    )
}

/// Hide `at`: a folder under an empty read-only tmpfs, a file under
/// /dev/null. A path this kernel does not have is left alone.
pub fn mask(at: &Path) -> sys::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(at) else {
        return Ok(());
    };
    if meta.is_dir() {
        sys::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | locked(),
            Some("size=4k,mode=0555"),
        )
    } else {
        sys::bind(Path::new("/dev/null"), at, false)
    }
}

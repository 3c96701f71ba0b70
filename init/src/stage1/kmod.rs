//! Kernel modules for a prebuilt kernel: `keel build` puts the ones the
//! image needs into the initramfs with the order to load them in, and stage
//! 1 loads them before it looks for the disk.

use std::fs::File;
use std::io;
use std::path::Path;

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

use keel_formats::initramfs::{MODULES_DIR, MODULES_ORDER};

/// What loading the listed modules did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Loaded now, or already there.
    pub loaded: usize,
    /// Each module that would not load, and why.
    pub failed: Vec<(String, String)>,
}

/// The module names in an order file, in order.
pub fn parse_order(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// Load the modules listed under `root` (the initramfs root), deleting
/// each file after, since the initramfs lives in memory. No list: nothing
/// to do (a kernel built with everything in).
pub fn load_listed(root: &Path) -> io::Result<Loaded> {
    let order = match std::fs::read_to_string(root.join(MODULES_ORDER)) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(e) => return Err(e),
    };
    let mut out = Loaded::default();
    for name in parse_order(&order) {
        let path = root.join(MODULES_DIR).join(format!("{name}.ko"));
        let result = File::open(&path).map_err(|e| e.to_string()).and_then(|f| {
            // A module a dependency already pulled in, or one built
            // into this kernel after all, is there: that is success.
            match finit_module(&f, c"", ModuleInitFlags::empty()) {
                Ok(()) | Err(Errno::EEXIST) => Ok(()),
                Err(e) => Err(e.desc().to_string()),
            }
        });
        match result {
            Ok(()) => out.loaded = out.loaded.saturating_add(1),
            Err(why) => out.failed.push((name.to_string(), why)),
        }
        let _ = std::fs::remove_file(&path);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_keeps_names_in_order_and_skips_blanks() {
        assert_eq!(
            parse_order("virtio\n\n# comment\n virtio_blk \n"),
            ["virtio", "virtio_blk"]
        );
    }

    #[test]
    fn no_order_file_loads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_listed(dir.path()).unwrap(), Loaded::default());
    }

    #[test]
    fn a_missing_file_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(MODULES_DIR)).unwrap();
        std::fs::write(dir.path().join(MODULES_ORDER), "nonesuch\n").unwrap();
        let got = load_listed(dir.path()).unwrap();
        assert_eq!(got.loaded, 0);
        assert_eq!(got.failed.len(), 1);
        assert_eq!(got.failed[0].0, "nonesuch");
    }
}

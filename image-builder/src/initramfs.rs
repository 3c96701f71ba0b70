//! The initramfs: an uncompressed `newc` cpio archive holding only
//! `keel-init` (as `/init`), the mount points stage 1 needs and
//! `/dev/console`, so that the kernel can give init a console before
//! devtmpfs is mounted.
//!
//! It is left uncompressed: the kernel, alone on one CPU before init
//! exists, would take longer to inflate it than the firmware takes to read
//! the few hundred KiB that compression saves (the UKI as a whole is still
//! compressed where it counts, in the bzImage).
//!
//! The archive is written by hand rather than by `cpio` so that it needs no
//! root (a device node is just a header) and is byte-for-byte reproducible:
//! every timestamp is zero and inode numbers are assigned in order.

use std::io::{self, Write};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// One member of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    CharDev {
        path: String,
        mode: u32,
        major: u32,
        minor: u32,
    },
}

/// Serialise `entries`, in order, as an uncompressed newc archive.
pub fn write_cpio(entries: &[Entry], mut out: impl Write) -> io::Result<()> {
    let mut written = 0usize;
    let mut put = |out: &mut dyn Write, bytes: &[u8]| -> io::Result<()> {
        out.write_all(bytes)?;
        written += bytes.len();
        let pad = (4 - written % 4) % 4;
        out.write_all(&[0u8; 3][..pad])?;
        written += pad;
        Ok(())
    };
    for (ino, e) in entries.iter().enumerate() {
        let (path, mode, data, rdev): (&str, u32, &[u8], (u32, u32)) = match e {
            Entry::Dir { path, mode } => (path, S_IFDIR | mode, &[], (0, 0)),
            Entry::File { path, mode, data } => (path, S_IFREG | mode, data, (0, 0)),
            Entry::CharDev {
                path,
                mode,
                major,
                minor,
            } => (path, S_IFCHR | mode, &[], (*major, *minor)),
        };
        let nlink = if matches!(e, Entry::Dir { .. }) { 2 } else { 1 };
        let header = header(
            ino as u32 + 1,
            mode,
            nlink,
            data.len() as u32,
            rdev,
            path.len() as u32 + 1,
        );
        let mut name = Vec::with_capacity(header.len() + path.len() + 1);
        name.extend_from_slice(header.as_bytes());
        name.extend_from_slice(path.as_bytes());
        name.push(0);
        put(&mut out, &name)?;
        if !data.is_empty() {
            put(&mut out, data)?;
        }
    }
    let trailer = "TRAILER!!!";
    let mut last = header(0, 0, 1, 0, (0, 0), trailer.len() as u32 + 1).into_bytes();
    last.extend_from_slice(trailer.as_bytes());
    last.push(0);
    put(&mut out, &last)
}

fn header(ino: u32, mode: u32, nlink: u32, size: u32, rdev: (u32, u32), namesize: u32) -> String {
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
    // devminor, rdevmajor, rdevminor, namesize, check
    format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
        0, 0, 0, 0, 0, rdev.0, rdev.1, 0
    )
}

/// What every initramfs needs before its init runs: the mount points for
/// devtmpfs, proc and sysfs, and `/dev/console` so the kernel can give init
/// a console.
pub fn base_entries() -> Vec<Entry> {
    vec![
        Entry::Dir {
            path: "dev".into(),
            mode: 0o755,
        },
        Entry::CharDev {
            path: "dev/console".into(),
            mode: 0o600,
            major: 5,
            minor: 1,
        },
        Entry::Dir {
            path: "proc".into(),
            mode: 0o555,
        },
        Entry::Dir {
            path: "sys".into(),
            mode: 0o555,
        },
    ]
}

/// The keel initramfs around the `keel-init` binary, with the kernel
/// modules stage 1 loads (name and contents, in load order).
pub fn build(
    init_binary: Vec<u8>,
    modules: Vec<(String, Vec<u8>)>,
    var_template: Option<Vec<u8>>,
) -> io::Result<Vec<u8>> {
    use keel_formats::initramfs::{MODULES_DIR, MODULES_ORDER};
    let mut entries = base_entries();
    entries.extend([
        Entry::Dir {
            path: "sysroot".into(),
            mode: 0o755,
        },
        Entry::File {
            path: "init".into(),
            mode: 0o755,
            data: init_binary,
        },
    ]);
    if !modules.is_empty() {
        entries.push(Entry::Dir {
            path: "lib".into(),
            mode: 0o755,
        });
        entries.push(Entry::Dir {
            path: MODULES_DIR.into(),
            mode: 0o755,
        });
        let mut order = String::new();
        for (name, data) in modules {
            order.push_str(&name);
            order.push('\n');
            entries.push(Entry::File {
                path: format!("{MODULES_DIR}/{name}.ko"),
                mode: 0o644,
                data,
            });
        }
        entries.push(Entry::File {
            path: MODULES_ORDER.into(),
            mode: 0o644,
            data: order.into_bytes(),
        });
    }
    if let Some(data) = var_template {
        for dir in ["usr", "usr/lib", "usr/lib/keel"] {
            entries.push(Entry::Dir {
                path: dir.into(),
                mode: 0o755,
            });
        }
        entries.push(Entry::File {
            path: keel_formats::varcrypt::TEMPLATE_PATH.into(),
            mode: 0o644,
            data,
        });
    }
    let mut out = Vec::new();
    write_cpio(&entries, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout_is_aligned_and_terminated() {
        let mut out = Vec::new();
        let entries = [
            Entry::Dir {
                path: "dev".into(),
                mode: 0o755,
            },
            Entry::File {
                path: "init".into(),
                mode: 0o755,
                data: b"hello".to_vec(),
            },
        ];
        write_cpio(&entries, &mut out).unwrap();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&out);
        // header (110) + "dev\0" (4) = 114, padded to 116.
        assert_eq!(&out[116..122], b"070701");
        assert!(text.contains("init\0"));
        assert!(text.contains("hello"));
        assert!(text.contains("TRAILER!!!\0"));
        // mode field of the file entry: regular, 0755.
        assert_eq!(&out[116 + 14..116 + 22], b"000081ed");
    }

    #[test]
    fn build_is_reproducible_and_holds_init() {
        let a = build(b"\x7fELF...".to_vec(), Vec::new(), None).unwrap();
        let b = build(b"\x7fELF...".to_vec(), Vec::new(), None).unwrap();
        assert_eq!(a, b);
        assert!(a.starts_with(b"070701"), "an uncompressed newc archive");
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("init\0") && text.contains("\x7fELF..."));
        assert!(text.contains("dev/console\0"));
        assert!(!text.contains("lib/modules"), "no modules, no folder");
    }

    #[test]
    fn modules_go_in_with_their_load_order() {
        let mods = vec![
            ("virtio".to_string(), b"VIRTIO".to_vec()),
            ("virtio_blk".to_string(), b"BLK".to_vec()),
        ];
        let a = build(b"init".to_vec(), mods, None).unwrap();
        let text = String::from_utf8_lossy(&a);
        for member in [
            "lib/modules/virtio.ko\0",
            "lib/modules/virtio_blk.ko\0",
            "lib/modules/order\0",
        ] {
            assert!(text.contains(member), "{member}");
        }
        assert!(text.contains("virtio\nvirtio_blk\n"));
        let order_at = text.find("lib/modules/order\0").unwrap();
        assert!(text.find("lib/modules/virtio.ko").unwrap() < order_at);
    }
}

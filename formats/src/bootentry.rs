//! Boot entries on the ESP: UKIs in `EFI/Linux` named after systemd-boot's
//! boot counting scheme, `keel-VERSION[+LEFT[-DONE]].efi`, and what ties an
//! entry to a slot: the root hash on its command line.

/// Where UKIs live, below the ESP's mount point.
pub const ENTRIES_DIR: &str = "EFI/Linux";
/// Where keel mounts the ESP.
pub const ESP_MOUNT: &str = "/efi";
/// Tries a freshly installed entry gets.
pub const TRIES: u32 = 3;

/// A parsed entry file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryName {
    pub version: String,
    /// Boot attempts left; None: blessed (or never counted).
    pub tries_left: Option<u32>,
    pub tries_done: u32,
}

impl EntryName {
    pub fn parse(file: &str) -> Option<EntryName> {
        let stem = file.strip_prefix("keel-")?.strip_suffix(".efi")?;
        let (version, counter) = match stem.split_once('+') {
            Some((v, c)) => (v, Some(c)),
            None => (stem, None),
        };
        if version.is_empty() {
            return None;
        }
        let (tries_left, tries_done) = match counter {
            None => (None, 0),
            Some(c) => match c.split_once('-') {
                Some((l, d)) => (Some(l.parse().ok()?), d.parse().ok()?),
                None => (Some(c.parse().ok()?), 0),
            },
        };
        Some(EntryName {
            version: version.to_string(),
            tries_left,
            tries_done,
        })
    }

    pub fn file_name(&self) -> String {
        match (self.tries_left, self.tries_done) {
            (None, _) => format!("keel-{}.efi", self.version),
            (Some(l), 0) => format!("keel-{}+{l}.efi", self.version),
            (Some(l), d) => format!("keel-{}+{l}-{d}.efi", self.version),
        }
    }

    /// The name once the health gate passed: no counter.
    pub fn blessed(&self) -> EntryName {
        EntryName {
            tries_left: None,
            tries_done: 0,
            ..self.clone()
        }
    }

    /// The name that makes systemd-boot try it last: no tries left.
    pub fn bad(&self) -> EntryName {
        EntryName {
            tries_left: Some(0),
            tries_done: self.tries_done + self.tries_left.unwrap_or(1),
            ..self.clone()
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Where PE section `name` lies in the file, from the image's headers
/// alone (`headers` need only reach the end of the section table, which
/// for a UKI is within its first 4 KiB): a caller reads just that range
/// instead of the whole multi-megabyte image.
pub fn pe_section_range(headers: &[u8], name: &str) -> Option<std::ops::Range<usize>> {
    if headers.get(..2)? != b"MZ" {
        return None;
    }
    let pe = u32_at(headers, 0x3c)? as usize;
    if headers.get(pe..pe + 4)? != b"PE\0\0" {
        return None;
    }
    let coff = pe + 4;
    let count = u16_at(headers, coff + 2)? as usize;
    let table = coff + 20 + u16_at(headers, coff + 16)? as usize;
    (0..count).find_map(|i| {
        let h = table + i * 40;
        let raw = headers.get(h..h + 8)?;
        if raw.split(|&b| b == 0).next()? != name.as_bytes() {
            return None;
        }
        let vsize = u32_at(headers, h + 8)? as usize;
        let rsize = u32_at(headers, h + 16)? as usize;
        let at = u32_at(headers, h + 20)? as usize;
        Some(at..at + vsize.min(rsize))
    })
}

/// The contents of PE section `name` in `image`.
pub fn pe_section<'a>(image: &'a [u8], name: &str) -> Option<&'a [u8]> {
    image.get(pe_section_range(image, name)?)
}

/// The keel parameters on a UKI's command line, reading only its headers
/// and its `.cmdline` section. None if it has no readable ones (a UKI
/// being renamed meanwhile, or not a keel UKI).
pub fn read_boot_params(uki: &std::path::Path) -> Option<crate::cmdline::BootParams> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(uki).ok()?;
    let mut headers = vec![0u8; 4096];
    let n = f.read_at(&mut headers, 0).ok()?;
    headers.truncate(n);
    let range = pe_section_range(&headers, ".cmdline")?;
    let mut cmdline = vec![0u8; range.len()];
    f.read_exact_at(&mut cmdline, range.start as u64).ok()?;
    let text = String::from_utf8(cmdline).ok()?;
    crate::cmdline::BootParams::parse(text.trim_end_matches('\0')).ok()
}

/// The entry in `dir` whose command line carries `root_hash` (hex): the
/// booted one, for the running root hash. Entries renamed meanwhile are
/// passed over.
pub fn find_by_root_hash(
    dir: &std::path::Path,
    root_hash: &str,
) -> std::io::Result<Option<(String, EntryName)>> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(name) = EntryName::parse(&file) else {
            continue;
        };
        let hash = read_boot_params(&e.path()).map(|p| crate::cmdline::to_hex(&p.verity.root_hash));
        if hash.as_deref() == Some(root_hash) {
            return Ok(Some((file, name)));
        }
    }
    Ok(None)
}

/// Rename the file `from` in the ESP folder `dir` to `to`, so that a
/// power cut right after leaves either name, whole. On vfat the new
/// directory entry gets the file's first cluster and size only when the
/// file's inode is written back: syncing the folder alone would leave an
/// empty entry (the firmware then finds no loader at all), so the file is
/// synced after the rename, then the folder. The error names the path
/// that failed.
pub fn rename_synced(
    dir: &std::path::Path,
    from: &std::path::Path,
    to: &str,
) -> Result<(), (std::path::PathBuf, std::io::Error)> {
    let dest = dir.join(to);
    std::fs::rename(from, &dest).map_err(|e| (dest.clone(), e))?;
    std::fs::File::open(&dest)
        .and_then(|f| f.sync_all())
        .map_err(|e| (dest.clone(), e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| (dir.to_path_buf(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_boot_counting() {
        let n = EntryName::parse("keel-0.2.0+3.efi").unwrap();
        assert_eq!((n.tries_left, n.tries_done), (Some(3), 0));
        let n = EntryName::parse("keel-0.2.0+1-2.efi").unwrap();
        assert_eq!(n.version, "0.2.0");
        assert_eq!(n.file_name(), "keel-0.2.0+1-2.efi");
        assert_eq!(n.blessed().file_name(), "keel-0.2.0.efi");
        assert_eq!(n.bad().file_name(), "keel-0.2.0+0-3.efi");
        assert_eq!(EntryName::parse("keel-0.1.0.efi").unwrap().tries_left, None);
        assert!(EntryName::parse("other.efi").is_none());
        assert!(EntryName::parse("keel-1+x.efi").is_none());
    }
}

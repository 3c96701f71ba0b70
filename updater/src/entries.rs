//! Boot entries on the mounted ESP (`/efi/EFI/Linux`): which one runs,
//! installing a new one so that it appears whole or not at all, and the
//! renames that bless, demote or remove them.

use std::fs::{self, File};
use std::io::Write;
use std::path::PathBuf;

use keel_formats::bootentry::EntryName;
use keel_formats::cmdline::{to_hex, BootParams};

use crate::error::{io_err, UpdateError};

#[derive(Debug, Clone)]
pub struct Entries {
    pub dir: PathBuf,
}

/// One UKI on the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub file: String,
    pub name: EntryName,
    /// The verity parameters on its command line.
    pub params: Option<BootParams>,
}

impl Entry {
    pub fn root_hash(&self) -> Option<String> {
        self.params.as_ref().map(|p| to_hex(&p.verity.root_hash))
    }
}

impl Entries {
    /// Every keel entry, in file name order.
    pub fn list(&self) -> Result<Vec<Entry>, UpdateError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let e = e.map_err(io_err(&self.dir))?;
            let file = e.file_name().to_string_lossy().into_owned();
            let Some(name) = EntryName::parse(&file) else {
                continue;
            };
            // keel-init's health gate may rename an entry meanwhile.
            if !e.path().exists() {
                continue;
            }
            out.push(Entry {
                params: keel_formats::bootentry::read_boot_params(&e.path()),
                file,
                name,
            });
        }
        out.sort_by(|a, b| a.file.cmp(&b.file));
        Ok(out)
    }

    /// The entry whose command line carries `root_hash`.
    pub fn find(&self, root_hash: &str) -> Result<Option<Entry>, UpdateError> {
        Ok(self
            .list()?
            .into_iter()
            .find(|e| e.root_hash().as_deref() == Some(root_hash)))
    }

    fn sync_dir(&self) -> Result<(), UpdateError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))
    }

    /// Remove every keel entry except `keep`, and leftovers of an
    /// interrupted install: before a slot is overwritten, no entry may
    /// point at it.
    pub fn remove_all_but(&self, keep: &str) -> Result<Vec<String>, UpdateError> {
        let mut removed = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let e = e.map_err(io_err(&self.dir))?;
            let file = e.file_name().to_string_lossy().into_owned();
            let ours = EntryName::parse(&file).is_some() || file.starts_with(".keel-");
            if ours && file != keep {
                fs::remove_file(e.path()).map_err(io_err(&e.path()))?;
                removed.push(file);
            }
        }
        self.sync_dir()?;
        Ok(removed)
    }

    /// Write a new entry: under a temporary name first, synced, then
    /// renamed, so that systemd-boot sees all of it or nothing.
    pub fn install(
        &self,
        name: &EntryName,
        write: &mut dyn FnMut(&mut File) -> Result<(), UpdateError>,
    ) -> Result<(), UpdateError> {
        let tmp = self.dir.join(format!(".{}.tmp", name.file_name()));
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        write(&mut f)?;
        f.flush()
            .and_then(|()| f.sync_all())
            .map_err(io_err(&tmp))?;
        drop(f);
        self.rename_path(&tmp, &name.file_name())
    }

    pub fn rename(&self, from: &str, to: &EntryName) -> Result<(), UpdateError> {
        if from == to.file_name() {
            return Ok(());
        }
        self.rename_path(&self.dir.join(from), &to.file_name())
    }

    fn rename_path(&self, from: &std::path::Path, to: &str) -> Result<(), UpdateError> {
        keel_formats::bootentry::rename_synced(&self.dir, from, to).map_err(|(p, e)| io_err(&p)(e))
    }
}

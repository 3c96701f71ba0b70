//! The GPT disk: the ESP, slot A holding the new root and its tree, an
//! empty slot B, and a fresh ext4 for /var.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use keel_formats::disk::{Role, Slot};

use super::{io_err, Build, BuildError};
use crate::disk::{self, stable_guid, Content, PartSpec};
use crate::tool;

impl Build<'_> {
    /// The fresh ext4 for the data partition.
    fn data_fs(&self) -> Result<PathBuf, BuildError> {
        let data = self.work.join("data.ext4");
        mkfs_ext4(
            &data,
            self.r().partitions.data_mib,
            &stable_guid(&self.seed, "data").to_string(),
        )?;
        Ok(data)
    }

    /// The fresh ext4 that stage 1 writes into an encrypted /var it makes
    /// (the initramfs of a sealing UKI carries it): the partition's size
    /// less the header's MiB in front of the volume; stage 1 grows it.
    pub(super) fn var_template_fs(&self) -> Result<PathBuf, BuildError> {
        let header_mib = (keel_formats::varcrypt::DATA_OFFSET_SECTORS * 512) >> 20;
        let mib = self.r().partitions.data_mib.saturating_sub(header_mib);
        let data = self.work.join("var-template.ext4");
        mkfs_ext4(&data, mib, &stable_guid(&self.seed, "data").to_string())?;
        Ok(data)
    }

    /// `disk.img` in the output folder.
    pub(super) fn disk(
        &self,
        esp_image: &[u8],
        root: &Path,
        verity: &Path,
    ) -> Result<PathBuf, BuildError> {
        let p = &self.r().partitions;
        let data = self.data_fs()?;
        let disk_path = self.opts.out.join("disk.img");
        let parts = [
            PartSpec {
                role: Role::Esp,
                size_mib: p.esp_mib,
                content: Content::Bytes(esp_image),
            },
            PartSpec {
                role: Role::Root(Slot::A),
                size_mib: p.root_mib,
                content: Content::File(root),
            },
            PartSpec {
                role: Role::Verity(Slot::A),
                size_mib: p.verity_mib,
                content: Content::File(verity),
            },
            PartSpec {
                role: Role::Root(Slot::B),
                size_mib: p.root_mib,
                content: Content::Empty,
            },
            PartSpec {
                role: Role::Verity(Slot::B),
                size_mib: p.verity_mib,
                content: Content::Empty,
            },
            PartSpec {
                role: Role::Data,
                size_mib: p.data_mib,
                content: Content::File(&data),
            },
        ];
        disk::write(&disk_path, &self.seed, &parts)?;
        Ok(disk_path)
    }
}

fn mkfs_ext4(path: &Path, mib: u64, uuid: &str) -> Result<(), BuildError> {
    let f = fs::File::create(path).map_err(io_err(path))?;
    f.set_len(mib << 20).map_err(io_err(path))?;
    drop(f);
    // E2FSPROGS_FAKE_TIME pins every timestamp mke2fs writes, and the
    // hash seed would otherwise be random: both for reproducibility.
    tool::run(
        Command::new("mkfs.ext4")
            .env("E2FSPROGS_FAKE_TIME", "1")
            .args([
                "-q",
                "-F",
                "-b",
                "4096",
                "-L",
                keel_formats::disk::DATA_LABEL,
                "-U",
                uuid,
            ])
            .arg("-E")
            .arg(format!("hash_seed={uuid},root_owner=0:0"))
            .arg(path),
    )?;
    Ok(())
}

//! What boots the root filesystem: its verity tree, the UKI that carries
//! the tree's root hash, and the ESP that holds the UKI.

use std::fs;
use std::path::{Path, PathBuf};

use keel_formats::cmdline::BootParams;
use keel_formats::disk::uki_file_name;

use super::{io_err, Build, BuildError};
use crate::disk::stable_guid;
use crate::kernel::Kernel;
use crate::recipe::OutputFormat;
use crate::verity::{self, VerityTree};
use crate::{esp, initramfs, uki};

/// The UKI as written to the output folder.
pub(super) struct Uki {
    pub path: PathBuf,
    /// Its name on the ESP, with the boot counter.
    pub name: String,
    /// The direct-boot kernel, when the recipe asks for direct boot.
    pub direct: Option<PathBuf>,
}

impl Build<'_> {
    /// `root.verity` in the output folder, and the tree it holds.
    pub(super) fn verity_tree(&self, root: &Path) -> Result<(PathBuf, VerityTree), BuildError> {
        // The salt is derived from the root image itself: unique per image,
        // yet the same for the same inputs.
        let root_bytes = fs::read(root).map_err(io_err(root))?;
        let salt = <sha2::Sha256 as sha2::Digest>::digest(&root_bytes);
        drop(root_bytes);
        let verity_path = self.opts.out.join("root.verity");
        let tree = verity::build_file(
            root,
            &verity_path,
            &salt,
            *stable_guid(&self.seed, "verity").as_bytes(),
        )?;
        Ok((verity_path, tree))
    }

    /// The UKI (written, and returned for the ESP) and, when the recipe
    /// asks for direct boot, the same kernel, initramfs and command line
    /// as files.
    pub(super) fn uki(
        &self,
        kernel: &Kernel,
        tree: &VerityTree,
    ) -> Result<(Uki, Vec<u8>), BuildError> {
        let r = self.r();
        // No slot: stage 1 finds the slot that holds this root hash's tree,
        // so the same UKI boots from either slot.
        let boot_params = BootParams {
            slot: None,
            verity: tree.params.clone(),
        };
        let cmdline = format!("{} {}", r.kernel.cmdline.trim(), boot_params.render())
            .trim()
            .to_string();
        let initrd = self.initramfs(kernel)?;
        let stub_bytes = fs::read(&self.stub).map_err(io_err(&self.stub))?;
        let linux = fs::read(&kernel.bzimage).map_err(io_err(&kernel.bzimage))?;
        let uki_bytes = uki::assemble(
            &stub_bytes,
            &uki::Payload {
                osrel: self.os_release.as_bytes(),
                cmdline: cmdline.as_bytes(),
                uname: kernel.release.as_bytes(),
                linux: &linux,
                initrd: &initrd,
            },
        )?;
        let name = uki_file_name(&r.image.version, Some(3));
        let path = self.opts.out.join(uki_file_name(&r.image.version, None));
        fs::write(&path, &uki_bytes).map_err(io_err(&path))?;
        let mut direct = None;
        if r.outputs.has(OutputFormat::Direct) {
            crate::outputs::write_direct(&self.opts.out, &linux, &initrd, &cmdline)?;
            direct = Some(self.opts.out.join(crate::outputs::DIRECT_KERNEL));
        }
        Ok((Uki { path, name, direct }, uki_bytes))
    }

    /// keel-init and the kernel's modules, as the UKI's initramfs.
    fn initramfs(&self, kernel: &Kernel) -> Result<Vec<u8>, BuildError> {
        let init_bytes = fs::read(&self.keel_init).map_err(io_err(&self.keel_init))?;
        let mut modules = Vec::new();
        for (name, path) in &kernel.modules {
            modules.push((name.clone(), fs::read(path).map_err(io_err(path))?));
        }
        initramfs::build(init_bytes, modules).map_err(io_err(&self.keel_init))
    }

    /// The ESP image: systemd-boot, which boots the UKI named `uki_name`.
    pub(super) fn esp(&self, uki_name: &str, uki_bytes: Vec<u8>) -> Result<Vec<u8>, BuildError> {
        let boot_bytes = fs::read(&self.boot).map_err(io_err(&self.boot))?;
        let loader_conf =
            "timeout 0\neditor no\nauto-entries no\nauto-firmware no\nconsole-mode keep\n";
        let volume_id = u32::from_le_bytes(
            stable_guid(&self.seed, "esp").as_bytes()[..4]
                .try_into()
                .unwrap_or([0; 4]),
        );
        Ok(esp::build(
            self.r().partitions.esp_mib << 20,
            volume_id,
            &[
                ("EFI/BOOT/BOOTX64.EFI".into(), boot_bytes.clone()),
                ("EFI/systemd/systemd-bootx64.efi".into(), boot_bytes),
                ("loader/loader.conf".into(), loader_conf.as_bytes().to_vec()),
                (format!("EFI/Linux/{uki_name}"), uki_bytes),
            ],
        )?)
    }
}

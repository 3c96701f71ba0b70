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
        // The salt is the image's (from its name), the same in every
        // release of it: a data block that did not change keeps its hash,
        // so a delta update fetches only the tree blocks over what changed
        // (docs/update.md). Per-image salts keep one image's tree useless
        // for another's.
        let salt = <sha2::Sha256 as sha2::Digest>::digest(
            format!("keel verity salt\0{}", self.recipe.recipe.image.name).as_bytes(),
        );
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
        let payload = uki::Payload {
            osrel: self.os_release.as_bytes(),
            cmdline: cmdline.as_bytes(),
            uname: kernel.release.as_bytes(),
            linux: &linux,
            initrd: &initrd,
        };
        let uki_bytes = match self.signer.as_ref().and_then(|s| s.pcr.as_ref()) {
            Some(pcr) => {
                let mut sections = uki::payload_sections(&payload).to_vec();
                sections.push((".pcrpkey", pcr.public_pem.as_bytes()));
                let pcrsig = pcr.pcrsig(&sections);
                uki::assemble_with(
                    &stub_bytes,
                    &payload,
                    &[
                        (".pcrpkey", pcr.public_pem.as_bytes()),
                        (".pcrsig", &pcrsig),
                    ],
                )?
            }
            None => uki::assemble(&stub_bytes, &payload)?,
        };
        // Signed before it is written anywhere: the bundle carries these
        // bytes, so an updated slot boots under Secure Boot too.
        let uki_bytes = match &self.signer {
            Some(s) => s.sign(&uki_bytes, &self.work, "uki")?,
            None => uki_bytes,
        };
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
        // A UKI that can seal /var's key carries the fresh /var that stage
        // 1 writes into the encrypted volume it makes on first boot.
        let template = match self.signer.as_ref().and_then(|s| s.pcr.as_ref()) {
            Some(_) => {
                let data = self.var_template_fs()?;
                let image = fs::read(&data).map_err(io_err(&data))?;
                Some(keel_formats::varcrypt::Template::encode(&image))
            }
            None => None,
        };
        initramfs::build(init_bytes, modules, template).map_err(io_err(&self.keel_init))
    }

    /// The public Secure Boot files of the key folder, copied to
    /// `out/secure-boot/` when the build signs; a stale copy from an
    /// earlier signed build goes when it does not, so that `keel run
    /// --secure-boot` never enrolls keys this image was not signed with.
    pub(super) fn secure_boot_files(&self) -> Result<Option<PathBuf>, BuildError> {
        use crate::secureboot::{file, OUT_DIR, PUBLIC_EXTENSIONS};
        let out = self.opts.out.join(OUT_DIR);
        if out.exists() {
            fs::remove_dir_all(&out).map_err(io_err(&out))?;
        }
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        fs::create_dir_all(&out).map_err(io_err(&out))?;
        for v in keel_formats::efi::KeyVariable::ALL {
            for ext in PUBLIC_EXTENSIONS {
                let from = file(signer.dir(), v, ext);
                if from.is_file() {
                    let to = file(&out, v, ext);
                    fs::copy(&from, &to).map_err(io_err(&from))?;
                }
            }
        }
        Ok(Some(out))
    }

    /// The ESP image: systemd-boot, which boots the UKI named `uki_name`.
    /// With `secure_boot` (the public files), systemd-boot is signed and
    /// the auth files sit in `loader/keys/keel/`, where systemd-boot offers
    /// to enroll them on a machine in setup mode.
    pub(super) fn esp(
        &self,
        uki_name: &str,
        uki_bytes: Vec<u8>,
        secure_boot: Option<&Path>,
    ) -> Result<Vec<u8>, BuildError> {
        use crate::secureboot::{file, ENROLL_NAME};
        use keel_formats::efi::KeyVariable;
        let mut boot_bytes = fs::read(&self.boot).map_err(io_err(&self.boot))?;
        if let Some(s) = &self.signer {
            boot_bytes = s.sign(&boot_bytes, &self.work, "systemd-boot")?;
        }
        let mut loader_conf =
            "timeout 0\neditor no\nauto-entries no\nauto-firmware no\nconsole-mode keep\n"
                .to_string();
        let mut files = vec![
            ("EFI/BOOT/BOOTX64.EFI".into(), boot_bytes.clone()),
            ("EFI/systemd/systemd-bootx64.efi".into(), boot_bytes),
            (format!("EFI/Linux/{uki_name}"), uki_bytes),
        ];
        let auth: Vec<(KeyVariable, PathBuf)> = secure_boot
            .map(|dir| {
                KeyVariable::ALL
                    .iter()
                    .map(|v| (*v, file(dir, *v, "auth")))
                    .filter(|(_, p)| p.is_file())
                    .collect()
            })
            .unwrap_or_default();
        if auth.len() == KeyVariable::ALL.len() {
            // Shown only in setup mode, and only in the menu: a machine
            // that already has keys never sees it.
            loader_conf.push_str("secure-boot-enroll manual\n");
            for (v, p) in &auth {
                files.push((
                    format!("loader/keys/{ENROLL_NAME}/{}.auth", v.name()),
                    fs::read(p).map_err(io_err(p))?,
                ));
            }
        }
        files.push(("loader/loader.conf".into(), loader_conf.into_bytes()));
        let volume_id = u32::from_le_bytes(
            stable_guid(&self.seed, "esp").as_bytes()[..4]
                .try_into()
                .unwrap_or([0; 4]),
        );
        Ok(esp::build(
            self.r().partitions.esp_mib << 20,
            volume_id,
            &files,
        )?)
    }
}

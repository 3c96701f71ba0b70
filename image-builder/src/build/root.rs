//! The root filesystem: keel's files, the image's host files and the
//! recipe's own, staged and packed into erofs.

use std::fs;
use std::path::PathBuf;

use super::{io_err, Build, BuildError};
use crate::disk::stable_guid;
use crate::package::Package;
use crate::progress::Progress;
use crate::recipe::{ImageRecipe, Loaded};
use crate::rootfs;

impl Build<'_> {
    /// `root.erofs` in the output folder, refused when it outgrows its
    /// partition.
    pub(super) fn root_filesystem(
        &self,
        packages: &[Package],
        sign_key: Option<&ed25519_dalek::SigningKey>,
        progress: &mut dyn Progress,
    ) -> Result<PathBuf, BuildError> {
        let r = self.r();
        let files = host_files(&self.recipe, sign_key)?;
        progress.begin("root filesystem");
        let staging = self.work.join("rootfs");
        rootfs::stage(
            &staging,
            &rootfs::Inputs {
                keel_init: &self.keel_init,
                keelctl: &self.keelctl,
                bin_dir: &self.opts.bin_dir,
                packages,
                containers: &self.containers,
                os_release: &self.os_release,
                files: &files,
                extra: &extra_files(&self.recipe),
            },
        )?;
        let root = self.opts.out.join("root.erofs");
        rootfs::mkfs_erofs(
            &staging,
            &root,
            &stable_guid(&self.seed, "rootfs").to_string(),
        )?;
        progress.end(&format!("root filesystem {}", root.display()));
        let root_size = fs::metadata(&root).map_err(io_err(&root))?.len();
        if root_size > r.partitions.root_mib << 20 {
            return Err(BuildError::RootTooLarge {
                size: root_size,
                mib: r.partitions.root_mib,
            });
        }
        Ok(root)
    }
}

/// The image's trusted keys (the recipe's and the signing key's) and its
/// update policy, as files of the root filesystem.
fn host_files(
    recipe: &Loaded<ImageRecipe>,
    sign_key: Option<&ed25519_dalek::SigningKey>,
) -> Result<Vec<(String, Vec<u8>)>, BuildError> {
    let mut keys = Vec::new();
    for k in &recipe.recipe.update.keys {
        keys.push(crate::bundle::read_public(&recipe.resolve(k))?);
    }
    keys.extend(sign_key.map(|k| k.verifying_key()));
    keys.sort_by_key(|k| k.to_bytes());
    keys.dedup();
    let dir = keel_formats::keys::TRUSTED_DIR.trim_start_matches('/');
    let mut files: Vec<(String, Vec<u8>)> = keys
        .iter()
        .map(|k| {
            (
                format!("{dir}/{}.pub", keel_formats::signed::key_id(k.as_bytes())),
                keel_formats::keys::render_public(k).into_bytes(),
            )
        })
        .collect();
    let policy = toml::to_string(&recipe.recipe.update.policy).unwrap_or_default();
    files.push((
        keel_formats::policy::POLICY_FILE
            .trim_start_matches('/')
            .into(),
        policy.into_bytes(),
    ));
    // keel-init gives every container the chosen zone's rule as TZ.
    let zones = crate::zones::table(std::path::Path::new(crate::zones::ZONEINFO))?;
    files.push((
        keel_formats::tz::ZONES.trim_start_matches('/').into(),
        keel_formats::tz::render(&zones).into_bytes(),
    ));
    if let Some(config) = &recipe.recipe.host.config {
        let path = recipe.resolve(config);
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        use keel_formats::hostconfig::{check, render, Context, Source};
        let ctx = Context {
            services: Some(recipe.recipe.containers.enable.clone()),
            zones: Some(zones.keys().cloned().collect()),
        };
        if let Err(d) = check(
            Source {
                name: &path,
                text: &text,
            },
            &ctx,
        ) {
            return Err(BuildError::HostConfig {
                path,
                message: render(&d),
            });
        }
        files.push((
            keel_formats::host::DEFAULTS.trim_start_matches('/').into(),
            text.into_bytes(),
        ));
    }
    Ok(files)
}

/// The recipe's `[files]`, with their sources found beside the recipe.
fn extra_files(recipe: &Loaded<ImageRecipe>) -> Vec<rootfs::Extra> {
    recipe
        .recipe
        .files
        .iter()
        .map(|(dst, f)| rootfs::Extra {
            dst: dst.clone(),
            src: recipe.resolve(&f.source),
            mode: f.mode,
        })
        .collect()
}

//! The outputs made from the finished disk and its parts: the signed
//! bundle, the qcow2, the manifest; then what the recipe did not ask for
//! goes.

use std::fs;
use std::path::PathBuf;

use keel_formats::cmdline::to_hex;

use super::manifest::{manifest, ManifestInputs};
use super::{io_err, Build, BuildError, Made};
use crate::kernel::Kernel;
use crate::package::Package;
use crate::progress::Progress;
use crate::recipe::OutputFormat;

impl Build<'_> {
    /// The update bundle, when there is a key to sign it with.
    pub(super) fn bundle(
        &self,
        sign_key: Option<&ed25519_dalek::SigningKey>,
        made: &Made,
        progress: &mut dyn Progress,
    ) -> Result<Option<PathBuf>, BuildError> {
        let Some(key) = sign_key else {
            return Ok(None);
        };
        let r = self.r();
        progress.begin("signed bundle");
        let path = self
            .opts
            .out
            .join(format!("keel-{}.bundle", r.image.version));
        crate::bundle::write(
            &crate::bundle::BundleInputs {
                variant: &r.image.name,
                version: &r.image.version,
                verity: &made.tree.params,
                root: &made.root,
                verity_tree: &made.verity,
                uki: &made.uki.path,
                created: source_date_epoch(),
                min_version: r.update.min_version.as_deref(),
                allow_downgrade: r.update.allow_downgrade,
            },
            key,
            &path,
        )?;
        progress.end(&format!("signed bundle {}", path.display()));
        Ok(Some(path))
    }

    pub(super) fn qcow2(
        &self,
        disk: &std::path::Path,
        progress: &mut dyn Progress,
    ) -> Result<Option<PathBuf>, BuildError> {
        if !self.r().outputs.has(OutputFormat::Qcow2) {
            return Ok(None);
        }
        let q = self.opts.out.join("disk.qcow2");
        progress.begin("qcow2");
        crate::outputs::qcow2(disk, &q, progress)?;
        progress.end(&format!("qcow2 {}", q.display()));
        Ok(Some(q))
    }

    /// The manifest, when the recipe asks for one; it lists `outputs`, the
    /// outputs made so far, among the artifacts.
    pub(super) fn manifest(
        &self,
        kernel: &Kernel,
        packages: &[Package],
        made: &Made,
        bundle: Option<&PathBuf>,
        outputs: &[PathBuf],
    ) -> Result<Option<PathBuf>, BuildError> {
        if !self.r().outputs.has(OutputFormat::Manifest) {
            return Ok(None);
        }
        let m = manifest(&ManifestInputs {
            recipe: &self.recipe,
            kernel,
            packages,
            containers: &self.containers,
            bin_dir: &self.opts.bin_dir,
            root_hash: &to_hex(&made.tree.params.root_hash),
            artifacts: [&made.root, &made.verity, &made.uki.path, &made.disk]
                .into_iter()
                .chain(bundle)
                .chain(outputs.iter())
                .collect(),
        })?;
        Ok(Some(crate::outputs::write_manifest(&self.opts.out, &m)?))
    }

    /// The raw disk, if the recipe asked for it.
    pub(super) fn prune(&self, made: &Made) -> Result<Option<PathBuf>, BuildError> {
        // The raw disk and the UKI were needed on the way (for qcow2, the
        // bundle, the manifest); what the recipe did not ask for goes now.
        let r = self.r();
        let disk = if r.outputs.has(OutputFormat::Raw) {
            Some(made.disk.clone())
        } else {
            fs::remove_file(&made.disk).map_err(io_err(&made.disk))?;
            None
        };
        if !r.outputs.has(OutputFormat::Uki) {
            fs::remove_file(&made.uki.path).map_err(io_err(&made.uki.path))?;
        }
        Ok(disk)
    }
}

/// Build time for what records one: `SOURCE_DATE_EPOCH` when set, so that
/// a rebuild can reproduce it.
fn source_date_epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        })
}

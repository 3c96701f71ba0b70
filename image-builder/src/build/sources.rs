//! What the image is built from that the build makes or reads first: the
//! kernel and the userland packages (built once, then taken from the
//! cache) and the key that signs the bundle.

use super::{Build, BuildError};
use crate::progress::Progress;
use crate::{kernel, package, recipe};

impl Build<'_> {
    pub(super) fn kernel(&self, progress: &mut dyn Progress) -> Result<kernel::Kernel, BuildError> {
        progress.begin("kernel");
        let kernel = kernel::ensure(&self.opts.cache, &self.recipe, self.opts.jobs, progress)?;
        progress.end(&format!("kernel {}", kernel.release));
        Ok(kernel)
    }

    pub(super) fn packages(
        &self,
        progress: &mut dyn Progress,
    ) -> Result<Vec<package::Package>, BuildError> {
        let r = self.r();
        let mut packages = Vec::new();
        for name in &r.userland.packages {
            let path = self
                .recipe
                .resolve(&format!("{}/{name}.toml", r.userland.packages_dir));
            let pkg = recipe::load_package(&path)?;
            progress.begin(&format!("package {name}"));
            packages.push(package::ensure(
                &self.opts.cache,
                name,
                &pkg,
                self.opts.jobs,
                progress,
            )?);
            progress.end(&format!("package {name}"));
        }
        Ok(packages)
    }

    pub(super) fn sign_key(&self) -> Result<Option<ed25519_dalek::SigningKey>, BuildError> {
        Ok(self
            .opts
            .sign_key
            .as_deref()
            .map(crate::bundle::read_secret)
            .transpose()?)
    }
}

//! The manifest: every component of the image, with where it came from,
//! and every file the build wrote, each with its sha256.

use std::path::{Path, PathBuf};

use super::{BuildError, StagedContainer, SYSTEMD_BOOT, SYSTEMD_STUB};
use crate::outputs::{debian_version, sha256, sha256_file, Component, Manifest};
use crate::recipe::{ImageRecipe, Loaded};
use crate::{kernel, package};

pub(super) struct ManifestInputs<'a> {
    pub recipe: &'a Loaded<ImageRecipe>,
    pub kernel: &'a kernel::Kernel,
    pub packages: &'a [package::Package],
    pub containers: &'a [StagedContainer],
    pub bin_dir: &'a Path,
    pub root_hash: &'a str,
    pub artifacts: Vec<&'a PathBuf>,
}

fn c(name: &str, version: String, source: String, sha256: String) -> Component {
    Component {
        name: name.to_string(),
        version,
        source,
        sha256,
    }
}

pub(super) fn manifest(i: &ManifestInputs<'_>) -> Result<Manifest, BuildError> {
    let r = &i.recipe.recipe;
    let mut components = kernel_components(i.kernel)?;
    components.extend(package_components(i.packages)?);
    components.extend(boot_components()?);
    components.extend(keel_components(i)?);
    for cont in i.containers {
        components.push(c(
            &format!("container {}", cont.name),
            r.image.version.clone(),
            "container definition".into(),
            sha256(cont.text.as_bytes()),
        ));
    }
    let artifacts = i
        .artifacts
        .iter()
        .map(|p| {
            Ok(c(
                &p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                r.image.version.clone(),
                "keel build".into(),
                sha256_file(p)?,
            ))
        })
        .collect::<Result<_, BuildError>>()?;
    Ok(Manifest {
        image: r.image.name.clone(),
        version: r.image.version.clone(),
        root_hash: i.root_hash.to_string(),
        components,
        artifacts,
    })
}

/// The kernel and each module stage 1 loads.
fn kernel_components(k: &kernel::Kernel) -> Result<Vec<Component>, BuildError> {
    let mut out = vec![c(
        "kernel",
        k.release.clone(),
        k.origin.clone(),
        sha256_file(&k.bzimage)?,
    )];
    for (name, path) in &k.modules {
        out.push(c(
            &format!("kernel module {name}"),
            k.release.clone(),
            k.origin.clone(),
            sha256_file(path)?,
        ));
    }
    Ok(out)
}

fn package_components(packages: &[package::Package]) -> Result<Vec<Component>, BuildError> {
    let mut out = Vec::new();
    for p in packages {
        let first = p.files.first().map(|(_, f)| f.clone()).unwrap_or_default();
        out.push(c(
            &p.name,
            p.source
                .split_once(' ')
                .map_or(String::new(), |(_, v)| v.to_string()),
            format!("Debian source package {}, built with musl-gcc", p.source),
            sha256_file(&first)?,
        ));
    }
    Ok(out)
}

/// systemd-boot and the UKI stub, from the build machine's Debian.
fn boot_components() -> Result<Vec<Component>, BuildError> {
    let efi = debian_version("systemd-boot-efi").unwrap_or_else(|| "unknown".into());
    let mut out = Vec::new();
    for (name, path) in [
        ("systemd-boot", SYSTEMD_BOOT),
        ("systemd-stub", SYSTEMD_STUB),
    ] {
        out.push(c(
            name,
            efi.clone(),
            format!("Debian systemd-boot-efi {efi}"),
            sha256_file(Path::new(path))?,
        ));
    }
    Ok(out)
}

/// keel's own binaries: keel-init, keelctl and those containers carry.
fn keel_components(i: &ManifestInputs<'_>) -> Result<Vec<Component>, BuildError> {
    let mut bins: Vec<String> = vec!["keel-init".into(), "keelctl".into()];
    for cont in i.containers {
        for item in &cont.def.rootfs.contents {
            if i.bin_dir.join(item).is_file() && !bins.contains(item) {
                bins.push(item.clone());
            }
        }
    }
    let mut out = Vec::new();
    for b in bins {
        out.push(c(
            &b,
            keel_formats::KEEL_VERSION.to_string(),
            "keel".into(),
            sha256_file(&i.bin_dir.join(&b))?,
        ));
    }
    Ok(out)
}

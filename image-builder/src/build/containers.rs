//! The system containers a recipe enables: found, parsed, filled in from
//! their OCI images and checked before anything is built.

use std::fs;
use std::path::{Path, PathBuf};

use keel_formats::container::{self, ContainerDef};

use super::{io_err, BuildError};
use crate::recipe::{ImageRecipe, Loaded};
use crate::rootfs::StagedContainer;

/// Load, parse and validate the container definitions a recipe enables.
pub fn load_containers(recipe: &Loaded<ImageRecipe>) -> Result<Vec<StagedContainer>, BuildError> {
    let dirs: Vec<PathBuf> = recipe
        .recipe
        .containers
        .dirs
        .iter()
        .map(|d| recipe.resolve(d))
        .collect();
    let mut out = Vec::new();
    for name in &recipe.recipe.containers.enable {
        out.push(load_one(&dirs, name)?);
    }
    let pairs: Vec<(String, ContainerDef)> = out
        .iter()
        .map(|c| (c.name.clone(), c.def.clone()))
        .collect();
    keel_formats::lifecycle::start_order(&pairs).map_err(|e| BuildError::Container {
        path: recipe.path.clone(),
        message: format!("containers.enable: {e}"),
    })?;
    Ok(out)
}

/// The definition of `name` from the first of `dirs` that has one.
fn find(dirs: &[PathBuf], name: &str) -> Result<PathBuf, BuildError> {
    let candidates: Vec<PathBuf> = dirs
        .iter()
        .map(|d| d.join(format!("{name}.toml")))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| BuildError::Missing {
            path: candidates.first().cloned().unwrap_or_default(),
            hint: format!(
                "containers.enable names {name:?}, which none of containers.dirs defines"
            ),
        })
}

fn load_one(dirs: &[PathBuf], name: &str) -> Result<StagedContainer, BuildError> {
    let path = find(dirs, name)?;
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    let bad = |e: container::ContainerError| BuildError::Container {
        path: path.clone(),
        message: e.to_string(),
    };
    let mut def = ContainerDef::parse(&text).map_err(bad)?;
    let mut text = text;
    let mut oci = None;
    if let Some(rel) = def.rootfs.oci.clone() {
        let (resolved, image) = resolve_oci(&path, &rel, &text)?;
        text = resolved;
        def = ContainerDef::parse(&text).map_err(bad)?;
        oci = Some(std::sync::Arc::new(image));
    }
    container::validate(name, &def).map_err(bad)?;
    keel_formats::seccomp::compile(&def.seccomp).map_err(|e| BuildError::Container {
        path: path.clone(),
        message: format!("`seccomp`: {e}"),
    })?;
    let beside = path.parent().unwrap_or(Path::new("."));
    let files = def
        .rootfs
        .files
        .iter()
        .map(|(dst, src)| (dst.clone(), beside.join(src)))
        .collect();
    Ok(StagedContainer {
        name: name.to_string(),
        def,
        text,
        oci,
        files,
    })
}

/// An OCI image's config fills in what the definition leaves out; the
/// image keeps the resolved text, so keel-init needs no OCI.
fn resolve_oci(
    path: &Path,
    rel: &str,
    text: &str,
) -> Result<(String, crate::oci::Image), BuildError> {
    let src = path.parent().unwrap_or(Path::new(".")).join(rel);
    let image = crate::oci::open(&src).map_err(|e| BuildError::Container {
        path: path.to_path_buf(),
        message: format!("`rootfs.oci`: {e}"),
    })?;
    // Resolved in the image as it unpacks, by the one unpacker and the one
    // in-root reader keel-init uses too: a second reading of the layers
    // would be a second set of rules for links and whiteouts. Unpacked
    // again, into the staged root, later.
    let scratch = tempfile::tempdir().map_err(|e| BuildError::Container {
        path: path.to_path_buf(),
        message: format!("a scratch folder: {e}"),
    })?;
    let files = crate::oci::unpack(&image, scratch.path())
        .map_err(|e| e.to_string())
        .and_then(|()| crate::oci::InRoot::open(scratch.path()))
        .map_err(|e| BuildError::Container {
            path: path.to_path_buf(),
            message: format!("`rootfs.oci` {rel}: {e}"),
        })?;
    let text = crate::oci::resolve_text(text, &image.config, &files).map_err(|m| {
        BuildError::Container {
            path: path.to_path_buf(),
            message: format!("`rootfs.oci` {rel}: {m}"),
        }
    })?;
    Ok((text, image))
}

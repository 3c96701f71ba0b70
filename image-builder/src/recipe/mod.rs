//! Image and package recipes: the types (serde, no I/O), their validation,
//! and loading from files with errors that name the file, line and key.

mod types;
mod validate;

use std::path::{Path, PathBuf};

pub use types::*;
pub use validate::validate_image;

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// A recipe together with the file it came from; relative paths in it are
/// relative to that file's folder.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    pub path: PathBuf,
    pub recipe: T,
}

impl<T> Loaded<T> {
    pub fn resolve(&self, rel: &str) -> PathBuf {
        self.path.parent().unwrap_or(Path::new(".")).join(rel)
    }
}

fn load<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Loaded<T>, RecipeError> {
    let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let recipe = toml::from_str(&text).map_err(|e| RecipeError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(Loaded {
        path: path.to_path_buf(),
        recipe,
    })
}

/// Load and validate an image recipe.
pub fn load_image(path: &Path) -> Result<Loaded<ImageRecipe>, RecipeError> {
    let loaded: Loaded<ImageRecipe> = load(path)?;
    validate_image(&loaded.recipe).map_err(|(key, message)| RecipeError::Invalid {
        path: path.to_path_buf(),
        key,
        message,
    })?;
    Ok(loaded)
}

/// Load a userland package recipe.
pub fn load_package(path: &Path) -> Result<Loaded<PackageRecipe>, RecipeError> {
    let loaded: Loaded<PackageRecipe> = load(path)?;
    validate::validate_package(&loaded.recipe).map_err(|(key, message)| RecipeError::Invalid {
        path: path.to_path_buf(),
        key,
        message,
    })?;
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_recipes_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
        let img = load_image(&root.join("host.toml")).unwrap();
        assert_eq!(img.recipe.image.name, "keel");
        for p in &img.recipe.userland.packages {
            load_package(
                &root
                    .join(&img.recipe.userland.packages_dir)
                    .join(format!("{p}.toml")),
            )
            .unwrap();
        }
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(
            &path,
            "[image]\nname = \"keel\"\nversion = \"0.1.0\"\ncolour = \"red\"\n",
        )
        .unwrap();
        let msg = load_image(&path).unwrap_err().to_string();
        assert!(
            msg.contains("bad.toml") && msg.contains("line 4") && msg.contains("colour"),
            "{msg}"
        );
    }

    #[test]
    fn outputs_name_known_formats() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.toml");
        let base = "[image]\nname = \"keel\"\nversion = \"0.1.0\"\n\
                    [kernel]\nsource = \"linux-source-6.1\"\nfragments = [\"k\"]\nrequired = \"r\"\n\
                    [containers]\ndirs = [\"c\"]\nenable = [\"admin\"]\n";
        std::fs::write(&path, base).unwrap();
        let r = load_image(&path).unwrap();
        assert!(
            r.recipe.outputs.has(OutputFormat::Raw) && !r.recipe.outputs.has(OutputFormat::Qcow2)
        );
        std::fs::write(
            &path,
            format!("{base}[outputs]\nformats = [\"raw\", \"vhd\"]\n"),
        )
        .unwrap();
        let msg = load_image(&path).unwrap_err().to_string();
        assert!(
            msg.contains("line 12") && msg.contains("vhd") && msg.contains("qcow2"),
            "{msg}"
        );
        std::fs::write(&path, format!("{base}[outputs]\nformats = []\n")).unwrap();
        let msg = load_image(&path).unwrap_err().to_string();
        assert!(msg.contains("outputs.formats"), "{msg}");
    }
}

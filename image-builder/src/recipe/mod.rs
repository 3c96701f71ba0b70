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
    #[error("{path}: {at}`{key}`: {message}")]
    Invalid {
        path: PathBuf,
        /// `line N: ` where the key is set, when it is in the file.
        at: String,
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

/// The line (from 1) where dotted `key` is set in `text`, or where the
/// deepest part of it is.
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    let path: Vec<String> = key.split('.').map(str::to_string).collect();
    keel_formats::hostconfig::load::locate(text, &path).map(|(_, line, _)| line)
}

/// Parse `path` as `T` and run `validate` on it; errors name the file, the
/// line and the key.
fn load<T: serde::de::DeserializeOwned>(
    path: &Path,
    validate: impl FnOnce(&T) -> Result<(), (String, String)>,
) -> Result<Loaded<T>, RecipeError> {
    let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let recipe = toml::from_str(&text).map_err(|e| RecipeError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    validate(&recipe).map_err(|(key, message)| RecipeError::Invalid {
        path: path.to_path_buf(),
        at: line_of(&text, &key).map_or_else(String::new, |l| format!("line {l}: ")),
        key,
        message,
    })?;
    Ok(Loaded {
        path: path.to_path_buf(),
        recipe,
    })
}

/// Load and validate an image recipe.
pub fn load_image(path: &Path) -> Result<Loaded<ImageRecipe>, RecipeError> {
    load(path, validate_image)
}

/// Load a userland package recipe.
pub fn load_package(path: &Path) -> Result<Loaded<PackageRecipe>, RecipeError> {
    load(path, validate::validate_package)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_recipes_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
        let debian = load_image(&root.join("debian-kernel.toml")).unwrap();
        assert_eq!(
            debian.recipe.kernel.from(),
            KernelFrom::Package("linux-image-cloud-amd64")
        );
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
        assert!(msg.contains("line 12: `outputs.formats`"), "{msg}");
    }

    #[test]
    fn files_take_a_path_or_a_table_and_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        let head = "[image]\nname = \"keel\"\nversion = \"0.1.0\"\n\
                    [kernel]\nsource = \"linux-source-6.1\"\nfragments = [\"k\"]\nrequired = \"r\"\n\
                    [containers]\ndirs = [\"c\"]\nenable = [\"admin\"]\n[files]\n";
        let load = |files: &str| {
            std::fs::write(&path, format!("{head}{files}")).unwrap();
            load_image(&path)
        };
        let r =
            load("\"etc/motd\" = \"motd\"\n\"usr/bin/x\" = { source = \"x.sh\", mode = 0o755 }\n")
                .unwrap();
        assert_eq!(
            r.recipe.files["usr/bin/x"],
            ExtraFile {
                source: "x.sh".into(),
                mode: Some(0o755)
            }
        );
        assert_eq!(r.recipe.files["etc/motd"].mode, None);
        for (files, want) in [
            (
                "\"/etc/motd\" = \"m\"\n",
                "line 12: `files./etc/motd`: the path in the image must be relative",
            ),
            ("\"etc/../x\" = \"m\"\n", "without `.`, `..`"),
            ("\"var/lib/x\" = \"m\"\n", "/var is mounted over"),
            (
                "\"etc/x\" = { source = \"m\", mode = 0o4755 }\n",
                "no setuid",
            ),
            (
                "\"etc/x\" = { source = \"m\", owner = 0 }\n",
                "unknown field `owner`",
            ),
            ("\"etc/x\" = 3\n", "a source path, or a table"),
        ] {
            let e = load(files).unwrap_err().to_string();
            assert!(e.contains(want), "{files}: {e}");
        }
    }

    #[test]
    fn kernel_is_built_or_prebuilt_never_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.toml");
        let head = "[image]\nname = \"keel\"\nversion = \"0.1.0\"\n[kernel]\nrequired = \"r\"\n";
        let tail = "[containers]\ndirs = [\"c\"]\nenable = [\"admin\"]\n";
        let check = |kernel: &str, want: &str| {
            std::fs::write(&path, format!("{head}{kernel}{tail}")).unwrap();
            match load_image(&path) {
                Ok(r) => assert_eq!(want, "ok", "{kernel}: {:?}", r.recipe.kernel),
                Err(e) => assert!(e.to_string().contains(want), "{kernel}: {e}"),
            }
        };
        check(
            "package = \"linux-image-cloud-amd64\"\nmodules = [\"virtio_blk\"]\n",
            "ok",
        );
        check(
            "source = \"linux-source-6.1\"\npackage = \"linux-image-cloud-amd64\"\n",
            "line 7: `kernel.package`: name either",
        );
        check("", "line 4: `kernel`: name `source`");
        check(
            "package = \"linux-image-cloud-amd64\"\nfragments = [\"k\"]\n",
            "line 7: `kernel.fragments`",
        );
        check(
            "source = \"linux-source-6.1\"\nfragments = [\"k\"]\nmodules = [\"erofs\"]\n",
            "line 8: `kernel.modules`: only a prebuilt kernel",
        );
        check(
            "package = \"linux-image-cloud-amd64\"\nmodules = [\"../evil\"]\n",
            "\"../evil\" is not a module name",
        );
    }
}

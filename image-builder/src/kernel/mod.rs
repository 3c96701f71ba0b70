//! The kernel: built from a Debian kernel source package with everything
//! built in ([`source`]), or Debian's prebuilt image package with the
//! modules the image needs ([`debian`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cache::{Cache, CacheError};
use crate::progress::Progress;
use crate::recipe::{ImageRecipe, KernelFrom, Loaded};
use crate::tool::ToolError;

pub mod debian;
pub mod modules;
mod source;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("kernel source {path} is missing: apt-get install {package}")]
    NoSource { path: PathBuf, package: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel config {config} lacks options required by {required}:\n{missing}")]
    MissingOptions {
        config: PathBuf,
        required: PathBuf,
        missing: String,
    },
    #[error("{required}: line {line}: {text:?} is not NAME=VALUE")]
    BadRequired {
        required: PathBuf,
        line: usize,
        text: String,
    },
    #[error("kernel.package {package}: {message}")]
    Apt { package: String, message: String },
    #[error("{deb}: sha256 {got} is not the {want} apt's index names")]
    DebHash {
        deb: PathBuf,
        want: String,
        got: String,
    },
    #[error("kernel.package {package} holds no /boot/vmlinuz-*: is it a linux-image package?")]
    NoImage { package: String },
    #[error(transparent)]
    Modules(#[from] modules::ModuleError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// A kernel in the cache.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub bzimage: PathBuf,
    pub config: PathBuf,
    /// `uname -r` of the kernel.
    pub release: String,
    /// Modules stage 1 loads, in order: name and file.
    pub modules: Vec<(String, PathBuf)>,
    /// Where it came from, for the manifest: package and version.
    pub origin: String,
}

/// Return the kernel for `recipe`, building or downloading it if the cache
/// lacks it.
pub fn ensure(
    cache: &Cache,
    recipe: &Loaded<ImageRecipe>,
    jobs: usize,
    progress: &mut dyn Progress,
) -> Result<Kernel, KernelError> {
    match recipe.recipe.kernel.from() {
        KernelFrom::Source(source) => source::ensure(cache, recipe, source, jobs, progress),
        KernelFrom::Package(package) => debian::ensure(cache, recipe, package),
    }
}

/// One required option the config does not satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub name: String,
    pub want: String,
    /// What the config has instead (`n` when not set).
    pub have: String,
}

/// Parse a required-options list: `NAME=VALUE` per line, `#` comments.
pub fn parse_required(text: &str, path: &Path) -> Result<Vec<(String, String)>, KernelError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) if k.starts_with("CONFIG_") && !v.is_empty() => {
                out.push((k.to_string(), v.to_string()))
            }
            _ => {
                return Err(KernelError::BadRequired {
                    required: path.to_path_buf(),
                    line: i + 1,
                    text: line.to_string(),
                })
            }
        }
    }
    Ok(out)
}

/// Parse a Kconfig `.config` into option → value (`n` for "is not set").
pub fn parse_config(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
        {
            out.insert(rest.to_string(), "n".to_string());
        } else if let Some((k, v)) = line.split_once('=') {
            if k.starts_with("CONFIG_") {
                out.insert(k.to_string(), v.to_string());
            }
        }
    }
    out
}

/// The required options that `config` does not have with the right value.
pub fn missing_options(
    required: &[(String, String)],
    config: &BTreeMap<String, String>,
) -> Vec<Missing> {
    required
        .iter()
        .filter_map(|(name, want)| {
            let have = config.get(name).cloned().unwrap_or_else(|| "n".to_string());
            (have != *want).then(|| Missing {
                name: name.clone(),
                want: want.clone(),
                have,
            })
        })
        .collect()
}

/// Check `config` against the `required` list. With `modules`, an option
/// that is a module (`m`) counts as built in (`y`): stage 1 loads it.
fn check_required(config: &Path, required: &Path, modules: bool) -> Result<(), KernelError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| KernelError::Io {
            path: p.to_path_buf(),
            source,
        })
    };
    let req = parse_required(&read(required)?, required)?;
    let mut have = parse_config(&read(config)?);
    if modules {
        for v in have.values_mut() {
            if v == "m" {
                *v = "y".to_string();
            }
        }
    }
    let missing = missing_options(&req, &have);
    if missing.is_empty() {
        return Ok(());
    }
    let missing = missing
        .iter()
        .map(|m| {
            let have = if m.have == "n" {
                "is not set".to_string()
            } else {
                format!("is {}", m.have)
            };
            format!("  {}={} ({have})", m.name, m.want)
        })
        .collect::<Vec<_>>()
        .join("\n");
    Err(KernelError::MissingOptions {
        config: config.to_path_buf(),
        required: required.to_path_buf(),
        missing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_options_are_named_with_what_the_config_has() {
        let req = parse_required(
            "# c\nCONFIG_A=y\n\nCONFIG_B=y\nCONFIG_C=y\nCONFIG_D=64\n",
            Path::new("r"),
        )
        .unwrap();
        let cfg = parse_config("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_D=32\n");
        let m = missing_options(&req, &cfg);
        let names: Vec<_> = m
            .iter()
            .map(|m| (m.name.as_str(), m.have.as_str()))
            .collect();
        assert_eq!(
            names,
            [("CONFIG_B", "n"), ("CONFIG_C", "n"), ("CONFIG_D", "32")]
        );
    }

    #[test]
    fn bad_required_line_names_the_line() {
        let err = parse_required("CONFIG_A=y\nbogus\n", Path::new("req.txt")).unwrap_err();
        assert!(
            matches!(err, KernelError::BadRequired { line: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn check_required_reports_every_missing_option() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, req) = (dir.path().join("config"), dir.path().join("required.txt"));
        std::fs::write(&cfg, "CONFIG_A=y\nCONFIG_B=m\n").unwrap();
        std::fs::write(&req, "CONFIG_A=y\nCONFIG_B=y\nCONFIG_DM_VERITY=y\n").unwrap();
        let msg = check_required(&cfg, &req, false).unwrap_err().to_string();
        assert!(
            msg.contains("CONFIG_B=y (is m)") && msg.contains("CONFIG_DM_VERITY=y (is not set)"),
            "{msg}"
        );
        assert!(!msg.contains("CONFIG_A"), "{msg}");
        // A prebuilt kernel loads modules: `m` satisfies `y` there.
        let msg = check_required(&cfg, &req, true).unwrap_err().to_string();
        assert!(!msg.contains("CONFIG_B"), "{msg}");
    }
}

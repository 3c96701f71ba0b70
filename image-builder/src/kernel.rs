//! The kernel: built from a Debian kernel source package on the recipe's
//! base config plus keel's fragments, everything built in, and cached by a
//! hash of the source, the fragments and the compiler.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cache::{Cache, CacheError, Key};
use crate::recipe::{ImageRecipe, Loaded};
use crate::tool::{self, ToolError};

/// Bump when the way a kernel is built changes, so old entries are not used.
const BUILD_VERSION: &str = "kernel-build-1";

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
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// A built kernel in the cache.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub bzimage: PathBuf,
    pub config: PathBuf,
    /// `uname -r` of the kernel.
    pub release: String,
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

fn check_required(config: &Path, required: &Path) -> Result<(), KernelError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| KernelError::Io {
            path: p.to_path_buf(),
            source,
        })
    };
    let req = parse_required(&read(required)?, required)?;
    let missing = missing_options(&req, &parse_config(&read(config)?));
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

fn first_line(cmd: &mut Command) -> Result<String, ToolError> {
    let out = tool::run(cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// Identify the source by the package's recorded checksums, so the key
/// changes when Debian ships a new tarball without hashing 130 MB each build.
fn source_identity(package: &str, tarball: &Path) -> Result<Vec<u8>, KernelError> {
    let md5sums = PathBuf::from(format!("/var/lib/dpkg/info/{package}.md5sums"));
    if let Ok(text) = std::fs::read(&md5sums) {
        return Ok(text);
    }
    let data = std::fs::read(tarball).map_err(|source| KernelError::Io {
        path: tarball.to_path_buf(),
        source,
    })?;
    Ok(sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&data)).to_vec())
}

/// Return the kernel for `recipe`, building it if the cache lacks it.
pub fn ensure(
    cache: &Cache,
    recipe: &Loaded<ImageRecipe>,
    jobs: usize,
) -> Result<Kernel, KernelError> {
    let k = &recipe.recipe.kernel;
    let tarball = PathBuf::from(format!("/usr/src/{}.tar.xz", k.source));
    if !tarball.is_file() {
        return Err(KernelError::NoSource {
            path: tarball,
            package: k.source.clone(),
        });
    }
    let required = recipe.resolve(&k.required);
    let mut key = Key::new(BUILD_VERSION);
    key.add(k.source.as_bytes())
        .add(&source_identity(&k.source, &tarball)?)
        .add(k.base.as_bytes());
    let mut fragments = Vec::new();
    for f in &k.fragments {
        let path = recipe.resolve(f);
        let text = std::fs::read(&path).map_err(|source| KernelError::Io {
            path: path.clone(),
            source,
        })?;
        key.add(&text);
        fragments.push(text);
    }
    key.add(first_line(Command::new("gcc").arg("--version"))?.as_bytes());
    let key = key.hex();

    let dir = match cache.get("kernel", &key) {
        Some(dir) => dir,
        None => {
            let scratch = cache.scratch("kernel", &key)?;
            build(&scratch, &tarball, &k.base, &fragments, &required, jobs)?;
            cache.commit("kernel", &key, &scratch)?
        }
    };
    let config = dir.join("config");
    check_required(&config, &required)?;
    let release_path = dir.join("release");
    let release = std::fs::read_to_string(&release_path)
        .map_err(|source| KernelError::Io {
            path: release_path,
            source,
        })?
        .trim()
        .to_string();
    Ok(Kernel {
        bzimage: dir.join("bzImage"),
        config,
        release,
    })
}

fn build(
    scratch: &Path,
    tarball: &Path,
    base: &str,
    fragments: &[Vec<u8>],
    required: &Path,
    jobs: usize,
) -> Result<(), KernelError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KernelError::Io { path, source }
    };
    let src = scratch.join("src");
    let log = scratch.join("build.log");
    std::fs::create_dir_all(&src).map_err(io_err(&src))?;
    eprintln!(
        "keel: building the kernel from {} (a few minutes; log {})",
        tarball.display(),
        log.display()
    );
    tool::run_logged(
        Command::new("tar")
            .arg("-xf")
            .arg(tarball)
            .arg("--strip-components=1")
            .arg("-C")
            .arg(&src),
        scratch,
        &log,
    )?;
    let make = |args: &[&str]| -> Result<(), KernelError> {
        let mut cmd = Command::new("make");
        cmd.args(args)
            .env("KBUILD_BUILD_TIMESTAMP", "Thu Jan  1 00:00:00 UTC 1970")
            .env("KBUILD_BUILD_USER", "keel")
            .env("KBUILD_BUILD_HOST", "keel")
            .env("KBUILD_BUILD_VERSION", "1");
        Ok(tool::run_logged(&mut cmd, &src, &log)?)
    };
    make(&[base])?;
    // Kconfig takes the last assignment of a symbol, so appending the
    // fragments and re-resolving is a merge.
    let config_path = src.join(".config");
    let mut config = std::fs::read(&config_path).map_err(io_err(&config_path))?;
    for f in fragments {
        config.push(b'\n');
        config.extend_from_slice(f);
    }
    std::fs::write(&config_path, config).map_err(io_err(&config_path))?;
    make(&["olddefconfig"])?;
    // Fail before the long build if a fragment option did not survive.
    check_required(&config_path, required)?;
    make(&[&format!("-j{jobs}"), "bzImage"])?;
    for (from, to) in [
        ("arch/x86/boot/bzImage", "bzImage"),
        (".config", "config"),
        ("include/config/kernel.release", "release"),
    ] {
        std::fs::copy(src.join(from), scratch.join(to)).map_err(io_err(&src.join(from)))?;
    }
    std::fs::remove_dir_all(&src).map_err(io_err(&src))?;
    Ok(())
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
        let msg = check_required(&cfg, &req).unwrap_err().to_string();
        assert!(
            msg.contains("CONFIG_B=y (is m)") && msg.contains("CONFIG_DM_VERITY=y (is not set)"),
            "{msg}"
        );
        assert!(!msg.contains("CONFIG_A"), "{msg}");
    }
}

//! The lock file beside a recipe (`host.toml` → `host.lock`): the exact
//! version and sha256 of every input an image is made from, outside keel's
//! own binaries: the recipe, the kernel source package, config fragments,
//! userland source packages and their recipes, systemd-boot, the zone
//! database (tzdata), the toolchain, container definitions and trusted
//! keys. `keel lock` writes it; `keel build --locked` refuses to build
//! when an input differs from it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::recipe::{self, ImageRecipe, KernelFrom, Loaded};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path} is missing: run `keel lock {recipe}` first")]
    NoLock { path: PathBuf, recipe: PathBuf },
    #[error("inputs differ from {path} (run `keel lock {recipe}` to accept them):\n  {}", changes.join("\n  "))]
    Changed {
        path: PathBuf,
        recipe: PathBuf,
        changes: Vec<String>,
    },
    #[error("{0}")]
    Input(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LockError + '_ {
    move |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub format: u32,
    #[serde(rename = "input")]
    pub inputs: Vec<Input>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub name: String,
    /// A Debian package version where there is one; empty for files.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    pub sha256: String,
}

/// `recipes/host.toml` → `recipes/host.lock`.
pub fn lock_path(recipe: &Path) -> PathBuf {
    recipe.with_extension("lock")
}

fn sha256_file(p: &Path) -> Result<String, LockError> {
    crate::outputs::sha256_file(p).map_err(|e| LockError::Input(e.to_string()))
}

fn dpkg_version(pkg: &str) -> Result<String, LockError> {
    crate::outputs::debian_version(pkg).ok_or_else(|| {
        LockError::Input(format!(
            "Debian package {pkg} is not installed (apt-get install {pkg})"
        ))
    })
}

/// An installed Debian package: its version, and the sha256 of dpkg's
/// list of its files' checksums.
fn debian(name: &str, pkg: &str) -> Result<Input, LockError> {
    let version = dpkg_version(pkg)?;
    let md5sums = PathBuf::from(format!("/var/lib/dpkg/info/{pkg}.md5sums"));
    let sha256 = if md5sums.is_file() {
        sha256_file(&md5sums)?
    } else {
        hex::encode(Sha256::digest(format!("{pkg} {version}")))
    };
    Ok(Input {
        name: name.to_string(),
        version,
        sha256,
    })
}

/// sha256 of a file, or of a folder: every file's path, mode and sha256,
/// in name order.
fn tree_sha256(path: &Path) -> Result<String, LockError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| LockError::Input(format!("{}: {e}", path.display())))?;
    if !meta.is_dir() {
        return sha256_file(path);
    }
    let mut names: Vec<_> = std::fs::read_dir(path)
        .and_then(|d| d.map(|e| e.map(|e| e.file_name())).collect())
        .map_err(|e| LockError::Input(format!("{}: {e}", path.display())))?;
    names.sort();
    let mut h = Sha256::new();
    for n in names {
        let p = path.join(&n);
        let mode = std::fs::metadata(&p)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
            .unwrap_or(0);
        h.update(format!(
            "{} {mode:o} {}\n",
            n.to_string_lossy(),
            tree_sha256(&p)?
        ));
    }
    Ok(hex::encode(h.finalize()))
}

fn file(name: String, path: &Path) -> Result<Input, LockError> {
    Ok(Input {
        name,
        version: String::new(),
        sha256: sha256_file(path)?,
    })
}

/// A Debian source package as apt would fetch it: the version from its
/// .dsc, and the sha256 of its files' names, sizes and sums.
fn source_package(name: &str) -> Result<Input, LockError> {
    let out = Command::new("apt-get")
        .args(["source", "--print-uris", "-qq", name])
        .output()
        .map_err(|e| LockError::Input(format!("apt-get source --print-uris {name}: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let files: Vec<String> = text
        .lines()
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect();
    let (_, version) = crate::package::dsc_version(&files).ok_or_else(|| {
        LockError::Input(format!(
            "no source package {name} (is there a deb-src entry? cargo xtask deps adds one)"
        ))
    })?;
    Ok(Input {
        name: format!("source package {name}"),
        version,
        sha256: hex::encode(Sha256::digest(files.join("\n"))),
    })
}

/// Every input of `recipe`, in a stable order.
pub fn collect(recipe: &Loaded<ImageRecipe>) -> Result<Vec<Input>, LockError> {
    let r = &recipe.recipe;
    let name_of = |p: &Path| {
        p.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    };
    let mut inputs = vec![file(
        format!("recipe {}", name_of(&recipe.path)),
        &recipe.path,
    )?];
    let k = &r.kernel;
    match k.from() {
        KernelFrom::Source(source) => {
            let tarball = PathBuf::from(format!("/usr/src/{source}.tar.xz"));
            inputs.push(Input {
                name: format!("kernel source {source}"),
                version: dpkg_version(source)?,
                sha256: sha256_file(&tarball)?,
            });
        }
        KernelFrom::Package(package) => {
            let (version, sha256) = crate::kernel::debian::lock_input(package)
                .map_err(|e| LockError::Input(e.to_string()))?;
            inputs.push(Input {
                name: format!("kernel package {package}"),
                version,
                sha256,
            });
        }
    }
    for f in k.fragments.iter().chain([&k.required]) {
        inputs.push(file(format!("kernel config {f}"), &recipe.resolve(f))?);
    }
    for p in &r.userland.packages {
        let path = recipe.resolve(&format!("{}/{p}.toml", r.userland.packages_dir));
        let pkg = recipe::load_package(&path).map_err(|e| LockError::Input(e.to_string()))?;
        inputs.push(file(format!("package recipe {p}"), &path)?);
        inputs.push(source_package(&pkg.recipe.source)?);
    }
    inputs.push(debian("boot loader and stub", "systemd-boot-efi")?);
    // The image's zone table is made from the build machine's zoneinfo.
    inputs.push(debian("zone database", "tzdata")?);
    for pkg in ["gcc", "musl-tools", "erofs-utils", "e2fsprogs"] {
        inputs.push(debian(&format!("tool {pkg}"), pkg)?);
    }
    let containers =
        crate::build::load_containers(recipe).map_err(|e| LockError::Input(e.to_string()))?;
    for c in containers {
        inputs.push(Input {
            name: format!("container {}", c.name),
            version: String::new(),
            sha256: hex::encode(Sha256::digest(c.text.as_bytes())),
        });
    }
    for key in &r.update.keys {
        inputs.push(file(format!("trusted key {key}"), &recipe.resolve(key))?);
    }
    if let Some(c) = &r.host.config {
        inputs.push(file(format!("host config {c}"), &recipe.resolve(c))?);
    }
    for (dst, f) in &r.files {
        inputs.push(Input {
            name: format!("file /{dst}"),
            version: f.mode.map_or_else(String::new, |m| format!("mode {m:o}")),
            sha256: tree_sha256(&recipe.resolve(&f.source))?,
        });
    }
    Ok(inputs)
}

/// What differs between the locked inputs and the current ones, one line
/// per input.
pub fn diff(locked: &[Input], now: &[Input]) -> Vec<String> {
    let show = |i: &Input| {
        let short: String = i.sha256.chars().take(12).collect();
        if i.version.is_empty() {
            format!("sha256 {short}…")
        } else {
            format!("{} (sha256 {short}…)", i.version)
        }
    };
    let mut out = Vec::new();
    for n in now {
        match locked.iter().find(|l| l.name == n.name) {
            Some(l) if l == n => {}
            Some(l) => out.push(format!("{}: locked {}, now {}", n.name, show(l), show(n))),
            None => out.push(format!("{}: new, {}", n.name, show(n))),
        }
    }
    for l in locked {
        if !now.iter().any(|n| n.name == l.name) {
            out.push(format!(
                "{}: locked {}, no longer an input",
                l.name,
                show(l)
            ));
        }
    }
    out
}

/// Write the lock file of `recipe`; returns its path and inputs.
pub fn write(recipe: &Loaded<ImageRecipe>) -> Result<(PathBuf, Vec<Input>), LockError> {
    let inputs = collect(recipe)?;
    let path = lock_path(&recipe.path);
    let lock = Lock {
        format: FORMAT,
        inputs,
    };
    let body = toml::to_string(&lock).map_err(|e| LockError::Parse {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let text = format!(
        "# Written by `keel lock`: the inputs of {}. `keel build --locked` refuses\n# to build when one differs.\n{body}",
        recipe.path.display()
    );
    fs::write(&path, text).map_err(io_err(&path))?;
    Ok((path, lock.inputs))
}

/// Refuse if an input of `recipe` differs from its lock file.
pub fn check(recipe: &Loaded<ImageRecipe>) -> Result<(), LockError> {
    let path = lock_path(&recipe.path);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LockError::NoLock {
                path,
                recipe: recipe.path.clone(),
            })
        }
        Err(e) => return Err(io_err(&path)(e)),
    };
    let lock: Lock = toml::from_str(&text).map_err(|e| LockError::Parse {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let changes = diff(&lock.inputs, &collect(recipe)?);
    if changes.is_empty() {
        Ok(())
    } else {
        Err(LockError::Changed {
            path,
            recipe: recipe.path.clone(),
            changes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i(name: &str, version: &str, sha: &str) -> Input {
        Input {
            name: name.into(),
            version: version.into(),
            sha256: sha.into(),
        }
    }

    #[test]
    fn diff_names_every_changed_new_and_gone_input() {
        let locked = [
            i("kernel source linux-source-6.1", "6.1.1", "aa"),
            i("container web", "", "bb"),
            i("container old", "", "cc"),
        ];
        let now = [
            i("kernel source linux-source-6.1", "6.1.2", "ab"),
            i("container web", "", "bb"),
            i("container new", "", "dd"),
        ];
        assert_eq!(
            diff(&locked, &now),
            [
                "kernel source linux-source-6.1: locked 6.1.1 (sha256 aa…), now 6.1.2 (sha256 ab…)",
                "container new: new, sha256 dd…",
                "container old: locked sha256 cc…, no longer an input",
            ]
        );
        assert!(diff(&now, &now).is_empty());
    }

    #[test]
    fn the_lock_format_round_trips_and_refuses_unknown_keys() {
        let lock = Lock {
            format: FORMAT,
            inputs: vec![
                i("recipe host.toml", "", "aa"),
                i("tool gcc", "4:12.2.0-3", "bb"),
            ],
        };
        let text = toml::to_string(&lock).unwrap();
        assert_eq!(toml::from_str::<Lock>(&text).unwrap(), lock);
        assert!(toml::from_str::<Lock>(&format!("{text}\nextra = 1\n")).is_err());
        assert_eq!(
            lock_path(Path::new("recipes/host.toml")),
            Path::new("recipes/host.lock")
        );
    }
}

//! A prebuilt Debian kernel (`linux-image-cloud-amd64`): the package apt's
//! index names, downloaded and unpacked without root (`apt-get download`,
//! `dpkg-deb -x`), checked against the index's sha256 and cached by it.
//! Only the modules the recipe names, and what they need, go into the
//! image; stage 1 loads them.

use std::path::Path;
use std::process::Command;

use super::modules::Tree;
use super::{check_required, Kernel, KernelError};
use crate::cache::{Cache, Key};
use crate::recipe::{ImageRecipe, Loaded};
use crate::tool;

/// Bump when the layout of a cache entry changes.
const LAYOUT_VERSION: &str = "kernel-deb-1";

/// A binary package as apt's index describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub package: String,
    pub version: String,
    pub sha256: String,
    /// `Depends:` names with the version they are pinned to (`= V`).
    pub depends: Vec<(String, Option<String>)>,
}

impl Candidate {
    /// What the manifest and the lock say the kernel came from.
    pub fn origin(&self) -> String {
        format!("Debian {} {}", self.package, self.version)
    }
}

/// The first stanza of `apt-cache show` output.
pub fn parse_show(text: &str) -> Option<Candidate> {
    let stanza = text.split("\n\n").next()?;
    let field = |name: &str| {
        stanza.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix(':'))
                .map(|v| v.trim().to_string())
        })
    };
    let depends = field("Depends")
        .unwrap_or_default()
        .split(',')
        .filter_map(|d| {
            // An alternative (`a | b`) is never how a kernel is pinned.
            let d = d.split('|').next()?.trim();
            let (name, rest) = d.split_once(' ').unwrap_or((d, ""));
            let pinned = rest
                .trim()
                .strip_prefix("(=")
                .and_then(|v| v.strip_suffix(')'))
                .map(|v| v.trim().to_string());
            (!name.is_empty()).then(|| (name.to_string(), pinned))
        })
        .collect();
    Some(Candidate {
        package: field("Package")?,
        version: field("Version")?,
        sha256: field("SHA256")?,
        depends,
    })
}

fn show(spec: &str) -> Result<Candidate, KernelError> {
    let out = tool::run(Command::new("apt-cache").args(["show", "--no-all-versions", spec]))
        .map_err(|e| KernelError::Apt {
            package: spec.to_string(),
            message: e.to_string(),
        })?;
    parse_show(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| KernelError::Apt {
        package: spec.to_string(),
        message: "apt-cache show printed no Package, Version and SHA256".into(),
    })
}

/// The package that holds the kernel: a metapackage such as
/// `linux-image-cloud-amd64` is followed to the `linux-image-*` package it
/// pins.
pub fn resolve(package: &str) -> Result<Candidate, KernelError> {
    let mut spec = package.to_string();
    for _ in 0..4 {
        let c = show(&spec)?;
        match c
            .depends
            .iter()
            .find(|(d, _)| d.starts_with("linux-image-"))
        {
            Some((d, Some(v))) => spec = format!("{d}={v}"),
            Some((d, None)) => spec = d.clone(),
            None => return Ok(c),
        }
    }
    Err(KernelError::Apt {
        package: package.to_string(),
        message: "more than 4 metapackages deep; name the linux-image package itself".into(),
    })
}

/// Return the kernel of Debian package `package`, downloading it if the
/// cache lacks it.
pub fn ensure(
    cache: &Cache,
    recipe: &Loaded<ImageRecipe>,
    package: &str,
) -> Result<Kernel, KernelError> {
    let k = &recipe.recipe.kernel;
    let c = resolve(package)?;
    let mut key = Key::new(LAYOUT_VERSION);
    key.add(c.package.as_bytes())
        .add(c.version.as_bytes())
        .add(c.sha256.as_bytes());
    let key = key.hex();
    let dir = match cache.get("kernel", &key) {
        Some(dir) => dir,
        None => {
            let scratch = cache.scratch("kernel", &key)?;
            unpack(&scratch, &c)?;
            cache.commit("kernel", &key, &scratch)?
        }
    };
    let config = dir.join("config");
    // Whatever is a module here is loaded by stage 1 if the recipe lists it;
    // the boot is the check that the list is complete.
    check_required(&config, &recipe.resolve(&k.required), true)?;
    let release = read(&dir.join("release"))?.trim().to_string();
    let modules = Tree::open(&dir.join("modules"))?.resolve(&k.modules)?;
    Ok(Kernel {
        bzimage: dir.join("vmlinuz"),
        config,
        release,
        modules,
        origin: c.origin(),
    })
}

fn read(path: &Path) -> Result<String, KernelError> {
    std::fs::read_to_string(path).map_err(|source| KernelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Download `c` into `scratch`, check it, and leave `vmlinuz`, `config`,
/// `release` and `modules/` there.
fn unpack(scratch: &Path, c: &Candidate) -> Result<(), KernelError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KernelError::Io { path, source }
    };
    tool::run(
        Command::new("apt-get")
            .args(["download", "-q"])
            .arg(format!("{}={}", c.package, c.version))
            .current_dir(scratch),
    )?;
    let deb = std::fs::read_dir(scratch)
        .map_err(io_err(scratch))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| KernelError::Apt {
            package: c.package.clone(),
            message: format!("apt-get download left no .deb in {}", scratch.display()),
        })?;
    let got = crate::outputs::sha256_file(&deb).map_err(|e| KernelError::Apt {
        package: c.package.clone(),
        message: e.to_string(),
    })?;
    if got != c.sha256 {
        return Err(KernelError::DebHash {
            deb,
            want: c.sha256.clone(),
            got,
        });
    }
    let tree = scratch.join("tree");
    tool::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    let boot = tree.join("boot");
    let release = std::fs::read_dir(&boot)
        .map_err(io_err(&boot))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find_map(|n| n.strip_prefix("vmlinuz-").map(str::to_string))
        .ok_or_else(|| KernelError::NoImage {
            package: c.package.clone(),
        })?;
    for (from, to) in [
        (
            boot.join(format!("vmlinuz-{release}")),
            scratch.join("vmlinuz"),
        ),
        (
            boot.join(format!("config-{release}")),
            scratch.join("config"),
        ),
        (
            tree.join(format!("lib/modules/{release}")),
            scratch.join("modules"),
        ),
    ] {
        std::fs::rename(&from, &to).map_err(io_err(&from))?;
    }
    let path = scratch.join("release");
    std::fs::write(&path, &release).map_err(io_err(&path))?;
    std::fs::remove_dir_all(&tree).map_err(io_err(&tree))?;
    std::fs::remove_file(&deb).map_err(io_err(&deb))?;
    Ok(())
}

/// The lock file's record of a prebuilt kernel: what the package resolves
/// to now.
pub fn lock_input(package: &str) -> Result<(String, String), KernelError> {
    let c = resolve(package)?;
    Ok((format!("{} {}", c.package, c.version), c.sha256))
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &str = "Package: linux-image-cloud-amd64
Source: linux-signed-amd64 (6.1.192+2)
Version: 6.1.192-2
Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)
Description: Linux for x86-64 cloud (meta-package)
SHA256: 00be21c0

Package: linux-image-cloud-amd64
Version: 6.1.176-1
SHA256: ffff
";

    #[test]
    fn show_output_gives_the_first_candidate_and_its_pins() {
        let c = parse_show(META).unwrap();
        assert_eq!(c.version, "6.1.192-2");
        assert_eq!(c.sha256, "00be21c0");
        assert_eq!(
            c.depends,
            [(
                "linux-image-6.1.0-56-cloud-amd64".to_string(),
                Some("6.1.192-2".to_string())
            )]
        );
        let image = parse_show(
            "Package: linux-image-6.1.0-56-cloud-amd64\nVersion: 6.1.192-2\n\
             Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool\n\
             SHA256: e7d0\n",
        )
        .unwrap();
        let names: Vec<_> = image.depends.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["kmod", "linux-base", "initramfs-tools"]);
        assert_eq!(
            image.origin(),
            "Debian linux-image-6.1.0-56-cloud-amd64 6.1.192-2"
        );
        assert!(parse_show("Package: x\n").is_none());
    }
}

//! Userland packages: programs built from Debian source packages with
//! musl-gcc (busybox, dropbear), cached by a hash of the recipe, the source
//! package's checksums and the toolchain.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cache::{Cache, CacheError, Key};
use crate::progress::Progress;
use crate::recipe::{BuildKind, Loaded, PackageRecipe};
use crate::tool::{self, ToolError};

const BUILD_VERSION: &str = "package-build-1";

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "apt-get source {0}: no source package found; add a deb-src entry (`cargo xtask deps` does) and run apt-get update"
    )]
    NoSource(String),
    #[error("{0}: unpacked source not found after apt-get source")]
    NoTree(String),
    #[error("{0}")]
    NoHeaders(String),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// A built package: files to install under `bin/`, and links to the first.
#[derive(Debug, Clone)]
pub struct Package {
    pub name: String,
    /// The Debian source package and version it was built from
    /// (`busybox 1:1.35.0-4`), for the image's manifest.
    pub source: String,
    /// (path inside the image's `bin/`-relative tree, file in the cache)
    pub files: Vec<(String, PathBuf)>,
    /// Link paths (absolute inside a root) that point at the first file.
    pub links: Vec<String>,
}

/// Kernel UAPI header folders musl-gcc needs to compile against Linux.
const HEADER_DIRS: [(&str, &str); 4] = [
    ("linux", "/usr/include/linux"),
    ("asm-generic", "/usr/include/asm-generic"),
    ("mtd", "/usr/include/mtd"),
    ("asm", "/usr/include/x86_64-linux-gnu/asm"),
];

fn stdout_of(cmd: &mut Command) -> Result<String, ToolError> {
    Ok(String::from_utf8_lossy(&tool::run(cmd)?.stdout).into_owned())
}

/// Return `name`, building it if the cache lacks it.
pub fn ensure(
    cache: &Cache,
    name: &str,
    recipe: &Loaded<PackageRecipe>,
    jobs: usize,
    progress: &mut dyn Progress,
) -> Result<Package, PackageError> {
    let r = &recipe.recipe;
    let recipe_text = std::fs::read(&recipe.path).map_err(|source| PackageError::Io {
        path: recipe.path.clone(),
        source,
    })?;
    // The URIs carry the source package's file names and sha256 sums.
    let uris =
        stdout_of(Command::new("apt-get").args(["source", "--print-uris", "-qq", &r.source]))
            .map_err(|_| PackageError::NoSource(r.source.clone()))?;
    if !uris.contains(".dsc") {
        return Err(PackageError::NoSource(r.source.clone()));
    }
    let toolchain = stdout_of(Command::new("dpkg-query").args([
        "-W",
        "-f=${Package} ${Version}\n",
        "musl-dev",
        "linux-libc-dev",
        "gcc",
    ]))?;
    // Keep file names, sizes and sums; drop the mirror's address.
    let sources: Vec<String> = uris
        .lines()
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        .collect();
    let mut key = Key::new(BUILD_VERSION);
    key.add(name.as_bytes())
        .add(&recipe_text)
        .add(sources.join("\n").as_bytes())
        .add(toolchain.as_bytes());
    let key = key.hex();

    let kind = "package";
    let dir = match cache.get(kind, &key) {
        Some(d) => d,
        None => {
            let scratch = cache.scratch(kind, &key)?;
            build(&scratch, r, jobs, progress)?;
            cache.commit(kind, &key, &scratch)?
        }
    };
    let out = dir.join("out");
    let files = r
        .files
        .keys()
        .map(|dst| (dst.clone(), out.join(dst)))
        .collect();
    let links = match r.links_file {
        Some(_) => {
            let p = dir.join("links.txt");
            std::fs::read_to_string(&p)
                .map_err(|source| PackageError::Io { path: p, source })?
                .lines()
                .filter(|l| l.starts_with('/'))
                .map(str::to_string)
                .collect()
        }
        None => Vec::new(),
    };
    Ok(Package {
        name: name.to_string(),
        source: dsc_version(&sources).map_or_else(|| r.source.clone(), |(n, v)| format!("{n} {v}")),
        files,
        links,
    })
}

/// ("busybox", "1.35.0-4+deb12u1"), from the `.dsc` among a source
/// package's files ("busybox_1.35.0-4+deb12u1.dsc SIZE SHA256:…").
pub fn dsc_version(files: &[String]) -> Option<(String, String)> {
    let dsc = files
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .find(|f| f.ends_with(".dsc"))?;
    let (name, version) = dsc.trim_end_matches(".dsc").split_once('_')?;
    Some((name.to_string(), version.to_string()))
}

fn set_options(config: &str, options: &std::collections::BTreeMap<String, String>) -> String {
    let mut out: Vec<String> = config
        .lines()
        .filter(|l| {
            !options
                .keys()
                .any(|k| l.starts_with(&format!("{k}=")) || *l == format!("# {k} is not set"))
        })
        .map(str::to_string)
        .collect();
    for (k, v) in options {
        out.push(if v == "n" {
            format!("# {k} is not set")
        } else {
            format!("{k}={v}")
        });
    }
    out.join("\n") + "\n"
}

fn build(
    scratch: &Path,
    r: &PackageRecipe,
    jobs: usize,
    progress: &mut dyn Progress,
) -> Result<(), PackageError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackageError::Io { path, source }
    };
    let log = scratch.join("build.log");
    let dl = scratch.join("src");
    std::fs::create_dir_all(&dl).map_err(io_err(&dl))?;
    progress.log(&log);
    tool::run_logged(
        Command::new("apt-get").args(["source", "-q", &r.source]),
        &dl,
        &log,
    )?;
    let tree = std::fs::read_dir(&dl)
        .map_err(io_err(&dl))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .ok_or_else(|| PackageError::NoTree(r.source.clone()))?;

    let headers = scratch.join("kernel-headers");
    std::fs::create_dir_all(&headers).map_err(io_err(&headers))?;
    for (name, target) in HEADER_DIRS {
        if !Path::new(target).is_dir() {
            return Err(PackageError::NoHeaders(format!(
                "{target} is missing: apt-get install linux-libc-dev"
            )));
        }
        std::os::unix::fs::symlink(target, headers.join(name)).map_err(io_err(&headers))?;
    }
    let cc = format!("CC={} -isystem {}", r.cc, headers.display());
    let make = |args: &[&str]| -> Result<(), PackageError> {
        let mut cmd = Command::new("make");
        cmd.arg(&cc)
            .args(args)
            .env("KCONFIG_NOTIMESTAMP", "1")
            .env("SOURCE_DATE_EPOCH", "0");
        Ok(tool::run_logged(&mut cmd, &tree, &log)?)
    };
    for (rel, text) in &r.tree_files {
        let path = tree.join(rel);
        std::fs::write(&path, text).map_err(io_err(&path))?;
    }
    match (r.build, &r.defconfig) {
        (BuildKind::Kconfig, Some(defconfig)) => {
            make(&[defconfig])?;
            let config_path = tree.join(".config");
            let config = std::fs::read_to_string(&config_path).map_err(io_err(&config_path))?;
            std::fs::write(&config_path, set_options(&config, &r.config))
                .map_err(io_err(&config_path))?;
            make(&["oldconfig"])?;
        }
        (BuildKind::Kconfig, None) => {
            return Err(PackageError::NoTree(format!(
                "{}: a kconfig build needs `defconfig`",
                r.source
            )))
        }
        (BuildKind::Configure, _) => {
            let mut cmd = Command::new("./configure");
            cmd.args(&r.configure)
                .env("CC", cc.trim_start_matches("CC="))
                .env("SOURCE_DATE_EPOCH", "0");
            tool::run_logged(&mut cmd, &tree, &log)?;
        }
    }
    let mut args = vec![format!("-j{jobs}")];
    args.extend(r.make.iter().cloned());
    make(&args.iter().map(String::as_str).collect::<Vec<_>>())?;

    let out = scratch.join("out");
    for (dst, src) in &r.files {
        let to = out.join(dst);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        std::fs::copy(tree.join(src), &to).map_err(io_err(&tree.join(src)))?;
    }
    if let Some(links) = &r.links_file {
        std::fs::copy(tree.join(links), scratch.join("links.txt"))
            .map_err(io_err(&tree.join(links)))?;
    }
    std::fs::remove_dir_all(&dl).map_err(io_err(&dl))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_replace_earlier_settings() {
        let mut opts = std::collections::BTreeMap::new();
        opts.insert("CONFIG_STATIC".to_string(), "y".to_string());
        opts.insert("CONFIG_TC".to_string(), "n".to_string());
        let out = set_options(
            "# CONFIG_STATIC is not set\nCONFIG_TC=y\nCONFIG_LS=y\n",
            &opts,
        );
        assert_eq!(
            out,
            "CONFIG_LS=y\nCONFIG_STATIC=y\n# CONFIG_TC is not set\n"
        );
    }
}

//! A kernel built from a Debian kernel source package on the recipe's base
//! config plus keel's fragments, everything built in, and cached by a hash
//! of the source, the fragments and the compiler.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{check_required, Kernel, KernelError};
use crate::cache::{Cache, Key};
use crate::progress::Progress;
use crate::recipe::{ImageRecipe, Loaded};
use crate::tool;

/// Bump when the way a kernel is built changes, so old entries are not used.
const BUILD_VERSION: &str = "kernel-build-1";

fn first_line(cmd: &mut Command) -> Result<String, tool::ToolError> {
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

/// Return the kernel built from `source`, building it if the cache lacks it.
pub fn ensure(
    cache: &Cache,
    recipe: &Loaded<ImageRecipe>,
    source: &str,
    jobs: usize,
    progress: &mut dyn Progress,
) -> Result<Kernel, KernelError> {
    let k = &recipe.recipe.kernel;
    let tarball = PathBuf::from(format!("/usr/src/{source}.tar.xz"));
    if !tarball.is_file() {
        return Err(KernelError::NoSource {
            path: tarball,
            package: source.to_string(),
        });
    }
    let required = recipe.resolve(&k.required);
    let base = k.base();
    let mut key = Key::new(BUILD_VERSION);
    key.add(source.as_bytes())
        .add(&source_identity(source, &tarball)?)
        .add(base.as_bytes());
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
            build(
                &scratch, &tarball, base, &fragments, &required, jobs, progress,
            )?;
            cache.commit("kernel", &key, &scratch)?
        }
    };
    let config = dir.join("config");
    check_required(&config, &required, false)?;
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
        modules: Vec::new(),
        origin: format!(
            "Debian {source} {}",
            crate::outputs::debian_version(source).unwrap_or_else(|| "unknown".into())
        ),
    })
}

fn build(
    scratch: &Path,
    tarball: &Path,
    base: &str,
    fragments: &[Vec<u8>],
    required: &Path,
    jobs: usize,
    progress: &mut dyn Progress,
) -> Result<(), KernelError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KernelError::Io { path, source }
    };
    let src = scratch.join("src");
    let log = scratch.join("build.log");
    std::fs::create_dir_all(&src).map_err(io_err(&src))?;
    progress.log(&log);
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
    check_required(&config_path, required, false)?;
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

//! `cargo xtask bench build`: how long `keel build` of the default image
//! takes cold (empty cache, kernel compiled; and with only the kernel
//! cached) and with nothing changed, and how large the results are, against
//! the sizes other container-host OSes publish.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::{root, run, MUSL};

fn keel_build(cache: &Path, out: &Path) -> anyhow::Result<f64> {
    let started = Instant::now();
    let st = Command::new(root().join("target/release/keel"))
        .arg("build")
        .arg(root().join("recipes/host.toml"))
        .arg("--out")
        .arg(out)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--bin-dir")
        .arg(root().join(format!("target/{MUSL}/release")))
        .arg("--quiet")
        .status()?;
    if !st.success() {
        bail!("keel build failed");
    }
    Ok(started.elapsed().as_secs_f64())
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

pub fn build(with_kernel: bool) -> anyhow::Result<()> {
    crate::image()?;
    let work = root().join("target/bench-build");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let warm = keel_image_builder::cache::Cache::default_root()?;

    // Cold, but with the kernel of the warm cache: busybox from source,
    // every filesystem and the disk.
    let no_kernel_cache = work.join("cache-kernel-only");
    std::fs::create_dir_all(&no_kernel_cache)?;
    run(Command::new("cp")
        .arg("-a")
        .arg(warm.join("kernel"))
        .arg(&no_kernel_cache))?;
    let cold_no_kernel = keel_build(&no_kernel_cache, &work.join("out-a"))?;

    let cold = if with_kernel {
        let empty = work.join("cache-empty");
        std::fs::create_dir_all(&empty)?;
        Some(keel_build(&empty, &work.join("out-b"))?)
    } else {
        None
    };

    let out = work.join("out");
    keel_build(&warm, &out)?;
    let mut again: Vec<f64> = (0..3)
        .map(|_| keel_build(&warm, &out))
        .collect::<anyhow::Result<_>>()?;
    again.sort_by(f64::total_cmp);
    let rebuild = again[1];

    let disk = out.join("disk.img");
    let qcow2 = work.join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-c", "-f", "raw", "-O", "qcow2"])
        .arg(&disk)
        .arg(&qcow2))?;
    let gz = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -9 -c {} | wc -c", disk.display()))
        .output()?;
    let gz: u64 = String::from_utf8_lossy(&gz.stdout)
        .trim()
        .parse()
        .context("gzip size")?;
    let root_fs = size(&out.join("root.erofs"));
    let uki = size(&out.join("keel-0.1.0.efi"));

    let report = format!(
        "# Build benchmark\n\n`cargo xtask bench build{}`: `keel build recipes/host.toml` on one machine ({} cores), \
         keel's own binaries already compiled.\n\n\
         | build | time (s) | target |\n|---|---|---|\n\
         | cold, kernel compiled from source too | {} | |\n\
         | cold, kernel cached (busybox from source, filesystems, disk) | {cold_no_kernel:.1} | |\n\
         | no change (median of 3) | {rebuild:.1} | ≤ 5 s |\n\n\
         | artifact | keel | target | LinuxKit | Bottlerocket | Talos |\n|---|---|---|---|---|---|\n\
         | root filesystem (erofs, lz4hc) | {} | ≤ 15 MB | | ~42 MB root | |\n\
         | UKI (kernel + initramfs + stub) | {} | | | | |\n\
         | disk, qcow2 compressed | {} | ≤ 25 MB | 35 MB image | | < 80 MB image |\n\
         | disk, raw gzip -9 | {} | | | | |\n\n\
         The peers' sizes are the figures issue 5 quotes, not measured here.\n",
        if with_kernel { " --with-kernel" } else { "" },
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        cold.map_or_else(|| "not run (--with-kernel)".to_string(), |s| format!("{s:.1}")),
        mb(root_fs),
        mb(uki),
        mb(size(&qcow2)),
        mb(gz),
    );
    print!("{report}");
    std::fs::write(root().join("docs/bench-build.md"), &report)?;
    Ok(())
}

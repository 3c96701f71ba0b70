//! `cargo xtask bench update`, its delta half: the bytes a v1 host fetches
//! for real releases, through keel-update's own code over HTTP against
//! the test server (which counts what it sends), next to casync fetching
//! the same bundle with the same v1 files as seeds from the same server,
//! and the size of a binary diff (zstd --patch-from) for reference.
//!
//! The releases: (a) keelctl rebuilt from a copy of this tree with a real
//! code change, (b) BusyBox with one applet less in its config, (c) the
//! kernel with one config option more, and a version bump alone, which is
//! what every release costs anyway.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use keel_formats::repo::ChannelEntry;
use keel_update::delta::Local;

use crate::{cargo, root, run, MUSL};

/// The code change of release (a): `keelctl list` also prints a count.
const KEELCTL_FILE: &str = "keelctl/src/cli.rs";
const KEELCTL_FROM: &str = "                for svc in s.services {\n                    println!(\"{} {}\", svc.name, svc.state);\n                }\n";
const KEELCTL_TO: &str = "                let n = s.services.len();\n                for svc in s.services {\n                    println!(\"{} {}\", svc.name, svc.state);\n                }\n                println!(\"{n} services\");\n";

/// One release against v1.
pub(crate) struct Variant {
    pub label: &'static str,
    pub out: PathBuf,
    pub version: &'static str,
}

/// A copy of this tree's tracked files at `dst`.
fn copy_tree(dst: &Path) -> anyhow::Result<()> {
    let out = Command::new("git")
        .current_dir(root())
        .args(["ls-files", "-z"])
        .output()?;
    if !out.status.success() {
        bail!("git ls-files failed");
    }
    for rel in out.stdout.split(|&b| b == 0).filter(|r| !r.is_empty()) {
        let rel = Path::new(std::str::from_utf8(rel)?);
        let (from, to) = (root().join(rel), dst.join(rel));
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // A deleted, not yet committed file is skipped.
        if from.is_file() {
            std::fs::copy(&from, &to)?;
        }
    }
    Ok(())
}

/// keelctl built from a copy of this tree, before and after the code
/// change: the two binaries differ by that change only. Returns the two
/// bin folders (the other keel binaries are this tree's).
pub(crate) fn keelctl_pair(work: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let src = work.join("src");
    copy_tree(&src)?;
    // Kept across runs: the musl build of keelctl's dependencies.
    let target = root().join("target/bench-update-keelctl");
    let bins = root().join(format!("target/{MUSL}/release"));
    let mut dirs = Vec::new();
    for (i, patch) in [false, true].into_iter().enumerate() {
        if patch {
            let f = src.join(KEELCTL_FILE);
            let text = std::fs::read_to_string(&f)?;
            if !text.contains(KEELCTL_FROM) {
                bail!("{KEELCTL_FILE} changed: the benchmark's code change no longer applies");
            }
            std::fs::write(&f, text.replacen(KEELCTL_FROM, KEELCTL_TO, 1))?;
        }
        run(cargo()
            .current_dir(&src)
            .env("CARGO_TARGET_DIR", &target)
            .args(["build", "--release", "--target", MUSL, "-p", "keelctl"]))?;
        let dir = work.join(format!("bin{}", i + 1));
        std::fs::create_dir_all(&dir)?;
        for b in [
            "keel-init",
            "keel-update",
            "keel-probe",
            "keel-vmm",
            "keel-pull",
            "keel-remote",
        ] {
            std::fs::copy(bins.join(b), dir.join(b))?;
        }
        std::fs::copy(
            target.join(format!("{MUSL}/release/keelctl")),
            dir.join("keelctl"),
        )?;
        dirs.push(dir);
    }
    let b = dirs.pop().context("two builds")?;
    let a = dirs.pop().context("two builds")?;
    Ok((a, b))
}

/// The recipe of release `version` with `edit` applied to its text.
pub(crate) fn edit_recipe(recipe: &Path, edit: impl Fn(String) -> String) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(recipe)?;
    let new = edit(text.clone());
    if new == text {
        bail!("{}: the benchmark's edit did not apply", recipe.display());
    }
    std::fs::write(recipe, new)?;
    Ok(())
}

/// Release (b)'s packages folder: BusyBox without `cal`.
pub(crate) fn busybox_change(work: &Path) -> anyhow::Result<PathBuf> {
    let dir = work.join("packages-b");
    std::fs::create_dir_all(&dir)?;
    for e in std::fs::read_dir(root().join("recipes/packages"))? {
        let e = e?;
        std::fs::copy(e.path(), dir.join(e.file_name()))?;
    }
    let bb = dir.join("busybox.toml");
    edit_recipe(&bb, |t| {
        t.replace(
            "CONFIG_STATIC = \"y\"",
            "CONFIG_STATIC = \"y\"\nCONFIG_CAL = \"n\"",
        )
    })?;
    Ok(dir)
}

/// Release (c)'s extra kernel config fragment.
pub(crate) fn kernel_change(work: &Path) -> anyhow::Result<PathBuf> {
    let f = work.join("sysrq.config");
    std::fs::write(&f, "CONFIG_MAGIC_SYSRQ=y\n")?;
    Ok(f)
}

/// The files of a release's output folder.
fn payloads(out: &Path, version: &str) -> [PathBuf; 3] {
    [
        out.join("root.erofs"),
        out.join("root.verity"),
        out.join(format!("keel-{version}.efi")),
    ]
}

fn len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

/// What each way fetched for one release.
struct Row {
    label: &'static str,
    full: u64,
    keel: u64,
    requests: u64,
    head: u64,
    casync: u64,
    patch: u64,
}

/// keel-update's delta path for `v` with v1's files as the host's.
fn keel_fetch(
    work: &Path,
    v1: &Variant,
    v: &Variant,
    key: &Path,
) -> anyhow::Result<(u64, u64, u64)> {
    let bundle = v.out.join(format!("keel-{}.bundle", v.version));
    let serve = work.join(format!("serve-{}", v.label));
    std::fs::create_dir_all(serve.join("bundles"))?;
    std::fs::copy(&bundle, serve.join("bundles/b.bundle"))?;
    let bytes = std::fs::read(&bundle)?;
    let server = keel_tests::http::Server::start(&serve);
    let entry = ChannelEntry {
        version: v.version.into(),
        bundle: "bundles/b.bundle".into(),
        size: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(&bytes)),
        rollout: None,
    };
    let locals: Vec<Local> = payloads(&v1.out, v1.version)
        .into_iter()
        .map(|path| Local {
            name: path.display().to_string(),
            len: len(&path),
            path,
        })
        .collect();
    let public = keel_image_builder::bundle::read_public(&key.with_extension("pub"))?;
    let check = |b: &[u8]| keel_update::verify::read_head(&mut &b[..], &[public]);
    let dl = work.join(format!("dl-{}", v.label));
    let got = keel_update::fetch::obtain(
        &format!("http://127.0.0.1:{}/", server.port),
        &entry,
        &dl,
        &locals,
        &check,
        &mut |_, _| {},
    )?;
    if std::fs::read(&got.path)? != bytes {
        bail!("the delta of {} did not put the bundle together", v.label);
    }
    eprintln!("xtask: {}: {}", v.label, got.words);
    let head = keel_formats::bundle::payload_start({
        let (env, _) = keel_image_builder::bundle::read_head(&bundle)?;
        env.to_bytes().len() as u64
    });
    Ok((server.sent(), server.requests(), head))
}

/// casync on the same bundle, seeded with v1's files, its chunk store on
/// the same server.
fn casync_fetch(work: &Path, v1: &Variant, v: &Variant) -> anyhow::Result<u64> {
    let serve = work.join(format!("casync-{}", v.label));
    std::fs::create_dir_all(&serve)?;
    let bundle = v.out.join(format!("keel-{}.bundle", v.version));
    run(Command::new("casync")
        .arg("make")
        .arg(format!("--store={}", serve.join("store").display()))
        .arg(serve.join("b.caibx"))
        .arg(&bundle))?;
    let server = keel_tests::http::Server::start(&serve);
    let base = format!("http://127.0.0.1:{}", server.port);
    let out = work.join(format!("casync-{}.out", v.label));
    let mut cmd = Command::new("casync");
    cmd.arg("extract")
        .arg(format!("--store={base}/store"))
        .arg(format!(
            "--cache={}",
            work.join(format!("casync-{}.cache", v.label)).display()
        ));
    for seed in payloads(&v1.out, v1.version) {
        cmd.arg(format!("--seed={}", seed.display()));
    }
    run(cmd.arg(format!("{base}/b.caibx")).arg(&out))?;
    if std::fs::read(&out)? != std::fs::read(&bundle)? {
        bail!("casync did not put the bundle of {} together", v.label);
    }
    Ok(server.sent())
}

/// Bytes of `zstd -19 --long=27 --patch-from=OLD NEW`.
fn patch_len(old: &Path, new: &Path) -> anyhow::Result<u64> {
    let o = Command::new("zstd")
        .args(["-q", "-19", "--long=27", "-c"])
        .arg(format!("--patch-from={}", old.display()))
        .arg(new)
        .output()
        .context("zstd")?;
    if !o.status.success() {
        bail!(
            "zstd --patch-from failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(o.stdout.len() as u64)
}

fn measure(work: &Path, v1: &Variant, v: &Variant, key: &Path) -> anyhow::Result<Row> {
    let (keel, requests, head) = keel_fetch(work, v1, v, key)?;
    let casync = casync_fetch(work, v1, v)?;
    let mut patch = 0;
    for (old, new) in payloads(&v1.out, v1.version)
        .iter()
        .zip(payloads(&v.out, v.version).iter())
    {
        patch += patch_len(old, new)?;
    }
    Ok(Row {
        label: v.label,
        full: len(&v.out.join(format!("keel-{}.bundle", v.version))),
        keel,
        requests,
        head,
        casync,
        patch,
    })
}

/// The delta section of docs/bench-update.md.
pub(crate) fn section(
    work: &Path,
    v1: &Variant,
    variants: &[Variant],
    key: &Path,
) -> anyhow::Result<String> {
    let mut rows = Vec::new();
    for v in variants {
        rows.push(measure(work, v1, v, key)?);
    }
    let pct = |a: u64, b: u64| a as f64 * 100.0 / b.max(1) as f64;
    let mut t = String::from(
        "| v1 → | full bundle | keel delta (requests) | ÷ full | of it, the signed head | casync | ÷ full | zstd --patch-from (reference) |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        t.push_str(&format!(
            "| {} | {} | {} ({}) | {:.1} % | {} | {} | {:.1} % | {} ({:.1} %) |\n",
            r.label,
            r.full,
            r.keel,
            r.requests,
            pct(r.keel, r.full),
            r.head,
            r.casync,
            pct(r.casync, r.full),
            r.patch,
            pct(r.patch, r.full)
        ));
    }
    Ok(t)
}

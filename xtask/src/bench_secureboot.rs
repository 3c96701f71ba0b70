//! `cargo xtask bench secureboot`: what Secure Boot and unsealing an
//! encrypted /var cost a boot. The default image booted without Secure
//! Boot or a TPM against the same image signed (`keel build
//! --secure-boot-key`) booted with Secure Boot enforced and a TPM (swtpm)
//! that unseals /var, in QEMU under TCG, alternately, on one clock: wall
//! time from starting QEMU to the ready line (firmware included), the
//! ready line's ms since kernel start, and stage 1's own unseal time.
//! Written to docs/bench-secureboot.md; nothing is asserted.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::bench::median;
use crate::{root, run, MUSL};

/// One boot: wall ms to ready, ready ms since kernel start, the console.
struct Boot {
    wall_ms: f64,
    ready_ms: f64,
    console: String,
}

fn boot(disk: &Path, keys: Option<&Path>, tpm: Option<&Path>) -> anyhow::Result<Boot> {
    let done = "keel: ready ";
    let b = crate::bench::boot_until(disk, keys, tpm, done)?;
    let ready_ms = b
        .console
        .lines()
        .find(|l| l.contains(done))
        .and_then(|l| crate::bench::field(l, "ms="))
        .context("ready line without ms=")?;
    Ok(Boot {
        wall_ms: b.wall.as_secs_f64() * 1000.0,
        ready_ms,
        console: b.console,
    })
}

/// The number in `stage 1: {what} N ms` on `console`.
fn stage1_ms(console: &str, what: &str) -> Option<f64> {
    let l = console.lines().find(|l| l.contains(what))?;
    let rest = &l[l.find(what)? + what.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(to);
    let _ = std::fs::remove_file(to);
    run(Command::new("cp")
        .args(["-r", "--sparse=always"])
        .arg(from)
        .arg(to))
}

/// The default recipe signed with a key folder of this bench's own.
fn signed_image(work: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let keel = root().join("target/release/keel");
    let keys = work.join("keys");
    if !keys.join("db.key").is_file() {
        let _ = std::fs::remove_dir_all(&keys);
        run(Command::new(&keel)
            .args(["keygen", "--secure-boot"])
            .arg(&keys))?;
    }
    let out = work.join("out");
    run(Command::new(&keel)
        .current_dir(root())
        .args(["build", "recipes/host.toml", "--out"])
        .arg(&out)
        .arg("--bin-dir")
        .arg(format!("target/{MUSL}/release"))
        .arg("--secure-boot-key")
        .arg(keys.join("db.key")))?;
    Ok((out.join("disk.img"), out.join("secure-boot")))
}

pub fn secureboot(boots: usize) -> anyhow::Result<()> {
    if boots == 0 {
        bail!("--boots must be at least 1");
    }
    let plain_disk = crate::image()?;
    let work = root().join("target/bench-secureboot");
    std::fs::create_dir_all(&work)?;
    let (signed_disk, keys) = signed_image(&work)?;

    // The first boot with the TPM makes the encrypted /var; every boot
    // after starts from the disk and TPM that boot left.
    let enrolled = work.join("enrolled.img");
    let enrolled_tpm = work.join("enrolled-tpm");
    copy(&signed_disk, &enrolled)?;
    let _ = std::fs::remove_dir_all(&enrolled_tpm);
    let first = boot(&enrolled, Some(&keys), Some(&enrolled_tpm))?;
    std::fs::write(work.join("first-console.txt"), &first.console)?;
    let created = stage1_ms(
        &first.console,
        "/var encrypted, its key sealed to this TPM (PCR 7 and the image key's PCR 11), in",
    )
    .with_context(|| format!("the first boot did not encrypt /var:\n{}", first.console))?;

    let (mut plain, mut sealed, mut unseal) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..boots {
        let disk = work.join("plain.img");
        copy(&plain_disk, &disk)?;
        let b = boot(&disk, None, None)?;
        plain.push((b.wall_ms, b.ready_ms));
        let disk = work.join("sealed.img");
        let tpm = work.join("sealed-tpm");
        copy(&enrolled, &disk)?;
        copy(&enrolled_tpm, &tpm)?;
        let b = boot(&disk, Some(&keys), Some(&tpm))?;
        std::fs::write(work.join("sealed-console.txt"), &b.console)?;
        unseal.push(
            stage1_ms(&b.console, "/var unsealed by the TPM in")
                .with_context(|| format!("/var was not unsealed:\n{}", b.console))?,
        );
        sealed.push((b.wall_ms, b.ready_ms));
    }
    let med = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| median(v.iter().map(f).collect());
    let (pw, pr) = (med(&plain, |p| p.0), med(&plain, |p| p.1));
    let (sw, sr) = (med(&sealed, |p| p.0), med(&sealed, |p| p.1));
    let un = median(unseal);
    let version = |cmd: &str| crate::bench_pull::first_line(cmd, "--version");
    let report = format!(
        "# Secure Boot and the sealed /var: boot cost\n\n\
         `cargo xtask bench secureboot --boots {boots}`, on {machine}, {date}; {qemu}, {swtpm}, \
         OVMF and systemd-boot from Debian. The default image (`recipes/host.toml`) booted \
         without Secure Boot and without a TPM, against the same recipe signed with a key \
         folder of `keel keygen --secure-boot` and booted with OVMF's Secure Boot firmware \
         (SMM, keys enrolled) and swtpm, its /var encrypted on an earlier boot so that each \
         measured boot unseals it; alternately, QEMU under TCG with 2 vCPUs, each boot from a \
         fresh copy of its disk (and TPM state). Wall time runs from starting QEMU to the \
         ready line on the console (firmware, signature checks and measurements included), \
         on this machine's clock for both; \"ready\" is the ready line's own ms since kernel \
         start. Medians of {boots}; nothing is asserted.\n\n\
         | boot | wall to ready (ms) | ready since kernel start (ms) |\n|---|---|---|\n\
         | no Secure Boot, no TPM, plain /var | {pw:.0} | {pr:.0} |\n\
         | Secure Boot enforced, TPM unseals /var | {sw:.0} | {sr:.0} |\n\
         | ratio | {:.2} | {:.2} |\n\n\
         Stage 1's unseal (CreatePrimary, Load, a policy session with PolicyPCR, \
         VerifySignature, PolicyAuthorize, PolicyPCR, Unseal), as it logs it: median {un:.0} ms. \
         Making the encrypted /var on the first boot (sealing its key, writing the fresh filesystem across the whole volume): \
         {created:.0} ms, once.\n",
        sw / pw,
        sr / pr,
        machine = crate::bench_fleet::machine(),
        date = crate::bench::today(),
        qemu = version("qemu-system-x86_64"),
        swtpm = version("swtpm"),
    );
    print!("{report}");
    std::fs::write(root().join("docs/bench-secureboot.md"), &report)?;
    Ok(())
}

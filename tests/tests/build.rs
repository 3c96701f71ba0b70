//! `keel build` needs no root, and the same inputs give the same disk,
//! byte for byte, whatever the folder and the time.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

use keel_image_builder::cache::Cache;
use keel_tests::{keel_bin, musl_bin_dir, workspace};

const NOBODY: u32 = 65534;

fn cp(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

/// A self-contained copy of the build inputs that an unprivileged user can
/// read: recipes, kernel config, container definitions, binaries.
fn stage_inputs(at: &Path) {
    std::fs::create_dir_all(at).unwrap();
    for d in ["recipes", "kernel-config", "system-containers"] {
        cp(&workspace().join(d), &at.join(d));
    }
    std::fs::create_dir_all(at.join("bin")).unwrap();
    for b in [
        "keel-init",
        "keelctl",
        "keel-update",
        "keel-vmm",
        "keel-pull",
        "keel-remote",
    ] {
        cp(&musl_bin_dir().join(b), &at.join("bin").join(b));
    }
    cp(&keel_bin(), &at.join("bin/keel"));
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn build(src: &Path, out: &Path, cache: &Path, unprivileged: bool) {
    let mut cmd = if unprivileged && is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            &NOBODY.to_string(),
            "--regid",
            &NOBODY.to_string(),
            "--clear-groups",
            "--",
        ]);
        c.arg(src.join("bin/keel"));
        c
    } else {
        Command::new(src.join("bin/keel"))
    };
    cmd.current_dir(src)
        .env("HOME", src)
        .args(["build", "recipes/host.toml", "--bin-dir", "bin", "--out"])
        .arg(out)
        .arg("--cache-dir")
        .arg(cache);
    let o = cmd.output().expect("running keel build");
    assert!(
        o.status.success(),
        "keel build failed (unprivileged: {unprivileged}):\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn sha256(p: &Path) -> String {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(p).unwrap();
    std::io::copy(&mut f, &mut h).unwrap();
    keel_formats::cmdline::to_hex(&h.finalize())
}

#[test]
fn rootless_builds_of_the_same_inputs_are_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (src_a, src_b) = (base.join("one/src"), base.join("two/elsewhere/src"));
    stage_inputs(&src_a);
    stage_inputs(&src_b);
    // The kernel and busybox come from the cache `cargo xtask test` filled;
    // a copy lets the unprivileged user read and extend it.
    let cache = base.join("cache");
    let shared = Cache::default_root().unwrap();
    assert!(
        shared.join("kernel").is_dir(),
        "no kernel in {}; run `cargo xtask test`",
        shared.display()
    );
    std::fs::create_dir_all(&cache).unwrap();
    for kind in ["kernel", "package"] {
        cp(&shared.join(kind), &cache.join(kind));
    }
    if is_root() {
        let st = Command::new("chown")
            .args(["-R", &format!("{NOBODY}:{NOBODY}")])
            .arg(base)
            .status()
            .unwrap();
        assert!(st.success());
    }

    // First build as an unprivileged user: no root, mounts or loop devices.
    let out_a = src_a.join("out");
    build(&src_a, &out_a, &cache, true);
    // Second, later, from another folder.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out_b = src_b.join("out");
    build(&src_b, &out_b, &cache, false);

    for f in ["disk.img", "root.erofs", "root.verity", "keel-0.1.0.efi"] {
        assert_eq!(
            sha256(&out_a.join(f)),
            sha256(&out_b.join(f)),
            "{f} differs between builds"
        );
    }
}

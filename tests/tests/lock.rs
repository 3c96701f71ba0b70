//! `keel lock` records every input of a recipe; `keel build --locked`
//! builds while they hold and refuses, naming the input, once one changed.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::process::{Command, Output};

use keel_tests::{image_recipe, keel_bin, musl_bin_dir, output_text};

fn keel(args: &[&Path]) -> Output {
    Command::new(keel_bin()).args(args).output().unwrap()
}

#[test]
fn the_lock_file_catches_a_changed_input() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = image_recipe(dir.path(), "0.5.0", &["admin"], "", "");
    let build = |out: &str| {
        keel(&[
            Path::new("build"),
            &recipe,
            Path::new("--locked"),
            Path::new("--out"),
            &dir.path().join(out),
            Path::new("--bin-dir"),
            &musl_bin_dir(),
        ])
    };
    let refused = build("out0");
    assert!(!refused.status.success());
    assert!(
        output_text(&refused).contains("run `keel lock"),
        "{}",
        output_text(&refused)
    );

    let lock = keel(&[Path::new("lock"), &recipe]);
    assert!(lock.status.success(), "{}", output_text(&lock));
    let locked = std::fs::read_to_string(recipe.with_extension("lock")).unwrap();
    for name in [
        "recipe keel-0.5.0.toml",
        "kernel source linux-source-6.1",
        "source package busybox",
        "boot loader and stub",
        "zone database",
        "container admin",
    ] {
        assert!(
            locked.contains(&format!("name = \"{name}\"")),
            "{name}:\n{locked}"
        );
    }

    let ok = build("out1");
    assert!(ok.status.success(), "{}", output_text(&ok));

    // An edit of the recipe is a changed input: refused, nothing built.
    let mut r = std::fs::read_to_string(&recipe).unwrap();
    r.push_str("# tuned\n");
    std::fs::write(&recipe, r).unwrap();
    let refused = build("out2");
    assert!(!refused.status.success());
    assert!(
        output_text(&refused).contains("recipe keel-0.5.0.toml: locked sha256"),
        "{}",
        output_text(&refused)
    );
    assert!(!dir.path().join("out2/disk.img").exists());

    assert!(keel(&[Path::new("lock"), &recipe]).status.success());
    let ok = build("out3");
    assert!(ok.status.success(), "{}", output_text(&ok));
    // Progress lines go to stderr, one per step.
    let err = String::from_utf8_lossy(&ok.stderr);
    assert!(err.contains("keel build: kernel 6.1."), "{err}");

    // For scripts: --json prints only the report; --quiet silences stderr.
    let out = dir.path().join("out4");
    let js = keel(&[
        Path::new("build"),
        &recipe,
        Path::new("--json"),
        Path::new("--quiet"),
        Path::new("--out"),
        &out,
        Path::new("--bin-dir"),
        &musl_bin_dir(),
    ]);
    assert!(js.status.success(), "{}", output_text(&js));
    assert!(js.stderr.is_empty(), "{}", output_text(&js));
    let report: serde_json::Value = serde_json::from_slice(&js.stdout).unwrap();
    assert_eq!(report["version"], "0.5.0");
    assert_eq!(report["disk"], out.join("disk.img").display().to_string());
}

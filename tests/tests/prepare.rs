//! keel-init's prepare helper on this machine, as PID 1 runs it for a user
//! container: the image unpacked by the root of a user namespace on the
//! container's id range, so that every file belongs to the range. Needs
//! root, as CI has; without it the test fails and says so.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use keel_tests::fixtures::{layer, oci_layout, Entry};
use keel_tests::musl_bin_dir;

const BASE: u32 = 3 << 20;
const CONFIG: &str = r#"{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/app"]}}"#;

/// `keel-init prepare-container ROOTS IMAGE [BASE]`: its one JSON line.
fn prepare(roots: &Path, image: &Path, base: Option<u32>) -> serde_json::Value {
    let out = Command::new(musl_bin_dir().join("keel-init"))
        .arg("prepare-container")
        .arg(roots)
        .arg(image)
        .args(base.map(|b| b.to_string()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

fn owner(p: &Path) -> (u32, u32, u32) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

#[test]
fn a_user_image_is_unpacked_as_its_id_range() {
    assert!(
        fs::metadata("/proc/self").unwrap().uid() == 0,
        "this test makes user namespaces and chowns files: run it as root (CI does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let roots = dir.path().join("roots");
    let image = dir.path().join("image");
    fs::create_dir(&image).unwrap();
    let files = layer(&[
        Entry::file("bin/app", b"#!/bin/sh\n", 0o755),
        Entry {
            owner: 1000,
            ..Entry::file("home/web/page", b"mine", 0o600)
        },
        Entry::file("bin/su", b"setuid root", 0o4755),
        Entry::link("bin/sh", "app"),
    ]);
    oci_layout(&image, &[&files], CONFIG);
    // The helper may not read the image by name: it reads through what
    // its root side opened.
    for p in [
        image.as_path(),
        &image.join("blobs"),
        &image.join("blobs/sha256"),
    ] {
        fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    }

    let got = prepare(&roots, &image, Some(BASE));
    let root = got["Ok"]["root"]
        .as_str()
        .unwrap_or_else(|| panic!("{got}"));
    let root = Path::new(root);
    assert_eq!(root.parent(), Some(roots.as_path()));
    assert!(
        root.to_str().unwrap().ends_with(&format!("-{BASE}")),
        "{got}"
    );
    assert_eq!(got["Ok"]["config"]["Cmd"][0], "/bin/app");
    assert_eq!(owner(root), (BASE, BASE, 0o755), "the container's /");
    assert_eq!(owner(&root.join("bin/app")), (BASE, BASE, 0o755));
    assert_eq!(
        owner(&root.join("home/web/page")),
        (BASE + 1000, BASE + 1000, 0o600),
        "uid 1000 inside is BASE + 1000 outside"
    );
    assert_eq!(
        owner(&root.join("bin/su")),
        (BASE, BASE, 0o4755),
        "setuid to the range's root, not the host's"
    );
    assert_eq!(owner(&root.join("bin/sh")).0, BASE);
    for d in ["proc", "sys", "dev"] {
        assert_eq!(owner(&root.join(d)).0, BASE, "mount point /{d}");
    }

    // The same image without a range: the owners as recorded, in a root
    // of its own.
    let plain = prepare(&roots, &image, None);
    let plain = Path::new(plain["Ok"]["root"].as_str().unwrap()).to_path_buf();
    assert_ne!(plain, root);
    assert_eq!(owner(&plain.join("home/web/page")).0, 1000);
    assert_eq!(owner(&plain.join("bin/su")), (0, 0, 0o4755));

    // An id the range does not have is refused, and leaves no root.
    let far = dir.path().join("far");
    fs::create_dir(&far).unwrap();
    let files = layer(&[Entry {
        owner: 70000,
        ..Entry::file("x", b"", 0o644)
    }]);
    oci_layout(&far, &[&files], CONFIG);
    let got = prepare(&roots, &far, Some(BASE));
    let e = got["Err"].as_str().unwrap_or_else(|| panic!("{got}"));
    assert!(
        e.contains("uid 70000 is outside the container's 65536 ids"),
        "{e}"
    );
    let left: Vec<String> = fs::read_dir(&roots)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 2, "the two roots, no partial one: {left:?}");
}

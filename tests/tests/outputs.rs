//! Every output format of `keel build`: the qcow2 disk holds the same bytes
//! as the raw one (qemu-img compare is the oracle), the manifest's hashes
//! are those of the files, and the direct-boot kernel and initramfs boot
//! the disk without firmware.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::Command;

use keel_image_builder::outputs::{sha256_file, Manifest};
use keel_tests::{image_recipe, keel_build, musl_bin_dir, Guest, BOOT_TIMEOUT, COMMAND_TIMEOUT};

#[test]
fn every_output_format_is_written_and_usable() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = image_recipe(dir.path(), "0.4.0", &["admin"], "", "");
    let mut text = std::fs::read_to_string(&recipe).unwrap();
    text.push_str(
        "\n[outputs]\nformats = [\"raw\", \"qcow2\", \"uki\", \"direct\", \"manifest\"]\n",
    );
    std::fs::write(&recipe, text).unwrap();
    let out = dir.path().join("out");
    keel_build(&recipe, &out, None);
    for f in [
        "disk.img",
        "disk.qcow2",
        "keel-0.4.0.efi",
        "vmlinuz",
        "initramfs.img",
        "cmdline.txt",
        "manifest.json",
    ] {
        assert!(out.join(f).is_file(), "no {f}");
    }

    let raw = out.join("disk.img");
    let qcow2 = out.join("disk.qcow2");
    let cmp = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .arg(&raw)
        .arg(&qcow2)
        .output()
        .expect("qemu-img (qemu-utils)");
    assert!(
        cmp.status.success(),
        "{}",
        String::from_utf8_lossy(&cmp.stdout)
    );
    assert!(
        std::fs::metadata(&qcow2).unwrap().len() < 40 << 20,
        "qcow2 is compressed"
    );

    let m: Manifest =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!((m.image.as_str(), m.version.as_str()), ("keel", "0.4.0"));
    let comp = |n: &str| {
        m.components
            .iter()
            .find(|c| c.name == n)
            .unwrap_or_else(|| panic!("no {n} in {m:?}"))
    };
    assert!(comp("kernel")
        .source
        .starts_with("Debian linux-source-6.1 "));
    assert!(comp("busybox")
        .source
        .contains("Debian source package busybox"));
    assert_eq!(
        comp("keel-init").sha256,
        sha256_file(&musl_bin_dir().join("keel-init")).unwrap()
    );
    assert!(comp("systemd-boot").version != "unknown");
    comp("container admin");
    let art = |n: &str| m.artifacts.iter().find(|c| c.name == n).unwrap();
    assert_eq!(art("disk.img").sha256, sha256_file(&raw).unwrap());
    assert_eq!(
        art("root.erofs").sha256,
        sha256_file(&out.join("root.erofs")).unwrap()
    );
    assert!(m.artifacts.iter().any(|c| c.name == "disk.qcow2"));

    // No firmware, no boot loader: QEMU loads the kernel; stage 1 still
    // finds the slot by its root hash and the host comes up.
    let mut g = Guest::boot_direct(&raw);
    let boot = g.expect("keel: ready version=0.4.0", BOOT_TIMEOUT);
    assert!(!boot.contains("systemd-boot"), "{boot}");
    g.prompt();
    g.send("keelctl poweroff\n");
    g.wait_exit(COMMAND_TIMEOUT);
}

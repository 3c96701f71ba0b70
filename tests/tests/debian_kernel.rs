//! The image built on Debian's prebuilt cloud kernel (`recipes/debian-kernel.toml`)
//! boots like the default one: stage 1 loads the modules the recipe names
//! and what they need, the root is verified by dm-verity from a module, the
//! ESP (vfat, a module too) is mounted for the health gate, and the lock
//! and manifest name the package.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::Command;

use keel_image_builder::outputs::Manifest;
use keel_tests::{
    keel_bin, keel_build, output_text, workspace, Guest, BOOT_TIMEOUT, COMMAND_TIMEOUT,
};

#[test]
fn the_debian_kernel_image_boots_with_its_modules() {
    let dir = tempfile::tempdir().unwrap();
    // The shipped recipe, moved beside its lock file in the scratch folder.
    let ws = workspace();
    let text = std::fs::read_to_string(ws.join("recipes/debian-kernel.toml"))
        .unwrap()
        .replace("\"../", &format!("\"{}/", ws.display()))
        .replace(
            "[userland]\n",
            &format!(
                "[userland]\npackages_dir = \"{}/recipes/packages\"\n",
                ws.display()
            ),
        );
    let recipe = dir.path().join("debian-kernel.toml");
    std::fs::write(&recipe, text).unwrap();
    let out = keel_build(&recipe, &dir.path().join("out"), None);

    let m: Manifest =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let kernel = m.components.iter().find(|c| c.name == "kernel").unwrap();
    assert!(
        kernel.version.ends_with("-cloud-amd64")
            && kernel.source.starts_with("Debian linux-image-"),
        "{kernel:?}"
    );
    let modules: Vec<&str> = m
        .components
        .iter()
        .filter_map(|c| c.name.strip_prefix("kernel module "))
        .collect();
    // Named in the recipe, and pulled in by what is named.
    for name in [
        "dm_verity",
        "erofs",
        "virtio_blk",
        "dm_mod",
        "virtio_ring",
        "fat",
    ] {
        assert!(modules.contains(&name), "{name} not in {modules:?}");
    }
    let pos = |n: &str| modules.iter().position(|m| *m == n).unwrap();
    assert!(pos("dm_mod") < pos("dm_verity") && pos("fat") < pos("vfat"));

    let lock = dir.path().join("debian-kernel.lock");
    let o = Command::new(keel_bin())
        .arg("lock")
        .arg(&recipe)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    let text = std::fs::read_to_string(&lock).unwrap();
    assert!(
        text.contains("kernel package linux-image-cloud-amd64")
            && text.contains(&format!("linux-image-{} ", kernel.version)),
        "{text}"
    );

    let disk = out.join("disk.img");
    let mut g = Guest::boot(&disk);
    let ready = g.expect("keel: ready ", BOOT_TIMEOUT);
    assert!(
        ready.contains(&format!("stage 1: {} kernel modules loaded", modules.len()))
            && !ready.contains("did not load"),
        "{ready}"
    );
    assert!(ready.contains("verified by dm-verity"), "{ready}");
    g.expect(
        "boot entry keel-0.1.0+2-1.efi is healthy: blessed as keel-0.1.0.efi",
        BOOT_TIMEOUT,
    );
    g.prompt();
    let uname = g.shell("uname -r");
    assert!(uname.contains(&kernel.version), "{uname}");
    let loaded = g.shell("cut -d' ' -f1 /proc/modules");
    for name in ["dm_verity", "erofs", "virtio_blk", "vfat", "virtio_net"] {
        assert!(
            loaded.lines().any(|l| l.trim() == name),
            "{name} not loaded:\n{loaded}"
        );
    }
    // The network device came up through its module.
    let net = g.shell("ls /sys/class/net");
    assert!(net.contains("eth0"), "{net}");
    let status = g.status();
    let services = status["services"].as_array().unwrap();
    assert!(services.iter().all(|s| s["state"] == "running"), "{status}");
    // The escape suite's admin rows, on a kernel with modules and kexec.
    keel_tests::escape::admin_cannot_escape(&mut g);
    g.send("keelctl poweroff\n");
    let exit = g.wait_exit(COMMAND_TIMEOUT);
    assert!(exit.success(), "{exit:?}");
}

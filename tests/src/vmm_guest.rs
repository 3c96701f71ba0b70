//! The nested keel-vmm setup the end-to-end tests and `cargo xtask bench
//! vmm` share: a guest (the keel kernel and `tests/vmm-guest/init.c` in an
//! initramfs) and a keel image that runs keel-vmm on it as a service.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{disk_image, image_recipe, keel_build, workspace};

/// The guest's init, static against musl, built in `dir`.
pub fn guest_init(dir: &Path) -> Vec<u8> {
    let out = dir.join("init");
    let st = Command::new("musl-gcc")
        .args(["-static", "-Os", "-o"])
        .arg(&out)
        .arg(workspace().join("tests/vmm-guest/init.c"))
        .status()
        .expect("musl-gcc (musl-tools; cargo xtask deps installs it)");
    assert!(st.success(), "compiling the guest init");
    fs::read(out).expect("the compiled guest init")
}

/// The guest's initramfs: just its init.
pub fn guest_initramfs(dir: &Path) -> Vec<u8> {
    use keel_image_builder::initramfs::{write_cpio, Entry};
    let init = Entry::File {
        path: "init".into(),
        mode: 0o755,
        data: guest_init(dir),
    };
    let mut out = Vec::new();
    write_cpio(&[init], &mut out).expect("writing a cpio archive in memory");
    out
}

/// Build, in `dir`, an image with the admin shell and a service `name`
/// defined by `def` (a container definition that may use the guest's
/// files as /guest/vmlinuz and /guest/initramfs.cpio). Returns the disk.
pub fn image_with_vmm_service(dir: &Path, name: &str, def: &str) -> PathBuf {
    let containers = dir.join("containers");
    fs::create_dir_all(&containers).expect("a folder for the containers");
    // The guest kernel: the default image's own (its direct-boot output).
    let kernel = disk_image().with_file_name("vmlinuz");
    fs::copy(&kernel, containers.join("guest-vmlinuz"))
        .unwrap_or_else(|e| panic!("{}: {e} (cargo xtask image makes it)", kernel.display()));
    fs::write(
        containers.join("guest-initramfs.cpio"),
        guest_initramfs(dir),
    )
    .expect("writing the initramfs");
    let files = "\n[rootfs]\ncontents = [\"keel-vmm\"]\nfiles = { \"guest/vmlinuz\" = \"guest-vmlinuz\", \"guest/initramfs.cpio\" = \"guest-initramfs.cpio\" }\n";
    fs::write(
        containers.join(format!("{name}.toml")),
        format!("{def}{files}"),
    )
    .expect("writing the container");
    let recipe = image_recipe(dir, "0.1.0", &["admin", name], "", "");
    let text = fs::read_to_string(&recipe).expect("the recipe").replace(
        "dirs = [",
        &format!("dirs = [\"{}\", ", containers.display()),
    );
    fs::write(&recipe, text).expect("writing the recipe");
    keel_build(&recipe, &dir.join("out"), None).join("disk.img")
}

//! `keel flash` onto a real block device (a loop device; CI runs as root):
//! it refuses a device that holds partitions or has one mounted, writes and
//! verifies the image, puts the host config on the ESP and grows the data
//! partition to the end of the device; the device then boots in QEMU, and
//! stage 1 grows /var's filesystem to fill the partition.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use keel_image_builder::{disk, esp};
use keel_tests::{disk_image, keel_bin, output_text, Guest, BOOT_TIMEOUT, COMMAND_TIMEOUT};

const GIB: u64 = 1 << 30;

/// A loop device over (part of) a file, detached when dropped.
struct Loop(PathBuf);

impl Loop {
    /// The machine's kernel may lack GPT support (it has here), so
    /// partitions are reached through loop devices of their own.
    fn attach(file: &Path, range: Option<(u64, u64)>) -> Loop {
        let mut cmd = Command::new("losetup");
        cmd.args(["--find", "--show"]);
        if let Some((offset, size)) = range {
            cmd.arg(format!("--offset={offset}"))
                .arg(format!("--sizelimit={size}"));
        }
        let out = cmd.arg(file).output().expect("losetup (util-linux)");
        assert!(
            out.status.success(),
            "losetup failed (this test needs root and loop devices; CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

fn keel_flash(args: &[&Path], force: bool) -> Output {
    let mut cmd = Command::new(keel_bin());
    cmd.arg("flash").args(args);
    if force {
        cmd.arg("--force");
    }
    cmd.output().unwrap()
}

// One long scenario rather than many short tests: each step needs the
// state the steps before it left, and a boot costs seconds of the suite.
#[test]
fn flash_to_a_block_device_then_boot_it() {
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("device");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(GIB)
        .unwrap();
    let dev = Loop::attach(&backing, None);
    let config = dir.path().join("host.toml");
    std::fs::write(&config, "# flashed by the test\nhostname = \"edge-7\"\n").unwrap();
    let image = disk_image();

    // A mounted device is refused, even with --force, and left alone.
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&dev.0)
        .status()
        .unwrap();
    assert!(mkfs.success());
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    assert!(Command::new("mount")
        .arg(&dev.0)
        .arg(&mnt)
        .status()
        .unwrap()
        .success());
    let busy = keel_flash(&[&image, &dev.0], true);
    assert!(!busy.status.success());
    assert!(
        output_text(&busy).contains(&format!("{} is in use (mounted at", dev.0.display())),
        "{}",
        output_text(&busy)
    );
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
    let head = |p: &Path| {
        let mut b = vec![0u8; 4096];
        std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(p).unwrap(), &mut b, 0)
            .unwrap();
        b
    };
    assert_eq!(head(&backing)[510..512], [0, 0], "nothing written");

    let out = keel_flash(&[&image, &dev.0, Path::new("--config"), &config], false);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("read back and verified"),
        "{}",
        output_text(&out)
    );

    // The table says so: data reaches to 1 MiB before the device's end.
    let layout = disk::read_layout(&dev.0).unwrap();
    let data = layout
        .parts
        .iter()
        .find(|p| p.label == "keel-data")
        .unwrap()
        .clone();
    assert_eq!(data.offset + data.size, GIB - (1 << 20), "{layout:?}");
    let built = disk::read_layout(&image).unwrap();
    assert_eq!(layout.parts[..5], built.parts[..5]);

    // Now it holds a partition table: a second flash needs --force.
    let again = keel_flash(&[&image, &dev.0], false);
    assert!(!again.status.success());
    assert!(
        output_text(&again).contains("already holds a partition table"),
        "{}",
        output_text(&again)
    );
    assert_eq!(disk::read_layout(&dev.0).unwrap(), layout);

    // The device boots; stage 1 grows /var to the partition.
    let mut g = Guest::boot_device(&dev.0, &dir.path().join("vars"));
    let boot = g.expect("keel: ready ", BOOT_TIMEOUT);
    assert!(boot.contains("/var grown to its partition"), "{boot}");
    g.prompt();
    g.send("keelctl poweroff\n");
    g.wait_exit(COMMAND_TIMEOUT);

    let part = Loop::attach(&backing, Some((data.offset, data.size)));
    let dumpe2fs = Command::new("dumpe2fs")
        .arg("-h")
        .arg(&part.0)
        .output()
        .unwrap();
    let sb = String::from_utf8_lossy(&dumpe2fs.stdout);
    let field = |k: &str| -> u64 {
        sb.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {k} in:\n{sb}"))
    };
    let fs_bytes = field("Block count:") * field("Block size:");
    assert!(
        fs_bytes + (1 << 20) > data.size && fs_bytes <= data.size,
        "filesystem {fs_bytes} bytes in a {}-byte partition",
        data.size
    );

    // The host config is on the ESP, and the health gate blessed the entry.
    let esp_part = layout.parts.iter().find(|p| p.label == "esp").unwrap();
    let mut bytes = vec![0u8; esp_part.size as usize];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(&dev.0).unwrap(),
        &mut bytes,
        esp_part.offset,
    )
    .unwrap();
    assert_eq!(
        esp::read_file(Cursor::new(bytes.clone()), "keel/host.toml").unwrap(),
        std::fs::read(&config).unwrap()
    );
    assert_eq!(
        esp::list_dir(Cursor::new(bytes), "EFI/Linux").unwrap(),
        ["keel-0.1.0.efi"]
    );
}

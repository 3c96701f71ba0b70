//! keel-vmm's refusals, as a person sees them: each names what is wrong
//! and the VMM exits before touching KVM.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::Command;

fn vmm(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keel-vmm"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_input_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("vmlinuz");
    let (code, err) = vmm(&["--kernel", missing.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("{}: No such file or directory", missing.display())),
        "{err}"
    );
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a kernel").unwrap();
    let (code, err) = vmm(&["--kernel", text.to_str().unwrap(), "--memory", "16"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("memory: 16 MiB is too small; a Linux guest needs at least 32 MiB"),
        "{err}"
    );
    let (code, err) = vmm(&[
        "--kernel",
        text.to_str().unwrap(),
        "--initramfs",
        dir.path().join("none.cpio").to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("none.cpio: No such file or directory"),
        "{err}"
    );
}

#[test]
fn bad_devices_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, "not a kernel").unwrap();
    let k = kernel.to_str().unwrap();
    let missing = dir.path().join("root.ext4");
    let (code, err) = vmm(&["--kernel", k, "--disk", missing.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!(
            "disk {}: No such file or directory",
            missing.display()
        )),
        "{err}"
    );
    let folder = format!("{},ro", dir.path().display());
    let (code, err) = vmm(&["--kernel", k, "--disk", &folder]);
    assert_ne!(code, 0);
    assert!(err.contains("is a folder, not a file"), "{err}");
    let (code, err) = vmm(&["--kernel", k, "--tap", "much-too-long-name"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("net.tap: \"much-too-long-name\" is not an interface name"),
        "{err}"
    );
    let (code, err) = vmm(&["--kernel", k, "--tap", "tap0", "--mac", "01:00:00:00:00:01"]);
    assert_ne!(code, 0);
    assert!(err.contains("is not a unicast MAC address"), "{err}");
    let (code, err) = vmm(&["--kernel", k, "--mac", "02:00:00:00:00:01"]);
    assert_ne!(code, 0);
    assert!(err.contains("--tap"), "a MAC needs a tap: {err}");
    let (code, err) = vmm(&[
        "--kernel",
        k,
        "--serial",
        &format!(
            "socket:{}",
            dir.path().join("no/such/dir/console").display()
        ),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("serial socket"), "{err}");
}

//! Secure Boot end to end, in QEMU with OVMF's Secure Boot firmware (SMM)
//! and keys from `keel keygen --secure-boot` enrolled by `keel run
//! --secure-boot`: the signed image boots with Secure Boot enforced, an
//! update's signed UKI boots too, and a UKI someone put on the ESP, signed
//! by another key or changed by one byte, is refused by the firmware while
//! boot counting falls back to the good entry.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::process::Command;

use keel_image_builder::{bundle, disk, esp};
use keel_tests::fixtures::{keygen_secure_boot, put_esp_file, secure_boot_build};
use keel_tests::updates::add;
use keel_tests::{copy_disk, Guest, BOOT_TIMEOUT, COMMAND_TIMEOUT};

fn entries(disk_path: &Path) -> Vec<String> {
    esp::list_dir(
        std::io::Cursor::new(disk::read_partition(disk_path, "esp").unwrap()),
        "EFI/Linux",
    )
    .unwrap()
}

/// Boot once with an entry the firmware must refuse: the console says so,
/// and the try is counted. Then power-cycle, as a watchdog or a person
/// would, and the good entry boots.
fn refused_then_falls_back(
    disk_path: &Path,
    vars: &Path,
    keys: &Path,
    name: &str,
    good_version: &str,
) {
    let mut g = Guest::boot_secure(disk_path, vars, keys, None, false, &[]);
    g.expect("Error loading", BOOT_TIMEOUT);
    let rest = g.expect("\n", COMMAND_TIMEOUT);
    // systemd-boot counted the try (renamed the file) before loading it.
    let stem = name.trim_end_matches("+1.efi");
    assert!(
        rest.contains(&format!("{stem}+0-1.efi")),
        "the refusal names another entry:\n{rest}"
    );
    assert!(
        rest.contains("Security Violation") || rest.contains("Access Denied"),
        "not refused for its signature:\n{rest}"
    );
    g.power_cut();
    assert!(
        entries(disk_path).contains(&format!("{stem}+0-1.efi")),
        "the refused try was not counted: {:?}",
        entries(disk_path)
    );
    let mut g = Guest::boot_secure(disk_path, vars, keys, None, false, &[]);
    g.expect(
        &format!("keel: ready version={good_version} "),
        BOOT_TIMEOUT,
    );
    g.prompt();
    assert_eq!(g.status()["secure_boot"], true);
    g.power_cut();
}

// One scenario: each step needs the disk and firmware state the step
// before left, and every boot costs seconds of firmware under TCG.
#[test]
fn signed_images_boot_under_secure_boot_and_others_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let keys = dir.join("keys");
    let other = dir.join("other");
    keygen_secure_boot(&keys);
    keygen_secure_boot(&other);
    let (update_key_path, _) = bundle::keygen(&dir.join("release")).unwrap();
    let update_key = bundle::read_secret(&update_key_path).unwrap();
    let v1 = secure_boot_build(dir, "0.1.0", &keys, Some(&update_key_path));
    let v2 = secure_boot_build(dir, "0.2.0", &keys, Some(&update_key_path));
    for f in ["PK.auth", "KEK.esl", "db.crt"] {
        assert!(v1.join("secure-boot").join(f).is_file(), "{f}");
    }
    assert!(
        !v1.join("secure-boot/db.key").exists(),
        "a secret key left the key folder"
    );
    let disk_path = dir.join("disk.img");
    copy_disk(&v1.join("disk.img"), &disk_path);
    let enrolled = v1.join("secure-boot");
    let vars = dir.join("vars.fd");

    // Enforced, and the update's signed UKI boots as well.
    let repo_dir = dir.join("repo");
    add(&repo_dir, &v2.join("keel-0.2.0.bundle"), &update_key);
    let port = keel_tests::http::serve(&repo_dir);
    let mut g = Guest::boot_secure(&disk_path, &vars, &enrolled, None, true, &[(80, port)]);
    let early = g.expect("keel: ready version=0.1.0 slot=a", BOOT_TIMEOUT);
    assert!(early.contains("UEFI Secure Boot is enabled"), "{early}");
    g.prompt();
    assert_eq!(g.status()["secure_boot"], true);
    g.send("keelctl update check\n");
    g.expect("installed 0.2.0 into slot b", COMMAND_TIMEOUT);
    let early = g.expect("keel: ready version=0.2.0 slot=b", BOOT_TIMEOUT);
    assert!(early.contains("UEFI Secure Boot is enabled"), "{early}");
    g.expect("blessed as keel-0.2.0.efi", COMMAND_TIMEOUT);
    g.prompt();
    assert_eq!(g.status()["secure_boot"], true);
    g.power_cut();

    // Someone with write access to the ESP adds a newer entry signed by a
    // key the firmware does not trust.
    let uki = std::fs::read(v2.join("keel-0.2.0.efi")).unwrap();
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let unsigned = scratch.join("unsigned.efi");
    std::fs::write(&unsigned, &uki).unwrap();
    let st = Command::new("sbattach")
        .arg("--remove")
        .arg(&unsigned)
        .status()
        .unwrap();
    assert!(st.success());
    let foreign = keel_image_builder::secureboot::sign::Signer::from_key(&other.join("db.key"))
        .unwrap()
        .sign(&std::fs::read(&unsigned).unwrap(), &scratch, "foreign")
        .unwrap();
    put_esp_file(&disk_path, "EFI/Linux/keel-0.3.0+1.efi", &foreign);
    refused_then_falls_back(&disk_path, &vars, &enrolled, "keel-0.3.0+1.efi", "0.2.0");

    // One byte of the good, signed UKI changed: in its command line,
    // where a root hash would be swapped.
    let at = uki.windows(13).position(|w| w == b"keel.roothash").unwrap();
    let mut changed = uki.clone();
    changed[at + 14] ^= 0x01;
    put_esp_file(&disk_path, "EFI/Linux/keel-0.4.0+1.efi", &changed);
    refused_then_falls_back(&disk_path, &vars, &enrolled, "keel-0.4.0+1.efi", "0.2.0");
}

// The auth files a signed build puts on the ESP, enrolled by systemd-boot
// itself on a machine in setup mode (OVMF's empty store), as on a real
// machine whose owner cleared its keys.
#[test]
fn systemd_boot_enrolls_the_images_keys_on_a_machine_in_setup_mode() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let keys = dir.join("keys");
    keygen_secure_boot(&keys);
    let out = secure_boot_build(dir, "0.1.0", &keys, None);
    let disk_path = dir.join("disk.img");
    copy_disk(&out.join("disk.img"), &disk_path);
    let conf = keel_tests::fixtures::esp_text(&disk_path, "loader/loader.conf");
    assert!(conf.contains("secure-boot-enroll manual\n"), "{conf}");
    // `force` instead of `manual`: no one at the menu to choose the entry.
    put_esp_file(
        &disk_path,
        "loader/loader.conf",
        conf.replace("secure-boot-enroll manual", "secure-boot-enroll force")
            .as_bytes(),
    );
    // systemd-boot enrolls by itself only from `loader/keys/auto/`; the
    // build's `keel/` is the menu entry a person picks. The same files.
    for f in ["PK", "KEK", "db"] {
        assert!(keel_tests::fixtures::esp_text_if_any(
            &disk_path,
            &format!("loader/keys/keel/{f}.auth")
        )
        .is_some());
        let auth = std::fs::read(out.join("secure-boot").join(format!("{f}.auth"))).unwrap();
        put_esp_file(&disk_path, &format!("loader/keys/auto/{f}.auth"), &auth);
    }
    let vars = dir.join("setup-mode.fd");
    std::fs::copy(keel_image_builder::qemu::OVMF_VARS, &vars).unwrap();
    let mut g = Guest::boot_secure(&disk_path, &vars, &out.join("secure-boot"), None, true, &[]);
    g.expect(
        "Enrolling secure boot keys from directory: \\loader\\keys\\auto",
        BOOT_TIMEOUT,
    );
    let early = g.expect(
        "keel: ready version=0.1.0 slot=a",
        BOOT_TIMEOUT + std::time::Duration::from_secs(20),
    );
    assert!(early.contains("UEFI Secure Boot is enabled"), "{early}");
    g.prompt();
    assert_eq!(g.status()["secure_boot"], true);
    g.power_cut();
    let names =
        keel_image_builder::secureboot::vars::names(&std::fs::read(&vars).unwrap()).unwrap();
    for v in ["PK", "KEK", "db"] {
        assert!(names.iter().any(|n| n == v), "{v} not enrolled: {names:?}");
    }
}

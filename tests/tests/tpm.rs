//! Measured boot and the encrypted /var, in QEMU with OVMF's Secure Boot
//! firmware and a TPM 2.0 (Debian's swtpm): the first boot of a signed
//! image encrypts /var and seals its key to PCR 7 and the image key's
//! signed PCR 11; an update to a new signed UKI still opens it; another
//! TPM, or Secure Boot off, does not, and says so; the recovery key
//! printed at first boot opens it and seals it to the TPM at hand.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;

use keel_image_builder::bundle;
use keel_tests::fixtures::{esp_text_if_any, keygen_secure_boot, put_esp_file, secure_boot_build};
use keel_tests::updates::add;
use keel_tests::{copy_disk, Guest, BOOT_TIMEOUT, COMMAND_TIMEOUT};

const RECOVERY_FILE: &str = "keel/var-recovery-key";

/// Boot `disk` as the other machine (its own firmware store and TPM)
/// until it is ready at `version`; the guest and its early console.
fn boot_elsewhere(disk: &Path, dir: &Path, keys: &Path, version: &str) -> (Guest, String) {
    let mut g = Guest::boot_secure(
        disk,
        &dir.join("other-vars.fd"),
        keys,
        Some(&dir.join("other-tpm")),
        false,
        &[],
    );
    let early = g.expect(&format!("keel: ready version={version}"), BOOT_TIMEOUT);
    g.prompt();
    (g, early)
}

/// What keel-init says when /var has no machine id yet: on a /var that
/// came back from an earlier boot, it does not.
const NEW_VAR: &str = "drew a new machine id";

#[test]
fn var_is_sealed_to_the_boot_chain_survives_updates_and_opens_with_its_recovery_key() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let keys = dir.join("keys");
    keygen_secure_boot(&keys);
    assert!(keys.join("tpm2-pcr-private-key.pem").is_file());
    let (update_key_path, _) = bundle::keygen(&dir.join("release")).unwrap();
    let update_key = bundle::read_secret(&update_key_path).unwrap();
    let v1 = secure_boot_build(dir, "0.1.0", &keys, Some(&update_key_path));
    let v2 = secure_boot_build(dir, "0.2.0", &keys, Some(&update_key_path));
    let disk_path = dir.join("disk.img");
    copy_disk(&v1.join("disk.img"), &disk_path);
    let enrolled = v1.join("secure-boot");
    let vars = dir.join("vars.fd");
    let tpm = dir.join("tpm");

    // First boot: /var is made encrypted, and the recovery key shown once.
    let repo_dir = dir.join("repo");
    add(&repo_dir, &v2.join("keel-0.2.0.bundle"), &update_key);
    let port = keel_tests::http::serve(&repo_dir);
    let mut g = Guest::boot_secure(
        &disk_path,
        &vars,
        &enrolled,
        Some(&tpm),
        true,
        &[(80, port)],
    );
    g.expect("stage 1: /var encrypted", BOOT_TIMEOUT);
    g.expect(
        "recovery key (shown once; keep it off this host): ",
        COMMAND_TIMEOUT,
    );
    let recovery = g.expect("\n", COMMAND_TIMEOUT).trim().to_string();
    assert_eq!(recovery.len(), 71, "{recovery:?}");
    let early = g.expect("keel: ready version=0.1.0 slot=a", BOOT_TIMEOUT);
    assert!(early.contains(NEW_VAR), "{early}");
    g.prompt();
    assert_eq!(g.status()["var"], "encrypted");
    assert_eq!(g.status()["secure_boot"], true);

    // An update to a new signed UKI: its PCR 11 differs, its signature
    // by the same key opens /var.
    g.send("keelctl update check\n");
    g.expect("installed 0.2.0 into slot b", COMMAND_TIMEOUT);
    let early = g.expect("keel: ready version=0.2.0 slot=b", BOOT_TIMEOUT);
    assert!(!early.contains("/var encrypted"), "made again:\n{early}");
    assert!(!early.contains("temporary /var"), "{early}");
    assert!(early.contains("/var unsealed by the TPM"), "{early}");
    assert!(!early.contains(NEW_VAR), "/var did not come back:\n{early}");
    g.expect("blessed as keel-0.2.0.efi", COMMAND_TIMEOUT);
    g.prompt();
    assert_eq!(g.status()["var"], "encrypted");
    g.power_cut();

    // The disk in another machine: another TPM does not open it.
    let (mut g, early) = boot_elsewhere(&disk_path, dir, &enrolled, "0.2.0");
    assert!(
        early.contains("the TPM does not open /var: the key was sealed by another TPM"),
        "{early}"
    );
    assert!(early.contains("using a temporary /var"), "{early}");
    assert_eq!(g.status()["var"], "temporary");
    // (The header line starts "keel: ", which the console filter drops.)
    let header = g.shell("keelctl status | head -1 | grep -o '/var [A-Z]*'");
    assert!(header.contains("/var TEMPORARY"), "{header}");
    g.power_cut();

    // The same TPM with Secure Boot off: PCR 7 differs.
    let plain_vars = dir.join("plain-vars.fd");
    let mut g = Guest::boot_tpm(&disk_path, &plain_vars, &tpm);
    let early = g.expect("keel: ready version=0.2.0", BOOT_TIMEOUT);
    assert!(
        early.contains("PCR 7 changed since the key was sealed"),
        "{early}"
    );
    assert!(early.contains("using a temporary /var"), "{early}");
    g.prompt();
    assert_eq!(g.status()["secure_boot"], false);
    assert_eq!(g.status()["var"], "temporary");
    g.power_cut();

    // A wrong recovery key opens nothing and changes nothing.
    put_esp_file(
        &disk_path,
        RECOVERY_FILE,
        b"cccccccc-cccccccc-cccccccc-cccccccc-cccccccc-cccccccc-cccccccc-cccccccc\n",
    );
    let (mut g, early) = boot_elsewhere(&disk_path, dir, &enrolled, "0.2.0");
    assert!(early.contains("not this /var's recovery key"), "{early}");
    assert_eq!(g.status()["var"], "temporary");
    g.power_cut();
    assert!(
        esp_text_if_any(&disk_path, RECOVERY_FILE).is_some(),
        "a wrong key was removed as if it had opened /var"
    );

    // The recovery key opens it on the other machine, and seals it to
    // that machine's TPM; the file is gone from the ESP.
    put_esp_file(
        &disk_path,
        RECOVERY_FILE,
        format!("{recovery}\n").as_bytes(),
    );
    let (mut g, early) = boot_elsewhere(&disk_path, dir, &enrolled, "0.2.0");
    assert!(
        early.contains("/var opened with its recovery key"),
        "{early}"
    );
    assert!(
        early.contains("sealed to this TPM and boot chain again"),
        "{early}"
    );
    assert!(!early.contains(NEW_VAR), "/var did not come back:\n{early}");
    assert_eq!(g.status()["var"], "encrypted");
    g.power_cut();
    assert_eq!(esp_text_if_any(&disk_path, RECOVERY_FILE), None);

    // From now on that TPM opens it by itself.
    let (mut g, early) = boot_elsewhere(&disk_path, dir, &enrolled, "0.2.0");
    assert!(!early.contains("does not open /var"), "{early}");
    assert!(early.contains("/var unsealed by the TPM"), "{early}");
    assert!(!early.contains(NEW_VAR), "{early}");
    assert_eq!(g.status()["var"], "encrypted");
    g.power_cut();
}

// A power cut during the first boot's making of /var: the pending mark is
// down and the volume half written over the plain filesystem. The next
// boot starts over and ends with a /var it opens.
#[test]
fn a_first_boot_cut_while_making_var_is_done_again_by_the_next() {
    use std::os::unix::fs::FileExt;
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let keys = dir.join("keys");
    keygen_secure_boot(&keys);
    let v1 = secure_boot_build(dir, "0.1.0", &keys, None);
    let disk_path = dir.join("disk.img");
    copy_disk(&v1.join("disk.img"), &disk_path);
    let data = keel_image_builder::disk::read_table(&disk_path)
        .unwrap()
        .into_iter()
        .find(|p| p.label == keel_formats::disk::DATA_LABEL)
        .unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk_path)
        .unwrap();
    let mut pending = keel_formats::varcrypt::PENDING_MAGIC.to_vec();
    pending.resize(keel_formats::varcrypt::HEADER_SIZE, 0);
    f.write_all_at(
        &pending,
        data.offset + keel_formats::varcrypt::HEADER_OFFSETS[1],
    )
    .unwrap();
    f.write_all_at(&[0x5a; 1 << 20], data.offset + (2 << 20))
        .unwrap();
    f.sync_all().unwrap();
    drop(f);

    let vars = dir.join("vars.fd");
    let tpm = dir.join("tpm");
    let mut g = Guest::boot_secure(
        &disk_path,
        &vars,
        &v1.join("secure-boot"),
        Some(&tpm),
        false,
        &[],
    );
    g.expect("stage 1: /var encrypted", BOOT_TIMEOUT);
    g.expect("keel: ready version=0.1.0", BOOT_TIMEOUT);
    g.prompt();
    assert_eq!(g.status()["var"], "encrypted");
    g.power_cut();

    // Without Secure Boot the same cut cannot be finished: /var stays in
    // memory rather than mounting the overwritten plain filesystem.
    let disk2 = dir.join("disk2.img");
    copy_disk(&v1.join("disk.img"), &disk2);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk2)
        .unwrap();
    f.write_all_at(
        &pending,
        data.offset + keel_formats::varcrypt::HEADER_OFFSETS[1],
    )
    .unwrap();
    f.sync_all().unwrap();
    drop(f);
    let mut g = Guest::boot_tpm(&disk2, &dir.join("plain-vars.fd"), &dir.join("tpm2"));
    let early = g.expect("keel: ready version=0.1.0", BOOT_TIMEOUT);
    assert!(early.contains("did not finish"), "{early}");
    g.prompt();
    assert_eq!(g.status()["var"], "temporary");
    g.power_cut();
}

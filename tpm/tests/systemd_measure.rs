//! keel's PCR 11 prediction against systemd's own, systemd-measure (from
//! Debian's systemd package): what stage 1 expects to find in PCR 11 after
//! systemd-stub has measured a UKI and stage 1 has entered its phase.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::Command;

use keel_tpm::policy::predict_pcr11;

const MEASURE: &str = "/lib/systemd/systemd-measure";

#[test]
fn pcr_11_prediction_matches_systemd_measure() {
    let dir = tempfile::tempdir().unwrap();
    let sections: Vec<(&str, Vec<u8>)> = vec![
        (".linux", b"MZ a kernel".repeat(1000)),
        (".osrel", b"ID=keel\nVERSION_ID=0.1.0\n".to_vec()),
        (".cmdline", b"console=ttyS0 keel.verity=abc".to_vec()),
        (".initrd", vec![0x1f, 0x8b, 8, 0, 1, 2, 3]),
        (".pcrpkey", b"-----BEGIN PUBLIC KEY-----\n...\n".to_vec()),
    ];
    let mut cmd = Command::new(MEASURE);
    cmd.args(["calculate", "--bank=sha256", "--phase=enter-initrd"]);
    for (name, data) in &sections {
        let path = dir.path().join(&name[1..]);
        std::fs::write(&path, data).unwrap();
        cmd.arg(format!("--{}={}", &name[1..], path.display()));
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{MEASURE} (Debian package systemd) must be installed: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let theirs = stdout
        .lines()
        .find_map(|l| l.strip_prefix("11:sha256="))
        .unwrap_or_else(|| panic!("no PCR 11 value in {stdout:?}"));
    let refs: Vec<(&str, &[u8])> = sections.iter().map(|(n, d)| (*n, d.as_slice())).collect();
    assert_eq!(hex::encode(predict_pcr11(&refs)), theirs);
}

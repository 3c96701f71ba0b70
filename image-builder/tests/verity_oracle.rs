//! Our dm-verity tree against `veritysetup format` (cryptsetup-bin) on the
//! same data and parameters: the root hash and every byte of the hash
//! device must agree.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::process::Command;

use keel_image_builder::verity;

fn veritysetup(data: &Path, hash: &Path, salt: &str, uuid: &str) -> String {
    let out = Command::new("veritysetup")
        .args([
            "format",
            "--data-block-size=4096",
            "--hash-block-size=4096",
            "--hash=sha256",
        ])
        .arg(format!("--salt={salt}"))
        .arg(format!("--uuid={uuid}"))
        .arg(data)
        .arg(hash)
        .output()
        .expect("veritysetup must be installed (apt-get install cryptsetup-bin)");
    assert!(
        out.status.success(),
        "veritysetup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|| panic!("no root hash in veritysetup output:\n{text}"))
}

#[test]
fn matches_veritysetup_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    // 1 block (no tree), one hash block's worth, two levels, three levels.
    for blocks in [1usize, 128, 129, 16_500] {
        let data = dir.path().join(format!("data-{blocks}"));
        let bytes: Vec<u8> = (0..blocks * 4096)
            .map(|i| ((i * 2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&data, &bytes).unwrap();
        let salt = [0x3cu8; 32];
        let uuid = *b"\x12\x34\x56\x78\x9a\xbc\x4d\xef\x81\x23\x45\x67\x89\xab\xcd\xef";
        let ours_path = dir.path().join(format!("ours-{blocks}"));
        let ours = verity::build_file(&data, &ours_path, &salt, uuid).unwrap();

        let theirs_path = dir.path().join(format!("theirs-{blocks}"));
        let salt_hex = keel_formats::cmdline::to_hex(&salt);
        let root = veritysetup(
            &data,
            &theirs_path,
            &salt_hex,
            "12345678-9abc-4def-8123-456789abcdef",
        );
        assert_eq!(
            keel_formats::cmdline::to_hex(&ours.params.root_hash),
            root,
            "{blocks} blocks"
        );
        let theirs = std::fs::read(&theirs_path).unwrap();
        let ours_bytes = std::fs::read(&ours_path).unwrap();
        assert_eq!(
            ours_bytes.len(),
            theirs.len(),
            "{blocks} blocks: hash device size"
        );
        assert!(
            ours_bytes == theirs,
            "{blocks} blocks: hash device bytes differ"
        );
    }
}

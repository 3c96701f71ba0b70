//! What the update tests share: images that follow a test repository,
//! the repository's index, and the state of a disk's slots and entries.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use keel_formats::repo::{Index, INDEX_FILE};
use keel_formats::signed::{Envelope, Kind};
use keel_image_builder::{disk, esp, repo};

use crate::keel_build;

/// A recipe like recipes/host.toml at `version`, following the test
/// repository, with a static address and `extra` containers.
pub fn recipe(dir: &Path, version: &str, extra: &[&str], cmdline: &str) -> PathBuf {
    let mut enable = vec!["admin", "web", "update", "net"];
    enable.extend_from_slice(extra);
    crate::image_recipe(
        dir,
        version,
        &enable,
        cmdline,
        "repository = \"http://10.0.2.100/\"\nreboot = \"auto\"",
    )
}

/// `keel build --sign-key`; the output folder.
pub fn build(dir: &Path, version: &str, extra: &[&str], key: &Path) -> PathBuf {
    build_with(dir, version, extra, "", key)
}

pub fn build_with(dir: &Path, version: &str, extra: &[&str], cmdline: &str, key: &Path) -> PathBuf {
    let out = dir.join(format!("out-{version}"));
    keel_build(&recipe(dir, version, extra, cmdline), &out, Some(key))
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs()
}

/// sha256 of each slot partition, and the boot entries.
pub fn snapshot(disk_path: &Path) -> (Vec<String>, Vec<String>) {
    let hashes = [
        "keel-root-a",
        "keel-verity-a",
        "keel-root-b",
        "keel-verity-b",
    ]
    .iter()
    .map(|l| {
        hex(&Sha256::digest(
            disk::read_partition(disk_path, l).expect("reading a slot partition"),
        ))
    })
    .collect();
    let entries = esp::list_dir(
        std::io::Cursor::new(disk::read_partition(disk_path, "esp").expect("reading the ESP")),
        "EFI/Linux",
    )
    .expect("listing the boot entries");
    (hashes, entries)
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Add `bundle_path` on the stable channel (signed by `key`).
pub fn add(repo_dir: &Path, bundle_path: &Path, key: &ed25519_dalek::SigningKey) -> Index {
    repo::add(&repo::AddOptions {
        bundle: bundle_path,
        repo: repo_dir,
        key,
        channel: "stable",
        valid_for_s: 86400,
        trust: &[],
        now: now(),
        rollout: None,
    })
    .expect("adding a bundle to the repository")
}

/// Publish `index`, signed by `key`, as the repository's index.
pub fn publish(repo_dir: &Path, index: &Index, key: &ed25519_dalek::SigningKey) {
    let env = Envelope::sign(
        Kind::Index,
        serde_json::to_vec(index).expect("an index serializes"),
        &[key],
    );
    std::fs::write(repo_dir.join(INDEX_FILE), env.to_bytes()).expect("writing the index");
}

pub fn read_index(repo_dir: &Path) -> Index {
    let bytes = std::fs::read(repo_dir.join(INDEX_FILE)).expect("reading the index");
    Index::parse(
        &Envelope::parse(Kind::Index, &bytes)
            .expect("a signed index")
            .body,
    )
    .expect("an index")
}

/// Give the stable channel's release a staged rollout: `waves` as `keel
/// repo add --waves` takes them, from `start`.
pub fn roll_out(repo_dir: &Path, waves: &str, start: u64, key: &ed25519_dalek::SigningKey) {
    let mut index = read_index(repo_dir);
    index.index_version += 1;
    index
        .channels
        .get_mut("stable")
        .expect("a stable channel")
        .rollout = Some(keel_formats::rollout::Rollout {
        start,
        waves: keel_formats::rollout::Rollout::parse_waves(waves).expect("waves"),
    });
    publish(repo_dir, &index, key);
}

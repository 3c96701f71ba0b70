//! Signed A/B updates end to end, in QEMU: a v1 host follows a repository
//! served from 127.0.0.1 (reached through QEMU's guestfwd at 10.0.2.100),
//! refuses every bad index or bundle without touching a partition, updates
//! to v2 and blesses it, rolls back by itself from a v3 that fails its
//! health gate, and refuses a downgrade and a replayed index.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use keel_image_builder::{bundle, disk, esp, repo};
use keel_spec::repo::{Index, INDEX_FILE};
use keel_spec::signed::{Envelope, Kind};
use keel_tests::{keel_build, Guest, BOOT_TIMEOUT, COMMAND_TIMEOUT};

/// A recipe like recipes/host.toml at `version`, following the test
/// repository, with a static address and `extra` containers.
fn recipe(dir: &Path, version: &str, extra: &[&str], cmdline: &str) -> PathBuf {
    let mut enable = vec!["admin", "web", "update", "net"];
    enable.extend_from_slice(extra);
    keel_tests::image_recipe(
        dir,
        version,
        &enable,
        cmdline,
        "repository = \"http://10.0.2.100/\"\nreboot = \"auto\"",
    )
}

/// `keel build --sign-key`; the output folder.
fn build(dir: &Path, version: &str, extra: &[&str], key: &Path) -> PathBuf {
    build_with(dir, version, extra, "", key)
}

fn build_with(dir: &Path, version: &str, extra: &[&str], cmdline: &str, key: &Path) -> PathBuf {
    let out = dir.join(format!("out-{version}"));
    keel_build(&recipe(dir, version, extra, cmdline), &out, Some(key))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// sha256 of each slot partition, and the boot entries.
fn snapshot(disk_path: &Path) -> (Vec<String>, Vec<String>) {
    let hashes = [
        "keel-root-a",
        "keel-verity-a",
        "keel-root-b",
        "keel-verity-b",
    ]
    .iter()
    .map(|l| hex(&Sha256::digest(disk::read_partition(disk_path, l).unwrap())))
    .collect();
    let entries = esp::list_dir(
        std::io::Cursor::new(disk::read_partition(disk_path, "esp").unwrap()),
        "EFI/Linux",
    )
    .unwrap();
    (hashes, entries)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Publish `index`, signed by `key`, as the repository's index.
fn publish(repo_dir: &Path, index: &Index, key: &ed25519_dalek::SigningKey) {
    let env = Envelope::sign(Kind::Index, serde_json::to_vec(index).unwrap(), &[key]);
    std::fs::write(repo_dir.join(INDEX_FILE), env.to_bytes()).unwrap();
}

fn read_index(repo_dir: &Path) -> Index {
    let bytes = std::fs::read(repo_dir.join(INDEX_FILE)).unwrap();
    Index::parse(&Envelope::parse(Kind::Index, &bytes).unwrap().body).unwrap()
}

/// Add `bundle_path` on the stable channel (signed by `key`).
fn add(repo_dir: &Path, bundle_path: &Path, key: &ed25519_dalek::SigningKey) -> Index {
    repo::add(&repo::AddOptions {
        bundle: bundle_path,
        repo: repo_dir,
        key,
        channel: "stable",
        valid_for_s: 86400,
        trust: &[],
        now: now(),
    })
    .unwrap()
}

/// Point the stable channel at a file that `repo add` would not accept
/// (bad payload, truncated), with its true size and hash.
fn point_at(repo_dir: &Path, file: &Path, version: &str, key: &ed25519_dalek::SigningKey) {
    let mut index = read_index(repo_dir);
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::copy(file, repo_dir.join("bundles").join(&name)).unwrap();
    let bytes = std::fs::read(file).unwrap();
    index.index_version += 1;
    index.expires = now() + 86400;
    let e = index.channels.get_mut("stable").unwrap();
    e.version = version.into();
    e.bundle = format!("bundles/{name}");
    e.size = bytes.len() as u64;
    e.sha256 = hex(&Sha256::digest(&bytes));
    publish(repo_dir, &index, key);
}

fn check_refused(g: &mut Guest, reason: &str) {
    let out = g.shell("keelctl update check 2>&1");
    assert!(out.contains(reason), "expected {reason:?}:\n{out}");
}

#[test]
fn signed_updates_apply_roll_back_and_refuse() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let (key_path, _) = bundle::keygen(&dir.join("release")).unwrap();
    let (other_path, _) = bundle::keygen(&dir.join("stranger")).unwrap();
    let key = bundle::read_secret(&key_path).unwrap();
    let stranger = bundle::read_secret(&other_path).unwrap();

    let v1 = build(dir, "0.1.0", &[], &key_path);
    let v2 = build(dir, "0.2.0", &[], &key_path);
    let v3 = build(dir, "0.3.0", &["never-ready"], &key_path);
    // No init in the initramfs by that name and no root= to fall back on:
    // the kernel panics.
    let v4 = build_with(dir, "0.4.0", &[], "rdinit=/no-such-init", &key_path);
    let disk_path = v1.join("disk.img");
    let v2_bundle = v2.join("keel-0.2.0.bundle");

    let repo_dir = dir.join("repo");
    add(&repo_dir, &v1.join("keel-0.1.0.bundle"), &key);
    let first_index = read_index(&repo_dir);
    let port = keel_tests::http::serve(&repo_dir);

    let mut g = Guest::boot_with(&disk_path, true, &[(80, port)]);
    g.expect("keel: ready version=0.1.0 slot=a", BOOT_TIMEOUT);
    g.expect("blessed as keel-0.1.0.efi", COMMAND_TIMEOUT);
    g.prompt();
    let before = snapshot(&disk_path);
    assert_eq!(before.1, ["keel-0.1.0.efi"]);

    // Up to date with v1 on the channel.
    let out = g.shell("keelctl update check 2>&1");
    assert!(out.contains("up to date: 0.1.0"), "{out}");

    // Refusals, none of which may touch a partition or an entry.
    let mut index = read_index(&repo_dir);
    index.index_version += 1;
    index.expires = now() - 60;
    publish(&repo_dir, &index, &key);
    check_refused(&mut g, "expired index");

    index.expires = now() + 3600;
    publish(&repo_dir, &index, &stranger);
    check_refused(&mut g, "unknown key");

    let (env, manifest) = bundle::read_head(&v2_bundle).unwrap();
    let start = keel_spec::bundle::payload_start(env.to_bytes().len() as u64);
    let mut bytes = std::fs::read(&v2_bundle).unwrap();
    bytes[(start + 3 * 1024 * 1024 / 2) as usize] ^= 0x40;
    let flipped = dir.join("flipped.bundle");
    std::fs::write(&flipped, &bytes).unwrap();
    point_at(&repo_dir, &flipped, "0.2.0", &key);
    check_refused(
        &mut g,
        &format!(
            "hash mismatch in payload root at byte offset {}",
            start + (1 << 20)
        ),
    );

    let bytes = std::fs::read(&v2_bundle).unwrap();
    let truncated = dir.join("truncated.bundle");
    std::fs::write(&truncated, &bytes[..bytes.len() - 5000]).unwrap();
    point_at(&repo_dir, &truncated, "0.2.0", &key);
    check_refused(&mut g, "truncated bundle: payload uki");

    let wrong_key_bundle = dir.join("wrong-key.bundle");
    let resigned = Envelope::sign(Kind::Bundle, env.body.clone(), &[&stranger]);
    let mut bytes = keel_spec::bundle::head_bytes(&resigned);
    assert_eq!(bytes.len() as u64, start, "same head size");
    bytes.extend_from_slice(&std::fs::read(&v2_bundle).unwrap()[start as usize..]);
    std::fs::write(&wrong_key_bundle, &bytes).unwrap();
    point_at(&repo_dir, &wrong_key_bundle, "0.2.0", &key);
    check_refused(&mut g, "unknown key");
    assert_eq!(snapshot(&disk_path), before, "a refusal changed the disk");
    assert_eq!(manifest.version, "0.2.0");

    // v1 -> v2 over HTTP: installed, rebooted, healthy, blessed.
    add(&repo_dir, &v2_bundle, &key);
    g.send("keelctl update check\n");
    g.expect("installed 0.2.0 into slot b", COMMAND_TIMEOUT);
    g.expect("keel: ready version=0.2.0 slot=b", BOOT_TIMEOUT);
    g.expect("blessed as keel-0.2.0.efi", COMMAND_TIMEOUT);
    g.prompt();
    let status = g.shell("keelctl update status");
    assert!(
        status.contains("version 0.2.0 (slot b)")
            && status.contains("last result: updated from 0.1.0 to 0.2.0"),
        "{status}"
    );
    let after_v2 = snapshot(&disk_path);
    assert_eq!(after_v2.0[..2], before.0[..2], "slot a (v1) must be intact");
    assert_eq!(after_v2.1, ["keel-0.1.0.efi", "keel-0.2.0.efi"]);

    // A replayed older index and a downgrade are refused.
    let latest = read_index(&repo_dir);
    publish(&repo_dir, &first_index, &key);
    check_refused(&mut g, "replayed index");
    publish(&repo_dir, &latest, &key);
    let out = g.shell(
        "wget -qO /tmp/v1.bundle http://10.0.2.100/bundles/keel-0.1.0.bundle && keelctl update apply /tmp/v1.bundle 2>&1; rm -f /tmp/v1.bundle",
    );
    assert!(
        out.contains("downgrade refused: the bundle is 0.1.0, this host runs 0.2.0"),
        "{out}"
    );
    assert_eq!(snapshot(&disk_path), after_v2, "a refusal changed the disk");

    // v3 never becomes healthy: marked bad, and the host is back on v2.
    add(&repo_dir, &v3.join("keel-0.3.0.bundle"), &key);
    g.send("keelctl update check\n");
    g.expect("installed 0.3.0 into slot a", COMMAND_TIMEOUT);
    g.expect("keel: unhealthy version=0.3.0 slot=a", BOOT_TIMEOUT);
    g.expect(
        "failed its health gate: marked keel-0.3.0+0-3.efi",
        COMMAND_TIMEOUT,
    );
    g.expect("keel: ready version=0.2.0 slot=b", BOOT_TIMEOUT);
    g.prompt();
    let status = g.shell("keelctl update status");
    assert!(
        status.contains("version 0.2.0 (slot b)") && status.contains("update to 0.3.0 failed"),
        "{status}"
    );

    // v4's kernel panics before any init runs (no initramfs init, no
    // root): no health gate ever runs, boot counting uses up its three
    // tries and the host is back on v2.
    add(&repo_dir, &v4.join("keel-0.4.0.bundle"), &key);
    g.send("keelctl update check\n");
    g.expect("installed 0.4.0 into slot a", COMMAND_TIMEOUT);
    for _ in 0..3 {
        g.expect("Kernel panic", BOOT_TIMEOUT);
    }
    g.expect("keel: ready version=0.2.0 slot=b", BOOT_TIMEOUT);
    g.prompt();
    let status = g.poll_shell("keelctl update status", 20, |s| {
        s.contains("last result: update")
    });
    assert!(status.contains("update to 0.4.0 failed"), "{status}");

    g.send("keelctl poweroff\n");
    let st = g.wait_exit(COMMAND_TIMEOUT);
    assert!(st.success(), "QEMU exited with {st}");
    let end = snapshot(&disk_path);
    assert_eq!(end.0[2..], after_v2.0[2..], "slot b (v2) must be intact");
    assert_eq!(end.1, ["keel-0.2.0.efi", "keel-0.4.0+0-3.efi"]);
}

/// A small xorshift generator: the test prints its seed, so a failing
/// sequence of cuts can be replayed with KEEL_CUT_SEED.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const PHASES: [&str; 3] = ["downloading", "verifying", "installing"];

/// (phase index, fraction done) of a `keelctl update status` state line.
fn progress_of(line: &str) -> Option<(usize, f64)> {
    let rest = line.split("state: ").nth(1)?;
    let phase = PHASES.iter().position(|p| rest.starts_with(p))?;
    let frac = rest
        .split_whitespace()
        .find_map(|w| {
            let (a, b) = w.split_once('/')?;
            Some(a.parse::<f64>().ok()? / b.parse::<f64>().ok()?)
        })
        .unwrap_or(0.0);
    Some((phase, frac))
}

/// Power cuts at random moments of an update (download, verification,
/// writing): after each the host boots the running version, healthy; a
/// last try completes the update.
#[test]
fn power_cuts_during_an_update_never_brick_the_host() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let (key_path, _) = bundle::keygen(&dir.join("release")).unwrap();
    let key = bundle::read_secret(&key_path).unwrap();
    let v1 = build(dir, "0.1.0", &[], &key_path);
    let v2 = build(dir, "0.2.0", &[], &key_path);
    let disk_path = v1.join("disk.img");
    let repo_dir = dir.join("repo");
    add(&repo_dir, &v2.join("keel-0.2.0.bundle"), &key);
    let port = keel_tests::http::serve(&repo_dir);

    let seed = std::env::var("KEEL_CUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now() ^ u64::from(std::process::id()) << 20 | 1);
    eprintln!("power cut seed: {seed} (KEEL_CUT_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let cuts = 10;
    for i in 0..cuts {
        let mut g = Guest::boot_with(&disk_path, true, &[(80, port)]);
        g.expect("keel: ready version=0.1.0 slot=a", BOOT_TIMEOUT);
        g.prompt();
        // Where to cut: a phase, and how far into it. Writing is cut in
        // its first 60% only: later cuts could fall after the new entry is
        // complete, when booting the new version is the right outcome.
        let phase = (rng.next() % 3) as usize;
        let limit = if phase == 2 { 0.6 } else { 1.0 };
        let at = (rng.next() % 1000) as f64 / 1000.0 * limit;
        eprintln!("cut {i}: {} at {:.0}%", PHASES[phase], at * 100.0);
        g.send("keelctl update check >/dev/null 2>&1 & while :; do keelctl update status | grep '^state'; sleep 0.1; done\n");
        let deadline = std::time::Instant::now() + COMMAND_TIMEOUT;
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "no progress:\n{}",
                g.transcript
            );
            let line = g.expect("\n", COMMAND_TIMEOUT);
            assert!(
                !line.contains("state: installed"),
                "cut came too late:\n{line}"
            );
            if let Some(p) = progress_of(&line) {
                if p >= (phase, at) {
                    break;
                }
            }
        }
        g.power_cut();
        // The next boot is of the running slot, healthy.
        let mut g = Guest::boot_with(&disk_path, true, &[(80, port)]);
        g.expect("keel: ready version=0.1.0 slot=a", BOOT_TIMEOUT);
        g.prompt();
        g.send("keelctl poweroff\n");
        g.wait_exit(COMMAND_TIMEOUT);
        let (_, entries) = snapshot(&disk_path);
        // A cut while the new entry is written leaves its temporary
        // (`.keel-….efi.tmp`): systemd-boot does not load it, and the next
        // install removes it.
        assert!(
            entries
                .iter()
                .filter(|e| !(e.starts_with(".keel-") && e.ends_with(".tmp")))
                .all(|e| e.starts_with("keel-0.1.0")),
            "after cut {i}: {entries:?}"
        );
    }

    let mut g = Guest::boot_with(&disk_path, true, &[(80, port)]);
    g.expect("keel: ready version=0.1.0 slot=a", BOOT_TIMEOUT);
    g.prompt();
    g.send("keelctl update check\n");
    g.expect("installed 0.2.0 into slot b", COMMAND_TIMEOUT);
    g.expect("keel: ready version=0.2.0 slot=b", BOOT_TIMEOUT);
    g.expect("blessed as keel-0.2.0.efi", COMMAND_TIMEOUT);
    g.prompt();
    g.send("keelctl poweroff\n");
    assert!(g.wait_exit(COMMAND_TIMEOUT).success());
}

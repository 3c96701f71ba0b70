//! Signed A/B updates end to end, in QEMU: a v1 host follows a repository
//! served from 127.0.0.1 (reached through QEMU's guestfwd at 10.0.2.100),
//! refuses every bad index or bundle without touching a partition, updates
//! to v2 and blesses it, rolls back by itself from a v3 that fails its
//! health gate, and refuses a downgrade and a replayed index. v2 comes
//! as a delta (only the chunks the v1 host lacks), v3 from a server that
//! ignores Range (whole), v4 from one that corrupts a chunk once (fetched
//! again). Power cuts during updates, a delta's too, are in powercut.rs.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;

use sha2::{Digest, Sha256};

use keel_formats::signed::{Envelope, Kind};
use keel_image_builder::bundle;
use keel_tests::http::Mode;
use keel_tests::updates::{
    add, build, build_with, hex, now, publish, read_index, roll_out, snapshot,
};
use keel_tests::{Guest, BOOT_TIMEOUT, COMMAND_TIMEOUT};

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

// One long scenario rather than many short tests: each step needs the
// state the steps before it left, and a boot costs seconds of the suite.
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
    let server = keel_tests::http::Server::start(&repo_dir);
    let port = server.port;

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
    let start = keel_formats::bundle::payload_start(env.to_bytes().len() as u64);
    let mut bytes = std::fs::read(&v2_bundle).unwrap();
    let flip = 3 * 1024 * 1024 / 2;
    bytes[(start + flip) as usize] ^= 0x40;
    let flipped = dir.join("flipped.bundle");
    std::fs::write(&flipped, &bytes).unwrap();
    point_at(&repo_dir, &flipped, "0.2.0", &key);
    // The delta puts the true bundle together from v1's chunks, which
    // then differs from the index; the whole download names the chunk.
    let (chunk_at, _) = manifest.payloads[0]
        .spans()
        .find(|(at, c)| (*at..at + c.size).contains(&flip))
        .unwrap();
    check_refused(
        &mut g,
        &format!(
            "hash mismatch in payload root at byte offset {}",
            start + chunk_at
        ),
    );

    let bytes = std::fs::read(&v2_bundle).unwrap();
    let truncated = dir.join("truncated.bundle");
    std::fs::write(&truncated, &bytes[..bytes.len() - 5000]).unwrap();
    point_at(&repo_dir, &truncated, "0.2.0", &key);
    check_refused(&mut g, "truncated bundle: payload uki");

    let wrong_key_bundle = dir.join("wrong-key.bundle");
    let resigned = Envelope::sign(Kind::Bundle, env.body.clone(), &[&stranger]);
    let mut bytes = keel_formats::bundle::head_bytes(&resigned);
    assert_eq!(bytes.len() as u64, start, "same head size");
    bytes.extend_from_slice(&std::fs::read(&v2_bundle).unwrap()[start as usize..]);
    std::fs::write(&wrong_key_bundle, &bytes).unwrap();
    point_at(&repo_dir, &wrong_key_bundle, "0.2.0", &key);
    check_refused(&mut g, "unknown key");
    assert_eq!(snapshot(&disk_path), before, "a refusal changed the disk");
    assert_eq!(manifest.version, "0.2.0");

    // v2 in a staged rollout whose first wave reaches nobody: no host
    // takes it; then one that reaches all, but an hour from now: it waits.
    add(&repo_dir, &v2_bundle, &key);
    roll_out(&repo_dir, "0%@0s", now(), &key);
    let out = g.shell("keelctl update check 2>&1");
    assert!(
        out.contains("no wave of 0.2.0's rollout reaches this host yet"),
        "{out}"
    );
    roll_out(&repo_dir, "100%@1h", now(), &key);
    let out = g.shell("keelctl update check 2>&1; keelctl update status");
    assert!(
        out.contains("waiting for wave 1 of 0.2.0's rollout, which opens in"),
        "{out}"
    );
    assert!(out.contains("rollout: place "), "{out}");
    assert_eq!(
        snapshot(&disk_path),
        before,
        "a closed wave changed the disk"
    );

    // v1 -> v2 over HTTP once a new index opens its wave: installed,
    // rebooted, healthy, blessed.
    // Started two hours ago: past any skew between this clock and the guest's.
    roll_out(&repo_dir, "100%@1h", now() - 7200, &key);
    let v2_size = std::fs::metadata(&v2_bundle).unwrap().len();
    let sent = server.sent();
    g.send("keelctl update check\n");
    g.expect("installed 0.2.0 into slot b", COMMAND_TIMEOUT);
    let how = g.expect("bytes from this host", COMMAND_TIMEOUT);
    let fetched = server.sent() - sent;
    eprintln!("v1 -> v2: {how}; the server sent {fetched} of {v2_size} bytes");
    assert!(how.contains("; fetched "), "{how}");
    assert!(
        fetched * 5 < v2_size,
        "the delta fetched {fetched} of {v2_size} bytes"
    );
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
    // Its server ignores Range: the whole bundle comes.
    add(&repo_dir, &v3.join("keel-0.3.0.bundle"), &key);
    server.set_mode(Mode::IgnoreRange);
    g.send("keelctl update check\n");
    g.expect("installed 0.3.0 into slot a", COMMAND_TIMEOUT);
    g.expect("downloaded the whole bundle (", COMMAND_TIMEOUT);
    g.expect("the server does not honour Range requests", COMMAND_TIMEOUT);
    server.set_mode(Mode::Honest);
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
    // Its server corrupts one chunk of the new verity tree (which no host
    // has) once: fetched again, and installed.
    let v4_bundle = v4.join("keel-0.4.0.bundle");
    add(&repo_dir, &v4_bundle, &key);
    let (env4, m4) = bundle::read_head(&v4_bundle).unwrap();
    let start4 = keel_formats::bundle::payload_start(env4.to_bytes().len() as u64);
    server.set_mode(Mode::CorruptOnce(start4 + m4.payloads[1].offset + 5000));
    g.send("keelctl update check\n");
    g.expect("installed 0.4.0 into slot a", COMMAND_TIMEOUT);
    g.expect("; fetched ", COMMAND_TIMEOUT);
    assert_eq!(server.mode(), Mode::Honest, "the corrupted chunk was sent");
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

//! keel-update's repository client against a local HTTP server: a
//! download interrupted part-way resumes with a Range request and fetches
//! only the rest; a file that does not match the index is discarded; a
//! delta fetches only the chunks the host lacks, and copes with a server
//! that corrupts a chunk or ignores Range.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

use keel_formats::repo::ChannelEntry;
use keel_tests::fixtures::noise;
use keel_tests::http::Mode;
use keel_update::delta::Local;
use keel_update::{fetch, verify};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The index's entry for `bytes` served at `path`.
fn entry_for(path: &str, bytes: &[u8]) -> ChannelEntry {
    ChannelEntry {
        version: "0.2.0".into(),
        bundle: path.into(),
        size: bytes.len() as u64,
        sha256: hex(&Sha256::digest(bytes)),
        rollout: None,
    }
}

#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let repo = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::create_dir_all(repo.path().join("bundles")).unwrap();
    std::fs::write(repo.path().join("bundles/b.bundle"), &body).unwrap();
    let (port, sent) = keel_tests::http::serve_counting(repo.path());
    let base = format!("http://127.0.0.1:{port}/");
    let entry = entry_for("bundles/b.bundle", &body);
    let dl = tempfile::tempdir().unwrap();
    // What an earlier, interrupted attempt left behind.
    let have = 1_234_567;
    std::fs::write(
        dl.path().join(format!("{}.part", entry.sha256)),
        &body[..have],
    )
    .unwrap();
    let mut last = 0;
    let path = fetch::download(&base, &entry, dl.path(), &mut |b, _| last = b).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert_eq!(last, body.len() as u64, "progress counts the whole bundle");
    assert_eq!(
        sent.load(Ordering::Relaxed),
        (body.len() - have) as u64,
        "only the missing bytes were fetched"
    );

    // A bundle whose bytes differ from the index is refused and dropped.
    let bad = ChannelEntry {
        sha256: "00".repeat(32),
        ..entry
    };
    let e = fetch::download(&base, &bad, dl.path(), &mut |_, _| {}).unwrap_err();
    assert!(
        e.to_string().contains("sha256 differs from the index"),
        "{e}"
    );
    assert!(!dl.path().join(format!("{}.part", bad.sha256)).exists());
}

/// A signed bundle of `payloads` (root, verity, UKI) at `out`.
fn bundle(dir: &Path, version: &str, payloads: [&[u8]; 3], key: &SigningKey) -> PathBuf {
    let paths: Vec<PathBuf> = ["root", "verity", "uki"]
        .iter()
        .zip(payloads)
        .map(|(n, data)| {
            let p = dir.join(format!("{version}.{n}"));
            std::fs::write(&p, data).unwrap();
            p
        })
        .collect();
    let out = dir.join(format!("keel-{version}.bundle"));
    keel_image_builder::bundle::write(
        &keel_image_builder::bundle::BundleInputs {
            variant: "keel",
            version,
            verity: &keel_formats::cmdline::VerityParams {
                data_blocks: (payloads[0].len() / 4096) as u64,
                salt: vec![1],
                root_hash: [7; 32],
            },
            root: &paths[0],
            verity_tree: &paths[1],
            uki: &paths[2],
            created: 1,
            min_version: None,
            allow_downgrade: false,
        },
        key,
        &out,
    )
    .unwrap();
    out
}

#[test]
fn a_delta_fetches_what_is_missing_and_copes_with_bad_servers() {
    let d = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[5; 32]);
    let (root, uki) = (noise(1, 800 * 4096), noise(2, 900_000));
    let v1 = [root.clone(), noise(3, 16384), uki.clone()];
    let mut root2 = root;
    root2[2_000_000..2_000_300].fill(0xee);
    let mut uki2 = uki;
    uki2.splice(400_000..400_000, *b"a new section");
    let v2 = bundle(d.path(), "0.2.0", [&root2, &noise(4, 16384), &uki2], &key);
    let v2_bytes = std::fs::read(&v2).unwrap();

    let repo = d.path().join("repo");
    std::fs::create_dir_all(repo.join("bundles")).unwrap();
    std::fs::copy(&v2, repo.join("bundles/v2.bundle")).unwrap();
    let server = keel_tests::http::Server::start(&repo);
    let base = format!("http://127.0.0.1:{}/", server.port);
    let entry = entry_for("bundles/v2.bundle", &v2_bytes);
    let locals: Vec<Local> = ["root", "verity", "uki"]
        .iter()
        .zip(&v1)
        .map(|(n, data)| {
            let path = d.path().join(format!("local.{n}"));
            std::fs::write(&path, data).unwrap();
            Local {
                name: n.to_string(),
                path,
                len: data.len() as u64,
            }
        })
        .collect();
    let check = |b: &[u8]| verify::read_head(&mut &b[..], &[key.verifying_key()]);
    let dl = d.path().join("dl");
    let obtain = |entry: &ChannelEntry| {
        let _ = std::fs::remove_dir_all(&dl);
        fetch::obtain(&base, entry, &dl, &locals, &check, &mut |_, _| {})
    };

    let got = obtain(&entry).unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), v2_bytes);
    assert!(got.words.starts_with("fetched "), "{}", got.words);
    let sent = server.sent();
    assert!(sent < v2_bytes.len() as u64 / 10, "{sent} bytes sent");

    // One corrupted answer, inside the new verity tree that no host has:
    // that chunk is fetched again, the result is the bundle.
    let m = check(&v2_bytes).unwrap();
    let verity = &m.manifest.payloads[1];
    server.set_mode(Mode::CorruptOnce(m.span(verity).unwrap().0 + 1000));
    let before = server.sent();
    let got = obtain(&entry).unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), v2_bytes);
    assert_eq!(server.mode(), Mode::Honest, "the corrupted answer was sent");
    assert!(got.words.starts_with("fetched "), "{}", got.words);
    let again = server.sent() - before;
    let max = keel_formats::chunking::MAX as u64;
    assert!(
        again > sent && again <= sent + 2 * max,
        "the bad chunk came twice, nothing else: {again} after {sent}"
    );

    // A server that ignores Range: the whole bundle, once.
    server.set_mode(Mode::IgnoreRange);
    let before = server.sent();
    let got = obtain(&entry).unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), v2_bytes);
    assert!(
        got.words.contains("does not honour Range requests"),
        "{}",
        got.words
    );
    // The head probe's answer is dropped unread; then one whole body.
    assert!(server.sent() - before >= v2_bytes.len() as u64);

    // One that answers another range than asked: not trusted with the
    // offsets; the whole bundle (a plain GET) instead.
    server.set_mode(Mode::WrongContentRange);
    let got = obtain(&entry).unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), v2_bytes);
    assert!(
        got.words
            .contains("the server sent Content-Range \"bytes 1-4096/"),
        "{}",
        got.words
    );
    server.set_mode(Mode::Honest);

    // An index whose sha256 is not the bundle's: every chunk matches the
    // signed manifest, the file does not match the index: whole download,
    // refused.
    let wrong = ChannelEntry {
        sha256: "00".repeat(32),
        ..entry.clone()
    };
    let e = obtain(&wrong).unwrap_err();
    assert!(
        e.to_string().contains("sha256 differs from the index"),
        "{e}"
    );
}

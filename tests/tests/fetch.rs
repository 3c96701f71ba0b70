//! keel-update's repository client against a local HTTP server: a
//! download interrupted part-way resumes with a Range request and fetches
//! only the rest; a file that does not match the index is discarded.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::atomic::Ordering;

use sha2::{Digest, Sha256};

use keel_formats::repo::ChannelEntry;
use keel_update::fetch;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let repo = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::create_dir_all(repo.path().join("bundles")).unwrap();
    std::fs::write(repo.path().join("bundles/b.bundle"), &body).unwrap();
    let (port, sent) = keel_tests::http::serve_counting(repo.path());
    let base = format!("http://127.0.0.1:{port}/");
    let entry = ChannelEntry {
        version: "0.2.0".into(),
        bundle: "bundles/b.bundle".into(),
        size: body.len() as u64,
        sha256: hex(&Sha256::digest(&body)),
        rollout: None,
    };
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

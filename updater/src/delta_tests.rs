// Test arithmetic on small known sizes: an overflow is a test bug.
#![allow(clippy::arithmetic_side_effects)]

use std::io::Cursor;
use std::path::Path;

use ed25519_dalek::SigningKey;

use super::*;
use crate::verify;

/// Bytes that cut like real payloads: sha256 in counter mode.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    (0..n.div_ceil(32) as u64)
        .flat_map(|i| Sha256::digest([seed.to_le_bytes(), i.to_le_bytes()].concat()))
        .take(n)
        .collect()
}

struct Release {
    root: Vec<u8>,
    verity: Vec<u8>,
    uki: Vec<u8>,
    bundle: Vec<u8>,
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[5; 32])
}

/// A signed bundle of these payloads, written by the builder's own code.
fn release(dir: &Path, version: &str, root: Vec<u8>, verity: Vec<u8>, uki: Vec<u8>) -> Release {
    let p = |name: &str, data: &[u8]| {
        let path = dir.join(format!("{version}-{name}"));
        std::fs::write(&path, data).unwrap();
        path
    };
    let (r, v, u) = (p("root", &root), p("verity", &verity), p("uki", &uki));
    let out = dir.join(format!("{version}.bundle"));
    keel_image_builder::bundle::write(
        &keel_image_builder::bundle::BundleInputs {
            variant: "keel",
            version,
            verity: &keel_formats::cmdline::VerityParams {
                data_blocks: (root.len() / 4096) as u64,
                salt: vec![1],
                root_hash: [7; 32],
            },
            root: &r,
            verity_tree: &v,
            uki: &u,
            created: 1,
            min_version: None,
            allow_downgrade: false,
        },
        &key(),
        &out,
    )
    .unwrap();
    Release {
        root,
        verity,
        uki,
        bundle: std::fs::read(out).unwrap(),
    }
}

/// v1 and a v2 that changed a little of the root and of the UKI.
fn pair(dir: &Path) -> (Release, Release) {
    let root = noise(600 * 4096, 1);
    let uki = noise(300_000, 2);
    let v1 = release(dir, "0.1.0", root.clone(), noise(8192, 3), uki.clone());
    let mut root2 = root;
    root2[1_000_000..1_000_100].copy_from_slice(&[0xee; 100]);
    let mut uki2 = uki[..200_000].to_vec();
    uki2.extend_from_slice(b"a new section");
    uki2.extend_from_slice(&uki[200_000..]);
    let v2 = release(dir, "0.2.0", root2, noise(8192, 4), uki2);
    (v1, v2)
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Honest,
    /// Answers every Range request with the whole file.
    NoRange,
    /// Answers every Range request with an error status.
    Refuse,
    /// Flips the byte at this offset in the first `n` answers holding it.
    Corrupt {
        at: u64,
        n: u32,
    },
}

struct Fake {
    bundle: Vec<u8>,
    mode: Mode,
    requests: Vec<(u64, u64)>,
}

impl Fake {
    fn new(bundle: Vec<u8>, mode: Mode) -> Fake {
        Fake {
            bundle,
            mode,
            requests: Vec::new(),
        }
    }
}

impl Remote for Fake {
    fn range(&mut self, from: u64, len: u64) -> Result<Reply, UpdateError> {
        self.requests.push((from, len));
        let (f, l) = (from as usize, len as usize);
        let mut body = self.bundle[f..f + l].to_vec();
        match &mut self.mode {
            Mode::NoRange => return Ok(Reply::Whole),
            Mode::Refuse => return Ok(Reply::Refused("416".into())),
            Mode::Corrupt { at, n } if *n > 0 && (from..from + len).contains(at) => {
                body[(*at - from) as usize] ^= 1;
                *n -= 1;
            }
            _ => {}
        }
        Ok(Reply::Part(Box::new(Cursor::new(body))))
    }
}

fn locals(dir: &Path, r: &Release) -> Vec<Local> {
    [("root", &r.root), ("verity", &r.verity), ("uki", &r.uki)]
        .into_iter()
        .map(|(name, data)| {
            let path = dir.join(format!("local-{name}"));
            // A partition is larger than what it holds.
            let mut padded = data.clone();
            padded.extend_from_slice(&noise(50_000, 9));
            std::fs::write(&path, padded).unwrap();
            Local {
                name: name.into(),
                path,
                len: data.len() as u64,
            }
        })
        .collect()
}

fn check(bytes: &[u8]) -> Result<Head, UpdateError> {
    verify::read_head(&mut &bytes[..], &[key().verifying_key()])
}

fn run(fake: &mut Fake, locals: &[Local], part: &Path) -> Result<Outcome, UpdateError> {
    let size = fake.bundle.len() as u64;
    assemble(fake, size, &check, locals, part, &mut |_, _| {})
}

#[test]
fn a_host_fetches_only_what_changed() {
    let d = tempfile::tempdir().unwrap();
    let (v1, v2) = pair(d.path());
    let mut fake = Fake::new(v2.bundle.clone(), Mode::Honest);
    let part = d.path().join("x.delta");
    let Outcome::Assembled(stats) = run(&mut fake, &locals(d.path(), &v1), &part).unwrap() else {
        panic!("fell back")
    };
    assert_eq!(
        std::fs::read(&part).unwrap(),
        v2.bundle,
        "assembled exactly"
    );
    let full = v2.bundle.len() as u64;
    // The head, the new verity tree, and a few chunks around each change.
    assert!(stats.fetched < full / 5, "{stats:?} of {full}");
    assert!(stats.reused > full / 2, "{stats:?}");
    assert!(stats.requests >= 3 && stats.requests < 10, "{stats:?}");
    let received: u64 = fake.requests.iter().map(|r| r.1).sum();
    assert_eq!(received, stats.fetched);
}

#[test]
fn a_server_without_range_or_refusing_ranges_falls_back() {
    let d = tempfile::tempdir().unwrap();
    let (v1, v2) = pair(d.path());
    let mut fake = Fake::new(v2.bundle, Mode::NoRange);
    let out = run(&mut fake, &locals(d.path(), &v1), &d.path().join("x.delta")).unwrap();
    assert_eq!(
        out,
        Outcome::Fallback("the server does not honour Range requests".into())
    );
    fake.mode = Mode::Refuse;
    let out = run(&mut fake, &locals(d.path(), &v1), &d.path().join("x.delta")).unwrap();
    assert_eq!(out, Outcome::Fallback("416".into()));
}

#[test]
fn a_corrupted_chunk_is_fetched_again_never_written() {
    let d = tempfile::tempdir().unwrap();
    let (v1, v2) = pair(d.path());
    let (head, _) = keel_image_builder::bundle::read_head(&d.path().join("0.2.0.bundle")).unwrap();
    let env_len = head.to_bytes().len() as u64;
    // In the verity payload, which no host has.
    let start = keel_formats::bundle::payload_start(env_len);
    let m = check(&v2.bundle).unwrap().manifest;
    let at = start + m.payloads[1].offset + 100;
    let part = d.path().join("x.delta");
    let mut fake = Fake::new(v2.bundle.clone(), Mode::Corrupt { at, n: 1 });
    let l = locals(d.path(), &v1);
    assert!(matches!(
        run(&mut fake, &l, &part).unwrap(),
        Outcome::Assembled(_)
    ));
    assert_eq!(std::fs::read(&part).unwrap(), v2.bundle);
    let asked_twice = fake
        .requests
        .iter()
        .filter(|r| r.0 <= at && at < r.0 + r.1)
        .count();
    assert_eq!(asked_twice, 2, "{:?}", fake.requests);

    // A server that keeps corrupting it: given up, the bad bytes unwritten.
    std::fs::remove_file(&part).unwrap();
    fake.mode = Mode::Corrupt { at, n: 5 };
    let out = run(&mut fake, &l, &part).unwrap();
    let Outcome::Fallback(why) = out else {
        panic!("{out:?}")
    };
    assert!(
        why.contains("differs from the signed manifest again"),
        "{why}"
    );
    // The run holding the bad chunk was never written: zeros there.
    let written = std::fs::read(&part).unwrap();
    assert!(written[at as usize..at as usize + 100]
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn an_interrupted_delta_resumes_with_what_it_wrote() {
    let d = tempfile::tempdir().unwrap();
    let (v1, v2) = pair(d.path());
    let part = d.path().join("x.delta");
    let mut fake = Fake::new(v2.bundle.clone(), Mode::Honest);
    run(&mut fake, &locals(d.path(), &v1), &part).unwrap();
    // As if power failed after part of it: half the file lost.
    let mut bytes = std::fs::read(&part).unwrap();
    let half = bytes.len() / 2;
    bytes[half..].fill(0);
    std::fs::write(&part, &bytes).unwrap();
    fake.requests.clear();
    // And this time the host's own copies are gone: what the earlier
    // attempt left must do.
    let Outcome::Assembled(stats) = run(&mut fake, &[], &part).unwrap() else {
        panic!("fell back")
    };
    assert_eq!(std::fs::read(&part).unwrap(), v2.bundle);
    // The head again, then only what was lost: from the chunk holding
    // the first lost byte on.
    let head_end = check(&v2.bundle).unwrap().payload_start;
    let max = keel_formats::chunking::MAX as u64;
    assert!(
        fake.requests
            .iter()
            .all(|r| r.0 + r.1 <= head_end || r.0 + max > half as u64),
        "{:?}",
        fake.requests
    );
    let after_head: u64 = fake
        .requests
        .iter()
        .filter(|r| r.0 >= head_end)
        .map(|r| r.1)
        .sum();
    assert!(
        after_head <= v2.bundle.len() as u64 - half as u64 + max,
        "{after_head}"
    );
    assert!(stats.reused >= (half as u64) / 2, "{stats:?}");
}

#[test]
fn nothing_to_reuse_or_a_wrong_size_falls_back() {
    let d = tempfile::tempdir().unwrap();
    let (_, v2) = pair(d.path());
    let mut fake = Fake::new(v2.bundle.clone(), Mode::Honest);
    let part = d.path().join("x.delta");
    let Outcome::Fallback(why) = run(&mut fake, &[], &part).unwrap() else {
        panic!("no fallback")
    };
    assert!(why.starts_with("only 0 of the"), "{why}");
    std::fs::remove_file(&part).unwrap();
    let size = v2.bundle.len() as u64 - 4096;
    let out = assemble(&mut fake, size, &check, &[], &part, &mut |_, _| {}).unwrap();
    assert!(matches!(out, Outcome::Fallback(w) if w.contains("the index one of")));
}

#[test]
fn a_head_signed_by_a_stranger_is_refused_before_any_chunk() {
    let d = tempfile::tempdir().unwrap();
    let (v1, v2) = pair(d.path());
    let mut fake = Fake::new(v2.bundle, Mode::Honest);
    let stranger = |bytes: &[u8]| {
        verify::read_head(
            &mut &bytes[..],
            &[SigningKey::from_bytes(&[6; 32]).verifying_key()],
        )
    };
    let size = fake.bundle.len() as u64;
    let e = assemble(
        &mut fake,
        size,
        &stranger,
        &locals(d.path(), &v1),
        &d.path().join("x"),
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown key"), "{e}");
    // Only the head was asked for.
    let head_end = check(&fake.bundle).unwrap().payload_start;
    assert!(
        fake.requests.iter().all(|r| r.0 + r.1 <= head_end),
        "{:?}",
        fake.requests
    );
    assert!(!d.path().join("x").exists());
}

#![allow(clippy::unwrap_used)]

use super::*;
use crate::manifest::OCI_MANIFEST;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    (dir, store)
}

fn descriptor(bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: OCI_MANIFEST.to_string(),
        digest: Digest::of(bytes),
        size: bytes.len() as u64,
        platform: None,
        annotations: None,
    }
}

#[test]
fn a_new_store_is_an_oci_layout() {
    let (_dir, store) = store();
    let marker = fs::read_to_string(store.root().join("oci-layout")).unwrap();
    assert!(marker.contains("imageLayoutVersion"));
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(store.root().join("index.json")).unwrap()).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["manifests"].as_array().unwrap().len(), 0);
    // Opening again keeps what is there.
    store.tag("a", &descriptor(b"x")).unwrap();
    let again = Store::open(store.root()).unwrap();
    assert_eq!(again.list().unwrap().len(), 1);
}

#[test]
fn a_blob_is_in_only_after_its_digest_matched() {
    let (_dir, store) = store();
    let bytes = b"layer bytes".repeat(1000);
    let digest = Digest::of(&bytes);
    let mut ingest = store.ingest(&digest, bytes.len() as u64).unwrap();
    ingest.write(&bytes[..100]).unwrap();
    assert!(!store.has(&digest));
    ingest.write(&bytes[100..]).unwrap();
    ingest.commit().unwrap();
    assert!(store.has(&digest));
    assert_eq!(fs::read(store.blob_path(&digest)).unwrap(), bytes);
    assert_eq!(store.read(&digest, 1 << 20).unwrap(), bytes);
    assert!(fs::read_dir(store.root().join("ingest"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn wrong_bytes_are_refused_and_thrown_away() {
    let (_dir, store) = store();
    let digest = Digest::of(b"the real thing");
    let mut ingest = store.ingest(&digest, 14).unwrap();
    ingest.write(b"a forged thing").unwrap();
    match ingest.commit() {
        Err(StoreError::Digest { digest: d, actual }) => {
            assert_eq!(d, digest);
            assert_eq!(actual, Digest::of(b"a forged thing"));
        }
        other => panic!("{other:?}"),
    }
    assert!(!store.has(&digest));
    // Nothing of it is resumed later.
    assert_eq!(store.ingest(&digest, 14).unwrap().offset(), 0);
}

#[test]
fn more_or_fewer_bytes_than_the_size_are_refused() {
    let (_dir, store) = store();
    let digest = Digest::of(b"1234");
    let mut ingest = store.ingest(&digest, 4).unwrap();
    assert!(matches!(
        ingest.write(b"12345"),
        Err(StoreError::Size {
            want: 4,
            got: 5,
            ..
        })
    ));
    ingest.write(b"12").unwrap();
    assert!(matches!(
        ingest.commit(),
        Err(StoreError::Size {
            want: 4,
            got: 2,
            ..
        })
    ));
    assert!(!store.has(&digest));
}

#[test]
fn a_partial_blob_resumes_where_it_stopped() {
    let (_dir, store) = store();
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::of(&bytes);
    let mut first = store.ingest(&digest, bytes.len() as u64).unwrap();
    first.write(&bytes[..40_000]).unwrap();
    drop(first); // the pull stopped (or the power went)
    let mut second = store.ingest(&digest, bytes.len() as u64).unwrap();
    assert_eq!(second.offset(), 40_000);
    second.write(&bytes[40_000..]).unwrap();
    second.commit().unwrap();
    assert_eq!(store.read(&digest, 1 << 20).unwrap(), bytes);
}

#[test]
fn a_partial_blob_with_garbage_at_its_end_fails_its_digest_not_silently() {
    let (_dir, store) = store();
    let bytes = b"0123456789".to_vec();
    let digest = Digest::of(&bytes);
    let mut first = store.ingest(&digest, 10).unwrap();
    first.write(b"01234").unwrap();
    drop(first);
    // A power cut left a torn end: bytes that are not the blob's.
    let partial = store
        .root()
        .join("ingest")
        .join(format!("{}.partial", digest.hex()));
    let mut f = OpenOptions::new().append(true).open(&partial).unwrap();
    f.write_all(b"XX").unwrap();
    drop(f);
    let mut second = store.ingest(&digest, 10).unwrap();
    assert_eq!(second.offset(), 7);
    second.write(b"789").unwrap();
    assert!(matches!(second.commit(), Err(StoreError::Digest { .. })));
    // The next try starts from nothing and gets it right.
    let mut third = store.ingest(&digest, 10).unwrap();
    assert_eq!(third.offset(), 0);
    third.write(&bytes).unwrap();
    third.commit().unwrap();
    assert!(store.has(&digest));
}

#[test]
fn a_partial_blob_longer_than_the_blob_starts_over() {
    let (_dir, store) = store();
    let digest = Digest::of(b"abc");
    let partial = store
        .root()
        .join("ingest")
        .join(format!("{}.partial", digest.hex()));
    fs::write(&partial, b"abcdef").unwrap();
    let mut ingest = store.ingest(&digest, 3).unwrap();
    assert_eq!(ingest.offset(), 0);
    ingest.write(b"abc").unwrap();
    ingest.commit().unwrap();
}

#[test]
fn restart_throws_away_what_was_in() {
    let (_dir, store) = store();
    let digest = Digest::of(b"abc");
    let mut ingest = store.ingest(&digest, 3).unwrap();
    ingest.write(b"xy").unwrap();
    ingest.restart().unwrap();
    assert_eq!(ingest.offset(), 0);
    ingest.write(b"abc").unwrap();
    ingest.commit().unwrap();
    assert_eq!(store.read(&digest, 3).unwrap(), b"abc");
}

#[test]
fn two_writers_of_one_blob_take_turns() {
    let (_dir, store) = store();
    let bytes = b"shared layer".to_vec();
    let digest = Digest::of(&bytes);
    let root = store.root().to_path_buf();
    let mut first = store.ingest(&digest, bytes.len() as u64).unwrap();
    let (d, b) = (digest.clone(), bytes.clone());
    let second = std::thread::spawn(move || {
        let store = Store::open(&root).unwrap();
        // Waits for the first, then finds the blob whole.
        let ingest = store.ingest(&d, b.len() as u64).unwrap();
        assert_eq!(ingest.offset(), 0);
        if store.has(&d) {
            ingest.discard();
            return;
        }
        panic!("the second writer ran before the first was done");
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    first.write(&bytes).unwrap();
    first.commit().unwrap();
    second.join().unwrap();
    assert_eq!(store.read(&digest, 100).unwrap(), bytes);
}

#[test]
fn put_and_read_check_the_digest() {
    let (_dir, store) = store();
    let digest = Digest::of(b"{}");
    store.put(&digest, b"{}").unwrap();
    store.put(&digest, b"{}").unwrap();
    assert_eq!(store.read(&digest, 2).unwrap(), b"{}");
    assert!(matches!(
        store.read(&digest, 1),
        Err(StoreError::TooLarge { max: 1, .. })
    ));
    // A blob that rotted on disk is not served.
    fs::write(store.blob_path(&digest), b"[]").unwrap();
    assert!(matches!(
        store.read(&digest, 2),
        Err(StoreError::Digest { .. })
    ));
    assert!(matches!(
        store.put(&Digest::of(b"x"), b"y"),
        Err(StoreError::Digest { .. })
    ));
}

#[test]
fn tags_name_manifests_and_replace_each_other() {
    let (_dir, store) = store();
    let (a, b) = (descriptor(b"a"), descriptor(b"b"));
    store.tag("docker.io/library/app:1", &a).unwrap();
    store.tag("docker.io/library/app:2", &a).unwrap();
    store.tag("docker.io/library/app:1", &b).unwrap();
    let got = store.tagged("docker.io/library/app:1").unwrap().unwrap();
    assert_eq!(got.digest, b.digest);
    assert_eq!(
        got.annotations.unwrap().get(REF_NAME).map(String::as_str),
        Some("docker.io/library/app:1")
    );
    assert_eq!(store.list().unwrap().len(), 2);
    assert!(store.untag("docker.io/library/app:2").unwrap());
    assert!(!store.untag("docker.io/library/app:2").unwrap());
    assert_eq!(store.tagged("docker.io/library/app:2").unwrap(), None);
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn a_broken_index_is_an_error_naming_it() {
    let (_dir, store) = store();
    fs::write(store.root().join("index.json"), b"{not json").unwrap();
    match store.tagged("x") {
        Err(StoreError::Index { path, .. }) => assert!(path.ends_with("index.json")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_pull_that_would_fill_the_disk_is_refused_before_it_starts() {
    let (_dir, store) = store();
    store.check_room(1 << 20).unwrap();
    let err = store.check_room(u64::MAX / 2).unwrap_err();
    assert!(
        matches!(err, StoreError::NoRoom { need, .. } if need == u64::MAX / 2),
        "{err:?}"
    );
    assert!(err.to_string().contains("keelctl image prune"), "{err}");
}

#![allow(clippy::unwrap_used)]

use super::*;
use crate::manifest::OCI_MANIFEST;
use std::io::Write;

const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    (dir, store)
}

fn put(store: &Store, bytes: &[u8]) -> serde_json::Value {
    let d = Digest::of(bytes);
    store.put(&d, bytes).unwrap();
    serde_json::json!({"digest": d.to_string(), "size": bytes.len()})
}

/// Tag `name` as an image of a config (unique to the name) and `layers`.
fn image(store: &Store, name: &str, layers: &[&[u8]]) -> Digest {
    let mut config = put(store, format!("{{\"config-of\":\"{name}\"}}").as_bytes());
    config["mediaType"] = CONFIG.into();
    let layers: Vec<_> = layers
        .iter()
        .map(|l| {
            let mut d = put(store, l);
            d["mediaType"] = LAYER.into();
            d
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers,
    }))
    .unwrap();
    let digest = Digest::of(&manifest);
    store.put(&digest, &manifest).unwrap();
    let d = Descriptor {
        media_type: OCI_MANIFEST.into(),
        digest: digest.clone(),
        size: manifest.len() as u64,
        platform: None,
        annotations: None,
    };
    store.tag(name, &d).unwrap();
    digest
}

fn names(store: &Store) -> Vec<String> {
    store
        .images()
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect()
}

fn blobs(store: &Store) -> usize {
    fs::read_dir(store.root().join("blobs/sha256"))
        .unwrap()
        .count()
}

#[test]
fn images_are_listed_oldest_first_with_their_sizes() {
    let (_d, store) = store();
    let shared = vec![1u8; 1000];
    let a = image(&store, "r.example/a:1", &[&shared, &[2u8; 10]]);
    image(&store, "r.example/b:1", &[&shared]);
    let images = store.images().unwrap();
    assert_eq!(names(&store), ["r.example/a:1", "r.example/b:1"]);
    assert_eq!(images[0].manifest, a);
    assert!(images[0].whole && images[0].config.is_some());
    assert!(images[0].size > 1010, "{}", images[0].size);
    // Pulled again: it is the newest.
    image(&store, "r.example/a:1", &[&shared, &[2u8; 10]]);
    assert_eq!(names(&store), ["r.example/b:1", "r.example/a:1"]);
    // A layer gone: the image is listed, not whole.
    fs::remove_file(store.blob_path(&Digest::of(&shared))).unwrap();
    assert!(store.images().unwrap().iter().all(|i| !i.whole));
}

#[test]
fn remove_takes_the_blobs_nothing_else_needs() {
    let (_d, store) = store();
    let shared = vec![1u8; 1000];
    image(&store, "a", &[&shared, &[2u8; 500]]);
    image(&store, "b", &[&shared]);
    let before = blobs(&store);
    let removed = store.remove("a").unwrap().unwrap();
    assert_eq!(removed.names, ["a"]);
    // a's manifest, config and own layer; the shared layer stays for b.
    assert_eq!(blobs(&store), before - 3);
    assert!(store.has(&Digest::of(&shared)));
    assert!(removed.freed >= 500);
    assert_eq!(removed.size, store.usage().unwrap());
    assert_eq!(store.remove("a").unwrap(), None);
    store.remove("b").unwrap().unwrap();
    assert_eq!(blobs(&store), 0);
}

#[test]
fn prune_keeps_what_is_used_and_drops_the_rest() {
    let (_d, store) = store();
    image(&store, "a", &[&[1u8; 100]]);
    image(&store, "b", &[&[2u8; 100]]);
    image(&store, "c", &[&[3u8; 100]]);
    // A blob no name reaches (an index a pull kept) and a partial download.
    put(&store, b"orphan");
    fs::write(store.root().join("ingest/feed.partial"), [0u8; 64]).unwrap();
    let keep = ["b".to_string()];
    let removed = store.prune(Prune::Unused { keep: &keep }).unwrap();
    assert_eq!(removed.names, ["a", "c"]);
    assert_eq!(names(&store), ["b"]);
    assert!(fs::read_dir(store.root().join("ingest"))
        .unwrap()
        .next()
        .is_none());
    assert_eq!(blobs(&store), 3, "b's manifest, config and layer");
    assert_eq!(removed.size, store.usage().unwrap());
}

#[test]
fn a_budget_drops_the_least_recently_pulled_unused_images_until_it_fits() {
    let (_d, store) = store();
    for (name, byte) in [("old", 1u8), ("used", 2), ("mid", 3), ("new", 4)] {
        image(&store, name, &[&vec![byte; 10_000]]);
    }
    let keep = ["used".to_string()];
    let size = store.usage().unwrap();
    // Room for about three images: only the oldest unused one goes.
    let removed = store
        .prune(Prune::ToBudget {
            keep: &keep,
            budget: size - 5_000,
        })
        .unwrap();
    assert_eq!(removed.names, ["old"]);
    assert_eq!(names(&store), ["used", "mid", "new"]);
    assert!(removed.size <= size - 5_000);
    // Within budget: nothing goes.
    let again = store
        .prune(Prune::ToBudget {
            keep: &keep,
            budget: size,
        })
        .unwrap();
    assert!(again.names.is_empty());
    // A budget of nothing: every unused image goes, the used one stays
    // even though it does not fit.
    let all = store
        .prune(Prune::ToBudget {
            keep: &keep,
            budget: 0,
        })
        .unwrap();
    assert_eq!(all.names, ["mid", "new"]);
    assert_eq!(names(&store), ["used"]);
}

#[test]
fn a_budget_leaves_fresh_and_locked_partial_downloads() {
    let (_d, store) = store();
    let fresh = store.root().join("ingest/aa.partial");
    fs::write(&fresh, [0u8; 64]).unwrap();
    store
        .prune(Prune::ToBudget {
            keep: &[],
            budget: 0,
        })
        .unwrap();
    assert!(fresh.exists(), "fresh: a pull may resume it");
    // One a pull holds survives a prune of everything.
    let held = fs::File::options().write(true).open(&fresh).unwrap();
    held.lock().unwrap();
    store.prune(Prune::Unused { keep: &[] }).unwrap();
    assert!(fresh.exists());
    drop(held);
    let mut f = fs::File::create(store.root().join("ingest/bb.partial")).unwrap();
    f.write_all(b"x").unwrap();
    store.prune(Prune::Unused { keep: &[] }).unwrap();
    assert!(fs::read_dir(store.root().join("ingest"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn a_budget_keeps_a_failed_pulls_fresh_layers_and_a_pinned_index() {
    let (_d, store) = store();
    // A layer a pull brought in before it failed: no name reaches it yet.
    put(&store, &[9u8; 1000]);
    // An image pulled through a multi-platform index, which its name's
    // entry records (a pin by the index's digest needs it).
    image(&store, "r.example/a:1", &[&[1u8; 100]]);
    let index = Digest::of(b"an index");
    store.put(&index, b"an index").unwrap();
    let mut d = store.tagged("r.example/a:1").unwrap().unwrap();
    d.annotations
        .as_mut()
        .unwrap()
        .insert(crate::store::INDEX_OF.into(), index.to_string());
    store.tag("r.example/a:1", &d).unwrap();
    let keep = ["r.example/a:1".to_string()];
    store
        .prune(Prune::ToBudget {
            keep: &keep,
            budget: 0,
        })
        .unwrap();
    assert!(
        store.has(&Digest::of(&[9u8; 1000])),
        "a fresh unreached blob"
    );
    assert!(store.has(&index), "the index a name records");
    // A prune of the unused takes the unreached blob, not the index.
    store.prune(Prune::Unused { keep: &keep }).unwrap();
    assert!(!store.has(&Digest::of(&[9u8; 1000])));
    assert!(store.has(&index));
    // The name gone, its index goes with it.
    store.remove("r.example/a:1").unwrap().unwrap();
    assert!(!store.has(&index));
    assert_eq!(blobs(&store), 0);
}

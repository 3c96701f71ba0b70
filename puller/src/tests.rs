#![allow(clippy::unwrap_used)]

use super::*;
use keel_registry::manifest::{Descriptor, OCI_MANIFEST};

fn store() -> (tempfile::TempDir, Puller) {
    let dir = tempfile::tempdir().unwrap();
    let puller = Puller::open(dir.path()).unwrap();
    (dir, puller)
}

fn request(reference: &str, policy: &str, hosts: &str) -> String {
    format!(r#"{{"op":"pull","reference":"{reference}","policy":"{policy}","hosts":{hosts}}}"#)
}

const ONE_HOST: &str = r#"[{"host":"127.0.0.1:1","insecure":true}]"#;

fn failed(line: &str, puller: &Puller) -> String {
    let mut events = Vec::new();
    match puller.answer(line, &mut |e| events.push(e.clone())) {
        PullEvent::Failed { message } => message,
        other => panic!("{other:?}"),
    }
}

/// An image in the store as a pull leaves it, named `name`.
fn put_image(store: &Store, name: &str) -> Digest {
    let config = br#"{"architecture":"amd64","os":"linux","config":{}}"#;
    let layer = b"not really a tar";
    let (c, l) = (Digest::of(config), Digest::of(layer));
    store.put(&c, config).unwrap();
    store.put(&l, layer).unwrap();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{c}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{l}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    let m = Digest::of(manifest.as_bytes());
    store.put(&m, manifest.as_bytes()).unwrap();
    store
        .tag(
            name,
            &Descriptor {
                media_type: OCI_MANIFEST.into(),
                digest: m.clone(),
                size: manifest.len() as u64,
                platform: None,
                annotations: None,
            },
        )
        .unwrap();
    m
}

#[test]
fn bad_requests_say_what_is_wrong() {
    let (_d, store) = store();
    assert!(failed("not json", &store).starts_with("the request: "));
    assert!(failed(
        r#"{"op":"pull","reference":"a","policy":"missing","hosts":[],"x":1}"#,
        &store
    )
    .contains("unknown field"));
    assert!(failed(&request("Bad/Ref", "missing", ONE_HOST), &store).contains("Bad/Ref"));
    assert!(failed(&request("r.example/a:1", "missing", "[]"), &store).contains("0 hosts"));
    let many = format!("[{}]", vec![r#"{"host":"h.example"}"#; 17].join(","));
    assert!(failed(&request("r.example/a:1", "missing", &many), &store).contains("17 hosts"));
    assert!(failed(
        &request("r.example/a:1", "missing", r#"[{"host":"bad host/x"}]"#),
        &store
    )
    .contains("\"bad host/x\" is not a registry host"));
    let bad_ca = r#"[{"host":"r.example","ca":["-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n"]}]"#;
    let m = failed(&request("r.example/a:1", "always", bad_ca), &store);
    assert!(m.contains("CA certificate"), "{m}");
}

#[test]
fn never_takes_the_store_or_fails_without_the_network() {
    let (_d, store) = store();
    let message = failed(&request("r.example/a:1", "never", ONE_HOST), &store);
    assert!(message.contains("pull = \"never\""), "{message}");
    let m = put_image(store.store(), "r.example/a:1");
    let got = store.answer(&request("r.example/a:1", "never", ONE_HOST), &mut |_| {});
    assert_eq!(
        got,
        PullEvent::Pulled {
            manifest: m.to_string(),
            fetched: 0,
            host: String::new()
        }
    );
}

#[test]
fn missing_takes_a_whole_image_from_the_store_and_pulls_a_broken_one() {
    let (_d, store) = store();
    let m = put_image(store.store(), "r.example/a:1");
    // 127.0.0.1:1 refuses: any answer but the store's would be a failure.
    let got = store.answer(&request("r.example/a:1", "missing", ONE_HOST), &mut |_| {});
    assert!(
        matches!(&got, PullEvent::Pulled { manifest, host, .. } if *manifest == m.to_string() && host.is_empty()),
        "{got:?}"
    );
    // Its config gone (pruned, or a disk that lost it): pulled again.
    let reference: Reference = "r.example/a:1".parse().unwrap();
    let config = Digest::of(br#"{"architecture":"amd64","os":"linux","config":{}}"#);
    std::fs::remove_file(store.store().blob_path(&config)).unwrap();
    assert_eq!(present(store.store(), &reference), None);
    let message = failed(&request("r.example/a:1", "missing", ONE_HOST), &store);
    assert!(message.contains("127.0.0.1:1"), "{message}");
}

#[test]
fn always_goes_to_the_registry_even_with_the_image_in_the_store() {
    let (_d, store) = store();
    put_image(store.store(), "r.example/a:1");
    let message = failed(&request("r.example/a:1", "always", ONE_HOST), &store);
    assert!(message.contains("127.0.0.1:1"), "{message}");
}

#[test]
fn list_remove_and_prune_answer_with_what_the_store_holds() {
    let (_d, puller) = store();
    let a = put_image(puller.store(), "r.example/a:1");
    put_image(puller.store(), "r.example/b:1");
    let PullEvent::Images { images } = puller.answer(r#"{"op":"list"}"#, &mut |_| {}) else {
        panic!()
    };
    assert_eq!(images.len(), 2);
    assert_eq!(images[0].reference, "r.example/a:1");
    assert_eq!(images[0].manifest, a.to_string());
    assert!(images[0].whole && images[0].size > 0);
    // Both names share their blobs: removing one frees nothing.
    let got = puller.answer(
        r#"{"op":"remove","reference":"r.example/a:1"}"#,
        &mut |_| {},
    );
    assert!(
        matches!(&got, PullEvent::Removed { references, freed: 0, .. } if references == &["r.example/a:1"]),
        "{got:?}"
    );
    let message = failed(r#"{"op":"remove","reference":"r.example/a:1"}"#, &puller);
    assert_eq!(message, "r.example/a:1: no such image in the store");
    assert!(failed(r#"{"op":"remove","reference":"Bad/Ref"}"#, &puller).contains("Bad/Ref"));
    // Kept by the name as a person writes it, normalized.
    put_image(puller.store(), "docker.io/library/nginx:latest");
    let got = puller.answer(r#"{"op":"prune","keep":["nginx"]}"#, &mut |_| {});
    assert!(
        matches!(&got, PullEvent::Removed { references, .. } if references == &["r.example/b:1"]),
        "{got:?}"
    );
    let many = format!(
        r#"{{"op":"prune","keep":[{}]}}"#,
        vec!["\"a\""; 4097].join(",")
    );
    assert!(failed(&many, &puller).contains("4097 images"));
    assert!(failed(r#"{"op":"prune","keep":["Bad/Ref"]}"#, &puller).contains("an image to keep"));
    assert!(failed(r#"{"op":"list","x":1}"#, &puller).contains("unknown field"));
}

#[test]
fn a_fifth_pull_is_told_it_waits() {
    let (_d, puller) = store();
    let held: Vec<_> = (0..MAX_PULLS)
        .map(|_| puller.take_turn(&mut |_| {}))
        .collect();
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        let puller = &puller;
        let waiter = s.spawn(move || {
            let _turn = puller.take_turn(&mut |e| tx.send(e.clone()).unwrap());
        });
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)).unwrap(),
            PullEvent::Queued { ahead: 0 }
        );
        drop(held);
        waiter.join().unwrap();
    });
    assert_eq!(*puller.turns.lock().unwrap(), (0, 0));
}

//! The registry harness itself, against the real thing: Debian's
//! docker-registry (Distribution 2.8) and skopeo. If these fail, every
//! registry-client test built on them would mean nothing.

use std::time::Duration;

use keel_tests::registry::{self, Options, Push, Registry, OCI_INDEX, OCI_MANIFEST};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("a manifest is JSON")
}

/// The digests of a manifest's config and layers.
fn blobs_of(manifest: &Value) -> Vec<String> {
    let mut out = vec![manifest["config"]["digest"]
        .as_str()
        .expect("a config digest")
        .to_string()];
    for l in manifest["layers"].as_array().expect("layers") {
        out.push(l["digest"].as_str().expect("a layer digest").to_string());
    }
    out
}

fn two_layers() -> Vec<Vec<(&'static str, Vec<u8>)>> {
    vec![
        vec![("/etc/hello", b"hello\n".to_vec())],
        vec![("/bin/tool", b"#!/bin/sh\necho tool\n".to_vec())],
    ]
}

#[test]
fn http_push_then_inspect_gives_the_manifest_and_survives_a_restart() {
    let layout = tempfile::tempdir().expect("tempdir");
    let digest = registry::image_layout(layout.path(), "v1", "amd64", &two_layers());
    // Same inputs, same digest: tests may compute digests up front.
    let again = tempfile::tempdir().expect("tempdir");
    assert_eq!(
        registry::image_layout(again.path(), "v1", "amd64", &two_layers()),
        digest
    );

    let mut reg = Registry::start(Options::http());
    assert_eq!(reg.url(), format!("http://127.0.0.1:{}", reg.port()));
    assert_eq!(reg.ca_pem(), None);
    let pushed = registry::push(&reg, layout.path(), "v1", "team/app:1.2", &Push::default());
    assert_eq!(
        pushed, digest,
        "skopeo --preserve-digests kept the manifest"
    );

    let raw = registry::inspect_raw(&reg, "team/app:1.2", None);
    assert_eq!(sha256(&raw), digest);
    let manifest = json(&raw);
    assert_eq!(manifest["mediaType"], OCI_MANIFEST);
    assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(2));
    for b in blobs_of(&manifest) {
        let path = reg.blob_path(&b);
        let bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("blob {b} at {}: {e}", path.display()));
        assert_eq!(sha256(&bytes), b);
    }
    assert!(reg.blob_path(&digest).exists(), "manifests are blobs too");

    reg.stop();
    assert!(
        registry::try_inspect_raw(&reg, "team/app:1.2", None).is_err(),
        "a stopped registry answers nothing"
    );
    let port = reg.port();
    reg.start_again();
    assert_eq!(reg.port(), port);
    assert_eq!(
        registry::inspect_raw(&reg, &format!("team/app@{digest}"), None),
        raw,
        "the storage survived; by digest as by tag"
    );
    assert!(reg.log().contains("response completed"), "{}", reg.log());
}

#[test]
fn tls_with_auth_needs_the_credentials() {
    let layout = tempfile::tempdir().expect("tempdir");
    let digest = registry::image_layout(layout.path(), "v1", "amd64", &two_layers());
    let reg = Registry::start(Options::tls().with_auth("alice", "s3cret"));
    assert!(reg.url().starts_with("https://127.0.0.1:"), "{}", reg.url());
    let ca = reg.ca_pem().expect("a TLS registry has a CA");
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");

    let anonymous =
        registry::try_push(&reg, layout.path(), "v1", "private/app:1", &Push::default());
    let err = anonymous.expect_err("an anonymous push is refused");
    assert!(
        err.to_lowercase().contains("unauthorized") || err.contains("401"),
        "{err}"
    );
    let wrong = Push {
        creds: Some(("alice".into(), "wrong".into())),
        all: false,
    };
    registry::try_push(&reg, layout.path(), "v1", "private/app:1", &wrong)
        .expect_err("a wrong password is refused");

    let alice = Push {
        creds: Some(("alice".into(), "s3cret".into())),
        all: false,
    };
    let pushed = registry::push(&reg, layout.path(), "v1", "private/app:1", &alice);
    assert_eq!(pushed, digest);
    let raw = registry::inspect_raw(&reg, "private/app:1", Some(("alice", "s3cret")));
    assert_eq!(sha256(&raw), digest);
    let err = registry::try_inspect_raw(&reg, "private/app:1", None)
        .expect_err("an anonymous inspect is refused");
    assert!(
        err.to_lowercase().contains("unauthorized") || err.contains("401"),
        "{err}"
    );

    // Without the CA, TLS verification fails: the CA is what makes it work.
    let out = std::process::Command::new("skopeo")
        .args([
            "--command-timeout=60s",
            "inspect",
            "--raw",
            "--creds=alice:s3cret",
        ])
        .arg(format!("docker://{}/private/app:1", reg.host()))
        .output()
        .expect("skopeo");
    let text = keel_tests::output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("certificate"), "{text}");
}

#[test]
fn multi_arch_index_is_pushed_whole_with_all() {
    let layout = tempfile::tempdir().expect("tempdir");
    let (index, amd64, arm64) = registry::multi_arch_layout(layout.path(), "multi");
    let reg = Registry::start(Options::http());
    let all = Push {
        creds: None,
        all: true,
    };
    let pushed = registry::push(&reg, layout.path(), "multi", "team/multi:latest", &all);
    assert_eq!(pushed, index);

    let raw = registry::inspect_raw(&reg, "team/multi:latest", None);
    assert_eq!(sha256(&raw), index);
    let idx = json(&raw);
    assert_eq!(idx["mediaType"], OCI_INDEX);
    let entries = idx["manifests"].as_array().expect("manifests");
    assert_eq!(entries.len(), 3, "{idx}");
    assert_eq!(entries[0]["digest"], amd64.as_str());
    assert_eq!(entries[0]["platform"]["architecture"], "amd64");
    assert_eq!(entries[1]["digest"], arm64.as_str());
    assert_eq!(entries[1]["platform"]["variant"], "v8");
    assert_eq!(entries[2]["platform"]["os"], "unknown");
    assert_eq!(
        entries[2]["annotations"]["vnd.docker.reference.type"],
        "attestation-manifest"
    );
    assert_eq!(
        entries[2]["annotations"]["vnd.docker.reference.digest"],
        amd64.as_str()
    );

    // Every instance, attestation included, is there by digest.
    for e in entries {
        let d = e["digest"].as_str().expect("a digest");
        let m = registry::inspect_raw(&reg, &format!("team/multi@{d}"), None);
        assert_eq!(sha256(&m), d);
        for b in blobs_of(&json(&m)) {
            assert!(reg.blob_path(&b).exists(), "blob {b} of {d}");
        }
    }
    // The arm64 image's /arch says arm64.
    let arm = json(&registry::inspect_raw(
        &reg,
        &format!("team/multi@{arm64}"),
        None,
    ));
    let layer = std::fs::read(reg.blob_path(&blobs_of(&arm)[1])).expect("the arm64 layer");
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(layer.as_slice()));
    let mut entry = tar
        .entries()
        .expect("a tar")
        .next()
        .expect("one entry")
        .expect("an entry");
    assert_eq!(entry.path().expect("a path").to_str(), Some("arch"));
    let mut text = String::new();
    std::io::Read::read_to_string(&mut entry, &mut text).expect("reading /arch");
    assert_eq!(text, "arm64\n");
}

/// Push to `upstream`, pull through a mirror (`creds` for it) once, stop
/// the upstream: the mirror still serves the image.
fn mirror_serves_after_upstream_stops(
    mut upstream: Registry,
    mirror_options: Options,
    creds: Option<(&str, &str)>,
) {
    let layout = tempfile::tempdir().expect("tempdir");
    let digest = registry::image_layout(layout.path(), "v1", "amd64", &two_layers());
    registry::push(
        &upstream,
        layout.path(),
        "v1",
        "library/app:1.0",
        &Push::default(),
    );
    let mirror = Registry::start(mirror_options.mirror_of(&upstream));
    assert!(
        registry::try_inspect_raw(&mirror, "library/other:1.0", creds).is_err(),
        "the mirror has what the upstream has, no more"
    );

    let out = tempfile::tempdir().expect("tempdir");
    let pulled = registry::pull(&mirror, "library/app:1.0", out.path(), "got", creds, false);
    assert_eq!(pulled, digest);
    let manifest = json(&registry::inspect_raw(&mirror, "library/app:1.0", creds));
    let mut cached: Vec<String> = blobs_of(&manifest);
    cached.push(digest.clone());
    let cached: Vec<&str> = cached.iter().map(String::as_str).collect();
    registry::wait_cached(&mirror, &cached, Duration::from_secs(20));

    upstream.stop();
    let raw = registry::inspect_raw(&mirror, "library/app:1.0", creds);
    assert_eq!(sha256(&raw), digest);
    let again = tempfile::tempdir().expect("tempdir");
    let pulled = registry::pull(
        &mirror,
        "library/app:1.0",
        again.path(),
        "got",
        creds,
        false,
    );
    assert_eq!(pulled, digest, "served from the mirror's cache alone");
    for d in cached {
        let hex = d.trim_start_matches("sha256:");
        let bytes = std::fs::read(again.path().join("blobs/sha256").join(hex))
            .unwrap_or_else(|e| panic!("blob {d} pulled from the mirror: {e}"));
        assert_eq!(sha256(&bytes), d);
    }
}

#[test]
fn http_mirror_serves_what_it_pulled_through_once_the_upstream_is_gone() {
    mirror_serves_after_upstream_stops(Registry::start(Options::http()), Options::http(), None);
}

#[test]
fn tls_mirror_of_a_tls_upstream_trusts_its_ca() {
    mirror_serves_after_upstream_stops(
        Registry::start(Options::tls()),
        Options::tls().with_auth("bob", "hunter2-not-really"),
        Some(("bob", "hunter2-not-really")),
    );
}

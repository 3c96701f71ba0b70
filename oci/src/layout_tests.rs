//! Indexes and manifests in a layout or a `docker save` archive are held
//! to the rules a registry's are (keel-formats' manifest model): digests
//! lowercase sha256, sizes and counts bounded, the host's platform chosen.

use keel_formats::manifest::{MAX_MANIFEST, OCI_MANIFEST};

use super::*;

fn entry(digest: &str, platform: Option<&Platform>) -> String {
    let platform = platform
        .map(|p| {
            format!(
                r#","platform":{{"os":"{}","architecture":"{}"}}"#,
                p.os, p.architecture
            )
        })
        .unwrap_or_default();
    format!(r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{digest}","size":1{platform}}}"#)
}

fn write_index(dir: &Path, entries: &[String]) {
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
        entries.join(",")
    );
    fs::write(dir.join("index.json"), index).unwrap();
}

/// A platform that is not this host's.
fn foreign() -> Platform {
    Platform {
        os: "linux".into(),
        architecture: "keel-test-arch".into(),
        variant: None,
    }
}

/// A layout whose index is `layout_of`'s manifest, and a second manifest
/// whose blobs are missing (opening it fails): (the first, the second).
fn two_manifests(dir: &Path) -> (String, String) {
    layout(dir);
    let (m, _) = manifest_of(dir);
    let missing = digest(b"not in the layout");
    let other = format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{missing}","size":1}},"layers":[]}}"#
    );
    (m, put_blob(dir, other.as_bytes()))
}

#[test]
fn the_host_s_image_is_chosen_from_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let (m, other) = two_manifests(dir.path());
    write_index(
        dir.path(),
        &[
            entry(&other, Some(&foreign())),
            entry(&m, Some(&Platform::host())),
        ],
    );
    assert_eq!(open(dir.path()).unwrap().layers.len(), 2);
}

#[test]
fn an_index_without_the_host_s_platform_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (m, other) = two_manifests(dir.path());
    write_index(
        dir.path(),
        &[entry(&other, Some(&foreign())), entry(&m, Some(&foreign()))],
    );
    let e = open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("has no image for"), "{e}");
    // One entry for another platform is not taken for the host's either.
    write_index(dir.path(), &[entry(&m, Some(&foreign()))]);
    let e = open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("keel-test-arch"), "{e}");
    // One that names no platform is the image (docker save, skopeo).
    write_index(dir.path(), &[entry(&m, None)]);
    assert_eq!(open(dir.path()).unwrap().layers.len(), 2);
}

#[test]
fn an_uppercase_digest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path());
    let (m, _) = manifest_of(dir.path());
    let hex = m.trim_start_matches("sha256:").to_ascii_uppercase();
    // Named as it is named, so that only the digest's case is wrong.
    let blobs = dir.path().join("blobs/sha256");
    fs::copy(blobs.join(hex.to_ascii_lowercase()), blobs.join(&hex)).unwrap();
    let upper = format!("sha256:{hex}");
    write_index(dir.path(), &[entry(&upper, None)]);
    let e = open(dir.path()).unwrap_err();
    assert!(matches!(e, OciError::Manifest { .. }), "{e:?}");
    assert!(e.to_string().contains("lowercase"), "{e}");
    let e = open_manifest(dir.path(), &upper).unwrap_err();
    assert!(matches!(e, OciError::BadDigest { .. }), "{e:?}");
}

#[test]
fn an_index_larger_than_a_registry_may_send_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path());
    let (m, _) = manifest_of(dir.path());
    let padding = " ".repeat(MAX_MANIFEST);
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{}]}}{padding}"#,
        entry(&m, None)
    );
    fs::write(dir.path().join("index.json"), index).unwrap();
    let e = open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("is larger than"), "{e}");
}

#[test]
fn a_manifest_that_is_not_schema_2_or_lacks_descriptor_fields_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path());
    let config = digest(CONFIG.as_bytes());
    for manifest in [
        format!(
            r#"{{"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":1}},"layers":[]}}"#
        ),
        format!(r#"{{"schemaVersion":2,"config":{{"digest":"{config}"}},"layers":[]}}"#),
    ] {
        let m = put_blob(dir.path(), manifest.as_bytes());
        let e = open_manifest(dir.path(), &m).unwrap_err();
        assert!(matches!(e, OciError::Manifest { .. }), "{manifest}: {e:?}");
    }
}

#[test]
fn a_docker_manifest_s_blob_names_and_layer_count_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let [l1, _] = layers();
    let archive = dir.path().join("bad.tar");
    let name = format!("blobs/sha256/{}", "A".repeat(64));
    let manifest = format!(r#"[{{"Config":"cfg.json","Layers":[{name:?}]}}]"#);
    docker_archive(
        &archive,
        &[
            ("manifest.json", manifest.as_bytes()),
            ("cfg.json", CONFIG.as_bytes()),
            (name.as_str(), &l1[..]),
        ],
    );
    let e = open(&archive).unwrap_err();
    assert!(matches!(e, OciError::BadDigest { .. }), "{e:?}");

    let names: Vec<String> = (0..=MAX_LAYERS).map(|i| format!("l{i}")).collect();
    let manifest = serde_json::json!([{"Config": "cfg.json", "Layers": names}]).to_string();
    docker_archive(
        &archive,
        &[
            ("manifest.json", manifest.as_bytes()),
            ("cfg.json", CONFIG.as_bytes()),
        ],
    );
    let e = open(&archive).unwrap_err().to_string();
    assert!(e.contains("more than 1000"), "{e}");
}

//! OCI image layouts for [`super::push`] to push: gzip-compressed tar
//! layers, image configs, manifests and multi-arch indexes, with fixed
//! modes and times so the same arguments give the same digests.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST, REF_NAME};

/// Store `bytes` as a blob of the layout at `dir`: its descriptor.
fn blob(dir: &Path, media_type: &str, bytes: &[u8]) -> Value {
    let hex = hex::encode(Sha256::digest(bytes));
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("making blobs/sha256");
    std::fs::write(blobs.join(&hex), bytes).expect("writing a blob");
    json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()})
}

/// A tar of `files` (mode 0644, root's, a fixed mtime).
fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path.trim_start_matches('/'), data.as_slice())
            .expect("adding a file to a layer");
    }
    b.into_inner().expect("finishing a layer")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).expect("compressing a layer");
    gz.finish().expect("compressing a layer")
}

/// Write an image for linux/`arch` (`variant`) of these layers into the
/// layout's blobs: its manifest's descriptor, with the platform.
fn image(dir: &Path, arch: &str, variant: Option<&str>, layers: &[Vec<(&str, Vec<u8>)>]) -> Value {
    let tars: Vec<Vec<u8>> = layers.iter().map(|files| tar_of(files)).collect();
    image_of_tars(dir, arch, variant, &tars, json!({"Cmd": ["/bin/sh"]}))
}

/// [`image`] of layers already made (uncompressed tars) and the config's
/// `config` (Entrypoint, Cmd, Env, ...).
fn image_of_tars(
    dir: &Path,
    arch: &str,
    variant: Option<&str>,
    tars: &[Vec<u8>],
    run: Value,
) -> Value {
    let mut diff_ids = Vec::new();
    let mut descriptors = Vec::new();
    for tar in tars {
        diff_ids.push(format!("sha256:{}", hex::encode(Sha256::digest(tar))));
        descriptors.push(blob(dir, OCI_LAYER_GZIP, &gzip(tar)));
    }
    let mut platform = json!({"architecture": arch, "os": "linux"});
    if let Some(v) = variant {
        platform["variant"] = v.into();
    }
    let mut config = platform.clone();
    config["config"] = run;
    config["rootfs"] = json!({"type": "layers", "diff_ids": diff_ids});
    let config = blob(
        dir,
        OCI_CONFIG,
        &serde_json::to_vec(&config).expect("config JSON"),
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": descriptors,
    });
    let mut d = blob(
        dir,
        OCI_MANIFEST,
        &serde_json::to_vec(&manifest).expect("manifest JSON"),
    );
    d["platform"] = platform;
    d
}

/// Name `descriptor` `tag` in the layout's index.json, replacing what had
/// that tag and keeping other tags; writes oci-layout too.
fn tag(dir: &Path, mut descriptor: Value, tag: &str) {
    descriptor["annotations"] = json!({ REF_NAME: tag });
    let index_path = dir.join("index.json");
    let mut index = std::fs::read(&index_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .unwrap_or_else(|| json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}));
    let manifests = index["manifests"]
        .as_array_mut()
        .expect("index.json has a manifests array");
    manifests.retain(|m| m["annotations"][REF_NAME] != tag);
    manifests.push(descriptor);
    std::fs::write(
        &index_path,
        serde_json::to_vec_pretty(&index).expect("index JSON"),
    )
    .expect("writing index.json");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("writing oci-layout");
}

fn digest_of(descriptor: &Value) -> String {
    descriptor["digest"]
        .as_str()
        .expect("a descriptor has a digest")
        .to_string()
}

/// Write an OCI image layout at `dir` (adding to one already there) with
/// an image for linux/`arch` tagged `tag`: one gzip-compressed tar layer
/// per entry of `layers`, each of (path, contents) files. The same
/// arguments give the same digests. Returns the manifest's digest.
pub fn image_layout(
    dir: &Path,
    tag_name: &str,
    arch: &str,
    layers: &[Vec<(&str, Vec<u8>)>],
) -> String {
    tag_image(dir, image(dir, arch, None, layers), tag_name)
}

/// Name the image of descriptor `d` `tag_name` in the layout's index;
/// its manifest's digest.
fn tag_image(dir: &Path, mut d: Value, tag_name: &str) -> String {
    // A layout's top-level entry for an image needs no platform.
    if let Some(m) = d.as_object_mut() {
        m.remove("platform");
    }
    let digest = digest_of(&d);
    tag(dir, d, tag_name);
    digest
}

/// [`image_layout`] of an image that runs: layers made by the caller
/// (uncompressed tars, with their modes and links, e.g. by
/// `fixtures::layer`) and the config's `config` object (Entrypoint, Cmd,
/// Env). Returns the manifest's digest.
pub fn runnable_layout(dir: &Path, tag_name: &str, tars: &[Vec<u8>], run: Value) -> String {
    tag_image(dir, image_of_tars(dir, "amd64", None, tars, run), tag_name)
}

/// A layout whose `tag` is a multi-arch OCI index as buildx writes them:
/// linux/amd64, linux/arm64/v8 (each with a file /arch saying which) and
/// an attestation manifest for the amd64 image (platform unknown/unknown).
/// Returns (index digest, amd64 manifest digest, arm64 manifest digest).
pub fn multi_arch_layout(dir: &Path, tag_name: &str) -> (String, String, String) {
    let amd64 = image(dir, "amd64", None, &[vec![("/arch", b"amd64\n".to_vec())]]);
    let arm64 = image(
        dir,
        "arm64",
        Some("v8"),
        &[vec![("/arch", b"arm64\n".to_vec())]],
    );
    let statement = json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://spdx.dev/Document",
        "subject": [{"name": "keel-test", "digest": {"sha256": digest_of(&amd64).trim_start_matches("sha256:")}}],
        "predicate": {},
    });
    let mut layer = blob(
        dir,
        "application/vnd.in-toto+json",
        &serde_json::to_vec(&statement).expect("statement JSON"),
    );
    layer["annotations"] = json!({"in-toto.io/predicate-type": "https://spdx.dev/Document"});
    let config = json!({
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"].clone()]},
    });
    let config = blob(
        dir,
        OCI_CONFIG,
        &serde_json::to_vec(&config).expect("config JSON"),
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": [layer],
    });
    let mut attestation = blob(
        dir,
        OCI_MANIFEST,
        &serde_json::to_vec(&manifest).expect("manifest JSON"),
    );
    attestation["platform"] = json!({"architecture": "unknown", "os": "unknown"});
    attestation["annotations"] = json!({
        "vnd.docker.reference.digest": digest_of(&amd64),
        "vnd.docker.reference.type": "attestation-manifest",
    });
    let (amd64_digest, arm64_digest) = (digest_of(&amd64), digest_of(&arm64));
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [amd64, arm64, attestation],
    });
    let index = blob(
        dir,
        OCI_INDEX,
        &serde_json::to_vec(&index).expect("index JSON"),
    );
    let index_digest = digest_of(&index);
    tag(dir, index, tag_name);
    (index_digest, amd64_digest, arm64_digest)
}

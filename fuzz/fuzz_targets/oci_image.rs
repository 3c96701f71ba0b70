//! The JSON of an OCI image (index.json, and through it the manifests and
//! config it names) and a `docker save` archive, as keel build and
//! keel-init open them from a person's files: no input panics, and a
//! docker archive is extracted inside its scratch folder only. The first
//! byte chooses: even, the rest is an OCI layout's index.json (beside a
//! manifest and a config blob it may name); odd, the rest is a docker
//! save archive.
#![no_main]

use sha2::{Digest, Sha256};

fn put_blob(dir: &std::path::Path, bytes: &[u8]) -> String {
    let hex = hex::encode(Sha256::digest(bytes));
    std::fs::write(dir.join("blobs/sha256").join(&hex), bytes).unwrap();
    format!("sha256:{hex}")
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    if choice % 2 == 0 {
        let layout = dir.path().join("layout");
        std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        std::fs::write(
            layout.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        // Blobs an index may name: a config, an empty layer, a manifest.
        let config = put_blob(
            &layout,
            br#"{"architecture":"amd64","os":"linux","config":{}}"#,
        );
        let layer = put_blob(&layout, &[0u8; 1024]);
        put_blob(
            &layout,
            format!(r#"{{"schemaVersion":2,"config":{{"digest":"{config}","size":1}},"layers":[{{"digest":"{layer}","size":1}}]}}"#).as_bytes(),
        );
        std::fs::write(layout.join("index.json"), rest).unwrap();
        let _ = keel_oci::open_in(&layout, &scratch);
    } else {
        let archive = dir.path().join("image.tar");
        std::fs::write(&archive, rest).unwrap();
        let _ = keel_oci::open_in(&archive, &scratch);
        // Nothing was extracted beside the scratch folder.
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["image.tar", "scratch"]);
    }
});

//! `keel inspect` on the default disk image and on a signed bundle: what it
//! reports is read from the partitions, the ESP, the UKIs and the signed
//! manifest, so it is checked against what the build made.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::process::Command;

use keel_image_builder::bundle;
use keel_tests::{disk_image, image_recipe, keel_bin, keel_build, output_text};

fn inspect(args: &[&Path]) -> (bool, String) {
    let out = Command::new(keel_bin())
        .arg("inspect")
        .args(args)
        .output()
        .unwrap();
    (out.status.success(), output_text(&out))
}

fn json(args: &[&Path]) -> serde_json::Value {
    let mut a: Vec<&Path> = args.to_vec();
    a.push(Path::new("--json"));
    let (ok, text) = inspect(&a);
    assert!(ok, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"))
}

#[test]
fn inspect_shows_slots_entries_and_bundle_signatures() {
    let disk = disk_image();
    let d = json(&[&disk]);
    assert_eq!(d["kind"], "disk");
    let labels: Vec<&str> = d["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "esp",
            "keel-root-a",
            "keel-verity-a",
            "keel-root-b",
            "keel-verity-b",
            "keel-data"
        ]
    );
    assert_eq!(d["slots"][0]["slot"], "a");
    assert_eq!(d["slots"][0]["version"], "0.1.0");
    assert_eq!(d["slots"][0]["entry"], "keel-0.1.0+3.efi");
    assert!(d["slots"][1]["entry"].is_null(), "slot b is empty: {d}");
    let e = &d["entries"][0];
    assert_eq!(e["state"], "on trial");
    assert_eq!(e["tries_left"], 3);
    assert_eq!(e["slot"], "a");
    assert!(
        e["uki"]["kernel"].as_str().unwrap().starts_with("6.1."),
        "{e}"
    );
    assert_eq!(
        e["uki"]["containers"],
        serde_json::json!([
            "admin", "web", "update", "dhcp", "ntp", "ssh", "remote", "vmm", "pull"
        ])
    );
    assert!(e["uki"]["cmdline"]
        .as_str()
        .unwrap()
        .contains("keel.roothash="));
    assert_eq!(e["uki"]["root_hash"], d["slots"][0]["root_hash"]);
    let (ok, text) = inspect(&[&disk]);
    assert!(
        ok && text.contains("slots:") && text.contains("a  keel 0.1.0"),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let (key, public) = bundle::keygen(&dir.path().join("release")).unwrap();
    let (_, stranger) = bundle::keygen(&dir.path().join("stranger")).unwrap();
    let out = dir.path().join("out");
    keel_build(
        &image_recipe(dir.path(), "0.3.0", &["admin"], "", ""),
        &out,
        Some(&key),
    );
    let b = out.join("keel-0.3.0.bundle");
    let r = json(&[&b, Path::new("--trust"), &public]);
    assert_eq!(r["kind"], "bundle");
    assert_eq!(r["manifest"]["version"], "0.3.0");
    let payloads: Vec<&str> = r["manifest"]["payloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(payloads, ["root", "verity", "uki"]);
    assert!(
        r["verdict"]
            .as_str()
            .unwrap()
            .starts_with("signed by trusted key"),
        "{r}"
    );
    assert_eq!(r["uki"]["containers"], serde_json::json!(["admin"]));
    let r = json(&[&b, Path::new("--trust"), &stranger]);
    assert!(
        r["verdict"].as_str().unwrap().starts_with("NOT trusted"),
        "{r}"
    );

    let junk = dir.path().join("junk");
    std::fs::write(&junk, vec![1u8; 4096]).unwrap();
    let (ok, text) = inspect(&[&junk]);
    assert!(!ok && text.contains("junk"), "{text}");
}

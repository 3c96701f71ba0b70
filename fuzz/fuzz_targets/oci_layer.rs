//! A layer tar from an image (keel build and keel-init unpack them):
//! whatever it holds (links out, `..`, whiteouts through symlinks, hard
//! links), unpacking it changes nothing outside its destination, and no
//! input panics. The input is split at the first 0xff 0xfe 0xfd into two
//! layers, so that one layer's entries act on the one below.
#![no_main]

use std::path::{Path, PathBuf};

/// Names, contents, modes, owners and times of everything under `dir`.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u32, u32, u32, i64, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(dir).unwrap();
    let mut out = vec![(
        dir.to_path_buf(),
        m.mode(),
        m.uid(),
        m.gid(),
        m.mtime(),
        Vec::new(),
    )];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            out.extend(snapshot(&p));
        } else {
            let data = std::fs::read(&p).unwrap_or_default();
            out.push((p, m.mode(), m.uid(), m.gid(), m.mtime(), data));
        }
    }
    out.sort();
    out
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(outside.join("victim")).unwrap();
    std::fs::write(outside.join("victim/keep"), b"precious").unwrap();
    std::fs::write(outside.join("secret"), b"secret").unwrap();
    let before = snapshot(&outside);
    let split = data
        .windows(3)
        .position(|w| w == [0xff, 0xfe, 0xfd])
        .unwrap_or(data.len());
    let (a, b) = data.split_at(split);
    let b = b.get(3..).unwrap_or(&[]);
    let mut layers = Vec::new();
    for (i, bytes) in [a, b].into_iter().enumerate() {
        let p = dir.path().join(format!("layer{i}.tar"));
        std::fs::write(&p, bytes).unwrap();
        layers.push((format!("layer{i}"), p));
    }
    let image = keel_oci::Image::from_layers(dir.path().join("fuzz"), layers);
    let _ = keel_oci::unpack(&image, &dir.path().join("root"));
    assert_eq!(
        snapshot(&outside),
        before,
        "the unpack changed a file outside"
    );
});

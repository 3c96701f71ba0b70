use super::*;
use std::io::Write;

pub(crate) enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

pub(crate) fn layer(entries: &[E<'_>], gzip: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(1000);
        h.set_gid(1000);
        match e {
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::File(p, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Hardlink(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
        }
    }
    let bytes = b.into_inner().unwrap();
    if !gzip {
        return bytes;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&bytes).unwrap();
    gz.finish().unwrap()
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn put_blob(dir: &Path, bytes: &[u8]) -> String {
    let d = digest(bytes);
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(blobs.join(&d[7..]), bytes).unwrap();
    d
}

const CONFIG: &str = r#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/hello"],"Cmd":["--greet","world"],"Env":["PATH=/bin","GREETING=hi"],"WorkingDir":"/data","User":"1000:1000"}}"#;

/// Two layers: a base, then (gzipped) whiteouts of /old and of /data's
/// lower contents, with /data/c added in the same layer.
fn layers() -> [Vec<u8>; 2] {
    [
        layer(
            &[
                E::Dir("bin"),
                E::File("bin/hello", b"#!/bin/sh\necho hello\n", 0o755),
                E::Dir("etc"),
                E::File("etc/passwd", b"app:x:1000:1000::/:/bin/sh\n", 0o644),
                E::Dir("data"),
                E::File("data/a", b"a", 0o644),
                E::File("data/b", b"b", 0o600),
                E::Dir("old"),
                E::File("old/x", b"x", 0o644),
                E::File("replaced", b"file first", 0o644),
            ],
            false,
        ),
        layer(
            &[
                E::File(".wh.old", b"", 0o644),
                E::Dir("data"),
                E::File("data/.wh..wh..opq", b"", 0o644),
                E::File("data/c", b"c", 0o644),
                E::Symlink("bin/hi", "hello"),
                E::Hardlink("bin/hello2", "bin/hello"),
                E::Dir("replaced"),
                E::File("replaced/inner", b"dir now", 0o644),
            ],
            true,
        ),
    ]
}

fn layout(dir: &Path) {
    layout_of(dir, layers());
}

fn layout_of(dir: &Path, [l1, l2]: [Vec<u8>; 2]) {
    let (d1, d2) = (put_blob(dir, &l1), put_blob(dir, &l2));
    let config = put_blob(dir, CONFIG.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":1}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d1}","size":1}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d2}","size":1}}]}}"#
    );
    let m = put_blob(dir, manifest.as_bytes());
    fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{m}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
        ),
    )
    .unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

fn check_tree(root: &Path) {
    assert_eq!(
        fs::read(root.join("bin/hello")).unwrap(),
        b"#!/bin/sh\necho hello\n"
    );
    assert_eq!(
        fs::read_link(root.join("bin/hi")).unwrap(),
        Path::new("hello")
    );
    assert_eq!(
        fs::read(root.join("bin/hello2")).unwrap(),
        b"#!/bin/sh\necho hello\n"
    );
    assert!(!root.join("old").exists(), "whiteout of /old");
    let mut data: Vec<_> = fs::read_dir(root.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    data.sort();
    assert_eq!(data, ["c"], "opaque /data keeps only its own layer's files");
    assert_eq!(fs::read(root.join("replaced/inner")).unwrap(), b"dir now");
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(root.join("bin/hello"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
}

#[test]
fn an_oci_layout_unpacks_with_whiteouts_and_gives_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let oci = dir.path().join("image");
    layout(&oci);
    let image = open(&oci).unwrap();
    assert_eq!(image.layers.len(), 2);
    assert_eq!(format!("sha256:{}", image.id), digest(CONFIG.as_bytes()));
    assert_eq!(
        image.config.entrypoint.as_deref(),
        Some(&["/bin/hello".to_string()][..])
    );
    let root = dir.path().join("root");
    unpack(&image, &root).unwrap();
    check_tree(&root);
}

#[test]
fn a_blob_that_does_not_match_its_digest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path());
    let [l1, _] = layers();
    let path = dir.path().join("blobs/sha256").join(&digest(&l1)[7..]);
    let mut bytes = fs::read(&path).unwrap();
    bytes[600] ^= 1;
    fs::write(&path, bytes).unwrap();
    let e = open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("does not match its digest"), "{e}");
}

/// A `docker save` archive at `path` of these members.
fn docker_archive(path: &Path, members: &[(&str, &[u8])]) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, *data).unwrap();
    }
    fs::write(path, b.into_inner().unwrap()).unwrap();
}

#[test]
fn a_docker_save_archive_unpacks_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let [l1, l2] = layers();
    let manifest =
        r#"[{"Config":"cfg.json","RepoTags":["app:1"],"Layers":["l1/layer.tar","l2/layer.tar"]}]"#;
    let archive = dir.path().join("app.tar");
    docker_archive(
        &archive,
        &[
            ("manifest.json", manifest.as_bytes()),
            ("cfg.json", CONFIG.as_bytes()),
            ("l1/layer.tar", &l1[..]),
            ("l2/layer.tar", &l2[..]),
        ],
    );
    let image = open(&archive).unwrap();
    assert_eq!(image.config.user.as_deref(), Some("1000:1000"));
    assert_eq!(format!("sha256:{}", image.id), digest(CONFIG.as_bytes()));
    let root = dir.path().join("root");
    unpack(&image, &root).unwrap();
    check_tree(&root);
}

#[test]
fn a_layer_may_not_escape_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let bad = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(1);
        // append_data refuses "..", so the name is written by hand.
        h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        b.into_inner().unwrap()
    };
    let image = Image::from_layers(
        dir.path().join("bad"),
        vec![("bad".into(), {
            let p = dir.path().join("bad.tar");
            fs::write(&p, bad).unwrap();
            p
        })],
    );
    let e = unpack(&image, &dir.path().join("root"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("leaves the root"), "{e}");
    assert!(!dir.path().join("escape").exists());
}

#[test]
fn a_named_user_is_found_in_the_image_s_own_files() {
    let passwd = "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/:/bin/sh\n";
    let group = "root:x:0:\nstaff:x:50:\n";
    let mut read = |rel: &str| match rel {
        "etc/passwd" => Some(passwd.to_string()),
        "etc/group" => Some(group.to_string()),
        _ => None,
    };
    assert_eq!(lookup_user("app", &mut read), Ok((1000, 1001)));
    assert_eq!(lookup_user("app:staff", &mut read), Ok((1000, 50)));
    assert_eq!(lookup_user("7:staff", &mut read), Ok((7, 50)));
    assert_eq!(lookup_user("7", &mut read), Ok((7, 7)));
    assert_eq!(lookup_user("app:9", &mut read), Ok((1000, 9)));
    assert!(matches!(
        lookup_user("app:wheel", &mut read),
        Err(RunError::NoGroup { name, .. }) if name == "wheel"
    ));
    assert!(matches!(
        lookup_user("nobody", &mut read),
        Err(RunError::NoUser { name, .. }) if name == "nobody"
    ));
}

#[test]
fn zstd_layers_unpack_like_gzip_ones() {
    use std::io::Read;
    let [l1, l2] = layers();
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&l2[..])
        .read_to_end(&mut tar)
        .unwrap();
    // Two frames, as a streaming compressor may write them.
    let (a, b) = tar.split_at(tar.len() / 2);
    let mut zst = ruzstd::encoding::compress_to_vec(a, ruzstd::encoding::CompressionLevel::Fastest);
    zst.extend(ruzstd::encoding::compress_to_vec(
        b,
        ruzstd::encoding::CompressionLevel::Fastest,
    ));
    assert_eq!(&zst[..4], [0x28, 0xb5, 0x2f, 0xfd]);
    let dir = tempfile::tempdir().unwrap();
    let oci = dir.path().join("image");
    layout_of(&oci, [l1, zst]);
    let root = dir.path().join("root");
    unpack(&open(&oci).unwrap(), &root).unwrap();
    check_tree(&root);
}

#[test]
fn owners_are_kept_when_asked() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let oci = dir.path().join("image");
    layout(&oci);
    let root = dir.path().join("root");
    unpack_keeping_owners(&open(&oci).unwrap(), &root).unwrap();
    check_tree(&root);
    // The layers record 1000:1000 for every entry.
    for rel in ["bin", "bin/hello", "bin/hello2", "data/c"] {
        let m = fs::metadata(root.join(rel)).unwrap();
        assert_eq!((m.uid(), m.gid()), (1000, 1000), "{rel}");
    }
    let link = fs::symlink_metadata(root.join("bin/hi")).unwrap();
    assert_eq!((link.uid(), link.gid()), (1000, 1000), "the symlink itself");
}

#[test]
fn owners_move_into_a_user_namespace_range() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let oci = dir.path().join("image");
    layout(&oci);
    let image = open(&oci).unwrap();
    let root = dir.path().join("root");
    let owners = Owners::Shifted {
        base: 200_000,
        size: 65_536,
    };
    unpack_as(&image, &root, owners).unwrap();
    check_tree(&root);
    let m = fs::metadata(root.join("bin/hello")).unwrap();
    assert_eq!((m.uid(), m.gid()), (201_000, 201_000));
    // 1000 has no owner outside a range of 1000 ids.
    let small = Owners::Shifted {
        base: 200_000,
        size: 1000,
    };
    let e = unpack_as(&image, &dir.path().join("small"), small)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("uid 1000 is outside the container's 1000 ids"),
        "{e}"
    );
}

/// A one-layer image of `entries` (the layer tar written as given).
pub(crate) fn image_of(dir: &Path, layers: Vec<Vec<u8>>) -> Image {
    Image::from_layers(
        dir.join("hostile"),
        layers
            .into_iter()
            .enumerate()
            .map(|(i, bytes)| {
                let p = dir.join(format!("layer{i}.tar"));
                fs::write(&p, bytes).unwrap();
                (format!("layer{i}"), p)
            })
            .collect(),
    )
}

#[path = "hostile_tests.rs"]
mod hostile;

#[path = "layout_tests.rs"]
mod layout_rules;

/// The layout `layout_of` made: (manifest digest, its layers' digests).
fn manifest_of(dir: &Path) -> (String, Vec<String>) {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let hex = m.trim_start_matches("sha256:");
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("blobs/sha256").join(hex)).unwrap()).unwrap();
    let layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    (m, layers)
}

#[test]
fn an_image_copied_out_of_a_hostile_store_is_checked_on_the_way() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    layout(&store);
    let (m, layers) = manifest_of(&store);
    let out = tempfile::tempdir().unwrap();
    copy_image(
        root.path(),
        Path::new("store"),
        &m,
        Some(&m),
        &out.path().join("a"),
    )
    .unwrap();
    let image = open_manifest(&out.path().join("a"), &m).unwrap();
    assert_eq!(image.layers.len(), 2);

    let blob = |d: &str| {
        store
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    // A pin the manifest is not (nor is listed by): refused.
    let other = digest(b"another manifest");
    let err = copy_image(
        root.path(),
        Path::new("store"),
        &m,
        Some(&other),
        &out.path().join("b"),
    );
    assert!(err.is_err());
    // A layer swapped for other bytes.
    let saved = fs::read(blob(&layers[0])).unwrap();
    fs::write(blob(&layers[0]), b"planted").unwrap();
    let err = copy_image(
        root.path(),
        Path::new("store"),
        &m,
        None,
        &out.path().join("c"),
    );
    assert!(matches!(err, Err(OciError::Digest { .. })), "{err:?}");
    // A layer that is a symlink to a file outside the store: resolved
    // inside the store's root, where it is not.
    fs::remove_file(blob(&layers[0])).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", blob(&layers[0])).unwrap();
    let err = copy_image(
        root.path(),
        Path::new("store"),
        &m,
        None,
        &out.path().join("d"),
    );
    assert!(err.is_err(), "followed a symlink out of the store");
    // A fifo is never opened (opening one for reading would wait forever).
    fs::remove_file(blob(&layers[0])).unwrap();
    nix::unistd::mkfifo(
        &blob(&layers[0]),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let err = copy_image(
        root.path(),
        Path::new("store"),
        &m,
        None,
        &out.path().join("e"),
    );
    assert!(
        matches!(&err, Err(OciError::Format { message, .. }) if message.contains("not a regular file")),
        "{err:?}"
    );
    fs::remove_file(blob(&layers[0])).unwrap();
    fs::write(blob(&layers[0]), saved).unwrap();
    copy_image(
        root.path(),
        Path::new("store"),
        &m,
        None,
        &out.path().join("f"),
    )
    .unwrap();
}

//! Hostile layers: whatever they hold, nothing outside the root changes.

use super::*;

/// A folder beside the destination with files that no layer may touch,
/// and a way to check that they did not change: names, contents, modes,
/// owners and times.
struct Outside {
    dir: PathBuf,
    before: Vec<Snap>,
}

type Snap = (PathBuf, u32, u32, u32, i64, Vec<u8>);

fn snapshot(dir: &Path) -> Vec<Snap> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let m = fs::symlink_metadata(dir).unwrap();
    out.push((
        dir.to_path_buf(),
        m.mode(),
        m.uid(),
        m.gid(),
        m.mtime(),
        Vec::new(),
    ));
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            out.extend(snapshot(&p));
        } else {
            let data = fs::read(&p).unwrap_or_default();
            out.push((p, m.mode(), m.uid(), m.gid(), m.mtime(), data));
        }
    }
    out.sort();
    out
}

impl Outside {
    fn new(parent: &Path) -> Self {
        let dir = parent.join("outside");
        fs::create_dir_all(dir.join("victim")).unwrap();
        fs::write(dir.join("victim/keep"), b"precious").unwrap();
        fs::write(dir.join("secret"), b"host secret").unwrap();
        // A time no unpack writes, so that a change of it shows.
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        for p in [dir.join("secret"), dir.join("victim/keep")] {
            fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        let before = snapshot(&dir);
        Outside { dir, before }
    }

    fn unchanged(&self) {
        assert_eq!(
            snapshot(&self.dir),
            self.before,
            "something outside changed"
        );
    }
}

/// Unpack `layers` into `root/` beside an [`Outside`]; the result, with
/// the outside checked unchanged either way.
fn hostile(layers: Vec<Vec<u8>>) -> (tempfile::TempDir, Result<(), OciError>) {
    hostile_with(|_| layers)
}

/// [`hostile`], the layers made knowing the outside folder's host path.
fn hostile_with(
    layers: impl FnOnce(&Path) -> Vec<Vec<u8>>,
) -> (tempfile::TempDir, Result<(), OciError>) {
    let dir = tempfile::tempdir().unwrap();
    let outside = Outside::new(dir.path());
    let image = image_of(dir.path(), layers(&outside.dir));
    let result = unpack(&image, &dir.path().join("root"));
    outside.unchanged();
    (dir, result)
}

#[test]
fn a_file_through_an_earlier_symlink_stays_inside() {
    // The issue's case: x -> the outside folder, then x/victim as a file.
    let (dir, result) = hostile(vec![layer(
        &[
            E::Dir("outside"),
            E::Symlink("x", "../outside"),
            E::Symlink("abs", "/outside"),
            E::File("x/victim", b"evil", 0o644),
            E::File("abs/victim", b"evil", 0o644),
            E::File("x/secret", b"evil", 0o644),
        ],
        false,
    )]);
    // In the root, ../outside and /outside both name /outside inside it.
    result.unwrap();
    let root = dir.path().join("root");
    assert_eq!(fs::read(root.join("outside/victim")).unwrap(), b"evil");
    assert_eq!(fs::read(root.join("outside/secret")).unwrap(), b"evil");
}

#[test]
fn a_folder_through_an_earlier_symlink_stays_inside() {
    let (dir, result) = hostile(vec![layer(
        &[
            E::Dir("outside"),
            E::Dir("outside/victim"),
            E::Symlink("x", "/outside/victim"),
            E::Dir("x/sub"),
            E::File("x/sub/new", b"evil", 0o644),
        ],
        false,
    )]);
    result.unwrap();
    let root = dir.path().join("root");
    assert_eq!(
        fs::read(root.join("outside/victim/sub/new")).unwrap(),
        b"evil"
    );
}

#[test]
fn a_symlink_from_a_lower_layer_is_not_followed_out() {
    let (_dir, result) = hostile(vec![
        layer(&[E::Symlink("x", "../../../outside")], false),
        layer(
            &[
                E::File("x/victim", b"evil", 0o644),
                E::Symlink("x/secret", "/etc/shadow"),
            ],
            false,
        ),
    ]);
    // Inside the root, x dangles: refused, naming it.
    let e = result.unwrap_err().to_string();
    assert!(e.contains("making the folder /x"), "{e}");
}

#[test]
fn a_symlink_to_the_host_path_of_a_folder_outside_is_resolved_inside() {
    let (dir, result) = hostile_with(|outside| {
        let abs = outside.to_str().unwrap().to_string();
        vec![layer(
            &[
                E::Symlink("x", &abs),
                E::Symlink("y", &format!("{abs}/secret")),
                E::File("y", b"replaced the link, not its target", 0o644),
                E::File("x/victim", b"evil", 0o644),
            ],
            false,
        )]
    });
    // The host path does not exist inside the root.
    let e = result.unwrap_err().to_string();
    assert!(e.contains("/x"), "{e}");
    assert_eq!(
        fs::read(dir.path().join("root/y")).unwrap(),
        b"replaced the link, not its target"
    );
}

#[test]
fn a_hard_link_cannot_reach_a_file_outside() {
    for target in ["../outside/secret", "/outside/secret"] {
        let (_dir, result) = hostile(vec![layer(
            &[
                E::Hardlink("stolen", target),
                E::File("stolen", b"overwritten", 0o644),
            ],
            false,
        )]);
        let e = result.unwrap_err().to_string();
        assert!(
            e.contains("leaves the root") || e.contains("linking /stolen"),
            "{target}: {e}"
        );
    }
    // Through a symlink in the root: resolved inside, where there is no
    // such file.
    let (_dir, result) = hostile(vec![layer(
        &[
            E::Symlink("up", "../outside"),
            E::Hardlink("stolen", "up/secret"),
        ],
        false,
    )]);
    let e = result.unwrap_err().to_string();
    assert!(e.contains("linking /stolen to /up/secret"), "{e}");
}

#[test]
fn whiteouts_through_a_symlink_stay_inside() {
    let (_dir, result) = hostile(vec![
        layer(
            &[
                E::Symlink("x", "../outside"),
                E::Symlink("v", "/outside/victim"),
            ],
            false,
        ),
        layer(
            &[
                E::File("x/.wh.victim", b"", 0o644),
                E::File("x/.wh.secret", b"", 0o644),
                E::File("v/.wh..wh..opq", b"", 0o644),
                E::File(".wh.x/victim", b"", 0o644),
            ],
            false,
        ),
    ]);
    result.unwrap();
}

/// A layer whose only entry is named `name`, written into the header by
/// hand (tar's builder refuses `..`).
fn raw_entry(name: &[u8], kind: tar::EntryType, link: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    let body: &[u8] = if kind == tar::EntryType::Regular {
        b"evil"
    } else {
        b""
    };
    h.set_size(body.len() as u64);
    let gnu = h.as_gnu_mut().unwrap();
    gnu.name[..name.len()].copy_from_slice(name);
    gnu.linkname[..link.len()].copy_from_slice(link);
    h.set_cksum();
    b.append(&h, body).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn a_nul_byte_in_a_name_is_refused() {
    // tar keeps a NUL inside a GNU long name; the system would read `..`.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(1);
    // `..\0` and enough after it to need a long name.
    let mut name = b"..\0".to_vec();
    name.extend([b'x'; 120]);
    let mut long = tar::Header::new_gnu();
    long.set_entry_type(tar::EntryType::GNULongName);
    long.set_size(name.len() as u64 + 1);
    long.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    long.set_cksum();
    let mut body = name.clone();
    body.push(0);
    b.append(&long, &body[..]).unwrap();
    h.as_gnu_mut().unwrap().name[..5].copy_from_slice(b"short");
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    let (_dir, result) = hostile(vec![b.into_inner().unwrap()]);
    let e = result.unwrap_err().to_string();
    assert!(e.contains("leaves the root"), "{e}");
}

#[test]
fn an_opaque_whiteout_at_the_top_empties_the_root() {
    let (dir, result) = hostile(vec![
        layer(&[E::File("old", b"below", 0o644), E::Dir("d")], false),
        layer(
            &[
                E::File(".wh..wh..opq", b"", 0o644),
                E::File("new", b"above", 0o644),
            ],
            false,
        ),
    ]);
    result.unwrap();
    let mut names: Vec<_> = fs::read_dir(dir.path().join("root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["new"]);
}

#[test]
fn dot_dot_in_names_is_refused() {
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    for (name, kind, link) in [
        (&b"../outside/victim/keep"[..], Regular, &b""[..]),
        (b"a/../../outside/secret", Regular, b""),
        (b"/../outside/secret", Regular, b""),
        (b"../outside/new", Directory, b""),
        (b"../outside/ln", Symlink, b"/etc"),
        (b"../outside/hl", Link, b"x"),
        (b"ok", Link, b"../outside/secret"),
        (b"../outside/.wh.secret", Regular, b""),
        (b"../outside/victim/.wh..wh..opq", Regular, b""),
    ] {
        let (_dir, result) = hostile(vec![raw_entry(name, kind, link)]);
        let e = result.unwrap_err().to_string();
        assert!(
            e.contains("leaves the root"),
            "{}: {e}",
            String::from_utf8_lossy(name)
        );
    }
}

#[test]
fn images_that_share_a_config_do_not_share_a_root() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    layout(&a);
    let [l1, _] = layers();
    let other = layer(&[E::File("x", b"another layer", 0o644)], false);
    layout_of(&b, [l1, other]);
    let (ia, ib) = (open(&a).unwrap(), open(&b).unwrap());
    assert_eq!(ia.id, ib.id, "one config");
    let key = ia.root_key().unwrap();
    assert_ne!(key, ib.root_key().unwrap());
    assert_eq!(key, open(&a).unwrap().root_key().unwrap(), "stable");
    assert_eq!(key.len(), 64);
}

#[test]
fn a_docker_manifest_names_only_files_of_its_archive() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside.tar");
    fs::write(&outside, layers()[0].clone()).unwrap();
    let [l1, _] = layers();
    for name in [outside.to_str().unwrap(), "../outside.tar", "l1", ""] {
        let manifest = format!(r#"[{{"Config":"cfg.json","Layers":[{name:?}]}}]"#);
        let archive = dir.path().join("bad.tar");
        docker_archive(
            &archive,
            &[
                ("manifest.json", manifest.as_bytes()),
                ("cfg.json", CONFIG.as_bytes()),
                ("l1/layer.tar", &l1[..]),
            ],
        );
        let e = open(&archive).unwrap_err().to_string();
        assert!(
            e.contains("which is not a file of the archive"),
            "{name}: {e}"
        );
    }
}

#[test]
fn a_layer_named_like_a_digest_is_not_taken_for_one() {
    let dir = tempfile::tempdir().unwrap();
    let [l1, l2] = layers();
    let fake = format!("sha256:{}", "0".repeat(64));
    let manifest = format!(r#"[{{"Config":"cfg.json","Layers":[{fake:?}]}}]"#);
    let key = |layer: &[u8], n: &str| {
        let archive = dir.path().join(format!("{n}.tar"));
        docker_archive(
            &archive,
            &[
                ("manifest.json", manifest.as_bytes()),
                ("cfg.json", CONFIG.as_bytes()),
                (fake.as_str(), layer),
            ],
        );
        open(&archive).unwrap().root_key().unwrap()
    };
    assert_ne!(
        key(&l1, "a"),
        key(&l2, "b"),
        "one name, one config, two layers"
    );
}

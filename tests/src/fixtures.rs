//! Inputs several end-to-end tests make: host configs on a disk's ESP,
//! OCI image blobs and layers (busybox ones, incompressible ones), and
//! HTTP requests to a guest's forwarded ports.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use keel_image_builder::{disk, esp};

/// Put `text` on the disk's ESP as keel/host.toml, as `keel flash
/// --config` would, but without its checks (to write a broken file).
pub fn put_config(disk_path: &Path, text: &str) {
    put_esp_file(disk_path, keel_formats::host::ON_ESP, text.as_bytes());
}

/// Write `bytes` to `path` on the disk's ESP, as someone who can write the
/// ESP (no Secure Boot in the way) could.
pub fn put_esp_file(disk_path: &Path, path: &str, content: &[u8]) {
    let part = disk::read_table(disk_path)
        .expect("reading the disk's partition table")
        .into_iter()
        .find(|p| p.label == keel_formats::disk::ESP_LABEL)
        .expect("the disk has an ESP");
    let bytes =
        disk::read_partition(disk_path, keel_formats::disk::ESP_LABEL).expect("reading the ESP");
    let bytes = esp::add_files(bytes, &[(path.into(), content.to_vec())])
        .expect("adding a file to the ESP");
    let f = fs::OpenOptions::new()
        .write(true)
        .open(disk_path)
        .expect("opening the disk");
    f.write_all_at(&bytes, part.offset)
        .expect("writing the ESP");
    f.sync_all().expect("syncing the disk");
}

/// The text of file `path` on the disk's ESP.
pub fn esp_text(disk_path: &Path, path: &str) -> String {
    esp_text_if_any(disk_path, path).expect("reading a file of the ESP")
}

/// [`esp_text`], or None if the ESP has no such file.
pub fn esp_text_if_any(disk_path: &Path, path: &str) -> Option<String> {
    let bytes =
        disk::read_partition(disk_path, keel_formats::disk::ESP_LABEL).expect("reading the ESP");
    let text = esp::read_file(std::io::Cursor::new(bytes), path).ok()?;
    Some(String::from_utf8_lossy(&text).into_owned())
}

/// GET `path` from 127.0.0.1:`port` until the response contains `want`,
/// for a minute at most; the whole response, or the last thing seen.
pub fn http_get(port: u16, path: &str, want: &str) -> Result<String, String> {
    let mut last = String::new();
    for _ in 0..60 {
        let got = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
            s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        });
        match got {
            Ok(page) if page.contains(want) => return Ok(page),
            Ok(page) => last = page,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    Err(format!("no {want:?} from 127.0.0.1:{port}{path}: {last}"))
}

/// Store `bytes` as a blob of the OCI layout at `dir`; its digest.
pub fn oci_blob(dir: &Path, bytes: &[u8]) -> String {
    let hex = hex::encode(Sha256::digest(bytes));
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).expect("making blobs/sha256");
    fs::write(blobs.join(&hex), bytes).expect("writing a blob");
    format!("sha256:{hex}")
}

/// Write an OCI image layout at `dir` of these layer blobs (tar, or
/// gzip-compressed tar) and image config JSON, with one manifest; every
/// descriptor with its media type and size, as the image spec requires.
pub fn oci_layout(dir: &Path, layers: &[&[u8]], config: &str) {
    let layers: Vec<String> = layers
        .iter()
        .map(|l| {
            let kind = if l.starts_with(&[0x1f, 0x8b]) {
                "tar+gzip"
            } else {
                "tar"
            };
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.{kind}","digest":"{}","size":{}}}"#,
                oci_blob(dir, l),
                l.len()
            )
        })
        .collect();
    let config_digest = oci_blob(dir, config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{}]}}"#,
        config.len(),
        layers.join(",")
    );
    let manifest_digest = oci_blob(dir, manifest.as_bytes());
    fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{}}}]}}"#,
            manifest.len()
        ),
    )
    .expect("writing index.json");
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("writing oci-layout");
}

/// A file of a layer: path, contents, mode, owner, symlink target.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub path: &'a str,
    pub data: &'a [u8],
    pub mode: u32,
    pub owner: u32,
    pub link: Option<&'a str>,
}

impl<'a> Entry<'a> {
    pub fn file(path: &'a str, data: &'a [u8], mode: u32) -> Entry<'a> {
        Entry {
            path,
            data,
            mode,
            owner: 0,
            link: None,
        }
    }

    pub fn link(path: &'a str, target: &'a str) -> Entry<'a> {
        Entry {
            path,
            data: b"",
            mode: 0o777,
            owner: 0,
            link: Some(target),
        }
    }
}

/// An image layer (tar) of `entries`, with owners and times set as image
/// tools write them.
pub fn layer(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(e.mode);
        h.set_mtime(1_700_000_000);
        h.set_uid(e.owner.into());
        h.set_gid(e.owner.into());
        match e.link {
            Some(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, e.path, target)
                    .expect("adding a link");
            }
            None => {
                h.set_size(e.data.len() as u64);
                b.append_data(&mut h, e.path, e.data)
                    .expect("adding a file");
            }
        }
    }
    b.into_inner().expect("finishing a layer")
}

/// A loop device over part of a file, mounted; undone when dropped.
#[derive(Debug)]
pub struct Mounted {
    dev: PathBuf,
    pub at: tempfile::TempDir,
}

impl Mounted {
    pub fn partition(disk_path: &Path, label: &str) -> Mounted {
        let p = disk::read_table(disk_path)
            .expect("reading the disk")
            .into_iter()
            .find(|p| p.label == label)
            .expect("the disk has that partition");
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(format!("--offset={}", p.offset))
            .arg(format!("--sizelimit={}", p.size))
            .arg(disk_path)
            .output()
            .expect("losetup (util-linux)");
        assert!(
            out.status.success(),
            "losetup failed (this test needs root and loop devices; CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let at = tempfile::tempdir().expect("making a mount point");
        let m = Mounted { dev, at };
        let st = Command::new("mount")
            .arg(&m.dev)
            .arg(m.at.path())
            .status()
            .expect("running mount");
        assert!(st.success(), "mount {}", m.dev.display());
        m
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.at.path()).status();
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// `len` incompressible bytes (xorshift64 from `seed`): a gzip layer of
/// them is as big as they are, so the bytes on the wire are the image's.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect()
}

/// A layer of the image's cached busybox at /bin/busybox, with `applets`
/// linked to it in /bin, and `extra` entries besides.
pub fn busybox_layer(applets: &[&str], extra: &[Entry<'_>]) -> Vec<u8> {
    let busybox = crate::host::cached_busybox(&crate::workspace()).expect("the cached busybox");
    let bb = fs::read(&busybox.files[0].1).expect("reading busybox");
    let links: Vec<String> = applets.iter().map(|a| format!("bin/{a}")).collect();
    let mut entries = vec![Entry::file("bin/busybox", &bb, 0o755)];
    entries.extend(links.iter().map(|a| Entry::link(a, "busybox")));
    entries.extend_from_slice(extra);
    layer(&entries)
}

/// A new ed25519 key pair in `dir` (`id_ed25519`, `id_ed25519.pub`); its
/// public line, for `admin.ssh.authorized_keys`.
pub fn ssh_key(dir: &Path) -> String {
    let key = dir.join("id_ed25519");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen (openssh-client; cargo xtask deps installs it)");
    assert!(made.success());
    fs::read_to_string(key.with_extension("pub"))
        .expect("the public key")
        .trim()
        .to_string()
}

/// `keel keygen --secure-boot dir`: PK, KEK, db and the PCR key.
pub fn keygen_secure_boot(dir: &Path) {
    let out = Command::new(crate::keel_bin())
        .args(["keygen", "--secure-boot"])
        .arg(dir)
        .output()
        .expect("running keel keygen");
    assert!(out.status.success(), "{}", crate::output_text(&out));
}

/// The updates' test recipe at `version`, built into `dir/out-VERSION`
/// signed for Secure Boot by the key folder `keys` (and its bundle by
/// `bundle_key`); the output folder.
pub fn secure_boot_build(
    dir: &Path,
    version: &str,
    keys: &Path,
    bundle_key: Option<&Path>,
) -> PathBuf {
    let db_key = keys.join("db.key");
    crate::keel_build_with(
        &crate::updates::recipe(dir, version, &[], ""),
        &dir.join(format!("out-{version}")),
        bundle_key,
        &["--secure-boot-key".as_ref(), db_key.as_os_str()],
    )
}

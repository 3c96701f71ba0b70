//! Update bundles (`keel build --sign-key`) and keys (`keel keygen`): the
//! build side of docs/update.md.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

use keel_formats::bundle::{self, Chunk, Manifest, Payload, PayloadName, VerityInfo, ALIGN};
use keel_formats::chunking;
use keel_formats::cmdline::{to_hex, VerityParams};
use keel_formats::keys;
use keel_formats::signed::{Envelope, Kind};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Key {
        path: PathBuf,
        source: keys::KeyError,
    },
    #[error("{path}: refusing to overwrite an existing key")]
    KeyExists { path: PathBuf },
    #[error("{path}: secret key is readable by others (mode {mode:o}); chmod 600 it")]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("{path}: {source}")]
    Format {
        path: PathBuf,
        source: bundle::BundleError,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write a new key pair: `<base>.key` (mode 0600) and `<base>.pub`.
pub fn keygen(base: &Path) -> Result<(PathBuf, PathBuf), BundleError> {
    let secret = base.with_extension("key");
    let public = base.with_extension("pub");
    for p in [&secret, &public] {
        if p.exists() {
            return Err(BundleError::KeyExists { path: p.clone() });
        }
    }
    let key = SigningKey::generate(&mut rand_core::OsRng);
    crate::files::write_new(&secret, keys::render_secret(&key).as_bytes(), 0o600)
        .map_err(io_err(&secret))?;
    fs::write(&public, keys::render_public(&key.verifying_key())).map_err(io_err(&public))?;
    Ok((secret, public))
}

/// Read a secret key file, refusing one that others can read.
pub fn read_secret(path: &Path) -> Result<SigningKey, BundleError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path)
        .map_err(io_err(path))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(BundleError::KeyMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    keys::parse_secret(&text).map_err(|source| BundleError::Key {
        path: path.to_path_buf(),
        source,
    })
}

pub fn read_public(path: &Path) -> Result<ed25519_dalek::VerifyingKey, BundleError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    keys::parse_public(&text).map_err(|source| BundleError::Key {
        path: path.to_path_buf(),
        source,
    })
}

/// Whole sha256 of a file, its size and its chunks.
fn hash_file(path: &Path) -> Result<(u64, String, Vec<Chunk>), BundleError> {
    let f = File::open(path).map_err(io_err(path))?;
    let mut whole = Sha256::new();
    let mut chunks = Vec::new();
    let mut size = 0u64;
    for cut in chunking::cut(io::BufReader::with_capacity(1 << 20, f)) {
        let cut = cut.map_err(io_err(path))?;
        whole.update(&cut.data);
        size += cut.data.len() as u64;
        chunks.push(Chunk::of(&cut));
    }
    Ok((size, hex::encode(whole.finalize()), chunks))
}

/// What goes into a bundle.
#[derive(Debug)]
pub struct BundleInputs<'a> {
    pub variant: &'a str,
    pub version: &'a str,
    pub verity: &'a VerityParams,
    pub root: &'a Path,
    pub verity_tree: &'a Path,
    pub uki: &'a Path,
    /// Seconds since the epoch.
    pub created: u64,
    pub min_version: Option<&'a str>,
    pub allow_downgrade: bool,
}

/// Write a signed bundle to `out`; returns its manifest.
pub fn write(
    inputs: &BundleInputs<'_>,
    key: &SigningKey,
    out: &Path,
) -> Result<Manifest, BundleError> {
    let files = [
        (PayloadName::Root, inputs.root),
        (PayloadName::Verity, inputs.verity_tree),
        (PayloadName::Uki, inputs.uki),
    ];
    let mut payloads = Vec::new();
    let mut offset = 0u64;
    for (name, path) in files {
        let (size, sha256, chunks) = hash_file(path)?;
        payloads.push(Payload {
            name,
            offset,
            size,
            sha256,
            compression: "none".into(),
            chunks,
        });
        offset += size.div_ceil(ALIGN) * ALIGN;
    }
    let manifest = Manifest {
        format: bundle::FORMAT,
        os: bundle::OS.into(),
        variant: inputs.variant.into(),
        version: inputs.version.into(),
        created: inputs.created,
        min_version: inputs.min_version.map(str::to_string),
        allow_downgrade: inputs.allow_downgrade,
        verity: VerityInfo {
            root_hash: to_hex(&inputs.verity.root_hash),
            salt: to_hex(&inputs.verity.salt),
            data_blocks: inputs.verity.data_blocks,
        },
        payloads,
    };
    manifest.validate().map_err(|source| BundleError::Format {
        path: out.to_path_buf(),
        source,
    })?;
    // Compact: a host fetches the manifest before anything else.
    let body = serde_json::to_vec(&manifest).unwrap_or_default();
    // Every host would refuse a longer head: say so here, not there.
    if body.len() > keel_formats::signed::MAX_BODY as usize {
        return Err(BundleError::Format {
            path: out.to_path_buf(),
            source: bundle::BundleError::Invalid(format!(
                "the manifest lists {} chunks in {} bytes, more than the {} a signed head holds; payloads of about 700 MiB in all are the most a bundle carries",
                manifest.payloads.iter().map(|p| p.chunks.len()).sum::<usize>(),
                body.len(),
                keel_formats::signed::MAX_BODY
            )),
        });
    }
    let envelope = Envelope::sign(Kind::Bundle, body, &[key]);

    let tmp = out.with_extension("bundle.tmp");
    let mut w = io::BufWriter::new(File::create(&tmp).map_err(io_err(&tmp))?);
    w.write_all(&bundle::head_bytes(&envelope))
        .map_err(io_err(&tmp))?;
    for ((_, path), p) in files.iter().zip(&manifest.payloads) {
        let mut f = File::open(path).map_err(io_err(path))?;
        let copied = io::copy(&mut f, &mut w).map_err(io_err(path))?;
        let pad = p.size.div_ceil(ALIGN) * ALIGN - copied;
        w.write_all(&vec![0u8; pad as usize])
            .map_err(io_err(&tmp))?;
    }
    w.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, out).map_err(io_err(out))?;
    Ok(manifest)
}

/// The signed head of a bundle file: its envelope and manifest (signature
/// not checked: the caller decides against which keys).
pub fn read_head(path: &Path) -> Result<(Envelope, Manifest), BundleError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let fmt = |source| BundleError::Format {
        path: path.to_path_buf(),
        source,
    };
    let mut head = vec![0u8; keel_formats::signed::HEADER_LEN];
    f.read_exact(&mut head).map_err(io_err(path))?;
    let h = keel_formats::signed::parse_header(Kind::Bundle, &head).map_err(|e| fmt(e.into()))?;
    head.resize(h.total_len(), 0);
    f.read_exact(&mut head[keel_formats::signed::HEADER_LEN..])
        .map_err(io_err(path))?;
    let env = Envelope::parse(Kind::Bundle, &head).map_err(|e| fmt(e.into()))?;
    let m = Manifest::parse(&env.body).map_err(fmt)?;
    Ok((env, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_a_private_secret_and_refuses_to_overwrite() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let (s, p) = keygen(&d.path().join("release")).unwrap();
        assert_eq!(
            fs::metadata(&s).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let k = read_secret(&s).unwrap();
        assert_eq!(read_public(&p).unwrap(), k.verifying_key());
        assert!(matches!(
            keygen(&d.path().join("release")),
            Err(BundleError::KeyExists { .. })
        ));
        fs::set_permissions(&s, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(read_secret(&s), Err(BundleError::KeyMode { .. })));
    }

    #[test]
    fn a_written_bundle_reads_back_and_verifies() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let tree = d.path().join("verity");
        let uki = d.path().join("uki");
        fs::write(&root, vec![7u8; (1 << 20) + 5000]).unwrap();
        fs::write(&tree, vec![1u8; 8192]).unwrap();
        fs::write(&uki, b"MZ uki").unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        let verity = VerityParams {
            data_blocks: 257,
            salt: vec![1, 2],
            root_hash: [9; 32],
        };
        let out = d.path().join("keel-1.0.0.bundle");
        let m = write(
            &BundleInputs {
                variant: "keel",
                version: "1.0.0",
                verity: &verity,
                root: &root,
                verity_tree: &tree,
                uki: &uki,
                created: 5,
                min_version: None,
                allow_downgrade: false,
            },
            &key,
            &out,
        )
        .unwrap();
        // Bytes without cut points: chunks of the largest size.
        assert_eq!(m.payloads[0].chunks.len(), 17);
        assert_eq!(m.payloads[0].chunks[16].size, 5000);
        let (env, m2) = read_head(&out).unwrap();
        assert_eq!(m, m2);
        env.verify(&[key.verifying_key()]).unwrap();
        let bytes = fs::read(&out).unwrap();
        let start = bundle::payload_start(env.to_bytes().len() as u64);
        let uki_p = m.payload(PayloadName::Uki).unwrap();
        let at = (start + uki_p.offset) as usize;
        assert_eq!(&bytes[at..at + 6], b"MZ uki");
        assert_eq!(bytes.len() as u64, start + m.payloads_len());
    }
}

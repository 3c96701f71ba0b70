//! Reading a bundle: the signed manifest first (nothing else is read
//! before its signature holds), then the payloads, hashed in chunks so
//! that a mismatch names the offset where it is.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};

use keel_formats::bundle::{self, BundleError, Manifest, Payload};
use keel_formats::chunking;
use keel_formats::signed::{self, Envelope, Kind};

use crate::error::UpdateError;

/// What a verified payload is copied in.
const COPY_BUF: usize = 1 << 20;

/// A bundle's verified manifest and where its payloads start.
#[derive(Debug, Clone)]
pub struct Head {
    pub manifest: Manifest,
    pub payload_start: u64,
    /// Key id of the trusted key that signed it.
    pub signed_by: String,
}

impl Head {
    /// Offsets of the first byte of payload `p` in the bundle and of the
    /// byte after it; refused if they do not fit in a u64.
    pub fn span(&self, p: &Payload) -> Result<(u64, u64), UpdateError> {
        let start = self.payload_start.checked_add(p.offset);
        match start.and_then(|s| Some((s, s.checked_add(p.size)?))) {
            Some(span) => Ok(span),
            None => Err(UpdateError::Bundle(BundleError::Invalid(format!(
                "payload {} at offset {} of {} bytes ends past the largest bundle offset",
                p.name.as_str(),
                p.offset,
                p.size
            )))),
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..])? {
            0 => break,
            // read() returns at most the bytes asked for.
            n => filled = filled.saturating_add(n),
        }
    }
    Ok(filled)
}

fn io(e: std::io::Error) -> UpdateError {
    UpdateError::Io {
        path: "bundle".into(),
        source: e,
    }
}

/// Read and verify the signed head of a bundle from the start of `r`.
pub fn read_head(r: &mut impl Read, trusted: &[VerifyingKey]) -> Result<Head, UpdateError> {
    let mut head = vec![0u8; signed::HEADER_LEN];
    let n = read_full(r, &mut head).map_err(io)?;
    head.truncate(n);
    let h = signed::parse_header(Kind::Bundle, &head)?;
    head.resize(h.total_len(), 0);
    let n = read_full(r, &mut head[signed::HEADER_LEN..]).map_err(io)?;
    head.truncate(signed::HEADER_LEN.saturating_add(n));
    let env = Envelope::parse(Kind::Bundle, &head)?;
    let key = env.verify(trusted)?;
    let manifest = Manifest::parse(&env.body)?;
    let head = Head {
        manifest,
        payload_start: bundle::payload_start(h.total_len() as u64),
        signed_by: signed::key_id(key.as_bytes()),
    };
    // Refused here, before any payload byte is read or written.
    for p in &head.manifest.payloads {
        head.span(p)?;
    }
    Ok(head)
}

/// Stream payload `p` of the bundle in `r`, checking each chunk against the
/// manifest before handing it to `sink`; `progress` gets the bytes done.
pub fn stream_payload(
    r: &mut (impl Read + Seek),
    head: &Head,
    p: &Payload,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), UpdateError>,
    progress: &mut dyn FnMut(u64),
) -> Result<(), UpdateError> {
    let name = p.name.as_str();
    let (start, end) = head.span(p)?;
    r.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut buf = vec![0u8; chunking::MAX];
    let mut whole = Sha256::new();
    // A validated manifest's chunks are at most chunking::MAX long and add
    // up to the payload's size, so start + at stays within `end`.
    for (at, c) in p.spans() {
        let len = usize::try_from(c.size).unwrap_or(usize::MAX).min(buf.len());
        let n = read_full(r, &mut buf[..len]).map_err(io)?;
        if n < len {
            return Err(UpdateError::Truncated {
                payload: name,
                expected: end,
                got: start.saturating_add(at).saturating_add(n as u64),
            });
        }
        let chunk = &buf[..len];
        if hex::encode(Sha256::digest(chunk)) != c.sha256 {
            return Err(UpdateError::HashMismatch {
                payload: name,
                offset: start.saturating_add(at),
            });
        }
        whole.update(chunk);
        sink(chunk)?;
        progress(at.saturating_add(len as u64));
    }
    // The chunk list is signed, so this only fails for a manifest whose
    // whole hash disagrees with its own chunks.
    if hex::encode(whole.finalize()) != p.sha256 {
        return Err(UpdateError::HashMismatch {
            payload: name,
            offset: start,
        });
    }
    Ok(())
}

/// A bundle whose payloads have all been checked against its signed
/// manifest, in a file that only the updater writes. Only the functions of
/// this module make one, so what is installed from it needs no second
/// check on the way (the slot is still read back from the device).
#[derive(Debug)]
pub struct Verified {
    file: File,
    head: Head,
}

impl Verified {
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Hand payload `p` to `sink` in chunks, unchecked: it was checked.
    pub fn copy_payload(
        &mut self,
        p: &Payload,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), UpdateError>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), UpdateError> {
        let (start, _) = self.head.span(p)?;
        let mut buf = vec![0u8; COPY_BUF];
        // done < p.size in the loop: start + done is below the span's end.
        let mut done = 0u64;
        while done < p.size {
            let len = p.size.saturating_sub(done).min(COPY_BUF as u64) as usize;
            self.file
                .read_exact_at(&mut buf[..len], start.saturating_add(done))
                .map_err(io)?;
            sink(&buf[..len])?;
            done = done.saturating_add(len as u64);
            progress(done);
        }
        Ok(())
    }

    /// Hand payload `p` to `sink`, checked once more as it goes.
    pub fn stream_payload(
        &mut self,
        p: &Payload,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), UpdateError>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), UpdateError> {
        stream_payload(&mut self.file, &self.head, p, sink, progress)
    }
}

/// Check every payload of `file`, a bundle the updater itself stored (a
/// download), without writing anything.
pub fn check_own(
    mut file: File,
    head: Head,
    progress: &mut dyn FnMut(u64),
) -> Result<Verified, UpdateError> {
    let mut base = 0u64;
    for p in &head.manifest.payloads {
        stream_payload(&mut file, &head, p, &mut |_| Ok(()), &mut |n| {
            progress(base.saturating_add(n))
        })?;
        base = base.saturating_add(p.size);
    }
    Ok(Verified { file, head })
}

/// Check every payload of `src`, a bundle someone else may still be
/// writing to, while copying them to `dst`, a file only the updater can
/// reach; the payloads keep their offsets there.
pub fn copy_checked(
    src: &mut (impl Read + Seek),
    head: Head,
    (dst, dst_dir): (File, &std::path::Path),
    progress: &mut dyn FnMut(u64),
) -> Result<Verified, UpdateError> {
    let mut base = 0u64;
    for p in &head.manifest.payloads {
        // Stays within the payload's span, checked by stream_payload.
        let (mut at, _) = head.span(p)?;
        stream_payload(
            src,
            &head,
            p,
            &mut |chunk| {
                dst.write_all_at(chunk, at)
                    .map_err(crate::error::io_err(dst_dir))?;
                at = at.saturating_add(chunk.len() as u64);
                Ok(())
            },
            &mut |n| progress(base.saturating_add(n)),
        )?;
        base = base.saturating_add(p.size);
    }
    Ok(Verified { file: dst, head })
}

/// The payload bytes of a bundle, for progress totals.
pub fn payload_bytes(m: &Manifest) -> u64 {
    m.payloads
        .iter()
        .map(|p| p.size)
        .fold(0, u64::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_formats::bundle::{PayloadName, VerityInfo};

    fn head(payload_start: u64) -> Head {
        Head {
            manifest: Manifest {
                format: 1,
                os: "keel".into(),
                variant: "keel".into(),
                version: "0.1.0".into(),
                created: 0,
                min_version: None,
                allow_downgrade: false,
                verity: VerityInfo {
                    root_hash: "00".repeat(32),
                    salt: String::new(),
                    data_blocks: 2,
                },
                payloads: Vec::new(),
            },
            payload_start,
            signed_by: String::new(),
        }
    }

    fn payload(offset: u64, size: u64) -> Payload {
        Payload {
            name: PayloadName::Uki,
            offset,
            size,
            sha256: "00".repeat(32),
            compression: "none".into(),
            chunks: Vec::new(),
        }
    }

    #[test]
    fn a_payload_past_the_largest_offset_is_refused() {
        assert_eq!(head(4096).span(&payload(8192, 10)).unwrap(), (12288, 12298));
        let offset = u64::MAX - 4096;
        let e = head(8192)
            .span(&payload(offset, 10))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("payload uki at offset {offset}")),
            "{e}"
        );
        // The start fits, the end does not.
        let e = head(4096)
            .span(&payload(offset, 10))
            .unwrap_err()
            .to_string();
        assert!(e.contains("of 10 bytes ends past"), "{e}");
    }
}

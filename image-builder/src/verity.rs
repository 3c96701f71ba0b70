//! dm-verity hash trees, format version 1, as `veritysetup format` writes
//! them: a 512-byte superblock padded to one hash block, then the tree with
//! its top level first. Every digest is sha256(salt || block).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use keel_formats::cmdline::VerityParams;
use keel_formats::disk::VERITY_BLOCK_SIZE;

const BLOCK: usize = VERITY_BLOCK_SIZE as usize;
const DIGEST: usize = 32;
const HASHES_PER_BLOCK: usize = BLOCK / DIGEST;

#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: size {size} is not a positive multiple of {BLOCK} bytes")]
    BadSize { path: PathBuf, size: u64 },
    #[error("salt of {0} bytes is longer than the 256 bytes a superblock holds")]
    SaltTooLong(usize),
}

/// A computed tree: the bytes of the hash partition and what the kernel
/// needs to check data against it.
#[derive(Debug)]
pub struct VerityTree {
    pub params: VerityParams,
    /// Superblock followed by the hash levels.
    pub hash_image: Vec<u8>,
}

fn hash_block(salt: &[u8], block: &[u8]) -> [u8; DIGEST] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Pack digests into zero-padded hash blocks.
fn pack(digests: &[[u8; DIGEST]]) -> Vec<u8> {
    let blocks = digests.len().div_ceil(HASHES_PER_BLOCK);
    let mut out = vec![0u8; blocks * BLOCK];
    for (i, d) in digests.iter().enumerate() {
        out[i * DIGEST..(i + 1) * DIGEST].copy_from_slice(d);
    }
    out
}

/// Compute the tree over the data in `reader`, which must be a whole number
/// of blocks; `name` is what errors call it. `uuid` goes into the
/// superblock only.
pub fn compute(
    mut reader: impl Read,
    name: &Path,
    salt: &[u8],
    uuid: [u8; 16],
) -> Result<VerityTree, VerityError> {
    if salt.len() > 256 {
        return Err(VerityError::SaltTooLong(salt.len()));
    }
    let io_err = |source| VerityError::Io {
        path: name.to_path_buf(),
        source,
    };
    let bad_size = |size| VerityError::BadSize {
        path: name.to_path_buf(),
        size,
    };
    let mut level: Vec<[u8; DIGEST]> = Vec::new();
    let mut buf = vec![0u8; BLOCK];
    let mut total = 0u64;
    loop {
        let mut filled = 0;
        while filled < BLOCK {
            let n = reader.read(&mut buf[filled..]).map_err(io_err)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        total += filled as u64;
        if filled == 0 {
            break;
        }
        if filled < BLOCK {
            return Err(bad_size(total));
        }
        level.push(hash_block(salt, &buf));
    }
    if level.is_empty() {
        return Err(bad_size(0));
    }
    let data_blocks = level.len() as u64;

    // Level 0 holds the digests of the data blocks; each level above holds
    // the digests of the hash blocks of the one below, until one block is
    // left. A single data block needs no tree at all.
    let mut levels: Vec<Vec<u8>> = Vec::new();
    let root_hash = if data_blocks == 1 {
        level[0]
    } else {
        loop {
            let packed = pack(&level);
            let top = packed.len() == BLOCK;
            level = packed.chunks(BLOCK).map(|b| hash_block(salt, b)).collect();
            levels.push(packed);
            if top {
                break level[0];
            }
        }
    };

    let mut hash_image = superblock(salt, uuid, data_blocks);
    for l in levels.iter().rev() {
        hash_image.extend_from_slice(l);
    }
    Ok(VerityTree {
        params: VerityParams {
            data_blocks,
            salt: salt.to_vec(),
            root_hash,
        },
        hash_image,
    })
}

/// The on-disk `struct verity_sb` of cryptsetup, padded to a hash block.
fn superblock(salt: &[u8], uuid: [u8; 16], data_blocks: u64) -> Vec<u8> {
    let mut sb = Vec::with_capacity(BLOCK);
    sb.extend_from_slice(b"verity\0\0");
    sb.extend_from_slice(&1u32.to_le_bytes()); // superblock version
    sb.extend_from_slice(&1u32.to_le_bytes()); // hash type: format 1
    sb.extend_from_slice(&uuid);
    let mut alg = [0u8; 32];
    alg[..6].copy_from_slice(b"sha256");
    sb.extend_from_slice(&alg);
    sb.extend_from_slice(&(BLOCK as u32).to_le_bytes()); // data block size
    sb.extend_from_slice(&(BLOCK as u32).to_le_bytes()); // hash block size
    sb.extend_from_slice(&data_blocks.to_le_bytes());
    sb.extend_from_slice(&(salt.len() as u16).to_le_bytes());
    sb.extend_from_slice(&[0u8; 6]);
    let mut salt_field = [0u8; 256];
    salt_field[..salt.len()].copy_from_slice(salt);
    sb.extend_from_slice(&salt_field);
    sb.resize(BLOCK, 0);
    sb
}

/// Compute the tree of the file at `data` and write the hash image to `out`.
pub fn build_file(
    data: &Path,
    out: &Path,
    salt: &[u8],
    uuid: [u8; 16],
) -> Result<VerityTree, VerityError> {
    let f = File::open(data).map_err(|source| VerityError::Io {
        path: data.to_path_buf(),
        source,
    })?;
    let tree = compute(io::BufReader::with_capacity(1 << 20, f), data, salt, uuid)?;
    let out_err = |source| VerityError::Io {
        path: out.to_path_buf(),
        source,
    };
    let mut f = File::create(out).map_err(out_err)?;
    f.write_all(&tree.hash_image).map_err(out_err)?;
    f.sync_all().map_err(out_err)?;
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(blocks: usize) -> Vec<u8> {
        (0..blocks * BLOCK)
            .map(|i| (i * 7 + i / BLOCK) as u8)
            .collect()
    }

    #[test]
    fn tree_shape_matches_the_level_arithmetic() {
        // 300 data blocks: level 0 needs 3 hash blocks, level 1 one block.
        let t = compute(&data(300)[..], Path::new("t"), &[1, 2, 3], [9; 16]).unwrap();
        assert_eq!(t.params.data_blocks, 300);
        assert_eq!(t.hash_image.len(), BLOCK * (1 + 1 + 3));
        // Root hash is the digest of the top block, which comes right after
        // the superblock.
        let top = &t.hash_image[BLOCK..2 * BLOCK];
        assert_eq!(t.params.root_hash, hash_block(&[1, 2, 3], top));
        // The top block holds the digests of the three level-0 blocks.
        for i in 0..3 {
            let l0 = &t.hash_image[(2 + i) * BLOCK..(3 + i) * BLOCK];
            assert_eq!(
                &top[i * DIGEST..(i + 1) * DIGEST],
                hash_block(&[1, 2, 3], l0)
            );
        }
        assert!(top[3 * DIGEST..].iter().all(|&b| b == 0));
    }

    #[test]
    fn the_host_s_image_length_formula_agrees() {
        for blocks in [1usize, 2, 128, 129, 300, 128 * 128 + 1] {
            let t = compute(&data(blocks)[..], Path::new("t"), b"s", [0; 16]).unwrap();
            assert_eq!(
                keel_formats::disk::verity_image_len(blocks as u64),
                Some(t.hash_image.len() as u64),
                "{blocks} blocks"
            );
        }
        assert_eq!(keel_formats::disk::verity_image_len(0), None);
    }

    #[test]
    fn stage_1_recognises_the_top_block_of_its_tree_only() {
        let t = compute(&data(300)[..], Path::new("t"), b"salt", [0; 16]).unwrap();
        let at = keel_formats::cmdline::TOP_BLOCK_OFFSET as usize;
        let top = &t.hash_image[at..at + BLOCK];
        assert!(t.params.is_top_block(top));
        let other = compute(&data(301)[..], Path::new("t"), b"salt", [0; 16]).unwrap();
        assert!(!other.params.is_top_block(top));
        assert!(!t.params.is_top_block(&[0; BLOCK]));
    }

    #[test]
    fn a_changed_byte_changes_the_root() {
        let mut d = data(130);
        let a = compute(&d[..], Path::new("t"), b"s", [0; 16]).unwrap();
        d[129 * BLOCK + 5] ^= 1;
        let b = compute(&d[..], Path::new("t"), b"s", [0; 16]).unwrap();
        assert_ne!(a.params.root_hash, b.params.root_hash);
    }

    #[test]
    fn superblock_layout() {
        let sb = superblock(&[0xaa; 32], [7; 16], 42);
        assert_eq!(&sb[..8], b"verity\0\0");
        assert_eq!(&sb[16..32], &[7; 16]);
        assert_eq!(&sb[32..38], b"sha256");
        assert_eq!(u64::from_le_bytes(sb[72..80].try_into().unwrap()), 42);
        assert_eq!(u16::from_le_bytes(sb[80..82].try_into().unwrap()), 32);
        assert_eq!(&sb[88..120], &[0xaa; 32]);
        assert_eq!(sb.len(), BLOCK);
    }

    #[test]
    fn partial_block_is_refused() {
        let d = vec![0u8; BLOCK + 1];
        assert!(matches!(
            compute(&d[..], Path::new("t"), b"", [0; 16]),
            Err(VerityError::BadSize { size, .. }) if size == BLOCK as u64 + 1
        ));
    }
}

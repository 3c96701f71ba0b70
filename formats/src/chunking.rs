//! Content-defined chunks of update payloads (docs/update.md, "Delta
//! updates"): FastCDC as published in 2020, through the `fastcdc` crate,
//! with fixed sizes. The builder lists every payload's chunks in the
//! signed manifest; a host cuts what it already has (its running slot, its
//! UKI) the same way and fetches only the chunks it lacks. Cut points
//! depend only on the bytes around them, so a file that moved in the
//! image still cuts into the same chunks.
//!
//! The sizes are part of bundle format 2: a builder and a host that cut
//! differently would find nothing in common, so they are constants here,
//! not fields of a manifest, and the `fastcdc` version is pinned.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

/// No chunk but a payload's last is shorter.
pub const MIN: usize = 4096;
pub const AVG: usize = 16384;
/// No chunk is longer: what a reader buffers per chunk.
pub const MAX: usize = 65536;

/// One chunk of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// From the start of the stream.
    pub offset: u64,
    pub data: Vec<u8>,
    pub sha256: [u8; 32],
}

/// The chunks of everything `reader` yields, in order.
pub fn cut(reader: impl Read) -> impl Iterator<Item = io::Result<Cut>> {
    fastcdc::v2020::StreamCDC::new(reader, MIN, AVG, MAX).map(|r| {
        let c = r.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(e) => e,
            other => io::Error::other(format!("chunking: {other:?}")),
        })?;
        let sha256 = Sha256::digest(&c.data).into();
        Ok(Cut {
            offset: c.offset,
            data: c.data,
            sha256,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic bytes that look random enough to cut.
    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn sizes(data: &[u8]) -> Vec<usize> {
        cut(data).map(|c| c.unwrap().data.len()).collect()
    }

    #[test]
    fn cut_points_are_those_of_format_2() {
        // A change of these (another fastcdc version, other sizes) makes
        // every host miss every chunk: it needs a new bundle format.
        let s = sizes(&noise(300_000, 7));
        assert_eq!(s.iter().sum::<usize>(), 300_000);
        assert!(s.iter().all(|&n| n <= MAX));
        assert!(s[..s.len() - 1].iter().all(|&n| n >= MIN));
        assert_eq!(
            s,
            [
                7406, 23272, 18156, 19639, 18001, 23846, 10054, 35621, 6571, 16834, 8980, 18365,
                30120, 7588, 18286, 37261
            ]
        );
    }

    #[test]
    fn an_insertion_disturbs_only_the_chunks_around_it() {
        let a = noise(400_000, 3);
        let mut b = a[..150_000].to_vec();
        b.extend_from_slice(b"a few inserted bytes");
        b.extend_from_slice(&a[150_000..]);
        let have: std::collections::HashSet<[u8; 32]> =
            cut(&a[..]).map(|c| c.unwrap().sha256).collect();
        let missing: usize = cut(&b[..])
            .map(|c| c.unwrap())
            .filter(|c| !have.contains(&c.sha256))
            .map(|c| c.data.len())
            .sum();
        assert!(missing <= 2 * MAX, "{missing} bytes missing");
        assert!(missing > 0);
    }

    #[test]
    fn empty_and_short_streams() {
        assert!(sizes(&[]).is_empty());
        assert_eq!(sizes(&[1, 2, 3]), [3]);
    }
}

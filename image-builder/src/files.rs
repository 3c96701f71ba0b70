//! Writing the secret files keel makes (signing keys, CA keys): created
//! with their final mode, never over an existing file, and synced.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Write `bytes` to a new file created with `mode` from the start, so that
/// a secret is never readable by others, not even between create and
/// chmod. An existing file is an `AlreadyExists` error, never replaced.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

//! Why an update was refused or failed. Every refusal names its reason;
//! none of them has touched a partition.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad bundle: {0}")]
    Bundle(#[from] keel_formats::bundle::BundleError),
    #[error("bad signature: {0}")]
    Signature(#[from] keel_formats::signed::SignedError),
    #[error(
        "truncated bundle: payload {payload} ends at byte {expected}, the bundle at byte {got}"
    )]
    Truncated {
        payload: &'static str,
        expected: u64,
        got: u64,
    },
    #[error("hash mismatch in payload {payload} at byte offset {offset} of the bundle")]
    HashMismatch { payload: &'static str, offset: u64 },
    #[error("written data differ from the bundle: {partition} at byte offset {offset}")]
    WriteCheck { partition: String, offset: u64 },
    #[error("wrong variant: the bundle is for {bundle:?}, this host runs {host:?}")]
    Variant { bundle: String, host: String },
    #[error("downgrade refused: the bundle is {bundle}, this host runs {running}")]
    Downgrade { bundle: String, running: String },
    #[error("{bundle} may only replace {min} or newer; this host runs {running}")]
    TooOld {
        bundle: String,
        min: String,
        running: String,
    },
    #[error("already running {0}")]
    SameVersion(String),
    #[error("too large for the slot: payload {payload} is {size} bytes, partition {partition} holds {room}")]
    TooLarge {
        payload: &'static str,
        size: u64,
        partition: String,
        room: u64,
    },
    #[error("expired index: it expired at {expires}, it is now {now} (seconds since the epoch)")]
    Expired { expires: u64, now: u64 },
    #[error("replayed index: version {got} is older than version {seen}, seen before")]
    Replayed { got: u64, seen: u64 },
    #[error("repository: {0}")]
    Fetch(String),
    #[error("no slot holds the running root hash {0}")]
    NoBootedSlot(String),
    #[error("{0}")]
    State(String),
}

pub fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> UpdateError + '_ {
    move |source| UpdateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

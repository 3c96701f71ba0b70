//! The client's errors: each carries the URL or host it is about and,
//! where the registry said why, its own words.

use crate::auth::AuthError;
use crate::manifest::ManifestError;
use crate::reference::Digest;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("registry {host}: CA certificate {}: {message}", .index.saturating_add(1))]
    Ca {
        host: String,
        index: usize,
        message: String,
    },
    #[error("registry {host}: {}", chain(.source))]
    Setup {
        host: String,
        source: reqwest::Error,
    },
    #[error("{url}: {}", chain(.source))]
    Http { url: String, source: reqwest::Error },
    #[error("{url}: the connection broke: {source}")]
    Broken { url: String, source: std::io::Error },
    #[error("{url}: HTTP {status}{}", registry_text(.registry))]
    Status {
        url: String,
        status: u16,
        registry: String,
    },
    #[error("{url}: not found{}", registry_text(.registry))]
    NotFound { url: String, registry: String },
    #[error("{url}: unauthorized{}{}", registry_text(.registry), if *.had_credentials { "" } else { " (no credentials for this registry in the host config)" })]
    Unauthorized {
        url: String,
        registry: String,
        had_credentials: bool,
    },
    #[error("{url}: {source}")]
    Auth { url: String, source: AuthError },
    #[error("{url}: {source}")]
    Manifest { url: String, source: ManifestError },
    #[error("{url}: larger than {max} bytes")]
    TooLarge { url: String, max: u64 },
    #[error("{url}: the registry sent {got}, not {want}; refused")]
    Digest {
        url: String,
        want: Digest,
        got: Digest,
    },
    #[error("{url}: {message}")]
    Protocol { url: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{reference}: no registry could serve it: {reasons}")]
    AllFailed { reference: String, reasons: String },
    #[error("{reference}: no registry to pull it from")]
    NoRegistry { reference: String },
}

/// An error with its causes: reqwest's own text ("error sending request")
/// leaves out what went wrong (refused, a certificate, a name).
pub(super) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

fn registry_text(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(": the registry says {text:?}")
    }
}

impl ClientError {
    /// Worth another try at the same registry: the network or the
    /// registry's own trouble, not an answer.
    pub(super) fn is_transient(&self) -> bool {
        match self {
            ClientError::Http { .. } | ClientError::Broken { .. } => true,
            ClientError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// The same at every registry (this host's disk, not theirs): no
    /// mirror or upstream would do better.
    pub(crate) fn is_local(&self) -> bool {
        matches!(
            self,
            ClientError::Store(
                StoreError::Io { .. } | StoreError::Index { .. } | StoreError::NoRoom { .. }
            )
        )
    }
}

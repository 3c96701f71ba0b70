//! The OCI Distribution client: `/v2/` requests with the registry's own
//! authentication (anonymous, basic, or the bearer-token flow its
//! `WWW-Authenticate` challenge asks for), manifests by content
//! negotiation, and blobs streamed into the [`Store`] with their digests
//! checked as they come and Range requests to resume them.
//!
//! One [`Client`] talks to one registry host (an upstream or one of its
//! mirrors); [`pull`] tries a list of them in order, as containerd tries a
//! registry's hosts.

use std::io::Read;
use std::time::Duration;

use reqwest::blocking::{Client as Http, Response};
use reqwest::header::{ACCEPT, CONTENT_RANGE, CONTENT_TYPE, RANGE, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::StatusCode;

use crate::auth::{self, Challenge, Credentials, Scheme, Token};
use crate::manifest::{self, Descriptor, Parsed};
use crate::reference::Digest;
use crate::store::{Store, StoreError};

/// Tries of one request before its error is the pull's: a registry that
/// is restarting or overloaded gets a few seconds, a dead one no more.
const TRIES: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// A registry's Retry-After is honoured up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// An error body is read for its message only.
const MAX_ERROR_BODY: u64 = 64 << 10;
/// What of a registry's error text reaches a message.
const MAX_ERROR_TEXT: usize = 512;
/// No byte for this long is a dead connection (per read, not per blob:
/// a big layer over a slow link takes what it takes).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How to reach one registry host.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Plain http: only for hosts the host config lists as insecure.
    pub insecure: bool,
    /// CA certificates (PEM) trusted besides the webpki roots.
    pub ca_pems: Vec<String>,
    pub credentials: Option<Credentials>,
}

#[derive(Clone)]
enum Auth {
    None,
    Basic,
    Bearer(Token),
}

/// A client of one registry host.
pub struct Client {
    http: Http,
    host: String,
    base: String,
    credentials: Option<Credentials>,
    auth: Auth,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials or the token.
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// Bytes of one blob so far.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    pub digest: &'a Digest,
    pub done: u64,
    pub total: u64,
}

impl Client {
    /// A client of `host` ("registry.example:5000", or "registry-1.docker.io"
    /// for docker.io: see [`Reference::api_host`]).
    pub fn new(host: &str, options: Options) -> Result<Client, ClientError> {
        let mut builder = Http::builder()
            .user_agent(concat!("keel/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(READ_TIMEOUT)
            // A TLS registry may not send a blob's download to plain http.
            .https_only(!options.insecure);
        for (index, pem) in options.ca_pems.iter().enumerate() {
            let ca_err = |message: String| ClientError::Ca {
                host: host.to_string(),
                index,
                message,
            };
            // The bundle reader, not `from_pem`: that one keeps the text
            // unread until the client is built, and trusts nothing, with
            // no error, when it holds no certificate at all.
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| ca_err(chain(&e)))?;
            if certs.is_empty() {
                return Err(ca_err("no PEM certificate in it".into()));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|source| {
            // Bytes that read as a certificate's base64 but are not one fail
            // only here: find which CA by building with each alone.
            let bad = options.ca_pems.iter().position(|pem| {
                reqwest::Certificate::from_pem_bundle(pem.as_bytes()).is_ok_and(|certs| {
                    certs
                        .into_iter()
                        .fold(Http::builder(), |b, c| b.add_root_certificate(c))
                        .build()
                        .is_err()
                })
            });
            match bad {
                Some(index) => ClientError::Ca {
                    host: host.to_string(),
                    index,
                    message: chain(&source),
                },
                None => ClientError::Setup {
                    host: host.to_string(),
                    source,
                },
            }
        })?;
        let scheme = if options.insecure { "http" } else { "https" };
        Ok(Client {
            http,
            host: host.to_string(),
            base: format!("{scheme}://{host}"),
            credentials: options.credentials,
            auth: Auth::None,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub(crate) fn manifest_url(&self, repository: &str, reference: &str) -> String {
        format!("{}/v2/{repository}/manifests/{reference}", self.base)
    }

    /// `GET /v2/`: the registry speaks the API and lets us in.
    pub fn ping(&mut self) -> Result<(), ClientError> {
        let url = format!("{}/v2/", self.base);
        self.retrying(|c| c.get("", &url, None, None).map(drop))
    }

    /// The manifest `reference` (a tag or "sha256:…") of `repository`: its
    /// bytes, its digest (of those bytes) and what they parse to.
    pub fn manifest(
        &mut self,
        repository: &str,
        reference: &str,
    ) -> Result<(Vec<u8>, Digest, Parsed), ClientError> {
        let url = self.manifest_url(repository, reference);
        self.retrying(|c| {
            let resp = c.get(repository, &url, Some(manifest::ACCEPT), None)?;
            let content_type = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let max = u64::try_from(manifest::MAX_MANIFEST).unwrap_or(u64::MAX);
            let body = read_bounded(resp, &url, max)?;
            let digest = Digest::of(&body);
            let parsed = manifest::parse(content_type.as_deref(), &body).map_err(|source| {
                ClientError::Manifest {
                    url: url.clone(),
                    source,
                }
            })?;
            Ok((body, digest, parsed))
        })
    }

    /// Blob `blob` of `repository` into `store`, resuming what an earlier
    /// pull left; the bytes fetched.
    pub fn blob(
        &mut self,
        repository: &str,
        blob: &Descriptor,
        store: &Store,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<u64, ClientError> {
        let digest = &blob.digest;
        let done = |progress: &mut dyn FnMut(Progress<'_>)| {
            progress(Progress {
                digest,
                done: blob.size,
                total: blob.size,
            })
        };
        if store.has(digest) {
            done(progress);
            return Ok(0);
        }
        let mut ingest = store.ingest(digest, blob.size)?;
        if store.has(digest) {
            // Another pull brought it in while this one waited.
            ingest.discard();
            done(progress);
            return Ok(0);
        }
        let url = format!("{}/v2/{repository}/blobs/{digest}", self.base);
        let resumed = ingest.offset() > 0;
        let fetched = self.fetch_into(repository, &url, blob, &mut ingest, progress)?;
        match ingest.commit() {
            // What an earlier try left (another host's bytes, or a tail a
            // power cut tore) was not the blob's: once more from the
            // first byte, before this host is given up on.
            Err(StoreError::Digest { .. }) if resumed => {
                let mut again = store.ingest(digest, blob.size)?;
                again.restart()?;
                let more = self.fetch_into(repository, &url, blob, &mut again, progress)?;
                again.commit()?;
                Ok(fetched.saturating_add(more))
            }
            other => other.map(|()| fetched).map_err(ClientError::from),
        }
    }

    /// The rest of `blob` into `ingest`, from where it stands, trying
    /// again (from where the last try stopped) while failures are
    /// transient; the bytes fetched.
    fn fetch_into(
        &mut self,
        repository: &str,
        url: &str,
        blob: &Descriptor,
        ingest: &mut crate::store::Ingest,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<u64, ClientError> {
        let digest = &blob.digest;
        let mut fetched = 0u64;
        self.retrying(|c| {
            let offset = ingest.offset();
            if offset == blob.size {
                return Ok(());
            }
            let resp = c.get(repository, url, None, (offset > 0).then_some(offset))?;
            if resp.status() == StatusCode::PARTIAL_CONTENT {
                check_content_range(&resp, url, offset, blob.size)?;
            } else if offset > 0 {
                // The registry ignored the Range and sends it all.
                ingest.restart()?;
            }
            let mut body = resp;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = match body.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(source) => {
                        return Err(ClientError::Broken {
                            url: url.to_string(),
                            source,
                        })
                    }
                };
                let chunk = buf.get(..n).unwrap_or_default();
                ingest.write(chunk)?;
                fetched = fetched.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
                progress(Progress {
                    digest,
                    done: ingest.offset(),
                    total: blob.size,
                });
            }
            if ingest.offset() < blob.size {
                // The body ended early: a dropped connection; resume.
                return Err(ClientError::Broken {
                    url: url.to_string(),
                    source: std::io::ErrorKind::UnexpectedEof.into(),
                });
            }
            Ok(())
        })?;
        Ok(fetched)
    }

    /// `f` again while its error is transient, waiting longer each time.
    fn retrying<T>(
        &mut self,
        mut f: impl FnMut(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let mut wait = FIRST_BACKOFF;
        let mut tries = 1;
        loop {
            match f(self) {
                Err(e) if e.is_transient() && tries < TRIES => {
                    std::thread::sleep(wait);
                    wait = wait.saturating_mul(2).min(MAX_BACKOFF);
                    tries = tries.saturating_add(1);
                }
                other => return other,
            }
        }
    }

    /// A GET with the registry's authentication: on a 401 the challenge
    /// says how to authenticate, and the request goes once more; a second
    /// 401 is the answer (wrong credentials are not tried again and again).
    /// `repository` is what a bearer token's scope is for when the
    /// challenge names none ("" for `/v2/` itself).
    fn get(
        &mut self,
        repository: &str,
        url: &str,
        accept: Option<&str>,
        range: Option<u64>,
    ) -> Result<Response, ClientError> {
        let mut authenticated = false;
        loop {
            let mut req = self.http.get(url);
            if let Some(accept) = accept {
                req = req.header(ACCEPT, accept);
            }
            if let Some(offset) = range {
                req = req.header(RANGE, format!("bytes={offset}-"));
            }
            req = match (&self.auth, &self.credentials) {
                (Auth::Bearer(token), _) => req.bearer_auth(&token.token),
                (Auth::Basic, Some(c)) => req.basic_auth(&c.username, Some(&c.password)),
                _ => req,
            };
            let resp = req.send().map_err(|source| ClientError::Http {
                url: url.to_string(),
                source,
            })?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return check_status(resp, url);
            }
            let challenges = challenges(&resp, url)?;
            if authenticated {
                return Err(ClientError::Unauthorized {
                    url: url.to_string(),
                    registry: error_text(resp),
                    had_credentials: self.credentials.is_some(),
                });
            }
            self.authenticate(&challenges, repository, url, resp)?;
            authenticated = true;
        }
    }

    /// Do what a 401's challenges ask: fetch a bearer token from the realm
    /// (with the credentials, if any), or use basic authentication.
    fn authenticate(
        &mut self,
        challenges: &[Challenge],
        repository: &str,
        url: &str,
        resp: Response,
    ) -> Result<(), ClientError> {
        let had_credentials = self.credentials.is_some();
        let unauthorized = |resp: Response| ClientError::Unauthorized {
            url: url.to_string(),
            registry: error_text(resp),
            had_credentials,
        };
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == Scheme::Bearer) {
            let token_url =
                auth::token_url(bearer, repository).map_err(|source| ClientError::Auth {
                    url: url.to_string(),
                    source,
                })?;
            let mut req = self.http.get(&token_url);
            if let Some(c) = &self.credentials {
                req = req.basic_auth(&c.username, Some(&c.password));
            }
            let token_resp = req.send().map_err(|source| ClientError::Http {
                url: token_url.clone(),
                source,
            })?;
            if matches!(
                token_resp.status(),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
            ) {
                return Err(unauthorized(token_resp));
            }
            let token_resp = check_status(token_resp, &token_url)?;
            let max = u64::try_from(auth::MAX_TOKEN_RESPONSE).unwrap_or(u64::MAX);
            let body = read_bounded(token_resp, &token_url, max)?;
            let token = auth::parse_token(&body).map_err(|source| ClientError::Auth {
                url: token_url.clone(),
                source,
            })?;
            self.auth = Auth::Bearer(token);
            return Ok(());
        }
        if challenges.iter().any(|c| c.scheme == Scheme::Basic) && self.credentials.is_some() {
            if matches!(self.auth, Auth::Basic) {
                return Err(unauthorized(resp));
            }
            self.auth = Auth::Basic;
            return Ok(());
        }
        Err(unauthorized(resp))
    }
}

fn challenges(resp: &Response, url: &str) -> Result<Vec<Challenge>, ClientError> {
    let mut all = Vec::new();
    for value in resp.headers().get_all(WWW_AUTHENTICATE) {
        let text = value.to_str().map_err(|_| ClientError::Protocol {
            url: url.to_string(),
            message: "a WWW-Authenticate header that is not text".into(),
        })?;
        all.extend(
            auth::parse_challenges(text).map_err(|source| ClientError::Auth {
                url: url.to_string(),
                source,
            })?,
        );
    }
    Ok(all)
}

/// A response that is not a success becomes the error it means, with the
/// registry's own words.
fn check_status(resp: Response, url: &str) -> Result<Response, ClientError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        // Honour Retry-After (seconds) before the retry loop's own wait.
        let after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        if let Some(after) = after {
            std::thread::sleep(after.min(MAX_BACKOFF));
        }
    }
    let registry = error_text(resp);
    let url = url.to_string();
    Err(if status == StatusCode::NOT_FOUND {
        ClientError::NotFound { url, registry }
    } else {
        ClientError::Status {
            url,
            status: status.as_u16(),
            registry,
        }
    })
}

/// The registry's error text: the `errors` of the Distribution spec's
/// error body ("CODE: message"), else the start of the body; only
/// printable characters, and not much of them.
fn error_text(resp: Response) -> String {
    let mut body = Vec::new();
    let _ = resp.take(MAX_ERROR_BODY).read_to_end(&mut body);
    render_error_body(&body)
}

fn render_error_body(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let text = match serde_json::from_slice::<Body>(body) {
        Ok(b) => b
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_ERROR_TEXT)
        .collect::<String>()
        .trim()
        .to_string()
}

fn read_bounded(resp: Response, url: &str, max: u64) -> Result<Vec<u8>, ClientError> {
    let mut body = Vec::new();
    resp.take(max.saturating_add(1))
        .read_to_end(&mut body)
        .map_err(|source| ClientError::Broken {
            url: url.to_string(),
            source,
        })?;
    if u64::try_from(body.len()).unwrap_or(u64::MAX) > max {
        return Err(ClientError::TooLarge {
            url: url.to_string(),
            max,
        });
    }
    Ok(body)
}

/// A 206 must be the rest of the blob from where we asked.
fn check_content_range(
    resp: &Response,
    url: &str,
    offset: u64,
    size: u64,
) -> Result<(), ClientError> {
    let range = resp
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_range_fits(range, offset, size) {
        return Ok(());
    }
    Err(ClientError::Protocol {
        url: url.to_string(),
        message: format!("asked for bytes from {offset} of {size}, got Content-Range {range:?}"),
    })
}

fn content_range_fits(range: &str, offset: u64, size: u64) -> bool {
    let Some(rest) = range.strip_prefix("bytes ") else {
        return false;
    };
    let Some((span, total)) = rest.split_once('/') else {
        return false;
    };
    let Some((start, end)) = span.split_once('-') else {
        return false;
    };
    let total_ok = total == "*" || total.parse::<u64>().ok() == Some(size);
    let end_ok = end.parse::<u64>().ok() == size.checked_sub(1);
    start.parse::<u64>().ok() == Some(offset) && end_ok && total_ok
}

#[path = "client_error.rs"]
mod error;
use error::chain;
pub use error::ClientError;

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;

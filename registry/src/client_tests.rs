//! The protocol's corners a real registry does not show on demand (a
//! dropped connection, an ignored Range, a 503, a token realm), against a
//! scripted HTTP server on 127.0.0.1. The real registry is tested in
//! tests/tests/registry_pull.rs.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use super::*;
use crate::manifest::OCI_MANIFEST;

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A raw response: status line and headers, then a body (written whole,
/// or cut after `cut` bytes to play a dropped connection).
struct Answer {
    status: &'static str,
    headers: Vec<String>,
    body: Vec<u8>,
    cut: Option<usize>,
}

fn answer(status: &'static str, body: &[u8]) -> Answer {
    Answer {
        status,
        headers: Vec::new(),
        body: body.to_vec(),
        cut: None,
    }
}

type Script = Box<dyn FnMut(&Seen, usize) -> Answer + Send>;

/// Serves `script(request, n)` for the n-th request (from 0), one
/// connection per request; returns the base host and what it saw.
fn serve(mut script: Script) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.trim_end().split_once(':') {
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
            }
            let req = Seen { path, headers };
            log.lock().unwrap().push(req.clone());
            let a = script(&req, n);
            let mut head = format!(
                "HTTP/1.1 {}\r\nContent-Length: {}\r\nConnection: close\r\n",
                a.status,
                a.body.len()
            );
            for h in &a.headers {
                head.push_str(h);
                head.push_str("\r\n");
            }
            head.push_str("\r\n");
            let _ = conn.write_all(head.as_bytes());
            let body = match a.cut {
                Some(cut) => &a.body[..cut],
                None => &a.body[..],
            };
            let _ = conn.write_all(body);
        }
    });
    (host, seen)
}

fn client(host: &str, credentials: Option<Credentials>) -> Client {
    Client::new(
        host,
        Options {
            insecure: true,
            ca_pems: Vec::new(),
            credentials,
        },
    )
    .unwrap()
}

fn creds() -> Credentials {
    Credentials {
        username: "ci".into(),
        password: "s3cret".into(),
    }
}

fn blob_of(bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        digest: Digest::of(bytes),
        size: bytes.len() as u64,
        platform: None,
        annotations: None,
    }
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

fn no_progress() -> impl FnMut(Progress<'_>) {
    |_| {}
}

#[test]
fn wrong_credentials_are_tried_once_not_again_and_again() {
    let (host, seen) = serve(Box::new(|_, _| Answer {
        headers: vec!["WWW-Authenticate: Basic realm=\"Registry\"".into()],
        ..answer(
            "401 Unauthorized",
            br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        )
    }));
    let err = client(&host, Some(creds())).ping().unwrap_err();
    match &err {
        ClientError::Unauthorized {
            registry,
            had_credentials: true,
            ..
        } => assert_eq!(registry, "UNAUTHORIZED: authentication required"),
        other => panic!("{other:?}"),
    }
    // One request without, one with the credentials: no storm.
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].header("authorization").is_none());
    assert!(seen[1]
        .header("authorization")
        .unwrap()
        .starts_with("Basic "));
    // The password is in no message.
    assert!(!err.to_string().contains("s3cret"));
}

#[test]
fn no_credentials_says_so() {
    let (host, _) = serve(Box::new(|_, _| Answer {
        headers: vec!["WWW-Authenticate: Basic realm=\"Registry\"".into()],
        ..answer("401 Unauthorized", b"")
    }));
    let err = client(&host, None).ping().unwrap_err();
    assert!(err.to_string().contains("no credentials"), "{err}");
}

#[test]
fn a_bearer_challenge_is_answered_with_a_token_from_its_realm() {
    let realm = Arc::new(Mutex::new(String::new()));
    let r = realm.clone();
    let (host, seen) = serve(Box::new(move |req, _| {
        if req.path.starts_with("/token") {
            return answer("200 OK", br#"{"token":"tok-123","expires_in":300}"#);
        }
        if req.header("authorization") == Some("Bearer tok-123") {
            return answer("200 OK", b"{}");
        }
        Answer {
            headers: vec![format!(
                "WWW-Authenticate: Bearer realm=\"http://{}/token\",service=\"reg\",scope=\"repository:team/app:pull\"",
                r.lock().unwrap()
            )],
            ..answer("401 Unauthorized", b"")
        }
    }));
    *realm.lock().unwrap() = host.clone();
    client(&host, Some(creds())).ping().unwrap();
    let seen = seen.lock().unwrap();
    let token = seen.iter().find(|s| s.path.starts_with("/token")).unwrap();
    assert_eq!(
        token.path,
        "/token?service=reg&scope=repository%3Ateam%2Fapp%3Apull"
    );
    // The credentials go to the realm only, as Basic.
    assert!(token.header("authorization").unwrap().starts_with("Basic "));
    assert_eq!(
        seen.last().unwrap().header("authorization"),
        Some("Bearer tok-123")
    );
}

#[test]
fn a_server_error_is_tried_again_then_succeeds() {
    let (host, seen) = serve(Box::new(|_, n| {
        if n < 2 {
            answer("503 Service Unavailable", b"busy")
        } else {
            answer("200 OK", b"{}")
        }
    }));
    client(&host, None).ping().unwrap();
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[test]
fn a_server_that_stays_down_is_given_up_on_with_its_words() {
    let (host, seen) = serve(Box::new(|_, _| answer("502 Bad Gateway", b"upstream gone")));
    match client(&host, None).ping().unwrap_err() {
        ClientError::Status {
            status: 502,
            registry,
            ..
        } => assert_eq!(registry, "upstream gone"),
        other => panic!("{other:?}"),
    }
    assert_eq!(seen.lock().unwrap().len(), TRIES as usize);
}

#[test]
fn not_found_is_not_tried_again() {
    let (host, seen) = serve(Box::new(|_, _| {
        answer(
            "404 Not Found",
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#,
        )
    }));
    let err = client(&host, None).manifest("a/b", "9").unwrap_err();
    assert!(matches!(err, ClientError::NotFound { .. }), "{err:?}");
    assert!(err
        .to_string()
        .contains("MANIFEST_UNKNOWN: manifest unknown"));
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn a_dropped_connection_resumes_with_a_range() {
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let data = bytes.clone();
    let (host, seen) = serve(Box::new(move |req, n| {
        if n == 0 {
            return Answer {
                cut: Some(50_000),
                ..answer("200 OK", &data)
            };
        }
        let from: usize = req
            .header("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|r| r.parse().ok())
            .unwrap();
        Answer {
            headers: vec![format!(
                "Content-Range: bytes {from}-{}/{}",
                data.len() - 1,
                data.len()
            )],
            ..answer("206 Partial Content", &data[from..])
        }
    }));
    let (_dir, store) = store();
    let blob = blob_of(&bytes);
    let fetched = client(&host, None)
        .blob("a/b", &blob, &store, &mut no_progress())
        .unwrap();
    assert_eq!(fetched, bytes.len() as u64);
    assert_eq!(store.read(&blob.digest, 1 << 20).unwrap(), bytes);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].header("range"), Some("bytes=50000-"));
}

#[test]
fn a_registry_that_ignores_range_sends_it_all_and_that_is_fine() {
    let bytes = b"0123456789".repeat(1000);
    let (_dir, store) = store();
    let blob = blob_of(&bytes);
    let mut ingest = store.ingest(&blob.digest, blob.size).unwrap();
    ingest.write(&bytes[..4000]).unwrap();
    drop(ingest);
    let data = bytes.clone();
    let (host, seen) = serve(Box::new(move |_, _| answer("200 OK", &data)));
    client(&host, None)
        .blob("a/b", &blob, &store, &mut no_progress())
        .unwrap();
    assert_eq!(store.read(&blob.digest, 1 << 20).unwrap(), bytes);
    assert_eq!(seen.lock().unwrap()[0].header("range"), Some("bytes=4000-"));
}

#[test]
fn a_wrong_content_range_is_refused() {
    let bytes = b"abcdefghij".to_vec();
    let (_dir, store) = store();
    let blob = blob_of(&bytes);
    let mut ingest = store.ingest(&blob.digest, blob.size).unwrap();
    ingest.write(b"abc").unwrap();
    drop(ingest);
    let (host, _) = serve(Box::new(|_, _| Answer {
        headers: vec!["Content-Range: bytes 0-9/10".into()],
        ..answer("206 Partial Content", b"abcdefghij")
    }));
    let err = client(&host, None)
        .blob("a/b", &blob, &store, &mut no_progress())
        .unwrap_err();
    assert!(matches!(err, ClientError::Protocol { .. }), "{err:?}");
    assert!(!store.has(&blob.digest));
}

#[test]
fn a_blob_that_does_not_match_its_digest_is_refused_and_not_kept() {
    let (host, _) = serve(Box::new(|_, _| answer("200 OK", b"evil bytes")));
    let (_dir, store) = store();
    let blob = blob_of(b"good bytes");
    let err = client(&host, None)
        .blob("a/b", &blob, &store, &mut no_progress())
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Store(StoreError::Digest { .. })),
        "{err:?}"
    );
    assert!(!store.has(&blob.digest));
    assert!(std::fs::read_dir(store.root().join("ingest"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn a_blob_longer_than_its_size_is_refused() {
    let (host, _) = serve(Box::new(|_, _| answer("200 OK", b"0123456789ABCDEF")));
    let (_dir, store) = store();
    let blob = blob_of(b"0123456789");
    let err = client(&host, None)
        .blob("a/b", &blob, &store, &mut no_progress())
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Store(StoreError::Size { .. })),
        "{err:?}"
    );
}

#[test]
fn a_huge_manifest_is_refused_before_it_is_all_read() {
    let big = vec![b' '; crate::manifest::MAX_MANIFEST + 10];
    let (host, _) = serve(Box::new(move |_, _| Answer {
        headers: vec![format!("Content-Type: {OCI_MANIFEST}")],
        ..answer("200 OK", &big)
    }));
    let err = client(&host, None).manifest("a/b", "1").unwrap_err();
    assert!(matches!(err, ClientError::TooLarge { .. }), "{err:?}");
}

#[test]
fn error_bodies_become_short_printable_text() {
    assert_eq!(
        render_error_body(br#"{"errors":[{"code":"DENIED","message":"no"},{"code":"X"}]}"#),
        "DENIED: no; X"
    );
    assert_eq!(
        render_error_body(b"plain\x1b[31m text\n"),
        "plain [31m text"
    );
    assert_eq!(render_error_body(&[b'a'; 5000]).len(), MAX_ERROR_TEXT);
}

#[test]
fn content_ranges() {
    assert!(content_range_fits("bytes 5-9/10", 5, 10));
    assert!(content_range_fits("bytes 5-9/*", 5, 10));
    assert!(!content_range_fits("bytes 0-9/10", 5, 10));
    assert!(!content_range_fits("bytes 5-8/10", 5, 10));
    assert!(!content_range_fits("bytes 5-9/11", 5, 10));
    assert!(!content_range_fits("5-9/10", 5, 10));
    assert!(!content_range_fits("", 5, 10));
}

#[test]
fn a_ca_that_is_no_certificate_is_refused_when_the_client_is_made() {
    let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
    for pem in ["not a pem", "", bad_base64] {
        let options = Options {
            ca_pems: vec![pem.to_string()],
            ..Options::default()
        };
        let e = Client::new("r.example", options).unwrap_err();
        assert!(
            matches!(&e, ClientError::Ca { host, index: 0, .. } if host == "r.example"),
            "{pem:?}: {e}"
        );
    }
}

#[test]
fn a_resumed_blob_whose_start_was_wrong_is_fetched_again_whole() {
    let bytes = b"0123456789abcdef".repeat(100);
    let (_dir, store) = store();
    let blob = blob_of(&bytes);
    // Another host (or a torn write) left bytes that are not the blob's.
    let mut ingest = store.ingest(&blob.digest, blob.size).unwrap();
    ingest.write(&[b'X'; 100]).unwrap();
    drop(ingest);
    let data = bytes.clone();
    let (host, seen) = serve(Box::new(move |req, _| match req.header("range") {
        Some(_) => Answer {
            headers: vec![format!(
                "Content-Range: bytes 100-{}/{}",
                data.len() - 1,
                data.len()
            )],
            ..answer("206 Partial Content", &data[100..])
        },
        None => answer("200 OK", &data),
    }));
    client(&host, None)
        .blob("a/b", &blob, &store, &mut no_progress())
        .unwrap();
    assert_eq!(store.read(&blob.digest, 1 << 20).unwrap(), bytes);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].header("range").is_none());
}

#[test]
fn a_challenge_without_a_scope_gets_a_token_for_the_repository_asked_about() {
    let realm = Arc::new(Mutex::new(String::new()));
    let r = realm.clone();
    let (host, seen) = serve(Box::new(move |req, _| {
        if req.path.starts_with("/token") {
            return answer("200 OK", br#"{"token":"t"}"#);
        }
        if req.header("authorization") == Some("Bearer t") {
            return answer("404 Not Found", b"");
        }
        Answer {
            headers: vec![format!(
                "WWW-Authenticate: Bearer realm=\"http://{}/token\"",
                r.lock().unwrap()
            )],
            ..answer("401 Unauthorized", b"")
        }
    }));
    *realm.lock().unwrap() = host.clone();
    // A repository whose name holds "manifests": the scope is the whole name.
    let err = client(&host, None)
        .manifest("team/manifests/app", "1")
        .unwrap_err();
    assert!(matches!(err, ClientError::NotFound { .. }), "{err:?}");
    let seen = seen.lock().unwrap();
    let token = seen.iter().find(|s| s.path.starts_with("/token")).unwrap();
    assert_eq!(
        token.path,
        "/token?scope=repository%3Ateam%2Fmanifests%2Fapp%3Apull"
    );
}

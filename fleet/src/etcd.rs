//! A client for etcd's v3 API through its JSON gateway (`/v3/kv/range`,
//! `/v3/kv/txn`, `/v3/lease/grant`, …), which every etcd since 3.3
//! serves on its client port. Written here rather than taken from a
//! crate: the maintained etcd clients (etcd-client) are gRPC over tonic
//! and tokio, which would more than double keel-update's size for the
//! seven calls keel makes, while reqwest, already in keel-update for the
//! repository, speaks this gateway as it is.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use crate::kv::{KeyValue, Kv, LeaseId};

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd endpoint {0:?} is not an http:// or https:// URL")]
    Endpoint(String),
    #[error("etcd TLS {what}: {error}")]
    Tls { what: &'static str, error: String },
    #[error("etcd is unreachable: {}", .tried.join("; "))]
    Unreachable { tried: Vec<String> },
    #[error("etcd at {endpoint} refused {call}: HTTP {status}: {message}")]
    Refused {
        endpoint: String,
        call: &'static str,
        status: u16,
        message: String,
    },
    #[error("etcd at {endpoint} answered {call} with what is not its reply: {error}")]
    Reply {
        endpoint: String,
        call: &'static str,
        error: String,
    },
}

/// PEM text for TLS to etcd.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    /// The CA that signed etcd's certificate; none: the web's roots.
    pub ca: Option<String>,
    /// The client certificate and its key, for `--client-cert-auth`.
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// An etcd cluster reached through any of its endpoints.
#[derive(Debug)]
pub struct Etcd {
    endpoints: Vec<String>,
    http: reqwest::blocking::Client,
    /// The endpoint that answered last, tried first.
    current: AtomicUsize,
    /// Requests made, for the fleet bench's per-host rate.
    requests: AtomicU64,
}

/// etcd's JSON encodes 64-bit integers as strings, and leaves out zeros.
fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => s.parse().map_err(serde::de::Error::custom),
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a 64-bit integer"))),
        other => Err(serde::de::Error::custom(format!(
            "{other} is not an integer"
        ))),
    }
}

#[derive(Deserialize)]
struct Header {
    #[serde(default, deserialize_with = "int")]
    revision: i64,
}

#[derive(Deserialize)]
struct RawKv {
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "int")]
    lease: i64,
    #[serde(default, deserialize_with = "int")]
    create_revision: i64,
    #[serde(default, deserialize_with = "int")]
    mod_revision: i64,
}

#[derive(Deserialize)]
struct RangeReply {
    header: Header,
    #[serde(default)]
    kvs: Vec<RawKv>,
    #[serde(default, deserialize_with = "int")]
    count: i64,
}

#[derive(Deserialize)]
struct TxnReply {
    #[serde(default)]
    succeeded: bool,
}

#[derive(Deserialize)]
struct GrantReply {
    #[serde(rename = "ID", deserialize_with = "int")]
    id: i64,
}

#[derive(Deserialize)]
struct KeepAliveResult {
    #[serde(rename = "TTL", default, deserialize_with = "int")]
    ttl: i64,
}

#[derive(Deserialize)]
struct KeepAliveReply {
    result: KeepAliveResult,
}

#[derive(Deserialize)]
struct Ignored {}

fn b64(s: &str) -> String {
    B64.encode(s)
}

/// The key just past every key that starts with `prefix` (etcd's
/// `range_end` for a prefix).
fn prefix_end(prefix: &str) -> String {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last.saturating_add(1));
            return B64.encode(end);
        }
    }
    // Every byte 0xff, or empty: to the end of the keyspace.
    B64.encode([0u8])
}

impl Etcd {
    pub fn new(endpoints: &[String], tls: &Tls) -> Result<Etcd, EtcdError> {
        let mut eps = Vec::new();
        for e in endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(EtcdError::Endpoint(e.clone()));
            }
            eps.push(e.trim_end_matches('/').to_string());
        }
        if eps.is_empty() {
            return Err(EtcdError::Endpoint(String::new()));
        }
        let mut b = reqwest::blocking::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15));
        if let Some(ca) = &tls.ca {
            let certs = reqwest::Certificate::from_pem_bundle(ca.as_bytes()).map_err(|e| {
                EtcdError::Tls {
                    what: "CA certificate",
                    error: e.to_string(),
                }
            })?;
            if certs.is_empty() {
                return Err(EtcdError::Tls {
                    what: "CA certificate",
                    error: "the PEM text holds no certificate".into(),
                });
            }
            b = b.tls_built_in_root_certs(false);
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => {
                let pem = format!("{cert}\n{key}");
                let id =
                    reqwest::Identity::from_pem(pem.as_bytes()).map_err(|e| EtcdError::Tls {
                        what: "client certificate and key",
                        error: e.to_string(),
                    })?;
                b = b.identity(id);
            }
            (None, None) => {}
            _ => {
                return Err(EtcdError::Tls {
                    what: "client certificate",
                    error: "a certificate needs its key and a key its certificate".into(),
                })
            }
        }
        let http = b.build().map_err(|e| EtcdError::Tls {
            what: "client",
            error: e.to_string(),
        })?;
        Ok(Etcd {
            endpoints: eps,
            http,
            current: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
        })
    }

    /// Requests made so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// POST `body` to `path` on the first endpoint that answers.
    fn call<T: DeserializeOwned>(
        &self,
        call: &'static str,
        path: &str,
        body: &Value,
    ) -> Result<T, EtcdError> {
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut tried = Vec::new();
        for i in 0..n {
            let at = (first + i) % n;
            let endpoint = &self.endpoints[at];
            self.requests.fetch_add(1, Ordering::Relaxed);
            let resp = match self
                .http
                .post(format!("{endpoint}{path}"))
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
            {
                Ok(r) => r,
                Err(e) => {
                    // The whole chain: reqwest's top error says only
                    // "error sending request".
                    let mut msg = e.to_string();
                    let mut src = std::error::Error::source(&e);
                    while let Some(s) = src {
                        msg = format!("{msg}: {s}");
                        src = s.source();
                    }
                    tried.push(format!("{endpoint}: {msg}"));
                    continue;
                }
            };
            self.current.store(at, Ordering::Relaxed);
            let status = resp.status();
            let text = resp.text().map_err(|e| EtcdError::Reply {
                endpoint: endpoint.clone(),
                call,
                error: e.to_string(),
            })?;
            if !status.is_success() {
                let message = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v.get("message").and_then(Value::as_str).map(String::from))
                    .unwrap_or_else(|| text.chars().take(200).collect());
                return Err(EtcdError::Refused {
                    endpoint: endpoint.clone(),
                    call,
                    status: status.as_u16(),
                    message,
                });
            }
            return serde_json::from_str(&text).map_err(|e| EtcdError::Reply {
                endpoint: endpoint.clone(),
                call,
                error: e.to_string(),
            });
        }
        Err(EtcdError::Unreachable { tried })
    }

    fn decode(&self, call: &'static str, raw: RawKv) -> Result<KeyValue, EtcdError> {
        let bad = |e: String| EtcdError::Reply {
            endpoint: self.endpoints[self.current.load(Ordering::Relaxed) % self.endpoints.len()]
                .clone(),
            call,
            error: e,
        };
        let key = B64.decode(&raw.key).map_err(|e| bad(format!("key: {e}")))?;
        let key = String::from_utf8(key).map_err(|e| bad(format!("key: {e}")))?;
        let value = B64
            .decode(&raw.value)
            .map_err(|e| bad(format!("value of {key}: {e}")))?;
        Ok(KeyValue {
            key,
            value,
            lease: raw.lease,
            create_revision: raw.create_revision,
            mod_revision: raw.mod_revision,
        })
    }

    /// How many keys under `prefix` existed at `revision` (0: now), and
    /// the store's revision then. Reads history: what the fleet test and
    /// bench use to check that no more hosts than allowed ever held a
    /// reboot slot together.
    pub fn count_at(&self, prefix: &str, revision: i64) -> Result<(u64, i64), EtcdError> {
        let r: RangeReply = self.call(
            "range",
            "/v3/kv/range",
            &json!({"key": b64(prefix), "range_end": prefix_end(prefix),
                    "revision": revision, "count_only": true}),
        )?;
        Ok((u64::try_from(r.count).unwrap_or(0), r.header.revision))
    }
}

impl Kv for Etcd {
    fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, EtcdError> {
        let r: RangeReply = self.call(
            "range",
            "/v3/kv/range",
            &json!({"key": b64(prefix), "range_end": prefix_end(prefix)}),
        )?;
        r.kvs.into_iter().map(|k| self.decode("range", k)).collect()
    }

    fn put(&self, key: &str, value: &[u8], lease: LeaseId) -> Result<(), EtcdError> {
        let _: Ignored = self.call(
            "put",
            "/v3/kv/put",
            &json!({"key": b64(key), "value": B64.encode(value), "lease": lease.to_string()}),
        )?;
        Ok(())
    }

    fn create(&self, key: &str, value: &[u8], lease: LeaseId) -> Result<bool, EtcdError> {
        let r: TxnReply = self.call(
            "txn",
            "/v3/kv/txn",
            &json!({
                "compare": [{"key": b64(key), "result": "EQUAL", "target": "CREATE",
                             "create_revision": "0"}],
                "success": [{"request_put": {"key": b64(key), "value": B64.encode(value),
                                             "lease": lease.to_string()}}],
            }),
        )?;
        Ok(r.succeeded)
    }

    fn delete_if(&self, key: &str, value: &[u8]) -> Result<bool, EtcdError> {
        let r: TxnReply = self.call(
            "txn",
            "/v3/kv/txn",
            &json!({
                "compare": [{"key": b64(key), "result": "EQUAL", "target": "VALUE",
                             "value": B64.encode(value)}],
                "success": [{"request_delete_range": {"key": b64(key)}}],
            }),
        )?;
        Ok(r.succeeded)
    }

    fn grant(&self, ttl_s: u64) -> Result<LeaseId, EtcdError> {
        let r: GrantReply = self.call(
            "lease grant",
            "/v3/lease/grant",
            &json!({"TTL": ttl_s.to_string()}),
        )?;
        Ok(r.id)
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<Option<u64>, EtcdError> {
        let r: KeepAliveReply = self.call(
            "lease keepalive",
            "/v3/lease/keepalive",
            &json!({"ID": lease.to_string()}),
        )?;
        Ok(u64::try_from(r.result.ttl).ok().filter(|t| *t > 0))
    }

    fn revoke(&self, lease: LeaseId) -> Result<(), EtcdError> {
        match self.call::<Ignored>(
            "lease revoke",
            "/v3/lease/revoke",
            &json!({"ID": lease.to_string()}),
        ) {
            // Gone already: what revoking wanted.
            Err(EtcdError::Refused { status: 404, .. }) => Ok(()),
            r => r.map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(B64.decode(prefix_end("/keel/")).unwrap(), b"/keel0");
        assert_eq!(B64.decode(prefix_end("a\u{7f}")).unwrap(), b"a\x80");
        assert_eq!(B64.decode(prefix_end("")).unwrap(), b"\0");
    }

    #[test]
    fn integers_as_etcd_writes_them() {
        let r: RangeReply = serde_json::from_str(
            r#"{"header":{"revision":"12"},"kvs":[{"key":"YQ==","value":"Yg==","lease":"7587","create_revision":"3","mod_revision":4}],"count":"1"}"#,
        )
        .unwrap();
        assert_eq!((r.header.revision, r.count, r.kvs[0].lease), (12, 1, 7587));
        let r: RangeReply = serde_json::from_str(r#"{"header":{}}"#).unwrap();
        assert_eq!((r.header.revision, r.count, r.kvs.len()), (0, 0, 0));
        assert!(serde_json::from_str::<GrantReply>(r#"{"ID":"x"}"#).is_err());
        let k: KeepAliveReply = serde_json::from_str(r#"{"result":{"ID":"5"}}"#).unwrap();
        assert_eq!(k.result.ttl, 0, "an expired lease comes back without a TTL");
    }

    #[test]
    fn endpoints_must_be_urls() {
        assert!(matches!(
            Etcd::new(&["10.0.0.1:2379".into()], &Tls::default()),
            Err(EtcdError::Endpoint(e)) if e == "10.0.0.1:2379"
        ));
        assert!(matches!(
            Etcd::new(
                &["https://e:2379".into()],
                &Tls {
                    ca: Some("junk".into()),
                    ..Tls::default()
                }
            ),
            Err(EtcdError::Tls {
                what: "CA certificate",
                ..
            })
        ));
    }
}

//! The server: TLS with client certificates in front of the host's local
//! APIs. A connection carries one request line; keel-remote checks that
//! the client's role may make it, then passes the request (as it parsed
//! it, never the client's bytes) to keel-init or keel-update and the
//! answer back. Everything a client sends is hostile: a line is read
//! with a size bound and a timeout, connections are bounded in number,
//! and nothing a client does stops the server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_api::remote::{allows, RemoteRequest};
use keel_api::wire::{MAX_ANSWER, MAX_REQUEST};
use keel_formats::pki::{REMOTE_CA, REMOTE_CERT, REMOTE_KEY};

use crate::tls::{self, Material, Peer, Pem, TlsError};

/// Connections served at once; more are closed as they come.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to finish the handshake and send its
/// request, or to take an answer's bytes.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The host's local APIs: the seam between the gateway and the host.
pub trait Local: Send + Sync {
    /// Send `line` to the API `req` is for; the answer comes on the stream.
    fn open(&self, req: &RemoteRequest, line: &[u8]) -> std::io::Result<Box<dyn Read>>;
}

/// The real APIs, on their Unix sockets.
#[derive(Debug)]
pub struct Sockets {
    pub init: String,
    pub update: String,
}

impl Local for Sockets {
    fn open(&self, req: &RemoteRequest, line: &[u8]) -> std::io::Result<Box<dyn Read>> {
        let socket = match req {
            RemoteRequest::Init(_) => &self.init,
            RemoteRequest::Update(_) => &self.update,
        };
        let s = UnixStream::connect(socket)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{socket}: {e}")))?;
        keel_api::wire::send(&s, line, &[])?;
        Ok(Box::new(s))
    }
}

/// The request's name as its API spells it (`reboot`, `status`), for the
/// log: never its arguments, which may hold a config's secrets.
fn request_name(req: &RemoteRequest) -> String {
    let (api, v, tag) = match req {
        RemoteRequest::Init(r) => ("init", serde_json::to_value(r), "cmd"),
        RemoteRequest::Update(r) => ("update", serde_json::to_value(r), "op"),
    };
    let name = v
        .ok()
        .and_then(|v| v.get(tag).and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_default();
    format!("{api} {name}")
}

/// One exchange on an authenticated stream: read the request, decide,
/// forward or refuse. Returns the line to log.
pub fn exchange(stream: &mut (impl Read + Write), peer: &Peer, local: &dyn Local) -> String {
    let who = match peer.role {
        Some(r) => format!("{} ({})", peer.name, r.name()),
        None => format!("{} (no role)", peer.name),
    };
    let mut line = Vec::new();
    // The bound: a longer line is cut and then fails to parse.
    let limit = u64::try_from(MAX_REQUEST).unwrap_or(u64::MAX);
    if let Err(e) = BufReader::new((&mut *stream).take(limit)).read_until(b'\n', &mut line) {
        return format!("{who}: reading the request: {e}");
    }
    let req: RemoteRequest = match serde_json::from_slice(&line) {
        Ok(r) => r,
        Err(e) => {
            let why = format!("bad request: {e}");
            let answer = RemoteRequest::Init(keel_api::init::Request::Status).refusal(&why);
            let _ = stream.write_all(&answer);
            return format!("{who}: {why}");
        }
    };
    let what = request_name(&req);
    let verdict = match (req.needs(), peer.role) {
        (Err(e), _) => Err(e.to_string()),
        (Ok(_), None) => Err(format!(
            "the client certificate of {} grants no role (its subject's O must be {} or {})",
            peer.name,
            keel_formats::pki::Role::Admin.organization(),
            keel_formats::pki::Role::ReadOnly.organization()
        )),
        (Ok(need), Some(have)) if !allows(have, need) => Err(format!(
            "{what} needs the {} role; {} has {}",
            need.name(),
            peer.name,
            have.name()
        )),
        (Ok(_), Some(_)) => Ok(()),
    };
    if let Err(why) = verdict {
        let _ = stream.write_all(&req.refusal(&why));
        return format!("{who}: {what}: refused: {why}");
    }
    let inner = match &req {
        RemoteRequest::Init(r) => serde_json::to_vec(r),
        RemoteRequest::Update(r) => serde_json::to_vec(r),
    };
    let mut forward = inner.unwrap_or_default();
    forward.push(b'\n');
    let answer = match local.open(&req, &forward) {
        Ok(a) => a,
        Err(e) => {
            let why = format!("reaching the host's API: {e}");
            let _ = stream.write_all(&req.refusal(&why));
            return format!("{who}: {what}: {why}");
        }
    };
    let copied = match req {
        // keel-update answers one line, then waits for the caller to hang
        // up before it reboots: take the line and hang up.
        RemoteRequest::Update(_) => {
            let mut one = Vec::new();
            BufReader::new(answer.take(MAX_ANSWER))
                .read_until(b'\n', &mut one)
                .and_then(|_| stream.write_all(&one))
        }
        // keel-init's answer may be many lines (an image pull's events):
        // all of it, until it hangs up.
        RemoteRequest::Init(_) => std::io::copy(&mut answer.take(MAX_ANSWER), stream).map(|_| ()),
    };
    match copied.and_then(|()| stream.flush()) {
        Ok(()) => format!("{who}: {what}"),
        Err(e) => format!("{who}: {what}: passing the answer on: {e}"),
    }
}

/// The TLS material keel-init wrote to `dir`, read for each connection so
/// that a config that changes it takes effect at once.
fn load(dir: &Path) -> Result<rustls::ServerConfig, String> {
    let read = |f: &str| {
        let p = dir.join(f);
        std::fs::read(&p)
            .map(|b| (p.display().to_string(), b))
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let (ca, cert, key) = (read(REMOTE_CA)?, read(REMOTE_CERT)?, read(REMOTE_KEY)?);
    fn pem((what, text): &(String, Vec<u8>)) -> Pem<'_> {
        Pem {
            what: what.as_str(),
            text: text.as_slice(),
        }
    }
    let m = Material {
        ca: pem(&ca),
        cert: pem(&cert),
        key: pem(&key),
    };
    tls::server_config(&m).map_err(|e: TlsError| e.to_string())
}

fn connection(tcp: TcpStream, from: SocketAddr, dir: &Path, local: &dyn Local) -> String {
    let timeouts = tcp
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| tcp.set_write_timeout(Some(IO_TIMEOUT)));
    if let Err(e) = timeouts {
        return format!("{from}: {e}");
    }
    let config = match load(dir) {
        Ok(c) => c,
        Err(e) => return format!("{from}: not serving: {e}"),
    };
    let conn = match rustls::ServerConnection::new(Arc::new(config)) {
        Ok(c) => c,
        Err(e) => return format!("{from}: {e}"),
    };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
            return format!("{from}: TLS handshake: {e}");
        }
    }
    // rustls verified the chain against the trusted CAs; without a
    // certificate there would have been no handshake.
    let Some(der) = tls.conn.peer_certificates().and_then(|c| c.first()) else {
        return format!("{from}: no client certificate");
    };
    let peer = match tls::peer(der) {
        Ok(p) => p,
        Err(e) => return format!("{from}: {e}"),
    };
    let said = exchange(&mut tls, &peer, local);
    tls.conn.send_close_notify();
    let _ = tls.flush();
    format!("{from}: {said}")
}

/// Serve `listener` until the process ends, with the TLS material in
/// `dir`.
pub fn serve(listener: &TcpListener, dir: PathBuf, local: Arc<dyn Local>) {
    let active = Arc::new(AtomicUsize::new(0));
    let dir = Arc::new(dir);
    for conn in listener.incoming() {
        let tcp = match conn {
            Ok(t) => t,
            // Out of fds, or a connection reset before it was taken:
            // wait a little rather than spin.
            Err(e) => {
                eprintln!("keel-remote: accepting: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let from = match tcp.peer_addr() {
            Ok(a) => a,
            Err(_) => continue,
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            eprintln!("keel-remote: {from}: {MAX_CONNECTIONS} connections already; closed");
            continue;
        }
        let (active, dir, local) = (Arc::clone(&active), Arc::clone(&dir), Arc::clone(&local));
        let spawned = std::thread::Builder::new().spawn(move || {
            let said = connection(tcp, from, &dir, local.as_ref());
            eprintln!("keel-remote: {said}");
            active.fetch_sub(1, Ordering::SeqCst);
        });
        if let Err(e) = spawned {
            eprintln!("keel-remote: {from}: no thread for it: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::sync::Mutex;

    use keel_formats::pki::Role;

    use super::*;

    /// The local APIs, answering `answer` and keeping what they were sent.
    struct Fake {
        answer: Vec<u8>,
        got: Mutex<Vec<String>>,
    }

    impl Local for Fake {
        fn open(&self, _: &RemoteRequest, line: &[u8]) -> std::io::Result<Box<dyn Read>> {
            self.got
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(line).into_owned());
            Ok(Box::new(Cursor::new(self.answer.clone())))
        }
    }

    /// A client's bytes in, the server's out.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Duplex {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(b)
        }
    }

    impl Write for Duplex {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.output.write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn run(line: &str, role: Option<Role>) -> (String, Vec<String>, String) {
        let fake = Fake {
            answer: b"{\"ok\":1}\n{\"more\":2}\n".to_vec(),
            got: Mutex::new(Vec::new()),
        };
        let mut d = Duplex {
            input: Cursor::new(line.as_bytes().to_vec()),
            output: Vec::new(),
        };
        let peer = Peer {
            name: "ops".into(),
            role,
        };
        let log = exchange(&mut d, &peer, &fake);
        let got = fake.got.into_inner().unwrap();
        (String::from_utf8(d.output).unwrap(), got, log)
    }

    #[test]
    fn an_admin_reboots_and_the_request_is_passed_as_parsed() {
        let (out, got, log) = run(
            "{\"init\":{\"cmd\":\"reboot\"}}\n{\"junk\"",
            Some(Role::Admin),
        );
        assert_eq!(got, ["{\"cmd\":\"reboot\"}\n"]);
        assert_eq!(out, "{\"ok\":1}\n{\"more\":2}\n");
        assert_eq!(log, "ops (admin): init reboot");
    }

    #[test]
    fn read_only_may_look_but_not_reboot() {
        let (out, got, _) = run("{\"init\":{\"cmd\":\"status\"}}\n", Some(Role::ReadOnly));
        assert_eq!(got.len(), 1);
        assert!(out.starts_with("{\"ok\""), "{out}");
        let (out, got, log) = run("{\"init\":{\"cmd\":\"reboot\"}}\n", Some(Role::ReadOnly));
        assert!(got.is_empty(), "a refused request reached the host");
        assert_eq!(
            out,
            "{\"error\":\"init reboot needs the admin role; ops has read-only\"}\n"
        );
        assert!(log.contains("refused"), "{log}");
        let (_, got, _) = run("{\"update\":{\"op\":\"check\"}}\n", Some(Role::ReadOnly));
        assert!(got.is_empty());
    }

    #[test]
    fn update_answers_are_one_line() {
        let (out, got, _) = run("{\"update\":{\"op\":\"status\"}}\n", Some(Role::ReadOnly));
        assert_eq!(got, ["{\"op\":\"status\"}\n"]);
        assert_eq!(out, "{\"ok\":1}\n");
    }

    #[test]
    fn no_role_bad_lines_and_fd_requests_reach_nothing() {
        for (line, role, want) in [
            ("{\"init\":{\"cmd\":\"status\"}}\n", None, "grants no role"),
            ("not json\n", Some(Role::Admin), "bad request"),
            (
                "{\"init\":{\"cmd\":\"shell\"}}\n",
                Some(Role::Admin),
                "bad request",
            ),
            (
                "{\"init\":{\"cmd\":\"stop\",\"name\":\"a\",\"x\":1}}\n",
                Some(Role::Admin),
                "bad request",
            ),
            (
                "{\"init\":{\"cmd\":\"exec\",\"name\":\"web\",\"argv\":[\"/bin/sh\"]}}\n",
                Some(Role::Admin),
                "use `ssh`",
            ),
            (
                "{\"update\":{\"op\":\"apply_fd\"}}\n",
                Some(Role::Admin),
                "publish the bundle",
            ),
            ("", Some(Role::Admin), "bad request"),
        ] {
            let (out, got, _) = run(line, role);
            assert!(got.is_empty(), "{line:?} reached the host");
            assert!(out.contains(want), "{line:?}: {out}");
            assert!(out.ends_with('\n'), "{out}");
        }
        let long = format!(
            "{{\"init\":{{\"cmd\":\"logs\",\"name\":\"{}\"",
            "a".repeat(MAX_REQUEST)
        );
        let (out, got, _) = run(&long, Some(Role::Admin));
        assert!(got.is_empty());
        assert!(out.contains("bad request"), "{out}");
    }
}

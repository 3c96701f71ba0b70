//! The server: TLS with client certificates in front of the host's local
//! APIs. A connection carries one request line; keel-remote checks that
//! the client's role may make it, then passes the request (as it parsed
//! it, never the client's bytes) to keel-init or keel-update and the
//! answer back. Everything a client sends is hostile: a line is read
//! with a size bound and a timeout, connections are bounded in number,
//! and nothing a client does stops the server.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_api::remote::{allows, RemoteRequest};
use keel_api::wire::{MAX_ANSWER, MAX_REQUEST};
use keel_formats::pki::{REMOTE_CA, REMOTE_CERT, REMOTE_KEY};

use crate::tls::{self, Material, Peer, Pem, TlsError};

/// Connections served at once; more are closed as they come.
pub const MAX_CONNECTIONS: usize = 32;
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

/// Read one request line from `stream`, at most [`MAX_REQUEST`] bytes
/// (a longer one is cut, and then fails to parse), giving up at
/// `deadline` however slowly the bytes come: the socket's read timeout is
/// set to the time left before each read.
fn read_line(
    stream: &mut (impl Read + Write),
    sock: &dyn Fn(Duration) -> std::io::Result<()>,
    deadline: Instant,
) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1024];
    while line.len() < MAX_REQUEST && !line.contains(&b'\n') {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no whole request line in time",
            ));
        }
        sock(left)?;
        let room = MAX_REQUEST.saturating_sub(line.len()).min(byte.len());
        match stream.read(&mut byte[..room]) {
            Ok(0) => break,
            Ok(n) => line.extend_from_slice(byte.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    // What follows the newline is not part of the request.
    if let Some(end) = line.iter().position(|b| *b == b'\n') {
        line.truncate(end);
    }
    Ok(line)
}

/// One exchange on an authenticated stream: decide on `line`, then
/// forward it or refuse. `log` gets who asked what and the verdict before
/// anything is forwarded (a reboot may end this process before the
/// answer), and a line for a forward that failed.
pub fn exchange(
    line: &[u8],
    stream: &mut impl Write,
    peer: &Peer,
    local: &dyn Local,
    log: &dyn Fn(String),
) {
    // {:?}: a common name is the CA's to choose, and must not forge lines.
    let who = match peer.role {
        Some(r) => format!("{:?} ({})", peer.name, r.name()),
        None => format!("{:?} (no role)", peer.name),
    };
    let req: RemoteRequest = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => {
            let answer = RemoteRequest::Init(keel_api::init::Request::Status)
                .refusal(&format!("bad request: {e}"));
            let _ = stream.write_all(&answer);
            // Not serde's message: it quotes what the client sent.
            return log(format!("{who}: bad request ({} bytes)", line.len()));
        }
    };
    let what = request_name(&req);
    let verdict = match (req.needs(), peer.role) {
        (Err(e), _) => Err(e.to_string()),
        (Ok(_), None) => Err(format!(
            "the client certificate of {:?} grants no role (its subject's O must be {} or {})",
            peer.name,
            keel_formats::pki::Role::Admin.organization(),
            keel_formats::pki::Role::ReadOnly.organization()
        )),
        (Ok(need), Some(have)) if !allows(have, need) => Err(format!(
            "{what} needs the {} role; {:?} has {}",
            need.name(),
            peer.name,
            have.name()
        )),
        (Ok(_), Some(_)) => Ok(()),
    };
    if let Err(why) = verdict {
        let _ = stream.write_all(&req.refusal(&why));
        return log(format!("{who}: {what}: refused: {why}"));
    }
    log(format!("{who}: {what}"));
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
            return log(format!("{who}: {what}: {why}"));
        }
    };
    let copied = if req.answers_with_events() {
        // An image request's events come as they happen, until keel-init
        // hangs up.
        std::io::copy(&mut answer.take(MAX_ANSWER), stream).map(|_| ())
    } else {
        // One line. Taken whole before the client sees a byte: keel-init
        // answers from its main loop, which a client that reads slowly
        // must not hold up. keel-update waits for its caller to hang up
        // before it reboots: dropping the answer stream does that.
        let mut one = Vec::new();
        BufReader::new(answer.take(MAX_ANSWER))
            .read_until(b'\n', &mut one)
            .and_then(|_| stream.write_all(&one))
    };
    if let Err(e) = copied.and_then(|()| stream.flush()) {
        log(format!("{who}: {what}: passing the answer on: {e}"));
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

/// Connections from one address at once: a client that holds many open
/// cannot shut out the others.
pub const MAX_PER_ADDRESS: usize = 4;

/// Counts of connections, in all and by address; a [`Slot`] is one.
#[derive(Debug, Default)]
struct Slots {
    by_address: HashMap<IpAddr, usize>,
    all: usize,
}

/// One connection's place, given back when it is dropped (the thread
/// ended, panicked, or never started).
struct Slot {
    slots: Arc<Mutex<Slots>>,
    address: IpAddr,
}

impl Slot {
    fn take(slots: &Arc<Mutex<Slots>>, address: IpAddr) -> Option<Slot> {
        let mut s = slots.lock().ok()?;
        let here = s.by_address.get(&address).copied().unwrap_or(0);
        if s.all >= MAX_CONNECTIONS || here >= MAX_PER_ADDRESS {
            return None;
        }
        s.all = s.all.saturating_add(1);
        s.by_address.insert(address, here.saturating_add(1));
        Some(Slot {
            slots: Arc::clone(slots),
            address,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut s) = self.slots.lock() {
            s.all = s.all.saturating_sub(1);
            if let Some(n) = s.by_address.get_mut(&self.address) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    s.by_address.remove(&self.address);
                }
            }
        }
    }
}

fn connection(tcp: TcpStream, from: SocketAddr, dir: &Path, local: &dyn Local) {
    let log = |m: String| eprintln!("keel-remote: {from}: {m}");
    // One deadline for the handshake and the request line together,
    // however slowly a client sends.
    // checked_add: IO_TIMEOUT is 30 s, which no clock overflows on.
    let now = Instant::now();
    let deadline = now.checked_add(IO_TIMEOUT).unwrap_or(now);
    if let Err(e) = tcp.set_write_timeout(Some(IO_TIMEOUT)) {
        return log(e.to_string());
    }
    let config = match load(dir) {
        Ok(c) => c,
        Err(e) => return log(format!("not serving: {e}")),
    };
    let conn = match rustls::ServerConnection::new(Arc::new(config)) {
        Ok(c) => c,
        Err(e) => return log(e.to_string()),
    };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        let left = deadline.saturating_duration_since(Instant::now());
        let step = if left.is_zero() {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "too slow",
            ))
        } else {
            tls.sock
                .set_read_timeout(Some(left))
                .and_then(|()| tls.conn.complete_io(&mut tls.sock).map(|_| ()))
        };
        if let Err(e) = step {
            return log(format!("TLS handshake: {e}"));
        }
    }
    // rustls verified the chain against the trusted CAs; without a
    // certificate there would have been no handshake.
    let Some(der) = tls.conn.peer_certificates().and_then(|c| c.first()) else {
        return log("no client certificate".into());
    };
    let peer = match tls::peer(der) {
        Ok(p) => p,
        Err(e) => return log(e.to_string()),
    };
    let sock = match tls.sock.try_clone() {
        Ok(s) => s,
        Err(e) => return log(e.to_string()),
    };
    let set = |left: Duration| sock.set_read_timeout(Some(left));
    let line = match read_line(&mut tls, &set, deadline) {
        Ok(l) => l,
        Err(e) => return log(format!("{:?}: reading the request: {e}", peer.name)),
    };
    // The answer may take long (an image pull): no deadline on it, only
    // the write timeout for a client that stops reading.
    let _ = sock.set_read_timeout(None);
    exchange(&line, &mut tls, &peer, local, &log);
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

/// Serve `listener` until the process ends, with the TLS material in
/// `dir`.
pub fn serve(listener: &TcpListener, dir: PathBuf, local: Arc<dyn Local>) {
    let slots = Arc::new(Mutex::new(Slots::default()));
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
        let Ok(from) = tcp.peer_addr() else { continue };
        let Some(slot) = Slot::take(&slots, from.ip()) else {
            eprintln!(
                "keel-remote: {from}: too many connections ({MAX_PER_ADDRESS} from one address, {MAX_CONNECTIONS} in all); closed"
            );
            continue;
        };
        let (dir, local) = (Arc::clone(&dir), Arc::clone(&local));
        let spawned = std::thread::Builder::new().spawn(move || {
            let _slot = slot;
            connection(tcp, from, &dir, local.as_ref());
        });
        if let Err(e) = spawned {
            eprintln!("keel-remote: {from}: no thread for it: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::io::Cursor;

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

    /// What the client got, what reached the host, what was logged.
    fn run(line: &str, role: Option<Role>) -> (String, Vec<String>, Vec<String>) {
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
        let deadline = Instant::now().checked_add(Duration::from_secs(5)).unwrap();
        let request = read_line(&mut d, &|_| Ok(()), deadline).unwrap();
        let logged = RefCell::new(Vec::new());
        exchange(&request, &mut d, &peer, &fake, &|m| {
            logged.borrow_mut().push(m)
        });
        let got = fake.got.into_inner().unwrap();
        (
            String::from_utf8(d.output).unwrap(),
            got,
            logged.into_inner(),
        )
    }

    #[test]
    fn an_admin_reboots_and_the_request_is_passed_as_parsed() {
        // Spaces and an escape the host never sees: what is forwarded is
        // what keel-remote parsed and checked.
        let (out, got, log) = run(
            "{ \"init\" : { \"cmd\" : \"reb\\u006fot\" } }\n{\"junk\"",
            Some(Role::Admin),
        );
        assert_eq!(got, ["{\"cmd\":\"reboot\"}\n"]);
        assert_eq!(out, "{\"ok\":1}\n", "one answer line");
        assert_eq!(log, ["\"ops\" (admin): init reboot"]);
    }

    #[test]
    fn image_answers_stream_every_event() {
        let (out, got, _) = run(
            "{\"init\":{\"cmd\":\"image-list\"}}\n",
            Some(Role::ReadOnly),
        );
        assert_eq!(got.len(), 1);
        assert_eq!(out, "{\"ok\":1}\n{\"more\":2}\n");
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
            "{\"error\":\"init reboot needs the admin role; \\\"ops\\\" has read-only\"}\n"
        );
        assert!(log[0].contains("refused"), "{log:?}");
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
            let (out, got, log) = run(line, role);
            assert!(got.is_empty(), "{line:?} reached the host");
            assert!(out.contains(want), "{line:?}: {out}");
            assert!(out.ends_with('\n'), "{out}");
            assert!(
                !log[0].contains("\"x\""),
                "the log quotes the client: {log:?}"
            );
        }
    }

    #[test]
    fn a_request_longer_than_the_bound_is_cut_and_refused() {
        // A whole, valid request: only its length is wrong.
        let long = format!(
            "{{\"init\":{{\"cmd\":\"validate-config\",\"name\":\"h\",\"text\":\"{}\"}}}}\n",
            "a".repeat(MAX_REQUEST)
        );
        assert!(serde_json::from_str::<RemoteRequest>(long.trim_end()).is_ok());
        let (out, got, _) = run(&long, Some(Role::Admin));
        assert!(got.is_empty());
        assert!(out.contains("bad request"), "{out}");
    }

    #[test]
    fn a_request_line_has_a_deadline() {
        let mut d = Duplex {
            input: Cursor::new(b"{\"init\":".to_vec()),
            output: Vec::new(),
        };
        let e = read_line(&mut d, &|_| Ok(()), Instant::now()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    }

    #[test]
    fn slots_are_bounded_per_address_and_given_back_on_drop() {
        let slots = Arc::new(Mutex::new(Slots::default()));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let held: Vec<Slot> = (0..MAX_PER_ADDRESS)
            .map(|_| Slot::take(&slots, a).unwrap())
            .collect();
        assert!(Slot::take(&slots, a).is_none());
        let other = Slot::take(&slots, b).unwrap();
        drop(held);
        assert!(Slot::take(&slots, a).is_some());
        drop(other);
        assert_eq!(slots.lock().unwrap().all, 0);
        assert!(slots.lock().unwrap().by_address.is_empty());
    }
}

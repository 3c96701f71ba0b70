//! A static file server on 127.0.0.1 for update tests: GET with an
//! optional `Range: bytes=N-` or `bytes=N-M`, one thread per connection,
//! nothing else. A test can make it ignore Range (as some servers do) or
//! corrupt a byte once, and counts what it sent.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How the server misbehaves, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Honest,
    /// Answers every request with the whole file and 200.
    IgnoreRange,
    /// Flips the byte at this offset of any file in the next answer that
    /// holds it, then is honest again.
    CorruptOnce(u64),
    /// Answers a Range request with the bytes asked for but a
    /// Content-Range one byte off.
    WrongContentRange,
}

/// A running server; it serves until the process ends.
#[derive(Debug, Clone)]
pub struct Server {
    pub port: u16,
    /// Body bytes sent.
    pub sent: Arc<AtomicU64>,
    /// Requests answered.
    pub requests: Arc<AtomicU64>,
    mode: Arc<Mutex<Mode>>,
}

impl Server {
    pub fn start(root: &Path) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let server = Server {
            port: listener.local_addr().expect("local addr").port(),
            sent: Arc::default(),
            requests: Arc::default(),
            mode: Arc::new(Mutex::new(Mode::Honest)),
        };
        let root = root.to_path_buf();
        let s = server.clone();
        std::thread::spawn(move || {
            for c in listener.incoming().flatten() {
                let root = root.clone();
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = s.answer(&root, c);
                });
            }
        });
        server
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().expect("mode lock") = mode;
    }

    pub fn mode(&self) -> Mode {
        *self.mode.lock().expect("mode lock")
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn answer(&self, root: &Path, mut s: TcpStream) -> std::io::Result<()> {
        let mut r = BufReader::new(s.try_clone()?);
        let mut line = String::new();
        r.read_line(&mut line)?;
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut range: Option<(usize, Option<usize>)> = None;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
                break;
            }
            if let Some((from, to)) = h
                .to_ascii_lowercase()
                .strip_prefix("range: bytes=")
                .and_then(|v| {
                    v.trim()
                        .split_once('-')
                        .map(|(a, b)| (a.to_string(), b.to_string()))
                })
            {
                range = from.parse().ok().map(|f| (f, to.parse().ok()));
            }
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let file = root.join(path.trim_start_matches('/'));
        let Ok(mut body) = std::fs::read(&file) else {
            return s.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        };
        let mode = self.mode();
        if mode == Mode::IgnoreRange {
            range = None;
        }
        let len = body.len();
        let (from, to) = match range {
            Some((f, t)) => (
                f.min(len),
                t.map_or(len, |t| (t + 1).min(len)).max(f.min(len)),
            ),
            None => (0, len),
        };
        if let Mode::CorruptOnce(at) = mode {
            let at = at as usize;
            if (from..to).contains(&at) {
                body[at] ^= 0x40;
                self.set_mode(Mode::Honest);
            }
        }
        let status = if range.is_some() {
            "206 Partial Content"
        } else {
            "200 OK"
        };
        let off = usize::from(mode == Mode::WrongContentRange);
        write!(
            s,
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Range: bytes {}-{}/{len}\r\nConnection: close\r\n\r\n",
            to - from,
            from + off,
            to.saturating_sub(1) + off,
        )?;
        s.write_all(&body[from..to])?;
        self.sent.fetch_add((to - from) as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Serves `root` until the process ends; returns the port.
pub fn serve(root: &Path) -> u16 {
    Server::start(root).port
}

/// Like [`serve`], and counts the body bytes sent (to see a resumed
/// download fetch only the rest).
pub fn serve_counting(root: &Path) -> (u16, Arc<AtomicU64>) {
    let s = Server::start(root);
    (s.port, s.sent)
}

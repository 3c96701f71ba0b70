//! A static file server on 127.0.0.1 for update tests: GET with optional
//! `Range: bytes=N-`, one thread per connection, nothing else.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Serves `root` until the process ends; returns the port.
pub fn serve(root: &Path) -> u16 {
    serve_counting(root).0
}

/// Like [`serve`], and counts the body bytes sent (to see a resumed
/// download fetch only the rest).
pub fn serve_counting(root: &Path) -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let port = listener.local_addr().expect("local addr").port();
    let root = root.to_path_buf();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&sent);
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let root = root.clone();
            let counter = Arc::clone(&counter);
            std::thread::spawn(move || {
                let _ = answer(&root, s, &counter);
            });
        }
    });
    (port, sent)
}

fn answer(root: &Path, mut s: TcpStream, sent: &AtomicU64) -> std::io::Result<()> {
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut from = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some(v) = h
            .to_ascii_lowercase()
            .strip_prefix("range: bytes=")
            .and_then(|v| v.trim().strip_suffix('-').map(str::to_string))
        {
            from = v.parse().unwrap_or(0);
        }
    }
    let file = root.join(path.trim_start_matches('/'));
    let Ok(body) = std::fs::read(&file) else {
        return s.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    };
    let from = from.min(body.len());
    let status = if from > 0 {
        "206 Partial Content"
    } else {
        "200 OK"
    };
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Range: bytes {from}-{}/{}\r\nConnection: close\r\n\r\n",
        body.len() - from,
        body.len().saturating_sub(1),
        body.len()
    )?;
    s.write_all(&body[from..])?;
    sent.fetch_add((body.len() - from) as u64, Ordering::Relaxed);
    Ok(())
}

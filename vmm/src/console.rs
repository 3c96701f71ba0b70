//! The serial console's ends on the host: stdout and stdin, a file, or a
//! Unix socket that one client at a time attaches to.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("serial output {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("serial socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The attached client of a socket console, shared by the serial port
/// (which writes to it) and the VMM thread (which accepts and reads).
pub type Client = Arc<Mutex<Option<UnixStream>>>;

/// Serial output to a socket's client; dropped while none is attached
/// or when it does not keep up, so the guest never waits on it.
#[derive(Debug, Clone, Default)]
pub struct SocketOut(pub Client);

impl Write for SocketOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut client) = self.0.lock() {
            if let Some(s) = client.as_mut() {
                match s.write(buf) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    // Gone: the next client gets the output.
                    Err(_) => *client = None,
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Listen on `path`, replacing a socket a previous run left there (but
/// nothing else).
pub fn listen(path: &Path) -> Result<UnixListener, ConsoleError> {
    let err = |source| ConsoleError::Socket {
        path: path.to_path_buf(),
        source,
    };
    use std::os::unix::fs::FileTypeExt;
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if m.file_type().is_socket() {
            std::fs::remove_file(path).map_err(err)?;
        }
    }
    let l = UnixListener::bind(path).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    Ok(l)
}

/// Open a file for appending serial output.
pub fn append(path: &Path) -> Result<std::fs::File, ConsoleError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| ConsoleError::File {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn socket_output_reaches_the_client_and_is_dropped_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console");
        std::fs::write(&path, b"").unwrap();
        assert!(listen(&path).is_err(), "a file is never replaced");
        std::fs::remove_file(&path).unwrap();
        let l = listen(&path).unwrap();
        let mut out = SocketOut::default();
        assert_eq!(out.write(b"lost").unwrap(), 4);
        let mut peer = UnixStream::connect(&path).unwrap();
        let (conn, _) = l.accept().unwrap();
        conn.set_nonblocking(true).unwrap();
        *out.0.lock().unwrap() = Some(conn);
        out.write_all(b"seen").unwrap();
        let mut got = [0u8; 4];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"seen");
        drop(peer);
        drop(l);
        // The stale socket is replaced on the next start.
        listen(&path).unwrap();
    }
}

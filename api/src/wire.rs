//! One framing for every API of the host: a request is one JSON line
//! (with fds alongside it, SCM_RIGHTS, for `exec` and `update apply`), the
//! answer one JSON line, one exchange per connection. Clients (keelctl,
//! keel-update asking keel-init to reboot) use [`call`]; servers (PID 1,
//! keel-update's daemon) read with [`Incoming`] or [`receive`] and answer
//! with [`respond`].

use std::io::{BufRead, BufReader, IoSliceMut, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The most an answer may be (logs and status are the large ones).
pub const MAX_ANSWER: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connecting to {socket}: {source}")]
    Connect {
        socket: String,
        source: std::io::Error,
    },
    #[error("sending the request to {socket}: {source}")]
    Send {
        socket: String,
        source: std::io::Error,
    },
    #[error("reading the answer of {socket}: {source}")]
    Read {
        socket: String,
        source: std::io::Error,
    },
    #[error("{socket} answered {answer:?}: {message}")]
    Answer {
        socket: String,
        answer: String,
        message: String,
    },
}

/// The most a request line may be; a longer one is cut there (and then
/// fails to parse).
pub const MAX_REQUEST: usize = 64 * 1024;

/// The most fds a request may carry (exec's stdin, stdout and stderr);
/// more are closed.
const MAX_FDS: usize = 3;

/// A request line being read from a client, with the fds sent alongside
/// it: fed as its bytes arrive, so that a server that reads it from its
/// poll loop never waits on a client that is slow or sends nothing.
#[derive(Debug, Default)]
pub struct Incoming {
    got: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Incoming {
    /// Read what `stream` has. Returns the line (without waiting for more
    /// once it has a newline, its end, or [`MAX_REQUEST`] bytes), or None
    /// if the stream has nothing more yet (non-blocking) or in time (a
    /// read timeout).
    pub fn read(&mut self, stream: &UnixStream) -> Result<Option<(String, Vec<OwnedFd>)>, String> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let room = MAX_REQUEST.saturating_sub(self.got.len()).min(chunk.len());
            let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
            let mut iov = [IoSliceMut::new(&mut chunk[..room])];
            let msg = match recvmsg::<()>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(nix::errno::Errno::EAGAIN) => return Ok(None),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(format!("reading the request: {e}")),
            };
            for c in msg.cmsgs().map_err(|e| e.to_string())? {
                if let ControlMessageOwned::ScmRights(received) = c {
                    for fd in received {
                        // SAFETY: the kernel just installed this fd in this
                        // process for us; nothing else owns it.
                        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                        if self.fds.len() < MAX_FDS {
                            self.fds.push(fd);
                        }
                    }
                }
            }
            let n = msg.bytes;
            self.got
                .extend_from_slice(chunk.get(..n).unwrap_or_default());
            if n == 0 || chunk[..n].contains(&b'\n') || self.got.len() >= MAX_REQUEST {
                let line = String::from_utf8_lossy(&self.got).into_owned();
                return Ok(Some((line, std::mem::take(&mut self.fds))));
            }
        }
    }
}

/// Read one request line from `stream` (blocking, with a read timeout),
/// with any fds sent alongside it.
pub fn receive(stream: &UnixStream) -> Result<(String, Vec<OwnedFd>), String> {
    Incoming::default()
        .read(stream)?
        .ok_or_else(|| "reading the request: the client sent no whole line in time".into())
}

/// Send `line` with `fds` attached.
pub fn send(stream: &UnixStream, line: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let iov = [std::io::IoSlice::new(line)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let n = sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)?;
    if n < line.len() {
        use std::io::Write;
        (&mut &*stream).write_all(&line[n..])?;
    }
    Ok(())
}

/// Send `msg` as one line on `stream`, with `fds` attached.
pub fn send_line<T: Serialize>(stream: &UnixStream, msg: &T, fds: &[RawFd]) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    send(stream, &line, fds)
}

/// Read one answer line from `stream` (`socket` names it in errors): a
/// local socket, or keel-remote's TLS stream.
pub fn read_answer<T: DeserializeOwned>(stream: impl Read, socket: &str) -> Result<T, WireError> {
    let mut answer = String::new();
    BufReader::new(stream.take(MAX_ANSWER))
        .read_line(&mut answer)
        .map_err(|source| WireError::Read {
            socket: socket.to_string(),
            source,
        })?;
    serde_json::from_str(&answer).map_err(|e| WireError::Answer {
        socket: socket.to_string(),
        answer,
        message: e.to_string(),
    })
}

/// Connect to `socket`, send `req` (with `fds`), and read the answer. The
/// stream is returned too: an `exec` or an `update apply` reports on it.
pub fn call<Req: Serialize, Resp: DeserializeOwned>(
    socket: &str,
    req: &Req,
    fds: &[RawFd],
) -> Result<(Resp, UnixStream), WireError> {
    let stream = UnixStream::connect(socket).map_err(|source| WireError::Connect {
        socket: socket.to_string(),
        source,
    })?;
    call_on(stream, socket, req, fds)
}

/// [`call`] on a stream the caller connected (and may have retried).
pub fn call_on<Req: Serialize, Resp: DeserializeOwned>(
    stream: UnixStream,
    socket: &str,
    req: &Req,
    fds: &[RawFd],
) -> Result<(Resp, UnixStream), WireError> {
    send_line(&stream, req, fds).map_err(|source| WireError::Send {
        socket: socket.to_string(),
        source,
    })?;
    let answer = read_answer(&stream, socket)?;
    Ok((answer, stream))
}

/// Answer on `stream`, as well as it can: a client that went away needs
/// no answer.
pub fn respond<T: Serialize>(stream: &UnixStream, msg: &T) {
    let _ = send_line(stream, msg, &[]);
}

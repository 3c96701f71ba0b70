//! API connections PID 1 has accepted but not yet answered: read from its
//! poll loop as their bytes arrive, so that a client that connects and
//! sends nothing (or a byte a second) never holds up PID 1, only itself.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use keel_api::wire::Incoming;

/// How long a client has to send its whole request line.
const REQUEST_TIME: Duration = Duration::from_secs(5);

/// How many connections may wait for their request at once; past this the
/// oldest is refused (a client that opens many and sends nothing).
const MAX_WAITING: usize = 32;

/// A request read whole (or why it could not be), and where to answer.
pub(super) type Received = (UnixStream, Result<(String, Vec<OwnedFd>), String>);

#[derive(Debug)]
struct Waiting {
    stream: UnixStream,
    incoming: Incoming,
    since: Instant,
}

#[derive(Debug, Default)]
pub(super) struct Conns {
    waiting: Vec<Waiting>,
}

impl Conns {
    /// The waiting connections, for the poll.
    pub(super) fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.waiting.iter().map(|w| w.stream.as_fd())
    }

    /// When the oldest waiting connection runs out of time.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.waiting
            .iter()
            .map(|w| w.since.checked_add(REQUEST_TIME).unwrap_or(w.since))
            .min()
    }

    /// Accept what `listener` has, read what every connection has, and
    /// return the requests that are whole, the ones that failed, and the
    /// ones refused for time or room (their errors to answer with).
    pub(super) fn poll(&mut self, listener: &UnixListener, now: Instant) -> Vec<Received> {
        let mut done = Vec::new();
        while let Ok((stream, _)) = listener.accept() {
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            if self.waiting.len() >= MAX_WAITING {
                let oldest = self.waiting.remove(0);
                done.push((
                    oldest.stream,
                    Err(format!(
                        "{MAX_WAITING} connections are waiting to send their request; the oldest is refused"
                    )),
                ));
            }
            self.waiting.push(Waiting {
                stream,
                incoming: Incoming::default(),
                since: now,
            });
        }
        let mut still = Vec::with_capacity(self.waiting.len());
        for mut w in self.waiting.drain(..) {
            match w.incoming.read(&w.stream) {
                Ok(Some(got)) => done.push((w.stream, Ok(got))),
                Err(e) => done.push((w.stream, Err(e))),
                Ok(None) if now.saturating_duration_since(w.since) >= REQUEST_TIME => done.push((
                    w.stream,
                    Err(format!(
                        "no whole request line within {} s",
                        REQUEST_TIME.as_secs()
                    )),
                )),
                Ok(None) => still.push(w),
            }
        }
        self.waiting = still;
        done
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::arithmetic_side_effects, clippy::unwrap_used)]
    use super::*;
    use std::io::Write;

    fn listener() -> (tempfile::TempDir, UnixListener) {
        let dir = tempfile::tempdir().unwrap();
        let l = UnixListener::bind(dir.path().join("api.sock")).unwrap();
        l.set_nonblocking(true).unwrap();
        (dir, l)
    }

    #[test]
    fn a_client_that_sends_nothing_waits_alone_and_then_is_refused() {
        let (dir, l) = listener();
        let mut conns = Conns::default();
        let t0 = Instant::now();
        let _silent = UnixStream::connect(dir.path().join("api.sock")).unwrap();
        let mut slow = UnixStream::connect(dir.path().join("api.sock")).unwrap();
        slow.write_all(b"{\"Sta").unwrap();
        assert!(conns.poll(&l, t0).is_empty(), "nothing whole yet, no wait");
        assert_eq!(conns.fds().count(), 2);
        assert_eq!(conns.deadline(), Some(t0 + REQUEST_TIME));
        slow.write_all(b"tus\":null}\n").unwrap();
        let done = conns.poll(&l, t0 + Duration::from_secs(1));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].1.as_ref().unwrap().0, "{\"Status\":null}\n");
        let done = conns.poll(&l, t0 + REQUEST_TIME);
        assert_eq!(done.len(), 1);
        assert_eq!(
            done[0].1.as_ref().unwrap_err(),
            "no whole request line within 5 s"
        );
        assert_eq!(conns.fds().count(), 0);
    }

    #[test]
    fn a_closed_connection_ends_its_request_and_too_many_refuse_the_oldest() {
        let (dir, l) = listener();
        let mut conns = Conns::default();
        let now = Instant::now();
        {
            let mut c = UnixStream::connect(dir.path().join("api.sock")).unwrap();
            c.write_all(b"no newline").unwrap();
        }
        let done = conns.poll(&l, now);
        assert_eq!(done[0].1.as_ref().unwrap().0, "no newline");
        let clients: Vec<UnixStream> = (0..=MAX_WAITING)
            .map(|_| UnixStream::connect(dir.path().join("api.sock")).unwrap())
            .collect();
        let done = conns.poll(&l, now);
        assert_eq!(done.len(), 1, "one past the room");
        assert!(done[0]
            .1
            .as_ref()
            .unwrap_err()
            .contains("the oldest is refused"));
        assert_eq!(conns.fds().count(), MAX_WAITING);
        drop(clients);
    }
}

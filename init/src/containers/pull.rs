//! A registry image for a container: the preparing helper asks keel-pull
//! (the confined system container that talks to registries) to bring it
//! into its store, then opens it there by the manifest digest keel-pull
//! reports. keel-init never speaks to a registry itself.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;
use std::time::{Duration, Instant};

use keel_api::pull::{PullEvent, PullRequest, PullerRequest, PULL_DIR_ON_HOST, SOCKET_NAME};

/// keel-pull starts with the other system services; a container prepared
/// at boot may ask before its socket is there.
const CONNECT_FOR: Duration = Duration::from_secs(60);
/// `keelctl image` on a running host: keel-pull is up, or it is not
/// going to be.
const CALL_CONNECT_FOR: Duration = Duration::from_secs(5);
/// Between two events of a pull (progress comes several times a second
/// while bytes flow): longer is a registry or a keel-pull that hangs.
const QUIET_FOR: Duration = Duration::from_secs(300);
/// An event line is small, but for a listing of a large store; a longer
/// one is not keel-pull's.
const MAX_EVENT: u64 = 8 << 20;
/// What PID 1 writes to the helper's stdin: it goes on to keel-pull as
/// one API request line, bounded the same (the host config's limits on
/// mirrors and CAs keep it under that).
pub const MAX_REQUEST: u64 = keel_api::wire::MAX_REQUEST as u64;

/// Read the request PID 1 wrote to stdin.
pub fn read_request(input: impl Read) -> Result<PullRequest, String> {
    let mut text = Vec::new();
    input
        .take(MAX_REQUEST)
        .read_to_end(&mut text)
        .map_err(|e| format!("reading the pull request: {e}"))?;
    serde_json::from_slice(&text).map_err(|e| format!("the pull request: {e}"))
}

/// Ask keel-pull for `req`; the manifest digest it pulled.
pub fn pull(req: &PullRequest) -> Result<String, String> {
    let socket = Path::new(PULL_DIR_ON_HOST).join(SOCKET_NAME);
    pull_at(&socket, req, CONNECT_FOR)
}

fn pull_at(socket: &Path, req: &PullRequest, connect_for: Duration) -> Result<String, String> {
    let ask = PullerRequest::Pull(req.clone());
    match call_at(socket, &ask, connect_for, &mut |_| Ok(()))? {
        PullEvent::Pulled { manifest, .. } => Ok(manifest),
        PullEvent::Failed { message } => Err(format!("pulling {}: {message}", req.reference)),
        other => Err(format!(
            "keel-pull answered the pull of {} with {other:?}",
            req.reference
        )),
    }
}

/// `keel-init image-call`: PID 1's helper for `keelctl image`. The request
/// for keel-pull comes on stdin (a pull's with the registry's
/// credentials, which keelctl never sees); stdout is keelctl's connection,
/// and every event keel-pull sends goes on to it, then the last one.
pub fn image_call_main() -> ! {
    // keelctl reads as a pull goes: a terminal slow to take a redraw must
    // not cut the events short. The socket's own setting: PID 1 has
    // handed its copy over and writes to it no more.
    let _ = nix::sys::socket::setsockopt(
        &std::io::stdout(),
        nix::sys::socket::sockopt::SendTimeout,
        &nix::sys::time::TimeVal::new(60, 0),
    );
    let mut out = std::io::stdout().lock();
    let mut relay = |line: &str| -> Result<(), String> {
        out.write_all(line.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| format!("keelctl went away: {e}"))
    };
    let last = read_call(std::io::stdin().lock()).and_then(|req| {
        let socket = Path::new(PULL_DIR_ON_HOST).join(SOCKET_NAME);
        call_at(&socket, &req, CALL_CONNECT_FOR, &mut relay)
    });
    let last = last.unwrap_or_else(|message| PullEvent::Failed { message });
    if let Ok(line) = serde_json::to_string(&last) {
        let _ = relay(&format!("{line}\n"));
    }
    std::process::exit(0)
}

/// Read the request PID 1 wrote to the image helper's stdin.
fn read_call(input: impl Read) -> Result<PullerRequest, String> {
    let mut text = Vec::new();
    input
        .take(MAX_REQUEST)
        .read_to_end(&mut text)
        .map_err(|e| format!("reading the request: {e}"))?;
    serde_json::from_slice(&text).map_err(|e| format!("the request: {e}"))
}

/// Send `req` to keel-pull at `socket`; every event before the last goes
/// to `each` as its line, and the last is returned.
fn call_at(
    socket: &Path,
    req: &PullerRequest,
    connect_for: Duration,
    each: &mut dyn FnMut(&str) -> Result<(), String>,
) -> Result<PullEvent, String> {
    let shown = socket.display();
    let started = Instant::now();
    let mut stream = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(_) if started.elapsed() < connect_for => {
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => {
                return Err(format!(
                "keel-pull ({shown}) is not there: {e} (is the pull service enabled and running?)"
            ))
            }
        }
    };
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(|e| format!("{shown}: sending the request: {e}"))?;
    stream
        .set_read_timeout(Some(QUIET_FOR))
        .map_err(|e| format!("{shown}: {e}"))?;
    let mut events = BufReader::new(stream);
    loop {
        let mut line = String::new();
        let n = (&mut events)
            .take(MAX_EVENT)
            .read_line(&mut line)
            .map_err(|e| format!("{shown}: waiting for keel-pull: {e}"))?;
        if n == 0 {
            return Err("keel-pull hung up without an answer".to_string());
        }
        let event = serde_json::from_str::<PullEvent>(&line)
            .map_err(|e| format!("{shown}: an answer that is not an event: {e}"))?;
        if event.is_last() {
            return Ok(event);
        }
        each(&line)?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use keel_formats::hostconfig::types::Pull;
    use std::os::unix::net::UnixListener;

    fn request() -> PullRequest {
        PullRequest {
            reference: "r.example/a:1".into(),
            policy: Pull::Missing,
            hosts: vec![],
        }
    }

    /// A keel-pull that answers each connection with `lines`.
    fn daemon(lines: &'static str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("pull.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                let mut got = String::new();
                BufReader::new(&conn).read_line(&mut got).unwrap();
                let _: PullerRequest = serde_json::from_str(&got).unwrap();
                conn.write_all(lines.as_bytes()).unwrap();
            }
        });
        (dir, socket)
    }

    #[test]
    fn progress_then_the_digest() {
        let (_d, socket) = daemon(concat!(
            r#"{"event":"progress","digest":"sha256:aa","done":1,"total":2}"#,
            "\n",
            r#"{"event":"pulled","manifest":"sha256:bb","fetched":2,"host":"r.example"}"#,
            "\n"
        ));
        assert_eq!(
            pull_at(&socket, &request(), Duration::ZERO).unwrap(),
            "sha256:bb"
        );
    }

    #[test]
    fn failures_and_silence_are_errors_that_say_so() {
        let (_d, socket) = daemon("{\"event\":\"failed\",\"message\":\"401\"}\n");
        assert_eq!(
            pull_at(&socket, &request(), Duration::ZERO).unwrap_err(),
            "pulling r.example/a:1: 401"
        );
        let (_d, socket) = daemon("");
        assert!(pull_at(&socket, &request(), Duration::ZERO)
            .unwrap_err()
            .contains("without an answer"));
        let (_d, socket) = daemon("garbage\n");
        assert!(pull_at(&socket, &request(), Duration::ZERO)
            .unwrap_err()
            .contains("not an event"));
        let missing = Path::new("/nonexistent/pull.sock");
        assert!(pull_at(missing, &request(), Duration::ZERO)
            .unwrap_err()
            .contains("is not there"));
    }
}

#[cfg(test)]
mod call_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_image_helper_reads_one_strict_request() {
        assert_eq!(
            read_call(&br#"{"op":"list"}"#[..]).unwrap(),
            PullerRequest::List {}
        );
        assert!(read_call(&b"{\"op\":\"rm\"}"[..])
            .unwrap_err()
            .starts_with("the request: "));
    }
}

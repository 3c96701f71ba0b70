//! Answering API requests: each one read whole by [`super::conns`], then
//! matched here.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use keel_api::init::{Request, Response, Status};

use super::{conns, Init, Shutdown};
use crate::supervisor::Health;

fn answer(r: Result<(), String>) -> Response {
    match r {
        Ok(()) => Response::Ok,
        Err(e) => Response::Error(e),
    }
}

/// Kernel messages from /dev/kmsg with sequence number `since` or later,
/// as `[seconds] message`, and the sequence number to ask for next.
fn kernel_log(since: u64) -> (Vec<String>, u64) {
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return (vec!["(no /dev/kmsg)".into()], since);
    };
    let (mut lines, mut next) = (Vec::new(), since);
    let mut buf = vec![0u8; 8192];
    // Each read returns one record, "prio,seq,usec,flags;text"; EAGAIN ends.
    while let Ok(n) = f.read(&mut buf) {
        if n == 0 {
            break;
        }
        let rec = String::from_utf8_lossy(&buf[..n]);
        let Some((head, text)) = rec.split_once(';') else {
            continue;
        };
        let mut fields = head.split(',');
        let seq: u64 = fields.nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        let usec: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        if seq >= since {
            let text = text.lines().next().unwrap_or_default();
            lines.push(format!(
                "[{:>5}.{:06}] {text}",
                usec / 1_000_000,
                usec % 1_000_000
            ));
            next = seq.saturating_add(1);
        }
    }
    (lines, next)
}

impl Init {
    fn status(&self) -> Status {
        let health = self.sup.health();
        Status {
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            version: self.version.clone(),
            slot: self.slot.clone(),
            uptime_ms: crate::boot_ms(),
            ready: health == Health::Healthy,
            health,
            services: self.sup.status(),
            config: Some(self.cfg.state.clone()),
            secure_boot: self.secure_boot,
            var: self.var,
        }
    }

    /// Answer one API request (read whole by [`conns::Conns`]); returns a
    /// shutdown request if any.
    pub(super) fn serve(&mut self, (stream, received): conns::Received) -> Option<Shutdown> {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        let fds = received
            .as_ref()
            .map(|(_, fds)| fds.as_slice())
            .unwrap_or(&[]);
        let request = received
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|(line, _)| {
                serde_json::from_str::<Request>(line.trim())
                    .map_err(|e| format!("bad request: {e}"))
            });
        if let Ok(Request::Exec { name, argv }) = &request {
            match self.exec(name, argv, fds) {
                // Answered when the command ends (see `exited`).
                Ok(pid) => {
                    self.sessions.insert(pid, stream);
                }
                Err(e) => keel_api::wire::respond(&stream, &Response::Error(e)),
            }
            return None;
        }
        if let Ok(
            req @ (Request::ImagePull { .. }
            | Request::ImageList
            | Request::ImageRm { .. }
            | Request::ImagePrune),
        ) = &request
        {
            // Answered by a helper, as keel-pull's events come.
            self.image(stream, req);
            return None;
        }
        let (response, shutdown) = match request {
            Ok(Request::Status) => (Response::Status(self.status()), None),
            Ok(Request::Logs { name, since }) => (self.logs(&name, since), None),
            Ok(Request::Start { name }) => {
                (answer(self.sup.start_service(&name, Instant::now())), None)
            }
            Ok(Request::Stop { name }) => {
                (answer(self.sup.stop_service(&name, Instant::now())), None)
            }
            Ok(Request::Restart { name }) => (
                answer(self.sup.restart_service(&name, Instant::now())),
                None,
            ),
            Ok(Request::Kill { name, signal }) => {
                (answer(self.sup.kill_service(&name, &signal)), None)
            }
            Ok(Request::ValidateConfig { name, text }) => (
                Response::Problems(
                    crate::config::read(&name, &text, &self.cfg.services, self.cfg.zones.as_ref())
                        .err()
                        .unwrap_or_default(),
                ),
                None,
            ),
            Ok(Request::ApplyConfig { name, text, try_s }) => {
                (self.apply_config(&name, &text, try_s), None)
            }
            Ok(Request::ConfirmConfig) => (self.confirm_config(), None),
            Ok(Request::Network) => (crate::net::inspect(), None),
            Ok(Request::Poweroff) => (Response::Ok, Some(Shutdown::Poweroff)),
            Ok(Request::Reboot) => (Response::Ok, Some(Shutdown::Reboot)),
            Ok(Request::Exec { .. }) => (Response::Error("exec is answered above".into()), None),
            Ok(
                Request::ImagePull { .. }
                | Request::ImageList
                | Request::ImageRm { .. }
                | Request::ImagePrune,
            ) => (Response::Error("images are answered above".into()), None),
            Err(e) => (Response::Error(e), None),
        };
        keel_api::wire::respond(&stream, &response);
        shutdown
    }

    fn exec(
        &mut self,
        name: &str,
        argv: &[String],
        fds: &[std::os::fd::OwnedFd],
    ) -> Result<Pid, String> {
        let sup = &mut self.sup;
        let svc = sup
            .services()
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| format!("no service named {name:?}"))?;
        let pid = svc
            .state
            .pid()
            .ok_or_else(|| format!("{name} is not running ({})", svc.state_label()))?;
        // The launcher keeps each service's compiled confinement.
        let def = svc.def.clone();
        let confine = sup
            .launcher_mut()
            .confinement(name, &def)
            .map_err(|e| e.to_string())?;
        crate::pid1::exec::start(name, pid, &def, confine, argv, fds)
    }

    fn logs(&mut self, name: &str, since: u64) -> Response {
        if name == "kernel" {
            let (lines, next) = kernel_log(since);
            return Response::Logs { lines, next };
        }
        if !self.sup.services().iter().any(|s| s.name == name) {
            return Response::Error(format!("no service named {name:?} (or `kernel`)"));
        }
        self.sup.launcher_mut().drain_pipes();
        let (lines, next) = self.sup.launcher_mut().sink(name).since(since);
        Response::Logs { lines, next }
    }
}

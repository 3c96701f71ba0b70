//! `keel-update daemon`: serves `keelctl update` on [`UPDATE_SOCKET`] and
//! checks the repository on the policy's interval. Each connection gets a
//! thread, so `status` answers while an apply runs.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use keel_api::init::{Request, Response};
use keel_api::update::{UpdateRequest, UpdateResponse, UPDATE_SOCKET};
use keel_formats::policy::RebootPolicy;
use keel_formats::API_SOCKET;

use keel_update::agent::{Agent, Done};
use keel_update::error::UpdateError;

/// Ask keel-init to reboot: it stops every service in order first.
pub fn request_reboot() -> Result<(), String> {
    match keel_api::wire::call(API_SOCKET, &Request::Reboot, &[]) {
        Ok((Response::Ok, _)) => Ok(()),
        Ok((other, _)) => Err(format!("keel-init answered {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

fn reply(stream: &UnixStream, r: &UpdateResponse) {
    keel_api::wire::respond(stream, r);
}

fn answer(r: &Result<Done, UpdateError>) -> UpdateResponse {
    match r {
        Ok(d) => UpdateResponse::Done(d.message.clone()),
        Err(e) => UpdateResponse::Error(e.to_string()),
    }
}

/// After a successful install or rollback, reboot if the policy says so.
/// Into an install, a coordinated host first takes a reboot slot of its
/// group; a rollback the operator asked for is not held back.
fn maybe_reboot(agent: &Arc<Agent>, changed: bool, coordinate: bool) {
    let wait = match agent.policy.reboot {
        _ if !changed => return,
        RebootPolicy::Manual => return,
        RebootPolicy::Auto => 0,
        RebootPolicy::Window => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            agent.policy.wait_for_window(now)
        }
    };
    if wait > 0 {
        eprintln!("keel-update: rebooting into the new version in {wait} s, when the window opens");
    }
    // Waiting happens on its own thread, so checks and calls go on.
    let agent = Arc::clone(agent);
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(wait));
        if coordinate {
            agent.wait_for_reboot_slot();
        }
        if let Err(e) = request_reboot() {
            eprintln!("keel-update: cannot reboot: {e}");
            agent.release_reboot_slot();
        }
    });
}

/// Wait (a few seconds at most) until the caller has read the answer and
/// hung up: a reboot right away would stop the caller's container before
/// it shows the operator what happened.
fn wait_for_hangup(stream: &UnixStream) {
    use std::io::Read;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 64];
    while matches!((&*stream).read(&mut buf), Ok(n) if n > 0) {}
}

fn serve(agent: &Arc<Agent>, stream: UnixStream) {
    let (line, fds) = match keel_api::wire::receive(&stream) {
        Ok(x) => x,
        Err(e) => return reply(&stream, &UpdateResponse::Error(e)),
    };
    let req: UpdateRequest = match serde_json::from_str(line.trim()) {
        Ok(r) => r,
        Err(e) => {
            return reply(
                &stream,
                &UpdateResponse::Error(format!("bad request {line:?}: {e}")),
            )
        }
    };
    match req {
        UpdateRequest::Status => {
            if let Err(e) = agent.settle() {
                eprintln!("keel-update: {e}");
            }
            let s = agent.status.lock().map(|s| s.clone()).unwrap_or_default();
            reply(&stream, &UpdateResponse::Status(Box::new(s)));
        }
        UpdateRequest::Check => {
            let r = agent.check();
            let changed = r.as_ref().is_ok_and(|d| d.changed);
            reply(&stream, &answer(&r));
            if changed {
                wait_for_hangup(&stream);
            }
            maybe_reboot(agent, changed, true);
        }
        UpdateRequest::ApplyFd => {
            let Some(fd) = fds.into_iter().next() else {
                return reply(
                    &stream,
                    &UpdateResponse::Error("apply_fd came without a file descriptor".into()),
                );
            };
            let r = agent.apply(File::from(fd));
            let changed = r.as_ref().is_ok_and(|d| d.changed);
            reply(&stream, &answer(&r));
            if changed {
                wait_for_hangup(&stream);
            }
            maybe_reboot(agent, changed, true);
        }
        UpdateRequest::Rollback => {
            let r = agent.rollback();
            let changed = r.as_ref().is_ok_and(|d| d.changed);
            reply(&stream, &answer(&r));
            if changed {
                wait_for_hangup(&stream);
            }
            maybe_reboot(agent, changed, false);
        }
    }
}

/// End at once on SIGTERM. As PID 1 of its container the daemon would
/// never see a SIGTERM it has no handler for, so keel-init waited out
/// the whole stop timeout (5 s) at every reboot, the one after an
/// install included. An install cut short is a power cut without the
/// cut: the other slot's entry is written last, so nothing half-written
/// is ever booted, and the next check starts over.
pub fn exit_on_sigterm() -> anyhow::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    extern "C" fn on_term(_: libc::c_int) {
        // SAFETY: _exit is async-signal-safe and touches no shared state.
        unsafe { libc::_exit(0) }
    }
    let action = SigAction::new(
        SigHandler::Handler(on_term),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only calls _exit, which is async-signal-safe.
    unsafe { sigaction(Signal::SIGTERM, &action) }?;
    Ok(())
}

/// Bind the socket before the agent looks at the disk, so that early
/// callers wait in the backlog instead of finding no socket.
pub fn listen() -> anyhow::Result<UnixListener> {
    // Bound under another name and renamed into place once it is the
    // admin group's: the admin shell, which calls as soon as the host is
    // up, would otherwise find a socket that is root's alone for a moment
    // and be refused.
    let staging = format!("{UPDATE_SOCKET}.new");
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging)?;
    // Root's and the admin group's, as keel-init's API socket: the admin
    // shell runs as the admin user. keel-update is a member of that group
    // (update.toml), which lets it give the socket to the group without
    // CAP_CHOWN.
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o660))?;
    if let Err(e) = std::os::unix::fs::chown(&staging, None, Some(keel_formats::ADMIN_GID)) {
        // Still root's: the updater runs, the admin shell cannot reach it.
        eprintln!("keel-update: warning: giving {UPDATE_SOCKET} to the admin group: {e}");
    }
    std::fs::rename(&staging, UPDATE_SOCKET)?;
    Ok(listener)
}

pub fn run(agent: Agent, listener: UnixListener) -> anyhow::Result<()> {
    let agent = Arc::new(agent);
    eprintln!(
        "keel-update: running {} from slot {}; repository {}",
        agent.running.version,
        agent.slot,
        agent.policy.repository.as_deref().unwrap_or("(none)")
    );
    if agent.policy.repository.is_some() {
        let a = Arc::clone(&agent);
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(a.policy.check_interval_s));
            let r = a.check();
            let changed = r.as_ref().is_ok_and(|d| d.changed);
            maybe_reboot(&a, changed, true);
        });
    }
    if agent.coordinator.is_some() {
        let a = Arc::clone(&agent);
        std::thread::spawn(move || loop {
            let pause = a.tend();
            std::thread::sleep(pause);
        });
    }
    // Restarted between an install and the reboot into it (a crash, a
    // stop): the reboot is still owed, through the window and the reboot
    // slot as before (a slot this host already holds is its own again).
    if agent.awaiting_reboot() {
        eprintln!("keel-update: an installed update waits for its reboot");
        maybe_reboot(&agent, true, true);
    }
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let a = Arc::clone(&agent);
        std::thread::spawn(move || serve(&a, stream));
    }
    Ok(())
}

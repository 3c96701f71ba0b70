//! Work done as the root of a fresh user namespace whose ids are a range
//! of the host's: root there may chown, chmod and create anything the
//! range owns, and has no more power over the rest of the host than any
//! unprivileged user. keel-init's prepare helper unpacks a user
//! container's image this way, into a folder the range owns.

use std::fs::File;
use std::io::{Read, Write};

use keel_spec::host::USERNS_IDS;
use nix::sched::CloneFlags;
use nix::unistd::{ForkResult, Gid, Uid};

/// Run `work` in a child process that is root of a new user namespace
/// mapping ids 0 to [`USERNS_IDS`] - 1 onto `base` and up; its error, or
/// its death, is returned. The caller must be single-threaded (a new user
/// namespace cannot be entered by one thread of several) and must have
/// opened whatever `work` reads that the range may not open itself.
pub fn run_as_range_root(
    base: u32,
    work: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    let map = format!("0 {base} {USERNS_IDS}\n");
    let (ready_rd, ready_wr) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (go_rd, go_wr) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (err_rd, err_wr) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the caller is single-threaded, so the child is a whole copy
    // of it; the child leaves with _exit, running no destructors of ours.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop((ready_rd, go_wr, err_rd));
            let result = enter(File::from(ready_wr), File::from(go_rd)).and_then(|()| work());
            let code = match result {
                Ok(()) => 0,
                Err(e) => {
                    let _ = File::from(err_wr).write_all(e.as_bytes());
                    1
                }
            };
            // SAFETY: ends the forked child without the parent's
            // destructors or atexit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop((ready_wr, go_rd, err_wr));
            let mut byte = [0u8; 1];
            let unshared = File::from(ready_rd).read(&mut byte).ok() == Some(1);
            let mapped = unshared
                && std::fs::write(format!("/proc/{child}/uid_map"), &map)
                    .and_then(|()| std::fs::write(format!("/proc/{child}/gid_map"), &map))
                    .is_ok();
            let mut go = File::from(go_wr);
            if mapped {
                let _ = go.write_all(b"g");
            }
            drop(go);
            let mut msg = String::new();
            let _ = File::from(err_rd).read_to_string(&mut msg);
            let status = nix::sys::wait::waitpid(child, None);
            if !msg.is_empty() {
                return Err(msg);
            }
            if unshared && !mapped {
                return Err(format!("writing the id map {map:?} of the user namespace"));
            }
            match status {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(()),
                Ok(other) => Err(format!(
                    "the process in the user namespace ended: {other:?}"
                )),
                Err(e) => Err(format!(
                    "waiting for the process in the user namespace: {e}"
                )),
            }
        }
    }
}

/// The child's side: a new user namespace, then, once the parent has
/// written its maps, its root.
fn enter(mut ready: File, mut go: File) -> Result<(), String> {
    // Nothing of it must outlive the helper that waits for it.
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    nix::sched::unshare(CloneFlags::CLONE_NEWUSER)
        .map_err(|e| format!("unshare of a user namespace: {e}"))?;
    ready
        .write_all(b"u")
        .map_err(|e| format!("telling the helper: {e}"))?;
    let mut byte = [0u8; 1];
    if go.read(&mut byte).ok() != Some(1) {
        return Err("the id maps were not written".into());
    }
    become_root()
}

/// Become root of the user namespace this process has just made or
/// joined. It is still host root by kernel id, which the namespace does
/// not map: files it made would have no owner there, and it would not be
/// the namespace's root for the checks that ask.
pub fn become_root() -> Result<(), String> {
    let (uid, gid) = (Uid::from_raw(0), Gid::from_raw(0));
    nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups in the user namespace: {e}"))?;
    nix::unistd::setresgid(gid, gid, gid)
        .map_err(|e| format!("setresgid in the user namespace: {e}"))?;
    nix::unistd::setresuid(uid, uid, uid)
        .map_err(|e| format!("setresuid in the user namespace: {e}"))
}

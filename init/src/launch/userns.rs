//! Work done as the root of a fresh user namespace whose ids are a range
//! of the host's: root there may chown, chmod and create anything the
//! range owns, and has no more power over the rest of the host than any
//! unprivileged user. keel-init's prepare helper unpacks a user
//! container's image this way, into a folder the range owns.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use keel_formats::host::USERNS_IDS;
use nix::sched::CloneFlags;
use nix::unistd::{ForkResult, Gid, Uid};

/// Write the id maps of process `pid`, just made in a new user namespace.
/// A writer with CAP_SETUID and CAP_SETGID here may map any ids and leave
/// setgroups allowed.
pub fn write_maps(pid: i32, uid_map: &str, gid_map: &str) -> Result<(), String> {
    for (file, map) in [("uid_map", uid_map), ("gid_map", gid_map)] {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, map).map_err(|e| format!("writing {path} ({map:?}): {e}"))?;
    }
    Ok(())
}

/// Run `work` in a child process that is root of a new user namespace
/// mapping ids 0 to [`USERNS_IDS`] - 1 onto `base` and up; its error, or
/// its death, is returned. The caller must be single-threaded (a new user
/// namespace cannot be entered by one thread of several) and must have
/// opened whatever `work` reads that the range may not open itself: the
/// fds in `keep`. The child has no other fd of the caller's: stdin and
/// stdout are /dev/null, so that nothing it does can speak for the caller.
pub fn run_as_range_root(
    base: u32,
    keep: &[RawFd],
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
            let mut own: Vec<RawFd> = keep.to_vec();
            own.extend([ready_wr.as_raw_fd(), go_rd.as_raw_fd(), err_wr.as_raw_fd()]);
            let result = only_fds(&own)
                .and_then(|()| enter(File::from(ready_wr), File::from(go_rd)))
                .and_then(|()| work());
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
            let mapped = match unshared {
                true => Some(write_maps(child.as_raw(), &map, &map)),
                false => None,
            };
            let mut go = File::from(go_wr);
            if let Some(Ok(())) = mapped {
                let _ = go.write_all(b"g");
            }
            drop(go);
            let mut msg = String::new();
            let _ = File::from(err_rd).read_to_string(&mut msg);
            let status = nix::sys::wait::waitpid(child, None);
            // The maps' error is the cause of the child's.
            if let Some(Err(e)) = mapped {
                return Err(e);
            }
            if !msg.is_empty() {
                return Err(msg);
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

/// Leave the forked child with `keep` and stdio only: stdin and stdout
/// on /dev/null, stderr (the console) as it was.
fn only_fds(keep: &[RawFd]) -> Result<(), String> {
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("/dev/null: {e}"))?;
    for fd in [0, 1] {
        nix::unistd::dup2(null.as_raw_fd(), fd).map_err(|e| format!("dup2: {e}"))?;
    }
    drop(null);
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| format!("/proc/self/fd: {e}"))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    for fd in open.into_iter().filter(|fd| *fd > 2 && !keep.contains(fd)) {
        // The fd of the listing itself is gone by now: EBADF is fine.
        let _ = nix::unistd::close(fd);
    }
    Ok(())
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
    become_root_or_errno().map_err(|(call, e)| format!("{call} in the user namespace: {e}"))
}

/// [`become_root`], failing with the call and its errno.
pub fn become_root_or_errno() -> Result<(), (&'static str, nix::errno::Errno)> {
    let (uid, gid) = (Uid::from_raw(0), Gid::from_raw(0));
    nix::unistd::setgroups(&[]).map_err(|e| ("setgroups", e))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| ("setresgid", e))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| ("setresuid", e))
}

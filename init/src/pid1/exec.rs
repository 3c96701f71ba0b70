//! `keelctl exec NAME -- CMD`: run a command inside a running service's
//! namespaces and cgroup, under the service's own confinement, with the
//! caller's stdin, stdout and stderr (passed over the API socket with
//! SCM_RIGHTS), for debugging a host that has no shell of its own.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sched::CloneFlags;
use nix::unistd::{ForkResult, Pid};

use keel_formats::container::{ContainerDef, Share};

use crate::launch::confine::Confinement;

/// Whether process `pid` is in another `kind` namespace than keel-init.
fn different_ns(pid: Pid, kind: &str) -> Result<bool, String> {
    use std::os::unix::fs::MetadataExt;
    let ino = |p: String| {
        std::fs::metadata(&p)
            .map(|m| (m.dev(), m.ino()))
            .map_err(|e| format!("{p}: {e}"))
    };
    Ok(ino(format!("/proc/{pid}/ns/{kind}"))? != ino(format!("/proc/self/ns/{kind}"))?)
}

/// Start `argv` in the namespaces of the service whose process is `pid`.
/// Returns the PID of the process keel-init must wait for; its exit status
/// is the command's.
pub fn start(
    name: &str,
    pid: Pid,
    def: &ContainerDef,
    confine: &Confinement,
    argv: &[String],
    stdio: &[OwnedFd],
) -> Result<Pid, String> {
    if stdio.len() != 3 {
        return Err(format!(
            "exec needs the caller's stdin, stdout and stderr; got {} fds",
            stdio.len()
        ));
    }
    let argv: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()
        .map_err(|_| "NUL in command")?;
    if argv.is_empty() {
        return Err("no command given".into());
    }
    let env: Vec<CString> = def
        .env
        .iter()
        .filter_map(|e| CString::new(e.as_str()).ok())
        .collect();
    let own_userns = different_ns(pid, "user")?;
    let ns = namespaces(pid, def, own_userns)?;
    let procs = Path::new("/sys/fs/cgroup/system")
        .join(name)
        .join("cgroup.procs");
    // SAFETY: keel-init is single-threaded; the child only enters
    // namespaces, forks once more, drops privileges and execs or exits.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => in_service(&Joining {
            name,
            procs: &procs,
            ns: &ns,
            own_userns,
            def,
            confine,
            argv: &argv,
            env: &env,
            stdio,
        }),
    }
}

/// The namespaces of the service's process `pid` to enter, in the order
/// they must be entered.
fn namespaces(
    pid: Pid,
    def: &ContainerDef,
    own_userns: bool,
) -> Result<Vec<(File, CloneFlags)>, String> {
    // The user namespace first: its root owns the others, and a command
    // that joins it is one of its users, never host root. Whether there is
    // one is the process's, not the definition's: a definition replaced
    // while its old process still stops may say otherwise.
    let mut kinds = Vec::new();
    if own_userns {
        kinds.push(("user", CloneFlags::CLONE_NEWUSER));
    }
    kinds.extend([
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ]);
    if def.namespaces.pid == Share::Private {
        kinds.push(("pid", CloneFlags::CLONE_NEWPID));
    }
    kinds.push(("mnt", CloneFlags::CLONE_NEWNS));
    let mut ns = Vec::new();
    for (k, flag) in kinds {
        let f = File::open(format!("/proc/{pid}/ns/{k}"))
            .map_err(|e| format!("/proc/{pid}/ns/{k}: {e}"))?;
        ns.push((f, flag));
    }
    Ok(ns)
}

/// What the parent prepared for the forked child, which opens nothing
/// itself.
struct Joining<'a> {
    name: &'a str,
    procs: &'a Path,
    ns: &'a [(File, CloneFlags)],
    own_userns: bool,
    def: &'a ContainerDef,
    confine: &'a Confinement,
    argv: &'a [CString],
    env: &'a [CString],
    stdio: &'a [OwnedFd],
}

/// The forked child's side: join the service, then run the command in a
/// grandchild (a new PID namespace applies to children only). Never
/// returns.
fn in_service(j: &Joining<'_>) -> ! {
    let Joining {
        name,
        procs,
        ns,
        own_userns,
        def,
        confine,
        argv,
        env,
        stdio,
    } = *j;
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
    // The service's limits apply to what runs in it.
    let _ = std::fs::write(procs, "0");
    let entered = ns
        .iter()
        .all(|(f, flag)| nix::sched::setns(f.as_fd(), *flag).is_ok());
    let rooted = match (entered, own_userns) {
        (true, true) => crate::launch::userns::become_root(),
        (true, false) => Ok(()),
        (false, _) => Err("cannot enter its namespaces".to_string()),
    };
    if let Err(e) = rooted {
        eprintln!("keel-init: exec in {name}: {e}");
        // SAFETY: leave the forked child without the parent's destructors.
        unsafe { libc::_exit(126) }
    }
    // A new PID namespace applies to children only: fork once more
    // and pass on the command's exit status.
    // SAFETY: as above, a single-threaded child.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { child }) => {
            let code = match nix::sys::wait::waitpid(child, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => c,
                Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => {
                    128i32.saturating_add(s as i32)
                }
                _ => 125,
            };
            // SAFETY: as above.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Child) => {
            let _ = nix::unistd::setsid();
            for (i, fd) in stdio.iter().enumerate() {
                let _ = nix::unistd::dup2(fd.as_raw_fd(), i as RawFd);
            }
            let _ = nix::unistd::chdir(def.cwd.as_str());
            if let Err(e) = crate::launch::confine::apply(confine) {
                eprintln!("keel-init: exec in {name}: {e}");
                // SAFETY: as above.
                unsafe { libc::_exit(126) }
            }
            let e = nix::unistd::execve(&argv[0], argv, env).err();
            eprintln!("keel-init: exec {}: {e:?}", argv[0].to_string_lossy());
            // SAFETY: as above.
            unsafe { libc::_exit(127) }
        }
        // SAFETY: as above.
        Err(_) => unsafe { libc::_exit(125) },
    }
}

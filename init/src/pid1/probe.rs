//! Readiness probes, run from keel-init against a starting service: a file
//! inside the container, a TCP connection from its network namespace, or a
//! command run inside its namespaces under the service's own confinement.

use std::ffi::CString;
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use keel_formats::container::{ContainerDef, Share};
use keel_formats::lifecycle::Readiness;

use crate::launch::confine::Confinement;
use crate::supervisor::Probe;

/// A probe gets this long per attempt.
const ATTEMPT: Duration = Duration::from_secs(2);

pub fn run(pid: Pid, def: &ContainerDef, r: &Readiness, confine: &Confinement) -> Probe {
    if let Some(f) = &r.file {
        let p = format!("/proc/{pid}/root/{}", f.trim_start_matches('/'));
        return if Path::new(&p).exists() {
            Probe::Ready
        } else {
            Probe::NotYet(format!("{f} does not exist"))
        };
    }
    if let Some(addr) = &r.tcp {
        return tcp(pid, def, addr);
    }
    if let Some(cmd) = &r.exec {
        return exec(pid, def, cmd, confine);
    }
    Probe::Ready
}

fn connect(addr: &str) -> Probe {
    match addr.parse::<SocketAddr>() {
        Ok(a) => match TcpStream::connect_timeout(&a, ATTEMPT) {
            Ok(_) => Probe::Ready,
            Err(e) => Probe::NotYet(format!("connect {addr}: {e}")),
        },
        Err(_) => Probe::NotYet(format!("bad address {addr}")),
    }
}

fn tcp(pid: Pid, def: &ContainerDef, addr: &str) -> Probe {
    if def.namespaces.net == Share::Host {
        return connect(addr);
    }
    // The network namespace belongs to a thread, so a short-lived thread
    // can enter the service's and connect from there; it is joined before
    // keel-init clones anything again.
    let ns = format!("/proc/{pid}/ns/net");
    let addr = addr.to_string();
    let handle = std::thread::spawn(move || {
        let f = match File::open(&ns) {
            Ok(f) => f,
            Err(e) => return Probe::NotYet(format!("{ns}: {e}")),
        };
        if let Err(e) = nix::sched::setns(f.as_fd(), CloneFlags::CLONE_NEWNET) {
            return Probe::NotYet(format!("setns {ns}: {e}"));
        }
        connect(&addr)
    });
    handle
        .join()
        .unwrap_or_else(|_| Probe::NotYet("probe thread failed".into()))
}

fn exec(pid: Pid, def: &ContainerDef, cmd: &[String], confine: &Confinement) -> Probe {
    let argv: Vec<CString> = match cmd.iter().map(|a| CString::new(a.as_str())).collect() {
        Ok(v) => v,
        Err(_) => return Probe::NotYet("probe command contains a NUL byte".into()),
    };
    let env: Vec<CString> = def
        .env
        .iter()
        .filter_map(|e| CString::new(e.as_str()).ok())
        .collect();
    // Open the namespaces before forking so the child only has to enter.
    let kinds = [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    let mut fds = Vec::new();
    for (k, flag) in kinds {
        match File::open(format!("/proc/{pid}/ns/{k}")) {
            Ok(f) => fds.push((f, flag)),
            Err(e) => return Probe::NotYet(format!("/proc/{pid}/ns/{k}: {e}")),
        }
    }
    // SAFETY: keel-init is single-threaded; the child only enters
    // namespaces, drops privileges and execs or exits.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Probe::NotYet(format!("fork: {e}")),
        Ok(ForkResult::Child) => {
            let _ = nix::sys::signal::sigprocmask(
                nix::sys::signal::SigmaskHow::SIG_SETMASK,
                Some(&nix::sys::signal::SigSet::empty()),
                None,
            );
            let ok = fds
                .iter()
                .all(|(f, flag)| nix::sched::setns(f.as_fd(), *flag).is_ok())
                && nix::unistd::chdir("/").is_ok()
                && crate::launch::confine::apply(confine).is_ok();
            if ok {
                if let Ok(null) = File::open("/dev/null") {
                    use std::os::fd::AsRawFd;
                    for fd in 0..3 {
                        let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
                    }
                }
                let _ = nix::unistd::execve(&argv[0], &argv, &env);
            }
            // SAFETY: leave the forked child without running the parent's
            // destructors.
            unsafe { libc::_exit(127) }
        }
        Ok(ForkResult::Parent { child }) => {
            let deadline = crate::deadline(Instant::now(), ATTEMPT);
            loop {
                match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(_, 0)) => return Probe::Ready,
                    Ok(WaitStatus::Exited(_, code)) => {
                        return Probe::NotYet(format!("probe exited with status {code}"))
                    }
                    Ok(WaitStatus::Signaled(_, sig, _)) => {
                        return Probe::NotYet(format!("probe killed by {sig}"))
                    }
                    Ok(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => {
                        let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                        let _ = waitpid(child, None);
                        return Probe::NotYet(format!("probe took longer than {ATTEMPT:?}"));
                    }
                }
            }
        }
    }
}

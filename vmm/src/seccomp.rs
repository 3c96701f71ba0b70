//! One seccomp filter per thread kind, installed once setup is done: a
//! vCPU thread may run the guest (KVM_RUN only) and talk to the devices;
//! the VMM thread serves the devices (epoll, file I/O for disks, the
//! console socket) and reports the end. Anything else kills the process:
//! an escape from the guest into the VMM gets no new system calls (no
//! open, no exec, no new sockets).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    Vmm,
    Vcpu,
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the {0:?} thread's seccomp filter: {1}")]
    Build(ThreadKind, String),
    #[error("installing the {0:?} thread's seccomp filter: {1}")]
    Install(ThreadKind, String),
}

/// KVM_RUN: _IO(0xAE, 0x80).
const KVM_RUN: u64 = 0xae80;
/// What std's set_nonblocking uses, for an accepted console client.
const FIONBIO: u64 = 0x5421;

/// The VMM thread's own: the event loop, disk I/O, the console socket.
const VMM: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
];

/// What every thread needs: memory, locks, output, signals on the way
/// out (a panic's abort), and ending.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_brk,
    libc::SYS_clock_gettime,
    libc::SYS_sched_yield,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tkill,
    libc::SYS_tgkill,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

pub fn program(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let err = |e: &dyn std::fmt::Display| SeccompError::Build(kind, e.to_string());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        COMMON.iter().map(|s| (*s, Vec::new())).collect();
    let ioctl = match kind {
        ThreadKind::Vcpu => KVM_RUN,
        ThreadKind::Vmm => {
            rules.extend(VMM.iter().map(|s| (*s, Vec::new())));
            FIONBIO
        }
    };
    let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, ioctl)
        .map_err(|e| err(&e))?;
    rules.insert(
        libc::SYS_ioctl,
        vec![SeccompRule::new(vec![cond]).map_err(|e| err(&e))?],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| err(&e))?;
    BpfProgram::try_from(filter).map_err(|e| err(&e))
}

/// Install `kind`'s filter on the calling thread.
pub fn apply(kind: ThreadKind) -> Result<(), SeccompError> {
    let prog = program(kind)?;
    seccompiler::apply_filter(&prog).map_err(|e| SeccompError::Install(kind, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_filters_compile_and_the_vmm_thread_has_more() {
        let vmm = program(ThreadKind::Vmm).unwrap();
        let vcpu = program(ThreadKind::Vcpu).unwrap();
        assert!(vmm.len() > vcpu.len(), "epoll, disk I/O, the socket");
    }

    #[test]
    fn a_filtered_thread_keeps_what_it_needs_and_loses_the_rest() {
        let prog = program(ThreadKind::Vcpu).unwrap();
        // SAFETY: the child only installs the ready-made filter and makes
        // plain system calls before _exit: no allocation, no locks.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = match seccompiler::apply_filter(&prog) {
                Ok(()) => {
                    // SAFETY: getpid takes no arguments; it is allowed.
                    unsafe { libc::getpid() };
                    // SAFETY: socket(2) with plain arguments: the filter
                    // kills the process here.
                    unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
                    0
                }
                Err(_) => 10,
            };
            // SAFETY: leaving the forked child without the parent's
            // destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid status pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }
}

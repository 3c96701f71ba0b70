//! The last steps before a container's exec: resource limits, identity,
//! capabilities, no_new_privs and seccomp, in the only order that works.

use keel_formats::container::ContainerDef;
use keel_formats::limits::rlimit_number;
use nix::errno::Errno;

use super::caps::{self, CapsError};

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error(transparent)]
    Caps(#[from] CapsError),
    #[error("{0}")]
    Seccomp(String),
    #[error("unknown rlimit {0:?}")]
    UnknownRlimit(String),
    #[error("oom_score_adj {value}: {source}")]
    OomScoreAdj { value: i32, source: std::io::Error },
    #[error("setrlimit {resource}: {errno}")]
    Setrlimit { resource: u32, errno: Errno },
    #[error("a seccomp filter of {0} instructions is too long")]
    FilterTooLong(usize),
    #[error("seccomp: {0}")]
    InstallSeccomp(Errno),
    #[error("setgroups: {0}")]
    Setgroups(Errno),
    #[error("setresgid {gid}: {errno}")]
    Setresgid { gid: u32, errno: Errno },
    #[error("PR_SET_KEEPCAPS: {0}")]
    KeepCaps(Errno),
    #[error("setresuid {uid}: {errno}")]
    Setresuid { uid: u32, errno: Errno },
    #[error("no_new_privs: {0}")]
    NoNewPrivs(Errno),
}

impl ConfineError {
    /// The errno of the call that failed; EINVAL for what the definition
    /// got wrong.
    pub fn errno(&self) -> Errno {
        let of = |e: &std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL));
        match self {
            ConfineError::Caps(
                CapsError::Bounding { source, .. }
                | CapsError::Ambient { source, .. }
                | CapsError::Capset(source),
            )
            | ConfineError::OomScoreAdj { source, .. } => of(source),
            ConfineError::Caps(CapsError::Unknown(_))
            | ConfineError::Seccomp(_)
            | ConfineError::UnknownRlimit(_)
            | ConfineError::FilterTooLong(_) => Errno::EINVAL,
            ConfineError::Setrlimit { errno, .. }
            | ConfineError::Setresgid { errno, .. }
            | ConfineError::Setresuid { errno, .. }
            | ConfineError::InstallSeccomp(errno)
            | ConfineError::Setgroups(errno)
            | ConfineError::KeepCaps(errno)
            | ConfineError::NoNewPrivs(errno) => *errno,
        }
    }
}

/// What a service's process may do, worked out before clone3.
#[derive(Debug, Clone)]
pub struct Confinement {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub caps: u64,
    pub last_cap: u32,
    pub no_new_privs: bool,
    pub seccomp: Option<Vec<seccompiler::sock_filter>>,
    /// (RLIMIT_* number, value for soft and hard).
    pub rlimits: Vec<(u32, u64)>,
    pub oom_score_adj: Option<i32>,
}

impl Confinement {
    pub fn from_def(def: &ContainerDef) -> Result<Self, ConfineError> {
        Self::from_def_with(def, None)
    }

    /// [`Confinement::from_def`], with the seccomp filter that `keel build`
    /// compiled for the definition, if any; it is checked against `def`.
    pub fn from_def_with(
        def: &ContainerDef,
        precompiled: Option<&[u8]>,
    ) -> Result<Self, ConfineError> {
        Ok(Confinement {
            uid: def.user.uid,
            gid: def.user.gid,
            groups: def.user.groups.clone(),
            caps: caps::mask(&def.capabilities)?,
            last_cap: caps::last_cap(),
            no_new_privs: def.no_new_privs,
            seccomp: keel_formats::seccomp::compile_or_load(&def.seccomp, precompiled)
                .map_err(ConfineError::Seccomp)?,
            rlimits: def
                .rlimits
                .iter()
                .map(|(k, v)| {
                    rlimit_number(k)
                        .map(|n| (n, *v))
                        .ok_or_else(|| ConfineError::UnknownRlimit(k.clone()))
                })
                .collect::<Result<_, _>>()?,
            oom_score_adj: def.oom_score_adj,
        })
    }
}

fn install_seccomp(prog: &[seccompiler::sock_filter]) -> Result<(), ConfineError> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| ConfineError::FilterTooLong(prog.len()))?,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `prog`, a live array of BPF instructions laid
    // out as struct sock_filter (seccompiler's type is repr(C) and the same
    // shape); the kernel copies it during the call.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        return Err(ConfineError::InstallSeccomp(Errno::last()));
    }
    Ok(())
}

/// Apply `c` to the calling process. Runs in the container's child after its
/// mounts are in place; afterwards only exec is left.
pub fn apply(c: &Confinement) -> Result<(), ConfineError> {
    if let Some(value) = c.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", value.to_string())
            .map_err(|source| ConfineError::OomScoreAdj { value, source })?;
    }
    for (resource, value) in &c.rlimits {
        let lim = libc::rlimit {
            rlim_cur: *value,
            rlim_max: *value,
        };
        // SAFETY: setrlimit with a valid resource number and a live struct.
        if unsafe { libc::setrlimit(*resource as _, &lim) } != 0 {
            return Err(ConfineError::Setrlimit {
                resource: *resource,
                errno: Errno::last(),
            });
        }
    }
    // Without no_new_privs the filter can only be installed while
    // CAP_SYS_ADMIN is still held, so before anything is dropped.
    if !c.no_new_privs {
        if let Some(prog) = &c.seccomp {
            install_seccomp(prog)?;
        }
    }
    caps::drop_bounding(c.caps, c.last_cap)?;
    nix::unistd::setgroups(
        &c.groups
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect::<Vec<_>>(),
    )
    .map_err(ConfineError::Setgroups)?;
    let gid = nix::unistd::Gid::from_raw(c.gid);
    nix::unistd::setresgid(gid, gid, gid)
        .map_err(|errno| ConfineError::Setresgid { gid: c.gid, errno })?;
    if c.uid != 0 {
        // Keep the permitted set across the switch away from root.
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
            return Err(ConfineError::KeepCaps(Errno::last()));
        }
        let uid = nix::unistd::Uid::from_raw(c.uid);
        nix::unistd::setresuid(uid, uid, uid)
            .map_err(|errno| ConfineError::Setresuid { uid: c.uid, errno })?;
    }
    caps::set(c.caps)?;
    if c.uid != 0 {
        caps::raise_ambient(c.caps, c.last_cap)?;
    }
    if c.no_new_privs {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(ConfineError::NoNewPrivs(Errno::last()));
        }
        if let Some(prog) = &c.seccomp {
            install_seccomp(prog)?;
        }
    }
    Ok(())
}

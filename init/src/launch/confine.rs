//! The last steps before a container's exec: resource limits, identity,
//! capabilities, no_new_privs and seccomp, in the only order that works.

use keel_formats::container::ContainerDef;
use keel_formats::limits::rlimit_number;

use super::caps;

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
    pub fn from_def(def: &ContainerDef) -> Result<Self, String> {
        Self::from_def_with(def, None)
    }

    /// [`Confinement::from_def`], with the seccomp filter that `keel build`
    /// compiled for the definition, if any; it is checked against `def`.
    pub fn from_def_with(def: &ContainerDef, precompiled: Option<&[u8]>) -> Result<Self, String> {
        Ok(Confinement {
            uid: def.user.uid,
            gid: def.user.gid,
            groups: def.user.groups.clone(),
            caps: caps::mask(&def.capabilities).map_err(|e| e.to_string())?,
            last_cap: caps::last_cap(),
            no_new_privs: def.no_new_privs,
            seccomp: keel_formats::seccomp::compile_or_load(&def.seccomp, precompiled)?,
            rlimits: def
                .rlimits
                .iter()
                .map(|(k, v)| {
                    rlimit_number(k)
                        .map(|n| (n, *v))
                        .ok_or_else(|| format!("unknown rlimit {k:?}"))
                })
                .collect::<Result<_, _>>()?,
            oom_score_adj: def.oom_score_adj,
        })
    }
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn install_seccomp(prog: &[seccompiler::sock_filter]) -> Result<(), String> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| "seccomp filter too long".to_string())?,
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
        return Err(os_err("seccomp"));
    }
    Ok(())
}

/// Apply `c` to the calling process. Runs in the container's child after its
/// mounts are in place; afterwards only exec is left.
pub fn apply(c: &Confinement) -> Result<(), String> {
    if let Some(adj) = c.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| format!("oom_score_adj: {e}"))?;
    }
    for (resource, value) in &c.rlimits {
        let lim = libc::rlimit {
            rlim_cur: *value,
            rlim_max: *value,
        };
        // SAFETY: setrlimit with a valid resource number and a live struct.
        if unsafe { libc::setrlimit(*resource as _, &lim) } != 0 {
            return Err(os_err(&format!("setrlimit {resource}")));
        }
    }
    // Without no_new_privs the filter can only be installed while
    // CAP_SYS_ADMIN is still held, so before anything is dropped.
    if !c.no_new_privs {
        if let Some(prog) = &c.seccomp {
            install_seccomp(prog)?;
        }
    }
    caps::drop_bounding(c.caps, c.last_cap).map_err(|e| e.to_string())?;
    nix::unistd::setgroups(
        &c.groups
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect::<Vec<_>>(),
    )
    .map_err(|e| format!("setgroups: {e}"))?;
    let gid = nix::unistd::Gid::from_raw(c.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setresgid {}: {e}", c.gid))?;
    if c.uid != 0 {
        // Keep the permitted set across the switch away from root.
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
            return Err(os_err("PR_SET_KEEPCAPS"));
        }
        let uid = nix::unistd::Uid::from_raw(c.uid);
        nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setresuid {}: {e}", c.uid))?;
    }
    caps::set(c.caps).map_err(|e| e.to_string())?;
    if c.uid != 0 {
        caps::raise_ambient(c.caps, c.last_cap).map_err(|e| e.to_string())?;
    }
    if c.no_new_privs {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(os_err("no_new_privs"));
        }
        if let Some(prog) = &c.seccomp {
            install_seccomp(prog)?;
        }
    }
    Ok(())
}

//! Seccomp profiles compiled to BPF. Both sides use this: the image builder
//! to reject a definition naming an unknown system call, keel-init to
//! install the filter.

use seccompiler::{sock_filter, BpfProgram, TargetArch};
use sha2::{Digest, Sha256};

use crate::limits::{Seccomp, SeccompProfile, DEFAULT_DENY};

/// The system calls a profile denies, in name order.
pub fn denied(s: &Seccomp) -> Vec<String> {
    let mut out: Vec<String> = match s.profile {
        SeccompProfile::Default => DEFAULT_DENY.iter().map(|s| s.to_string()).collect(),
        SeccompProfile::Unconfined => Vec::new(),
    };
    out.extend(s.deny.iter().cloned());
    out.retain(|c| !s.allow.contains(c));
    out.sort();
    out.dedup();
    out
}

/// Compile `s` for x86-64: every denied call fails with EPERM, everything
/// else is allowed. `None` when nothing is denied.
pub fn compile(s: &Seccomp) -> Result<Option<BpfProgram>, String> {
    let deny = denied(s);
    if deny.is_empty() {
        return Ok(None);
    }
    let filter: Vec<serde_json::Value> = deny
        .iter()
        .map(|c| serde_json::json!({ "syscall": c }))
        .collect();
    let json = serde_json::json!({
        "service": {
            "mismatch_action": "allow",
            "filter_action": { "errno": libc::EPERM },
            "filter": filter,
        }
    });
    let text = json.to_string();
    let mut map = seccompiler::compile_from_json(text.as_bytes(), TargetArch::x86_64)
        .map_err(|e| format!("seccomp: {e}"))?;
    Ok(map.remove("service"))
}

/// The start of a filter compiled ahead of time (`NAME.seccomp` beside
/// `NAME.toml` in the image): `keel build` compiles each service's filter,
/// so that keel-init does not spend boot time on it.
pub const PRECOMPILED_MAGIC: &[u8; 8] = b"KEELBPF1";

/// What a filter is compiled from: the architecture and the denied calls.
/// A precompiled filter is used only when its key is this one, so a
/// filter left over from another definition is never installed.
pub fn key(s: &Seccomp) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"x86_64\n");
    for c in denied(s) {
        h.update(c.as_bytes());
        h.update(b"\n");
    }
    h.finalize().into()
}

/// A compiled filter as stored in the image: magic, [`key`], then each BPF
/// instruction as code (u16), jt (u8), jf (u8), k (u32), little-endian.
pub fn encode(s: &Seccomp, prog: &[sock_filter]) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + prog.len() * 8);
    out.extend_from_slice(PRECOMPILED_MAGIC);
    out.extend_from_slice(&key(s));
    for i in prog {
        out.extend_from_slice(&i.code.to_le_bytes());
        out.push(i.jt);
        out.push(i.jf);
        out.extend_from_slice(&i.k.to_le_bytes());
    }
    out
}

/// The filter stored in `bytes` if it was compiled from `s`; `None` if it
/// was compiled from something else or is not a stored filter.
pub fn decode(s: &Seccomp, bytes: &[u8]) -> Option<BpfProgram> {
    let rest = bytes.strip_prefix(PRECOMPILED_MAGIC.as_slice())?;
    let (k, prog) = rest.split_at_checked(32)?;
    if k != key(s) || prog.is_empty() || prog.len() % 8 != 0 {
        return None;
    }
    Some(
        prog.chunks_exact(8)
            .map(|c| sock_filter {
                code: u16::from_le_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect(),
    )
}

/// [`compile`], unless `precompiled` holds the filter of `s` already.
pub fn compile_or_load(
    s: &Seccomp,
    precompiled: Option<&[u8]>,
) -> Result<Option<BpfProgram>, String> {
    match precompiled.and_then(|b| decode(s, b)) {
        Some(prog) => Ok(Some(prog)),
        None => compile(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_denies_mount_and_kexec_and_allow_overrides() {
        let s = Seccomp::default();
        let d = denied(&s);
        assert!(d.contains(&"mount".to_string()) && d.contains(&"kexec_load".to_string()));
        let s = Seccomp {
            allow: vec!["mount".into()],
            deny: vec!["chmod".into()],
            ..Default::default()
        };
        let d = denied(&s);
        assert!(!d.contains(&"mount".to_string()) && d.contains(&"chmod".to_string()));
        assert!(compile(&s).unwrap().is_some());
    }

    #[test]
    fn unconfined_has_no_filter_and_unknown_calls_are_errors() {
        let s = Seccomp {
            profile: SeccompProfile::Unconfined,
            ..Default::default()
        };
        assert!(compile(&s).unwrap().is_none());
        let s = Seccomp {
            deny: vec!["no_such_call".into()],
            ..Default::default()
        };
        let e = compile(&s).unwrap_err();
        assert!(e.contains("no_such_call"), "{e}");
    }

    #[test]
    fn a_precompiled_filter_is_used_only_for_what_it_was_compiled_from() {
        let s = Seccomp::default();
        let prog = compile(&s).unwrap().unwrap();
        let stored = encode(&s, &prog);
        assert_eq!(decode(&s, &stored), Some(prog.clone()));
        let other = Seccomp {
            allow: vec!["mount".into()],
            ..Default::default()
        };
        assert_eq!(decode(&other, &stored), None, "another deny list");
        let fresh = compile_or_load(&other, Some(&stored)).unwrap().unwrap();
        assert_ne!(fresh, prog, "compiled afresh");
        assert_eq!(decode(&s, &stored[..stored.len() - 3]), None, "truncated");
        assert_eq!(decode(&s, b"KEELBPF1"), None);
    }
}

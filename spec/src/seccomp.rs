//! Seccomp profiles compiled to BPF. Both sides use this: the image builder
//! to reject a definition naming an unknown system call, keel-init to
//! install the filter.

use seccompiler::{BpfProgram, TargetArch};

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
}

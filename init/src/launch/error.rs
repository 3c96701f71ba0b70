//! Why a container did not start, typed so that the supervisor can tell
//! a failure that will repeat (no such command) from one worth retrying,
//! and the report the child of clone3 sends its parent when a step fails.

use nix::errno::Errno;

use super::confine::ConfineError;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{what} {value:?} contains a NUL byte")]
    Nul { what: &'static str, value: String },
    #[error("the command is empty")]
    EmptyCommand,
    #[error(transparent)]
    Confinement(#[from] ConfineError),
    #[error("pipe: {0}")]
    Pipe(Errno),
    #[error("clone3: {0}")]
    Clone(Errno),
    /// Writing the id maps of the child's user namespace.
    #[error("{0}")]
    UserMaps(String),
    /// The host side of the container's network: its veths.
    #[error("its network: {0}")]
    Network(String),
    /// A step in the container failed: `step` names it and its path or
    /// command, `error` is the failed call's own message.
    #[error("in the container: {step}: {error}")]
    Step {
        kind: StepKind,
        step: String,
        errno: Errno,
        error: String,
    },
    /// The child's report of its failure could not be read.
    #[error("in the container: a garbled error report ({} bytes)", .0.len())]
    Report(Vec<u8>),
}

impl LaunchError {
    /// Will the same definition on the same image fail the same way each
    /// time? A definition that cannot be planned, or a command that is not
    /// there (or is not a program): retrying cannot help. Everything else
    /// (clone3 out of resources, a busy mount, no memory) may pass.
    pub fn is_permanent(&self) -> bool {
        match self {
            LaunchError::Nul { .. } | LaunchError::EmptyCommand | LaunchError::Confinement(_) => {
                true
            }
            LaunchError::Step {
                kind: StepKind::Exec,
                errno,
                ..
            } => matches!(
                errno,
                Errno::ENOENT
                    | Errno::ENOTDIR
                    | Errno::EACCES
                    | Errno::ENOEXEC
                    | Errno::ELOOP
                    | Errno::ENAMETOOLONG
            ),
            _ => false,
        }
    }
}

/// Which [`super::Step`] failed; sent over the error pipe as its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StepKind {
    BecomeRoot,
    ClearSignalMask,
    Setsid,
    MakePrivate,
    BindRoot,
    MountProc,
    MountSys,
    MountCgroup,
    ReadOnly,
    Mask,
    MountDev,
    BindDevice,
    DevLink,
    MakeDir,
    MountDevPts,
    RemountDevReadonly,
    Tmpfs,
    MakeMountPoint,
    Bind,
    PivotRoot,
    RemountRootReadonly,
    LoopbackUp,
    Interfaces,
    SetHostname,
    ConsoleStdio,
    NullStdin,
    Dup,
    KeepOpen,
    Confine,
    Chdir,
    Exec,
}

impl StepKind {
    /// Every kind, at the index of its number.
    const ALL: [StepKind; 31] = {
        use StepKind::*;
        [
            BecomeRoot,
            ClearSignalMask,
            Setsid,
            MakePrivate,
            BindRoot,
            MountProc,
            MountSys,
            MountCgroup,
            ReadOnly,
            Mask,
            MountDev,
            BindDevice,
            DevLink,
            MakeDir,
            MountDevPts,
            RemountDevReadonly,
            Tmpfs,
            MakeMountPoint,
            Bind,
            PivotRoot,
            RemountRootReadonly,
            LoopbackUp,
            Interfaces,
            SetHostname,
            ConsoleStdio,
            NullStdin,
            Dup,
            KeepOpen,
            Confine,
            Chdir,
            Exec,
        ]
    };

    fn from_number(n: u8) -> Option<StepKind> {
        Self::ALL.get(usize::from(n)).copied()
    }
}

/// A failed step as the child reports it: one byte of kind, the errno
/// (i32, little-endian), the length of the step's description (u32,
/// little-endian), the description, then the call's message.
pub(super) fn encode(kind: StepKind, errno: Errno, step: &str, error: &str) -> Vec<u8> {
    let len = u32::try_from(step.len()).unwrap_or(u32::MAX);
    let step = step.as_bytes().get(..len as usize).unwrap_or_default();
    let mut out = Vec::with_capacity(
        9usize
            .saturating_add(step.len())
            .saturating_add(error.len()),
    );
    out.push(kind as u8);
    out.extend_from_slice(&(errno as i32).to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(step);
    out.extend_from_slice(error.as_bytes());
    out
}

/// The parent's side of [`encode`].
pub(super) fn decode(report: Vec<u8>) -> LaunchError {
    let parsed = (|| {
        let (&kind, rest) = report.split_first()?;
        let kind = StepKind::from_number(kind)?;
        let (errno, rest) = rest.split_first_chunk::<4>()?;
        let (len, rest) = rest.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
        let step = rest.get(..len)?;
        let error = rest.get(len..)?;
        Some(LaunchError::Step {
            kind,
            step: String::from_utf8_lossy(step).into_owned(),
            errno: Errno::from_raw(i32::from_le_bytes(*errno)),
            error: String::from_utf8_lossy(error).into_owned(),
        })
    })();
    parsed.unwrap_or(LaunchError::Report(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_numbered_by_their_place() {
        for (i, k) in StepKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
        assert_eq!(StepKind::from_number(200), None);
    }

    #[test]
    fn a_report_comes_back_as_it_went() {
        let wire = encode(
            StepKind::Exec,
            Errno::ENOENT,
            "exec /bin/nope",
            "ENOENT: No such file or directory",
        );
        let e = decode(wire);
        assert!(
            matches!(&e, LaunchError::Step { kind: StepKind::Exec, errno: Errno::ENOENT, step, .. } if step == "exec /bin/nope"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "in the container: exec /bin/nope: ENOENT: No such file or directory"
        );
        assert!(e.is_permanent());
        for bad in [vec![], vec![29], vec![200, 0, 0, 0, 0, 0, 0, 0, 0]] {
            assert!(matches!(decode(bad), LaunchError::Report(_)));
        }
        // A description longer than what came is garbled, not a panic.
        let mut short = encode(StepKind::Bind, Errno::EBUSY, "bind /a onto /b", "");
        short.truncate(12);
        assert!(matches!(decode(short), LaunchError::Report(_)));
    }

    #[test]
    fn only_what_repeats_is_permanent() {
        let step = |kind, errno| LaunchError::Step {
            kind,
            step: String::new(),
            errno,
            error: String::new(),
        };
        assert!(step(StepKind::Exec, Errno::EACCES).is_permanent());
        assert!(step(StepKind::Exec, Errno::ENOTDIR).is_permanent());
        assert!(!step(StepKind::Exec, Errno::ENOMEM).is_permanent());
        assert!(!step(StepKind::Exec, Errno::EAGAIN).is_permanent());
        assert!(!step(StepKind::Bind, Errno::ENOENT).is_permanent());
        assert!(!step(StepKind::MountProc, Errno::EBUSY).is_permanent());
        assert!(!LaunchError::Clone(Errno::EAGAIN).is_permanent());
        assert!(!LaunchError::Clone(Errno::ENOMEM).is_permanent());
        assert!(!LaunchError::Pipe(Errno::EMFILE).is_permanent());
        assert!(LaunchError::EmptyCommand.is_permanent());
        assert!(LaunchError::Nul {
            what: "env entry",
            value: "A=\0".into()
        }
        .is_permanent());
    }
}

//! Running the external programs a build needs (make, mkfs.erofs,
//! mkfs.ext4, apt-get source), with errors that say which program, with what
//! arguments, and what it printed.

use std::io;
use std::path::Path;
use std::process::{Command, Output, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("`{program}` is not installed ({hint}): {source}")]
    Missing {
        program: String,
        hint: String,
        source: io::Error,
    },
    #[error("`{command}` failed with {status}:\n{output}")]
    Failed {
        command: String,
        status: String,
        output: String,
    },
}

/// The Debian package that provides `program`, for error messages and for
/// `cargo xtask deps`.
pub fn package_for(program: &str) -> &'static str {
    match program {
        "mkfs.erofs" => "erofs-utils",
        "mkfs.ext4" | "mke2fs" => "e2fsprogs",
        "musl-gcc" => "musl-tools",
        "make" | "gcc" => "build-essential",
        "flex" => "flex",
        "bison" => "bison",
        "bc" => "bc",
        "tar" | "xz" => "xz-utils",
        "apt-get" | "dpkg-source" => "dpkg-dev",
        "qemu-system-x86_64" => "qemu-system-x86",
        "qemu-img" => "qemu-utils",
        "sbsign" | "sbverify" | "sbvarsign" => "sbsigntool",
        "swtpm" => "swtpm",
        "swtpm_setup" => "swtpm-tools",
        _ => "see README",
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Run `cmd` to completion, capturing its output; fail with the last lines of
/// it if the command fails.
pub fn run(cmd: &mut Command) -> Result<Output, ToolError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ToolError::Missing {
            hint: format!("apt-get install {}", package_for(&program)),
            program,
            source,
        })?;
    if !out.status.success() {
        let mut both = out.stdout.clone();
        both.extend_from_slice(&out.stderr);
        return Err(ToolError::Failed {
            command: describe(cmd),
            status: out.status.to_string(),
            output: tail(&both, 40),
        });
    }
    Ok(out)
}

/// Run `cmd`, handing its stdout to `read` as it comes (progress output);
/// fail with the end of its stderr if the command fails.
pub fn run_reading(
    cmd: &mut Command,
    read: impl FnOnce(&mut dyn io::Read),
) -> Result<(), ToolError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ToolError::Missing {
            hint: format!("apt-get install {}", package_for(&program)),
            program,
            source,
        })?;
    if let Some(mut out) = child.stdout.take() {
        read(&mut out);
        // Whatever `read` left unread must not block the child.
        let _ = io::copy(&mut out, &mut io::sink());
    }
    let out = child
        .wait_with_output()
        .map_err(|source| ToolError::Missing {
            program: describe(cmd),
            hint: "waiting for it failed".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(ToolError::Failed {
            command: describe(cmd),
            status: out.status.to_string(),
            output: tail(&out.stderr, 40),
        });
    }
    Ok(())
}

/// Run `cmd` in `dir` with its output going to `log` (long builds).
pub fn run_logged(cmd: &mut Command, dir: &Path, log: &Path) -> Result<(), ToolError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let missing = |source| ToolError::Missing {
        hint: format!("apt-get install {}", package_for(&program)),
        program: program.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(missing)?;
    let err_file = file.try_clone().map_err(missing)?;
    let status = cmd
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err_file)
        .status()
        .map_err(missing)?;
    if !status.success() {
        let output = std::fs::read(log).map(|b| tail(&b, 40)).unwrap_or_default();
        return Err(ToolError::Failed {
            command: format!(
                "{} (in {}, log {})",
                describe(cmd),
                dir.display(),
                log.display()
            ),
            status: status.to_string(),
            output,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_carries_command_and_output() {
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"])).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("sh -c") && msg.contains("boom") && msg.contains('3'),
            "{msg}"
        );
        let err = run(&mut Command::new("mkfs.nonesuch")).unwrap_err();
        assert!(matches!(err, ToolError::Missing { .. }));
    }
}

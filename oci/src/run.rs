//! What a container made from an image runs: the image config's
//! Entrypoint, Cmd, Env, WorkingDir and User, under what its definition
//! sets itself, worked out as a container engine does. One mapping for
//! `keel build` (system containers, the image still in its layers) and
//! keel-init (the person's containers, the image unpacked).

use std::path::Path;

use super::{InRoot, RunConfig};

/// Docker's PATH for images that set none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The most of an image's /etc/passwd or /etc/group read to find its User.
const MAX_ID_FILE: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("neither `command` nor the image's Entrypoint or Cmd says what to run")]
    NothingToRun,
    #[error("{program:?} is not in the image's PATH ({path})")]
    NotInPath { program: String, path: String },
    #[error("the image's User {user:?}: no user {name:?} in the image's /etc/passwd; set [user] in the definition")]
    NoUser { user: String, name: String },
    #[error("the image's User {user:?}: no group {name:?} in the image's /etc/group; set [user] in the definition")]
    NoGroup { user: String, name: String },
}

/// An image's root as its container sees it: every path relative to that
/// root and resolved inside it, so a symlink in a hostile image never
/// reaches a file of the host.
pub trait ImageRoot {
    /// Whether `path` is there (its last part not followed: a dangling
    /// symlink is there).
    fn exists(&self, path: &Path) -> bool;
    /// The text of regular file `path`, if it is one.
    fn read_text(&self, path: &Path) -> Option<String>;
}

impl ImageRoot for InRoot {
    fn exists(&self, path: &Path) -> bool {
        InRoot::exists(self, path)
    }

    fn read_text(&self, path: &Path) -> Option<String> {
        let data = self.read(path, MAX_ID_FILE).ok().flatten()?;
        Some(String::from_utf8_lossy(&data).into_owned())
    }
}

/// What a container's own definition sets, each in place of the image's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Given {
    /// In place of Entrypoint then Cmd, if not empty.
    pub command: Vec<String>,
    /// The whole environment, in place of the image's Env.
    pub env: Option<Vec<String>>,
    /// Variables set over the environment, each replacing any of its name.
    pub set_env: Vec<(String, String)>,
    pub cwd: Option<String>,
    /// A User as an image config has it: `uid[:gid]`, or names.
    pub user: Option<String>,
}

/// What the container runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Its program an absolute path in the image.
    pub command: Vec<String>,
    /// With a PATH: the image's, the definition's, or [`DEFAULT_PATH`].
    pub env: Vec<String>,
    /// Absolute: the WorkingDir, or `/`.
    pub cwd: String,
    /// (uid, gid), if the definition or the image names a user.
    pub user: Option<(u32, u32)>,
}

/// What a container of the image with `config` runs, given what its
/// definition sets, the image's files read through `image`.
pub fn resolve(
    config: &RunConfig,
    given: &Given,
    image: &dyn ImageRoot,
) -> Result<Resolved, RunError> {
    let mut env = given
        .env
        .clone()
        .unwrap_or_else(|| config.env.clone().unwrap_or_default());
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    for (k, v) in &given.set_env {
        env.retain(|e| e.split_once('=').map(|(n, _)| n) != Some(k.as_str()));
        env.push(format!("{k}={v}"));
    }
    let cwd = given
        .cwd
        .clone()
        .or_else(|| config.working_dir.clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    let mut command = if given.command.is_empty() {
        config
            .entrypoint
            .iter()
            .flatten()
            .chain(config.cmd.iter().flatten())
            .cloned()
            .collect()
    } else {
        given.command.clone()
    };
    let first = command.first_mut().ok_or(RunError::NothingToRun)?;
    *first = find_program(first, &env, &cwd, image)?;
    let user = given
        .user
        .as_deref()
        .or(config.user.as_deref().filter(|u| !u.is_empty()));
    let user = match user {
        Some(user) => Some(lookup_user(user, &mut |rel| {
            image.read_text(Path::new(rel))
        })?),
        None => None,
    };
    Ok(Resolved {
        command,
        env,
        cwd,
        user,
    })
}

/// The absolute path of `program` inside the image: as it is if absolute,
/// from `cwd` if it has a slash, else looked up in the container's PATH,
/// as a container engine does.
fn find_program(
    program: &str,
    env: &[String],
    cwd: &str,
    image: &dyn ImageRoot,
) -> Result<String, RunError> {
    if program.starts_with('/') {
        return Ok(program.to_string());
    }
    if program.contains('/') {
        return Ok(Path::new(cwd).join(program).to_string_lossy().into_owned());
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or_default();
    for dir in path.split(':').filter(|d| d.starts_with('/')) {
        let inside = Path::new(dir).join(program);
        if image.exists(inside.strip_prefix("/").unwrap_or(&inside)) {
            return Ok(inside.to_string_lossy().into_owned());
        }
    }
    Err(RunError::NotInPath {
        program: program.to_string(),
        path: path.to_string(),
    })
}

/// The uid and gid of an image's User: `uid`, `uid:gid`, or names looked
/// up in the image's own `/etc/passwd` and `/etc/group` (`read` gives a
/// file of the image, if it has it). A user alone takes its passwd gid.
pub fn lookup_user(
    user: &str,
    read: &mut dyn FnMut(&str) -> Option<String>,
) -> Result<(u32, u32), RunError> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    // name → (id, primary gid) in a passwd or group file.
    let find = |text: &Option<String>, name: &str| {
        text.as_deref()?.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name) && f.len() >= 3).then(|| {
                (
                    f[2].parse::<u32>().ok(),
                    f.get(3).and_then(|g| g.parse::<u32>().ok()),
                )
            })
        })
    };
    let (uid, passwd_gid) = match u.parse::<u32>() {
        Ok(uid) => (uid, None),
        Err(_) => match find(&read("etc/passwd"), u) {
            Some((Some(uid), gid)) => (uid, gid),
            _ => {
                return Err(RunError::NoUser {
                    user: user.to_string(),
                    name: u.to_string(),
                })
            }
        },
    };
    let gid = match g {
        None => passwd_gid.unwrap_or(uid),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => match find(&read("etc/group"), g) {
                Some((Some(gid), _)) => gid,
                _ => {
                    return Err(RunError::NoGroup {
                        user: user.to_string(),
                        name: g.to_string(),
                    })
                }
            },
        },
    };
    Ok((uid, gid))
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;

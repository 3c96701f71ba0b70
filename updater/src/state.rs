//! What the updater remembers across reboots, in one JSON file under its
//! persistent folder, replaced atomically.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io_err, UpdateError};

/// An installed update waiting for its first boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub version: String,
    pub from: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Highest index version accepted; an older one is a replay.
    #[serde(default)]
    pub last_index_version: u64,
    /// Public keys (hex) introduced by signed indexes.
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub pending: Option<Pending>,
    #[serde(default)]
    pub last_result: Option<String>,
    /// Drawn at random on the first run: the host's place in staged
    /// rollouts, the same across reboots and updates.
    #[serde(default)]
    pub seed: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Store {
    pub dir: PathBuf,
}

impl Store {
    fn file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn downloads(&self) -> PathBuf {
        self.dir.join("download")
    }

    pub fn load(&self) -> Result<State, UpdateError> {
        let p = self.file();
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| UpdateError::State(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    pub fn save(&self, s: &State) -> Result<(), UpdateError> {
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let p = self.file();
        let tmp = p.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(s).unwrap_or_default();
        write_synced(&tmp, &text)?;
        fs::rename(&tmp, &p).map_err(io_err(&p))?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), UpdateError> {
    use std::io::Write;
    let mut f = fs::File::create(path).map_err(io_err(path))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err(path))
}

/// After a boot: what became of a pending update. Running it is not
/// enough: it has succeeded once the health gate blessed its entry
/// (`blessed`); until then it stays pending.
pub fn settle(state: &mut State, running_version: &str, blessed: bool) -> Option<String> {
    let p = state.pending.as_ref()?;
    if p.version == running_version && !blessed {
        return None;
    }
    let p = state.pending.take()?;
    let msg = if p.version == running_version {
        format!("updated from {} to {}", p.from, p.version)
    } else {
        format!(
            "update to {} failed: it did not come up healthy, the host went back to {running_version}",
            p.version
        )
    };
    state.last_result = Some(msg.clone());
    Some(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_loads_and_settles() {
        let d = tempfile::tempdir().unwrap();
        let store = Store {
            dir: d.path().join("st"),
        };
        assert_eq!(store.load().unwrap(), State::default());
        let mut s = State {
            last_index_version: 4,
            pending: Some(Pending {
                version: "0.3.0".into(),
                from: "0.2.0".into(),
            }),
            ..State::default()
        };
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap(), s);
        assert!(settle(&mut s.clone(), "0.3.0", false).is_none(), "on trial");
        let msg = settle(&mut s.clone(), "0.3.0", true).unwrap();
        assert_eq!(msg, "updated from 0.2.0 to 0.3.0");
        let msg = settle(&mut s, "0.2.0", true).unwrap();
        assert!(msg.contains("update to 0.3.0 failed"), "{msg}");
        assert!(settle(&mut s, "0.2.0", true).is_none());
    }
}

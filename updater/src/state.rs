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
    /// The kernel's boot id when it was installed: while it is the same,
    /// the host has not rebooted into it yet (none: state from before
    /// boot ids were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<String>,
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
    /// What became of the last update tried, as data (for the fleet).
    #[serde(default)]
    pub outcome: Option<keel_api::update::Outcome>,
    /// The group's reboot slot this host holds: taken before rebooting
    /// into an update, kept across the reboot, given back once the update
    /// settled.
    #[serde(default)]
    pub lock: Option<keel_fleet::lock::Held>,
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
pub fn settle(
    state: &mut State,
    running_version: &str,
    blessed: bool,
    now: u64,
    boot: Option<&str>,
) -> Option<String> {
    use keel_api::update::{Outcome, OutcomeKind};
    let p = state.pending.as_ref()?;
    // Installed in this very boot: nothing is known yet (the host waits
    // for a reboot slot, a window or the operator).
    if p.boot.is_some() && p.boot.as_deref() == boot {
        return None;
    }
    if p.version == running_version && !blessed {
        return None;
    }
    let p = state.pending.take()?;
    let (kind, msg) = if p.version == running_version {
        (
            OutcomeKind::Updated,
            format!("updated from {} to {}", p.from, p.version),
        )
    } else {
        (
            OutcomeKind::RolledBack,
            format!(
            "update to {} failed: it did not come up healthy, the host went back to {running_version}",
            p.version
        ),
        )
    };
    state.last_result = Some(msg.clone());
    state.outcome = Some(Outcome {
        kind,
        version: p.version,
        at: now,
    });
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
                boot: Some("b1".into()),
            }),
            ..State::default()
        };
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap(), s);
        use keel_api::update::OutcomeKind;
        assert!(
            settle(&mut s.clone(), "0.2.0", true, 9, Some("b1")).is_none(),
            "installed in this boot: not rolled back, only not booted yet"
        );
        assert!(
            settle(&mut s.clone(), "0.3.0", false, 9, Some("b2")).is_none(),
            "on trial"
        );
        let mut ok = s.clone();
        let msg = settle(&mut ok, "0.3.0", true, 9, Some("b2")).unwrap();
        assert_eq!(msg, "updated from 0.2.0 to 0.3.0");
        assert_eq!(ok.outcome.unwrap().kind, OutcomeKind::Updated);
        let msg = settle(&mut s, "0.2.0", true, 9, Some("b2")).unwrap();
        assert!(msg.contains("update to 0.3.0 failed"), "{msg}");
        let o = s.outcome.clone().unwrap();
        assert_eq!(
            (o.kind, o.version.as_str(), o.at),
            (OutcomeKind::RolledBack, "0.3.0", 9)
        );
        assert!(settle(&mut s, "0.2.0", true, 9, Some("b2")).is_none());
    }
}

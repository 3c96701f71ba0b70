//! The host id ranges of user containers' user namespaces: one per
//! container name, kept in a file under /var so that a container gets the
//! same range on every start and every boot (its volumes belong to that
//! range), and no two containers ever share one.
//!
//! A range is never given to another name, even once its container is
//! gone from the host config: files it left in a volume would belong to
//! the newcomer. There is room for 65519 names.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use keel_formats::host::{USERNS_FIRST, USERNS_IDS};

/// Where the ranges are kept.
pub const RANGES_FILE: &str = "/var/lib/keel-init/id-ranges.json";

#[derive(Debug, thiserror::Error)]
pub enum RangesError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message} (left as it is: fix or remove it by hand; a container whose range is lost would not own its volumes)")]
    Corrupt { path: PathBuf, message: String },
    #[error("every id range of the host is taken")]
    Full,
}

/// The first host id of each container's range, by container name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges {
    bases: BTreeMap<String, u32>,
}

/// How many ranges fit above [`USERNS_FIRST`] in 32-bit ids.
fn slots() -> u32 {
    (u32::MAX - USERNS_FIRST) / USERNS_IDS
}

impl Ranges {
    /// Read the ranges from `text`, refusing anything this code would not
    /// have written: a base off the grid, or one given twice.
    pub fn parse(text: &str, path: &Path) -> Result<Self, RangesError> {
        let corrupt = |message: String| RangesError::Corrupt {
            path: path.to_path_buf(),
            message,
        };
        let bases: BTreeMap<String, u32> =
            serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
        let mut seen = BTreeMap::new();
        for (name, &base) in &bases {
            let slot = base
                .checked_sub(USERNS_FIRST)
                .filter(|off| off % USERNS_IDS == 0 && off / USERNS_IDS < slots())
                .ok_or_else(|| corrupt(format!("{name}: {base} is not the start of a range")))?;
            if let Some(other) = seen.insert(slot, name) {
                return Err(corrupt(format!("{name} and {other} have the same range")));
            }
        }
        Ok(Ranges { bases })
    }

    pub fn render(&self) -> String {
        // A map of strings to numbers cannot fail to serialize.
        serde_json::to_string_pretty(&self.bases).unwrap_or_default() + "\n"
    }

    pub fn get(&self, name: &str) -> Option<u32> {
        self.bases.get(name).copied()
    }

    /// The range of `name`: the one it has, or the lowest free one.
    /// Returns whether it is new (and the file must be written).
    pub fn assign(&mut self, name: &str) -> Result<(u32, bool), RangesError> {
        if let Some(base) = self.get(name) {
            return Ok((base, false));
        }
        let taken: std::collections::BTreeSet<u32> = self.bases.values().copied().collect();
        let base = (0..slots())
            // Never None: slot < slots() keeps the base within u32.
            .filter_map(|slot| slot.checked_mul(USERNS_IDS)?.checked_add(USERNS_FIRST))
            .find(|b| !taken.contains(b))
            .ok_or(RangesError::Full)?;
        self.bases.insert(name.to_string(), base);
        Ok((base, true))
    }
}

/// Read the ranges at `path` (none yet if it is not there).
pub fn load(path: &Path) -> Result<Ranges, RangesError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ranges::parse(&text, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ranges::default()),
        Err(source) => Err(RangesError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Write the ranges to `path` so that a power cut leaves the old file or
/// the new one: beside it, synced, renamed over it, the folder synced.
pub fn save(path: &Path, ranges: &Ranges) -> Result<(), RangesError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| RangesError::Io { path: p, source }
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension("json.new");
    // Made new, never through a link: one left by a cut is removed first.
    let _ = std::fs::remove_file(&tmp);
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o644)
            .open(&tmp)
            .map_err(io(&tmp))?
    };
    f.write_all(ranges.render().as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// The range of container `name`, given it now if it has none.
pub fn range_of(path: &Path, name: &str) -> Result<u32, RangesError> {
    let mut ranges = load(path)?;
    let (base, new) = ranges.assign(name)?;
    if new {
        save(path, &ranges)?;
    }
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_name_keeps_its_own_range() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/id-ranges.json");
        assert_eq!(range_of(&file, "web").unwrap(), 1 << 20);
        assert_eq!(range_of(&file, "db").unwrap(), (1 << 20) + 65536);
        assert_eq!(range_of(&file, "web").unwrap(), 1 << 20, "kept");
        let text = std::fs::read_to_string(&file).unwrap();
        let back = Ranges::parse(&text, &file).unwrap();
        assert_eq!(back.get("db"), Some((1 << 20) + 65536));
        assert!(!file.with_extension("json.new").exists());
    }

    #[test]
    fn a_gap_is_filled_but_a_range_is_never_shared() {
        let p = Path::new("r.json");
        let mut r = Ranges::parse(r#"{"b": 1114112}"#, p).unwrap();
        assert_eq!(r.assign("a").unwrap(), (1 << 20, true));
        assert_eq!(r.assign("c").unwrap(), (1 << 20 | 2 << 16, true));
        assert_eq!(r.assign("b").unwrap(), (1114112, false));
        let mut full = Ranges::default();
        for slot in 0..slots() {
            full.bases
                .insert(format!("c{slot}"), USERNS_FIRST + slot * USERNS_IDS);
        }
        assert!(matches!(full.assign("one-more"), Err(RangesError::Full)));
    }

    #[test]
    fn a_file_this_code_did_not_write_is_refused() {
        let p = Path::new("/var/lib/keel-init/id-ranges.json");
        for (text, why) in [
            ("{\"a\": 5}", "a: 5 is not the start of a range"),
            ("{\"a\": 1048577}", "not the start of a range"),
            ("{\"a\": 4294901760}", "not the start of a range"),
            (
                "{\"a\": 1048576, \"b\": 1048576}",
                "b and a have the same range",
            ),
            ("[1]", "invalid type"),
            ("{\"a\": -1}", "invalid value"),
        ] {
            let e = Ranges::parse(text, p).unwrap_err().to_string();
            assert!(
                e.starts_with("/var/lib/keel-init/id-ranges.json: ") && e.contains(why),
                "{text}: {e}"
            );
        }
    }
}

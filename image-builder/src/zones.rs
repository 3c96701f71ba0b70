//! The image's zone table (see [`keel_formats::tz`]), made from the build
//! machine's zone database (Debian's tzdata).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where Debian's tzdata puts the zone database.
pub const ZONEINFO: &str = "/usr/share/zoneinfo";

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source} (the zone table comes from Debian's tzdata package)")]
pub struct ZoneError {
    path: PathBuf,
    source: std::io::Error,
}

/// Every zone under `dir` with its current POSIX rule. The `posix/` and
/// `right/` copies and files that are not TZif v2+ are left out.
pub fn table(dir: &Path) -> Result<BTreeMap<String, String>, ZoneError> {
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

fn walk(top: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> Result<(), ZoneError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ZoneError { path, source }
    };
    for e in std::fs::read_dir(dir).map_err(err(dir))? {
        let path = e.map_err(err(dir))?.path();
        let Ok(rel) = path.strip_prefix(top) else {
            continue;
        };
        let rel = rel.to_string_lossy().into_owned();
        if rel == "posix" || rel == "right" {
            continue;
        }
        if path.is_dir() {
            walk(top, &path, out)?;
        } else if let Some(rule) = std::fs::read(&path)
            .ok()
            .and_then(|b| keel_formats::tz::footer(&b))
        {
            out.insert(rel, rule);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_s_zones_have_their_rules() {
        let t = table(Path::new(ZONEINFO)).expect("tzdata installed (cargo xtask deps)");
        assert_eq!(t["Europe/Berlin"], "CET-1CEST,M3.5.0,M10.5.0/3");
        assert_eq!(t["UTC"], "UTC0");
        assert!(t.len() > 400, "{}", t.len());
        assert!(!t.keys().any(|z| z.starts_with("right/")));
    }
}

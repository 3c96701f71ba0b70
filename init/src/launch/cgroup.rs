//! cgroup v2 limits of a service, written into its cgroup before it starts.

use std::path::Path;

use keel_formats::limits::Resources;

/// The cgroup interface files and values for `r`. Limits that are not set
/// are written as their "no limit" values so that a definition that drops
/// a limit really loses it. `memory.oom.group` makes the OOM killer take the
/// whole service, which keel-init then restarts as one.
pub fn limit_files(r: &Resources) -> Vec<(&'static str, String)> {
    let or_max = |v: Option<u64>| v.map_or("max".to_string(), |v| v.to_string());
    vec![
        ("memory.max", or_max(r.memory_max.map(|s| s.0))),
        ("memory.high", or_max(r.memory_high.map(|s| s.0))),
        ("memory.oom.group", "1".to_string()),
        ("pids.max", or_max(r.pids_max)),
        ("cpu.weight", r.cpu_weight.unwrap_or(100).to_string()),
        (
            "cpu.max",
            r.cpu_max_percent.map_or("max 100000".to_string(), |p| {
                format!("{} 100000", u64::from(p) * 1000)
            }),
        ),
        (
            "io.weight",
            format!("default {}", r.io_weight.unwrap_or(100)),
        ),
    ]
}

/// Write the limits into the cgroup folder `dir`. A controller the kernel
/// lacks (its file is missing) is an error only if the definition asked for
/// a limit there.
pub fn apply(dir: &Path, r: &Resources) -> Result<(), String> {
    let asked = |file: &str| match file {
        "memory.max" => r.memory_max.is_some(),
        "memory.high" => r.memory_high.is_some(),
        "pids.max" => r.pids_max.is_some(),
        "cpu.weight" => r.cpu_weight.is_some(),
        "cpu.max" => r.cpu_max_percent.is_some(),
        "io.weight" => r.io_weight.is_some(),
        _ => false,
    };
    for (file, value) in limit_files(r) {
        let path = dir.join(file);
        if let Err(e) = std::fs::write(&path, &value) {
            if asked(file) || path.exists() {
                return Err(format!("{}: writing {value:?}: {e}", path.display()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_formats::limits::Size;

    #[test]
    fn files_for_limits_and_defaults() {
        let r = Resources {
            memory_max: Some(Size(16 << 20)),
            pids_max: Some(32),
            cpu_max_percent: Some(50),
            ..Default::default()
        };
        let f = limit_files(&r);
        let get = |k: &str| f.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("memory.max"), Some("16777216"));
        assert_eq!(get("memory.high"), Some("max"));
        assert_eq!(get("pids.max"), Some("32"));
        assert_eq!(get("cpu.max"), Some("50000 100000"));
        assert_eq!(get("memory.oom.group"), Some("1"));
    }

    #[test]
    fn apply_writes_files_and_reports_what_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let r = Resources {
            pids_max: Some(8),
            ..Default::default()
        };
        // A cgroup without the pids controller has no pids.max to write.
        let err = apply(&dir.path().join("no-such-cgroup"), &r).unwrap_err();
        assert!(err.contains("pids.max"), "{err}");
        // Limits not asked for are skipped where the controller is missing.
        apply(&dir.path().join("no-such-cgroup"), &Resources::default()).unwrap();
        apply(dir.path(), &r).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("pids.max")).unwrap(),
            "8"
        );
    }
}

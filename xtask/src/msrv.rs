//! The declared `rust-version` must stay true. No older toolchain can be
//! installed on these machines to build with, so the check is in two
//! halves: clippy's `incompatible_msrv` (on by default) refuses a std API
//! newer than the declared version, and this refuses a locked dependency
//! whose own `rust-version` is newer, or a member that does not inherit the
//! workspace's.

use anyhow::{bail, Context};
use std::process::Stdio;

/// "1.89" or "1.89.0" as (1, 89, 0); `None` for anything else.
fn parse(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let major = it.next()??;
    let minor = it.next()??;
    let patch = it.next().unwrap_or(Some(0))?;
    it.next().is_none().then_some((major, minor, patch))
}

pub(crate) fn check() -> anyhow::Result<()> {
    let out = crate::cargo()
        .args(["metadata", "--format-version", "1", "--locked"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed");
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let members: Vec<&str> = meta["workspace_members"]
        .as_array()
        .context("cargo metadata: no workspace_members")?
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    let packages = meta["packages"]
        .as_array()
        .context("cargo metadata: no packages")?;
    let mut declared = None;
    let mut newest: Option<((u32, u32, u32), String)> = None;
    for p in packages {
        let name = p["name"].as_str().unwrap_or("?");
        let version = p["rust_version"].as_str();
        if members.contains(&p["id"].as_str().unwrap_or("")) {
            let Some(v) = version.and_then(parse) else {
                bail!("{name}: no rust-version; add `rust-version.workspace = true`");
            };
            if declared.is_some_and(|d| d != v) {
                bail!("{name}: rust-version {v:?} differs from the other members'");
            }
            declared = Some(v);
        } else if let Some(v) = version.and_then(parse) {
            if newest.as_ref().is_none_or(|(n, _)| v > *n) {
                let who = format!("{name} {}", p["version"].as_str().unwrap_or("?"));
                newest = Some((v, who));
            }
        }
    }
    let declared = declared.context("cargo metadata: no workspace member")?;
    if let Some((v, who)) = newest {
        if v > declared {
            bail!(
                "the workspace declares rust-version {}.{}, but {who} needs {}.{}: raise it",
                declared.0,
                declared.1,
                v.0,
                v.1
            );
        }
    }
    eprintln!(
        "xtask: rust-version {}.{} holds for every locked dependency",
        declared.0, declared.1
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{check, parse};

    #[test]
    fn the_declared_rust_version_holds_for_the_lockfile() {
        check().unwrap();
    }

    #[test]
    fn versions_parse_with_or_without_a_patch() {
        assert_eq!(parse("1.89"), Some((1, 89, 0)));
        assert_eq!(parse("1.89.1"), Some((1, 89, 1)));
        assert_eq!(parse("1"), None);
        assert_eq!(parse("1.x"), None);
        assert_eq!(parse("1.2.3.4"), None);
    }
}

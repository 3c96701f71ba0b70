use super::{ImageRecipe, PackageRecipe};

type Invalid = (String, String);

fn invalid(key: &str, message: impl Into<String>) -> Invalid {
    (key.to_string(), message.into())
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn validate_kernel(k: &super::KernelRecipe) -> Result<(), Invalid> {
    match (&k.source, &k.package) {
        (Some(_), Some(_)) => Err(invalid(
            "kernel.package",
            "name either `source` (build the kernel) or `package` (use Debian's build), not both",
        )),
        (None, None) => Err(invalid(
            "kernel",
            "name `source` (a kernel source package to build) or `package` (a prebuilt Debian kernel)",
        )),
        (Some(_), None) if k.fragments.is_empty() => Err(invalid(
            "kernel.fragments",
            "at least one fragment is required",
        )),
        (Some(_), None) if !k.modules.is_empty() => Err(invalid(
            "kernel.modules",
            "only a prebuilt kernel (`package`) loads modules; one built from `source` has everything built in",
        )),
        (None, Some(_)) if !k.fragments.is_empty() || k.base.is_some() => Err(invalid(
            if k.base.is_some() { "kernel.base" } else { "kernel.fragments" },
            "a prebuilt kernel (`package`) comes with its configuration; `base` and `fragments` need `source`",
        )),
        _ => match k.modules.iter().find(|m| !is_name(m)) {
            Some(m) => Err(invalid("kernel.modules", format!("{m:?} is not a module name"))),
            None => Ok(()),
        },
    }
}

/// Folders the host mounts over at run time: a file put there would never
/// be seen.
const MOUNTED_OVER: &[&str] = &["dev", "proc", "sys", "run", "tmp", "var", "efi"];

fn validate_extra_file(dst: &str, f: &super::ExtraFile) -> Result<(), Invalid> {
    let key = format!("files.{dst}");
    let inside = |p: &str| {
        !p.is_empty()
            && !p.starts_with('/')
            && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
    };
    if !inside(dst) {
        return Err(invalid(
            &key,
            "the path in the image must be relative to `/`, without `.`, `..` or empty parts",
        ));
    }
    if let Some(top) = MOUNTED_OVER
        .iter()
        .find(|m| dst.split('/').next() == Some(**m))
    {
        return Err(invalid(
            &key,
            format!(
                "/{top} is mounted over when the host runs; put the file elsewhere (/etc, /usr)"
            ),
        ));
    }
    if f.source.is_empty() {
        return Err(invalid(&key, "`source` is empty"));
    }
    match f.mode {
        Some(m) if m > 0o777 => Err(invalid(
            &key,
            format!("mode {m:#o} has bits beyond 0o777 (no setuid, setgid or sticky files)"),
        )),
        _ => Ok(()),
    }
}

/// Checks beyond the shape of the file; the error names the key.
pub fn validate_image(r: &ImageRecipe) -> Result<(), Invalid> {
    if r.outputs.formats.is_empty() {
        return Err(invalid(
            "outputs.formats",
            "names no output; \"raw\", \"qcow2\", \"uki\", \"direct\" and \"manifest\" are the choices",
        ));
    }
    if !is_name(&r.image.name) {
        return Err(invalid(
            "image.name",
            format!(
                "{:?} must be letters, digits, '-', '_' or '.'",
                r.image.name
            ),
        ));
    }
    let v = &r.image.version;
    if v.is_empty()
        || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
        || !v.starts_with(|c: char| c.is_ascii_digit())
    {
        // '+' and '-' are reserved: systemd-boot's boot counting parses them
        // out of the UKI's file name.
        return Err(invalid(
            "image.version",
            format!("{v:?} must start with a digit and hold only letters, digits and '.'"),
        ));
    }
    if let Err(e) = semver::Version::parse(v) {
        // Updates compare versions: they must be MAJOR.MINOR.PATCH.
        return Err(invalid(
            "image.version",
            format!("{v:?} is not MAJOR.MINOR.PATCH: {e}"),
        ));
    }
    if let Some(min) = &r.update.min_version {
        if let Err(e) = semver::Version::parse(min) {
            return Err(invalid(
                "update.min_version",
                format!("{min:?} is not MAJOR.MINOR.PATCH: {e}"),
            ));
        }
    }
    if let Err(e) = r.update.policy.validate() {
        return Err(invalid("update.policy", e));
    }
    validate_kernel(&r.kernel)?;
    if r.kernel
        .cmdline
        .split_ascii_whitespace()
        .any(|w| w.starts_with("keel."))
    {
        return Err(invalid(
            "kernel.cmdline",
            "keel.* keys are written by `keel build`, not by the recipe",
        ));
    }
    if r.containers.dirs.is_empty() {
        return Err(invalid(
            "containers.dirs",
            "name at least one folder of container definitions",
        ));
    }
    if r.containers.enable.is_empty() {
        return Err(invalid(
            "containers.enable",
            "an image needs at least one system container",
        ));
    }
    for p in &r.userland.packages {
        if !is_name(p) {
            return Err(invalid(
                "userland.packages",
                format!("{p:?} is not a package name"),
            ));
        }
    }
    for (dst, f) in &r.files {
        validate_extra_file(dst, f)?;
    }
    let parts = &r.partitions;
    for (key, mib, min) in [
        ("partitions.esp_mib", parts.esp_mib, 33),
        ("partitions.root_mib", parts.root_mib, 8),
        ("partitions.verity_mib", parts.verity_mib, 1),
        ("partitions.data_mib", parts.data_mib, 16),
    ] {
        if mib < min {
            return Err(invalid(
                key,
                format!("{mib} MiB is below the minimum of {min} MiB"),
            ));
        }
    }
    Ok(())
}

pub fn validate_package(r: &PackageRecipe) -> Result<(), Invalid> {
    if !is_name(&r.source) {
        return Err(invalid(
            "source",
            format!("{:?} is not a Debian source package name", r.source),
        ));
    }
    if r.files.is_empty() {
        return Err(invalid("files", "a package must install at least one file"));
    }
    match r.build {
        super::types::BuildKind::Kconfig if r.defconfig.is_none() => {
            return Err(invalid("defconfig", "a kconfig build needs its defconfig target"))
        }
        super::types::BuildKind::Configure if r.defconfig.is_some() || !r.config.is_empty() => {
            return Err(invalid(
                "defconfig",
                "defconfig and config are for kconfig builds; a configure build takes `configure` arguments",
            ))
        }
        _ => {}
    }
    for path in r.tree_files.keys() {
        if path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return Err(invalid(
                &format!("tree_files.{path}"),
                "paths must be relative and stay inside the tree",
            ));
        }
    }
    for (k, v) in &r.config {
        if !k.starts_with("CONFIG_") {
            return Err(invalid(
                &format!("config.{k}"),
                "option names start with CONFIG_",
            ));
        }
        if v.contains('\n') {
            return Err(invalid(&format!("config.{k}"), "value must be one line"));
        }
    }
    for (dst, src) in &r.files {
        if dst.starts_with('/') || dst.contains("..") || src.starts_with('/') || src.contains("..")
        {
            return Err(invalid(
                &format!("files.{dst}"),
                "paths must be relative and stay inside the tree",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(version: &str, cmdline: &str) -> ImageRecipe {
        toml::from_str(&format!(
            r#"
[image]
name = "keel"
version = "{version}"
[kernel]
source = "linux-source-6.1"
fragments = ["k.config"]
required = "r.txt"
cmdline = "{cmdline}"
[containers]
dirs = ["c"]
enable = ["admin"]
"#
        ))
        .unwrap()
    }

    #[test]
    fn version_may_not_confuse_boot_counting() {
        assert!(validate_image(&recipe("0.1.0", "")).is_ok());
        assert_eq!(
            validate_image(&recipe("0.1.0+3", "")).unwrap_err().0,
            "image.version"
        );
        assert_eq!(
            validate_image(&recipe("v1", "")).unwrap_err().0,
            "image.version"
        );
        assert_eq!(
            validate_image(&recipe("1.2", "")).unwrap_err().0,
            "image.version"
        );
    }

    #[test]
    fn recipe_may_not_forge_keel_keys() {
        assert_eq!(
            validate_image(&recipe("1.0.0", "keel.slot=b"))
                .unwrap_err()
                .0,
            "kernel.cmdline"
        );
    }
}

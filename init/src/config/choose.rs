//! Which host config to run on: the image's defaults merged with the
//! person's file on the ESP, checked against the image's services. A bad
//! file never stops the host: it runs on the last good config (kept under
//! `/var`), or on the image's defaults when there is none, and says why.

use std::path::Path;

use keel_formats::hostconfig::{load, Context, HostConfig, Source};

use keel_api::init::ConfigSource;

/// Where the last config that passed every check is kept.
pub const LAST_GOOD: &str = "/var/lib/keel/config/host.toml";

/// The person's host config as keel-init reads it: on the mounted ESP.
pub(crate) fn esp_file() -> std::path::PathBuf {
    Path::new(keel_formats::bootentry::ESP_MOUNT).join(keel_formats::host::ON_ESP)
}

/// No host config comes near this; a bigger file is something else (a
/// boot entry whose clusters a torn rename left under the config's name).
const MAX_ESP_FILE: u64 = 1 << 20;

/// The ESP's host config file at `path`: None if there is none; an error
/// naming it if it is there but is no text keel-init could read.
pub fn read_esp(path: &Path) -> Option<Result<String, String>> {
    use std::io::Read;
    let shown = path.display();
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(Err(format!("{shown}: {e}"))),
    };
    let mut bytes = Vec::new();
    if let Err(e) = f
        .take(MAX_ESP_FILE.saturating_add(1))
        .read_to_end(&mut bytes)
    {
        return Some(Err(format!("{shown}: {e}")));
    }
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_ESP_FILE {
        return Some(Err(format!(
            "{shown}: larger than {MAX_ESP_FILE} bytes: not a host config"
        )));
    }
    Some(String::from_utf8(bytes).map_err(|e| {
        format!(
            "{shown}: not text (byte {} is not UTF-8): not a host config",
            e.utf8_error().valid_up_to()
        )
    }))
}

/// The texts a decision is made from.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub defaults: Option<String>,
    /// The ESP's file: none, its text, or why it cannot be read (a file
    /// a power cut tore into binary bytes is a bad config, not no config).
    pub esp: Option<Result<String, String>>,
    pub last_good: Option<String>,
    pub services: Vec<String>,
    /// The image's zone table.
    pub zones: Option<Vec<String>>,
}

/// Pick the config to run on, and say why.
pub fn choose(i: &Inputs) -> (HostConfig, ConfigSource, Vec<String>) {
    let ctx = Context {
        services: Some(i.services.clone()),
        zones: i.zones.clone(),
    };
    let defaults = i.defaults.as_deref().map(|text| Source {
        name: Path::new(keel_formats::host::DEFAULTS),
        text,
    });
    let lines = |d: Vec<keel_formats::hostconfig::Diagnostic>| -> Vec<String> {
        d.iter().map(ToString::to_string).collect()
    };
    let mut errors = Vec::new();
    if let Some(esp) = &i.esp {
        let name = esp_file();
        match esp {
            Ok(text) => match load(defaults, Some(Source { name: &name, text }), &ctx) {
                Ok(c) => return (c, ConfigSource::Esp, errors),
                Err(d) => errors = lines(d),
            },
            Err(e) => errors.push(e.clone()),
        }
        if let Some(text) = &i.last_good {
            let good = Source {
                name: Path::new(LAST_GOOD),
                text,
            };
            if let Ok(c) = load(None, Some(good), &ctx) {
                return (c, ConfigSource::LastGood, errors);
            }
        }
    }
    match load(defaults, None, &ctx) {
        Ok(c) => (c, ConfigSource::Defaults, errors),
        Err(d) => {
            // An image whose own defaults are bad (keel build refuses
            // those): run with none at all.
            errors.extend(lines(d));
            (HostConfig::default(), ConfigSource::Defaults, errors)
        }
    }
}

/// The image's zone table, if it has one.
pub fn zone_table() -> Option<std::collections::BTreeMap<String, String>> {
    std::fs::read_to_string(keel_formats::tz::ZONES)
        .ok()
        .map(|t| keel_formats::tz::parse(&t))
}

/// Make `text` the person's config on the ESP (mounted), so that the host
/// boots on it: written beside, synced, renamed over.
pub fn write_esp(text: &str) -> Result<(), String> {
    let path = esp_file();
    let tmp = path.with_extension("toml.new");
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        nix::unistd::sync();
        Ok(())
    };
    write().map_err(|e| format!("{}: {e}", path.display()))
}

/// Keep `c` as the last good config.
pub fn save_last_good(c: &HostConfig) -> Result<(), String> {
    let text = toml::to_string(c).map_err(|e| e.to_string())?;
    let path = Path::new(LAST_GOOD);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("toml.tmp");
    // Root's only: it may hold registry passwords. Synced before the
    // rename, so a power cut leaves the old file or the whole new one.
    let write = || {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(format!("# The last host config that passed every check; keel-init boots on it when the ESP's is bad.\n{text}").as_bytes())?;
        f.sync_all()
    };
    write().map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// A host config's text (called `name` in problems) as this host reads it:
/// over the image's defaults, against the image's `services`.
/// `zones`: the image's zone table, as read at boot.
pub fn read(
    name: &str,
    text: &str,
    services: &[String],
    zones: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<HostConfig, Vec<String>> {
    let defaults = std::fs::read_to_string(keel_formats::host::DEFAULTS).ok();
    let ctx = Context {
        services: Some(services.to_vec()),
        zones: zones.map(|t| t.keys().cloned().collect()),
    };
    let defaults = defaults.as_deref().map(|text| Source {
        name: Path::new(keel_formats::host::DEFAULTS),
        text,
    });
    load(
        defaults,
        Some(Source {
            name: Path::new(name),
            text,
        }),
        &ctx,
    )
    .map_err(|d| d.iter().map(ToString::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(esp: Option<&str>, last_good: Option<&str>) -> Inputs {
        Inputs {
            defaults: Some(
                "hostname = \"keel-default\"\n[sysctl]\n\"vm.swappiness\" = 60\n".into(),
            ),
            esp: esp.map(|t| Ok(t.to_string())),
            last_good: last_good.map(str::to_string),
            services: vec!["admin".into(), "web".into()],
            zones: None,
        }
    }

    #[test]
    fn a_good_file_wins_key_by_key() {
        let (c, src, errors) = choose(&inputs(Some("hostname = \"edge\"\n"), None));
        assert_eq!((src, errors.len()), (ConfigSource::Esp, 0));
        assert_eq!(c.hostname.as_deref(), Some("edge"));
        assert_eq!(c.sysctl["vm.swappiness"].render(), "60");
    }

    #[test]
    fn a_bad_file_falls_back_to_the_last_good_then_the_defaults() {
        let bad = "hostname = 7\n[services.nginx]\nenabled = false\n";
        let (c, src, errors) = choose(&inputs(Some(bad), Some("hostname = \"was-good\"\n")));
        assert_eq!(src, ConfigSource::LastGood);
        assert_eq!(c.hostname.as_deref(), Some("was-good"));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("/efi/keel/host.toml:1:12: `hostname`"),
            "{errors:?}"
        );
        assert!(errors[1].contains("no service \"nginx\""), "{errors:?}");

        let (c, src, errors) = choose(&inputs(Some(bad), None));
        assert_eq!(src, ConfigSource::Defaults);
        assert_eq!(c.hostname.as_deref(), Some("keel-default"));
        assert_eq!(errors.len(), 2);

        let (_, src, errors) = choose(&inputs(None, Some("hostname = \"old\"\n")));
        assert_eq!(
            (src, errors.len()),
            (ConfigSource::Defaults, 0),
            "no file: the defaults"
        );
    }

    #[test]
    fn a_file_torn_into_binary_is_a_bad_config_not_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.toml");
        assert_eq!(read_esp(&path), None);
        std::fs::write(&path, b"hostname = \"a\"\n").unwrap();
        assert_eq!(read_esp(&path), Some(Ok("hostname = \"a\"\n".into())));
        // A UKI's first bytes, as a torn rename on vfat left them.
        std::fs::write(&path, b"MZ\x90\0\x03\0\0\0\x04\0\xff\xff").unwrap();
        let torn = read_esp(&path).unwrap().unwrap_err();
        assert!(torn.contains("byte 2 is not UTF-8"), "{torn}");
        std::fs::write(&path, vec![b'#'; (MAX_ESP_FILE + 1) as usize]).unwrap();
        assert!(read_esp(&path)
            .unwrap()
            .unwrap_err()
            .contains("larger than"));

        let mut i = inputs(None, Some("hostname = \"was-good\"\n"));
        i.esp = Some(Err(torn.clone()));
        let (c, src, errors) = choose(&i);
        assert_eq!(src, ConfigSource::LastGood);
        assert_eq!(c.hostname.as_deref(), Some("was-good"));
        assert_eq!(errors, [torn]);
    }
}

//! The host config on a host: which config to run on ([`choose`]), what it
//! means for the image's services and files ([`derive`]), and bringing the
//! host to it ([`converge`]) through one seam for host effects
//! ([`effects`]). Boot and `keelctl config apply` take the same path; boot
//! starts from nothing.

pub mod choose;
pub mod converge;
pub mod derive;
pub mod effects;

use std::collections::BTreeMap;

use keel_formats::container::ContainerDef;
pub use keel_formats::hostconfig::HostConfig;

pub use choose::{read, save_last_good, write_esp, zone_table, LAST_GOOD};
pub use converge::{converge, Before, Converged, Image};
pub use effects::{Effects, RealHost};
pub use keel_api::init::{ConfigSource, ConfigState};

/// What boot found: the config to run on, what to show of it, and what it
/// runs.
#[derive(Debug)]
pub struct AtBoot {
    pub config: HostConfig,
    pub state: ConfigState,
    /// Whether the ESP got mounted to read the file (the health gate and
    /// services binding /efi use that mount).
    pub esp: Option<Result<(), String>>,
    pub converged: Converged,
}

/// Read the host config at boot and bring the host to it from nothing.
/// `esp`: the host booted from a keel disk, which has an ESP to read.
/// Every problem and warning is said on the console as well.
pub fn at_boot(
    esp: bool,
    defs: &[(String, ContainerDef)],
    zones: Option<&BTreeMap<String, String>>,
    fx: &mut dyn Effects,
) -> AtBoot {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let esp_mount = esp.then(crate::pid1::bootgate::mount_esp);
    let esp_text = match &esp_mount {
        Some(Ok(())) => choose::read_esp(&choose::esp_file()),
        _ => None,
    };
    let inputs = choose::Inputs {
        defaults: read(keel_formats::host::DEFAULTS),
        esp: esp_text,
        last_good: read(LAST_GOOD),
        services: defs.iter().map(|(n, _)| n.clone()).collect(),
        zones: zones.map(|t| t.keys().cloned().collect()),
    };
    let (config, source, errors) = choose::choose(&inputs);
    for e in &errors {
        crate::log(format!("error: host config: {e}"));
    }
    match source {
        ConfigSource::LastGood => crate::log(format!(
            "warning: the ESP's host config has {} problem(s); running on the last good config ({LAST_GOOD})",
            errors.len()
        )),
        ConfigSource::Defaults if !errors.is_empty() => crate::log(format!(
            "warning: the ESP's host config has {} problem(s); running on the image's defaults",
            errors.len()
        )),
        _ => {
            if let Err(e) = save_last_good(&config) {
                crate::log(format!("warning: keeping the host config: {e}"));
            }
        }
    }
    let converged = converge(None, &config, Image { defs, zones }, fx);
    for w in &converged.warnings {
        crate::log(format!("warning: host config: {w}"));
    }
    AtBoot {
        state: ConfigState {
            source,
            errors,
            disabled: converged.disabled.clone(),
            warnings: converged.warnings.clone(),
            trial_until_ms: None,
        },
        config,
        esp: esp_mount,
        converged,
    }
}

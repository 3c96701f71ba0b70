//! The `keel-update` command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use keel_formats::bootentry::{ENTRIES_DIR, ESP_MOUNT};
use keel_formats::policy::{Policy, HOST_POLICY_FILE, POLICY_FILE};

use keel_update::agent::{Agent, Paths};
use keel_update::slots::BY_PARTLABEL;

#[derive(Debug, Parser)]
#[command(name = "keel-update", version, about = "keel's A/B updater")]
pub struct Cli {
    /// Folder for what the updater keeps across reboots.
    #[arg(long, default_value = "/var/lib/keel-update")]
    state: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve `keelctl update` and check the repository periodically.
    Daemon,
    /// Install a bundle file now (what `keelctl update apply FILE` does).
    Apply { bundle: PathBuf },
}

fn agent(state: PathBuf) -> anyhow::Result<Agent> {
    // The host's policy (the image's with the host config over it) when
    // keel-init wrote one, else the image's own.
    let (file, policy): (&str, Policy) = match std::fs::read_to_string(HOST_POLICY_FILE) {
        Ok(t) => (
            HOST_POLICY_FILE,
            toml::from_str(&t).with_context(|| HOST_POLICY_FILE.to_string())?,
        ),
        Err(_) => match std::fs::read_to_string(POLICY_FILE) {
            Ok(t) => (
                POLICY_FILE,
                toml::from_str(&t).with_context(|| POLICY_FILE.to_string())?,
            ),
            Err(_) => (POLICY_FILE, Policy::default()),
        },
    };
    policy
        .validate()
        .map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("/proc/cmdline")?;
    let os_release = std::fs::read_to_string("/etc/os-release").context("/etc/os-release")?;
    let paths = Paths {
        partitions: BY_PARTLABEL.into(),
        entries: PathBuf::from(ESP_MOUNT).join(ENTRIES_DIR),
        state,
        keys: keel_formats::keys::TRUSTED_DIR.into(),
        machine_id: keel_formats::host::RUN_MACHINE_ID.into(),
        boot_id: "/proc/sys/kernel/random/boot_id".into(),
    };
    Ok(Agent::new(&paths, policy, &cmdline, &os_release)?)
}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Daemon => {
            crate::daemon::exit_on_sigterm()?;
            let listener = crate::daemon::listen()?;
            crate::daemon::run(agent(cli.state)?, listener)
        }
        Cmd::Apply { bundle } => {
            let agent = agent(cli.state)?;
            let f = std::fs::File::open(&bundle).with_context(|| bundle.display().to_string())?;
            println!("{}", agent.apply(f)?);
            Ok(())
        }
    }
}

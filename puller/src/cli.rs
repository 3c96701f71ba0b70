//! `keel-pull daemon` (the system container's command) and `keel-pull
//! pull` (one pull into a store: by hand, and for `cargo xtask bench pull`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use keel_registry::auth::Credentials;
use keel_registry::client::{Client, Options, Progress};
use keel_registry::manifest::Platform;
use keel_registry::reference::Reference;
use keel_registry::store::Store;

#[derive(Parser)]
#[command(name = "keel-pull", version, about = "Pull images from OCI registries")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve keel-init's pull requests on DIR/pull.sock into DIR/store.
    Daemon {
        #[arg(long, default_value = keel_api::pull::PULL_DIR)]
        dir: PathBuf,
    },
    /// Pull REF into the store at --store; prints the manifest digest.
    Pull {
        #[arg(long)]
        store: PathBuf,
        /// Plain http.
        #[arg(long)]
        insecure: bool,
        /// A CA certificate (PEM file) to trust besides the webpki roots.
        #[arg(long)]
        ca: Vec<PathBuf>,
        #[arg(long, requires = "password_file")]
        user: Option<String>,
        /// A file holding the password (never on the command line).
        #[arg(long, requires = "user")]
        password_file: Option<PathBuf>,
        reference: String,
    },
}

pub fn run() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Daemon { dir } => keel_pull::serve(&dir).context("keel-pull daemon"),
        Cmd::Pull {
            store,
            insecure,
            ca,
            user,
            password_file,
            reference,
        } => {
            let r: Reference = reference.parse()?;
            let ca_pems = ca
                .iter()
                .map(|p| std::fs::read_to_string(p).with_context(|| p.display().to_string()))
                .collect::<anyhow::Result<_>>()?;
            let credentials = match (user, password_file) {
                (Some(username), Some(file)) => Some(Credentials {
                    username,
                    password: std::fs::read_to_string(&file)
                        .with_context(|| file.display().to_string())?
                        .trim_end_matches('\n')
                        .to_string(),
                }),
                _ => None,
            };
            let client = Client::new(
                r.api_host(),
                Options {
                    insecure,
                    ca_pems,
                    credentials,
                },
            )?;
            let store = Store::open(&store)?;
            let mut last = String::new();
            let pulled = keel_registry::pull::pull(
                &mut [client],
                &r,
                &Platform::host(),
                &store,
                &mut |p: Progress<'_>| {
                    if p.done == p.total {
                        let line = format!("{} {} bytes", p.digest, p.total);
                        if line != last {
                            eprintln!("{line}");
                            last = line;
                        }
                    }
                },
            )?;
            println!("{}", pulled.manifest.digest);
            Ok(())
        }
    }
}

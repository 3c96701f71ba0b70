//! `keel fleet` (the fleet as etcd has it, and a watch that pauses a
//! failing rollout) and `keel pki` (a CA and its certificates).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;

use keel_fleet::report::{table, Fleet};
use keel_fleet::{Etcd, Tls};
use keel_formats::pki::Role;
use keel_image_builder::pki;

#[derive(Debug, clap::Args)]
pub struct EtcdArgs {
    /// etcd endpoint (`https://10.0.0.5:2379`); repeat for a cluster.
    #[arg(long, required = true)]
    pub etcd: Vec<String>,
    /// The CA that signed etcd's certificate (default: the web's roots).
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// Client certificate and key, for etcd's `--client-cert-auth`.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Only this group's hosts.
    #[arg(long)]
    pub group: Option<String>,
}

impl EtcdArgs {
    fn client(&self) -> anyhow::Result<Etcd> {
        let read = |p: &Option<PathBuf>| -> anyhow::Result<Option<String>> {
            p.as_ref()
                .map(|p| std::fs::read_to_string(p).with_context(|| p.display().to_string()))
                .transpose()
        };
        if let Some(g) = &self.group {
            keel_formats::policy::check_group(g).map_err(|e| anyhow::anyhow!("--group: {e}"))?;
        }
        let tls = Tls {
            ca: read(&self.cacert)?,
            cert: read(&self.cert)?,
            key: read(&self.key)?,
        };
        Ok(Etcd::new(&self.etcd, &tls)?)
    }
}

#[derive(Debug, Subcommand)]
pub enum FleetCmd {
    /// The hosts that report to etcd, as a table: version, slot, health,
    /// update state and last update of each, then hosts per version, the
    /// hosts failing and those rebooting.
    Status {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// JSON instead of text, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Watch the release on a channel of a repository and pause its
    /// rollout (publish the index again with a wave that reaches no host)
    /// when more than --max-failed % of the hosts that took it failed to
    /// update or are unhealthy on it.
    Watch(WatchArgs),
}

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[arg(long)]
    pub repo: PathBuf,
    /// Secret key that signs the index (`--key` is etcd's client key).
    #[arg(long)]
    pub sign_key: PathBuf,
    #[arg(long, default_value = "stable")]
    pub channel: String,
    /// Pause when more than this share (0 to 100) of the hosts that took
    /// the release failed.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub max_failed: u8,
    /// Seconds between looks.
    #[arg(long, default_value_t = 30)]
    pub interval: u64,
    /// Look once and exit.
    #[arg(long)]
    pub once: bool,
    /// Days until hosts refuse the paused index as expired.
    #[arg(long, default_value_t = 30)]
    pub valid_days: u64,
}

#[derive(Debug, Subcommand)]
pub enum PkiCmd {
    /// Make a CA in DIR: ca.pem and ca.key (0600). Never overwrites one.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "keel CA")]
        name: String,
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue NAME.pem and NAME.key with the CA in DIR: a server
    /// certificate for each --server name (IP address or DNS name), and a
    /// client certificate, with --role for a host's remote API.
    Issue {
        name: String,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        server: Vec<String>,
        /// read-only or admin.
        #[arg(long)]
        role: Option<Role>,
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

pub fn fleet_cmd(c: FleetCmd) -> anyhow::Result<()> {
    match c {
        FleetCmd::Status { etcd, json } => {
            let f = Fleet::read(&etcd.client()?, etcd.group.as_deref())?;
            if json {
                let out = serde_json::json!({
                    "hosts": f.hosts,
                    "versions": f.versions(),
                    "failing": f.failing().iter().map(|h| &h.host).collect::<Vec<_>>(),
                    "rebooting": f.rebooting.iter().map(|(g, h)| serde_json::json!({"group": g, "host": h})).collect::<Vec<_>>(),
                    "unreadable": f.unreadable,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print!("{}", table(&f));
            }
            Ok(())
        }
        FleetCmd::Watch(w) => watch(&w),
    }
}

fn watch(w: &WatchArgs) -> anyhow::Result<()> {
    use keel_image_builder::{bundle, repo};
    let kv = w.etcd.client()?;
    let key = bundle::read_secret(&w.sign_key)?;
    loop {
        let (version, paused) = repo::channel_release(&w.repo, &key, &w.channel)?;
        if paused {
            println!("{} on {}: the rollout is paused", version, w.channel);
            return Ok(());
        }
        // etcd away is a pause in watching, not the end of it.
        match Fleet::read(&kv, w.etcd.group.as_deref()) {
            Ok(f) => {
                let (took, failed) = f.took(&version);
                println!(
                    "{version} on {}: {took} hosts took it, {failed} failed (limit {} %)",
                    w.channel, w.max_failed
                );
                if took > 0 && failed * 100 > usize::from(w.max_failed) * took {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    let v = repo::pause(
                        &w.repo,
                        &key,
                        &w.channel,
                        w.valid_days.saturating_mul(86_400),
                        now,
                    )?;
                    println!("paused the rollout of {v}: {failed} of {took} hosts failed");
                    return Ok(());
                }
            }
            Err(e) if !w.once => eprintln!("keel fleet watch: {e}"),
            Err(e) => return Err(e.into()),
        }
        if w.once {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(w.interval.max(1)));
    }
}

pub fn pki_cmd(c: PkiCmd) -> anyhow::Result<()> {
    match c {
        PkiCmd::Init { dir, name, days } => {
            let cert = pki::init(&dir, &name, days)?;
            println!("{}", cert.display());
        }
        PkiCmd::Issue {
            name,
            dir,
            server,
            role,
            days,
        } => {
            let (cert, key) = pki::issue(
                &dir,
                &pki::Issue {
                    name: &name,
                    servers: &server,
                    role,
                    days,
                },
            )?;
            println!("{}\n{}", cert.display(), key.display());
        }
    }
    Ok(())
}

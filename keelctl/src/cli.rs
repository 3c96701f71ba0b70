//! keelctl's command line: the clap types, and one function per
//! subcommand over keel-init's and keel-update's APIs, local or, with
//! `--host`, another host's through keel-remote.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use keel_api::init::{render_status, Request, Response};
use keel_api::update::{UpdateRequest, UpdateResponse};
use keel_api::wire;
use keel_formats::hostconfig::values::Seconds;

use crate::target::{Duplex, RemoteFiles, Target};

#[derive(Debug, Parser)]
#[command(name = "keelctl", version, about = "Control a keel host")]
pub struct Cli {
    /// keel-init's API socket.
    #[arg(long, default_value = keel_formats::API_SOCKET)]
    socket: String,
    /// Manage another host through its remote API (`admin.remote` in its
    /// host config): `HOST`, `HOST:PORT` (default port 50000).
    #[arg(long, global = true, value_name = "ADDR")]
    host: Option<String>,
    /// With --host: the CA that signed the host's certificate.
    #[arg(long, global = true, requires = "host")]
    cacert: Option<PathBuf>,
    /// With --host: this client's certificate (`keel pki issue NAME --role`).
    #[arg(long, global = true, requires = "host")]
    cert: Option<PathBuf>,
    /// With --host: this client's key.
    #[arg(long, global = true, requires = "host")]
    key: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Version, slot, health and every service's state.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The services' names and states, one per line.
    List,
    /// A service's output (or `kernel` for kernel messages), time-stamped.
    Logs {
        name: String,
        /// Keep printing new lines as they come.
        #[arg(short, long)]
        follow: bool,
    },
    /// Start a stopped, exited or failed service.
    Start { name: String },
    /// Stop a service; it stays stopped until started.
    Stop { name: String },
    /// Stop a service and start it again.
    Restart { name: String },
    /// Send a signal to a service's main process (as if it had died by
    /// itself: it restarts as its policy says).
    Kill {
        /// SIGTERM, SIGKILL, SIGHUP, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2,
        /// SIGSTOP, SIGCONT or SIGWINCH.
        #[arg(short, long, default_value = "SIGKILL")]
        signal: String,
        name: String,
    },
    /// Run a command inside a running service's namespaces, with this
    /// terminal; exits with the command's status.
    Exec {
        name: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// The host's links (bridges and which bridge each port is on) and
    /// the container networks' nf_tables rules, as the kernel has them.
    Network,
    /// Updates: status, check, apply a bundle file, roll back.
    #[command(subcommand)]
    Update(UpdateCmd),
    /// Host configs.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Images from registries: pull, list, rm, prune.
    #[command(subcommand)]
    Image(crate::image::ImageCmd),
    /// Stop every service and power off.
    Poweroff,
    /// Stop every service and reboot.
    Reboot,
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// Check a host config as this host would read it (over the image's
    /// defaults, against its services): every problem, as
    /// FILE:LINE:COLUMN: `key`: what is wrong. Exits 1 if there is any.
    Validate { file: std::path::PathBuf },
    /// Check a host config, then run on it: services and containers whose
    /// settings changed restart, the others are left alone. Kept for the
    /// next boots, unless --try is given.
    Apply {
        file: std::path::PathBuf,
        /// Go back to the previous config after this long (`90s`, `5m`)
        /// unless `keelctl config confirm` comes first.
        #[arg(long = "try", value_name = "DURATION")]
        try_for: Option<Seconds>,
    },
    /// Keep the config on trial (from `apply --try`).
    Confirm,
}

#[derive(Debug, Subcommand)]
enum UpdateCmd {
    /// Running version and slot, the other slot, progress, last result.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Check the repository now and install a newer version.
    Check,
    /// Install a bundle file (air-gapped hosts).
    Apply { bundle: std::path::PathBuf },
    /// Boot the other slot next, if it holds an intact installation.
    Rollback,
}

/// One request to keel-update, with `fds` alongside. The connection comes
/// back with the answer: keel-update reboots after an install once we
/// hang up, so it stays open until the answer is on the terminal.
fn update_call(
    t: &Target,
    req: &UpdateRequest,
    fds: &[i32],
) -> anyhow::Result<(UpdateResponse, Box<dyn Duplex>)> {
    let mut stream = t.update(req, fds)?;
    match wire::read_answer(&mut stream, t.update_name())? {
        UpdateResponse::Error(e) => bail!("{e}"),
        r => Ok((r, stream)),
    }
}

fn update(t: &Target, cmd: UpdateCmd) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let (r, connection) = match cmd {
        UpdateCmd::Status { json } => {
            let (r, c) = update_call(t, &UpdateRequest::Status, &[])?;
            match r {
                UpdateResponse::Status(s) if json => {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                    return Ok(());
                }
                UpdateResponse::Status(s) => {
                    println!("version {} (slot {})", s.version, s.slot);
                    println!("other slot: {}", s.other.as_deref().unwrap_or("-"));
                    println!(
                        "repository: {} channel {}",
                        s.repository.as_deref().unwrap_or("(none)"),
                        s.channel
                    );
                    print!("state: {}", s.state);
                    if let Some(p) = &s.progress {
                        // In u128, where bytes * 100 always fits.
                        let pct = u128::from(p.bytes)
                            .saturating_mul(100)
                            .checked_div(u128::from(p.total))
                            .unwrap_or(0);
                        print!(
                            " - {} {}/{} bytes ({pct}%), {} KiB/s",
                            p.phase,
                            p.bytes,
                            p.total,
                            p.rate_bytes_per_s / 1024
                        );
                    }
                    println!();
                    println!("last result: {}", s.last_result.as_deref().unwrap_or("-"));
                    if let Some(c) = &s.coordination {
                        println!("reboot coordination: {c}");
                    }
                    if let Some(r) = &s.rollout {
                        println!("rollout: {r}");
                    }
                    return Ok(());
                }
                other => (other, c),
            }
        }
        UpdateCmd::Check => update_call(t, &UpdateRequest::Check, &[])?,
        UpdateCmd::Apply { bundle } => {
            let f = std::fs::File::open(&bundle)
                .with_context(|| format!("opening {}", bundle.display()))?;
            update_call(t, &UpdateRequest::ApplyFd, &[f.as_raw_fd()])?
        }
        UpdateCmd::Rollback => update_call(t, &UpdateRequest::Rollback, &[])?,
    };
    match r {
        UpdateResponse::Done(m) => println!("{m}"),
        other => bail!("unexpected answer {other:?}"),
    }
    // An install or a rollback may reboot the host as soon as we hang up:
    // the answer must have left a terminal before that, or the hang-up of
    // the console session throws it away.
    let _ = std::io::stdout().flush();
    let _ = nix::sys::termios::tcdrain(std::io::stdout());
    drop(connection);
    Ok(())
}

/// Print what applying a config did; its problems end keelctl with 1.
fn applied(file: &Path, answer: Response) -> anyhow::Result<()> {
    match answer {
        Response::Applied { changes, warnings } => {
            if changes.is_empty() {
                println!("{}: applied, nothing changed", file.display());
            }
            for c in changes {
                println!("{c}");
            }
            for w in warnings {
                eprintln!("warning: {w}");
            }
            Ok(())
        }
        Response::Problems(p) => {
            for line in &p {
                eprintln!("{line}");
            }
            eprintln!(
                "{}: {} problem(s); nothing was changed",
                file.display(),
                p.len()
            );
            std::process::exit(1);
        }
        other => bail!("unexpected answer {other:?}"),
    }
}

fn call(t: &Target, req: &Request) -> anyhow::Result<Response> {
    let mut stream = t.init(req, &[])?;
    let response = wire::read_answer(&mut stream, t.name())?;
    if let Response::Error(e) = &response {
        bail!("{e}");
    }
    Ok(response)
}

fn exec(t: &Target, name: String, argv: Vec<String>) -> anyhow::Result<i32> {
    // Our stdin, stdout and stderr go with the request: the command runs
    // on them directly.
    let mut stream = t.init(&Request::Exec { name, argv }, &[0, 1, 2])?;
    match wire::read_answer(&mut stream, t.name())? {
        Response::Exited { code } => Ok(code),
        Response::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer {other:?}"),
    }
}

fn logs(t: &Target, name: &str, follow: bool) -> anyhow::Result<()> {
    let mut since = 0;
    loop {
        match call(
            t,
            &Request::Logs {
                name: name.to_string(),
                since,
            },
        )? {
            Response::Logs { lines, next } => {
                let mut out = std::io::stdout().lock();
                for l in lines {
                    writeln!(out, "{l}")?;
                }
                out.flush()?;
                since = next;
            }
            other => bail!("unexpected answer {other:?}"),
        }
        if !follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Run what `cli` asks for.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let target = match &cli.host {
        Some(host) => Target::remote(&RemoteFiles {
            host,
            cacert: cli.cacert.as_deref(),
            cert: cli.cert.as_deref(),
            key: cli.key.as_deref(),
        })?,
        None => Target::Local {
            socket: cli.socket.clone(),
        },
    };
    let t = &target;
    match cli.command {
        Cmd::Status { json } => match call(t, &Request::Status)? {
            Response::Status(s) if json => println!("{}", serde_json::to_string_pretty(&s)?),
            Response::Status(s) => print!("{}", render_status(&s)),
            other => bail!("unexpected answer {other:?}"),
        },
        Cmd::List => match call(t, &Request::Status)? {
            Response::Status(s) => {
                for svc in s.services {
                    println!("{} {}", svc.name, svc.state);
                }
            }
            other => bail!("unexpected answer {other:?}"),
        },
        Cmd::Logs { name, follow } => logs(t, &name, follow)?,
        Cmd::Network => match call(t, &Request::Network)? {
            Response::Network { links, rules } => {
                println!("links:");
                links.iter().for_each(|l| println!("  {l}"));
                println!("rules of table inet keel:");
                rules.iter().for_each(|r| println!("  {r}"));
            }
            other => bail!("unexpected answer {other:?}"),
        },
        Cmd::Start { name } => {
            call(t, &Request::Start { name })?;
        }
        Cmd::Stop { name } => {
            call(t, &Request::Stop { name })?;
        }
        Cmd::Kill { signal, name } => {
            call(t, &Request::Kill { name, signal })?;
        }
        Cmd::Restart { name } => {
            call(t, &Request::Restart { name })?;
        }
        Cmd::Exec { name, command } => {
            let code = exec(t, name, command)?;
            std::process::exit(code);
        }
        Cmd::Update(cmd) => update(t, cmd)?,
        Cmd::Image(cmd) => crate::image::run(t, cmd)?,
        Cmd::Config(ConfigCmd::Apply { file, try_for }) => {
            let try_s = try_for.map(|d| d.0);
            let text =
                std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
            let name = file.display().to_string();
            let answer = call(t, &Request::ApplyConfig { name, text, try_s })?;
            applied(&file, answer)?;
        }
        Cmd::Config(ConfigCmd::Confirm) => {
            applied(Path::new("config"), call(t, &Request::ConfirmConfig)?)?
        }
        Cmd::Config(ConfigCmd::Validate { file }) => {
            let text =
                std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
            let name = file.display().to_string();
            match call(
                t,
                &Request::ValidateConfig {
                    name: name.clone(),
                    text,
                },
            )? {
                Response::Problems(p) if p.is_empty() => println!("{name}: valid"),
                Response::Problems(p) => {
                    for line in &p {
                        eprintln!("{line}");
                    }
                    eprintln!("{name}: {} problem(s)", p.len());
                    std::process::exit(1);
                }
                other => bail!("unexpected answer {other:?}"),
            }
        }
        Cmd::Poweroff => {
            call(t, &Request::Poweroff)?;
        }
        Cmd::Reboot => {
            call(t, &Request::Reboot)?;
        }
    }
    Ok(())
}

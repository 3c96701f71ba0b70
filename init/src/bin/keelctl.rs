//! keelctl: the command line over keel-init's local API.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use keel_init::api::{render_status, Request, Response};

#[derive(Debug, Parser)]
#[command(name = "keelctl", version, about = "Control a keel host")]
struct Cli {
    /// keel-init's API socket.
    #[arg(long, default_value = keel_spec::API_SOCKET)]
    socket: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Version, slot and every service's state.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop every service and power off.
    Poweroff,
    /// Stop every service and reboot.
    Reboot,
}

fn call(socket: &str, req: &Request) -> anyhow::Result<Response> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to keel-init at {socket}"))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .context("reading keel-init's answer")?;
    serde_json::from_str(&answer).with_context(|| format!("keel-init answered {answer:?}"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let req = match cli.command {
        Cmd::Status { .. } => Request::Status,
        Cmd::Poweroff => Request::Poweroff,
        Cmd::Reboot => Request::Reboot,
    };
    match (call(&cli.socket, &req)?, cli.command) {
        (Response::Status(s), Cmd::Status { json: true }) => {
            println!("{}", serde_json::to_string_pretty(&s)?)
        }
        (Response::Status(s), _) => print!("{}", render_status(&s)),
        (Response::Ok, _) => {}
        (Response::Error(e), _) => bail!("keel-init: {e}"),
    }
    Ok(())
}

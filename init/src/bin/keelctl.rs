//! keelctl: the command line over keel-init's local API.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

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
    /// Run a command inside a running service's namespaces, with this
    /// terminal; exits with the command's status.
    Exec {
        name: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
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
    let response: Response =
        serde_json::from_str(&answer).with_context(|| format!("keel-init answered {answer:?}"))?;
    if let Response::Error(e) = &response {
        bail!("{e}");
    }
    Ok(response)
}

fn exec(socket: &str, name: String, argv: Vec<String>) -> anyhow::Result<i32> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to keel-init at {socket}"))?;
    let mut line = serde_json::to_string(&Request::Exec { name, argv })?;
    line.push('\n');
    // Our stdin, stdout and stderr go with the request: the command runs
    // on them directly.
    keel_init::exec::send(&stream, line.as_bytes(), &[0, 1, 2]).context("sending the request")?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .context("reading keel-init's answer")?;
    match serde_json::from_str(&answer).with_context(|| format!("keel-init answered {answer:?}"))? {
        Response::Exited { code } => Ok(code),
        Response::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer {other:?}"),
    }
}

fn logs(socket: &str, name: &str, follow: bool) -> anyhow::Result<()> {
    let mut since = 0;
    loop {
        match call(
            socket,
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let socket = cli.socket.as_str();
    match cli.command {
        Cmd::Status { json } => match call(socket, &Request::Status)? {
            Response::Status(s) if json => println!("{}", serde_json::to_string_pretty(&s)?),
            Response::Status(s) => print!("{}", render_status(&s)),
            other => bail!("unexpected answer {other:?}"),
        },
        Cmd::List => match call(socket, &Request::Status)? {
            Response::Status(s) => {
                for svc in s.services {
                    println!("{} {}", svc.name, svc.state);
                }
            }
            other => bail!("unexpected answer {other:?}"),
        },
        Cmd::Logs { name, follow } => logs(socket, &name, follow)?,
        Cmd::Start { name } => {
            call(socket, &Request::Start { name })?;
        }
        Cmd::Stop { name } => {
            call(socket, &Request::Stop { name })?;
        }
        Cmd::Restart { name } => {
            call(socket, &Request::Restart { name })?;
        }
        Cmd::Exec { name, command } => {
            let code = exec(socket, name, command)?;
            std::process::exit(code);
        }
        Cmd::Poweroff => {
            call(socket, &Request::Poweroff)?;
        }
        Cmd::Reboot => {
            call(socket, &Request::Reboot)?;
        }
    }
    Ok(())
}

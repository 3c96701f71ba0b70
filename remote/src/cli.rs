//! keel-remote's command line.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use keel_api::remote::PORT;
use keel_remote::serve::{self, Sockets};

#[derive(Debug, Parser)]
#[command(
    name = "keel-remote",
    version,
    about = "Serve the host's API over TLS with client certificates"
)]
pub struct Cli {
    /// Address to listen on.
    #[arg(long, default_value_t = format!("0.0.0.0:{PORT}"))]
    listen: String,
    /// Folder with ca.pem (the CAs whose client certificates are trusted),
    /// cert.pem and key.pem (this host's), read for each connection.
    #[arg(long, default_value = keel_formats::pki::REMOTE_DIR)]
    dir: PathBuf,
    /// keel-init's API socket.
    #[arg(long, default_value = keel_formats::API_SOCKET)]
    init_socket: String,
    /// keel-update's API socket.
    #[arg(long, default_value = keel_api::update::UPDATE_SOCKET)]
    update_socket: String,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let listener =
        TcpListener::bind(&cli.listen).with_context(|| format!("listening on {}", cli.listen))?;
    eprintln!(
        "keel-remote: listening on {}, certificates from {}",
        cli.listen,
        cli.dir.display()
    );
    let local = Arc::new(Sockets {
        init: cli.init_socket,
        update: cli.update_socket,
    });
    serve::serve(&listener, cli.dir, local);
    Ok(())
}

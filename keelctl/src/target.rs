//! Where keelctl's requests go: this host's local sockets, or another
//! host's remote API (`--host`, TLS with client certificates). Either way
//! a request goes out as one line and its answer comes back on the
//! stream returned.

use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use keel_api::init::Request;
use keel_api::remote::RemoteRequest;
use keel_api::update::{UpdateRequest, UPDATE_SOCKET};
use keel_api::wire;
use keel_remote::client::Remote;
use keel_remote::tls::{Material, Pem};

/// A connection an answer comes on.
pub trait Duplex: Read + Write {}
impl<T: Read + Write> Duplex for T {}

#[derive(Debug)]
pub enum Target {
    Local { socket: String },
    Remote(Box<Remote>),
}

/// The files `--host` needs.
#[derive(Debug)]
pub struct RemoteFiles<'a> {
    pub host: &'a str,
    pub cacert: Option<&'a Path>,
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
}

fn read(flag: &str, p: Option<&Path>) -> anyhow::Result<(String, Vec<u8>)> {
    let Some(p) = p else {
        bail!("--host needs {flag} (keel pki issue makes them)")
    };
    let bytes = std::fs::read(p).with_context(|| format!("{flag} {}", p.display()))?;
    Ok((p.display().to_string(), bytes))
}

impl Target {
    pub fn remote(f: &RemoteFiles<'_>) -> anyhow::Result<Target> {
        let (ca, cert, key) = (
            read("--cacert", f.cacert)?,
            read("--cert", f.cert)?,
            read("--key", f.key)?,
        );
        fn pem(x: &(String, Vec<u8>)) -> Pem<'_> {
            Pem {
                what: &x.0,
                text: &x.1,
            }
        }
        let m = Material {
            ca: pem(&ca),
            cert: pem(&cert),
            key: pem(&key),
        };
        Ok(Target::Remote(Box::new(Remote::new(f.host, &m)?)))
    }

    /// What to call the other end in messages.
    pub fn name(&self) -> &str {
        match self {
            Target::Local { socket } => socket,
            Target::Remote(r) => r.addr(),
        }
    }

    fn remote_open(
        r: &Remote,
        req: RemoteRequest,
        fds: &[RawFd],
    ) -> anyhow::Result<Box<dyn Duplex>> {
        // The host refuses these too; saying so here sends nothing.
        req.needs()?;
        if !fds.is_empty() {
            bail!("file descriptors cannot go over --host");
        }
        Ok(Box::new(r.open(&req)?))
    }

    /// Send `req` to keel-init (with `fds`, locally).
    pub fn init(&self, req: &Request, fds: &[RawFd]) -> anyhow::Result<Box<dyn Duplex>> {
        match self {
            Target::Local { socket } => {
                let s = UnixStream::connect(socket)
                    .with_context(|| format!("connecting to {socket}"))?;
                wire::send_line(&s, req, fds).with_context(|| format!("sending to {socket}"))?;
                Ok(Box::new(s))
            }
            Target::Remote(r) => Target::remote_open(r, RemoteRequest::Init(req.clone()), fds),
        }
    }

    /// Send `req` to keel-update (with `fds`, locally).
    pub fn update(&self, req: &UpdateRequest, fds: &[RawFd]) -> anyhow::Result<Box<dyn Duplex>> {
        match self {
            Target::Local { .. } => {
                let s = connect_update()?;
                wire::send_line(&s, req, fds)
                    .with_context(|| format!("sending to {UPDATE_SOCKET}"))?;
                Ok(Box::new(s))
            }
            Target::Remote(r) => Target::remote_open(r, RemoteRequest::Update(req.clone()), fds),
        }
    }

    /// What keel-update at this target is called in messages.
    pub fn update_name(&self) -> &str {
        match self {
            Target::Local { .. } => UPDATE_SOCKET,
            Target::Remote(r) => r.addr(),
        }
    }
}

/// keel-update may still be starting (it is not part of the boot health
/// gate, so a host is ready before it is): give it a few seconds.
fn connect_update() -> anyhow::Result<UnixStream> {
    let mut tries = 0u32;
    loop {
        match UnixStream::connect(UPDATE_SOCKET) {
            Ok(s) => return Ok(s),
            Err(e)
                if tries < 20
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) =>
            {
                tries = tries.saturating_add(1);
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("connecting to keel-update at {UPDATE_SOCKET}"))
            }
        }
    }
}

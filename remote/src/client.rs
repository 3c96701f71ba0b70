//! The client's side (`keelctl --host`): connect, check the host's
//! certificate, show ours, send one request.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};

use keel_api::remote::{RemoteRequest, PORT};

use crate::tls::{self, Material, TlsError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence in an answer (an image pull's events keep coming).
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// A connection to a host's remote API, on which its answer comes.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--host {addr:?}: {why}")]
    Addr { addr: String, why: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr}: TLS handshake: {source}")]
    Handshake {
        addr: String,
        source: std::io::Error,
    },
    #[error("sending the request to {addr}: {source}")]
    Send {
        addr: String,
        source: std::io::Error,
    },
}

#[derive(Debug)]
pub struct Remote {
    /// `host:port`, as errors name it.
    addr: String,
    host: String,
    port: u16,
    name: ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
}

/// `HOST`, `HOST:PORT`, `IPv4`, `IPv4:PORT`, `IPv6` or `[IPv6]:PORT`.
fn split(addr: &str) -> Result<(String, u16), String> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok((sa.ip().to_string(), sa.port()));
    }
    if let Ok(ip) = addr.parse::<IpAddr>() {
        return Ok((ip.to_string(), PORT));
    }
    if let Some(v6) = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
        return v6
            .parse::<IpAddr>()
            .map(|ip| (ip.to_string(), PORT))
            .map_err(|e| e.to_string());
    }
    match addr.rsplit_once(':') {
        Some((h, p)) => {
            let port = p
                .parse::<u16>()
                .map_err(|_| format!("{p:?} is not a port"))?;
            Ok((h.to_string(), port))
        }
        None => Ok((addr.to_string(), PORT)),
    }
}

impl Remote {
    pub fn new(addr: &str, m: &Material<'_>) -> Result<Remote, ClientError> {
        let bad = |why: String| ClientError::Addr {
            addr: addr.to_string(),
            why,
        };
        let (host, port) = split(addr).map_err(bad)?;
        if host.is_empty() {
            return Err(bad("no host".into()));
        }
        let name = ServerName::try_from(host.clone())
            .map_err(|e| bad(format!("{host:?} is not a host name or address: {e}")))?;
        Ok(Remote {
            addr: if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            },
            host,
            port,
            name,
            config: Arc::new(tls::client_config(m)?),
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn tcp(&self) -> Result<TcpStream, ClientError> {
        let connect = |source| ClientError::Connect {
            addr: self.addr.clone(),
            source,
        };
        let mut last = None;
        for sa in (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(connect)?
        {
            match TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(connect(last.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
        })))
    }

    /// Connect, shake hands and send `req`; the answer comes on the
    /// stream returned.
    pub fn open(&self, req: &RemoteRequest) -> Result<TlsStream, ClientError> {
        let tcp = self.tcp()?;
        let io = |source| ClientError::Handshake {
            addr: self.addr.clone(),
            source,
        };
        tcp.set_read_timeout(Some(READ_TIMEOUT)).map_err(io)?;
        tcp.set_write_timeout(Some(CONNECT_TIMEOUT)).map_err(io)?;
        let conn = ClientConnection::new(Arc::clone(&self.config), self.name.clone())
            .map_err(|e| io(std::io::Error::other(e)))?;
        let mut s = StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).map_err(io)?;
        }
        let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Send {
            addr: self.addr.clone(),
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        s.write_all(&line)
            .and_then(|()| s.flush())
            .map_err(|source| ClientError::Send {
                addr: self.addr.clone(),
                source,
            })?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_forms() {
        assert_eq!(split("10.0.0.5").unwrap(), ("10.0.0.5".into(), PORT));
        assert_eq!(split("10.0.0.5:7000").unwrap(), ("10.0.0.5".into(), 7000));
        assert_eq!(split("node-1").unwrap(), ("node-1".into(), PORT));
        assert_eq!(split("node-1:1").unwrap(), ("node-1".into(), 1));
        assert_eq!(split("fd00::1").unwrap(), ("fd00::1".into(), PORT));
        assert_eq!(split("[fd00::1]:9").unwrap(), ("fd00::1".into(), 9));
        assert_eq!(split("[fd00::1]").unwrap(), ("fd00::1".into(), PORT));
        assert_eq!(split("node-1:http").unwrap_err(), "\"http\" is not a port");
        assert!(split("node-1:70000").is_err());
    }
}

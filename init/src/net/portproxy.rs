//! Published ports of user containers on a private network: a helper
//! process (`keel-init port-proxy PID PORT...`, one per running
//! container, as docker-proxy is) listens on the host's port and forwards
//! each TCP connection, or each UDP client's datagrams, to the container's
//! loopback, entering the container's network namespace for the far side.
//! No bridge, veth or NAT is needed for that; the container sees every
//! client as 127.0.0.1. It is a process of its own because PID 1 must stay
//! single-threaded: it clones and forks containers.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use nix::unistd::Pid;

use crate::containers::Port;

/// The running process of each container that publishes ports, kept up to
/// date by PID 1's loop; a connection goes to the one running when it
/// comes in.
pub type Targets = Arc<Mutex<BTreeMap<String, Pid>>>;

/// How often a listener looks whether it should stop.
const POLL: Duration = Duration::from_millis(500);
/// A UDP client silent this long is forgotten.
const UDP_IDLE: Duration = Duration::from_secs(60);

/// One published port; forwarding stops when it is dropped.
#[derive(Debug)]
pub struct Proxy {
    pub port: Port,
    stop: Arc<AtomicBool>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn target(targets: &Targets, name: &str) -> Option<Pid> {
    targets.lock().ok()?.get(name).copied()
}

/// Container `pid`'s network namespace.
fn netns(pid: Pid) -> std::io::Result<File> {
    File::open(format!("/proc/{pid}/ns/net"))
}

/// Move the calling thread into network namespace `ns`: sockets it makes
/// from then on are the container's.
fn enter(ns: &File) -> Result<(), String> {
    nix::sched::setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `keel-init port-proxy PID PORT...`: forward each PORT
/// (`HOST:CONTAINER[/udp]`) into the network namespace of process PID
/// until that process is gone (or this one is stopped).
pub fn helper_main(args: &[String]) -> ! {
    let fail = |m: String| -> ! {
        eprintln!("keel: port-proxy: {m}");
        std::process::exit(1)
    };
    let Some((pid, ports)) = args.split_first() else {
        fail("usage: keel-init port-proxy PID HOST:CONTAINER[/udp]...".into())
    };
    let pid = match pid.parse::<i32>() {
        Ok(p) => Pid::from_raw(p),
        Err(_) => fail(format!("{pid:?} is not a PID")),
    };
    let targets: Targets = Arc::new(Mutex::new(BTreeMap::from([(String::new(), pid)])));
    let mut proxies = Vec::new();
    for p in ports {
        let port: Port = p.parse().unwrap_or_else(|e| fail(e));
        // The forwarder of the container's previous run may still hold
        // the port for a moment.
        let mut tries = 0u32;
        loop {
            match publish("", port, targets.clone()) {
                Ok(proxy) => break proxies.push(proxy),
                Err(e) if tries < 40 && e.source.kind() == std::io::ErrorKind::AddrInUse => {
                    tries = tries.saturating_add(1);
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => fail(e.to_string()),
            }
        }
    }
    while nix::sys::signal::kill(pid, None).is_ok() {
        std::thread::sleep(Duration::from_secs(1));
    }
    std::process::exit(0)
}

/// A port that could not be published: which, and why.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct PublishError {
    what: String,
    source: std::io::Error,
}

/// Listen on the host's `port.host` (IPv6 and IPv4, or IPv4 alone on a
/// host without IPv6) for container `name`.
pub fn publish(name: &str, port: Port, targets: Targets) -> Result<Proxy, PublishError> {
    let stop = Arc::new(AtomicBool::new(false));
    let what = format!(
        "{name}: port {}/{}",
        port.host,
        if port.udp { "udp" } else { "tcp" }
    );
    let addrs = [
        SocketAddr::from(([0u16; 8], port.host)),
        SocketAddr::from(([0u8; 4], port.host)),
    ];
    let name = name.to_string();
    let flag = stop.clone();
    if port.udp {
        let socket = UdpSocket::bind(&addrs[..]).map_err(|source| PublishError {
            what: what.clone(),
            source,
        })?;
        socket
            .set_read_timeout(Some(POLL))
            .map_err(|source| PublishError {
                what: what.clone(),
                source,
            })?;
        std::thread::Builder::new()
            .name(format!("udp-{}", port.host))
            .spawn(move || udp(socket, &name, port.container, &targets, &flag))
            .map_err(|source| PublishError {
                what: what.clone(),
                source,
            })?;
    } else {
        let listener = TcpListener::bind(&addrs[..]).map_err(|source| PublishError {
            what: what.clone(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| PublishError {
                what: what.clone(),
                source,
            })?;
        std::thread::Builder::new()
            .name(format!("tcp-{}", port.host))
            .spawn(move || tcp(listener, &name, port.container, &targets, &flag))
            .map_err(|source| PublishError {
                what: what.clone(),
                source,
            })?;
    }
    Ok(Proxy { port, stop })
}

fn tcp(listener: TcpListener, name: &str, to: u16, targets: &Targets, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let fd = std::os::fd::AsFd::as_fd(&listener);
                let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(500u16));
                continue;
            }
            Err(_) => continue,
        };
        let Some(pid) = target(targets, name) else {
            // Not running (restarting, or stopped): the client sees the
            // connection closed, as with a port nobody listens on.
            continue;
        };
        let ns = match netns(pid) {
            Ok(ns) => ns,
            Err(_) => continue,
        };
        let _ = std::thread::Builder::new()
            .name(format!("tcp-{to}-conn"))
            .spawn(move || {
                let _ = client.set_nonblocking(false);
                if enter(&ns).is_err() {
                    return;
                }
                if let Ok(server) = TcpStream::connect(loopback(to)) {
                    splice(client, server);
                }
            });
    }
}

/// Copy both ways until both sides are done, passing on half-closes.
fn splice(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let other = std::thread::Builder::new().spawn(move || {
        let (mut from, mut to) = (b2, a2);
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
    let (mut from, mut to) = (a, b);
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
    if let Ok(t) = other {
        let _ = t.join();
    }
}

/// A UDP client's socket inside the container, and when it was last heard.
struct Session {
    inside: Arc<UdpSocket>,
    seen: Instant,
}

fn udp(host: UdpSocket, name: &str, to: u16, targets: &Targets, stop: &AtomicBool) {
    let host = Arc::new(host);
    let mut sessions: BTreeMap<SocketAddr, Session> = BTreeMap::new();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        sessions.retain(|_, s| s.seen.elapsed() < UDP_IDLE);
        let (n, client) = match host.recv_from(&mut buf) {
            Ok(r) => r,
            Err(_) => continue,
        };
        if let Some(s) = sessions.get_mut(&client) {
            s.seen = Instant::now();
            let _ = s.inside.send(&buf[..n]);
            continue;
        }
        let Some(ns) = target(targets, name).and_then(|pid| netns(pid).ok()) else {
            continue;
        };
        let Ok(inside) = udp_inside(&ns, to) else {
            continue;
        };
        let _ = inside.send(&buf[..n]);
        let (back, reply_to) = (inside.clone(), host.clone());
        // Replies go back to this client until the session goes idle.
        let _ = std::thread::Builder::new()
            .name(format!("udp-{to}-conn"))
            .spawn(move || {
                let mut buf = vec![0u8; 65536];
                let _ = back.set_read_timeout(Some(UDP_IDLE));
                while let Ok(n) = back.recv(&mut buf) {
                    let _ = reply_to.send_to(&buf[..n], client);
                }
            });
        sessions.insert(
            client,
            Session {
                inside,
                seen: Instant::now(),
            },
        );
    }
}

/// A UDP socket in the container's namespace, connected to its loopback.
/// Made on a short-lived thread: entering a namespace is for good.
fn udp_inside(ns: &File, to: u16) -> Result<Arc<UdpSocket>, String> {
    let ns = ns.try_clone().map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        enter(&ns)?;
        let s = UdpSocket::bind(loopback(0)).map_err(|e| e.to_string())?;
        s.connect(loopback(to)).map_err(|e| e.to_string())?;
        Ok(Arc::new(s))
    })
    .join()
    .map_err(|_| "panicked".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn pick_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Forwarding into a namespace is the QEMU test's; here the target is
    /// this process's own namespace, which shows the relaying itself.
    #[test]
    fn tcp_and_udp_are_relayed_to_the_running_target() {
        let backend = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = backend.local_addr().unwrap().port();
        let targets: Targets = Arc::default();
        let host = pick_port();
        let port = Port {
            host,
            container: to,
            udp: false,
        };
        let proxy = publish("app", port, targets.clone()).unwrap();
        // Nothing running: the connection is closed at once.
        let mut c = TcpStream::connect(("127.0.0.1", host)).unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).unwrap();
        assert!(out.is_empty());

        targets.lock().unwrap().insert("app".into(), Pid::this());
        let server = std::thread::spawn(move || {
            let (mut s, _) = backend.accept().unwrap();
            let mut got = String::new();
            s.read_to_string(&mut got).unwrap();
            s.write_all(format!("echo {got}").as_bytes()).unwrap();
        });
        let mut c = TcpStream::connect(("127.0.0.1", host)).unwrap();
        c.write_all(b"hi").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        assert_eq!(out, "echo hi", "half-close passed on both ways");
        server.join().unwrap();
        drop(proxy);

        let backend = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = backend.local_addr().unwrap().port();
        let host = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let _udp = publish(
            "app",
            Port {
                host,
                container: to,
                udp: true,
            },
            targets,
        )
        .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        for word in ["one", "two"] {
            client
                .send_to(word.as_bytes(), ("127.0.0.1", host))
                .unwrap();
            let mut buf = [0u8; 64];
            let (n, from) = backend.recv_from(&mut buf).unwrap();
            backend.send_to(&buf[..n], from).unwrap();
            let n = client.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], word.as_bytes());
        }
    }
}

//! A TCP relay on 127.0.0.1 in front of a server (a registry): what the
//! server sends goes on at a rate the test sets and is counted, so that a
//! test can cut the power in the middle of a download and then see how
//! much the resumed one fetched. It relays bytes, so TLS passes through.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Chunks of this size, each followed by the pause the rate asks for.
const CHUNK: usize = 16 << 10;

#[derive(Debug, Clone)]
pub struct Throttle {
    port: u16,
    /// Bytes a second from the server; 0: as fast as they come.
    rate: Arc<AtomicU64>,
    /// Bytes from the server so far.
    down: Arc<AtomicU64>,
}

impl Throttle {
    /// Relay connections to 127.0.0.1:`upstream` until the process ends.
    pub fn start(upstream: u16) -> Throttle {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let t = Throttle {
            port: listener.local_addr().expect("local addr").port(),
            rate: Arc::new(AtomicU64::new(0)),
            down: Arc::new(AtomicU64::new(0)),
        };
        let relay = t.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let relay = relay.clone();
                std::thread::spawn(move || relay.connection(client, server));
            }
        });
        t
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn set_rate(&self, bytes_per_s: u64) {
        self.rate.store(bytes_per_s, Ordering::SeqCst);
    }

    /// Bytes the server sent through the relay since the last reset.
    pub fn downloaded(&self) -> u64 {
        self.down.load(Ordering::SeqCst)
    }

    pub fn reset(&self) {
        self.down.store(0, Ordering::SeqCst);
    }

    fn connection(&self, client: TcpStream, server: TcpStream) {
        let (Ok(mut c_in), Ok(mut s_out)) = (client.try_clone(), server.try_clone()) else {
            return;
        };
        let up = std::thread::spawn(move || {
            let _ = std::io::copy(&mut c_in, &mut s_out);
            let _ = s_out.shutdown(Shutdown::Write);
        });
        let (mut s_in, mut c_out) = (server, client);
        let mut buf = vec![0u8; CHUNK];
        while let Ok(n) = s_in.read(&mut buf) {
            if n == 0 || c_out.write_all(&buf[..n]).is_err() {
                break;
            }
            self.down.fetch_add(n as u64, Ordering::SeqCst);
            let rate = self.rate.load(Ordering::SeqCst);
            if rate > 0 {
                std::thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
            }
        }
        let _ = c_out.shutdown(Shutdown::Both);
        let _ = up.join();
    }
}

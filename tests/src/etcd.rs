//! A real etcd for the fleet tests and bench: Debian's `etcd-server`
//! (3.4) on 127.0.0.1, one member, over TLS with client certificates
//! (`--client-cert-auth`), all from a CA made by `keel pki`. Guests reach
//! it at 10.0.2.100 through QEMU's guestfwd, so the server's certificate
//! names both addresses.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_fleet::{Etcd, Kv, Tls};
use keel_image_builder::pki::{self, Issue};

const ETCD_BIN: &str = "/usr/bin/etcd";
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Where a guest reaches etcd (forward `(GUEST_PORT, port)`).
pub const GUEST_PORT: u16 = 2379;

#[derive(Debug)]
pub struct EtcdServer {
    child: Option<Child>,
    pub port: u16,
    peer_port: u16,
    pub dir: tempfile::TempDir,
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

impl EtcdServer {
    /// Start etcd with a new CA and data folder.
    pub fn start() -> EtcdServer {
        assert!(
            Path::new(ETCD_BIN).exists(),
            "{ETCD_BIN} is missing: install Debian's etcd-server (cargo xtask deps installs it)"
        );
        let dir = tempfile::tempdir().expect("a folder for etcd");
        let pki_dir = dir.path().join("pki");
        pki::init(&pki_dir, "keel test fleet CA", 30).expect("making the CA");
        let servers = ["127.0.0.1".to_string(), "10.0.2.100".to_string()];
        pki::issue(
            &pki_dir,
            &Issue {
                name: "etcd",
                servers: &servers,
                role: None,
                days: 30,
            },
        )
        .expect("issuing etcd's certificate");
        let mut s = EtcdServer {
            child: None,
            port: crate::free_port(),
            peer_port: crate::free_port(),
            dir,
        };
        s.resume();
        s
    }

    fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// Start it again, on the same port with the same data, after
    /// [`EtcdServer::stop`].
    pub fn resume(&mut self) {
        let pki = self.pki();
        let client_url = format!("https://127.0.0.1:{}", self.port);
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(ETCD_BIN)
            .args(["--name", "keel-test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("keel-test={peer_url}")])
            .arg("--cert-file")
            .arg(pki.join("etcd.pem"))
            .arg("--key-file")
            .arg(pki.join("etcd.key"))
            .arg("--trusted-ca-file")
            .arg(pki.join(pki::CA_CERT))
            .arg("--client-cert-auth")
            .args(["--logger", "zap", "--log-level", "error"])
            .env_clear()
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting etcd");
        self.child = Some(child);
        let c = self.client("probe");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match c.range("/") {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!("etcd did not answer on port {}: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Stop it (SIGKILL: what a crash or a partition looks like to hosts).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A client certificate for `name` signed by etcd's CA, issued once:
    /// (cert PEM, key PEM).
    pub fn identity(&self, name: &str) -> (String, String) {
        let pki = self.pki();
        let (cert, key) = (
            pki.join(format!("{name}.pem")),
            pki.join(format!("{name}.key")),
        );
        if !cert.exists() {
            pki::issue(
                &pki,
                &Issue {
                    name,
                    servers: &[],
                    role: None,
                    days: 30,
                },
            )
            .expect("issuing a client certificate");
        }
        (read(&cert), read(&key))
    }

    pub fn ca_pem(&self) -> String {
        read(&self.pki().join(pki::CA_CERT))
    }

    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// TLS for a client named `name`.
    pub fn tls(&self, name: &str) -> Tls {
        let (cert, key) = self.identity(name);
        Tls {
            ca: Some(self.ca_pem()),
            cert: Some(cert),
            key: Some(key),
        }
    }

    pub fn client(&self, name: &str) -> Etcd {
        Etcd::new(&[self.endpoint()], &self.tls(name)).expect("an etcd client")
    }

    /// The CA and client certificate files for `keel fleet` on the
    /// command line: `--cacert`, `--cert`, `--key`.
    pub fn cli_args(&self, name: &str) -> Vec<String> {
        self.identity(name);
        let pki = self.pki();
        let p = |f: String| pki.join(f).to_string_lossy().into_owned();
        vec![
            "--etcd".into(),
            self.endpoint(),
            "--cacert".into(),
            p(pki::CA_CERT.into()),
            "--cert".into(),
            p(format!("{name}.pem")),
            "--key".into(),
            p(format!("{name}.key")),
        ]
    }

    /// The most keys that were ever under `prefix` at once, from etcd's
    /// history (revision 1 to now; this etcd never compacts).
    pub fn most_at_once(&self, prefix: &str) -> u64 {
        let c = self.client("history");
        let (_, now) = c.count_at(prefix, 0).expect("etcd's revision");
        (1..=now)
            .map(|rev| c.count_at(prefix, rev).expect("a past revision").0)
            .max()
            .unwrap_or(0)
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

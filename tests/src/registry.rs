//! A real OCI registry for keel's registry-client tests: Debian's
//! `docker-registry` (the CNCF Distribution registry 2.8) on 127.0.0.1,
//! over HTTP or HTTPS with a test CA, optionally behind htpasswd basic
//! auth or as a pull-through mirror of another one; images are written as
//! OCI layouts here and pushed to it with Debian's `skopeo`.
//!
//! What registry 2.8 and skopeo 1.9 do that a test must allow for:
//! - the registry answers 404 for an OCI manifest unless the request's
//!   Accept header names the OCI media type;
//! - `REGISTRY_*` environment variables override the config file, so the
//!   child gets none of them;
//! - a mirror (`proxy.remoteurl`) asks its upstream for `/v2/` when it
//!   starts and exits if that fails: start the upstream first, and a
//!   mirror cannot be started again while its upstream is down;
//! - a mirror stores a blob only after a client asked for it, and in the
//!   background, fetching it from the upstream a second time: see
//!   [`wait_cached`] (and count two upstream GETs per blob);
//! - a mirror sends upstream credentials only to Bearer-token realms, so it
//!   cannot front an htpasswd upstream ([`Options::mirror_of`] refuses);
//! - skopeo needs `--insecure-policy` (the machine's policy.json need not
//!   accept anything), `--preserve-digests` (or it may convert the
//!   manifest) and `--digestfile`; `oci:DIR:TAG` finds TAG through the
//!   `org.opencontainers.image.ref.name` annotation of index.json; a
//!   multi-arch index is pushed whole only with `--all`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

mod ca;
mod layout;
pub use ca::TestCa;
pub use layout::{image_layout, multi_arch_layout, runnable_layout};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The index.json annotation that names a tag of an OCI layout.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const SKOPEO_BIN: &str = "/usr/bin/skopeo";
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn tool(path: &'static str, package: &str) -> &'static str {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install Debian's {package} (cargo xtask deps installs it)"
    );
    path
}

/// Where a guest booted with a forward of port 5000 to a registry reaches
/// it (QEMU's guestfwd on the user network).
pub const GUEST_ADDRESS: &str = "10.0.2.100";

/// How to run a [`Registry`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    tls: bool,
    auth: Option<(String, String)>,
    proxy: Option<Proxy>,
}

/// The upstream of a mirror: its URL and the CA its certificate is signed
/// by. No credentials: see [`Options::mirror_of`].
#[derive(Debug, Clone)]
struct Proxy {
    url: String,
    ca_pem: Option<String>,
}

impl Options {
    /// Plain HTTP, no auth.
    pub fn http() -> Options {
        Options::default()
    }

    /// HTTPS with a certificate for 127.0.0.1, localhost and
    /// [`GUEST_ADDRESS`] from a fresh [`TestCa`].
    pub fn tls() -> Options {
        Options {
            tls: true,
            ..Options::default()
        }
    }

    /// htpasswd (bcrypt) basic auth with this one user.
    pub fn with_auth(mut self, user: &str, password: &str) -> Options {
        self.auth = Some((user.to_string(), password.to_string()));
        self
    }

    /// A pull-through cache of `upstream` (distribution's `proxy:
    /// remoteurl:`); a TLS upstream's CA is trusted by the mirror process.
    /// Panics for an upstream with auth: registry 2.8 sends upstream
    /// credentials only to Bearer-token realms, never to basic auth.
    pub fn mirror_of(mut self, upstream: &Registry) -> Options {
        assert!(
            upstream.options.auth.is_none(),
            "a registry 2.8 mirror cannot pull from an htpasswd upstream (it sends \
             credentials only to Bearer-token realms): mirror an anonymous upstream"
        );
        self.proxy = Some(Proxy {
            url: upstream.url(),
            ca_pem: upstream.ca_pem(),
        });
        self
    }
}

/// A running docker-registry on 127.0.0.1:<free port>, with its own
/// storage, config.yml and log in a temporary directory; killed on drop.
#[derive(Debug)]
pub struct Registry {
    options: Options,
    dir: tempfile::TempDir,
    storage: PathBuf,
    port: u16,
    ca: Option<TestCa>,
    child: Option<Child>,
}

impl Registry {
    /// Start a registry; panics with its log if it is not up within 30 s.
    pub fn start(options: Options) -> Registry {
        tool(REGISTRY_BIN, "docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("keel-registry-")
            .tempdir()
            .expect("making the registry's directory");
        let mut r = Registry {
            options,
            storage: dir.path().join("storage"),
            dir,
            port: crate::free_port(),
            ca: None,
            child: None,
        };
        std::fs::create_dir_all(r.storage_dir()).expect("making the registry's storage");
        // An empty auth file for skopeo, so no credentials of this
        // machine's user reach the registry.
        std::fs::write(r.auth_file(), "{}").expect("writing auth.json");
        if r.options.tls {
            let ca = TestCa::generate();
            // And the address QEMU's guestfwd gives it in a guest.
            let (cert, key) = ca.server_cert(&["127.0.0.1", "localhost", GUEST_ADDRESS]);
            std::fs::write(r.file("server.crt"), cert).expect("writing server.crt");
            std::fs::write(r.file("server.key"), key).expect("writing server.key");
            // skopeo's --*-cert-dir takes CA certificates as *.crt.
            std::fs::create_dir_all(r.file("certs.d")).expect("making certs.d");
            std::fs::write(r.file("certs.d/ca.crt"), &ca.cert_pem).expect("writing ca.crt");
            r.ca = Some(ca);
        }
        if let Some((user, password)) = &r.options.auth {
            // Cost 4, the least: the registry checks it on every request.
            let hash = bcrypt::hash(password, 4).expect("bcrypt");
            std::fs::write(r.file("htpasswd"), format!("{user}:{hash}\n"))
                .expect("writing htpasswd");
        }
        if let Some(ca) = r.options.proxy.as_ref().and_then(|p| p.ca_pem.clone()) {
            std::fs::write(r.file("upstream-ca.pem"), ca).expect("writing upstream-ca.pem");
        }
        // free_port's port may be taken by another test before the
        // registry binds it: then it is tried on another.
        for attempt in 1.. {
            std::fs::write(r.file("config.yml"), r.config()).expect("writing config.yml");
            if r.spawn() {
                break;
            }
            assert!(attempt < 5, "no free port for docker-registry in 5 tries");
            r.port = crate::free_port();
        }
        r
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn auth_file(&self) -> PathBuf {
        self.file("auth.json")
    }

    fn log_path(&self) -> PathBuf {
        self.file("registry.log")
    }

    /// skopeo's `--cert-dir` for a TLS registry.
    pub fn cert_dir(&self) -> Option<PathBuf> {
        self.ca.as_ref().map(|_| self.file("certs.d"))
    }

    fn config(&self) -> String {
        // JSON strings are YAML double-quoted scalars.
        let q = |s: &str| Value::from(s).to_string();
        let path = |name: &str| q(&self.file(name).display().to_string());
        // Fixed for the registry's life: an upload begun before
        // `start_again` stays valid after it.
        let secret = hex::encode(Sha256::digest(
            self.dir.path().as_os_str().as_encoded_bytes(),
        ));
        let mut c = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {}\n  secret: {}\n",
            q(&self.storage_dir().display().to_string()),
            q(&self.host()),
            q(&secret),
        );
        if self.ca.is_some() {
            c += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                path("server.crt"),
                path("server.key")
            );
        }
        if self.options.auth.is_some() {
            c += &format!(
                "auth:\n  htpasswd:\n    realm: \"keel-test\"\n    path: {}\n",
                path("htpasswd")
            );
        }
        if let Some(p) = &self.options.proxy {
            c += &format!("proxy:\n  remoteurl: {}\n", q(&p.url));
        }
        c
    }

    /// Start docker-registry and wait until it answers; false if its port
    /// was taken.
    fn spawn(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("opening the registry's log");
        let from = log.metadata().map(|m| m.len()).unwrap_or(0) as usize;
        let mut cmd = Command::new(REGISTRY_BIN);
        cmd.arg("serve").arg(self.file("config.yml"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(k);
            }
        }
        if self
            .options
            .proxy
            .as_ref()
            .is_some_and(|p| p.ca_pem.is_some())
        {
            // Go reads its roots from here: the upstream's CA, no others.
            cmd.env("SSL_CERT_FILE", self.file("upstream-ca.pem"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log's handle"))
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        self.child = Some(child);
        self.wait_ready(from)
    }

    fn wait_ready(&mut self, log_from: usize) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                let log = self.log();
                if log
                    .get(log_from..)
                    .is_some_and(|l| l.contains("address already in use"))
                {
                    return false;
                }
                panic!(
                    "docker-registry exited ({st}) before it came up on {}; its log:\n{}",
                    self.host(),
                    self.log()
                );
            }
            let listening = self
                .log()
                .get(log_from..)
                .is_some_and(|l| l.contains("listening on"));
            if listening && self.answers() {
                return true;
            }
            if Instant::now() > deadline {
                self.stop();
                panic!(
                    "docker-registry did not come up on {} within {START_TIMEOUT:?}; its log:\n{}",
                    self.host(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A TCP connection succeeds; over HTTP, GET /v2/ also gets 200 (or
    /// 401 behind auth).
    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if self.ca.is_some() {
            return true;
        }
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let req = format!(
            "GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.host()
        );
        let mut head = [0u8; 12];
        s.write_all(req.as_bytes()).is_ok()
            && s.read_exact(&mut head).is_ok()
            && (head.ends_with(b" 200") || head.ends_with(b" 401"))
    }

    /// Kill the registry; its storage stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start the registry again after [`Registry::stop`]: same port, same
    /// storage, same certificate.
    pub fn start_again(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "port {} was taken while the registry was down",
            self.port
        );
    }

    /// "http://127.0.0.1:PORT" or "https://127.0.0.1:PORT".
    pub fn url(&self) -> String {
        let scheme = if self.options.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    /// "127.0.0.1:PORT", the registry part of a reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn storage_dir(&self) -> &Path {
        &self.storage
    }

    /// Where the filesystem driver keeps blob "sha256:<hex>", to corrupt it
    /// in place.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest
            .strip_prefix("sha256:")
            .unwrap_or_else(|| panic!("{digest} is not a sha256 digest"));
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The test CA's certificate (PEM) for a TLS registry.
    pub fn ca_pem(&self) -> Option<String> {
        self.ca.as_ref().map(|c| c.cert_pem.clone())
    }

    /// Everything the registry logged, over all its starts.
    pub fn log(&self) -> String {
        std::fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// skopeo's TLS flags for this registry, `side` being "", "src-" or
    /// "dest-".
    fn tls_args(&self, side: &str) -> Vec<String> {
        match self.cert_dir() {
            Some(d) => vec![format!("--{side}cert-dir={}", d.display())],
            None => vec![format!("--{side}tls-verify=false")],
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How [`push`] pushes: with these credentials; with `all`, every
/// platform of an index (skopeo --all), else only this machine's.
#[derive(Debug, Clone, Default)]
pub struct Push {
    pub creds: Option<(String, String)>,
    pub all: bool,
}

/// skopeo with no credentials but those given to it: `--authfile` is an
/// empty file of the registry's.
fn skopeo(registry: &Registry, subcommand: &str) -> Command {
    let mut cmd = Command::new(tool(SKOPEO_BIN, "skopeo"));
    cmd.env_remove("REGISTRY_AUTH_FILE")
        .args(["--command-timeout=120s", subcommand])
        .arg(format!("--authfile={}", registry.auth_file().display()));
    cmd
}

fn creds_arg(flag: &str, creds: Option<(&str, &str)>) -> Vec<String> {
    creds
        .map(|(u, p)| vec![format!("--{flag}={u}:{p}")])
        .unwrap_or_default()
}

/// `skopeo copy` with a digest file; the digest it wrote, or skopeo's
/// output.
fn copy(registry: &Registry, args: &[String], from: &str, to: &str) -> Result<String, String> {
    let digest_file = tempfile::NamedTempFile::new().expect("making a digest file");
    let out = skopeo(registry, "copy")
        .args(["--insecure-policy", "--preserve-digests"])
        .arg(format!("--digestfile={}", digest_file.path().display()))
        .args(args)
        .args([from, to])
        .output()
        .expect("running skopeo");
    if !out.status.success() {
        return Err(format!(
            "skopeo copy {from} {to} failed ({}):\n{}",
            out.status,
            crate::output_text(&out)
        ));
    }
    let digest = std::fs::read_to_string(digest_file.path()).expect("reading skopeo's digest file");
    Ok(digest.trim().to_string())
}

/// Push the OCI layout at `layout_dir` (its image tagged `layout_tag`) to
/// `registry` as `dest` ("team/app:1.2"); the pushed manifest's digest.
/// Panics with skopeo's output and the registry's log if the push fails.
pub fn push(
    registry: &Registry,
    layout_dir: &Path,
    layout_tag: &str,
    dest: &str,
    push: &Push,
) -> String {
    try_push(registry, layout_dir, layout_tag, dest, push)
        .unwrap_or_else(|e| panic!("{e}\nthe registry's log:\n{}", registry.log()))
}

/// [`push`], with skopeo's output as the error.
pub fn try_push(
    registry: &Registry,
    layout_dir: &Path,
    layout_tag: &str,
    dest: &str,
    push: &Push,
) -> Result<String, String> {
    let mut args = registry.tls_args("dest-");
    args.extend(creds_arg(
        "dest-creds",
        push.creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
    ));
    if push.all {
        args.push("--all".into());
    }
    copy(
        registry,
        &args,
        &format!("oci:{}:{layout_tag}", layout_dir.display()),
        &format!("docker://{}/{dest}", registry.host()),
    )
}

/// Pull `src` ("team/app:1.2" or "team/app@sha256:…") from `registry` into
/// the OCI layout at `layout_dir` as `layout_tag` (through a mirror, this
/// is what makes it cache the image); the manifest's digest. With `all`,
/// every platform of an index. Panics with skopeo's output and the
/// registry's log if the pull fails.
pub fn pull(
    registry: &Registry,
    src: &str,
    layout_dir: &Path,
    layout_tag: &str,
    creds: Option<(&str, &str)>,
    all: bool,
) -> String {
    try_pull(registry, src, layout_dir, layout_tag, creds, all)
        .unwrap_or_else(|e| panic!("{e}\nthe registry's log:\n{}", registry.log()))
}

/// [`pull`], with skopeo's output as the error.
pub fn try_pull(
    registry: &Registry,
    src: &str,
    layout_dir: &Path,
    layout_tag: &str,
    creds: Option<(&str, &str)>,
    all: bool,
) -> Result<String, String> {
    let mut args = registry.tls_args("src-");
    args.extend(creds_arg("src-creds", creds));
    if all {
        args.push("--all".into());
    }
    copy(
        registry,
        &args,
        &format!("docker://{}/{src}", registry.host()),
        &format!("oci:{}:{layout_tag}", layout_dir.display()),
    )
}

/// `skopeo inspect --raw` of `dest` on `registry`: the manifest's bytes.
/// Panics with skopeo's output and the registry's log if that fails.
pub fn inspect_raw(registry: &Registry, dest: &str, creds: Option<(&str, &str)>) -> Vec<u8> {
    try_inspect_raw(registry, dest, creds)
        .unwrap_or_else(|e| panic!("{e}\nthe registry's log:\n{}", registry.log()))
}

/// [`inspect_raw`], with skopeo's output as the error.
pub fn try_inspect_raw(
    registry: &Registry,
    dest: &str,
    creds: Option<(&str, &str)>,
) -> Result<Vec<u8>, String> {
    let out = skopeo(registry, "inspect")
        .arg("--raw")
        .args(registry.tls_args(""))
        .args(creds_arg("creds", creds))
        .arg(format!("docker://{}/{dest}", registry.host()))
        .output()
        .expect("running skopeo");
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "skopeo inspect --raw {dest} on {} failed ({}):\n{}",
            registry.host(),
            out.status,
            crate::output_text(&out)
        ))
    }
}

/// Wait until a mirror has stored each of `digests` (it does so in the
/// background after it streamed them to a client); panics after `timeout`.
pub fn wait_cached(mirror: &Registry, digests: &[&str], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while let Some(missing) = digests.iter().find(|d| !mirror.blob_path(d).exists()) {
        assert!(
            Instant::now() < deadline,
            "the mirror did not store {missing} within {timeout:?}; its log:\n{}",
            mirror.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

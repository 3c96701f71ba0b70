//! `keelctl --host` from this machine to a keel host in QEMU, over TLS
//! with client certificates made by `keel pki` (through `keel run
//! --publish`): an admin certificate reads and reboots, a read-only one
//! reads but may not change anything, a certificate from another CA, no
//! trust in the host's CA and requests that carry file descriptors are all
//! refused, the host's key is out of the admin shell's reach, and every
//! request is in keel-remote's log.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keel_api::init::{Request, Response};
use keel_api::remote::RemoteRequest;
use keel_formats::pki::Role;
use keel_image_builder::pki::{self, Issue};
use keel_remote::client::Remote;
use keel_remote::tls::{Material, Pem};
use keel_tests::fixtures::put_config;
use keel_tests::{
    copy_disk, disk_image, free_port, musl_bin_dir, output_text, Guest, BOOT_TIMEOUT,
    COMMAND_TIMEOUT,
};

fn issue(dir: &Path, name: &str, servers: &[String], role: Option<Role>) -> (PathBuf, PathBuf) {
    pki::issue(
        dir,
        &Issue {
            name,
            servers,
            role,
            days: 30,
        },
    )
    .unwrap()
}

struct Client {
    port: u16,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Client {
    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(musl_bin_dir().join("keelctl"))
            .arg("--host")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--cacert")
            .arg(&self.ca)
            .arg("--cert")
            .arg(&self.cert)
            .arg("--key")
            .arg(&self.key)
            .args(args)
            .output()
            .unwrap();
        (out.status.success(), output_text(&out))
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.run(args);
        assert!(ok, "keelctl --host {args:?} failed:\n{text}");
        text
    }

    fn refused(&self, args: &[&str], why: &str) {
        let (ok, text) = self.run(args);
        assert!(!ok, "keelctl --host {args:?} was not refused:\n{text}");
        assert!(
            text.contains(why),
            "keelctl --host {args:?}: expected {why:?} in:\n{text}"
        );
    }
}

#[test]
fn keelctl_reaches_a_host_over_mtls_with_roles() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let (ours, theirs) = (dir.join("pki"), dir.join("stranger"));
    let ca = pki::init(&ours, "keel test CA", 30).unwrap();
    let stranger_ca = pki::init(&theirs, "another CA", 30).unwrap();
    let (host_cert, host_key) = issue(&ours, "host-1", &["127.0.0.1".into()], None);
    let (ops_cert, ops_key) = issue(&ours, "ops", &[], Some(Role::Admin));
    let (dash_cert, dash_key) = issue(&ours, "dash", &[], Some(Role::ReadOnly));
    let (bare_cert, bare_key) = issue(&ours, "bare", &[], None);
    let (evil_cert, evil_key) = issue(&theirs, "ops", &[], Some(Role::Admin));

    let disk = dir.join("disk.img");
    copy_disk(&disk_image(), &disk);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    put_config(
        &disk,
        &format!(
            "hostname = \"host-1\"\n\n[admin.remote]\nenabled = true\n\
             ca = '''\n{}'''\ncert = '''\n{}'''\nkey = '''\n{}'''\n",
            read(&ca),
            read(&host_cert),
            read(&host_key)
        ),
    );
    let port = free_port();
    let mut g = Guest::boot_publishing(&disk, &[(port, keel_formats::pki::REMOTE_PORT)]);
    g.expect("keel: ready", BOOT_TIMEOUT);
    g.prompt();

    let client = |cert: &Path, key: &Path, trust: &Path| Client {
        port,
        ca: trust.to_path_buf(),
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    };
    let ops = client(&ops_cert, &ops_key, &ca);
    let dash = client(&dash_cert, &dash_key, &ca);

    // The remote service starts after the ready line: give it a moment.
    let mut status = String::new();
    for _ in 0..30 {
        let (ok, text) = ops.run(&["status"]);
        if ok {
            status = text;
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        status.contains("remote"),
        "no status over --host:\n{status}"
    );
    assert!(ops.ok(&["update", "status"]).contains("version 0.1.0"));

    // Read-only: looks, changes nothing.
    assert!(dash.ok(&["list"]).contains("web running"));
    assert!(dash
        .ok(&["logs", "remote"])
        .contains("listening on 0.0.0.0:50000"));
    let no = "needs the admin role; \"dash\" has read-only";
    dash.refused(&["reboot"], &format!("init reboot {no}"));
    dash.refused(&["stop", "web"], &format!("init stop {no}"));
    dash.refused(&["update", "check"], &format!("update check {no}"));
    assert!(dash.ok(&["list"]).contains("web running"));

    // No role, another CA, or no trust in the host's CA: refused.
    client(&bare_cert, &bare_key, &ca).refused(&["status"], "grants no role");
    client(&evil_cert, &evil_key, &ca).refused(&["status"], "alert");
    client(&ops_cert, &ops_key, &stranger_ca).refused(&["status"], "certificate");

    // What carries file descriptors does not go over the network: keelctl
    // does not send it, and the host refuses it when sent anyway.
    ops.refused(&["exec", "web", "--", "/bin/true"], "use `ssh`");
    let pem = |p: &Path| std::fs::read(p).unwrap();
    let (ca_pem, cert_pem, key_pem) = (pem(&ca), pem(&ops_cert), pem(&ops_key));
    let m = Material {
        ca: Pem {
            what: "ca",
            text: &ca_pem,
        },
        cert: Pem {
            what: "cert",
            text: &cert_pem,
        },
        key: Pem {
            what: "key",
            text: &key_pem,
        },
    };
    let remote = Remote::new(&format!("127.0.0.1:{port}"), &m).unwrap();
    let exec = RemoteRequest::Init(Request::Exec {
        name: "web".into(),
        argv: vec!["/bin/true".into()],
    });
    let mut stream = remote.open(&exec).unwrap();
    let answer: Response = keel_api::wire::read_answer(&mut stream, "host").unwrap();
    assert!(
        matches!(&answer, Response::Error(e) if e.contains("use `ssh`")),
        "{answer:?}"
    );
    let bundle = dir.join("x.bundle");
    std::fs::write(&bundle, b"x").unwrap();
    ops.refused(
        &["update", "apply", bundle.to_str().unwrap()],
        "publish the bundle",
    );

    // The admin shell shares /run/keel but not the host's key.
    let out = g.shell("cat /run/keel/remote/key.pem 2>&1 | head -c 200");
    assert!(out.contains("Permission denied"), "{out}");

    // The audit log names who asked what, and what was refused.
    let log = ops.ok(&["logs", "remote"]);
    for want in [
        "\"ops\" (admin): init status",
        "\"dash\" (read-only): init reboot: refused",
        "\"bare\" (no role): init status: refused",
        "\"ops\" (admin): init exec: refused",
    ] {
        assert!(log.contains(want), "{want:?} not in:\n{log}");
    }

    // An admin reboots the host (QEMU runs with --no-reboot: it exits).
    ops.ok(&["reboot"]);
    g.expect("keel: Reboot: stopping services", COMMAND_TIMEOUT);
    let st = g.wait_exit(COMMAND_TIMEOUT);
    assert!(st.success(), "QEMU exited with {st}");
}

//! keel's etcd client, reboot semaphore and fleet reports against a real
//! etcd (Debian's etcd-server) over TLS with client certificates: many
//! hosts racing for a few slots never hold more than allowed (checked
//! from etcd's own history), a dead holder's slot frees itself when its
//! lease runs out, certificates from another CA or none are refused, a
//! stopped etcd is an error and not a slot, and `keel fleet status` and
//! `keel fleet watch` read what hosts wrote.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_api::init::Health;
use keel_api::update::{Outcome, OutcomeKind, UpdateState};
use keel_fleet::lock::{holders, slots_prefix, Attempt, RebootLock};
use keel_fleet::report::{HostReport, Reporter};
use keel_fleet::{Etcd, EtcdError, Kv, Tls};
use keel_tests::etcd::EtcdServer;

fn lock(host: &str, max: u32, ttl_s: u64) -> RebootLock {
    RebootLock {
        group: "web".into(),
        host: host.into(),
        max,
        ttl_s,
    }
}

#[test]
fn twelve_hosts_racing_for_three_slots() {
    let etcd = EtcdServer::start();
    let holding = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..12)
        .map(|i| {
            let kv = etcd.client(&format!("h{i}"));
            let (holding, most) = (Arc::clone(&holding), Arc::clone(&most));
            std::thread::spawn(move || {
                let l = lock(&format!("h{i}"), 3, 60);
                let held = loop {
                    match l.acquire(&kv).unwrap() {
                        Attempt::Taken(h) => break h,
                        Attempt::Full(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                };
                let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(150));
                holding.fetch_sub(1, Ordering::SeqCst);
                l.release(&kv, &held).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let seen = etcd.most_at_once(&slots_prefix("web"));
    assert!(seen <= 3, "etcd's history has {seen} slots held at once");
    assert!(most.load(Ordering::SeqCst) <= 3);
    // Twelve hosts holding for 150 ms each against a limit of 3: they did
    // overlap, so the limit was what held them back.
    assert_eq!(seen, 3, "never three at once: the race did not race");
    assert!(holders(&etcd.client("x"), "web").unwrap().is_empty());
}

#[test]
fn leases_certificates_and_a_stopped_etcd() {
    let mut etcd = EtcdServer::start();
    let kv = etcd.client("a");

    // a takes the one slot and dies: b waits until the lease runs out.
    let Attempt::Taken(a) = lock("a", 1, 3).acquire(&kv).unwrap() else {
        panic!("a free slot")
    };
    assert!(lock("a", 1, 3).renew(&kv, &a).unwrap());
    assert_eq!(
        lock("b", 1, 3).acquire(&kv).unwrap(),
        Attempt::Full(vec!["a".into()])
    );
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        !lock("a", 1, 3).renew(&kv, &a).unwrap(),
        "a's lease ran out"
    );
    let Attempt::Taken(b) = lock("b", 1, 60).acquire(&kv).unwrap() else {
        panic!("a's slot is free once its lease ended")
    };
    // a, back late, gives back nothing of b's.
    lock("a", 1, 3).release(&kv, &a).unwrap();
    assert_eq!(
        holders(&kv, "web").unwrap(),
        [(b.key.clone(), "b".to_string())]
    );

    // A client certificate from another CA, and none: refused by etcd's
    // TLS, never a slot.
    let stranger_dir = tempfile::tempdir().unwrap();
    keel_image_builder::pki::init(stranger_dir.path(), "stranger", 1).unwrap();
    keel_image_builder::pki::issue(
        stranger_dir.path(),
        &keel_image_builder::pki::Issue {
            name: "mallory",
            servers: &[],
            role: None,
            days: 1,
        },
    )
    .unwrap();
    let read = |f: &str| std::fs::read_to_string(stranger_dir.path().join(f)).unwrap();
    let stranger = Etcd::new(
        &[etcd.endpoint()],
        &Tls {
            ca: Some(etcd.ca_pem()),
            cert: Some(read("mallory.pem")),
            key: Some(read("mallory.key")),
        },
    )
    .unwrap();
    let anonymous = Etcd::new(
        &[etcd.endpoint()],
        &Tls {
            ca: Some(etcd.ca_pem()),
            ..Tls::default()
        },
    )
    .unwrap();
    for c in [&stranger, &anonymous] {
        match lock("m", 5, 60).acquire(c) {
            Err(EtcdError::Unreachable { tried }) => {
                assert!(tried[0].contains(&etcd.endpoint()), "{tried:?}")
            }
            other => panic!("expected a TLS refusal, got {other:?}"),
        }
    }
    // A client that does not trust etcd's CA refuses etcd.
    let untrusting = Etcd::new(&[etcd.endpoint()], &Tls::default()).unwrap();
    let e = untrusting.range("/").unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
    assert_eq!(holders(&kv, "web").unwrap().len(), 1);

    // Stopped: an error that names the endpoint; back: b still holds its
    // slot (its lease outlived the outage), and the report is there.
    let mut rep = HostReport {
        host: "b".into(),
        group: "web".into(),
        version: "0.1.0".into(),
        slot: "a".into(),
        health: Health::Healthy,
        update: UpdateState::Idle,
        outcome: None,
        place: 7,
        wave: None,
        rebooting: true,
    };
    let mut reporter = Reporter::new("web", "b", 30);
    reporter.report(&kv, &rep).unwrap();
    etcd.stop();
    let e = lock("c", 1, 60).acquire(&kv).unwrap_err();
    assert!(
        matches!(&e, EtcdError::Unreachable { tried } if tried[0].contains(&etcd.endpoint())),
        "{e}"
    );
    assert!(reporter.report(&kv, &rep).is_err());
    etcd.resume();
    assert!(lock("b", 1, 60).renew(&kv, &b).unwrap());
    rep.outcome = Some(Outcome {
        kind: OutcomeKind::RolledBack,
        version: "0.2.0".into(),
        at: 1,
    });
    reporter.report(&kv, &rep).unwrap();

    // keel fleet status and watch read it as a workstation would.
    let keel = keel_tests::keel_bin();
    let out = std::process::Command::new(&keel)
        .args(["fleet", "status"])
        .args(etcd.cli_args("ops"))
        .output()
        .unwrap();
    let text = keel_tests::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("rolled back from 0.2.0"), "{text}");
    assert!(text.contains("rebooting: 1 [\"b\"]"), "{text}");
    let out = std::process::Command::new(&keel)
        .args(["fleet", "status", "--json", "--group", "web"])
        .args(etcd.cli_args("ops"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["hosts"][0]["host"], "b", "{v}");
    assert_eq!(v["failing"][0], "b", "{v}");
    assert_eq!(v["versions"]["0.1.0"], 1, "{v}");

    // The watch pauses the release b rolled back from.
    let d = tempfile::tempdir().unwrap();
    let (key_path, _) = keel_image_builder::bundle::keygen(&d.path().join("release")).unwrap();
    let key = keel_image_builder::bundle::read_secret(&key_path).unwrap();
    let repo = d.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let index = keel_formats::repo::Index {
        format: keel_formats::repo::FORMAT,
        index_version: 1,
        expires: keel_tests::updates::now() + 3600,
        channels: [(
            "stable".to_string(),
            keel_formats::repo::ChannelEntry {
                version: "0.2.0".into(),
                bundle: "bundles/keel-0.2.0.bundle".into(),
                size: 1,
                sha256: "00".repeat(32),
                rollout: None,
            },
        )]
        .into(),
        keys: Vec::new(),
    };
    let env = keel_formats::signed::Envelope::sign(
        keel_formats::signed::Kind::Index,
        serde_json::to_vec(&index).unwrap(),
        &[&key],
    );
    std::fs::write(repo.join(keel_formats::repo::INDEX_FILE), env.to_bytes()).unwrap();
    let watch = |max: &str| {
        let out = std::process::Command::new(&keel)
            .args(["fleet", "watch", "--once", "--max-failed", max, "--repo"])
            .arg(&repo)
            .arg("--sign-key")
            .arg(&key_path)
            .args(etcd.cli_args("ops"))
            .output()
            .unwrap();
        let text = keel_tests::output_text(&out);
        assert!(out.status.success(), "{text}");
        text
    };
    let text = watch("100");
    assert!(
        text.contains("0.2.0 on stable: 1 hosts took it, 1 failed"),
        "{text}"
    );
    assert!(!text.contains("paused"), "{text}");
    let text = watch("50");
    assert!(
        text.contains("paused the rollout of 0.2.0: 1 of 1 hosts failed"),
        "{text}"
    );
    let text = watch("50");
    assert!(text.contains("the rollout is paused"), "{text}");
}

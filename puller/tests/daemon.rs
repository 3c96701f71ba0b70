//! The keel-pull daemon as keel-init uses it: a request on its socket, a
//! pull from a real registry (Debian's docker-registry, images pushed by
//! skopeo), events back; the store's copy for `missing` and `never`; a bad
//! request answered and the daemon still serving.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use keel_api::pull::PullEvent;
use keel_registry::reference::Reference;
use keel_registry::store::Store;
use keel_tests::registry::{image_layout, push, Options, Push, Registry};

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path) -> Daemon {
    let child = Command::new(env!("CARGO_BIN_EXE_keel-pull"))
        .arg("daemon")
        .arg("--dir")
        .arg(dir)
        .spawn()
        .unwrap();
    let socket = dir.join("pull.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "keel-pull made no socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    Daemon(child)
}

/// Send `line`; every event until the outcome.
fn ask(dir: &Path, line: &str) -> Vec<PullEvent> {
    let mut s = UnixStream::connect(dir.join("pull.sock")).unwrap();
    s.write_all(line.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    let mut events = Vec::new();
    for l in BufReader::new(s).lines() {
        let e: PullEvent = serde_json::from_str(&l.unwrap()).unwrap();
        let last = e.is_last();
        events.push(e);
        if last {
            break;
        }
    }
    events
}

fn request(registry: &Registry, tag: &str, policy: &str) -> String {
    format!(
        r#"{{"op":"pull","reference":"{host}/team/app:{tag}","policy":"{policy}","hosts":[{{"host":"{host}","insecure":true}}]}}"#,
        host = registry.host()
    )
}

#[test]
fn the_daemon_pulls_for_keel_init_and_serves_on_after_a_bad_request() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(Options::http());
    let layout = dir.path().join("layout");
    let digest = image_layout(
        &layout,
        "v1",
        "amd64",
        &[vec![("etc/app", vec![7u8; 600 << 10])]],
    );
    push(&registry, &layout, "v1", "team/app:1", &Push::default());
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let _daemon = start(&state);
    let mode = std::fs::metadata(state.join("pull.sock")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    let events = ask(&state, &request(&registry, "1", "missing"));
    assert!(
        events.iter().any(
            |e| matches!(e, PullEvent::Progress { done, total, .. } if done == total && *total > 0)
        ),
        "{events:?}"
    );
    match events.last().unwrap() {
        PullEvent::Pulled {
            manifest,
            fetched,
            host,
        } => {
            assert_eq!(manifest, &digest);
            assert!(*fetched > 0);
            assert_eq!(host, &registry.host());
        }
        other => panic!("{other:?}"),
    }
    let store = Store::open(&state.join("store")).unwrap();
    let name: Reference = format!("{}/team/app:1", registry.host()).parse().unwrap();
    assert_eq!(
        store
            .tagged(&name.to_string())
            .unwrap()
            .unwrap()
            .digest
            .to_string(),
        digest
    );
    keel_oci::open_manifest(store.root(), &digest).unwrap();

    // In the store: no network.
    let again = ask(&state, &request(&registry, "1", "missing"));
    assert_eq!(
        again,
        [PullEvent::Pulled {
            manifest: digest.clone(),
            fetched: 0,
            host: String::new()
        }]
    );
    let never = ask(&state, &request(&registry, "2", "never"));
    assert!(
        matches!(never.as_slice(), [PullEvent::Failed { message }] if message.contains("never")),
        "{never:?}"
    );
    let missing_tag = ask(&state, &request(&registry, "9", "missing"));
    assert!(
        matches!(missing_tag.as_slice(), [PullEvent::Failed { message }] if message.contains("MANIFEST_UNKNOWN")),
        "{missing_tag:?}"
    );
    // A bad request gets its answer; the daemon serves the next one.
    let bad = ask(&state, "{\"reference\": 42}");
    assert!(
        matches!(bad.as_slice(), [PullEvent::Failed { .. }]),
        "{bad:?}"
    );
    let silent = UnixStream::connect(state.join("pull.sock")).unwrap();
    drop(silent);
    let always = ask(&state, &request(&registry, "1", "always"));
    assert!(
        matches!(always.last(), Some(PullEvent::Pulled { host, .. }) if *host == registry.host()),
        "{always:?}"
    );

    // What `keelctl image list`, `rm` and `prune` ask.
    let listed = ask(&state, r#"{"op":"list"}"#);
    let [PullEvent::Images { images }] = listed.as_slice() else {
        panic!("{listed:?}")
    };
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].reference, name.to_string());
    assert!(images[0].whole && images[0].size > 0);
    let kept = ask(&state, &format!(r#"{{"op":"prune","keep":["{name}"]}}"#));
    assert!(
        matches!(kept.as_slice(), [PullEvent::Removed { references, .. }] if references.is_empty()),
        "{kept:?}"
    );
    let pruned = ask(&state, r#"{"op":"prune","keep":[]}"#);
    assert!(
        matches!(pruned.as_slice(), [PullEvent::Removed { references, freed, size: 0 }] if references.len() == 1 && *freed == images[0].size),
        "{pruned:?}"
    );
    assert!(store.list().unwrap().is_empty());
}

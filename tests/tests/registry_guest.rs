//! A keel host pulls its container's image from a registry: the real
//! registry (Debian's docker-registry) on this machine's 127.0.0.1, reached
//! from the guest at 10.0.2.100 through QEMU's guestfwd, declared insecure
//! in the host config. keel-pull (the confined system container) pulls,
//! keel-init unpacks from its store and runs the container; a tag that is
//! not there is a warning in `keelctl status` and leaves the running
//! container as it was, and is tried again by itself until the tag turns
//! up; `config apply` with a new tag pulls it before it restarts the
//! container. `keelctl image` pulls, lists, removes and prunes, and the
//! store is collected to its budget after an apply.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;

use keel_tests::fixtures::{busybox_layer, put_config, Entry};
use keel_tests::registry::{push, runnable_layout, Options, Push, Registry};
use keel_tests::{copy_disk, disk_image, Guest, BOOT_TIMEOUT};

/// The registry as the guest names it.
const REGISTRY: &str = "10.0.2.100:5000";

/// A busybox image whose entrypoint says which version it is and sleeps.
fn app_layout(dir: &Path, tag: &str) {
    let version = format!("image {tag}\n");
    let version = Entry::file("version", version.as_bytes(), 0o644);
    runnable_layout(
        dir,
        tag,
        &[busybox_layer(&["sh", "cat", "sleep"], &[version])],
        serde_json::json!({
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["cat /version; exec sleep 100000"],
            "Env": ["PATH=/bin"],
        }),
    );
}

fn config(tag: &str) -> String {
    format!(
        "[network.interfaces.eth0]\naddresses = [\"10.0.2.15/24\"]\n\n\
         [registries.\"{REGISTRY}\"]\ninsecure = true\n\n\
         [containers.app]\nimage = \"{REGISTRY}/team/app:{tag}\"\n"
    )
}

fn version(g: &mut Guest) -> String {
    g.shell("keelctl exec app -- /bin/cat /version")
        .trim()
        .to_string()
}

// One scenario: each step needs the state the steps before it left, and a
// boot costs seconds of the suite.
#[test]
fn a_container_runs_from_a_registry_image_and_a_new_tag_is_pulled_before_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(Options::http());
    let layout = dir.path().join("app");
    app_layout(&layout, "1");
    app_layout(&layout, "2");
    for tag in ["1", "2"] {
        push(
            &registry,
            &layout,
            tag,
            &format!("team/app:{tag}"),
            &Push::default(),
        );
    }
    let disk = dir.path().join("disk.img");
    copy_disk(&disk_image(), &disk);
    put_config(&disk, &config("1"));

    let mut g = Guest::boot_with(&disk, false, &[(5000, registry.port())]);
    g.expect("keel: ready ", BOOT_TIMEOUT);
    g.prompt();
    let pull = g.service("pull");
    assert_eq!(pull["state"], "running", "{pull}");
    let out = g.poll_shell("keelctl exec app -- /bin/cat /version", 90, |t| {
        t.contains("image 1")
    });
    assert!(
        out.contains("image 1"),
        "{out}\n{}",
        g.shell("keelctl status; keelctl logs pull")
    );
    // keel-pull is no root and has no capabilities.
    let pid = g.service("pull")["pid"].as_i64().unwrap();
    let st = g.shell(&format!("grep -E '^(Uid|CapEff):' /proc/{pid}/status"));
    assert!(
        st.contains("Uid:\t38\t38") && st.contains("CapEff:\t0000000000000000"),
        "{st}"
    );
    assert!(registry.log().contains("GET /v2/team/app/manifests/1"));

    // A tag the registry does not have: the pull fails, the status says
    // why, and the running container is the one it was.
    let app_pid = g.service("app")["pid"].as_i64().unwrap();
    g.write_file("/tmp/missing.toml", &config("9"));
    g.shell("keelctl config apply /tmp/missing.toml; echo rc=$?");
    let status = g.poll_shell("keelctl status", 60, |t| t.contains("team/app:9"));
    assert!(
        status.contains("team/app:9") && status.contains("not found"),
        "{status}"
    );
    assert_eq!(g.service("app")["pid"].as_i64().unwrap(), app_pid);
    assert_eq!(version(&mut g), "image 1");
    // The tag turns up: the failed pull is tried again by itself, with
    // backoff, and the container restarts on it.
    app_layout(&layout, "9");
    push(&registry, &layout, "9", "team/app:9", &Push::default());
    g.poll_shell("keelctl exec app -- /bin/cat /version", 120, |t| {
        t.contains("image 9")
    });
    let status = g.shell("keelctl status");
    assert!(!status.contains("team/app:9"), "a stale warning: {status}");

    // A new tag: pulled, then the container restarts on it. A budget of
    // nothing: the images no container uses go once it runs.
    let two = format!("{}\n[images]\nbudget = \"0B\"\n", config("2"));
    g.write_file("/tmp/two.toml", &two);
    let out = g.shell("keelctl config apply /tmp/two.toml; echo rc=$?");
    assert!(out.contains("rc=0"), "{out}");
    let out = g.poll_shell("keelctl exec app -- /bin/cat /version", 90, |t| {
        t.contains("image 2")
    });
    assert!(out.contains("image 2"), "{out}");
    assert!(registry.log().contains("GET /v2/team/app/manifests/2"));
    let app = |tag: &str| format!("{REGISTRY}/team/app:{tag}");
    let list = g.poll_shell("keelctl image list", 60, |t| !t.contains(&app("1")));
    assert!(
        list.contains(&app("2")) && !list.contains(&app("1")) && !list.contains(&app("9")),
        "{list}"
    );

    // keelctl image: a pull with progress (one line per layer off a
    // terminal), the store's list, rm refused for an image in use.
    let out = g.shell(&format!(
        "keelctl image pull {} >/tmp/pull.out 2>&1; echo rc=$?; cat /tmp/pull.out",
        app("1")
    ));
    assert!(
        out.contains("rc=0") && out.contains(&format!("fetched from {REGISTRY}")),
        "{out}"
    );
    assert!(out.contains(" / "), "no progress line: {out}");
    let list = g.shell("keelctl image list");
    assert!(
        list.contains(&app("1")) && list.contains(&app("2")),
        "{list}"
    );
    assert!(
        list.starts_with("REFERENCE") || list.contains("\nREFERENCE"),
        "{list}"
    );
    let out = g.shell(&format!("keelctl image rm {} 2>&1; echo rc=$?", app("2")));
    assert!(
        out.contains("containers.app") && out.contains("rc=1"),
        "{out}"
    );
    let out = g.shell(&format!(
        "keelctl image rm {REGISTRY}/team/app:404 2>&1; echo rc=$?"
    ));
    assert!(
        out.contains("no such image") && out.contains("rc=1"),
        "{out}"
    );
    let out = g.shell("keelctl image prune; echo rc=$?");
    assert!(
        out.contains(&format!("removed {}", app("1"))) && out.contains("rc=0"),
        "{out}"
    );
    let list = g.shell("keelctl image list");
    assert!(
        list.contains(&app("2")) && !list.contains(&app("1")),
        "{list}"
    );
    // The container runs on, and comes back on its image after a restart.
    g.shell("keelctl restart app");
    let out = g.poll_shell("keelctl exec app -- /bin/cat /version", 60, |t| {
        t.contains("image 2")
    });
    assert!(out.contains("image 2"), "{out}");
}

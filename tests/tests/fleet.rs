//! Three keel hosts in QEMU follow one repository and coordinate their
//! reboots through a real etcd (the harness's, reached at 10.0.2.100:2379
//! through guestfwd) with `max_rebooting = 1`: a first wave of 0 % keeps
//! every host off the release until a new index opens it; they reboot one
//! at a time (checked from etcd's history and from the consoles' clocks);
//! with etcd stopped mid-rollout no other host reboots until it is back;
//! all end on the new version; a release that fails its health gate on
//! the one host its wave reaches is rolled back there, which gives its
//! slot back, and `keel fleet watch` pauses that release.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::Command;
use std::time::{Duration, Instant};

use keel_fleet::lock::slots_prefix;
use keel_fleet::Kv;
use keel_image_builder::bundle;
use keel_tests::etcd::{EtcdServer, GUEST_PORT};
use keel_tests::updates::{add, build, now, read_index, roll_out};
use keel_tests::{
    copy_disk, fixtures, keel_bin, output_text, Guest, BOOT_TIMEOUT, COMMAND_TIMEOUT,
};

const GROUP: &str = "web";
const REBOOTING: &str = "keel: Reboot: stopping services";

/// (host name, rollout seed): web-3 alone is in the first 34 % of places.
const HOSTS: [(&str, u64); 3] = [("web-1", 9000), ("web-2", 8000), ("web-3", 100)];

fn host_toml(name: &str, seed: u64, etcd: &EtcdServer) -> String {
    let (cert, key) = etcd.identity(name);
    format!(
        "hostname = \"{name}\"\n\n[update]\nrollout_seed = {seed}\n\n\
         [update.coordination]\netcd = [\"https://10.0.2.100:{GUEST_PORT}\"]\n\
         group = \"{GROUP}\"\nmax_rebooting = 1\nreport_interval = \"5s\"\n\
         ca = '''\n{}'''\ncert = '''\n{cert}'''\nkey = '''\n{key}'''\n",
        etcd.ca_pem()
    )
}

/// Run `keel fleet ARGS` with the operator's etcd identity.
fn keel_fleet(etcd: &EtcdServer, args: &[&str], extra: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(keel_bin())
        .arg("fleet")
        .args(args)
        .args(extra)
        .args(["--group", GROUP])
        .args(etcd.cli_args("operator"))
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "keel fleet {args:?}: {text}");
    text
}

/// Run `keel fleet ARGS` every 2 s until it prints `want` (the hosts
/// report on their interval); its output.
fn keel_fleet_until(
    etcd: &EtcdServer,
    args: &[&str],
    extra: &[&std::ffi::OsStr],
    want: &str,
) -> String {
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    loop {
        let text = keel_fleet(etcd, args, extra);
        if text.contains(want) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "keel fleet {args:?} never printed {want:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Wait until one of `guests` prints `pattern` after `from[i]`; its index.
fn first_to(guests: &mut [Guest], from: &[usize], pattern: &str, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        for (i, g) in guests.iter_mut().enumerate() {
            g.pump();
            if g.transcript[from[i]..].contains(pattern) {
                return i;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no guest printed {pattern:?} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn check_wave_closed(g: &mut Guest, version: &str) {
    let out = g.shell("keelctl update check 2>&1");
    assert!(
        out.contains(&format!(
            "no wave of {version}'s rollout reaches this host yet"
        )),
        "{out}"
    );
}

fn slots_held(etcd: &EtcdServer) -> usize {
    etcd.client("probe")
        .range(&slots_prefix(GROUP))
        .unwrap()
        .len()
}

#[test]
fn three_hosts_reboot_one_at_a_time_through_etcd() {
    let started = Instant::now();
    let mut etcd = EtcdServer::start();
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let (key_path, _) = bundle::keygen(&dir.join("release")).unwrap();
    let key = bundle::read_secret(&key_path).unwrap();
    let v1 = build(dir, "0.1.0", &[], &key_path);
    let v2 = build(dir, "0.2.0", &[], &key_path);
    let v3 = build(dir, "0.3.0", &["never-ready"], &key_path);
    let repo_dir = dir.join("repo");
    add(&repo_dir, &v1.join("keel-0.1.0.bundle"), &key);
    let port = keel_tests::http::serve(&repo_dir);

    let mut guests: Vec<Guest> = HOSTS
        .iter()
        .map(|(name, seed)| {
            let disk = dir.join(format!("{name}.img"));
            copy_disk(&v1.join("disk.img"), &disk);
            fixtures::put_config(&disk, &host_toml(name, *seed, &etcd));
            Guest::boot_with(&disk, true, &[(80, port), (GUEST_PORT, etcd.port)])
        })
        .collect();
    for g in &mut guests {
        g.expect("keel: ready version=0.1.0 slot=a", BOOT_TIMEOUT);
        g.prompt();
    }
    eprintln!("fleet: three hosts up after {:?}", started.elapsed());

    // A first wave of 0 %: no host installs 0.2.0.
    add(&repo_dir, &v2.join("keel-0.2.0.bundle"), &key);
    roll_out(&repo_dir, "0%@0s", now(), &key);
    for g in &mut guests {
        check_wave_closed(g, "0.2.0");
    }

    // A new index opens it to all (started two hours ago: past any skew
    // between this clock and the guests'). Each host installs it, then
    // waits for the one reboot slot.
    roll_out(&repo_dir, "100%@1h", now() - 7200, &key);
    for g in &mut guests {
        g.send("keelctl update check\n");
    }
    for g in &mut guests {
        g.expect("installed 0.2.0 into slot b", BOOT_TIMEOUT);
    }

    // etcd goes away while the first host is rebooting: it comes up on
    // 0.2.0 and cannot give its slot back; the others cannot take it.
    let from: Vec<usize> = guests.iter().map(Guest::cursor).collect();
    let first = first_to(&mut guests, &from, REBOOTING, BOOT_TIMEOUT);
    etcd.stop();
    eprintln!(
        "fleet: {} rebooting first; etcd stopped after {:?}",
        HOSTS[first].0,
        started.elapsed()
    );
    guests[first].expect("keel: ready version=0.2.0 slot=b", BOOT_TIMEOUT);
    guests[first].expect("blessed as keel-0.2.0.efi", COMMAND_TIMEOUT);
    guests[first].prompt();
    guests[first].poll_shell("keelctl update status", 60, |s| {
        s.contains("reboot coordination: cannot give back reboot slot")
    });
    for (i, g) in guests.iter_mut().enumerate() {
        if i != first {
            let s = g.poll_shell("keelctl update status", 60, |s| {
                s.contains("reboot coordination: not rebooting until etcd answers")
            });
            assert!(s.contains("state: installed"), "{s}");
            // Waiting is not failing: the update is owed a reboot.
            assert!(!s.contains("failed"), "{s}");
        }
    }
    // Twice their retry interval with etcd still down: no one reboots.
    std::thread::sleep(Duration::from_secs(25));
    for (i, g) in guests.iter_mut().enumerate() {
        g.pump();
        if i != first {
            assert!(
                !g.transcript[from[i]..].contains(REBOOTING),
                "{} rebooted while etcd was down:\n{}",
                HOSTS[i].0,
                g.transcript
            );
        }
    }

    // etcd is back: the first host gives its slot back, the others take
    // it in turn, and all three end on 0.2.0.
    etcd.resume();
    for (i, g) in guests.iter_mut().enumerate() {
        if i != first {
            g.expect("keel: ready version=0.2.0 slot=b", BOOT_TIMEOUT);
            g.expect("blessed as keel-0.2.0.efi", COMMAND_TIMEOUT);
            g.prompt();
        }
    }
    eprintln!("fleet: all on 0.2.0 after {:?}", started.elapsed());
    let most = etcd.most_at_once(&slots_prefix(GROUP));
    assert_eq!(
        most, 1,
        "etcd's history has {most} reboot slots held at once"
    );
    // From the consoles: each host's reboot, from keel-init stopping its
    // services to the health gate blessing 0.2.0, ends before the next.
    let mut spans: Vec<(Instant, Instant, &str)> = guests
        .iter()
        .zip(HOSTS)
        .map(|(g, (name, _))| {
            let down = g.times(REBOOTING);
            let up = g.times("blessed as keel-0.2.0.efi");
            assert_eq!((down.len(), up.len()), (1, 1), "{name}:\n{}", g.transcript);
            (down[0], up[0], name)
        })
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(
            w[0].1 < w[1].0,
            "{} rebooted before {} was back: {:?} vs {:?}",
            w[1].2,
            w[0].2,
            w[1].0 - spans[0].0,
            w[0].1 - spans[0].0
        );
    }
    for g in &mut guests {
        let s = g.poll_shell("keelctl update status", 60, |s| {
            s.contains("gave back reboot slot")
        });
        assert!(s.contains("version 0.2.0 (slot b)"), "{s}");
    }
    assert_eq!(slots_held(&etcd), 0);
    keel_fleet_until(&etcd, &["status"], &[], "3 hosts; versions: 0.2.0: 3");
    let json: serde_json::Value =
        serde_json::from_str(&keel_fleet(&etcd, &["status", "--json"], &[])).unwrap();
    for h in json["hosts"].as_array().unwrap() {
        assert_eq!(h["outcome"]["kind"], "updated", "{json}");
        assert_eq!(h["outcome"]["version"], "0.2.0", "{json}");
    }

    // 0.3.0 never becomes healthy; its first wave reaches web-3 only,
    // which installs it, reboots into it, rolls back to 0.2.0 and gives
    // its slot back.
    add(&repo_dir, &v3.join("keel-0.3.0.bundle"), &key);
    roll_out(&repo_dir, "34%@0s", now() - 7200, &key);
    check_wave_closed(&mut guests[0], "0.3.0");
    check_wave_closed(&mut guests[1], "0.3.0");
    let g = &mut guests[2];
    g.send("keelctl update check\n");
    g.expect("installed 0.3.0 into slot a", COMMAND_TIMEOUT);
    g.expect("keel: unhealthy version=0.3.0 slot=a", BOOT_TIMEOUT);
    g.expect("failed its health gate: marked", COMMAND_TIMEOUT);
    g.expect("keel: ready version=0.2.0 slot=b", BOOT_TIMEOUT);
    g.prompt();
    let s = g.poll_shell("keelctl update status", 60, |s| {
        s.contains("gave back reboot slot")
    });
    assert!(s.contains("update to 0.3.0 failed"), "{s}");
    assert_eq!(slots_held(&etcd), 0);
    assert_eq!(etcd.most_at_once(&slots_prefix(GROUP)), 1);

    // The publisher's watch sees the one host that took 0.3.0 fail and
    // pauses the release.
    let watch_args = [
        std::ffi::OsStr::new("--repo"),
        repo_dir.as_os_str(),
        std::ffi::OsStr::new("--sign-key"),
        key_path.as_os_str(),
    ];
    keel_fleet_until(
        &etcd,
        &["watch", "--once", "--max-failed", "50"],
        &watch_args,
        "paused the rollout of 0.3.0: 1 of 1 hosts failed",
    );
    let stable = read_index(&repo_dir).channels["stable"].clone();
    assert_eq!(stable.version, "0.3.0");
    let waves = stable.rollout.unwrap().waves;
    assert!(waves.iter().all(|w| w.percent == 0), "{waves:?}");

    for g in &mut guests {
        g.send("keelctl poweroff\n");
    }
    for g in &mut guests {
        let st = g.wait_exit(COMMAND_TIMEOUT);
        assert!(st.success(), "QEMU exited with {st}");
    }
    eprintln!("fleet: the test took {:?}", started.elapsed());
}

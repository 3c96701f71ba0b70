//! Power cuts where they hurt most, on a disk that loses every write not
//! yet flushed when the power goes (`keel_tests::volatile`), as a real disk's
//! cache does: while an update downloads (a delta), verifies and writes the other
//! slot; while the new UKI is renamed into place and the host reboots into
//! it; while keel-init blesses the new entry; while `keelctl config apply`
//! and `confirm` write the host config to the ESP. After every cut the
//! host boots a healthy slot on a good config. The cuts are drawn from a
//! seed the test prints (KEEL_CUT_SEED replays them).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use keel_image_builder::bundle;
use keel_tests::fixtures::esp_text_if_any;
use keel_tests::throttle::Throttle;
use keel_tests::updates::{add, build, now, snapshot};
use keel_tests::volatile::VolatileDisk;
use keel_tests::{Guest, BOOT_TIMEOUT, COMMAND_TIMEOUT};

/// A small xorshift generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const PHASES: [&str; 3] = ["downloading", "verifying", "installing"];

/// Where a cut lands.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// In an update's phase, this far into it (a `keelctl update status`
    /// progress fraction).
    Update { phase: usize, at: f64 },
    /// This long after the update says it installed the new entry: the
    /// reboot, and the new version's first boot.
    Switch { after_ms: u64 },
    /// This long after the new version is ready: keel-init blessing it.
    Bless { after_ms: u64 },
    /// This long after `config apply` is sent (with `confirm`: after
    /// `config apply --try` and `config confirm`).
    Config { confirm: bool, after_ms: u64 },
}

/// 24 cuts: 9 in an update's phases, 5 around the switch, 4 around the
/// blessing, 6 around the config's writes; in the seed's order.
fn draw(rng: &mut Rng) -> Vec<Cut> {
    let mut cuts = Vec::new();
    for i in 0..9 {
        let phase = i % 3;
        let at = rng.below(1000) as f64 / 1000.0;
        cuts.push(Cut::Update { phase, at });
    }
    for _ in 0..5 {
        cuts.push(Cut::Switch {
            after_ms: rng.below(9000),
        });
    }
    for _ in 0..4 {
        cuts.push(Cut::Bless {
            after_ms: rng.below(3000),
        });
    }
    for i in 0..6 {
        cuts.push(Cut::Config {
            confirm: i % 2 == 1,
            after_ms: rng.below(2500),
        });
    }
    // Shuffle, so that no phase always meets the same disk history.
    for i in (1..cuts.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        cuts.swap(i, j);
    }
    cuts
}

/// (phase index, fraction done) of a `keelctl update status` state line.
fn progress_of(line: &str) -> Option<(usize, f64)> {
    let rest = line.split("state: ").nth(1)?;
    let phase = PHASES.iter().position(|p| rest.starts_with(p))?;
    let frac = rest
        .split_whitespace()
        .find_map(|w| {
            let (a, b) = w.split_once('/')?;
            Some(a.parse::<f64>().ok()? / b.parse::<f64>().ok()?)
        })
        .unwrap_or(0.0);
    Some((phase, frac))
}

/// Run the guest up to the cut, then cut; a Config cut applies
/// `new_config`. Returns whether the cut may have come after the new
/// version was in place (it may boot then).
fn run_to(g: &mut Guest, cut: Cut, new_config: &str) -> bool {
    match cut {
        Cut::Update { phase, at } => {
            g.send("keelctl update check >/dev/null 2>&1 & while :; do keelctl update status | grep '^state'; sleep 0.1; done\n");
            let deadline = Instant::now() + COMMAND_TIMEOUT;
            let late = loop {
                assert!(Instant::now() < deadline, "no progress:\n{}", g.transcript);
                let line = g.expect("\n", COMMAND_TIMEOUT);
                // Past the install's end: the entry was renamed into
                // place already, and the host may reboot into it (or is
                // rebooting, before the status loop saw the end).
                if line.contains("state: installed") || line.contains("keel: Reboot") {
                    break true;
                }
                if let Some(p) = progress_of(&line) {
                    if p >= (phase, at) {
                        break false;
                    }
                }
            };
            g.power_cut();
            late || phase == 2
        }
        Cut::Switch { after_ms } => {
            g.send("keelctl update check\n");
            g.expect("installed 0.2.0 into slot b", COMMAND_TIMEOUT);
            std::thread::sleep(Duration::from_millis(after_ms));
            g.power_cut();
            true
        }
        Cut::Bless { after_ms } => {
            g.send("keelctl update check\n");
            g.expect("installed 0.2.0 into slot b", COMMAND_TIMEOUT);
            g.expect("keel: ready version=0.2.0 slot=b", BOOT_TIMEOUT);
            std::thread::sleep(Duration::from_millis(after_ms));
            g.power_cut();
            true
        }
        Cut::Config { confirm, after_ms } => {
            g.shell(&format!(
                "printf '{}' > /tmp/new.toml",
                new_config.replace('\n', "\\n")
            ));
            if confirm {
                let out = g.shell("keelctl config apply --try 5m /tmp/new.toml; echo rc=$?");
                assert!(out.contains("rc=0"), "{out}");
                g.send("keelctl config confirm\n");
            } else {
                g.send("keelctl config apply /tmp/new.toml\n");
            }
            std::thread::sleep(Duration::from_millis(after_ms));
            g.power_cut();
            false
        }
    }
}

/// The host config on the disk's ESP (empty: none).
fn esp_config(disk_path: &std::path::Path) -> String {
    esp_text_if_any(disk_path, keel_formats::host::ON_ESP).unwrap_or_default()
}

/// The hostname a host config sets (keel's default without one).
fn hostname_of(config: &str) -> &str {
    config
        .split('"')
        .nth(1)
        .filter(|_| config.starts_with("hostname"))
        .unwrap_or("keel")
}

// One long scenario rather than many short tests: each step needs the
// state the steps before it left, and a boot costs seconds of the suite.
#[test]
fn power_cuts_where_they_hurt_most_never_brick_the_host() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let (key_path, _) = bundle::keygen(&dir.join("release")).unwrap();
    let key = bundle::read_secret(&key_path).unwrap();
    let v1 = build(dir, "0.1.0", &[], &key_path);
    let v2 = build(dir, "0.2.0", &[], &key_path);
    let pristine = v1.join("disk.img");
    let repo_dir = dir.join("repo");
    add(&repo_dir, &v2.join("keel-0.2.0.bundle"), &key);
    // v1 -> v2 is a delta of a few hundred KiB: at this rate it takes a
    // few seconds, so that the download cuts land in it.
    let relay = Throttle::start(keel_tests::http::serve(&repo_dir));
    relay.set_rate(256 << 10);
    let port = relay.port();
    let disk_path = dir.join("disk.img");
    let vars = dir.join("disk.vars");
    let disk = VolatileDisk::serve(&disk_path, &dir.join("nbd.sock"));
    // A v1 host, booted: where every cut starts unless the one before
    // left a host that continues as it is.
    let fresh = || {
        keel_tests::copy_disk(&pristine, &disk_path);
        let _ = std::fs::remove_file(&vars);
        let mut g = Guest::boot_volatile(&disk, &vars, true, &[(80, port)]);
        g.expect("keel: ready version=0.1.0 slot=a", BOOT_TIMEOUT);
        g.prompt();
        g
    };

    let seed = std::env::var("KEEL_CUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now() ^ u64::from(std::process::id()) << 20 | 1);
    eprintln!("power cut seed: {seed} (KEEL_CUT_SEED={seed} replays it)");
    let cuts = draw(&mut Rng(seed));
    assert!(cuts.len() >= 20);
    let mut g = fresh();
    // What the ESP's host config is before the next cut.
    let mut config = String::new();
    // Cuts after which the ESP's host.toml was torn (see below).
    let mut torn_cuts = Vec::new();
    for (i, cut) in cuts.iter().enumerate() {
        eprintln!("cut {i}: {cut:?}");
        let new_config = format!("hostname = \"cut-{i}\"\n");
        let new_may_boot = run_to(&mut g, *cut, &new_config);

        // What survived the cut: the entries of the running version (and
        // the new one, if the cut came after it was in place), and the old
        // host config or the new one, whole.
        let (_, entries) = snapshot(&disk_path);
        // A cut while an entry is written leaves its temporary
        // (`.keel-….efi.tmp`): systemd-boot does not load it, and the next
        // install removes it.
        let entries: Vec<&String> = entries
            .iter()
            .filter(|e| !(e.starts_with(".keel-") && e.ends_with(".tmp")))
            .collect();
        assert!(
            entries.iter().any(|e| e.starts_with("keel-0.1.0"))
                && entries.iter().all(|e| e.starts_with("keel-0.1.0")
                    || (new_may_boot && e.starts_with("keel-0.2.0"))),
            "after cut {i} ({cut:?}): {entries:?}"
        );
        // vfat has no journal: a cut can tear a rename over host.toml so
        // that the FAT frees the old file's cluster while its directory
        // entry still points there, and a later write (a UKI) takes the
        // cluster. Then the host must boot on its last good config and
        // say why; the ESP is started afresh after that.
        let kept = esp_config(&disk_path);
        let torn = kept != config && kept != new_config;
        if torn {
            eprintln!(
                "cut {i} ({cut:?}): the ESP's host.toml is torn (neither {config:?} nor {new_config:?}): {:?}",
                kept.chars().take(40).collect::<String>()
            );
        } else {
            config = kept;
        }

        // The next boot is of a healthy slot, on that config.
        g = Guest::boot_volatile(&disk, &vars, true, &[(80, port)]);
        g.expect("keel: ready ", BOOT_TIMEOUT);
        let booted = g.expect(" slot=", COMMAND_TIMEOUT);
        assert!(
            booted.starts_with("version=0.1.0")
                || (new_may_boot && booted.starts_with("version=0.2.0")),
            "after cut {i} ({cut:?}) the host booted {booted:?}:\n{}",
            g.transcript
        );
        g.prompt();
        let status = g.status();
        assert_eq!(status["health"], "healthy", "after cut {i}: {status}");
        if torn {
            assert_eq!(
                status["config"]["source"], "last-good",
                "after cut {i}: {status}"
            );
            assert!(
                !status["config"]["errors"]
                    .as_array()
                    .is_none_or(Vec::is_empty),
                "a torn host.toml is reported: {status}"
            );
            torn_cuts.push(i);
        } else {
            assert_eq!(status["hostname"], hostname_of(&config), "after cut {i}");
        }
        if new_may_boot || torn {
            // An update went through or may have, or the ESP is torn:
            // start again from v1.
            g.send("keelctl poweroff\n");
            assert!(g.wait_exit(COMMAND_TIMEOUT).success());
            g = fresh();
            config.clear();
        }
    }
    g.send("keelctl poweroff\n");
    assert!(g.wait_exit(COMMAND_TIMEOUT).success());
    eprintln!(
        "power cuts: {} sectors written and never flushed were lost, {} flushed; host.toml torn after cuts {torn_cuts:?}",
        disk.lost_sectors(),
        disk.flushed_sectors()
    );
    assert!(
        disk.lost_sectors() > 0,
        "no cut lost an unflushed write: the disk does not behave as a volatile cache"
    );

    // Without a cut, the update goes through on this disk.
    let mut g = fresh();
    g.send("keelctl update check\n");
    g.expect("installed 0.2.0 into slot b", COMMAND_TIMEOUT);
    g.expect("keel: ready version=0.2.0 slot=b", BOOT_TIMEOUT);
    g.expect("blessed as keel-0.2.0.efi", COMMAND_TIMEOUT);
    g.prompt();
    g.send("keelctl poweroff\n");
    assert!(g.wait_exit(COMMAND_TIMEOUT).success());
}

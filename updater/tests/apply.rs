//! keel-update's agent against a disk made of plain files: slot partitions
//! in a folder (as /dev/disk/by-partlabel would list them) and an ESP
//! folder, with real UKIs (systemd's stub), real verity trees and real
//! signed bundles. The same code runs on a host against block devices.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::fs;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

use keel_formats::cmdline::BootParams;
use keel_formats::policy::Policy;
use keel_image_builder::{bundle, uki, verity};
use keel_update::agent::{Agent, Paths};
use keel_update::error::UpdateError;

const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
const MIB: usize = 1 << 20;

struct Version {
    cmdline: String,
    bundle: PathBuf,
    root: Vec<u8>,
    tree: Vec<u8>,
}

/// A root image, its tree, its UKI and its bundle, for `version`.
fn make(dir: &Path, version: &str, key: &SigningKey, fill: u8) -> Version {
    make_with(dir, version, key, fill, false)
}

fn make_with(dir: &Path, version: &str, key: &SigningKey, fill: u8, downgrade: bool) -> Version {
    let root: Vec<u8> = (0..3 * MIB + 8192)
        .map(|i| (i as u8).wrapping_mul(fill))
        .collect();
    let tree = verity::compute(&root[..], Path::new("root"), &[fill; 32], [0; 16]).unwrap();
    let params = BootParams {
        slot: None,
        verity: tree.params.clone(),
    };
    let cmdline = format!("console=ttyS0 {}", params.render());
    let stub = fs::read(STUB).unwrap_or_else(|e| {
        panic!("{STUB}: {e} (apt-get install systemd-boot-efi; cargo xtask deps does)")
    });
    let uki_bytes = uki::assemble(
        &stub,
        &uki::Payload {
            osrel: format!("ID=keel\nVERSION_ID={version}\n").as_bytes(),
            cmdline: cmdline.as_bytes(),
            uname: b"6.1.0",
            linux: b"not a kernel",
            initrd: b"not an initrd",
        },
    )
    .unwrap();
    let d = dir.join(version);
    fs::create_dir_all(&d).unwrap();
    let (root_p, tree_p, uki_p) = (d.join("root"), d.join("verity"), d.join("uki"));
    fs::write(&root_p, &root).unwrap();
    fs::write(&tree_p, &tree.hash_image).unwrap();
    fs::write(&uki_p, &uki_bytes).unwrap();
    let out = d.join(format!("keel-{version}.bundle"));
    bundle::write(
        &bundle::BundleInputs {
            variant: "keel",
            version,
            verity: &tree.params,
            root: &root_p,
            verity_tree: &tree_p,
            uki: &uki_p,
            created: 1,
            min_version: None,
            allow_downgrade: downgrade,
        },
        key,
        &out,
    )
    .unwrap();
    Version {
        cmdline,
        bundle: out,
        root,
        tree: tree.hash_image,
    }
}

struct Host {
    paths: Paths,
    v1: Version,
}

/// A host running v1 from slot a, slot b empty, trusting `key`.
fn host(dir: &Path, key: &SigningKey) -> Host {
    let v1 = make(dir, "0.1.0", key, 3);
    let paths = Paths {
        partitions: dir.join("by-partlabel"),
        entries: dir.join("esp/EFI/Linux"),
        state: dir.join("state"),
        keys: dir.join("keys"),
        machine_id: dir.join("machine-id"),
        boot_id: dir.join("boot_id"),
    };
    fs::write(&paths.boot_id, "boot-1\n").unwrap();
    fs::create_dir_all(&paths.partitions).unwrap();
    fs::create_dir_all(&paths.entries).unwrap();
    fs::create_dir_all(&paths.keys).unwrap();
    let part = |label: &str, size: usize, data: &[u8]| {
        let mut b = vec![0u8; size];
        b[..data.len()].copy_from_slice(data);
        fs::write(paths.partitions.join(label), b).unwrap();
    };
    part("keel-root-a", 8 * MIB, &v1.root);
    part("keel-verity-a", MIB, &v1.tree);
    part("keel-root-b", 8 * MIB, &[]);
    part("keel-verity-b", MIB, &[]);
    let (_, _, uki) = (0, 0, dir.join("0.1.0/uki"));
    fs::copy(uki, paths.entries.join("keel-0.1.0.efi")).unwrap();
    fs::write(
        paths.keys.join("release.pub"),
        keel_formats::keys::render_public(&key.verifying_key()),
    )
    .unwrap();
    Host { paths, v1 }
}

fn agent(h: &Host) -> Agent {
    Agent::new(
        &h.paths,
        Policy::default(),
        &h.v1.cmdline,
        "ID=keel\nIMAGE_ID=keel\nVERSION_ID=0.1.0\n",
    )
    .unwrap()
}

/// The boot entries on the ESP, sorted.
fn entries(h: &Host) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(&h.paths.entries)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every file of the disk, for before/after comparisons.
fn snapshot(h: &Host) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for d in [&h.paths.partitions, &h.paths.entries] {
        let mut names: Vec<_> = fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        names.sort();
        for p in names {
            out.push((p.display().to_string(), fs::read(&p).unwrap()));
        }
    }
    out
}

#[test]
fn installs_into_the_other_slot_and_makes_it_bootable_last() {
    let t = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[5; 32]);
    let h = host(t.path(), &key);
    let a = agent(&h);
    assert_eq!(a.slot.to_string(), "a");
    let v2 = make(t.path(), "0.2.0", &key, 7);
    let done = a.apply(fs::File::open(&v2.bundle).unwrap()).unwrap();
    assert!(done.changed, "{done}");
    assert!(
        done.message
            .starts_with("installed 0.2.0 into slot b as keel-0.2.0+3.efi"),
        "{done}"
    );
    let root_b = fs::read(h.paths.partitions.join("keel-root-b")).unwrap();
    assert_eq!(&root_b[..v2.root.len()], &v2.root[..]);
    let tree_b = fs::read(h.paths.partitions.join("keel-verity-b")).unwrap();
    assert_eq!(&tree_b[..v2.tree.len()], &v2.tree[..]);
    let root_a = fs::read(h.paths.partitions.join("keel-root-a")).unwrap();
    assert_eq!(
        &root_a[..h.v1.root.len()],
        &h.v1.root[..],
        "slot a untouched"
    );
    assert_eq!(entries(&h), ["keel-0.1.0.efi", "keel-0.2.0+3.efi"]);
    let st = a.status.lock().unwrap().clone();
    assert_eq!(st.state, keel_api::update::UpdateState::Installed);
    let copies = fs::read_dir(h.paths.state.join("download"))
        .unwrap()
        .count();
    assert_eq!(copies, 0, "the verified copy is gone with its last fd");
}

#[test]
fn refusals_name_their_reason_and_change_nothing() {
    let t = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[5; 32]);
    let h = host(t.path(), &key);
    let a = agent(&h);
    let before = snapshot(&h);
    let v2 = make(t.path(), "0.2.0", &key, 7);
    let good = fs::read(&v2.bundle).unwrap();
    let try_bytes = |name: &str, bytes: &[u8]| -> UpdateError {
        let p = t.path().join(name);
        fs::write(&p, bytes).unwrap();
        a.apply(fs::File::open(&p).unwrap()).unwrap_err()
    };
    let (env, m) = bundle::read_head(&v2.bundle).unwrap();
    let start = keel_formats::bundle::payload_start(env.to_bytes().len() as u64);

    let mut flipped = good.clone();
    let at = start + m.payloads[1].offset + 100;
    flipped[at as usize] ^= 1;
    let e = try_bytes("flipped", &flipped);
    assert_eq!(
        e.to_string(),
        format!(
            "hash mismatch in payload verity at byte offset {} of the bundle",
            start + m.payloads[1].offset
        )
    );

    let e = try_bytes("truncated", &good[..good.len() - 10]);
    assert!(
        e.to_string().starts_with("truncated bundle: payload uki"),
        "{e}"
    );

    let stranger = SigningKey::from_bytes(&[6; 32]);
    let v2s = make(&t.path().join("s"), "0.2.0", &stranger, 7);
    let e = a.apply(fs::File::open(&v2s.bundle).unwrap()).unwrap_err();
    assert!(e.to_string().contains("unknown key"), "{e}");

    let mut tampered = good.clone();
    let body_at = keel_formats::signed::HEADER_LEN + 20;
    tampered[body_at] ^= 1;
    let e = try_bytes("tampered", &tampered);
    assert!(e.to_string().starts_with("bad signature"), "{e}");

    let old = make(&t.path().join("o"), "0.0.9", &key, 9);
    let e = a.apply(fs::File::open(&old.bundle).unwrap()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "downgrade refused: the bundle is 0.0.9, this host runs 0.1.0"
    );

    // A slot too small for the root: refused before anything is written.
    let small = h.paths.partitions.join("keel-root-b");
    fs::write(&small, vec![0u8; MIB]).unwrap();
    let before_small = snapshot(&h);
    let e = a.apply(fs::File::open(&v2.bundle).unwrap()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("too large for the slot: payload root"),
        "{e}"
    );
    assert_eq!(snapshot(&h), before_small);
    fs::write(&small, vec![0u8; 8 * MIB]).unwrap();

    assert_eq!(snapshot(&h), before, "a refusal changed the disk");
}

#[test]
fn an_allowed_downgrade_boots_first_and_the_running_entry_last() {
    let t = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[5; 32]);
    let h = host(t.path(), &key);
    let a = agent(&h);
    let old = make_with(&t.path().join("o"), "0.0.9", &key, 9, true);
    let msg = a
        .apply(fs::File::open(&old.bundle).unwrap())
        .unwrap()
        .message;
    assert!(msg.starts_with("installed 0.0.9 into slot b"), "{msg}");
    assert_eq!(entries(&h), ["keel-0.0.9+3.efi", "keel-0.1.0+0-1.efi"]);
}

#[test]
fn rollback_needs_an_intact_other_slot() {
    let t = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[5; 32]);
    let h = host(t.path(), &key);
    let a = agent(&h);
    let e = a.rollback().unwrap_err();
    assert!(
        e.to_string().contains("slot b has no intact installation"),
        "{e}"
    );
    let v2 = make(t.path(), "0.2.0", &key, 7);
    a.apply(fs::File::open(&v2.bundle).unwrap()).unwrap();
    let done = a.rollback().unwrap();
    assert!(
        done.changed && done.message.starts_with("slot b (0.2.0) boots next"),
        "{done}"
    );
    assert_eq!(entries(&h), ["keel-0.1.0+0-1.efi", "keel-0.2.0.efi"]);
}

#[test]
fn the_rollout_place_comes_from_the_config_then_an_old_seed_then_the_machine_id() {
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path(), &SigningKey::from_bytes(&[5; 32]));
    let id = [7u8; 16];
    fs::write(
        &h.paths.machine_id,
        keel_formats::host::machine_id_text(&id),
    )
    .unwrap();
    let from_id = keel_formats::rollout::place(keel_formats::host::rollout_seed(&id));
    assert_eq!(agent(&h).place, from_id);
    // Not written down: a new machine id (a wiped /var) moves the host.
    fs::write(
        &h.paths.machine_id,
        keel_formats::host::machine_id_text(&[8u8; 16]),
    )
    .unwrap();
    assert_ne!(agent(&h).place, from_id);
    // Without a machine id the host draws a seed and keeps it, and keeps
    // it once a machine id appears.
    fs::remove_file(&h.paths.machine_id).unwrap();
    let drawn = agent(&h).place;
    fs::write(
        &h.paths.machine_id,
        keel_formats::host::machine_id_text(&id),
    )
    .unwrap();
    assert_eq!(agent(&h).place, drawn);
    let config = Policy {
        rollout_seed: Some(10_042),
        ..Policy::default()
    };
    let a = Agent::new(
        &h.paths,
        config,
        &h.v1.cmdline,
        "ID=keel\nIMAGE_ID=keel\nVERSION_ID=0.1.0\n",
    )
    .unwrap();
    assert_eq!(a.place, 42);
}

#[test]
fn an_update_waiting_for_its_reboot_is_not_taken_for_a_rollback() {
    let t = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[5; 32]);
    let h = host(t.path(), &key);
    let v2 = make(t.path(), "0.2.0", &key, 7);
    let a = agent(&h);
    assert!(!a.awaiting_reboot());
    a.apply(fs::File::open(&v2.bundle).unwrap()).unwrap();
    // Asked for its status (or restarted) before the reboot: still owed.
    a.settle().unwrap();
    let again = agent(&h);
    again.settle().unwrap();
    assert!(again.awaiting_reboot());
    let last = again.status.lock().unwrap().last_result.clone();
    assert!(
        last.as_deref()
            .is_some_and(|l| l.starts_with("installed 0.2.0")),
        "{last:?}"
    );
    // Another boot, still on 0.1.0: the update did not come up.
    fs::write(&h.paths.boot_id, "boot-2\n").unwrap();
    let after = agent(&h);
    assert!(!after.awaiting_reboot());
    after.settle().unwrap();
    let last = after.status.lock().unwrap().last_result.clone().unwrap();
    assert!(last.contains("update to 0.2.0 failed"), "{last}");
}

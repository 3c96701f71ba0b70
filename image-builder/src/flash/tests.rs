use super::*;
use keel_formats::disk::{Role, Slot};
use std::os::unix::fs::FileExt;

use crate::disk::{Content, PartSpec};

fn target(kind: Kind, size: u64) -> Target {
    Target {
        kind,
        size,
        in_use: Vec::new(),
        has_table: false,
    }
}

#[test]
fn refuses_in_use_partitioned_and_small_targets() {
    let p = Path::new("/dev/sdz");
    let mut t = target(Kind::Block, 100 * MIB);
    assert!(check(p, &t, 50 * MIB, false).is_ok());
    let e = check(p, &t, 200 * MIB, true).unwrap_err();
    assert!(e.to_string().contains("the image needs at least"), "{e}");
    t.has_table = true;
    let e = check(p, &t, 50 * MIB, false).unwrap_err();
    assert!(e.to_string().contains("--force"), "{e}");
    assert!(check(p, &t, 50 * MIB, true).is_ok());
    t.in_use = vec![("/dev/sdz1".into(), "mounted at /mnt".into())];
    let e = check(p, &t, 50 * MIB, true).unwrap_err();
    assert!(
        e.to_string()
            .contains("/dev/sdz1 is in use (mounted at /mnt)"),
        "{e}"
    );
    // A file grows to fit.
    assert!(check(p, &target(Kind::File, 0), 50 * MIB, false).is_ok());
}

#[test]
fn finds_tables_and_mounts() {
    let mut b = vec![0u8; 1024];
    assert!(!target::has_table(&b));
    b[510] = 0x55;
    b[511] = 0xaa;
    assert!(target::has_table(&b));
    let mut g = vec![0u8; 1024];
    g[512..520].copy_from_slice(b"EFI PART");
    assert!(target::has_table(&g));
    let info = "22 1 254:1 / / rw - ext4 /dev/vda1 rw\n\
                90 22 7:1 / /mnt/x rw,relatime - ext4 /dev/loop0p1 rw\n";
    let devs = [
        ("7:0".into(), "loop0".into()),
        ("7:1".into(), "loop0p1".into()),
    ];
    assert_eq!(
        target::mounted(info, &devs),
        [("/dev/loop0p1".to_string(), "mounted at /mnt/x".to_string())]
    );
}

#[test]
fn a_bad_host_config_names_its_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("host.toml");
    std::fs::write(&p, "hostname = \"a\"\n[network]\nmtu = = 3\n").unwrap();
    let e = read_config(&p).unwrap_err().to_string();
    assert!(e.contains("host.toml:3:7: "), "{e}");
    // What the keys mean is checked too, every problem at once.
    std::fs::write(&p, "hostname = \"-a\"\n[update]\ncheck_interval = \"1s\"\n").unwrap();
    let e = read_config(&p).unwrap_err().to_string();
    assert!(
        e.contains("nothing was written")
            && e.contains("host.toml:1:1: `hostname`")
            && e.contains("host.toml:3:1: `update.check_interval`"),
        "{e}"
    );
}

/// A small disk of the keel layout: an ESP with one file, recognisable
/// bytes in root a, an empty slot b, and a data partition.
fn image(dir: &Path) -> PathBuf {
    let esp = esp::build(
        8 * MIB,
        1,
        &[("EFI/Linux/keel-1.0.0.efi".into(), b"uki".to_vec())],
    )
    .unwrap();
    let root: Vec<u8> = (0..3 * MIB).map(|i| (i % 251) as u8).collect();
    let data = vec![7u8; 2 * MIB as usize];
    let path = dir.join("disk.img");
    let spec = |role, size_mib, content| PartSpec {
        role,
        size_mib,
        content,
    };
    disk::write(
        &path,
        "test 1.0.0",
        &[
            spec(Role::Esp, 8, Content::Bytes(&esp)),
            spec(Role::Root(Slot::A), 4, Content::Bytes(&root)),
            spec(Role::Verity(Slot::A), 1, Content::Empty),
            spec(Role::Root(Slot::B), 4, Content::Empty),
            spec(Role::Verity(Slot::B), 1, Content::Empty),
            spec(Role::Data, 3, Content::Bytes(&data)),
        ],
    )
    .unwrap();
    path
}

#[test]
fn flashes_a_file_growing_data_and_adding_the_host_config() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let layout = disk::read_layout(&img).unwrap();
    let config = dir.path().join("host.toml");
    std::fs::write(&config, "hostname = \"edge-1\"\n").unwrap();

    // Someone made a 64 MiB file for the disk: /var gets the rest of it.
    let out = dir.path().join("target.img");
    File::create(&out).unwrap().set_len(64 * MIB).unwrap();
    let opts = Options {
        image: &img,
        target: &out,
        config: Some(&config),
        force: false,
    };
    let mut last = (0, 0);
    let r = flash(&opts, &mut |d, t| last = (d, t)).unwrap();
    assert_eq!(last.0, last.1);
    assert_eq!(r.target_size, 64 * MIB);
    let got = disk::read_layout(&out).unwrap();
    assert_eq!(got.disk_guid, layout.disk_guid);
    assert_eq!(got.parts[..5], layout.parts[..5], "all but data as built");
    let data = &got.parts[5];
    assert_eq!(data.label, DATA_LABEL);
    assert_eq!(data.offset + data.size, 63 * MIB, "to 1 MiB before the end");
    assert_eq!(r.data_size, data.size);

    // Every partition's bytes as in the image; the ESP has the config too.
    let (a, b) = (File::open(&img).unwrap(), File::open(&out).unwrap());
    for p in &layout.parts[1..] {
        let (mut x, mut y) = (vec![0u8; p.size as usize], vec![0u8; p.size as usize]);
        a.read_exact_at(&mut x, p.offset).unwrap();
        b.read_exact_at(&mut y, p.offset).unwrap();
        assert!(x == y, "partition {} differs", p.label);
    }
    let esp = &got.parts[0];
    let mut e = vec![0u8; esp.size as usize];
    b.read_exact_at(&mut e, esp.offset).unwrap();
    assert_eq!(
        esp::read_file(Cursor::new(e.clone()), HOST_CONFIG_ON_ESP).unwrap(),
        b"hostname = \"edge-1\"\n"
    );
    assert_eq!(
        esp::read_file(Cursor::new(e), "EFI/Linux/keel-1.0.0.efi").unwrap(),
        b"uki"
    );

    // Now it holds partitions: only --force overwrites it.
    let e = flash(&opts, &mut |_, _| {}).unwrap_err();
    assert!(matches!(e, FlashError::HasPartitions { .. }), "{e}");
    let forced = Options {
        force: true,
        config: None,
        ..opts
    };
    flash(&forced, &mut |_, _| {}).unwrap();
}

#[test]
fn a_new_file_gets_the_image_size_and_a_foreign_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let out = dir.path().join("new.img");
    let r = flash(
        &Options {
            image: &img,
            target: &out,
            config: None,
            force: false,
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(r.target_size, std::fs::metadata(&img).unwrap().len());
    assert_eq!(
        disk::read_layout(&out).unwrap(),
        disk::read_layout(&img).unwrap()
    );

    let other = dir.path().join("other.img");
    disk::write(
        &other,
        "x",
        &[PartSpec {
            role: Role::Root(Slot::A),
            size_mib: 1,
            content: Content::Empty,
        }],
    )
    .unwrap();
    let e = flash(
        &Options {
            image: &other,
            target: &dir.path().join("o2.img"),
            config: None,
            force: false,
        },
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("not a keel disk image"), "{e}");
}

//! keel-vmm end to end: a keel image carries keel-vmm and a test guest (the
//! keel kernel with a small init in an initramfs) in a oneshot system
//! container with /dev/kvm. QEMU runs that image with `-cpu max` under
//! TCG, so the keel kernel's KVM works (nested SVM); keel-vmm boots the
//! guest, whose init writes the boot-timer and reboots, which ends the VMM
//! with status 0.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::fs;

use keel_tests::fixtures::{put_config, Mounted};
use keel_tests::vmm_guest::{guest_initramfs, image_with_vmm_service};
use keel_tests::{copy_disk, disk_image, Guest, BOOT_TIMEOUT};

#[test]
fn keel_vmm_boots_a_guest_inside_a_keel_host() {
    let dir = tempfile::tempdir().unwrap();
    let disk = image_with_vmm_service(
        dir.path(),
        "vmmtest",
        r#"description = "keel-vmm test guest"
kind = "oneshot"
required = false
command = ["/usr/bin/keel-vmm", "--kernel", "/guest/vmlinuz", "--initramfs", "/guest/initramfs.cpio", "--memory", "64", "--vcpus", "2"]
devices = ["/dev/kvm"]
"#,
    );
    let mut g = Guest::boot(&disk);
    g.expect("keel: ready ", BOOT_TIMEOUT);
    g.expect("vmmtest: exited", BOOT_TIMEOUT);
    g.prompt();
    let log = g.shell("keelctl logs vmmtest");
    for want in [
        "Linux version 6.1",
        // Both vCPUs, found through keel-vmm's MP table.
        "smp: Brought up 1 node, 2 CPUs",
        "keel-vmm-guest: init running",
        "keel-vmm-guest: boot timer written",
        "keel-vmm: guest init reached",
        "reboot: Restarting system",
        // The VMM ends cleanly on the guest's reboot.
        "[keel] exited (Code(0))",
    ] {
        assert!(log.contains(want), "{want:?} not in the VMM's log:\n{log}");
    }
    // For the record (nested TCG: no timing is asserted).
    if let Some(line) = log
        .lines()
        .find(|l| l.contains("keel-vmm: guest init reached"))
    {
        eprintln!("{line}");
    }
    let st = g.service("vmmtest");
    assert_eq!(st["state"], "done", "{st}");
    g.send("keelctl poweroff\n");
    g.wait_exit(keel_tests::COMMAND_TIMEOUT);
}

/// The host config's `vms` section: the default image runs the VM as the
/// service vm-guest from files on /var, as keel-vmm's user, with a root
/// disk and a tap the host config addresses. The guest mounts its disk
/// (ext4), reads the file the test put there, writes its own and
/// unmounts, and gets an answer from the host over the tap. A second VM,
/// `bridged`, is on the default container network: told its address on
/// its command line, it fetches a page from this machine through the
/// bridge and the host's masquerade.
#[test]
fn a_vm_of_the_host_config_runs_as_a_service() {
    let dir = tempfile::tempdir().unwrap();
    let disk_path = dir.path().join("disk.img");
    copy_disk(&disk_image(), &disk_path);
    let token = format!("keel-vmm test disk {}", std::process::id());
    {
        let var = Mounted::partition(&disk_path, keel_formats::disk::DATA_LABEL);
        let vms = var.at.path().join("lib/vms");
        fs::create_dir_all(vms.join("disks")).unwrap();
        fs::copy(disk_image().with_file_name("vmlinuz"), vms.join("vmlinuz")).unwrap();
        fs::write(vms.join("initramfs.cpio"), guest_initramfs(dir.path())).unwrap();
        // The guest's root: an ext4 file system holding the test's line.
        let files = dir.path().join("guest-root");
        fs::create_dir_all(&files).unwrap();
        fs::write(files.join("hello.txt"), format!("{token}\n")).unwrap();
        let st = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&files)
            .arg(vms.join("disks/guest.img"))
            .arg("8M")
            .status()
            .expect("mkfs.ext4 (e2fsprogs)");
        assert!(st.success());
    }
    let site = dir.path().join("site");
    fs::create_dir(&site).unwrap();
    fs::write(site.join("vm.txt"), "a page for the VM\n").unwrap();
    let server = keel_tests::http::serve(&site);
    put_config(
        &disk_path,
        "[network.interfaces.eth0]\naddresses = [\"10.0.2.15/24\"]\ngateway = \"10.0.2.2\"\n\
         [network.interfaces.vm-guest]\naddresses = [\"10.99.0.1/24\"]\n\
         [vms.bridged]\nkernel = \"/var/lib/vms/vmlinuz\"\ninitramfs = \"/var/lib/vms/initramfs.cpio\"\n\
         network = \"tap\"\nnetworks = [\"default\"]\nmemory = \"64M\"\nrestart = \"never\"\n\
         [vms.guest]\nkernel = \"/var/lib/vms/vmlinuz\"\ninitramfs = \"/var/lib/vms/initramfs.cpio\"\n\
         rootfs = \"/var/lib/vms/disks/guest.img\"\nnetwork = \"tap\"\n\
         memory = \"64M\"\nrestart = \"never\"\n",
    );
    let mut g = Guest::boot_with(&disk_path, false, &[(80, server)]);
    g.expect("keel: ready ", BOOT_TIMEOUT);
    g.prompt();
    // While the guest boots (tens of seconds under nested emulation):
    // the monitor is not root.
    let uid = g.poll_shell(
        "for p in /proc/[0-9]*; do grep -qx keel-vmm $p/comm 2>/dev/null && grep -E '^(Uid|Gid)' $p/status; done",
        60,
        |l| l.contains("Uid:"),
    );
    assert!(
        uid.contains("Uid:\t36\t36\t36\t36") && uid.contains("Gid:\t36\t36\t36\t36"),
        "keel-vmm's ids:\n{uid}"
    );
    let log = g.poll_shell("keelctl logs vm-guest", 120, |l| {
        l.contains("[keel] exited")
    });
    for want in [
        "keel-vmm-guest: init running",
        "keel-vmm: guest init reached",
        &format!("keel-vmm-guest: disk says: {token}"),
        "keel-vmm-guest: disk written and flushed",
        "keel-vmm-guest: net: the host answered (port unreachable)",
        "[keel] exited (Code(0))",
    ] {
        assert!(log.contains(want), "{want:?} not in vm-guest's log:\n{log}");
    }
    let st = g.service("vm-guest");
    assert_eq!(st["capabilities"], serde_json::json!([]), "{st}");
    let log = g.poll_shell("keelctl logs vm-bridged", 120, |l| {
        l.contains("[keel] exited")
    });
    for want in [
        "keel-vmm-guest: net: eth0 has 10.88.255.254, gateway 10.88.0.1",
        "keel-vmm-guest: net: fetched: a page for the VM",
    ] {
        assert!(
            log.contains(want),
            "{want:?} not in vm-bridged's log:\n{log}\n{}",
            g.shell("ip link; ip addr show keel0")
        );
    }
    g.send("keelctl poweroff\n");
    g.wait_exit(keel_tests::COMMAND_TIMEOUT);

    let var = Mounted::partition(&disk_path, keel_formats::disk::DATA_LABEL);
    let root = var.at.path().join("lib/vms/disks/guest.img");
    let cat = |file: &str| {
        let out = std::process::Command::new("debugfs")
            .args(["-R", &format!("cat /{file}")])
            .arg(&root)
            .output()
            .expect("debugfs (e2fsprogs)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(cat("written.txt"), "written by the guest\n");
    assert_eq!(
        cat("hello.txt"),
        format!("{token}\n"),
        "the test's file kept"
    );
    let fsck = std::process::Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "the guest left a clean file system: {}",
        keel_tests::output_text(&fsck)
    );
}

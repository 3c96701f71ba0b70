//! The host config's `vms`: each VM runs as the service `vm-<name>`, a
//! copy of the image's `vmm` template (keel-vmm), as keel-vmm's user
//! (never root) with only /dev/kvm, /dev/net/tun when it has a tap, and
//! the folders of its files. What the host prepares for that (device
//! permissions, persistent taps owned by that user, disks given to it)
//! goes through [`VmHost`], so the logic is tested without root.

use std::path::Path;

use keel_formats::container::{BindMount, ContainerDef, Share};
use keel_formats::host::{vm_tap, KVM_GID, VMM_UID};
use keel_formats::hostconfig::types::{Vm, VmNetwork};
use keel_formats::hostconfig::HostConfig;

/// The image's microVM runner: a template for one service per VM.
pub const VMM_TEMPLATE: &str = "vmm";
pub const KVM: &str = "/dev/kvm";
pub const TUN: &str = keel_tap::TUN;

/// What the host does for its VMs.
pub trait VmHost {
    /// Give device node `path` to group `gid` with `mode`.
    fn set_device(&mut self, path: &Path, gid: u32, mode: u32) -> Result<(), String>;
    /// Make tap `name` exist, persist, belong to `uid`/`gid`, and be up;
    /// an error names the tap.
    fn ensure_tap(&mut self, name: &str, uid: u32, gid: u32) -> Result<(), String>;
    /// Give the file at `path` (not a symlink's target) to `uid`/`gid`.
    fn own_file(&mut self, path: &Path, uid: u32, gid: u32) -> Result<(), String>;
}

/// Prepare the host for `c`'s VMs: /dev/kvm for keel-vmm's group,
/// /dev/net/tun for anyone (a tap still needs its owner), each VM's tap
/// and root disk for keel-vmm's user. Runs before the network is set up,
/// so `network.interfaces.vm-NAME` can address a tap. Returns what did
/// not take.
pub fn prepare(c: &HostConfig, host: &mut dyn VmHost) -> Vec<String> {
    let mut warnings = Vec::new();
    if c.vms.is_empty() {
        return warnings;
    }
    for (dev, gid, mode) in [(KVM, KVM_GID, 0o660), (TUN, 0, 0o666)] {
        if let Err(e) = host.set_device(Path::new(dev), gid, mode) {
            warnings.push(format!("vms: {dev}: {e}"));
        }
    }
    for (name, vm) in &c.vms {
        if vm.network == VmNetwork::Tap {
            let tap = vm_tap(name);
            if let Err(e) = host.ensure_tap(&tap, VMM_UID, KVM_GID) {
                warnings.push(format!("vms.{name}: {e}"));
            }
        }
        if let Some(disk) = &vm.rootfs {
            if let Err(e) = host.own_file(Path::new(disk), VMM_UID, KVM_GID) {
                warnings.push(format!("vms.{name}: rootfs {disk}: {e}"));
            }
        }
    }
    for w in &warnings {
        crate::log(format!("warning: host config: {w}"));
    }
    warnings
}

/// Turn the `vmm` template in `defs` into one `vm-<name>` service per VM
/// of the config (none: the template does not run). Returns why a VM does
/// not run.
pub fn apply(c: &HostConfig, defs: &mut Vec<(String, ContainerDef)>) -> Vec<String> {
    let Some(at) = defs.iter().position(|(n, _)| n == VMM_TEMPLATE) else {
        return if c.vms.is_empty() {
            Vec::new()
        } else {
            vec![format!(
                "vms: the image has no {VMM_TEMPLATE} service (keel-vmm)"
            )]
        };
    };
    let (_, template) = defs.remove(at);
    let mut warnings = Vec::new();
    let addresses = keel_formats::hostconfig::networks::vm_addresses(c);
    for (name, vm) in &c.vms {
        match service(&template, name, vm, addresses.get(name)) {
            Ok(d) => defs.push((format!("vm-{name}"), d)),
            Err(e) => warnings.push(format!("vms.{name}: {e}; it does not start")),
        }
    }
    warnings
}

/// VM `vm` as a copy of the `vmm` template.
fn service(
    template: &ContainerDef,
    name: &str,
    vm: &Vm,
    address: Option<&keel_formats::hostconfig::networks::VmAddress>,
) -> Result<ContainerDef, String> {
    let mut d = template.clone();
    d.root_of = Some(VMM_TEMPLATE.to_string());
    d.description = format!("microVM booting {}", vm.kernel);
    // Each file's folder under /run/vm/<role>: /run is every container's
    // own tmpfs, so the mount point needs no folder in the template's
    // read-only root. Only the root disk's folder is writable.
    let mut bind = |role: &str, path: &str, readonly: bool| -> Result<String, String> {
        let p = Path::new(path);
        let (Some(dir), Some(file)) = (p.parent(), p.file_name()) else {
            return Err(format!("{path:?} is not a file path"));
        };
        let target = format!("/run/vm/{role}");
        d.mounts.push(BindMount {
            source: dir.to_string_lossy().into_owned(),
            target: target.clone(),
            readonly,
        });
        Ok(format!("{target}/{}", file.to_string_lossy()))
    };
    let mut args = vec!["--kernel".to_string(), bind("kernel", &vm.kernel, true)?];
    if let Some(i) = &vm.initramfs {
        args.extend(["--initramfs".to_string(), bind("initramfs", i, true)?]);
    }
    if let Some(r) = &vm.rootfs {
        args.extend([
            "--disk".to_string(),
            format!("{},root", bind("rootfs", r, false)?),
        ]);
    }
    if let Some(c) = &vm.cmdline {
        args.extend(["--cmdline".to_string(), c.clone()]);
    }
    if let Some(a) = address {
        args.extend(["--append".to_string(), a.kernel_ip(name)]);
    }
    if vm.network == VmNetwork::Tap {
        args.extend(["--tap".to_string(), vm_tap(name)]);
        d.devices.push(TUN.to_string());
        // The tap lives in the host's network namespace.
        d.namespaces.net = Share::Host;
    } else {
        // A VMM without a network needs none of the host's.
        d.namespaces.net = Share::Private;
    }
    let mib = vm.memory.0 >> 20;
    args.extend([
        "--vcpus".to_string(),
        vm.vcpus.to_string(),
        "--memory".to_string(),
        mib.to_string(),
    ]);
    d.command.extend(args);
    d.restart = vm.restart.into();
    Ok(d)
}

/// The real host.
#[derive(Debug, Default)]
pub struct RealVmHost;

impl VmHost for RealVmHost {
    fn set_device(&mut self, path: &Path, gid: u32, mode: u32) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        std::os::unix::fs::chown(path, Some(0), Some(gid)).map_err(|e| e.to_string())?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| e.to_string())
    }

    fn ensure_tap(&mut self, name: &str, uid: u32, gid: u32) -> Result<(), String> {
        let tap = keel_tap::Tap::attach(name).map_err(|e| e.to_string())?;
        tap.persist_for(uid, gid).map_err(|e| e.to_string())?;
        drop(tap);
        // keel_tap refused a name with a NUL.
        let cname = std::ffi::CString::new(name).map_err(|e| format!("tap {name}: {e}"))?;
        // SAFETY: a NUL-terminated name that lives across the call.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if index == 0 {
            return Err(format!(
                "tap {name}: no interface after creating it: {}",
                std::io::Error::last_os_error()
            ));
        }
        let up = crate::net::netlink::Netlink::open()
            .and_then(|mut nl| crate::net::interfaces::Net::link_up(&mut nl, index, None));
        up.map_err(|e| format!("tap {name}: {e}"))
    }

    fn own_file(&mut self, path: &Path, uid: u32, gid: u32) -> Result<(), String> {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Fake {
        calls: Vec<String>,
        fail_taps: bool,
    }

    impl VmHost for Fake {
        fn set_device(&mut self, path: &Path, gid: u32, mode: u32) -> Result<(), String> {
            self.calls
                .push(format!("dev {} {gid} {mode:o}", path.display()));
            Ok(())
        }
        fn ensure_tap(&mut self, name: &str, uid: u32, gid: u32) -> Result<(), String> {
            self.calls.push(format!("tap {name} {uid}:{gid}"));
            if self.fail_taps {
                Err(format!("tap {name}: Operation not permitted"))
            } else {
                Ok(())
            }
        }
        fn own_file(&mut self, path: &Path, uid: u32, gid: u32) -> Result<(), String> {
            self.calls
                .push(format!("own {} {uid}:{gid}", path.display()));
            Ok(())
        }
    }

    fn config(text: &str) -> HostConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn each_vm_becomes_a_keel_vmm_service() {
        let template = ContainerDef::parse(
            "command = [\"/usr/bin/keel-vmm\"]\ndevices = [\"/dev/kvm\"]\n[rootfs]\n",
        )
        .unwrap();
        let c = config(
            "[vms.web]\nkernel = \"/var/lib/vms/vmlinuz\"\ninitramfs = \"/var/lib/vms/init/initrd.cpio\"\n\
             cmdline = \"console=ttyS0\"\nvcpus = 2\nmemory = \"256M\"\nrestart = \"never\"\n\
             [vms.db]\nkernel = \"/var/lib/vms/vmlinuz\"\nrootfs = \"/var/lib/vms/db/root.ext4\"\nnetwork = \"tap\"\n",
        );
        let mut defs = vec![("vmm".to_string(), template)];
        let warnings = apply(&c, &mut defs);
        assert!(warnings.is_empty(), "{warnings:?}");
        let (name, d) = &defs[0];
        assert_eq!(name, "vm-db");
        assert_eq!(
            d.command[1..],
            [
                "--kernel",
                "/run/vm/kernel/vmlinuz",
                "--disk",
                "/run/vm/rootfs/root.ext4,root",
                "--tap",
                "vm-db",
                "--vcpus",
                "1",
                "--memory",
                "128"
            ]
        );
        assert_eq!(d.devices, ["/dev/kvm", "/dev/net/tun"]);
        assert_eq!(d.namespaces.net, Share::Host, "the tap is the host's");
        assert!(d
            .mounts
            .iter()
            .any(|m| m.source == "/var/lib/vms/db" && m.target == "/run/vm/rootfs" && !m.readonly));
        let (name, d) = &defs[1];
        assert_eq!(name, "vm-web");
        assert_eq!(d.namespaces.net, Share::Private, "no network, none shared");
        assert_eq!(
            d.command,
            [
                "/usr/bin/keel-vmm",
                "--kernel",
                "/run/vm/kernel/vmlinuz",
                "--initramfs",
                "/run/vm/initramfs/initrd.cpio",
                "--cmdline",
                "console=ttyS0",
                "--vcpus",
                "2",
                "--memory",
                "256"
            ]
        );
        let mounts: Vec<(&str, &str, bool)> = d
            .mounts
            .iter()
            .map(|m| (m.source.as_str(), m.target.as_str(), m.readonly))
            .collect();
        assert_eq!(
            mounts,
            [
                ("/var/lib/vms", "/run/vm/kernel", true),
                ("/var/lib/vms/init", "/run/vm/initramfs", true)
            ]
        );
        assert_eq!(d.restart, keel_formats::container::RestartPolicy::Never);
        assert_eq!(d.root_of.as_deref(), Some("vmm"));
        let mut defs = vec![];
        assert!(apply(&c, &mut defs)[0].contains("no vmm service"));
    }

    #[test]
    fn the_host_gets_devices_taps_and_disks_ready_for_keel_vmm() {
        let mut host = Fake::default();
        assert!(prepare(&HostConfig::default(), &mut host).is_empty());
        assert!(host.calls.is_empty(), "no VMs, nothing touched");
        let c = config(
            "[vms.a]\nkernel = \"/var/k\"\nrootfs = \"/var/a.ext4\"\nnetwork = \"tap\"\n\
             [vms.b]\nkernel = \"/var/k\"\n",
        );
        assert!(prepare(&c, &mut host).is_empty());
        assert_eq!(
            host.calls,
            [
                "dev /dev/kvm 36 660",
                "dev /dev/net/tun 0 666",
                "tap vm-a 36:36",
                "own /var/a.ext4 36:36"
            ]
        );
        let mut failing = Fake {
            fail_taps: true,
            ..Fake::default()
        };
        assert_eq!(
            prepare(&c, &mut failing),
            ["vms.a: tap vm-a: Operation not permitted"]
        );
    }
}

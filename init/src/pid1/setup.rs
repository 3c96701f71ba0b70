//! PID 1's first steps: the runtime filesystems, cgroup v2 for the
//! services, and the image's service definitions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;

use nix::mount::MsFlags;
use nix::sys::signal::{SigSet, Signal};

use keel_formats::bootentry::ESP_MOUNT;
use keel_formats::API_SOCKET;

use super::host::Esp;

use keel_formats::container::{self, ContainerDef};
use keel_formats::{API_DIR, CONTAINERS_DIR};

use super::{warn, CGROUP_ROOT, LOG_DIR, SERVICES_CGROUP, USED_CONTROLLERS};
use crate::{log, sys};

pub(super) fn mount_runtime() {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    warn(
        "/run",
        sys::mount(
            Some("tmpfs"),
            Path::new("/run"),
            Some("tmpfs"),
            nosuid,
            Some("mode=0755,size=20%"),
        ),
    );
    warn(
        "/tmp",
        sys::mount(
            Some("tmpfs"),
            Path::new("/tmp"),
            Some("tmpfs"),
            nosuid,
            Some("mode=1777"),
        ),
    );
    warn(
        "/sys/fs/cgroup",
        sys::mount(
            Some("cgroup2"),
            Path::new(CGROUP_ROOT),
            Some("cgroup2"),
            nosuid | MsFlags::MS_NOEXEC,
            Some("nsdelegate"),
        ),
    );
    for d in ["/dev/pts", "/dev/shm"] {
        warn(d, sys::mkdir_p(Path::new(d), 0o755));
    }
    warn(
        "/dev/pts",
        sys::mount(
            Some("devpts"),
            Path::new("/dev/pts"),
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("mode=0620,ptmxmode=0666"),
        ),
    );
    warn(
        "/dev/shm",
        sys::mount(
            Some("tmpfs"),
            Path::new("/dev/shm"),
            Some("tmpfs"),
            nosuid,
            Some("mode=1777"),
        ),
    );
    for (d, mode) in [(API_DIR, 0o750), (LOG_DIR, 0o755), ("/var/lib/keel", 0o755)] {
        warn(d, sys::mkdir_p(Path::new(d), mode));
    }
    // Root and the admin group reach the API.
    warn(API_DIR, api_group(Path::new(API_DIR)));
    warn(keel_formats::host::SHARED_DIR, shared_dir());
}

/// The host's resolvers where any container's setup can bind them
/// from: [`keel_formats::host::DNS_DIR`] bound onto the shared folder,
/// so that what keel-init and the DHCP client write there (in place) is
/// what containers read.
fn shared_dir() -> Result<(), String> {
    use keel_formats::host::{DNS_DIR, HOSTS_DIR, SHARED_DNS_DIR};
    for d in [DNS_DIR, SHARED_DNS_DIR, HOSTS_DIR] {
        sys::mkdir_p(Path::new(d), 0o755).map_err(|e| e.to_string())?;
    }
    sys::mount(
        Some(DNS_DIR),
        Path::new(SHARED_DNS_DIR),
        None,
        nix::mount::MsFlags::MS_BIND,
        None,
    )
    .map_err(|e| e.to_string())
}

/// Owned by root and the admin group ([`keel_formats::ADMIN_GID`]).
fn api_group(path: &Path) -> Result<(), String> {
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(0)),
        Some(nix::unistd::Gid::from_raw(keel_formats::ADMIN_GID)),
    )
    .map_err(|e| format!("chown {}: {e}", path.display()))
}

/// Give every controller to the services' subtree, so each service's
/// cgroup can be limited.
pub(super) fn setup_cgroups() -> Result<(), String> {
    let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"));
    let controllers = read(&format!("{CGROUP_ROOT}/cgroup.controllers"))?;
    // Only the controllers service limits use: enabling one costs boot time.
    let enable: String = controllers
        .split_whitespace()
        .filter(|c| USED_CONTROLLERS.contains(c))
        .map(|c| format!("+{c} "))
        .collect();
    let write = |p: String| std::fs::write(&p, enable.trim()).map_err(|e| format!("{p}: {e}"));
    // keel-init leaves the top cgroup for a leaf of its own: a cgroup that
    // hands controllers to its children may hold no processes itself
    // (the top of a cgroup namespace is not exempt, only the real root).
    let own = format!("{CGROUP_ROOT}/keel-init");
    sys::mkdir_p(Path::new(&own), 0o755).map_err(|e| e.to_string())?;
    std::fs::write(format!("{own}/cgroup.procs"), "0").map_err(|e| format!("{own}: {e}"))?;
    write(format!("{CGROUP_ROOT}/cgroup.subtree_control"))?;
    sys::mkdir_p(Path::new(SERVICES_CGROUP), 0o755).map_err(|e| e.to_string())?;
    write(format!("{SERVICES_CGROUP}/cgroup.subtree_control"))
}

/// The image's system containers in start order, with the confinement
/// (seccomp filter, compiled by `keel build`) of each that has a valid one.
pub(super) fn definitions() -> (
    Vec<(String, ContainerDef)>,
    BTreeMap<String, crate::launch::confine::Confinement>,
) {
    let mut defs = load_definitions(Path::new(CONTAINERS_DIR));
    // keel build refuses a bad graph, so this is for images made otherwise:
    // the services caught in it never start, and the health gate says so.
    match keel_formats::lifecycle::start_order(&defs) {
        Ok(order) => defs.sort_by_key(|(n, _)| order.iter().position(|o| o == n)),
        Err(e) => log(format!("error: {e}")),
    }
    // A definition whose confinement fails is left to its first start,
    // which reports why.
    let confinements = defs
        .iter()
        .filter_map(|(n, d)| {
            let precompiled = std::fs::read(format!("{CONTAINERS_DIR}/{n}.seccomp")).ok();
            let c = crate::launch::confine::Confinement::from_def_with(d, precompiled.as_deref());
            Some((n.clone(), c.ok()?))
        })
        .collect();
    (defs, confinements)
}

/// The system containers in the image, in name order. A definition that
/// does not parse is reported and left out; the rest still start.
pub(super) fn load_definitions(dir: &Path) -> Vec<(String, ContainerDef)> {
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect(),
        Err(e) => {
            log(format!("error: {}: {e}", dir.display()));
            return Vec::new();
        }
    };
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let name = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let def = std::fs::read_to_string(&p)
            .map_err(|e| e.to_string())
            .and_then(|t| ContainerDef::parse(&t).map_err(|e| e.to_string()))
            .and_then(|d| {
                container::validate(&name, &d)
                    .map(|()| d)
                    .map_err(|e| e.to_string())
            });
        match def {
            Ok(d) => out.push((name, d)),
            Err(e) => log(format!("error: {}: {e}", p.display())),
        }
    }
    out
}

pub(super) fn os_version() -> String {
    std::fs::read_to_string("/usr/lib/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("VERSION_ID=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The signals PID 1 reads from its signalfd.
pub(super) fn signal_mask() -> SigSet {
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGPWR,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        mask.add(s);
    }
    mask
}

/// The API socket, for root and the admin group; none if it cannot be
/// made (the host runs on without its API).
pub(super) fn api_listener() -> Option<UnixListener> {
    let _ = std::fs::remove_file(API_SOCKET);
    UnixListener::bind(API_SOCKET)
        .and_then(|l| {
            std::fs::set_permissions(API_SOCKET, std::fs::Permissions::from_mode(0o660))?;
            // Root keeps the API if this fails; the admin shell loses it.
            warn(API_SOCKET, api_group(Path::new(API_SOCKET)));
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .map_err(|e| log(format!("warning: API socket {API_SOCKET}: {e}")))
        .ok()
}

/// What the host runs on when reading the host config failed outright:
/// no config at all, converged on all the same, so that the host name,
/// the resolvers' file, the update policy and the SSH keys are there.
pub(super) fn no_config() -> crate::config::AtBoot {
    let config = crate::config::HostConfig::default();
    let image = crate::config::Image {
        defs: &[],
        zones: None,
    };
    let converged = crate::config::converge(None, &config, image, &mut crate::config::RealHost);
    crate::config::AtBoot {
        state: crate::config::ConfigState {
            source: crate::config::ConfigSource::Defaults,
            errors: vec!["reading the host config panicked".into()],
            disabled: Vec::new(),
            warnings: converged.warnings.clone(),
            trial_until_ms: None,
        },
        config,
        esp: None,
        converged,
    }
}

/// The ESP as boot left it.
pub(super) fn esp_state(mounted: &Option<Result<(), String>>) -> Esp {
    match mounted {
        None => Esp::None,
        Some(Ok(())) => Esp::Mounted,
        Some(Err(e)) => {
            log(format!(
                "warning: ESP at {ESP_MOUNT}: {e}; trying again when it is needed"
            ));
            Esp::Unmounted
        }
    }
}

/// The running root hash, from the (signed) kernel command line: it names
/// the boot entry the health gate blesses or marks bad.
pub(super) fn root_hash() -> Option<String> {
    let c = std::fs::read_to_string("/proc/cmdline").ok()?;
    let p = keel_formats::cmdline::BootParams::parse(&c).ok()?;
    Some(keel_formats::cmdline::to_hex(&p.verity.root_hash))
}

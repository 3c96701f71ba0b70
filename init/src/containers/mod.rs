//! The person's own containers (`containers.<name>` of the host config):
//! an OCI image layout or `docker save` archive under /var, unpacked once
//! per image ID, then run by keel-init as a service of that name, with a
//! read-only root like every system service.

pub mod idranges;
pub mod pull;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use keel_formats::container::{self, BindMount, ContainerDef, Share};
use keel_formats::host::USERNS_IDS;
use keel_formats::hostconfig::types::{ContainerNetwork, UserContainer};
use keel_formats::hostconfig::values::Volume;
use keel_formats::limits::{IdMap, UserNamespace, Writable, WritableKind};
use keel_oci::{InRoot, Owners, RunConfig};
use serde::{Deserialize, Serialize};

/// Unpacked image roots, by image ID: a cache, rebuilt from the images.
pub const ROOTS_DIR: &str = "/var/cache/keel/roots";

/// The capabilities Docker gives a container: what images are made for.
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// What a read-only root gets as scratch space, as podman's --read-only
/// gives it.
const SCRATCH: [&str; 3] = ["/tmp", "/run", "/var/tmp"];

/// A user container ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub def: ContainerDef,
}

/// The definition keel-init runs for container `name` of the host config,
/// whose image has `config` and is unpacked at `root`; in a user namespace
/// onto the id range that starts at `range`, if given.
pub fn definition(
    name: &str,
    uc: &UserContainer,
    config: &RunConfig,
    root: &Path,
    range: Option<u32>,
) -> Result<ContainerDef, String> {
    let mut def = ContainerDef::parse("[rootfs]\n").map_err(|e| e.to_string())?;
    def.description = format!("container of {}", uc.image);
    // The host's health is the OS's: a workload that fails does not roll
    // back an update.
    def.required = false;
    // The image's files as the container sees them: PID 1 reads them, and
    // a symlink in a hostile image must not point it at the host's.
    let image = InRoot::open(root)?;
    let given = keel_oci::Given {
        command: uc.command.clone(),
        env: None,
        set_env: uc.env.clone().into_iter().collect(),
        cwd: None,
        user: uc.user.clone(),
    };
    let run = keel_oci::resolve(config, &given, &image).map_err(|e| e.to_string())?;
    def.command = run.command;
    def.env = run.env;
    def.cwd = run.cwd;
    if let Some((uid, gid)) = run.user {
        def.user.uid = uid;
        def.user.gid = gid;
    }
    def.restart = uc.restart.into();
    def.user_namespace = range.map(|outside| {
        let map = vec![IdMap {
            inside: 0,
            outside,
            count: USERNS_IDS,
        }];
        UserNamespace {
            uid_map: map.clone(),
            gid_map: map,
        }
    });
    def.namespaces.net = match uc.network {
        ContainerNetwork::Private | ContainerNetwork::None => Share::Private,
        ContainerNetwork::Host => Share::Host,
    };
    def.capabilities = DEFAULT_CAPS.iter().map(|c| c.to_string()).collect();
    def.mounts = uc.volumes.iter().map(volume).collect();
    // Where the image has a real folder (prepare makes them; a symlink,
    // /var/run -> /run say, is left alone).
    def.writable = SCRATCH
        .iter()
        .filter(|p| !def.mounts.iter().any(|m| m.target == **p))
        .filter(|p| is_real_dir(root, p))
        .map(|p| Writable {
            path: p.to_string(),
            kind: WritableKind::Tmpfs,
            size: None,
        })
        .collect();
    crate::config::derive::apply_limits(&uc.limits, &mut def.resources);
    def.root_dir = Some(root.to_string_lossy().into_owned());
    container::validate(name, &def).map_err(|e| e.to_string())?;
    Ok(def)
}

/// A volume of the host config as a bind mount.
fn volume(v: &Volume) -> BindMount {
    BindMount {
        source: v.source.clone(),
        target: v.target.clone(),
        readonly: v.readonly,
    }
}

/// An image unpacked under [`ROOTS_DIR`]: what the helper process that
/// does it reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unpacked {
    pub root: String,
    pub config: RunConfig,
}

/// Open the image at `image` (every blob checked) and unpack it under
/// `roots` unless its root is there from before (roots are named by
/// [`keel_oci::Image::root_key`]). With `range`, the root
/// is unpacked by the root of a user namespace mapped onto the range that
/// starts there (see [`crate::launch::userns`]), so its files belong to the range
/// and a hostile layer has no power over the host's files; a root is
/// kept per image and range. Heavy: keel-init runs it in a helper process
/// (`keel-init prepare-container ROOTS IMAGE [BASE]`), never in PID 1,
/// which clones containers and must stay single-threaded.
pub fn unpack_image_in(roots: &Path, image: &str, range: Option<u32>) -> Result<Unpacked, String> {
    std::fs::create_dir_all(roots).map_err(|e| format!("{}: {e}", roots.display()))?;
    let opened = keel_oci::open_in(Path::new(image), roots).map_err(|e| e.to_string())?;
    unpack_opened(roots, opened, range)
}

/// [`unpack_image_in`] for an image already open.
fn unpack_opened(
    roots: &Path,
    opened: keel_oci::Image,
    range: Option<u32>,
) -> Result<Unpacked, String> {
    std::fs::create_dir_all(roots).map_err(|e| format!("{}: {e}", roots.display()))?;
    let key = opened.root_key().map_err(|e| e.to_string())?;
    let name = match range {
        Some(base) => format!("{key}-{base}"),
        None => key,
    };
    let root = roots.join(&name);
    if !root.is_dir() {
        // Unpacked beside its final place and renamed: a root that is
        // there is whole. The partial folder is this helper's own: one
        // started for a newer config may be unpacking the same image.
        let partial = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .tempdir_in(roots)
            .map_err(|e| format!("{}: {e}", roots.display()))?
            .keep();
        let shown = |e: std::io::Error| format!("{}: {e}", partial.display());
        let unpacked = match range {
            None => std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))
                .map_err(shown)
                .and_then(|()| {
                    keel_oci::unpack_keeping_owners(&opened, &partial).map_err(|e| e.to_string())
                })
                .and_then(|()| mount_points(&partial)),
            Some(base) => opened
                .open_layers()
                .map_err(|e| e.to_string())
                .and_then(|layers| {
                    let owners = Owners::Shifted {
                        base: 0,
                        size: USERNS_IDS,
                    };
                    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))
                        .and_then(|()| std::os::unix::fs::lchown(&partial, Some(base), Some(base)))
                        .map_err(shown)?;
                    crate::launch::userns::run_as_range_root(base, &layers.fds(), || {
                        layers.unpack(&partial, owners).map_err(|e| e.to_string())?;
                        mount_points(&partial)
                    })
                }),
        };
        let renamed = unpacked.and_then(|()| match std::fs::rename(&partial, &root) {
            Ok(()) => Ok(()),
            // Another helper got there first with the same root.
            Err(_) if root.is_dir() => {
                let _ = std::fs::remove_dir_all(&partial);
                Ok(())
            }
            Err(e) => Err(format!("{}: {e}", root.display())),
        });
        if let Err(e) = renamed {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
    }
    Ok(Unpacked {
        root: root.to_string_lossy().into_owned(),
        config: opened.config,
    })
}

/// The mount points every container gets, and its scratch space.
fn mount_points(root: &Path) -> Result<(), String> {
    for dir in ["/proc", "/sys", "/dev"] {
        make_dir_in(root, dir)?;
    }
    for dir in SCRATCH {
        let _ = make_dir_in(root, dir);
    }
    Ok(())
}

/// Container `name`, its image unpacked (for the id range at `range`, if
/// any): its definition worked out, its volumes' folders made on both
/// sides. A volume folder keel-init makes belongs to the container's user
/// (in its range); one that is there is left as it is.
pub fn finish(
    name: &str,
    uc: &UserContainer,
    u: &Unpacked,
    range: Option<u32>,
) -> Result<Workload, String> {
    let root = Path::new(&u.root);
    // The helper unpacks hostile images: its answer must name one of the
    // unpacked roots, never another folder of the host.
    let cached = root.parent() == Some(Path::new(ROOTS_DIR))
        && root
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.') && !n.contains('/'));
    if !cached {
        return Err(format!(
            "the preparing helper answered with {:?}, not a root under {ROOTS_DIR}",
            u.root
        ));
    }
    let mut def = definition(name, uc, &u.config, root, range)?;
    let owner = match &def.user_namespace {
        Some(ns) => ns
            .outside_uid(def.user.uid)
            .zip(ns.outside_gid(def.user.gid)),
        None => None,
    };
    for m in uc.volumes.iter().map(volume) {
        let made = make_dir_in(Path::new("/"), &m.source)
            .map_err(|e| format!("volume {}: {e}", m.source))?;
        if let (true, Some((uid, gid))) = (made, owner) {
            crate::sys::give_folder(Path::new(&m.source), (Some(uid), Some(gid)))
                .map_err(|e| format!("volume {}: {e}", m.source))?;
        }
        make_dir_in(root, &m.target).map_err(|e| format!("volume {}: {e}", m.target))?;
    }
    match uc.network {
        // The host's resolvers, as Docker gives a container; a container
        // on a network also gets its hosts file, which names the
        // containers it shares a network with.
        ContainerNetwork::Host => bind_file(
            root,
            &mut def,
            keel_formats::host::SHARED_RESOLV_CONF,
            "resolv.conf",
        ),
        ContainerNetwork::Private => {
            bind_file(
                root,
                &mut def,
                keel_formats::host::SHARED_RESOLV_CONF,
                "resolv.conf",
            );
            let hosts = crate::net::containers::hosts_path(name);
            bind_file(root, &mut def, &hosts.to_string_lossy(), "hosts");
        }
        ContainerNetwork::None => {}
    }
    Ok(Workload {
        name: name.to_string(),
        def,
    })
}

/// Bind host file `source` read-only onto /etc/`name` of the container,
/// made empty in its root if the image has none. An image whose
/// /etc/`name` is a symlink or a folder keeps it: the bind would follow
/// the image's link onto a host path.
fn bind_file(root: &Path, def: &mut ContainerDef, source: &str, name: &str) {
    let at = root.join("etc").join(name);
    let file = match std::fs::symlink_metadata(&at) {
        Ok(m) => m.is_file(),
        Err(_) => make_dir_in(root, "/etc").is_ok() && std::fs::write(&at, "").is_ok(),
    };
    if file {
        def.mounts.push(BindMount {
            source: source.to_string(),
            target: format!("/etc/{name}"),
            readonly: true,
        });
    }
}

/// A registry image: keel-pull brings it into its store; the image is
/// copied out of it (paths resolved inside the store, regular files only,
/// every blob hashed as it is copied) into a folder of root's, and
/// unpacked from that copy, which keel-pull cannot change. A pinned
/// reference must get the manifest it pins (or one its index lists).
fn pull_and_unpack(roots: &Path, range: Option<u32>) -> Result<Unpacked, String> {
    use keel_api::pull::{SERVICE_ON_HOST, STORE_IN_SERVICE};
    let req = pull::read_request(std::io::stdin().lock())?;
    let reference: keel_formats::reference::Reference =
        req.reference.parse().map_err(|e| format!("{e}"))?;
    let manifest = pull::pull(&req)?;
    std::fs::create_dir_all(roots).map_err(|e| format!("{}: {e}", roots.display()))?;
    let copy = tempfile::Builder::new()
        .prefix(".pulled.")
        .tempdir_in(roots)
        .map_err(|e| format!("{}: {e}", roots.display()))?;
    let pin = reference.digest.as_ref().map(ToString::to_string);
    keel_oci::copy_image(
        Path::new(SERVICE_ON_HOST),
        Path::new(STORE_IN_SERVICE),
        &manifest,
        pin.as_deref(),
        copy.path(),
    )
    .map_err(|e| format!("{reference}: {e}"))?;
    let opened = keel_oci::open_manifest(copy.path(), &manifest).map_err(|e| e.to_string())?;
    unpack_opened(roots, opened, range)
}

/// `keel-init prepare-container ROOTS IMAGE [BASE]`: unpack, then print
/// the result as one JSON line (`{"Ok": ...}` or `{"Err": "why"}`) for
/// PID 1. IMAGE `-` is a registry image: the pull request comes on stdin
/// (never in the arguments, which every process may read).
pub fn helper_main(args: &[String]) -> ! {
    let base = |b: Option<&String>| match b {
        None => Ok(None),
        Some(b) => b
            .parse::<u32>()
            .map(Some)
            .map_err(|e| format!("id range {b:?}: {e}")),
    };
    let result = match args {
        [roots, image, rest @ ..] if rest.len() <= 1 => base(rest.first()).and_then(|range| {
            if image == "-" {
                pull_and_unpack(Path::new(roots), range)
            } else {
                unpack_image_in(Path::new(roots), image, range)
            }
        }),
        _ => Err("usage: keel-init prepare-container ROOTS IMAGE|- [BASE]".into()),
    };
    let line = serde_json::to_string(&result).unwrap_or_else(|e| format!("{{\"Err\":\"{e}\"}}"));
    println!("{line}");
    std::process::exit(0)
}

/// `keel-init prune-roots KEEP...`: remove unpacked roots but these.
pub fn prune_main(keep: &[String]) -> ! {
    let keep: Vec<&Path> = keep.iter().map(Path::new).collect();
    prune(&keep);
    std::process::exit(0)
}

/// Whether `path` is a folder of `root` with no symlink on the way: what
/// a mount on it in the container's root lands on.
fn is_real_dir(root: &Path, path: &str) -> bool {
    let mut at = root.to_path_buf();
    Path::new(path).components().skip(1).all(|part| {
        at.push(part);
        std::fs::symlink_metadata(&at).is_ok_and(|m| m.is_dir())
    })
}

/// Make folder `path` of the container in `root` (or of the host in /),
/// never following a symlink: one in the image (or in a volume another
/// container writes) would point at the host's files from here. Returns
/// whether it made the folder itself.
fn make_dir_in(root: &Path, path: &str) -> Result<bool, String> {
    let mut at = root.to_path_buf();
    let mut made = false;
    for part in Path::new(path).components().skip(1) {
        at.push(part);
        made = match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => false,
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!("{path} goes through a symlink"))
            }
            Ok(_) => return Err(format!("{path}: not a folder")),
            Err(_) => {
                std::fs::create_dir(&at).map_err(|e| format!("{}: {e}", at.display()))?;
                true
            }
        };
    }
    Ok(made)
}

/// Remove unpacked roots that no container of `keep` uses.
pub fn prune(keep: &[&Path]) {
    let Ok(rd) = std::fs::read_dir(ROOTS_DIR) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if !keep.iter().any(|k| *k == p) {
            if let Err(err) = std::fs::remove_dir_all(&p) {
                crate::log(format!("warning: {}: {err}", p.display()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_formats::container::RestartPolicy;
    use keel_formats::limits::Size;

    fn uc(extra: &str) -> UserContainer {
        toml::from_str(&format!("image = \"/var/lib/images/app\"\n{extra}")).unwrap()
    }

    fn root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for d in ["bin", "usr/bin", "etc", "tmp", "run", "var/tmp"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("usr/bin/app"), "").unwrap();
        std::os::unix::fs::symlink("/usr/bin/app", dir.path().join("bin/app-link")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:33:44::/:/bin/sh\n",
        )
        .unwrap();
        dir
    }

    fn config() -> RunConfig {
        RunConfig {
            entrypoint: Some(vec!["app".into()]),
            cmd: Some(vec!["--port".into(), "80".into()]),
            env: Some(vec!["PATH=/bin:/usr/bin".into(), "MODE=dev".into()]),
            working_dir: Some("/srv".into()),
            user: Some("web".into()),
        }
    }

    #[test]
    fn the_image_config_fills_in_what_the_host_config_leaves_out() {
        let r = root();
        let def = definition("app", &uc(""), &config(), r.path(), None).unwrap();
        assert_eq!(
            def.command,
            ["/usr/bin/app", "--port", "80"],
            "found in PATH"
        );
        assert_eq!(def.env, ["PATH=/bin:/usr/bin", "MODE=dev"]);
        assert_eq!(def.cwd, "/srv");
        assert_eq!((def.user.uid, def.user.gid), (33, 44), "named User");
        assert_eq!(def.namespaces.net, Share::Private);
        assert_eq!(def.restart, RestartPolicy::Always);
        assert!(!def.required);
        assert_eq!(def.root_dir.as_deref(), r.path().to_str());
        let scratch: Vec<&str> = def.writable.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(scratch, SCRATCH);
    }

    #[test]
    fn the_host_config_wins() {
        let r = root();
        let c = uc(
            "command = [\"app-link\", \"-v\"]\nenv = { MODE = \"prod\", X = \"1\" }\nuser = \"5:6\"\n\
             network = \"host\"\nrestart = \"on-failure\"\nvolumes = [\"/var/lib/app:/data\", \"/var/lib/conf:/etc/app:ro\", \"/var/lib/t:/tmp\"]\n\
             limits = { memory = \"64M\", cpus = 0.5, pids = 10 }\n",
        );
        let def = definition("app", &c, &config(), r.path(), None).unwrap();
        assert_eq!(def.command, ["/bin/app-link", "-v"], "a symlink counts");
        assert_eq!(def.env, ["PATH=/bin:/usr/bin", "MODE=prod", "X=1"]);
        assert_eq!((def.user.uid, def.user.gid), (5, 6));
        assert_eq!(def.namespaces.net, Share::Host);
        assert_eq!(def.restart, RestartPolicy::OnFailure);
        let mounts: Vec<(&str, &str, bool)> = def
            .mounts
            .iter()
            .map(|m| (m.source.as_str(), m.target.as_str(), m.readonly))
            .collect();
        assert_eq!(
            mounts,
            [
                ("/var/lib/app", "/data", false),
                ("/var/lib/conf", "/etc/app", true),
                ("/var/lib/t", "/tmp", false)
            ]
        );
        let scratch: Vec<&str> = def.writable.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(
            scratch,
            ["/run", "/var/tmp"],
            "a volume on /tmp replaces the tmpfs"
        );
        assert_eq!(def.resources.memory_max, Some(Size(64 << 20)));
        assert_eq!(def.resources.cpu_max_percent, Some(50));
        assert_eq!(def.resources.pids_max, Some(10));
    }

    #[test]
    fn a_range_puts_the_container_in_a_user_namespace() {
        let r = root();
        let def = definition("app", &uc(""), &config(), r.path(), Some(1 << 20)).unwrap();
        let ns = def.user_namespace.expect("a user namespace");
        assert_eq!(UserNamespace::map_text(&ns.uid_map), "0 1048576 65536\n");
        assert_eq!(ns.uid_map, ns.gid_map);
        assert_eq!(
            ns.outside_uid(def.user.uid),
            Some((1 << 20) + 33),
            "User web"
        );
        assert_eq!(def.namespaces.pid, Share::Private);
        let host = definition("app", &uc(""), &config(), r.path(), None).unwrap();
        assert_eq!(host.user_namespace, None);
    }

    #[test]
    fn what_cannot_run_is_said() {
        let r = root();
        let none = RunConfig::default();
        let e = definition("app", &uc(""), &none, r.path(), None).unwrap_err();
        assert!(e.contains("says what to run"), "{e}");
        let e = definition("app", &uc("command = [\"nginx\"]"), &none, r.path(), None).unwrap_err();
        assert_eq!(
            e,
            "\"nginx\" is not in the image's PATH (/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)"
        );
        let nobody = RunConfig {
            user: Some("nobody".into()),
            ..config()
        };
        let e = definition("app", &uc(""), &nobody, r.path(), None).unwrap_err();
        assert!(e.contains("no user \"nobody\""), "{e}");
    }

    #[test]
    fn the_image_is_read_as_the_container_sees_it_never_the_host() {
        let r = root();
        // A host file that the image's links name by absolute path.
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("passwd"), "web:x:99:99::/:/bin/sh\n").unwrap();
        std::fs::create_dir(host.path().join("bin")).unwrap();
        std::fs::write(host.path().join("bin/tool"), "").unwrap();
        let passwd = r.path().join("etc/passwd");
        std::fs::remove_file(&passwd).unwrap();
        std::os::unix::fs::symlink(host.path().join("passwd"), &passwd).unwrap();
        std::os::unix::fs::symlink(host.path().join("bin"), r.path().join("hostbin")).unwrap();
        let e = definition("app", &uc(""), &config(), r.path(), None).unwrap_err();
        assert!(e.contains("no user \"web\""), "{e}");
        let c = RunConfig {
            env: Some(vec!["PATH=/hostbin:/usr/bin".into()]),
            user: None,
            entrypoint: Some(vec!["tool".into()]),
            ..config()
        };
        let e = definition("app", &uc(""), &c, r.path(), None).unwrap_err();
        assert!(e.contains("\"tool\" is not in the image's PATH"), "{e}");
        // A link that stays inside counts, as it would in the container.
        std::fs::remove_file(&passwd).unwrap();
        std::fs::write(r.path().join("etc/users"), "web:x:7:8::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("/etc/users", &passwd).unwrap();
        let def = definition("app", &uc(""), &config(), r.path(), None).unwrap();
        assert_eq!((def.user.uid, def.user.gid), (7, 8));
    }

    #[test]
    fn folders_are_made_without_following_symlinks() {
        let r = root();
        make_dir_in(r.path(), "/data/sub").unwrap();
        assert!(r.path().join("data/sub").is_dir());
        std::os::unix::fs::symlink("/", r.path().join("escape")).unwrap();
        let e = make_dir_in(r.path(), "/escape/tmp/keel-test").unwrap_err();
        assert_eq!(e, "/escape/tmp/keel-test goes through a symlink");
        assert!(!Path::new("/tmp/keel-test").exists());
        assert!(make_dir_in(r.path(), "/usr/bin/app/x").is_err(), "a file");
    }
}

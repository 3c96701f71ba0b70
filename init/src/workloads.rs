//! The person's own containers (`containers.<name>` of the host config):
//! an OCI image layout or `docker save` archive under /var, unpacked once
//! per image ID, then run by keel-init as a service of that name, with a
//! read-only root like every system service.

use std::path::{Path, PathBuf};

use keel_oci::RunConfig;
use keel_spec::container::{self, BindMount, ContainerDef, Share};
use keel_spec::hostconfig::types::{ContainerNetwork, UserContainer};
use keel_spec::limits::{Writable, WritableKind};
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

/// Docker's PATH for images that set none.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A published port: keel-init listens on `host` and forwards to the
/// container's loopback at `container`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Port {
    pub host: u16,
    pub container: u16,
    pub udp: bool,
}

/// A user container ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub def: ContainerDef,
    pub ports: Vec<Port>,
}

/// The definition keel-init runs for container `name` of the host config,
/// whose image has `config` and is unpacked at `root`.
pub fn definition(
    name: &str,
    uc: &UserContainer,
    config: &RunConfig,
    root: &Path,
) -> Result<ContainerDef, String> {
    let mut def = ContainerDef::parse("[rootfs]\n").map_err(|e| e.to_string())?;
    def.description = format!("container of {}", uc.image);
    // The host's health is the OS's: a workload that fails does not roll
    // back an update.
    def.required = false;
    let mut env = config.env.clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    for (k, v) in &uc.env {
        env.retain(|e| e.split_once('=').map(|(n, _)| n) != Some(k.as_str()));
        env.push(format!("{k}={v}"));
    }
    def.cwd = config
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    let mut command = if uc.command.is_empty() {
        config
            .entrypoint
            .iter()
            .flatten()
            .chain(config.cmd.iter().flatten())
            .cloned()
            .collect()
    } else {
        uc.command.clone()
    };
    let Some(first) = command.first_mut() else {
        return Err("neither `command` nor the image's Entrypoint or Cmd says what to run".into());
    };
    *first = find_program(first, &env, &def.cwd, root)?;
    def.command = command;
    def.env = env;
    let user = uc
        .user
        .as_deref()
        .or(config.user.as_deref().filter(|u| !u.is_empty()));
    if let Some(user) = user {
        let read = &mut |rel: &str| std::fs::read_to_string(root.join(rel)).ok();
        let (uid, gid) = keel_oci::lookup_user(user, read)?;
        def.user.uid = uid;
        def.user.gid = gid;
    }
    def.restart = uc.restart.into();
    def.namespaces.net = match uc.network {
        ContainerNetwork::Private => Share::Private,
        ContainerNetwork::Host => Share::Host,
    };
    def.capabilities = DEFAULT_CAPS.iter().map(|c| c.to_string()).collect();
    def.mounts = uc
        .volumes
        .iter()
        .map(|v| volume(v))
        .collect::<Result<_, _>>()?;
    // Where the image has a real folder (prepare makes them; a symlink,
    // /var/run -> /run say, is left alone).
    def.writable = SCRATCH
        .iter()
        .filter(|p| !def.mounts.iter().any(|m| m.target == **p))
        .filter(|p| {
            std::fs::symlink_metadata(root.join(p.trim_start_matches('/')))
                .is_ok_and(|m| m.is_dir())
        })
        .map(|p| Writable {
            path: p.to_string(),
            kind: WritableKind::Tmpfs,
            size: None,
        })
        .collect();
    crate::config::apply_limits(&uc.limits, &mut def.resources);
    def.root_dir = Some(root.to_string_lossy().into_owned());
    container::validate(name, &def).map_err(|e| e.to_string())?;
    Ok(def)
}

/// `/var/SOURCE:/TARGET[:ro|:rw]` (checked by the host config's
/// validation) as a bind mount.
fn volume(v: &str) -> Result<BindMount, String> {
    let parts: Vec<&str> = v.split(':').collect();
    let (source, target, readonly) = match parts.as_slice() {
        [s, t] => (s, t, false),
        [s, t, mode] => (s, t, *mode == "ro"),
        _ => return Err(format!("volume {v:?} is not /var/SOURCE:/TARGET[:ro|:rw]")),
    };
    Ok(BindMount {
        source: source.to_string(),
        target: target.to_string(),
        readonly,
    })
}

/// The absolute path of `program` inside the image: as it is if absolute,
/// from `cwd` if it has a slash, else looked up in the container's PATH,
/// as a container engine does.
fn find_program(program: &str, env: &[String], cwd: &str, root: &Path) -> Result<String, String> {
    if program.starts_with('/') {
        return Ok(program.to_string());
    }
    if program.contains('/') {
        return Ok(Path::new(cwd).join(program).to_string_lossy().into_owned());
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or_default();
    for dir in path.split(':').filter(|d| d.starts_with('/')) {
        let inside = Path::new(dir).join(program);
        // The entry itself, not what a symlink points to: an absolute link
        // means a path in the container, not on the host.
        if std::fs::symlink_metadata(root.join(inside.strip_prefix("/").unwrap_or(&inside))).is_ok()
        {
            return Ok(inside.to_string_lossy().into_owned());
        }
    }
    Err(format!("{program:?} is not in the image's PATH ({path})"))
}

/// The ports a container publishes (checked by the host config's
/// validation).
pub fn ports(uc: &UserContainer) -> Vec<Port> {
    uc.ports
        .iter()
        .filter_map(|p| keel_spec::hostconfig::units::parse_port(p).ok())
        .map(|(host, container, udp)| Port {
            host,
            container,
            udp,
        })
        .collect()
}

/// An image unpacked under [`ROOTS_DIR`]: what the helper process that
/// does it reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unpacked {
    pub root: String,
    pub config: RunConfig,
}

/// Open the image at `image` (every blob checked) and unpack it unless
/// its root is there from before. Heavy: keel-init runs it in a helper
/// process (`keel-init prepare-container IMAGE`), never in PID 1, which
/// clones containers and must stay single-threaded.
pub fn unpack_image(image: &str) -> Result<Unpacked, String> {
    let roots = Path::new(ROOTS_DIR);
    std::fs::create_dir_all(roots).map_err(|e| format!("{ROOTS_DIR}: {e}"))?;
    let opened = keel_oci::open_in(Path::new(image), roots).map_err(|e| e.to_string())?;
    let root = roots.join(&opened.id);
    if !root.is_dir() {
        // Unpacked beside its final place and renamed: a root that is
        // there is whole.
        let partial = roots.join(format!(".{}.partial", opened.id));
        let _ = std::fs::remove_dir_all(&partial);
        keel_oci::unpack_keeping_owners(&opened, &partial).map_err(|e| e.to_string())?;
        // The mount points every container gets, and scratch space.
        for dir in ["/proc", "/sys", "/dev"] {
            make_dir_in(&partial, dir)?;
        }
        for dir in SCRATCH {
            let _ = make_dir_in(&partial, dir);
        }
        std::fs::rename(&partial, &root).map_err(|e| format!("{}: {e}", root.display()))?;
    }
    Ok(Unpacked {
        root: root.to_string_lossy().into_owned(),
        config: opened.config,
    })
}

/// Container `name`, its image unpacked: its volumes' folders made on
/// both sides, its definition worked out.
pub fn finish(name: &str, uc: &UserContainer, u: &Unpacked) -> Result<Workload, String> {
    let root = Path::new(&u.root);
    for m in uc.volumes.iter().map(|v| volume(v)) {
        let m = m?;
        let source = PathBuf::from(&m.source);
        std::fs::create_dir_all(&source).map_err(|e| format!("{}: {e}", source.display()))?;
        make_dir_in(root, &m.target).map_err(|e| format!("volume {}: {e}", m.target))?;
    }
    let mut def = definition(name, uc, &u.config, root)?;
    if uc.network == ContainerNetwork::Host {
        // The host's resolvers, as Docker gives a container.
        let resolv = root.join("etc/resolv.conf");
        let file = match std::fs::symlink_metadata(&resolv) {
            Ok(m) => m.is_file(),
            Err(_) => make_dir_in(root, "/etc").is_ok() && std::fs::write(&resolv, "").is_ok(),
        };
        if file {
            def.mounts.push(BindMount {
                source: keel_spec::host::RESOLV_CONF.to_string(),
                target: "/etc/resolv.conf".to_string(),
                readonly: true,
            });
        }
    }
    Ok(Workload {
        name: name.to_string(),
        def,
        ports: ports(uc),
    })
}

/// `keel-init prepare-container IMAGE`: unpack, then print the result as
/// one JSON line (`{"Ok": ...}` or `{"Err": "why"}`) for PID 1.
pub fn helper_main(image: &str) -> ! {
    let result = unpack_image(image);
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

/// Make folder `path` of the container in `root`, never following a
/// symlink: one in the image would point at the host's files from here.
fn make_dir_in(root: &Path, path: &str) -> Result<(), String> {
    let mut at = root.to_path_buf();
    for part in Path::new(path).components().skip(1) {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!("{path} goes through a symlink in the image"))
            }
            Ok(_) => return Err(format!("{path}: not a folder in the image")),
            Err(_) => std::fs::create_dir(&at).map_err(|e| format!("{}: {e}", at.display()))?,
        }
    }
    Ok(())
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
    use keel_spec::container::RestartPolicy;
    use keel_spec::limits::Size;

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
        let def = definition("app", &uc(""), &config(), r.path()).unwrap();
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
        let def = definition("app", &c, &config(), r.path()).unwrap();
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
    fn what_cannot_run_is_said() {
        let r = root();
        let none = RunConfig::default();
        let e = definition("app", &uc(""), &none, r.path()).unwrap_err();
        assert!(e.contains("says what to run"), "{e}");
        let e = definition("app", &uc("command = [\"nginx\"]"), &none, r.path()).unwrap_err();
        assert_eq!(
            e,
            "\"nginx\" is not in the image's PATH (/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)"
        );
        let nobody = RunConfig {
            user: Some("nobody".into()),
            ..config()
        };
        let e = definition("app", &uc(""), &nobody, r.path()).unwrap_err();
        assert!(e.contains("no user \"nobody\""), "{e}");
    }

    #[test]
    fn folders_are_made_without_following_symlinks() {
        let r = root();
        make_dir_in(r.path(), "/data/sub").unwrap();
        assert!(r.path().join("data/sub").is_dir());
        std::os::unix::fs::symlink("/", r.path().join("escape")).unwrap();
        let e = make_dir_in(r.path(), "/escape/tmp/keel-test").unwrap_err();
        assert_eq!(
            e,
            "/escape/tmp/keel-test goes through a symlink in the image"
        );
        assert!(!Path::new("/tmp/keel-test").exists());
        assert!(make_dir_in(r.path(), "/usr/bin/app/x").is_err(), "a file");
    }

    #[test]
    fn ports_are_read_as_published() {
        let c = uc("ports = [\"8080:80\", \"5353:53/udp\"]");
        assert_eq!(
            ports(&c),
            [
                Port {
                    host: 8080,
                    container: 80,
                    udp: false
                },
                Port {
                    host: 5353,
                    container: 53,
                    udp: true
                }
            ]
        );
    }
}

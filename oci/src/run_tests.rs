use super::*;
use crate::tests::{image_of, layer, E};
use std::fs;

/// An image root of these files (and symlinks, which count as there).
struct Fake(&'static [(&'static str, &'static str)]);

impl ImageRoot for Fake {
    fn exists(&self, path: &Path) -> bool {
        self.0.iter().any(|(p, _)| Path::new(p) == path)
    }
    fn read_text(&self, path: &Path) -> Option<String> {
        let (_, text) = self.0.iter().find(|(p, _)| Path::new(p) == path)?;
        Some(text.to_string())
    }
}

const FILES: Fake = Fake(&[
    ("usr/bin/app", ""),
    (
        "etc/passwd",
        "root:x:0:0::/root:/bin/sh\nweb:x:33:44::/:/bin/sh\n",
    ),
]);

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
fn the_image_config_is_what_runs_unless_the_definition_says() {
    let r = resolve(&config(), &Given::default(), &FILES).unwrap();
    assert_eq!(
        r,
        Resolved {
            command: vec!["/usr/bin/app".into(), "--port".into(), "80".into()],
            env: vec!["PATH=/bin:/usr/bin".into(), "MODE=dev".into()],
            cwd: "/srv".into(),
            user: Some((33, 44)),
        }
    );
    let given = Given {
        command: vec!["./app".into(), "-v".into()],
        env: Some(vec!["A=1".into()]),
        set_env: vec![("A".into(), "2".into()), ("B".into(), "3".into())],
        cwd: Some("/opt".into()),
        user: Some("5:6".into()),
    };
    let r = resolve(&config(), &given, &FILES).unwrap();
    assert_eq!(r.command, ["/opt/./app", "-v"], "from cwd");
    assert_eq!(r.env, [DEFAULT_PATH, "A=2", "B=3"]);
    assert_eq!((r.cwd.as_str(), r.user), ("/opt", Some((5, 6))));
}

#[test]
fn an_image_without_a_path_gets_docker_s() {
    let bare = RunConfig {
        env: None,
        user: None,
        working_dir: Some(String::new()),
        ..config()
    };
    let r = resolve(&bare, &Given::default(), &FILES).unwrap();
    assert_eq!(r.env, [DEFAULT_PATH]);
    assert_eq!(r.command[0], "/usr/bin/app");
    assert_eq!((r.cwd.as_str(), r.user), ("/", None));
    let set = Given {
        set_env: vec![("PATH".into(), "/usr/bin".into())],
        ..Given::default()
    };
    let r = resolve(&bare, &set, &FILES).unwrap();
    assert_eq!(r.env, ["PATH=/usr/bin"], "a PATH set over it replaces it");
}

#[test]
fn what_cannot_run_is_said() {
    let none = RunConfig::default();
    assert_eq!(
        resolve(&none, &Given::default(), &FILES),
        Err(RunError::NothingToRun)
    );
    let nginx = Given {
        command: vec!["nginx".into()],
        ..Given::default()
    };
    let e = resolve(&none, &nginx, &FILES).unwrap_err();
    assert_eq!(
        e,
        RunError::NotInPath {
            program: "nginx".into(),
            path: DEFAULT_PATH["PATH=".len()..].into()
        }
    );
    assert_eq!(
        e.to_string(),
        "\"nginx\" is not in the image's PATH (/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)"
    );
    let nobody = RunConfig {
        user: Some("nobody".into()),
        ..config()
    };
    assert!(matches!(
        resolve(&nobody, &Given::default(), &FILES),
        Err(RunError::NoUser { name, .. }) if name == "nobody"
    ));
}

#[test]
fn an_unpacked_image_is_read_as_the_container_sees_it_never_the_host() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for d in ["bin", "usr/bin", "etc"] {
        fs::create_dir_all(r.join(d)).unwrap();
    }
    fs::write(r.join("usr/bin/app"), "").unwrap();
    std::os::unix::fs::symlink("/usr/bin/app", r.join("bin/app-link")).unwrap();
    // Host files that the image's links name by absolute path.
    let host = tempfile::tempdir().unwrap();
    fs::write(host.path().join("passwd"), "web:x:99:99::/:/bin/sh\n").unwrap();
    fs::create_dir(host.path().join("bin")).unwrap();
    fs::write(host.path().join("bin/tool"), "").unwrap();
    std::os::unix::fs::symlink(host.path().join("passwd"), r.join("etc/passwd")).unwrap();
    std::os::unix::fs::symlink(host.path().join("bin"), r.join("hostbin")).unwrap();
    let image = InRoot::open(r).unwrap();
    let run = |entrypoint: &str, path: &str, user: Option<&str>| {
        let c = RunConfig {
            entrypoint: Some(vec![entrypoint.into()]),
            env: Some(vec![format!("PATH={path}")]),
            user: user.map(String::from),
            ..RunConfig::default()
        };
        resolve(&c, &Given::default(), &image)
    };
    assert_eq!(
        run("app-link", "/bin", None).unwrap().command,
        ["/bin/app-link"],
        "a symlink counts"
    );
    assert!(matches!(
        run("tool", "/hostbin:/usr/bin", None),
        Err(RunError::NotInPath { .. })
    ));
    assert!(matches!(
        run("app", "/usr/bin", Some("web")),
        Err(RunError::NoUser { .. })
    ));
    // A link that stays inside counts, as it would in the container.
    fs::remove_file(r.join("etc/passwd")).unwrap();
    fs::write(r.join("etc/users"), "web:x:7:8::/:/bin/sh\n").unwrap();
    std::os::unix::fs::symlink("/etc/users", r.join("etc/passwd")).unwrap();
    assert_eq!(
        run("app", "/usr/bin", Some("web")).unwrap().user,
        Some((7, 8))
    );
}

#[test]
fn an_unpacked_image_resolves_through_its_own_links_and_layers() {
    let dir = tempfile::tempdir().unwrap();
    let image = image_of(
        dir.path(),
        vec![
            layer(
                &[
                    E::Dir("usr"),
                    E::Dir("usr/bin"),
                    E::File("usr/bin/sh", b"", 0o755),
                    E::File("usr/bin/gone", b"", 0o755),
                    E::Symlink("bin", "usr/bin"),
                    E::Dir("etc"),
                    E::File("etc/users", b"web:x:7:8::/:/bin/sh\n", 0o644),
                    E::Symlink("etc/passwd", "../etc/users"),
                    E::Symlink("loop", "loop"),
                    E::Symlink("out", "/../../../../usr/bin"),
                    E::Dir("opt"),
                    E::File("opt/tool", b"", 0o755),
                ],
                false,
            ),
            layer(
                &[
                    E::File("usr/bin/.wh.gone", b"", 0o644),
                    // No folder entry for usr/local/bin: it is there.
                    E::File("usr/local/bin/new", b"", 0o755),
                    E::File("opt", b"not a folder now", 0o644),
                ],
                true,
            ),
        ],
    );
    let root = dir.path().join("root");
    crate::unpack(&image, &root).unwrap();
    let layers = InRoot::open(&root).unwrap();
    let run = |program: &str, path: &str| {
        let c = RunConfig {
            entrypoint: Some(vec![program.into()]),
            env: Some(vec![format!("PATH={path}")]),
            user: Some("web".into()),
            ..RunConfig::default()
        };
        resolve(&c, &Given::default(), &layers)
    };
    let r = run("sh", "/bin").unwrap();
    assert_eq!(r.command, ["/bin/sh"], "through the image's own /bin link");
    assert_eq!(r.user, Some((7, 8)), "its passwd a link inside");
    assert_eq!(
        run("sh", "/out").unwrap().command,
        ["/out/sh"],
        "`..` stops at its root"
    );
    assert_eq!(
        run("new", "/usr/local/bin").unwrap().command,
        ["/usr/local/bin/new"]
    );
    for (program, path) in [("gone", "/usr/bin"), ("sh", "/loop"), ("tool", "/opt")] {
        assert!(
            matches!(run(program, path), Err(RunError::NotInPath { .. })),
            "{program} in {path}"
        );
    }
    assert!(layers.exists(Path::new("loop")), "a link is there itself");
    assert_eq!(layers.read_text(Path::new("loop")), None);
    assert_eq!(layers.read_text(Path::new("usr/bin")), None, "a folder");
}

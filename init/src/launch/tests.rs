// Test code, not reachable from input.
#![allow(clippy::arithmetic_side_effects)]

use std::path::Path;

use keel_formats::container::ContainerDef;

use super::*;

fn def(extra: &str) -> ContainerDef {
    ContainerDef::parse(&format!(
        "command = [\"/bin/httpd\", \"-f\"]\n{extra}\n[rootfs]\ncontents = [\"busybox\"]\n"
    ))
    .unwrap()
}

const USERNS: &str = "[user_namespace]
uid_map = [{ inside = 0, outside = 100000, count = 65536 }]
gid_map = [{ inside = 0, outside = 100000, count = 65536 }]";

const VOLUMES: &str = "[[mounts]]
source = \"/srv/www\"
target = \"/var/www\"
[[mounts]]
source = \"/run/keel\"
target = \"/run/keel\"
readonly = false
[[writable]]
path = \"/var/cache\"
kind = \"tmpfs\"
size = \"1M\"
[[writable]]
path = \"/data\"
kind = \"persistent\"
[[writable]]
path = \"/tmp/scratch\"
kind = \"tmpfs\"";

fn kinds(steps: &[Step<'_>]) -> Vec<StepKind> {
    steps.iter().map(Step::kind).collect()
}

fn first(steps: &[Step<'_>], kind: StepKind) -> usize {
    steps
        .iter()
        .position(|s| s.kind() == kind)
        .unwrap_or_else(|| panic!("no {kind:?} in {:?}", kinds(steps)))
}

fn last(steps: &[Step<'_>], kind: StepKind) -> usize {
    steps
        .iter()
        .rposition(|s| s.kind() == kind)
        .unwrap_or_else(|| panic!("no {kind:?} in {:?}", kinds(steps)))
}

/// Steps that change the mounts of the root before it becomes `/`.
fn mounts_in_root(kind: StepKind) -> bool {
    use StepKind as K;
    matches!(
        kind,
        K::BindRoot
            | K::MountProc
            | K::MountSys
            | K::MountCgroup
            | K::ReadOnly
            | K::Mask
            | K::MountDev
            | K::BindDevice
            | K::MountDevPts
            | K::RemountDevReadonly
            | K::Tmpfs
            | K::Bind
    )
}

/// The order every plan keeps, whatever its definition.
fn check_order(p: &Plan, steps: &[Step<'_>]) {
    let at = |k| first(steps, k);
    assert_eq!(
        at(StepKind::MakePrivate),
        last(steps, StepKind::MakePrivate)
    );
    let pivot = at(StepKind::PivotRoot);
    for (i, s) in steps.iter().enumerate() {
        let k = s.kind();
        if mounts_in_root(k) {
            assert!(at(StepKind::MakePrivate) < i, "{k:?} before / is private");
            assert!(i < pivot, "{k:?} after pivot_root");
        }
    }
    assert_eq!(steps[pivot + 1].kind(), StepKind::RemountRootReadonly);
    // Masks cover what /proc and /sys show.
    let kernel = if p.mount_sys {
        assert!(
            at(StepKind::MountProc) < at(StepKind::MountSys)
                && at(StepKind::MountSys) < at(StepKind::MountCgroup),
            "/proc, then /sys, then the cgroup tree on it"
        );
        at(StepKind::MountCgroup)
    } else {
        at(StepKind::MountProc)
    };
    for k in [StepKind::ReadOnly, StepKind::Mask] {
        assert!(at(k) > kernel, "{k:?} before the kernel files");
    }
    // Everything in /dev is in place before it goes read-only, and
    // nothing after.
    let dev_ro = at(StepKind::RemountDevReadonly);
    assert!(at(StepKind::MountDev) < at(StepKind::BindDevice));
    assert!(last(steps, StepKind::BindDevice) < dev_ro);
    assert!(last(steps, StepKind::DevLink) < dev_ro);
    assert!(at(StepKind::MountDevPts) < dev_ro);
    for s in &steps[dev_ro..] {
        if let Step::BindDevice { .. } | Step::DevLink { .. } | Step::MountDevPts { .. } = s {
            panic!("{s} after /dev went read-only");
        }
    }
    // The console is the container's, so opened after pivot_root; the
    // fds are set before confinement, which comes right before chdir and
    // exec.
    let n = steps.len();
    assert_eq!(
        kinds(&steps[n - 3..]),
        [StepKind::Confine, StepKind::Chdir, StepKind::Exec]
    );
    for k in [StepKind::ConsoleStdio, StepKind::NullStdin, StepKind::Dup] {
        if let Some(i) = steps.iter().position(|s| s.kind() == k) {
            assert!(pivot < i && i < n - 3, "{k:?} out of place");
        }
    }
}

#[test]
fn a_plain_service_mounts_then_confines_then_execs() {
    let p = plan("web", &def("[namespaces]\nnet = \"private\"")).unwrap();
    let fds = ChildFds {
        out: Some(7),
        notify: None,
    };
    let steps = steps(&p, fds);
    check_order(&p, &steps);
    assert_eq!(
        kinds(&steps[..4]),
        [
            StepKind::ClearSignalMask,
            StepKind::Setsid,
            StepKind::MakePrivate,
            StepKind::BindRoot
        ],
        "no user namespace: nobody to become"
    );
    assert!(matches!(steps[3], Step::BindRoot { root } if root.ends_with("web/rootfs")));
    // Its own network namespace starts with loopback down; its own UTS
    // namespace gets the service's name.
    let pivot = first(&steps, StepKind::PivotRoot);
    assert!(first(&steps, StepKind::LoopbackUp) > pivot);
    assert!(steps
        .iter()
        .any(|s| matches!(s, Step::SetHostname { name: "web" })));
    assert!(steps
        .iter()
        .any(|s| matches!(s, Step::Dup { from: 7, to: 1 })));
    assert!(steps
        .iter()
        .any(|s| matches!(s, Step::Dup { from: 7, to: 2 })));
    assert_eq!(steps.last().unwrap().to_string(), "exec /bin/httpd");
    let devices: Vec<String> = steps
        .iter()
        .filter_map(|s| match s {
            Step::BindDevice { target, .. } => Some(target.display().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(devices.len(), 6, "{devices:?}");
    assert!(devices.iter().all(|d| d.contains("web/rootfs/dev/")));
}

#[test]
fn a_host_network_service_brings_up_no_loopback() {
    let p = plan("web", &def("")).unwrap();
    let steps = steps(&p, ChildFds::default());
    check_order(&p, &steps);
    assert!(!kinds(&steps).contains(&StepKind::LoopbackUp));
    assert!(
        !kinds(&steps).contains(&StepKind::Dup),
        "output inherited: nothing to dup"
    );
}

#[test]
fn a_user_namespace_becomes_its_root_before_anything() {
    let p = plan("unpriv", &def(USERNS)).unwrap();
    assert!(p.user_maps.is_some());
    assert!(!p.mount_sys, "the host's network namespace is not its own");
    let steps = steps(&p, ChildFds::default());
    check_order(&p, &steps);
    assert_eq!(steps[0].kind(), StepKind::BecomeRoot);
    assert_eq!(last(&steps, StepKind::BecomeRoot), 0);
    let k = kinds(&steps);
    assert!(!k.contains(&StepKind::MountSys) && !k.contains(&StepKind::MountCgroup));

    let with_net = plan(
        "unpriv",
        &def(&format!("[namespaces]\nnet = \"private\"\n{USERNS}")),
    )
    .unwrap();
    let steps = super::steps(&with_net, ChildFds::default());
    check_order(&with_net, &steps);
    assert!(first(&steps, StepKind::MountSys) < first(&steps, StepKind::MountCgroup));
}

#[test]
fn volumes_and_writable_paths_come_after_tmp_and_run() {
    let p = plan("web", &def(VOLUMES)).unwrap();
    let steps = steps(&p, ChildFds::default());
    check_order(&p, &steps);
    let shown: Vec<String> = steps
        .iter()
        .filter(|s| {
            matches!(
                s.kind(),
                StepKind::Tmpfs | StepKind::Bind | StepKind::MakeMountPoint
            )
        })
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        shown,
        [
            "tmpfs /tmp",
            "tmpfs /run",
            "mkdir /var/www",
            "bind /srv/www onto /var/www",
            "mkdir /run/keel",
            "bind /run/keel onto /run/keel",
            "mkdir /var/cache",
            "tmpfs /var/cache",
            "mkdir /data",
            "bind /var/lib/keel/web/data onto /data",
            "mkdir /tmp/scratch",
            "tmpfs /tmp/scratch",
        ]
    );
    // Binds and tmpfs land after /dev is read-only: they are not in /dev.
    let dev_ro = first(&steps, StepKind::RemountDevReadonly);
    assert!(first(&steps, StepKind::Tmpfs) > dev_ro);
    let readonly: Vec<bool> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Bind { readonly, .. } => Some(*readonly),
            _ => None,
        })
        .collect();
    assert_eq!(
        readonly,
        [true, false, false],
        "volumes are read-only unless said"
    );
    let cache = steps.iter().find_map(|s| match s {
        Step::Tmpfs {
            inside, options, ..
        } if inside == Path::new("/var/cache") => Some(options.as_str()),
        _ => None,
    });
    assert_eq!(cache, Some("mode=0755,uid=0,gid=0,size=1048576"));
}

#[test]
fn a_console_service_gets_the_tty_and_no_output_pipe() {
    let mut d = def("");
    d.console = true;
    let p = plan("admin", &d).unwrap();
    let tty = p.console.clone().unwrap();
    let steps = steps(
        &p,
        ChildFds {
            out: None,
            notify: None,
        },
    );
    check_order(&p, &steps);
    let k = kinds(&steps);
    assert!(k.contains(&StepKind::ConsoleStdio) && !k.contains(&StepKind::NullStdin));
    let devices: Vec<(String, String)> = steps
        .iter()
        .filter_map(|s| match s {
            Step::BindDevice { host, target } => Some((
                host.display().to_string(),
                target.file_name()?.to_string_lossy().into_owned(),
            )),
            _ => None,
        })
        .collect();
    let host = format!("/dev/{tty}");
    assert!(devices.contains(&(host.clone(), "console".into())));
    assert!(devices.contains(&(host, tty)));
}

#[test]
fn devices_get_their_folders_and_go_in_before_dev_is_read_only() {
    let p = plan("gpu", &def("devices = [\"/dev/dri/card0\", \"/dev/kvm\"]")).unwrap();
    let steps = steps(&p, ChildFds::default());
    check_order(&p, &steps);
    let pts = first(&steps, StepKind::MountDevPts);
    let after_pts: Vec<String> = steps[pts + 1..first(&steps, StepKind::RemountDevReadonly)]
        .iter()
        .map(|s| match s {
            Step::MakeDir { path } => {
                format!("mkdir {}", path.strip_prefix(&p.root).unwrap().display())
            }
            other => other.to_string(),
        })
        .collect();
    assert_eq!(
        after_pts,
        [
            "mkdir dev/dri",
            "bind device /dev/dri/card0",
            "mkdir dev",
            "bind device /dev/kvm",
        ]
    );
}

#[test]
fn the_notify_fd_is_moved_to_3_or_kept_there() {
    let p = plan("web", &def("[readiness]\nnotify = true")).unwrap();
    assert!(p
        .env
        .iter()
        .any(|e| e.to_bytes() == format!("KEEL_NOTIFY_FD={NOTIFY_FD}").as_bytes()));
    let moved = steps(
        &p,
        ChildFds {
            out: Some(5),
            notify: Some(6),
        },
    );
    assert!(moved.iter().any(|s| matches!(
        s,
        Step::Dup {
            from: 6,
            to: NOTIFY_FD
        }
    )));
    let kept = steps(
        &p,
        ChildFds {
            out: Some(5),
            notify: Some(NOTIFY_FD),
        },
    );
    assert!(kept
        .iter()
        .any(|s| matches!(s, Step::KeepOpen { fd: NOTIFY_FD })));
}

#[test]
fn masks_follow_the_system_paths_of_the_definition() {
    let p = plan("web", &def("")).unwrap();
    let steps = steps(&p, ChildFds::default());
    let masked = steps.iter().filter(|s| s.kind() == StepKind::Mask).count();
    let readonly = steps
        .iter()
        .filter(|s| s.kind() == StepKind::ReadOnly)
        .count();
    assert_eq!((masked, readonly), (p.masked.len(), p.readonly.len()));
    assert!(masked > 0 && readonly > 0);
    assert!(steps.iter().any(|s| matches!(s,
        Step::Mask { at, path } if at.ends_with(path.trim_start_matches('/')) && at.starts_with(&p.root))));
}

#[test]
fn plan_sets_namespaces_from_the_definition() {
    let d = def("capabilities = [\"CAP_NET_BIND_SERVICE\"]\n[namespaces]\nnet = \"private\"");
    let p = plan("web", &d).unwrap();
    let want = (libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWCGROUP
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS) as u64;
    assert_eq!(p.flags, want);
    assert_eq!(p.confine.caps, 1 << 10);
    assert!(p.confine.no_new_privs && p.confine.seccomp.is_some());
    assert_eq!(p.hostname.as_deref(), Some("web"));
    assert!(p.root.ends_with("web/rootfs"));
}

#[test]
fn what_cannot_be_planned_is_permanent() {
    let mut d = def("");
    d.env.push("A=\0".into());
    let e = plan("web", &d).unwrap_err();
    assert!(
        matches!(
            &e,
            LaunchError::Nul {
                what: "env entry",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.is_permanent());
    let mut d = def("");
    d.command.clear();
    let e = plan("web", &d).unwrap_err();
    assert!(matches!(e, LaunchError::EmptyCommand) && e.is_permanent());
    let mut d = def("");
    d.capabilities.push("CAP_NOPE".into());
    let e = plan("web", &d).unwrap_err();
    assert!(matches!(e, LaunchError::Confinement(_)) && e.is_permanent());
    assert!(e.to_string().contains("CAP_NOPE"), "{e}");
}

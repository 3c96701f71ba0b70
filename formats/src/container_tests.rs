use super::*;

const ADMIN: &str = r#"
description = "admin shell"
command = ["/bin/sh"]
console = true
capabilities = ["CAP_KILL"]
[namespaces]
pid = "host"
[rootfs]
contents = ["busybox", "keelctl"]
[[mounts]]
source = "/run/keel"
target = "/run/keel"
"#;

#[test]
fn parses_with_defaults() {
    let d = ContainerDef::parse(ADMIN).unwrap();
    assert_eq!(d.namespaces.pid, Share::Host);
    assert_eq!(d.namespaces.net, Share::Host);
    assert_eq!(d.namespaces.uts, Share::Private);
    assert_eq!(d.restart, RestartPolicy::Always);
    assert!(d.mounts[0].readonly);
    assert_eq!(d.hostname_for("admin"), "admin");
    validate("admin", &d).unwrap();
}

#[test]
fn the_admin_shell_runs_as_the_admin_user() {
    let admin = ContainerDef::parse(include_str!("../../system-containers/admin.toml")).unwrap();
    assert_eq!(
        (admin.user.uid, admin.user.gid),
        (crate::ADMIN_UID, crate::ADMIN_GID)
    );
    assert!(admin.capabilities.is_empty());
    validate("admin", &admin).unwrap();
}

#[test]
fn waits_and_system_path_exceptions_are_checked() {
    let long =
        ContainerDef::parse(&format!("stop_timeout_ms = 9000000000000000000\n{ADMIN}")).unwrap();
    let e = validate("admin", &long).unwrap_err().to_string();
    assert!(
        e.starts_with("`stop_timeout_ms`: 9000000000000000000 is more"),
        "{e}"
    );
    let unmask = ContainerDef::parse(&format!(
        "{ADMIN}[system_paths]\nunmasked = [\"/proc/kcore\"]\n"
    ))
    .unwrap();
    validate("admin", &unmask).unwrap();
    assert!(!unmask.system_paths.masked().any(|p| p == "/proc/kcore"));
    let typo = ContainerDef::parse(&format!(
        "{ADMIN}[system_paths]\nwritable = [\"/proc/sys/kernel\"]\n"
    ))
    .unwrap();
    let e = validate("admin", &typo).unwrap_err().to_string();
    assert!(
        e.starts_with("`system_paths`: writable: \"/proc/sys/kernel\""),
        "{e}"
    );
}

#[test]
fn namespace_defaults_do_not_depend_on_the_table_being_there() {
    let without = ContainerDef::parse("command = [\"/x\"]\n[rootfs]\ncontents = []\n").unwrap();
    let with =
        ContainerDef::parse("command = [\"/x\"]\n[namespaces]\n[rootfs]\ncontents = []\n").unwrap();
    assert_eq!(without.namespaces, with.namespaces);
    assert_eq!(without.namespaces.net, Share::Host);
    assert_eq!(without.namespaces.pid, Share::Private);
}

#[test]
fn unknown_key_is_an_error_with_line() {
    let err = ContainerDef::parse(&format!("{ADMIN}\n[rootfs2]\nx = 1\n")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("rootfs2") && msg.contains("line"), "{msg}");
}

#[test]
fn validation_names_the_bad_value() {
    let mut d = ContainerDef::parse(ADMIN).unwrap();
    d.capabilities.push("CAP_FLY".into());
    assert_eq!(
        validate("admin", &d),
        Err(ContainerError::UnknownCapability("CAP_FLY".into()))
    );
    let mut d = ContainerDef::parse(ADMIN).unwrap();
    d.command = vec!["sh".into()];
    assert_eq!(
        validate("admin", &d),
        Err(ContainerError::RelativeCommand("sh".into()))
    );
    let d = ContainerDef::parse(ADMIN).unwrap();
    assert_eq!(
        validate("Admin", &d),
        Err(ContainerError::BadName("Admin".into()))
    );
    let mut d = ContainerDef::parse(ADMIN).unwrap();
    d.stop_signal = "SIGSEGV".into();
    assert_eq!(
        validate("admin", &d),
        Err(ContainerError::BadStopSignal("SIGSEGV".into()))
    );
    let mut d = ContainerDef::parse(ADMIN).unwrap();
    d.mounts[0].source = "/run/../etc".into();
    assert!(matches!(
        validate("admin", &d),
        Err(ContainerError::BadMountPath(_))
    ));
}

#[test]
fn limits_are_parsed_and_checked() {
    let text = format!(
        "{ADMIN}\n[resources]\nmemory_max = \"16M\"\npids_max = 32\ncpu_weight = 50\n[rlimits]\nnofile = 256\n[[writable]]\npath = \"/data\"\nkind = \"persistent\"\n"
    );
    let d = ContainerDef::parse(&text).unwrap();
    validate("admin", &d).unwrap();
    assert_eq!(d.resources.memory_max, Some(crate::limits::Size(16 << 20)));
    assert!(d.no_new_privs);
    assert_eq!(d.stop_timeout_ms, 5000);

    let bad = |extra: &str| {
        // Top-level keys must come before the sample's tables.
        let text = if extra.starts_with('[') {
            format!("{ADMIN}\n{extra}")
        } else {
            format!("{extra}\n{ADMIN}")
        };
        let d = ContainerDef::parse(&text).unwrap();
        match validate("admin", &d) {
            Err(ContainerError::Invalid { key, .. }) => key,
            other => panic!("{extra}: {other:?}"),
        }
    };
    assert_eq!(bad("[resources]\ncpu_weight = 0\n"), "resources.cpu_weight");
    assert_eq!(bad("[rlimits]\nfiles = 1\n"), "rlimits.files");
    assert_eq!(bad("oom_score_adj = 2000\n"), "oom_score_adj");
    assert_eq!(bad("devices = [\"/etc/passwd\"]\n"), "devices");
    assert_eq!(
        bad("[[writable]]\npath = \"/a/../b\"\nkind = \"tmpfs\"\n"),
        "writable.path"
    );
    let e = ContainerDef::parse(&format!("{ADMIN}\n[resources]\nmemory = 1\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("memory") && e.contains("line"), "{e}");
}

#[test]
fn capability_numbers_match_the_kernel() {
    assert_eq!(capability_number("CAP_CHOWN"), Some(0));
    assert_eq!(capability_number("CAP_NET_BIND_SERVICE"), Some(10));
    assert_eq!(capability_number("CAP_SYS_ADMIN"), Some(21));
    assert_eq!(capability_number("CAP_CHECKPOINT_RESTORE"), Some(40));
}

//! A recipe's `[files]` and `[host] config` end up in the root filesystem
//! with the modes asked for; a host config that is not TOML stops the
//! build naming the file; the lock file covers both.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use keel_tests::{image_recipe, keel_bin, musl_bin_dir, output_text};

fn keel(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(keel_bin()).args(args).output().unwrap()
}

fn build(recipe: &Path, out: &Path, locked: bool) -> Output {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "build".as_ref(),
        recipe.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--bin-dir".as_ref(),
    ];
    let bins = musl_bin_dir();
    args.push(bins.as_os_str());
    if locked {
        args.push("--locked".as_ref());
    }
    keel(&args)
}

#[test]
fn extra_files_and_the_default_host_config_are_in_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("motd"), "welcome to keel\n").unwrap();
    std::fs::create_dir_all(d.join("tools")).unwrap();
    std::fs::write(d.join("tools/hello.sh"), "#!/bin/sh\necho hello\n").unwrap();
    std::fs::set_permissions(
        d.join("tools/hello.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(d.join("defaults.toml"), "hostname = \"keel-default\"\n").unwrap();
    let recipe = image_recipe(d, "0.6.0", &["admin"], "", "");
    let mut text = std::fs::read_to_string(&recipe).unwrap();
    text.push_str(
        "\n[files]\n\"etc/motd\" = { source = \"motd\", mode = 0o600 }\n\"usr/share/tools\" = \"tools\"\n\
         \n[host]\nconfig = \"defaults.toml\"\n",
    );
    std::fs::write(&recipe, &text).unwrap();

    let out = d.join("out");
    let o = build(&recipe, &out, false);
    assert!(o.status.success(), "{}", output_text(&o));
    let root = d.join("root");
    let fsck = Command::new("fsck.erofs")
        .arg(format!("--extract={}", root.display()))
        .arg(out.join("root.erofs"))
        .output()
        .expect("fsck.erofs (erofs-utils)");
    assert!(fsck.status.success(), "{}", output_text(&fsck));
    let mode = |p: &str| {
        std::fs::metadata(root.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(
        std::fs::read_to_string(root.join("etc/motd")).unwrap(),
        "welcome to keel\n"
    );
    assert_eq!(mode("etc/motd"), 0o600);
    assert_eq!(mode("usr/share/tools/hello.sh"), 0o755);
    assert_eq!(
        std::fs::read_to_string(root.join("usr/lib/keel/host.toml")).unwrap(),
        "hostname = \"keel-default\"\n"
    );

    // Locked, then a changed extra file is caught by name.
    let lock = keel(&["lock".as_ref(), recipe.as_os_str()]);
    assert!(lock.status.success(), "{}", output_text(&lock));
    std::fs::write(d.join("tools/hello.sh"), "#!/bin/sh\necho changed\n").unwrap();
    let o = build(&recipe, &d.join("out2"), true);
    assert!(!o.status.success());
    assert!(
        output_text(&o).contains("file /usr/share/tools: locked"),
        "{}",
        output_text(&o)
    );

    // A default host config that is not TOML: the build stops, naming it.
    std::fs::write(d.join("defaults.toml"), "hostname = \n").unwrap();
    let o = build(&recipe, &d.join("out3"), false);
    assert!(!o.status.success());
    let msg = output_text(&o);
    assert!(
        msg.contains("`host.config`") && msg.contains("defaults.toml:1:12: "),
        "{msg}"
    );
    // ... and one that names a service the image does not have.
    std::fs::write(
        d.join("defaults.toml"),
        "[services.nginx]\nenabled = false\n",
    )
    .unwrap();
    let o = build(&recipe, &d.join("out3"), false);
    assert!(!o.status.success());
    let msg = output_text(&o);
    assert!(
        msg.contains("defaults.toml:1:11: `services.nginx`: the image has no service \"nginx\"; it has admin"),
        "{msg}"
    );

    // Replacing a file keel owns is refused, naming the key.
    std::fs::write(d.join("defaults.toml"), "hostname = \"x\"\n").unwrap();
    text.push_str("\n[files.\"usr/lib/os-release\"]\nsource = \"motd\"\n");
    std::fs::write(&recipe, &text).unwrap();
    let o = build(&recipe, &d.join("out4"), false);
    assert!(!o.status.success());
    assert!(
        output_text(&o).contains("files.usr/lib/os-release: /usr/lib/os-release is keel's own"),
        "{}",
        output_text(&o)
    );
}

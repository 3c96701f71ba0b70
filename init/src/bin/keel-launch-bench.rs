//! keel-launch-bench ROOTFS CGROUP_DIR N: start `/bin/true` N times with
//! keel-init's own launcher (every namespace, its own cgroup, the default
//! seccomp profile, no capabilities, no_new_privs, read-only root) and
//! print one line per run with the microseconds from spawn to reaped exit.
//! `cargo xtask bench init` compares these with crun and runc.

// Per crate root: [workspace.lints] cannot be extended per crate.
#![deny(clippy::arithmetic_side_effects)]

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use keel_formats::container::ContainerDef;
use keel_init::launch;

const DEF: &str = r#"
command = ["/bin/true"]
[namespaces]
net = "private"
[rootfs]
contents = []
"#;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, cgroup, n] = args.as_slice() else {
        bail!("usage: keel-launch-bench ROOTFS CGROUP_DIR N");
    };
    let n: usize = n.parse().context("N")?;
    let def = ContainerDef::parse(DEF)?;
    let mut plan = launch::plan("bench", &def)?;
    plan.root = PathBuf::from(root);
    let cg = launch::open_cgroup(std::path::Path::new(cgroup)).with_context(|| cgroup.clone())?;
    for _ in 0..n {
        let start = Instant::now();
        let pid = launch::spawn(&plan, &cg, launch::Io::default())?;
        let status = nix::sys::wait::waitpid(pid, None)?;
        let us = start.elapsed().as_micros();
        if !matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0)) {
            bail!("/bin/true ended with {status:?}");
        }
        println!("{us}");
    }
    Ok(())
}

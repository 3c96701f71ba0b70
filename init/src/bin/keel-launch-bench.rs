//! keel-launch-bench ROOTFS CGROUP_DIR N: start `/bin/true` N times with
//! keel-init's own launcher (every namespace, its own cgroup, the default
//! seccomp profile, no capabilities, no_new_privs, read-only root) and
//! print one line per run with the microseconds from spawn to reaped exit.
//! `cargo xtask bench init` compares these with crun and runc.
//!
//! keel-launch-bench run DEFINITION ROOTFS CGROUP_DIR: what crun and runc
//! do per command, as one whole process: read a container definition,
//! plan it (seccomp filter compiled, /proc paths masked as the OCI
//! defaults do), open the cgroup, start it, reap it, exit with its status.
//! `cargo xtask bench init` times this command like theirs.
//!
//! keel-launch-bench net ROOTFS CGROUP_DIR N MIB, in a network namespace
//! of its own (`unshare --net`): the same start with and without a veth
//! on a bridge, alternately (`plain US`, `net US` lines), then MIB MiB
//! over TCP to a sink on the host, from the host over loopback and from a
//! container through the bridge, alternately (`loopback BYTES US`,
//! `bridge BYTES US`). The container runs this binary (copied into ROOTFS
//! as /bin/keel-launch-bench) as `send`; keel's nf_tables rules for the
//! bridge are in force, as on a host. `cargo xtask bench net` reads it.

// Per crate root: [workspace.lints] cannot be extended per crate.
#![deny(clippy::arithmetic_side_effects)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use keel_formats::container::{ContainerDef, NetInterface};
use keel_init::launch;
use keel_init::net::netlink::Netlink;

const DEF: &str = r#"
command = ["/bin/true"]
[namespaces]
net = "private"
[rootfs]
contents = []
"#;

const BRIDGE: &str = "kbench0";
const HOST: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
const CONTAINER: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
const PORT: u16 = 5201;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("net") => return net(&args[1..]),
        Some("sink") => return sink(),
        Some("send") => return send(&args[1..]),
        Some("run") => return run_once(&args[1..]),
        _ => {}
    }
    let [root, cgroup, n] = args.as_slice() else {
        bail!("usage: keel-launch-bench ROOTFS CGROUP_DIR N | net ROOTFS CGROUP_DIR N MIB");
    };
    let n: usize = n.parse().context("N")?;
    let def = ContainerDef::parse(DEF)?;
    let mut plan = launch::plan("bench", &def)?;
    plan.root = PathBuf::from(root);
    let cg = launch::open_cgroup(Path::new(cgroup)).with_context(|| cgroup.clone())?;
    for _ in 0..n {
        println!("{}", start(&plan, &cg)?);
    }
    Ok(())
}

fn run_once(args: &[String]) -> anyhow::Result<()> {
    let [def, root, cgroup] = args else {
        bail!("usage: keel-launch-bench run DEFINITION ROOTFS CGROUP_DIR");
    };
    let text = std::fs::read_to_string(def).with_context(|| def.clone())?;
    let def = ContainerDef::parse(&text).with_context(|| def.clone())?;
    let mut plan = launch::plan("bench", &def)?;
    plan.root = PathBuf::from(root);
    let cg = launch::open_cgroup(Path::new(cgroup)).with_context(|| cgroup.clone())?;
    start(&plan, &cg)?;
    Ok(())
}

/// Start `plan` and reap it: the microseconds it took.
fn start(plan: &launch::Plan, cg: &std::fs::File) -> anyhow::Result<u128> {
    let started = Instant::now();
    let pid = launch::spawn(plan, cg, launch::Io::default())?;
    let status = nix::sys::wait::waitpid(pid, None)?;
    let us = started.elapsed().as_micros();
    if !matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0)) {
        bail!("{:?} ended with {status:?}", plan.argv.first());
    }
    Ok(us)
}

fn net(args: &[String]) -> anyhow::Result<()> {
    let [root, cgroup, n, mib] = args else {
        bail!("usage: keel-launch-bench net ROOTFS CGROUP_DIR N MIB");
    };
    let n: usize = n.parse().context("N")?;
    keel_init::sys::loopback_up().map_err(|e| anyhow::anyhow!("loopback: {e}"))?;
    let mut nl = Netlink::open().map_err(anyhow::Error::msg)?;
    let index = nl.ensure_bridge(BRIDGE).map_err(anyhow::Error::msg)?;
    nl.add_address_nodad(index, &IpAddr::V4(HOST), 24)
        .map_err(anyhow::Error::msg)?;
    // keel's own rules for the bridge, as on a host: conntrack, NAT and
    // the firewall, which lets the container reach the sink's port only.
    use keel_init::net::nft;
    nft::apply(&nft::Ruleset {
        bridges: vec![nft::Bridge {
            name: BRIDGE.into(),
            v4: Some((HOST, 24)),
            v6: None,
        }],
        containers_may_reach: vec![nft::HostPort {
            proto: nft::Proto::Tcp,
            first: PORT,
            last: PORT,
        }],
        ..Default::default()
    })?;
    let cg = launch::open_cgroup(Path::new(cgroup)).with_context(|| cgroup.clone())?;
    let def = ContainerDef::parse(DEF)?;
    let planned = |with_net: bool| -> anyhow::Result<launch::Plan> {
        let mut p = launch::plan("bench", &def)?;
        p.root = PathBuf::from(root);
        if with_net {
            p.interfaces = vec![NetInterface {
                bridge: BRIDGE.into(),
                addresses: vec![(IpAddr::V4(CONTAINER), 24)],
                gateways: vec![IpAddr::V4(HOST)],
            }];
        }
        Ok(p)
    };
    let plain = planned(false)?;
    let mut with_net = planned(true)?;
    for i in 0..n {
        println!("plain {}", start(&plain, &cg)?);
        // A name of its own each time: the kernel removes the veths of a
        // namespace that is gone a while after.
        with_net.veth_base = format!("kb{i:x}");
        println!("net {}", start(&with_net, &cg)?);
    }

    let mut sink = Command::new("/proc/self/exe")
        .arg("sink")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(sink.stdout.take().context("sink stdout")?).lines();
    // It says when it listens.
    lines.next().context("the sink ended")??;
    let mut sender = planned(true)?;
    sender.argv = [
        "/bin/keel-launch-bench",
        "send",
        &format!("{HOST}:{PORT}"),
        mib,
    ]
    .into_iter()
    .map(std::ffi::CString::new)
    .collect::<Result<_, _>>()?;
    for i in 0..n.clamp(1, 5) {
        let st = Command::new("/proc/self/exe")
            .args(["send", &format!("127.0.0.1:{PORT}"), mib])
            .status()?;
        if !st.success() {
            bail!("send over loopback: {st}");
        }
        println!("loopback {}", lines.next().context("the sink ended")??);
        sender.veth_base = format!("ks{i:x}");
        start(&sender, &cg)?;
        println!("bridge {}", lines.next().context("the sink ended")??);
    }
    let _ = sink.kill();
    let _ = sink.wait();
    Ok(())
}

/// Take connections one after another on the bench port and say, for
/// each, the bytes read and the microseconds from accept to its end.
fn sink() -> anyhow::Result<()> {
    let l = TcpListener::bind(("0.0.0.0", PORT))?;
    println!("listening");
    let mut buf = vec![0u8; 1 << 20];
    for s in l.incoming() {
        let mut s = s?;
        let started = Instant::now();
        let mut total: u64 = 0;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total = total.saturating_add(n as u64);
        }
        println!("{total} {}", started.elapsed().as_micros());
        std::io::stdout().flush()?;
    }
    Ok(())
}

/// Write MIB MiB to ADDR:PORT.
fn send(args: &[String]) -> anyhow::Result<()> {
    let [to, mib] = args else {
        bail!("usage: keel-launch-bench send ADDR:PORT MIB");
    };
    let mib: usize = mib.parse().context("MIB")?;
    let mut s = TcpStream::connect(to.as_str()).with_context(|| to.clone())?;
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..mib {
        s.write_all(&chunk)?;
    }
    Ok(())
}

//! keel-vmm on this machine's own /dev/kvm. Its KVM enters guests but
//! cannot run a Linux guest to the end (DESIGN.md), which is enough to
//! check the parts that run before and beside the guest for real: device
//! setup, both seccomp filters in place while the VMM thread serves its
//! console socket (accept, read input, replace a client) and its disk.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_tests::{disk_image, musl_bin_dir};

fn alive(child: &mut Child, what: &str) {
    if let Some(st) = child.try_wait().unwrap() {
        panic!(
            "keel-vmm ended {what}: {st:?}{}",
            if st.signal() == Some(libc::SIGSYS) {
                " (killed by its seccomp filter)"
            } else {
                ""
            }
        );
    }
}

#[test]
fn the_console_socket_is_served_under_seccomp() {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "this test needs /dev/kvm (DESIGN.md: these machines have it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let socket = dir.path().join("console");
    let mut child = Command::new(musl_bin_dir().join("keel-vmm"))
        .arg("--kernel")
        .arg(disk_image().with_file_name("vmlinuz"))
        .args(["--memory", "64"])
        .arg("--disk")
        .arg(&disk)
        .arg("--serial")
        .arg(format!("socket:{}", socket.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("first vCPU entry"), "{line:?}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut first = loop {
        match UnixStream::connect(&socket) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{}: {e}", socket.display()),
        }
    };
    // Every thread (the VMM thread that serves the socket, each vCPU) is
    // under a filter of its own: checked, not assumed from being alive.
    // The VMM thread installs its filter after starting the vCPUs and
    // setting up its event loop (vm.rs), so after the first vCPU entry
    // and the socket's accepting: wait for it, for a while.
    let unfiltered = || -> Option<String> {
        let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{}/task", child.id()))
            .unwrap()
            .map(|t| t.unwrap().path())
            .collect();
        if tasks.len() < 2 {
            return Some(format!("a VMM thread and a vCPU: {tasks:?}"));
        }
        tasks.iter().find_map(|task| {
            let status = std::fs::read_to_string(task.join("status")).unwrap();
            let filtered = status.lines().any(|l| l == "Seccomp:\t2")
                && status.lines().any(|l| l == "Seccomp_filters:\t1");
            (!filtered).then(|| {
                format!(
                    "{}: not under one seccomp filter:\n{status}",
                    task.display()
                )
            })
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(why) = unfiltered() {
        assert!(Instant::now() < deadline, "{why}");
        std::thread::sleep(Duration::from_millis(50));
    }
    first.write_all(b"typed at the console\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    alive(&mut child, "after console input");
    // A second client replaces the first, whose connection ends.
    let _second = UnixStream::connect(&socket).unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match first.read(&mut buf) {
            Ok(0) => break,
            // Whatever the guest printed before the switch.
            Ok(_) => {}
            Err(e) => panic!("the replaced client was not hung up on: {e}"),
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    alive(&mut child, "after a second client");
    child.kill().unwrap();
    child.wait().unwrap();
}

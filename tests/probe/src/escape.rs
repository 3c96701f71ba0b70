//! `keel-probe escape [--pid N]... [--cgroup FILE]...`: try, from inside a
//! container, each thing docs/containers.md says a container cannot do,
//! with arguments that would work if it were allowed, and print one line
//! per try: `ROW: refused (ERRNO)` or `ROW: ALLOWED ...`. `--pid` names
//! processes of other services and PID 1 (as the host numbers them);
//! `--cgroup` another service's cgroup files. Ends with `escape: done`.
//!
//! A row counts as refused only for the errnos that a permission check
//! gives (EPERM, EACCES, EROFS, or the path or process not being there at
//! all): an EFAULT or EINVAL would mean the kernel let the call through
//! to its arguments.

use std::ffi::CString;
use std::io::{Read, Write};

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn name(e: i32) -> String {
    match e {
        libc::EPERM => "EPERM".into(),
        libc::EACCES => "EACCES".into(),
        libc::EROFS => "EROFS".into(),
        libc::ENOENT => "ENOENT".into(),
        libc::ESRCH => "ESRCH".into(),
        libc::EFAULT => "EFAULT".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::ENOSYS => "ENOSYS".into(),
        libc::EBADF => "EBADF".into(),
        other => format!("errno {other}"),
    }
}

/// Print the verdict of one row: refused when `err` is one of `refusals`.
fn row(what: &str, err: Option<i32>, refusals: &[i32]) {
    match err {
        Some(e) if refusals.contains(&e) => println!("{what}: refused ({})", name(e)),
        Some(e) => println!("{what}: ALLOWED (got {}, not a refusal)", name(e)),
        None => println!("{what}: ALLOWED"),
    }
}

const DENIED: &[i32] = &[libc::EPERM, libc::EACCES, libc::EROFS];
const DENIED_OR_GONE: &[i32] = &[
    libc::EPERM,
    libc::EACCES,
    libc::EROFS,
    libc::ENOENT,
    libc::ESRCH,
];

fn write_file(path: &str, text: &str) -> Option<i32> {
    match std::fs::OpenOptions::new().write(true).open(path) {
        Err(e) => e.raw_os_error(),
        Ok(mut f) => f
            .write_all(text.as_bytes())
            .err()
            .and_then(|e| e.raw_os_error()),
    }
}

/// Refused if the file cannot be opened or reads as empty (masked).
fn read_something(what: &str, path: &str) {
    let mut buf = [0u8; 64];
    match std::fs::File::open(path).and_then(|mut f| f.read(&mut buf)) {
        Err(e) => row(what, e.raw_os_error(), DENIED_OR_GONE),
        Ok(0) => println!("{what}: refused (reads empty)"),
        Ok(n) => println!("{what}: ALLOWED (read {n} bytes)"),
    }
}

fn syscall_row(what: &str, r: libc::c_long) {
    row(what, (r < 0).then(errno), &[libc::EPERM]);
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

// One table of escapes, tried in order: long, and flat on purpose.
pub fn run(args: &[String]) {
    let mut pids = Vec::new();
    let mut cgroups = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.next()) {
            ("--pid", Some(p)) => pids.push(p.parse::<i32>().unwrap_or(0)),
            ("--cgroup", Some(f)) => cgroups.push(f.clone()),
            _ => println!("escape: bad argument {a:?}"),
        }
    }

    row(
        "sysctl kernel.randomize_va_space",
        write_file("/proc/sys/kernel/randomize_va_space", "0"),
        DENIED,
    );
    row(
        "sysctl vm.overcommit_ratio",
        write_file("/proc/sys/vm/overcommit_ratio", "37"),
        DENIED,
    );
    // 'h' only prints the help text, should the write go through.
    row(
        "sysrq",
        write_file("/proc/sysrq-trigger", "h"),
        DENIED_OR_GONE,
    );
    read_something("read /proc/kcore", "/proc/kcore");
    read_something("read /proc/keys", "/proc/keys");
    read_something("read /proc/timer_list", "/proc/timer_list");
    read_something("read raw disk /dev/vda", "/dev/vda");
    read_something("read raw disk /dev/sda", "/dev/sda");

    // The root disk's device number as the host has it (virtio-blk 254:0).
    let node = c("/tmp/keel-probe-vda");
    // SAFETY: mknod with a valid C string and integer arguments.
    let made = unsafe { libc::mknod(node.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(254, 0)) };
    if made != 0 {
        row("mknod block device", Some(errno()), &[libc::EPERM]);
    } else {
        // Made: it must still not open (a nodev mount).
        match std::fs::File::open("/tmp/keel-probe-vda") {
            Err(e) => row("mknod block device (made, open)", e.raw_os_error(), DENIED),
            Ok(_) => println!("mknod block device: ALLOWED (opened)"),
        }
        let _ = std::fs::remove_file("/tmp/keel-probe-vda");
    }

    let (none, tmp, tmpfs) = (c("none"), c("/tmp"), c("tmpfs"));
    // SAFETY: mount with valid C strings and no data.
    let r = unsafe {
        libc::mount(
            none.as_ptr(),
            tmp.as_ptr(),
            tmpfs.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    syscall_row("mount", r as libc::c_long);
    let empty = c("");
    // SAFETY: the module calls check CAP_SYS_MODULE before they read their
    // arguments; a NULL image and fd -1 load nothing even if allowed.
    syscall_row("init_module", unsafe {
        libc::syscall(libc::SYS_init_module, 0, 0, empty.as_ptr())
    });
    // SAFETY: as above.
    syscall_row("finit_module", unsafe {
        libc::syscall(libc::SYS_finit_module, -1, empty.as_ptr(), 0)
    });
    // SAFETY: no segments: loads nothing even if allowed.
    syscall_row("kexec_load", unsafe {
        libc::syscall(libc::SYS_kexec_load, 0, 0, 0, 0)
    });
    // BPF_MAP_CREATE of an array map of one u32.
    let mut attr = [0u32; 32];
    attr[0] = 2; // BPF_MAP_TYPE_ARRAY
    attr[1] = 4;
    attr[2] = 4;
    attr[3] = 1;
    // SAFETY: bpf with a live attribute buffer of the size passed.
    let r = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_mut_ptr(), 128) };
    if r >= 0 {
        // SAFETY: closing the map fd bpf returned.
        unsafe { libc::close(r as i32) };
    }
    syscall_row("bpf", r);
    // In a child, so that a namespace the call made goes with it.
    // SAFETY: fork in this single-threaded probe; the child only calls
    // unshare and _exit.
    match unsafe { libc::fork() } {
        0 => {
            // SAFETY: unshare with a flag; _exit ends the child.
            unsafe {
                let r = libc::unshare(libc::CLONE_NEWUSER);
                libc::_exit(if r == 0 { 0 } else { errno().clamp(1, 255) });
            }
        }
        child if child > 0 => {
            let mut status = 0;
            // SAFETY: waitpid on our own child with a live status word.
            unsafe { libc::waitpid(child, &mut status, 0) };
            let code = libc::WEXITSTATUS(status);
            row(
                "unshare user namespace",
                (code != 0).then_some(code),
                &[libc::EPERM],
            );
        }
        _ => println!("unshare user namespace: fork failed: {}", name(errno())),
    }

    for pid in pids {
        // SAFETY: ptrace attach with integer arguments; a successful attach
        // is detached at once.
        let r = unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0) };
        if r == 0 {
            // SAFETY: as above.
            unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) };
        }
        row(
            &format!("ptrace {pid}"),
            (r != 0).then(errno),
            DENIED_OR_GONE,
        );
        // SAFETY: signal 0 only checks permission.
        let r = unsafe { libc::kill(pid, 0) };
        row(
            &format!("signal {pid}"),
            (r != 0).then(errno),
            DENIED_OR_GONE,
        );
        read_something(
            &format!("read /proc/{pid}/environ"),
            &format!("/proc/{pid}/environ"),
        );
        read_something(
            &format!("read /proc/{pid}/mem"),
            &format!("/proc/{pid}/mem"),
        );
        match std::fs::read_dir(format!("/proc/{pid}/root/")) {
            Err(e) => row(
                &format!("list /proc/{pid}/root"),
                e.raw_os_error(),
                DENIED_OR_GONE,
            ),
            Ok(_) => println!("list /proc/{pid}/root: ALLOWED"),
        }
    }
    for file in cgroups {
        row(
            &format!("write {file}"),
            write_file(&file, "max"),
            DENIED_OR_GONE,
        );
    }
    println!("escape: done");
}

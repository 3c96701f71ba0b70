//! A test helper run inside keel containers.
//!
//! `keel-probe syscall NAME`: make system call NAME with all-zero
//! arguments and print `NAME: OK` or `NAME: <errno name>`, to tell a
//! seccomp denial (EPERM before the call runs) from the kernel's own answer
//! (EFAULT for mount's NULL target, ENOSYS for kexec_load on a kernel
//! without kexec).
//!
//! `keel-probe escape ...`: the escape suite's tries (see `escape.rs`).
//!
//! `keel-probe connect ADDR:PORT`: one TCP connection, 3 s at most, and
//! how it went: `connect: connected`, `refused` (a reset, as a firewall's
//! reject gives), `timed out` (dropped) or the error.
//!
//! `keel-probe dns NAME=ADDRESS...`: a DNS server for the network tests
//! (see `dns.rs`).
//!
//! `keel-probe forkbomb`: every process forks without end; only the cgroup's
//! pids.max stops it. A refused fork is retried after a pause so that the
//! bomb holds its processes without burning a CPU.

use std::process::ExitCode;

mod dns;
mod escape;

fn number(name: &str) -> Option<libc::c_long> {
    Some(match name {
        "mount" => libc::SYS_mount,
        "umount2" => libc::SYS_umount2,
        "kexec_load" => libc::SYS_kexec_load,
        "init_module" => libc::SYS_init_module,
        "bpf" => libc::SYS_bpf,
        "unshare" => libc::SYS_unshare,
        "ptrace" => libc::SYS_ptrace,
        "reboot" => libc::SYS_reboot,
        "getpid" => libc::SYS_getpid,
        _ => return None,
    })
}

fn errno_name(e: i32) -> String {
    match e {
        libc::EPERM => "EPERM".into(),
        libc::EFAULT => "EFAULT".into(),
        libc::ENOSYS => "ENOSYS".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::EACCES => "EACCES".into(),
        libc::ESRCH => "ESRCH".into(),
        other => format!("errno {other}"),
    }
}

fn connect(addr: &str) {
    use std::net::ToSocketAddrs;
    let to = match addr.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => a,
        Ok(None) | Err(_) => {
            println!("connect: bad address {addr}");
            return;
        }
    };
    match std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(3)) {
        Ok(_) => println!("connect: connected"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => println!("connect: refused"),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => println!("connect: timed out"),
        Err(e) => println!("connect: {e}"),
    }
}

fn forkbomb() -> ! {
    let mut told = false;
    loop {
        // SAFETY: fork in a single-threaded process; both sides go on with
        // this same loop and touch nothing shared.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            if !told {
                println!(
                    "forkbomb: fork refused: {}",
                    std::io::Error::last_os_error()
                );
                told = true;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args == ["forkbomb"] {
        forkbomb();
    }
    if args.first().is_some_and(|a| a == "dns") {
        if let Err(e) = dns::run(&args[1..]) {
            eprintln!("keel-probe dns: {e}");
            return ExitCode::FAILURE;
        }
        return ExitCode::SUCCESS;
    }
    if let [cmd, addr] = args.as_slice() {
        if cmd == "connect" {
            connect(addr);
            return ExitCode::SUCCESS;
        }
    }
    if args.first().is_some_and(|a| a == "escape") {
        escape::run(&args[1..]);
        return ExitCode::SUCCESS;
    }
    let [cmd, name] = args.as_slice() else {
        eprintln!("usage: keel-probe syscall NAME");
        return ExitCode::from(2);
    };
    let Some(nr) = number(name).filter(|_| cmd == "syscall") else {
        eprintln!("keel-probe: unknown call {name:?}");
        return ExitCode::from(2);
    };
    // SAFETY: every probed call accepts zero/NULL arguments and then fails
    // (EFAULT, EINVAL, ENOSYS) or is refused before it runs; getpid and
    // unshare(0) have no effect worth undoing.
    let r = unsafe { libc::syscall(nr, 0, 0, 0, 0, 0, 0) };
    if r < 0 {
        println!(
            "{name}: {}",
            errno_name(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        );
    } else {
        println!("{name}: OK");
    }
    ExitCode::SUCCESS
}

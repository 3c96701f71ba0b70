//! Facts about a running service read from /proc, for `keelctl status`.

use nix::unistd::Pid;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcFacts {
    /// PID inside the service's own PID namespace (last NSpid field).
    pub ns_pid: Option<i32>,
    /// Whether the process's root mount is read-only.
    pub root_readonly: Option<bool>,
}

pub fn parse_ns_pid(status: &str) -> Option<i32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|v| v.split_whitespace().next_back())
        .and_then(|v| v.parse().ok())
}

/// From mountinfo: is the mount at "/" read-only?
pub fn parse_root_readonly(mountinfo: &str) -> Option<bool> {
    mountinfo
        .lines()
        .rfind(|l| l.split_whitespace().nth(4) == Some("/"))
        .and_then(|l| l.split_whitespace().nth(5))
        .map(|opts| opts.split(',').any(|o| o == "ro"))
}

pub fn proc_facts(pid: Pid) -> ProcFacts {
    let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).ok();
    ProcFacts {
        ns_pid: read("status").as_deref().and_then(parse_ns_pid),
        root_readonly: read("mountinfo").as_deref().and_then(parse_root_readonly),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ns_pid_and_root_mode() {
        assert_eq!(parse_ns_pid("Name:\thttpd\nNSpid:\t57\t1\n"), Some(1));
        assert_eq!(parse_ns_pid("NSpid:\t42\n"), Some(42));
        let mi = "21 1 0:20 / / ro,nosuid,nodev - erofs /dev/keel-root ro\n22 21 0:5 / /proc rw - proc proc rw\n";
        assert_eq!(parse_root_readonly(mi), Some(true));
        assert_eq!(
            parse_root_readonly("1 0 8:1 / / rw,relatime - ext4 /dev/sda rw\n"),
            Some(false)
        );
    }
}

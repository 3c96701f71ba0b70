//! The host effects of converging on a config, behind one trait so that
//! [`super::converge`] decides what to do without root and its tests see
//! every effect it asks for.

use std::path::Path;

use keel_formats::hostconfig::HostConfig;

use crate::net::interfaces::Applied;

/// Where keel-init puts `admin.ssh.authorized_keys` for the ssh service.
pub const SSH_KEYS_DIR: &str = "/run/keel/ssh";

/// What converging on a config does to the host. Each method reports what
/// did not take; none stops the others.
pub trait Effects {
    fn set_hostname(&mut self, name: &str) -> Result<(), String>;
    fn write_sysctl(&mut self, key: &str, value: &str) -> Result<(), String>;
    /// Devices, taps and disk ownership for the config's VMs.
    fn prepare_vms(&mut self, c: &HostConfig) -> Vec<String>;
    /// Remove the addresses and routes `old` set that `new` does not list.
    fn withdraw_network(&mut self, old: &HostConfig, new: &HostConfig) -> Vec<String>;
    /// Bring the config's interfaces up with their addresses and routes.
    fn apply_network(&mut self, c: &HostConfig) -> Applied;
    /// The host's resolv.conf, from the config's resolvers.
    fn write_dns(&mut self, c: &HostConfig) -> Result<(), String>;
    /// The update policy in force, where keel-update reads it.
    fn write_update_policy(&mut self, c: &HostConfig) -> Result<(), String>;
    /// `admin.ssh.authorized_keys`, where the ssh service reads them, and
    /// `admin.remote`'s certificates and key, where keel-remote does.
    fn write_admin_files(&mut self, c: &HostConfig) -> Result<(), String>;
}

/// The real host.
#[derive(Debug, Default)]
pub struct RealHost;

impl Effects for RealHost {
    fn set_hostname(&mut self, name: &str) -> Result<(), String> {
        nix::unistd::sethostname(name).map_err(|e| e.to_string())
    }

    fn write_sysctl(&mut self, key: &str, value: &str) -> Result<(), String> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn prepare_vms(&mut self, c: &HostConfig) -> Vec<String> {
        crate::vms::prepare(c, &mut crate::vms::RealVmHost)
    }

    fn withdraw_network(&mut self, old: &HostConfig, new: &HostConfig) -> Vec<String> {
        match crate::net::netlink::Netlink::open() {
            Ok(mut netlink) => crate::net::interfaces::withdraw(old, new, &mut netlink),
            Err(e) => vec![e],
        }
    }

    fn apply_network(&mut self, c: &HostConfig) -> Applied {
        crate::net::netlink::Netlink::open()
            .map(|mut netlink| crate::net::interfaces::apply(c, &mut netlink))
            .unwrap_or_else(|e| Applied {
                warnings: vec![e],
                dhcp: Vec::new(),
            })
    }

    fn write_dns(&mut self, c: &HostConfig) -> Result<(), String> {
        write_dns(c)
    }

    fn write_update_policy(&mut self, c: &HostConfig) -> Result<(), String> {
        write_update_policy(c)
    }

    fn write_admin_files(&mut self, c: &HostConfig) -> Result<(), String> {
        let ssh = write_ssh_keys(c);
        let remote = write_remote_tls(c);
        match (ssh, remote) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
            (Err(a), Err(b)) => Err(format!("{a}; {b}")),
        }
    }
}

/// Write `admin.remote`'s CA, certificate and key where keel-remote reads
/// them: a folder root owns (so the service cannot plant links in it for
/// root to follow) and only keel-remote's group may read, files 0640
/// root:keel-remote, so the admin shell, which shares /run/keel, cannot
/// read the host's key. The new folder is made whole beside the old one
/// and swapped in with one rename (RENAME_EXCHANGE): a connection sees the
/// old three files or the new three. With the remote API off, removed.
fn write_remote_tls(c: &HostConfig) -> Result<(), String> {
    use keel_formats::pki::{REMOTE_CA, REMOTE_CERT, REMOTE_DIR, REMOTE_KEY};
    use keel_formats::REMOTE_GID;
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = Path::new(REMOTE_DIR);
    let next = Path::new(REMOTE_DIR).with_extension("new");
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let gone = |p: &Path| match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(err(p, e)),
        _ => Ok(()),
    };
    let r = &c.admin.remote;
    gone(&next)?;
    if !(c.admin.enabled && r.enabled) {
        return gone(dir);
    }
    std::fs::create_dir(&next).map_err(|e| err(&next, e))?;
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o750))
        .map_err(|e| err(&next, e))?;
    std::os::unix::fs::chown(&next, Some(0), Some(REMOTE_GID)).map_err(|e| err(&next, e))?;
    for (name, text) in [
        (REMOTE_CA, &r.ca),
        (REMOTE_CERT, &r.cert),
        (REMOTE_KEY, &r.key),
    ] {
        let path = next.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| err(&path, e))?;
        std::os::unix::fs::fchown(&f, Some(0), Some(REMOTE_GID)).map_err(|e| err(&path, e))?;
        f.write_all(text.as_deref().unwrap_or_default().as_bytes())
            .map_err(|e| err(&path, e))?;
    }
    if dir.exists() {
        exchange(&next, dir)?;
        gone(&next)
    } else {
        std::fs::rename(&next, dir).map_err(|e| err(dir, e))
    }
}

/// Swap two paths in one step (renameat2 with RENAME_EXCHANGE). By raw
/// system call: nix offers renameat2 on glibc only, and keel-init is built
/// against musl.
fn exchange(a: &Path, b: &Path) -> Result<(), String> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    const RENAME_EXCHANGE: libc::c_uint = 1 << 1;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes()).map_err(|e| format!("{}: {e}", p.display()))
    };
    let (ca, cb) = (c(a)?, c(b)?);
    // SAFETY: both paths are NUL-terminated C strings that outlive the
    // call; renameat2 reads them and touches no memory of ours otherwise.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(format!(
            "swapping {} and {}: {}",
            a.display(),
            b.display(),
            std::io::Error::last_os_error()
        ))
    }
}

/// Write `admin.ssh.authorized_keys` where the ssh service reads them
/// (the admin user's ~/.ssh): root's, readable by the admin group only
/// and writable by nobody else, as dropbear wants it.
fn write_ssh_keys(c: &HostConfig) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = Path::new(SSH_KEYS_DIR);
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let admin = |p: &Path| {
        std::os::unix::fs::chown(p, Some(0), Some(keel_formats::ADMIN_GID)).map_err(|e| err(p, e))
    };
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
        .map_err(|e| err(dir, e))?;
    admin(dir)?;
    let file = dir.join("authorized_keys");
    let keys: String = c
        .admin
        .ssh
        .authorized_keys
        .iter()
        .map(|k| format!("{}\n", k.trim()))
        .collect();
    std::fs::write(&file, keys).map_err(|e| err(&file, e))?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640))
        .map_err(|e| err(&file, e))?;
    admin(&file)
}

/// Write the host's resolv.conf when the config names resolvers (and
/// mark them as the host's, so a DHCP lease's do not replace them); else
/// leave it to the DHCP client, with an empty file until a lease comes.
/// Written in place: containers may bind the file itself.
fn write_dns(c: &HostConfig) -> Result<(), String> {
    use keel_formats::host::{DNS_DIR, DNS_STATIC_MARK, RESOLV_CONF};
    let err = |p: &'static str| move |e: std::io::Error| format!("{p}: {e}");
    std::fs::create_dir_all(DNS_DIR).map_err(err(DNS_DIR))?;
    let servers = super::derive::dns_servers(c);
    if servers.is_empty() {
        let _ = std::fs::remove_file(DNS_STATIC_MARK);
        if !Path::new(RESOLV_CONF).exists() {
            std::fs::write(RESOLV_CONF, "").map_err(err(RESOLV_CONF))?;
        }
        return Ok(());
    }
    let text: String = servers
        .iter()
        .map(|s| format!("nameserver {s}\n"))
        .collect();
    std::fs::write(
        RESOLV_CONF,
        format!("# From the host config (network.dns).\n{text}"),
    )
    .map_err(err(RESOLV_CONF))?;
    std::fs::write(DNS_STATIC_MARK, "").map_err(err(DNS_STATIC_MARK))
}

/// Write the policy in force where keel-update reads it first.
fn write_update_policy(c: &HostConfig) -> Result<(), String> {
    use keel_formats::policy::{HOST_POLICY_FILE, POLICY_FILE};
    let image = std::fs::read_to_string(POLICY_FILE).ok();
    let p = super::derive::update_policy(image.as_deref(), c);
    let text = toml::to_string(&p).map_err(|e| e.to_string())?;
    let tmp = format!("{HOST_POLICY_FILE}.tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("{tmp}: {e}"))?;
    std::fs::rename(&tmp, HOST_POLICY_FILE).map_err(|e| format!("{HOST_POLICY_FILE}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_swaps_two_folders_whole() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(a.join("f"), "old").unwrap();
        std::fs::write(b.join("f"), "new").unwrap();
        exchange(&b, &a).unwrap();
        assert_eq!(std::fs::read_to_string(a.join("f")).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(b.join("f")).unwrap(), "old");
        let e = exchange(&d.path().join("none"), &a).unwrap_err();
        assert!(e.contains("none"), "{e}");
    }
}

//! keel-init as PID 1 of a fresh PID namespace on this machine: new mount,
//! UTS, IPC, network, PID and cgroup namespaces under a cgroup of its own,
//! the root switched the way stage 1 does it. Used by the host integration
//! test and by `cargo xtask bench init`. Needs root.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use keel_image_builder::cache::Cache;
use keel_image_builder::package::Package;
use keel_image_builder::recipe;

/// Busybox as the default image has it, from the build cache.
pub fn cached_busybox(workspace: &Path) -> Result<Package, String> {
    let image =
        recipe::load_image(&workspace.join("recipes/host.toml")).map_err(|e| e.to_string())?;
    let pkg = recipe::load_package(&image.resolve(&format!(
        "{}/busybox.toml",
        image.recipe.userland.packages_dir
    )))
    .map_err(|e| e.to_string())?;
    let cache = Cache::new(Cache::default_root().map_err(|e| e.to_string())?);
    keel_image_builder::package::ensure(
        &cache,
        "busybox",
        &pkg,
        2,
        &mut keel_image_builder::progress::Quiet,
    )
    .map_err(|e| e.to_string())
}

/// The unified (v2) cgroup hierarchy's mount point here.
pub fn cgroup2_mount() -> Result<PathBuf, String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    info.lines()
        .find(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|t| t.starts_with("cgroup2 "))
        })
        .and_then(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .ok_or_else(|| "no cgroup2 hierarchy is mounted".to_string())
}

/// A running keel-init. Dropping it kills the namespace (SIGKILL to its
/// init takes every process in it along) and removes its cgroup.
#[derive(Debug)]
pub struct HostInit {
    child: Child,
    rx: mpsc::Receiver<String>,
    /// keel-init's console so far.
    pub console: String,
    /// keel-init's PID here (it is 1 inside).
    pub init_pid: u32,
    pub cgroup: PathBuf,
}

impl HostInit {
    /// Start keel-init in `root` (a staged root filesystem) and wait for
    /// its ready line.
    pub fn start(root: &Path, timeout: Duration) -> Result<HostInit, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let cg = cgroup2_mount()?.join(format!("keel-host-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&cg).map_err(|e| format!("{}: {e}", cg.display()))?;
        // A plain chroot would forbid creating user namespaces, so the root
        // is moved over / first, as stage 1 does.
        let script = format!(
            "echo $$ > {cg}/cgroup.procs && exec unshare --mount --uts --ipc --net --pid --fork --cgroup --propagation private -- \
             sh -c 'R={root}; mount --bind $R $R && mount -t proc proc $R/proc && mount --rbind /dev $R/dev && \
             mount -t sysfs sysfs $R/sys && mount -t tmpfs tmpfs $R/var && \
             cd $R && mount --move . / && exec chroot . /usr/bin/keel-init'",
            cg = cg.display(),
            root = root.display()
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("sh: {e}"))?;
        let mut stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                if tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
                {
                    break;
                }
            }
        });
        let mut host = HostInit {
            child,
            rx,
            console: String::new(),
            init_pid: 0,
            cgroup: cg,
        };
        let deadline = Instant::now() + timeout;
        while !host.console.contains("keel: ready ") {
            match host
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(c) => host.console.push_str(&c),
                Err(_) => return Err(format!("keel-init never said ready:\n{}", host.console)),
            }
        }
        let pid = host.child.id();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .map_err(|e| e.to_string())?;
        host.init_pid = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or("no keel-init")?;
        Ok(host)
    }

    /// Run keelctl (from `bin_dir`) against this keel-init's API socket.
    pub fn keelctl(&self, bin_dir: &Path, args: &[&str]) -> Result<String, String> {
        let socket = format!("/proc/{}/root/run/keel/api.sock", self.init_pid);
        let out = Command::new(bin_dir.join("keelctl"))
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "keelctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Wait for the namespace to end; the console up to then.
    pub fn wait(&mut self, timeout: Duration) -> Result<std::process::ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = self.child.try_wait().map_err(|e| e.to_string())? {
                // Gone: its PID is not ours to kill any more.
                self.init_pid = 0;
                break st;
            }
            if Instant::now() > deadline {
                return Err("keel-init did not shut down".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        while let Ok(c) = self.rx.recv_timeout(Duration::from_millis(200)) {
            self.console.push_str(&c);
        }
        Ok(status)
    }
}

impl Drop for HostInit {
    fn drop(&mut self) {
        if self.init_pid != 0 {
            // SAFETY: kill with a pid and a signal number has no memory
            // preconditions.
            unsafe { libc::kill(self.init_pid as i32, libc::SIGKILL) };
        }
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(200));
        let mut dirs = vec![self.cgroup.clone()];
        let mut i = 0;
        while i < dirs.len() {
            if let Ok(rd) = std::fs::read_dir(&dirs[i]) {
                dirs.extend(
                    rd.filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| p.is_dir()),
                );
            }
            i += 1;
        }
        for d in dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

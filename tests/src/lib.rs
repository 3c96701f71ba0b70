//! Support for keel's end-to-end tests: finding the artifacts that
//! `cargo xtask test` built, and driving a guest's serial console.
//!
//! Everything here fails loudly: a missing artifact or tool is a test
//! failure that says what to run, never a skip.

pub mod escape;
pub mod etcd;
pub mod fixtures;
pub mod host;
pub mod http;
pub mod registry;
pub mod throttle;
pub mod updates;
pub mod vmm_guest;
pub mod volatile;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Generous limits: they only stop a hung guest, they measure nothing.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// An artifact named by an environment variable that `cargo xtask test`
/// sets, or its usual place in the workspace.
pub fn artifact(var: &str, default: &str) -> PathBuf {
    let p = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(default));
    assert!(
        p.exists(),
        "{} is missing ({var}); run the tests with `cargo xtask test`, which builds it",
        p.display()
    );
    p
}

pub fn disk_image() -> PathBuf {
    artifact("KEEL_DISK", "out/disk.img")
}

/// The image with the test containers of `tests/containers/`.
pub fn test_disk_image() -> PathBuf {
    artifact("KEEL_TEST_DISK", "out/test/disk.img")
}

pub fn keel_bin() -> PathBuf {
    artifact("KEEL_BIN", "target/release/keel")
}

pub fn musl_bin_dir() -> PathBuf {
    artifact(
        "KEEL_MUSL_BIN_DIR",
        "target/x86_64-unknown-linux-musl/release",
    )
}

/// Write `dir/keel-VERSION.toml`: the default image's kernel and userland
/// at `version`, with the containers `enable` (from tests/containers and
/// system-containers), `cmdline` added to the kernel's, and `update_policy`
/// (TOML lines) as `[update.policy]`. For tests and benchmarks that build
/// several versions of an image.
pub fn image_recipe(
    dir: &Path,
    version: &str,
    enable: &[&str],
    cmdline: &str,
    update_policy: &str,
) -> PathBuf {
    let ws = workspace();
    let ws = ws.display();
    let text = format!(
        r#"[image]
name = "keel"
version = "{version}"

[kernel]
source = "linux-source-6.1"
base = "tinyconfig"
fragments = ["{ws}/kernel-config/keel.config"]
required = "{ws}/kernel-config/required.txt"
cmdline = "console=ttyS0 panic=5 oops=panic loglevel=4 {cmdline}"

[userland]
packages = ["busybox"]
packages_dir = "{ws}/recipes/packages"

[containers]
dirs = ["{ws}/tests/containers", "{ws}/system-containers"]
enable = {enable:?}

[partitions]
esp_mib = 64
root_mib = 128
verity_mib = 8
data_mib = 64

[update.policy]
{update_policy}
"#
    );
    let path = dir.join(format!("keel-{version}.toml"));
    std::fs::write(&path, text).expect("writing a recipe");
    path
}

/// A TCP port on 127.0.0.1 that nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// A command's stdout then stderr, for assertions and failure messages.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `keel build RECIPE --out OUT --bin-dir <musl builds> [SIGN_KEY]`; panics
/// if the build fails. Returns `out`.
pub fn keel_build(recipe: &Path, out: &Path, sign_key: Option<&Path>) -> PathBuf {
    keel_build_with(recipe, out, sign_key, &[])
}

/// [`keel_build`] with more arguments (`--secure-boot-key KEY`).
pub fn keel_build_with(
    recipe: &Path,
    out: &Path,
    sign_key: Option<&Path>,
    extra: &[&std::ffi::OsStr],
) -> PathBuf {
    let mut cmd = Command::new(keel_bin());
    cmd.arg("build")
        .arg(recipe)
        .arg("--out")
        .arg(out)
        .arg("--bin-dir")
        .arg(musl_bin_dir())
        .args(extra);
    if let Some(k) = sign_key {
        cmd.arg("--sign-key").arg(k);
    }
    let st = cmd.status().expect("running keel build");
    assert!(st.success(), "keel build {} failed", recipe.display());
    out.to_path_buf()
}

/// Copy a disk image, keeping it sparse.
pub fn copy_disk(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(st.success(), "copying {} failed", from.display());
}

/// A line keel-init (`keel: …`) or the kernel (`[    1.234567] …`) wrote
/// to the console.
fn is_console_noise(line: &str) -> bool {
    let printk = line
        .strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .is_some_and(|(stamp, _)| {
            !stamp.trim().is_empty()
                && stamp
                    .chars()
                    .all(|c| c == ' ' || c == '.' || c.is_ascii_digit())
        });
    line.starts_with("keel: ") || printk
}

/// A keel guest booted with `keel run`, its serial console on pipes.
#[derive(Debug)]
pub struct Guest {
    child: Child,
    stdin: ChildStdin,
    rx: mpsc::Receiver<(Instant, String)>,
    /// Everything the console printed so far.
    pub transcript: String,
    /// When each part of the transcript arrived: (its end, the time),
    /// stamped by the reading thread, so the times are right even for a
    /// console nobody was waiting on.
    stamps: Vec<(usize, Instant)>,
    /// Where the next `expect` starts looking.
    cursor: usize,
}

impl Guest {
    /// Boot `disk`; a reboot of the guest ends QEMU.
    pub fn boot(disk: &Path) -> Guest {
        Guest::boot_with(disk, false, &[])
    }

    /// Boot `disk`; with `reboots`, the guest may reboot (into whatever
    /// systemd-boot picks); `forwards`: (port on 10.0.2.100, port on
    /// 127.0.0.1).
    pub fn boot_with(disk: &Path, reboots: bool, forwards: &[(u16, u16)]) -> Guest {
        let mut cmd = Command::new(keel_bin());
        cmd.args(["run", "--accel", "tcg", "--memory", "512"]);
        if !reboots {
            cmd.arg("--no-reboot");
        }
        for (guest, host) in forwards {
            cmd.arg(format!("--forward={guest}:{host}"));
        }
        Guest::spawn(cmd.arg(disk))
    }

    /// Boot `disk` with `publish`: (port on this machine's 127.0.0.1,
    /// port of the guest), like `keel run --publish`.
    pub fn boot_publishing(disk: &Path, publish: &[(u16, u16)]) -> Guest {
        let mut cmd = Command::new(keel_bin());
        cmd.args(["run", "--accel", "tcg", "--memory", "512", "--no-reboot"]);
        for (host, guest) in publish {
            cmd.arg(format!("--publish={host}:{guest}"));
        }
        Guest::spawn(cmd.arg(disk))
    }

    /// Boot `disk` with `forwards` (as [`Guest::boot_with`]) and `publish`
    /// (as [`Guest::boot_publishing`]); a reboot of the guest ends QEMU.
    pub fn boot_forwarding(disk: &Path, forwards: &[(u16, u16)], publish: &[(u16, u16)]) -> Guest {
        let mut cmd = Command::new(keel_bin());
        cmd.args(["run", "--accel", "tcg", "--memory", "512", "--no-reboot"]);
        for (guest, host) in forwards {
            cmd.arg(format!("--forward={guest}:{host}"));
        }
        for (host, guest) in publish {
            cmd.arg(format!("--publish={host}:{guest}"));
        }
        Guest::spawn(cmd.arg(disk))
    }

    /// Boot the kernel and initramfs beside `disk` without firmware
    /// (`keel run --direct`).
    pub fn boot_direct(disk: &Path) -> Guest {
        let mut cmd = Command::new(keel_bin());
        cmd.args([
            "run",
            "--accel",
            "tcg",
            "--memory",
            "512",
            "--no-reboot",
            "--direct",
        ])
        .arg(disk);
        Guest::spawn(&mut cmd)
    }

    /// Boot `disk` with Secure Boot enforced (`keel run --secure-boot`):
    /// the firmware's variables are in `vars`, made with the keys of
    /// `keys` enrolled if missing. As [`Guest::boot_with`] otherwise.
    pub fn boot_secure(
        disk: &Path,
        vars: &Path,
        keys: &Path,
        tpm: Option<&Path>,
        reboots: bool,
        forwards: &[(u16, u16)],
    ) -> Guest {
        let mut cmd = Command::new(keel_bin());
        cmd.args(["run", "--accel", "tcg", "--memory", "512", "--secure-boot"])
            .arg("--secure-boot-keys")
            .arg(keys)
            .arg("--vars")
            .arg(vars);
        if let Some(state) = tpm {
            cmd.arg("--tpm").arg(state);
        }
        if !reboots {
            cmd.arg("--no-reboot");
        }
        for (guest, host) in forwards {
            cmd.arg(format!("--forward={guest}:{host}"));
        }
        Guest::spawn(cmd.arg(disk))
    }

    /// Boot `disk` without Secure Boot, with the TPM whose state is in
    /// `tpm` (the firmware's variables in `vars`); no reboots.
    pub fn boot_tpm(disk: &Path, vars: &Path, tpm: &Path) -> Guest {
        let mut cmd = Command::new(keel_bin());
        cmd.args(["run", "--accel", "tcg", "--memory", "512", "--no-reboot"])
            .arg("--vars")
            .arg(vars)
            .arg("--tpm")
            .arg(tpm)
            .arg(disk);
        Guest::spawn(&mut cmd)
    }

    /// Boot a block device; the firmware's variables go to `vars`.
    pub fn boot_device(device: &Path, vars: &Path) -> Guest {
        let mut cmd = Command::new(keel_bin());
        cmd.args(["run", "--accel", "tcg", "--memory", "512", "--no-reboot"])
            .arg("--vars")
            .arg(vars)
            .arg(device);
        Guest::spawn(&mut cmd)
    }

    /// Boot the disk a [`volatile::VolatileDisk`] serves, which loses every
    /// write not yet flushed when QEMU is killed; the firmware's variables
    /// go to `vars`. As [`Guest::boot_with`] otherwise.
    pub fn boot_volatile(
        disk: &volatile::VolatileDisk,
        vars: &Path,
        reboots: bool,
        forwards: &[(u16, u16)],
    ) -> Guest {
        use keel_image_builder::qemu;
        if !vars.exists() {
            std::fs::copy(qemu::OVMF_VARS, vars).expect("copying the firmware's variables");
        }
        let o = qemu::RunOptions {
            disk: disk.qemu_file(),
            vars: vars.to_path_buf(),
            accel: qemu::Accel::Tcg,
            memory_mib: 512,
            cpus: 1,
            no_reboot: !reboots,
            forwards: forwards.to_vec(),
            publish: Vec::new(),
            direct: None,
            secure_boot: None,
            tpm: None,
        };
        Guest::spawn(Command::new("qemu-system-x86_64").args(qemu::qemu_args(&o, false)))
    }

    fn spawn(cmd: &mut Command) -> Guest {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting keel run");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0
                    || tx
                        .send((
                            Instant::now(),
                            String::from_utf8_lossy(&buf[..n]).into_owned(),
                        ))
                        .is_err()
                {
                    break;
                }
            }
        });
        Guest {
            child,
            stdin,
            rx,
            transcript: String::new(),
            stamps: Vec::new(),
            cursor: 0,
        }
    }

    fn take(&mut self, (at, chunk): (Instant, String)) {
        self.transcript.push_str(&chunk);
        self.stamps.push((self.transcript.len(), at));
    }

    /// Take in what the console printed so far, without waiting.
    pub fn pump(&mut self) {
        while let Ok(c) = self.rx.try_recv() {
            self.take(c);
        }
    }

    /// Where the next [`Guest::expect`] starts looking in the transcript.
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// When the console printed each occurrence of `pattern` so far (as
    /// far as [`Guest::pump`] or an `expect` took it in).
    pub fn times(&self, pattern: &str) -> Vec<Instant> {
        self.transcript
            .match_indices(pattern)
            .filter_map(|(at, _)| {
                let end = at + pattern.len();
                self.stamps.iter().find(|(e, _)| *e >= end).map(|(_, t)| *t)
            })
            .collect()
    }

    /// Wait for `pattern` after the cursor; returns the text up to and
    /// including it and moves the cursor past it.
    pub fn expect(&mut self, pattern: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.transcript[self.cursor..].find(pattern) {
                let end = self.cursor + at + pattern.len();
                let out = self.transcript[self.cursor..end].to_string();
                self.cursor = end;
                return out;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(chunk) => self.take(chunk),
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "no {pattern:?} on the console within {timeout:?}; console so far:\n{}",
                        self.transcript
                    );
                }
            }
        }
    }

    pub fn send(&mut self, text: &str) {
        self.stdin
            .write_all(text.as_bytes())
            .expect("writing to the console");
        self.stdin.flush().expect("flushing the console");
    }

    /// Get a fresh admin prompt: the shell may have printed its first one
    /// before or after keel-init's ready line.
    pub fn prompt(&mut self) {
        self.send("\n");
        self.expect("keel-admin# ", COMMAND_TIMEOUT);
        // A serial console has no size; a wide one keeps the shell from
        // wrapping the commands it echoes.
        self.send("stty cols 4000\n");
        self.expect("keel-admin# ", COMMAND_TIMEOUT);
    }

    /// Run a shell command at the admin prompt and return what it printed.
    /// The end marker is split in the typed line so the echo cannot match.
    pub fn shell(&mut self, command: &str) -> String {
        self.send(&format!("{command}; echo KEEL-END''-OF-OUTPUT\n"));
        let out = self.expect("KEEL-END-OF-OUTPUT", COMMAND_TIMEOUT);
        self.expect("keel-admin# ", COMMAND_TIMEOUT);
        // Drop the echoed command line, which ends with the split marker,
        // and keel-init's own lines, which share the console and can land
        // in the middle of the output (services never print "keel: ").
        let echo_end = out.find("''-OF-OUTPUT").unwrap_or(0);
        out[echo_end..]
            .split_once('\n')
            .map(|(_, rest)| rest.to_string())
            .unwrap_or_default()
            .replace("KEEL-END-OF-OUTPUT", "")
            .replace('\r', "")
            .split_inclusive('\n')
            .filter(|l| !l.starts_with("keel: "))
            .collect()
    }

    /// `keelctl status --json` at the admin prompt, parsed.
    pub fn status(&mut self) -> serde_json::Value {
        let raw = self.shell("keelctl status --json");
        // keel-init and the kernel share the console: drop their lines,
        // which can land between the lines of the JSON.
        let json: String = raw
            .lines()
            .filter(|l| !is_console_noise(l))
            .collect::<Vec<_>>()
            .join("\n");
        let start = json
            .find('{')
            .unwrap_or_else(|| panic!("no JSON in:\n{json}"));
        serde_json::from_str(&json[start..]).unwrap_or_else(|e| panic!("{e}:\n{json}"))
    }

    /// One service's entry of [`Guest::status`].
    pub fn service(&mut self, name: &str) -> serde_json::Value {
        let st = self.status();
        st["services"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no service {name} in {st}"))
    }

    /// Write `text` to `path` in the guest with the admin shell's printf
    /// (quotes and newlines kept).
    pub fn write_file(&mut self, path: &str, text: &str) {
        let escaped = text
            .replace('\\', "\\\\")
            .replace('\'', "'\\''")
            .replace('\n', "\\n");
        self.shell(&format!("printf '{escaped}' > {path}"));
    }

    /// Run `command` at the prompt every second until `done` accepts its
    /// output, for at most `tries` times; returns the accepted output.
    pub fn poll_shell(&mut self, command: &str, tries: u32, done: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        for _ in 0..tries {
            last = self.shell(command);
            if done(&last) {
                return last;
            }
            self.shell("sleep 1");
        }
        panic!(
            "`{command}` never gave the expected output; last:\n{last}\nconsole:\n{}",
            self.transcript
        );
    }

    /// Cut the power: QEMU is killed, whatever the guest is doing. What
    /// QEMU had written reaches the disk file; the guest's caches do not.
    pub fn power_cut(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait for QEMU to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            self.pump();
            if let Some(st) = self.child.try_wait().expect("waiting for qemu") {
                while let Ok(chunk) = self.rx.recv_timeout(Duration::from_millis(200)) {
                    self.take(chunk);
                }
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "QEMU did not exit within {timeout:?}; console:\n{}",
                    self.transcript
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

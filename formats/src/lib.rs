//! Formats that both sides of keel must agree on: the image builder writes
//! them, `keel-init` and the updater read them.
//!
//! Nothing in this crate does I/O beyond parsing strings handed to it.

pub mod bootentry;
pub mod bundle;
pub mod chunking;
pub mod cmdline;
pub mod container;
pub mod disk;
pub mod efi;
pub mod host;
pub mod hostconfig;
pub mod initramfs;
pub mod keys;
pub mod lifecycle;
pub mod limits;
pub mod manifest;
pub mod pem;
pub mod pki;
pub mod policy;
pub mod reference;
pub mod repo;
pub mod rollout;
pub mod seccomp;
pub mod signed;
pub mod syspaths;
pub mod tz;
pub mod varcrypt;

/// The version of keel itself, baked into every binary.
pub const KEEL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where system container definitions live inside the root filesystem.
pub const CONTAINERS_DIR: &str = "/usr/lib/keel/containers";

/// Where `keel-init` serves its API.
pub const API_SOCKET: &str = "/run/keel/api.sock";

/// The admin shell's user and group (`system-containers/admin.toml`): not
/// root, so that from the host's PID namespace it can see every process
/// but signal, trace or read the memory and environment of none of them.
/// The group may use the API socket, through which keel-init does what an
/// operator asks.
pub const ADMIN_UID: u32 = 37;
pub const ADMIN_GID: u32 = 37;

/// keel-pull's user and group (`system-containers/pull.toml`): the
/// puller talks to registries, so it is no one else — not root, not a
/// member of any group — and owns only its persistent folder (its socket
/// and its store).
pub const PULL_UID: u32 = 38;
pub const PULL_GID: u32 = 38;

/// keel-remote's user and group (`system-containers/remote.toml`): it
/// holds the host's TLS key, which no other service may read, and is in
/// the admin group only to reach the API sockets.
pub const REMOTE_UID: u32 = 39;
pub const REMOTE_GID: u32 = 39;

/// Directory holding the API socket; bind-mounted into containers that may
/// talk to `keel-init`.
pub const API_DIR: &str = "/run/keel";

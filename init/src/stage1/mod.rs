//! Stage 1, in the initramfs: find the slot's partitions, open dm-verity
//! over the root with the root hash from the (signed) command line, mount
//! the root read-only and `/var`, then switch root and exec PID 1 proper.

pub mod blockdev;
pub mod dm;
pub mod ext4;
pub mod kmod;
pub mod varcrypt;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::MsFlags;

use keel_formats::cmdline::{to_hex, BootParams, TOP_BLOCK_OFFSET};
use keel_formats::disk::{Slot, DATA_LABEL, VERITY_BLOCK_SIZE};

use keel_api::init::VarStorage;

use crate::log;
use crate::sys::{self, mkdir_p};
use blockdev::{find_by_label, BlockDev};

const NEWROOT: &str = "/sysroot";
/// Virtio probing is asynchronous; partitions can appear after init starts.
const DEVICE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Stage1Error {
    #[error(transparent)]
    Sys(#[from] sys::SysError),
    #[error("reading {0}: {1}")]
    Read(&'static str, std::io::Error),
    #[error(transparent)]
    Cmdline(#[from] keel_formats::cmdline::CmdlineError),
    #[error("no partition labelled {0} appeared within {1:?}")]
    NoPartition(String, Duration),
    #[error(transparent)]
    Dm(#[from] dm::DmError),
    #[error("no slot holds the hash tree of root hash {0}")]
    NoSlot(String),
    #[error("the thread {0} panicked")]
    Thread(&'static str),
    #[error(transparent)]
    Var(#[from] varcrypt::VarError),
}

/// Whether this process is stage 1: PID 1 with the initramfs as its root.
pub fn is_stage1() -> bool {
    nix::unistd::getpid().as_raw() == 1
        && matches!(
            sys::fs_magic(Path::new("/")),
            Ok(sys::RAMFS_MAGIC | sys::TMPFS_MAGIC)
        )
}

fn wait_for(label: &str) -> Result<BlockDev, Stage1Error> {
    let start = Instant::now();
    loop {
        if let Some(d) = find_by_label(Path::new("/sys/class/block"), label)
            .map_err(|e| Stage1Error::Read("/sys/class/block", e))?
        {
            return Ok(d);
        }
        if start.elapsed() > DEVICE_WAIT {
            return Err(Stage1Error::NoPartition(label.to_string(), DEVICE_WAIT));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn mount_api_filesystems() -> Result<(), Stage1Error> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    sys::mount(
        Some("devtmpfs"),
        Path::new("/dev"),
        Some("devtmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    sys::mount(Some("proc"), Path::new("/proc"), Some("proc"), nosuid, None)?;
    sys::mount(
        Some("sysfs"),
        Path::new("/sys"),
        Some("sysfs"),
        nosuid,
        None,
    )?;
    // Read-only: nothing on the host writes firmware variables (boot
    // counting renames files on the ESP), and a writable efivarfs lets
    // root delete variables some firmware cannot boot without. It moves
    // into the new root with /sys.
    let efivars = Path::new(keel_formats::efi::EFIVARS);
    if efivars.is_dir() {
        if let Err(e) = sys::mount(
            Some("efivarfs"),
            efivars,
            Some("efivarfs"),
            nosuid | MsFlags::MS_RDONLY,
            None,
        ) {
            log(format!("warning: firmware variables unreadable: {e}"));
        }
    }
    Ok(())
}

/// Where stage 1 mounts the data partition until the root is there to
/// take it as `/var`.
const DATA_STAGING: &str = "/data";

/// Mount the data partition at [`DATA_STAGING`]. Runs beside the root's
/// dm-verity setup: an ext4 mount (journal load) takes as long as that.
fn mount_data(offer: &varcrypt::Offer) -> Result<VarStorage, Stage1Error> {
    let d = wait_for(DATA_LABEL)?;
    let node = Path::new("/dev/keel-data");
    sys::mknod_block(node, (d.major, d.minor))?;
    let sectors = std::fs::read_to_string(format!("/sys/class/block/{}/size", d.name))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let part = varcrypt::Partition {
        node: node.to_path_buf(),
        dev: (d.major, d.minor),
        sectors: sectors.unwrap_or(0),
    };
    let opened = varcrypt::open(&part, offer)?;
    mkdir_p(Path::new(DATA_STAGING), 0o755)?;
    let mounted = sys::mount(
        opened.node.to_str(),
        Path::new(DATA_STAGING),
        Some("ext4"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None,
    );
    if let Err(e) = mounted {
        if opened.sysfs_name.is_some() {
            let _ = dm::remove(varcrypt::MAPPER_NAME);
        }
        return Err(e.into());
    }
    let storage = match opened.sysfs_name {
        Some(_) => VarStorage::Encrypted,
        None => VarStorage::Plain,
    };
    let name = opened.sysfs_name.unwrap_or(d.name);
    let sectors = std::fs::read_to_string(format!("/sys/class/block/{name}/size"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    if let Some(sectors) = sectors {
        let grown = ext4::sectors_to_bytes(sectors)
            .and_then(|size| ext4::grow(&opened.node, size, Path::new(DATA_STAGING)));
        match grown {
            Ok(Some((from, to))) => log(format!(
                "stage 1: /var grown to its partition, {} -> {} MiB",
                from >> 20,
                to >> 20
            )),
            Ok(None) => {}
            Err(e) => log(format!("warning: /var keeps its size: {e}")),
        }
    }
    Ok(storage)
}

/// Put `/var` in place under the new root: the data partition if it
/// mounted, else a `/var` in memory (the host still boots, and says why).
fn mount_var(
    newroot: &Path,
    data: Result<VarStorage, Stage1Error>,
) -> Result<VarStorage, Stage1Error> {
    let var = newroot.join("var");
    let moved = data.and_then(|s| {
        sys::move_mount(Path::new(DATA_STAGING), &var)?;
        Ok(s)
    });
    match moved {
        Ok(s) => Ok(s),
        Err(e) => {
            log(format!(
                "warning: persistent /var unavailable ({e}); using a temporary /var"
            ));
            sys::mount(
                Some("tmpfs"),
                &var,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some("mode=0755"),
            )?;
            Ok(VarStorage::Temporary)
        }
    }
}

/// Load the modules a prebuilt kernel needs for the disk, dm-verity and
/// the filesystems. One that fails is reported, not fatal: if it mattered,
/// the partition it would have shown is what stage 1 says is missing.
fn load_modules() {
    let start = crate::boot_ms();
    match kmod::load_listed(Path::new("/")) {
        Ok(l) => {
            for (name, why) in &l.failed {
                log(format!("warning: kernel module {name} did not load: {why}"));
            }
            if l.loaded > 0 {
                log(format!(
                    "stage 1: {} kernel modules loaded in {} ms",
                    l.loaded,
                    crate::boot_ms().saturating_sub(start)
                ));
            }
        }
        Err(e) => log(format!("warning: reading the module list: {e}")),
    }
}

/// The slot whose verity partition holds the tree of the command line's
/// root hash, and that partition. A UKI names no slot (an update writes
/// the same UKI to either), so its root hash decides.
fn find_slot(params: &BootParams) -> Result<(Slot, BlockDev), Stage1Error> {
    let candidates = match params.slot {
        Some(forced) => vec![forced],
        None => vec![Slot::A, Slot::B],
    };
    for slot in candidates {
        let dev = wait_for(slot.verity_label())?;
        let node = PathBuf::from(format!("/dev/keel-verity-{slot}"));
        sys::mknod_block(&node, (dev.major, dev.minor))?;
        let mut top = vec![0u8; VERITY_BLOCK_SIZE as usize];
        let read =
            std::fs::File::open(&node).and_then(|f| f.read_exact_at(&mut top, TOP_BLOCK_OFFSET));
        let _ = std::fs::remove_file(&node);
        match read {
            Ok(()) if params.verity.is_top_block(&top) => return Ok((slot, dev)),
            Ok(()) => {}
            Err(e) => log(format!("warning: reading {}: {e}", dev.name)),
        }
    }
    Err(Stage1Error::NoSlot(to_hex(&params.verity.root_hash)))
}

/// Run stage 1. On success the new root is `/` and the caller goes on as
/// PID 1.
/// What stage 1 hands to PID 1.
#[derive(Debug, Clone, Copy)]
pub struct Booted {
    /// When stage 1 began, ms since boot.
    pub started_ms: u64,
    pub slot: Slot,
    pub var: VarStorage,
    /// Whether the firmware enforced Secure Boot (its SecureBoot variable).
    pub secure_boot: Option<bool>,
}

pub fn run() -> Result<Booted, Stage1Error> {
    let started_ms = crate::boot_ms();
    mount_api_filesystems()?;
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| Stage1Error::Read("/proc/cmdline", e))?;
    let params = BootParams::parse(&cmdline)?;
    load_modules();
    // What a sealed /var needs is read once, here; PCR 11 moves to the
    // phase whose signed value unseals it.
    let secure_boot = sys::secure_boot();
    let offer = std::sync::Arc::new(varcrypt::Offer::probe(secure_boot));
    varcrypt::enter_initrd(&offer);
    let data = {
        let offer = offer.clone();
        std::thread::spawn(move || mount_data(&offer))
    };
    let (slot, hash) = find_slot(&params)?;
    let root = wait_for(slot.root_label())?;
    let dev = dm::create_verity(
        "keel-root",
        (root.major, root.minor),
        (hash.major, hash.minor),
        &params.verity,
    )?;
    sys::mknod_block(Path::new("/dev/keel-root"), dev)?;

    let newroot = Path::new(NEWROOT);
    mkdir_p(newroot, 0o755)?;
    sys::mount(
        Some("/dev/keel-root"),
        newroot,
        Some("erofs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        None,
    )?;
    let data = data
        .join()
        .unwrap_or(Err(Stage1Error::Thread("mounting /var")));
    // Whatever happened to /var: from here on PCR 11 no longer matches
    // what its key is sealed to. If it cannot be moved on, a host whose
    // key the running system could then unseal does not boot (boot
    // counting moves on); one without an encrypted /var only says so.
    let left = varcrypt::leave_initrd(&offer);
    let var = mount_var(newroot, data)?;
    if let Err(e) = left {
        if var == VarStorage::Encrypted {
            return Err(e.into());
        }
        log(format!("warning: {e}"));
    }
    log(format!(
        "stage 1: slot {} root {} verified by dm-verity, switching root at {} ms",
        slot,
        root.name,
        crate::boot_ms()
    ));

    for d in ["dev", "proc", "sys"] {
        sys::move_mount(&Path::new("/").join(d), &newroot.join(d))?;
    }
    // Free the initramfs: only /init takes memory worth freeing.
    let _ = std::fs::remove_file("/init");
    nix::unistd::chdir(newroot).map_err(|errno| sys::SysError {
        what: "chdir",
        path: NEWROOT.into(),
        errno,
    })?;
    sys::move_mount(Path::new("."), Path::new("/"))?;
    nix::unistd::chroot(".").map_err(|errno| sys::SysError {
        what: "chroot",
        path: NEWROOT.into(),
        errno,
    })?;
    nix::unistd::chdir("/").map_err(|errno| sys::SysError {
        what: "chdir",
        path: "/".into(),
        errno,
    })?;

    // PID 1 goes on in this same process: the binary is already in memory,
    // and reading it again from the root would cost its dm-verity hashing
    // (the initramfs and the root come from the same signed UKI build).
    Ok(Booted {
        started_ms,
        slot,
        var,
        secure_boot,
    })
}

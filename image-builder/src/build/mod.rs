//! `keel build`: recipe → kernel, userland, root filesystem, verity tree,
//! UKI, ESP and GPT disk image.
//!
//! [`build_with`] is the recipe of a build, one call per step; each step
//! lives in the file of this folder named for what it makes.

mod boot;
mod containers;
mod finish;
mod image;
mod manifest;
mod root;
mod sources;

use std::fs;
use std::path::{Path, PathBuf};

use keel_formats::cmdline::to_hex;

use crate::cache::Cache;
use crate::disk;
use crate::progress::Progress;
use crate::recipe::{self, ImageRecipe, Loaded};
use crate::rootfs::{self, StagedContainer};
use crate::tool;
use crate::{esp, kernel, package, uki, verity};

pub use containers::load_containers;

const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
const SYSTEMD_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Recipe(#[from] recipe::RecipeError),
    #[error("{path}: {message}")]
    Container { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is missing: {hint}")]
    Missing { path: PathBuf, hint: String },
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    #[error(transparent)]
    Package(#[from] package::PackageError),
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error(transparent)]
    Verity(#[from] verity::VerityError),
    #[error(transparent)]
    Uki(#[from] uki::UkiError),
    #[error(transparent)]
    Esp(#[from] esp::EspError),
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
    #[error(transparent)]
    Tool(#[from] tool::ToolError),
    #[error(transparent)]
    Output(#[from] crate::outputs::OutputError),
    #[error(transparent)]
    Bundle(#[from] crate::bundle::BundleError),
    #[error(transparent)]
    Zones(#[from] crate::zones::ZoneError),
    #[error("`host.config` {path} is not a valid host config:\n{message}")]
    HostConfig { path: PathBuf, message: String },
    #[error(transparent)]
    Sign(#[from] crate::secureboot::sign::SignError),
    #[error("root filesystem is {size} bytes; partitions.root_mib = {mib} is too small")]
    RootTooLarge { size: u64, mib: u64 },
}

#[derive(Debug, Clone)]
pub struct Options {
    pub recipe: PathBuf,
    pub out: PathBuf,
    pub cache: Cache,
    /// Folder holding the musl builds of `keel-init` and `keelctl`.
    pub bin_dir: PathBuf,
    pub jobs: usize,
    /// Sign an update bundle with this secret key (its public key is
    /// trusted by the image too).
    pub sign_key: Option<PathBuf>,
    /// Sign systemd-boot and the UKI with this Secure Boot db key
    /// (`DIR/db.key`, its certificate `DIR/db.crt` beside it).
    pub secure_boot_key: Option<PathBuf>,
}

/// What a build produced, for the summary and for tests.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The raw disk, unless the recipe's outputs leave it out.
    pub disk: Option<PathBuf>,
    /// The other outputs the recipe asked for (qcow2, direct boot, manifest).
    pub outputs: Vec<PathBuf>,
    pub uki: PathBuf,
    pub uki_name: String,
    pub root: PathBuf,
    pub verity: PathBuf,
    pub root_hash: String,
    pub version: String,
    pub kernel_release: String,
    pub bundle: Option<PathBuf>,
    /// The public Secure Boot files (`out/secure-boot/`), when signed.
    pub secure_boot: Option<PathBuf>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn need(path: &str, hint: &str) -> Result<PathBuf, BuildError> {
    let p = PathBuf::from(path);
    if p.is_file() {
        Ok(p)
    } else {
        Err(BuildError::Missing {
            path: p,
            hint: hint.to_string(),
        })
    }
}

pub fn os_release(r: &ImageRecipe) -> String {
    let (name, v) = (&r.image.name, &r.image.version);
    format!(
        "NAME=keel\nID=keel\nVERSION={v}\nVERSION_ID={v}\nPRETTY_NAME=\"keel {v}\"\nIMAGE_ID={name}\nIMAGE_VERSION={v}\nKEEL_VERSION={}\nKEEL_CONTAINERS=\"{}\"\n",
        keel_formats::KEEL_VERSION,
        r.containers.enable.join(" ")
    )
}

pub fn build(opts: &Options) -> Result<Report, BuildError> {
    build_with(opts, &mut crate::progress::Quiet)
}

/// [`build`], telling `progress` as each step starts, moves and ends.
pub fn build_with(opts: &Options, progress: &mut dyn Progress) -> Result<Report, BuildError> {
    let b = Build::start(opts)?;
    let kernel = b.kernel(progress)?;
    let packages = b.packages(progress)?;
    let sign_key = b.sign_key()?;
    let root = b.root_filesystem(&packages, sign_key.as_ref(), progress)?;

    progress.begin(DISK_STEP);
    let (verity, tree) = b.verity_tree(&root)?;
    let (uki, uki_bytes) = b.uki(&kernel, &tree)?;
    let secure_boot = b.secure_boot_files()?;
    let esp_image = b.esp(&uki.name, uki_bytes, secure_boot.as_deref())?;
    let disk = b.disk(&esp_image, &root, &verity)?;
    progress.end(&format!("{DISK_STEP} {}", disk.display()));
    fs::remove_dir_all(&b.work).map_err(io_err(&b.work))?;
    let made = Made {
        root,
        verity,
        tree,
        uki,
        disk,
    };

    let bundle = b.bundle(sign_key.as_ref(), &made, progress)?;
    let mut outputs: Vec<PathBuf> = made.uki.direct.iter().cloned().collect();
    outputs.extend(b.qcow2(&made.disk, progress)?);
    let manifest = b.manifest(&kernel, &packages, &made, bundle.as_ref(), &outputs)?;
    outputs.extend(manifest);
    let disk = b.prune(&made)?;

    Ok(Report {
        disk,
        outputs,
        root_hash: to_hex(&made.tree.params.root_hash),
        uki: made.uki.path,
        uki_name: made.uki.name,
        root: made.root,
        verity: made.verity,
        version: b.r().image.version.clone(),
        kernel_release: kernel.release,
        bundle,
        secure_boot,
    })
}

/// What the steps up to the disk made, for the steps after it.
struct Made {
    root: PathBuf,
    verity: PathBuf,
    tree: verity::VerityTree,
    uki: boot::Uki,
    /// The raw disk, written even when the recipe leaves it out: the
    /// qcow2 and the manifest are made from it.
    disk: PathBuf,
}

/// One progress step covers everything from the verity tree to the disk.
const DISK_STEP: &str = "verity tree, UKI, ESP, /var and disk";

/// What every step of one build reads.
struct Build<'a> {
    opts: &'a Options,
    recipe: Loaded<ImageRecipe>,
    containers: Vec<StagedContainer>,
    /// What every stable GUID of the image derives from.
    seed: String,
    os_release: String,
    stub: PathBuf,
    boot: PathBuf,
    keel_init: PathBuf,
    keelctl: PathBuf,
    /// The Secure Boot db key, when the build signs.
    signer: Option<crate::secureboot::sign::Signer>,
    /// Scratch space under the output folder, removed once the disk is written.
    work: PathBuf,
}

impl<'a> Build<'a> {
    /// The recipe and its containers loaded, and every host file the build
    /// needs found, before any slow step starts.
    fn start(opts: &'a Options) -> Result<Self, BuildError> {
        let recipe = recipe::load_image(&opts.recipe)?;
        let containers = load_containers(&recipe)?;
        let r = &recipe.recipe;
        let seed = format!("{} {}", r.image.name, r.image.version);
        let os_release = os_release(r);
        let stub = need(SYSTEMD_STUB, "apt-get install systemd-boot-efi")?;
        let boot = need(SYSTEMD_BOOT, "apt-get install systemd-boot-efi")?;
        let keel_init = opts.bin_dir.join("keel-init");
        let keelctl = opts.bin_dir.join("keelctl");
        for b in [&keel_init, &keelctl] {
            if !b.is_file() {
                return Err(BuildError::Missing {
                    path: b.clone(),
                    hint: "build it with `cargo build --release --target x86_64-unknown-linux-musl` (cargo xtask image does)".into(),
                });
            }
        }
        let signer = opts
            .secure_boot_key
            .as_deref()
            .map(crate::secureboot::sign::Signer::from_key)
            .transpose()?;
        let work = opts.out.join("work");
        fs::create_dir_all(&work).map_err(io_err(&work))?;
        Ok(Build {
            opts,
            recipe,
            containers,
            seed,
            os_release,
            stub,
            boot,
            keel_init,
            keelctl,
            signer,
            work,
        })
    }

    fn r(&self) -> &ImageRecipe {
        &self.recipe.recipe
    }
}

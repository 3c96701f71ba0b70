//! `keel build`: recipe → kernel, userland, root filesystem, verity tree,
//! UKI, ESP and GPT disk image.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use keel_formats::cmdline::{to_hex, BootParams};
use keel_formats::container::{self, ContainerDef};
use keel_formats::disk::{uki_file_name, Role, Slot};

use crate::cache::Cache;
use crate::disk::{self, stable_guid, Content, PartSpec};
use crate::progress::Progress;
use crate::recipe::{self, ImageRecipe, Loaded, OutputFormat};
use crate::rootfs::{self, StagedContainer};
use crate::tool;
use crate::{esp, initramfs, kernel, package, uki, verity};

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

/// Load, parse and validate the container definitions a recipe enables.
pub fn load_containers(recipe: &Loaded<ImageRecipe>) -> Result<Vec<StagedContainer>, BuildError> {
    let dirs: Vec<PathBuf> = recipe
        .recipe
        .containers
        .dirs
        .iter()
        .map(|d| recipe.resolve(d))
        .collect();
    let mut out = Vec::new();
    for name in &recipe.recipe.containers.enable {
        // The first folder that has the definition wins.
        let candidates: Vec<PathBuf> = dirs
            .iter()
            .map(|d| d.join(format!("{name}.toml")))
            .collect();
        let path = candidates
            .iter()
            .find(|p| p.is_file())
            .cloned()
            .ok_or_else(|| BuildError::Missing {
                path: candidates.first().cloned().unwrap_or_default(),
                hint: format!(
                    "containers.enable names {name:?}, which none of containers.dirs defines"
                ),
            })?;
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        let bad = |e: container::ContainerError| BuildError::Container {
            path: path.clone(),
            message: e.to_string(),
        };
        let mut def = ContainerDef::parse(&text).map_err(bad)?;
        // An OCI image's config fills in what the definition leaves out;
        // the image keeps the resolved text, so keel-init needs no OCI.
        let mut text = text;
        let mut oci = None;
        if let Some(rel) = def.rootfs.oci.clone() {
            let src = path.parent().unwrap_or(Path::new(".")).join(&rel);
            let image = crate::oci::open(&src).map_err(|e| BuildError::Container {
                path: path.clone(),
                message: format!("`rootfs.oci`: {e}"),
            })?;
            // Read through its layers: the build unpacks it only later,
            // into the root it stages.
            let files = image.in_layers().map_err(|e| BuildError::Container {
                path: path.clone(),
                message: format!("`rootfs.oci` {rel}: {e}"),
            })?;
            text = crate::oci::resolve_text(&text, &image.config, &files).map_err(|m| {
                BuildError::Container {
                    path: path.clone(),
                    message: format!("`rootfs.oci` {rel}: {m}"),
                }
            })?;
            def = ContainerDef::parse(&text).map_err(bad)?;
            oci = Some(std::sync::Arc::new(image));
        }
        container::validate(name, &def).map_err(bad)?;
        keel_formats::seccomp::compile(&def.seccomp).map_err(|e| BuildError::Container {
            path: path.clone(),
            message: format!("`seccomp`: {e}"),
        })?;
        let beside = path.parent().unwrap_or(Path::new("."));
        let files = def
            .rootfs
            .files
            .iter()
            .map(|(dst, src)| (dst.clone(), beside.join(src)))
            .collect();
        out.push(StagedContainer {
            name: name.clone(),
            def,
            text,
            oci,
            files,
        });
    }
    let pairs: Vec<(String, ContainerDef)> = out
        .iter()
        .map(|c| (c.name.clone(), c.def.clone()))
        .collect();
    keel_formats::lifecycle::start_order(&pairs).map_err(|e| BuildError::Container {
        path: recipe.path.clone(),
        message: format!("containers.enable: {e}"),
    })?;
    Ok(out)
}

pub fn os_release(r: &ImageRecipe) -> String {
    let (name, v) = (&r.image.name, &r.image.version);
    format!(
        "NAME=keel\nID=keel\nVERSION={v}\nVERSION_ID={v}\nPRETTY_NAME=\"keel {v}\"\nIMAGE_ID={name}\nIMAGE_VERSION={v}\nKEEL_VERSION={}\nKEEL_CONTAINERS=\"{}\"\n",
        keel_formats::KEEL_VERSION,
        r.containers.enable.join(" ")
    )
}

fn mkfs_ext4(path: &Path, mib: u64, uuid: &str) -> Result<(), BuildError> {
    let f = fs::File::create(path).map_err(io_err(path))?;
    f.set_len(mib << 20).map_err(io_err(path))?;
    drop(f);
    // E2FSPROGS_FAKE_TIME pins every timestamp mke2fs writes, and the
    // hash seed would otherwise be random: both for reproducibility.
    tool::run(
        Command::new("mkfs.ext4")
            .env("E2FSPROGS_FAKE_TIME", "1")
            .args([
                "-q",
                "-F",
                "-b",
                "4096",
                "-L",
                keel_formats::disk::DATA_LABEL,
                "-U",
                uuid,
            ])
            .arg("-E")
            .arg(format!("hash_seed={uuid},root_owner=0:0"))
            .arg(path),
    )?;
    Ok(())
}

/// Build time for what records one: `SOURCE_DATE_EPOCH` when set, so that
/// a rebuild can reproduce it.
fn source_date_epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        })
}

/// The image's trusted keys (the recipe's and the signing key's) and its
/// update policy, as files of the root filesystem.
fn host_files(
    recipe: &Loaded<ImageRecipe>,
    sign_key: Option<&ed25519_dalek::SigningKey>,
) -> Result<Vec<(String, Vec<u8>)>, BuildError> {
    let mut keys = Vec::new();
    for k in &recipe.recipe.update.keys {
        keys.push(crate::bundle::read_public(&recipe.resolve(k))?);
    }
    keys.extend(sign_key.map(|k| k.verifying_key()));
    keys.sort_by_key(|k| k.to_bytes());
    keys.dedup();
    let dir = keel_formats::keys::TRUSTED_DIR.trim_start_matches('/');
    let mut files: Vec<(String, Vec<u8>)> = keys
        .iter()
        .map(|k| {
            (
                format!("{dir}/{}.pub", keel_formats::signed::key_id(k.as_bytes())),
                keel_formats::keys::render_public(k).into_bytes(),
            )
        })
        .collect();
    let policy = toml::to_string(&recipe.recipe.update.policy).unwrap_or_default();
    files.push((
        keel_formats::policy::POLICY_FILE
            .trim_start_matches('/')
            .into(),
        policy.into_bytes(),
    ));
    // keel-init gives every container the chosen zone's rule as TZ.
    let zones = crate::zones::table(std::path::Path::new(crate::zones::ZONEINFO))?;
    files.push((
        keel_formats::tz::ZONES.trim_start_matches('/').into(),
        keel_formats::tz::render(&zones).into_bytes(),
    ));
    if let Some(config) = &recipe.recipe.host.config {
        let path = recipe.resolve(config);
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        use keel_formats::hostconfig::{check, render, Context, Source};
        let ctx = Context {
            services: Some(recipe.recipe.containers.enable.clone()),
            zones: Some(zones.keys().cloned().collect()),
        };
        if let Err(d) = check(
            Source {
                name: &path,
                text: &text,
            },
            &ctx,
        ) {
            return Err(BuildError::HostConfig {
                path,
                message: render(&d),
            });
        }
        files.push((
            keel_formats::host::DEFAULTS.trim_start_matches('/').into(),
            text.into_bytes(),
        ));
    }
    Ok(files)
}

/// The recipe's `[files]`, with their sources found beside the recipe.
fn extra_files(recipe: &Loaded<ImageRecipe>) -> Vec<rootfs::Extra> {
    recipe
        .recipe
        .files
        .iter()
        .map(|(dst, f)| rootfs::Extra {
            dst: dst.clone(),
            src: recipe.resolve(&f.source),
            mode: f.mode,
        })
        .collect()
}

struct ManifestInputs<'a> {
    recipe: &'a Loaded<ImageRecipe>,
    kernel: &'a kernel::Kernel,
    packages: &'a [package::Package],
    containers: &'a [StagedContainer],
    bin_dir: &'a Path,
    root_hash: &'a str,
    artifacts: Vec<&'a PathBuf>,
}

/// Every component of the image, with where it came from, and every file
/// the build wrote, each with its sha256.
fn manifest(i: &ManifestInputs<'_>) -> Result<crate::outputs::Manifest, BuildError> {
    use crate::outputs::{debian_version, sha256, sha256_file, Component};
    let r = &i.recipe.recipe;
    let c = |name: &str, version: String, source: String, sha256: String| Component {
        name: name.to_string(),
        version,
        source,
        sha256,
    };
    let mut components = vec![c(
        "kernel",
        i.kernel.release.clone(),
        i.kernel.origin.clone(),
        sha256_file(&i.kernel.bzimage)?,
    )];
    for (name, path) in &i.kernel.modules {
        components.push(c(
            &format!("kernel module {name}"),
            i.kernel.release.clone(),
            i.kernel.origin.clone(),
            sha256_file(path)?,
        ));
    }
    for p in i.packages {
        let first = p.files.first().map(|(_, f)| f.clone()).unwrap_or_default();
        components.push(c(
            &p.name,
            p.source
                .split_once(' ')
                .map_or(String::new(), |(_, v)| v.to_string()),
            format!("Debian source package {}, built with musl-gcc", p.source),
            sha256_file(&first)?,
        ));
    }
    let efi = debian_version("systemd-boot-efi").unwrap_or_else(|| "unknown".into());
    for (name, path) in [
        ("systemd-boot", SYSTEMD_BOOT),
        ("systemd-stub", SYSTEMD_STUB),
    ] {
        components.push(c(
            name,
            efi.clone(),
            format!("Debian systemd-boot-efi {efi}"),
            sha256_file(Path::new(path))?,
        ));
    }
    let mut bins: Vec<String> = vec!["keel-init".into(), "keelctl".into()];
    for cont in i.containers {
        for item in &cont.def.rootfs.contents {
            if i.bin_dir.join(item).is_file() && !bins.contains(item) {
                bins.push(item.clone());
            }
        }
    }
    for b in bins {
        components.push(c(
            &b,
            keel_formats::KEEL_VERSION.to_string(),
            "keel".into(),
            sha256_file(&i.bin_dir.join(&b))?,
        ));
    }
    for cont in i.containers {
        components.push(c(
            &format!("container {}", cont.name),
            r.image.version.clone(),
            "container definition".into(),
            sha256(cont.text.as_bytes()),
        ));
    }
    let artifacts = i
        .artifacts
        .iter()
        .map(|p| {
            Ok(c(
                &p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                r.image.version.clone(),
                "keel build".into(),
                sha256_file(p)?,
            ))
        })
        .collect::<Result<_, BuildError>>()?;
    Ok(crate::outputs::Manifest {
        image: r.image.name.clone(),
        version: r.image.version.clone(),
        root_hash: i.root_hash.to_string(),
        components,
        artifacts,
    })
}

pub fn build(opts: &Options) -> Result<Report, BuildError> {
    build_with(opts, &mut crate::progress::Quiet)
}

/// [`build`], telling `progress` as each step starts, moves and ends.
pub fn build_with(opts: &Options, progress: &mut dyn Progress) -> Result<Report, BuildError> {
    let recipe = recipe::load_image(&opts.recipe)?;
    let r = &recipe.recipe;
    let containers = load_containers(&recipe)?;
    let seed = format!("{} {}", r.image.name, r.image.version);
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
    let work = opts.out.join("work");
    fs::create_dir_all(&work).map_err(io_err(&work))?;

    progress.begin("kernel");
    let kernel = kernel::ensure(&opts.cache, &recipe, opts.jobs, progress)?;
    progress.end(&format!("kernel {}", kernel.release));
    let mut packages = Vec::new();
    for name in &r.userland.packages {
        let path = recipe.resolve(&format!("{}/{name}.toml", r.userland.packages_dir));
        let pkg = recipe::load_package(&path)?;
        progress.begin(&format!("package {name}"));
        packages.push(package::ensure(
            &opts.cache,
            name,
            &pkg,
            opts.jobs,
            progress,
        )?);
        progress.end(&format!("package {name}"));
    }

    let os_release = os_release(r);
    let sign_key = opts
        .sign_key
        .as_deref()
        .map(crate::bundle::read_secret)
        .transpose()?;
    let files = host_files(&recipe, sign_key.as_ref())?;
    progress.begin("root filesystem");
    let staging = work.join("rootfs");
    rootfs::stage(
        &staging,
        &rootfs::Inputs {
            keel_init: &keel_init,
            keelctl: &keelctl,
            bin_dir: &opts.bin_dir,
            packages: &packages,
            containers: &containers,
            os_release: &os_release,
            files: &files,
            extra: &extra_files(&recipe),
        },
    )?;
    let root = opts.out.join("root.erofs");
    rootfs::mkfs_erofs(&staging, &root, &stable_guid(&seed, "rootfs").to_string())?;
    progress.end(&format!("root filesystem {}", root.display()));
    let root_size = fs::metadata(&root).map_err(io_err(&root))?.len();
    if root_size > r.partitions.root_mib << 20 {
        return Err(BuildError::RootTooLarge {
            size: root_size,
            mib: r.partitions.root_mib,
        });
    }

    progress.begin("verity tree, UKI, ESP, /var and disk");
    // The salt is derived from the root image itself: unique per image,
    // yet the same for the same inputs.
    let root_bytes = fs::read(&root).map_err(io_err(&root))?;
    let salt = <sha2::Sha256 as sha2::Digest>::digest(&root_bytes);
    drop(root_bytes);
    let verity_path = opts.out.join("root.verity");
    let tree = verity::build_file(
        &root,
        &verity_path,
        &salt,
        *stable_guid(&seed, "verity").as_bytes(),
    )?;

    // No slot: stage 1 finds the slot that holds this root hash's tree,
    // so the same UKI boots from either slot.
    let boot_params = BootParams {
        slot: None,
        verity: tree.params.clone(),
    };
    let cmdline = format!("{} {}", r.kernel.cmdline.trim(), boot_params.render())
        .trim()
        .to_string();
    let init_bytes = fs::read(&keel_init).map_err(io_err(&keel_init))?;
    let mut modules = Vec::new();
    for (name, path) in &kernel.modules {
        modules.push((name.clone(), fs::read(path).map_err(io_err(path))?));
    }
    let initrd = initramfs::build(init_bytes, modules).map_err(io_err(&keel_init))?;
    let stub_bytes = fs::read(&stub).map_err(io_err(&stub))?;
    let linux = fs::read(&kernel.bzimage).map_err(io_err(&kernel.bzimage))?;
    let uki_bytes = uki::assemble(
        &stub_bytes,
        &uki::Payload {
            osrel: os_release.as_bytes(),
            cmdline: cmdline.as_bytes(),
            uname: kernel.release.as_bytes(),
            linux: &linux,
            initrd: &initrd,
        },
    )?;
    let uki_name = uki_file_name(&r.image.version, Some(3));
    let uki_path = opts.out.join(uki_file_name(&r.image.version, None));
    fs::write(&uki_path, &uki_bytes).map_err(io_err(&uki_path))?;
    let mut outputs = Vec::new();
    if r.outputs.has(OutputFormat::Direct) {
        crate::outputs::write_direct(&opts.out, &linux, &initrd, &cmdline)?;
        outputs.push(opts.out.join(crate::outputs::DIRECT_KERNEL));
    }

    let boot_bytes = fs::read(&boot).map_err(io_err(&boot))?;
    let loader_conf =
        "timeout 0\neditor no\nauto-entries no\nauto-firmware no\nconsole-mode keep\n";
    let volume_id = u32::from_le_bytes(
        stable_guid(&seed, "esp").as_bytes()[..4]
            .try_into()
            .unwrap_or([0; 4]),
    );
    let esp_image = esp::build(
        r.partitions.esp_mib << 20,
        volume_id,
        &[
            ("EFI/BOOT/BOOTX64.EFI".into(), boot_bytes.clone()),
            ("EFI/systemd/systemd-bootx64.efi".into(), boot_bytes),
            ("loader/loader.conf".into(), loader_conf.as_bytes().to_vec()),
            (format!("EFI/Linux/{uki_name}"), uki_bytes),
        ],
    )?;

    let data = work.join("data.ext4");
    mkfs_ext4(
        &data,
        r.partitions.data_mib,
        &stable_guid(&seed, "data").to_string(),
    )?;

    let p = &r.partitions;
    let disk_path = opts.out.join("disk.img");
    let parts = [
        PartSpec {
            role: Role::Esp,
            size_mib: p.esp_mib,
            content: Content::Bytes(&esp_image),
        },
        PartSpec {
            role: Role::Root(Slot::A),
            size_mib: p.root_mib,
            content: Content::File(&root),
        },
        PartSpec {
            role: Role::Verity(Slot::A),
            size_mib: p.verity_mib,
            content: Content::File(&verity_path),
        },
        PartSpec {
            role: Role::Root(Slot::B),
            size_mib: p.root_mib,
            content: Content::Empty,
        },
        PartSpec {
            role: Role::Verity(Slot::B),
            size_mib: p.verity_mib,
            content: Content::Empty,
        },
        PartSpec {
            role: Role::Data,
            size_mib: p.data_mib,
            content: Content::File(&data),
        },
    ];
    disk::write(&disk_path, &seed, &parts)?;
    progress.end(&format!(
        "verity tree, UKI, ESP, /var and disk {}",
        disk_path.display()
    ));
    fs::remove_dir_all(&work).map_err(io_err(&work))?;

    if sign_key.is_some() {
        progress.begin("signed bundle");
    }
    let bundle = match &sign_key {
        Some(key) => {
            let path = opts.out.join(format!("keel-{}.bundle", r.image.version));
            crate::bundle::write(
                &crate::bundle::BundleInputs {
                    variant: &r.image.name,
                    version: &r.image.version,
                    verity: &tree.params,
                    root: &root,
                    verity_tree: &verity_path,
                    uki: &uki_path,
                    created: source_date_epoch(),
                    min_version: r.update.min_version.as_deref(),
                    allow_downgrade: r.update.allow_downgrade,
                },
                key,
                &path,
            )?;
            Some(path)
        }
        None => None,
    };

    if let Some(b) = &bundle {
        progress.end(&format!("signed bundle {}", b.display()));
    }
    if r.outputs.has(OutputFormat::Qcow2) {
        let q = opts.out.join("disk.qcow2");
        progress.begin("qcow2");
        crate::outputs::qcow2(&disk_path, &q, progress)?;
        progress.end(&format!("qcow2 {}", q.display()));
        outputs.push(q);
    }
    if r.outputs.has(OutputFormat::Manifest) {
        let m = manifest(&ManifestInputs {
            recipe: &recipe,
            kernel: &kernel,
            packages: &packages,
            containers: &containers,
            bin_dir: &opts.bin_dir,
            root_hash: &to_hex(&tree.params.root_hash),
            artifacts: [&root, &verity_path, &uki_path, &disk_path]
                .into_iter()
                .chain(bundle.as_ref())
                .chain(outputs.iter())
                .collect(),
        })?;
        outputs.push(crate::outputs::write_manifest(&opts.out, &m)?);
    }
    // The raw disk and the UKI were needed on the way (for qcow2, the
    // bundle, the manifest); what the recipe did not ask for goes now.
    let disk = if r.outputs.has(OutputFormat::Raw) {
        Some(disk_path)
    } else {
        fs::remove_file(&disk_path).map_err(io_err(&disk_path))?;
        None
    };
    if !r.outputs.has(OutputFormat::Uki) {
        fs::remove_file(&uki_path).map_err(io_err(&uki_path))?;
    }

    Ok(Report {
        disk,
        outputs,
        uki: uki_path,
        uki_name,
        root,
        verity: verity_path,
        root_hash: to_hex(&tree.params.root_hash),
        version: r.image.version.clone(),
        kernel_release: kernel.release,
        bundle,
    })
}

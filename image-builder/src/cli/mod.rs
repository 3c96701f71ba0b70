//! The `keel` command line.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};

use keel_image_builder::build::{self, Options};
use keel_image_builder::cache::Cache;

mod fleet;
mod run;

#[derive(Debug, Parser)]
#[command(name = "keel", version, about = "Build, run and inspect keel images")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Build a bootable disk image from a recipe.
    Build(BuildArgs),
    /// Record the exact version and sha256 of every input of a recipe in
    /// its lock file (RECIPE with .lock), for `keel build --locked`.
    Lock {
        #[arg(default_value = "recipes/host.toml")]
        recipe: PathBuf,
    },
    /// Host configs (host.toml).
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Write a new ed25519 key pair: BASE.key (mode 0600) and BASE.pub;
    /// with --secure-boot, Secure Boot keys into the folder BASE.
    Keygen {
        base: PathBuf,
        /// PK, KEK and db (RSA-2048 keys, certificates, signature lists
        /// and the auth files that enroll them) in the folder BASE, for a
        /// platform whose keys you own; `keel build --secure-boot-key
        /// BASE/db.key` signs with db.
        #[arg(long)]
        secure_boot: bool,
        /// The certificates' common names start with this.
        #[arg(long, default_value = "keel", requires = "secure_boot")]
        name: String,
    },
    /// Maintain a static update repository.
    #[command(subcommand)]
    Repo(RepoCmd),
    /// The fleet's state in etcd, and a watch that pauses a failing rollout.
    #[command(subcommand)]
    Fleet(fleet::FleetCmd),
    /// A certificate authority and its certificates (etcd, remote API).
    #[command(subcommand)]
    Pki(fleet::PkiCmd),
    /// Boot a disk image in QEMU with UEFI firmware; serial console on stdio
    /// (Ctrl-A X quits).
    Run(run::RunArgs),
    /// Show what a disk image, a flashed device or an update bundle holds:
    /// partitions, slots and their versions, boot counters, verity root
    /// hashes, kernel and command line, containers; for a bundle its
    /// manifest and signatures.
    Inspect(InspectArgs),
    /// Write a disk image to a block device or a file: partitions first,
    /// the ESP and the partition table last, then synced and read back.
    /// The data partition (/var) grows to the end of the target.
    Flash(FlashArgs),
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Image recipe.
    #[arg(default_value = "recipes/host.toml")]
    pub recipe: PathBuf,
    /// Output folder.
    #[arg(short, long, default_value = "out")]
    pub out: PathBuf,
    /// Build cache (kernel, userland packages); default ~/.cache/keel.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Folder with the musl builds of keel-init and keelctl.
    #[arg(long, default_value = "target/x86_64-unknown-linux-musl/release")]
    pub bin_dir: PathBuf,
    /// Parallel jobs for kernel and package builds.
    #[arg(short, long)]
    pub jobs: Option<usize>,
    /// Also write a signed update bundle, out/keel-VERSION.bundle, with
    /// this secret key (from `keel keygen`); the image trusts its
    /// public key.
    #[arg(long)]
    pub sign_key: Option<PathBuf>,
    /// Sign systemd-boot and the UKI for Secure Boot with this db key (from
    /// `keel keygen --secure-boot`, its certificate beside it as .crt);
    /// the folder's public files go to OUT/secure-boot/ and its auth
    /// files onto the ESP for enrollment.
    #[arg(long)]
    pub secure_boot_key: Option<PathBuf>,
    /// Refuse to build if an input differs from the recipe's lock file
    /// (RECIPE with .lock), which `keel lock` writes.
    #[arg(long)]
    pub locked: bool,
    /// No progress lines and no summary.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print what was built as JSON on stdout (progress stays on
    /// stderr unless --quiet).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    pub path: PathBuf,
    /// Public keys (from `keel keygen`) to check a bundle's signatures
    /// against.
    #[arg(long)]
    pub trust: Vec<PathBuf>,
    /// JSON instead of text, for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct FlashArgs {
    pub image: PathBuf,
    pub target: PathBuf,
    /// Host config to put on the ESP as keel/host.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Overwrite a target that already holds a partition table.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct RepoAddArgs {
    pub bundle: PathBuf,
    #[arg(long)]
    pub repo: PathBuf,
    /// Secret key that signs the index (and signed the bundle).
    #[arg(long)]
    pub key: PathBuf,
    #[arg(long, default_value = "stable")]
    pub channel: String,
    /// Days until hosts refuse the index as expired.
    #[arg(long, default_value_t = 30)]
    pub valid_days: u64,
    /// A public key hosts should trust from now on (key rotation).
    #[arg(long)]
    pub trust: Vec<PathBuf>,
    /// A staged rollout: `1%@1h,10%@4h,100%@1d` opens the release to 1 %
    /// of the hosts an hour after its start, 10 % after 4 hours, all after
    /// a day (each host has a stable place). Publishing again with waves
    /// that open later or to fewer hosts pauses or stops it.
    #[arg(long)]
    pub waves: Option<String>,
    /// When the rollout starts, in seconds since the epoch (default: now).
    #[arg(long, requires = "waves")]
    pub rollout_start: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum RepoCmd {
    /// Copy a bundle into the repository and publish a new signed index
    /// naming it as the latest on its channel.
    Add(RepoAddArgs),
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Report every problem of a host config as FILE:LINE:COLUMN: `key`:
    /// what is wrong. With --recipe, the file is merged over the image's
    /// default config and its services are checked against the image's.
    Validate {
        file: PathBuf,
        #[arg(long)]
        recipe: Option<PathBuf>,
    },
}

/// `keel config validate`: the problems, or nothing.
fn validate_config(file: &Path, recipe: Option<&Path>) -> anyhow::Result<Vec<String>> {
    use keel_formats::hostconfig::{load, Context, Source};
    let text = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
    // The zones an image built here would know; without tzdata, names are
    // checked for shape only.
    let mut ctx = Context {
        services: None,
        zones: keel_image_builder::zones::table(Path::new(keel_image_builder::zones::ZONEINFO))
            .ok()
            .map(|t| t.into_keys().collect()),
    };
    let mut defaults = None;
    if let Some(r) = recipe {
        let loaded = keel_image_builder::recipe::load_image(r)?;
        ctx.services = Some(loaded.recipe.containers.enable.clone());
        if let Some(c) = &loaded.recipe.host.config {
            let path = loaded.resolve(c);
            let text =
                std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
            defaults = Some((path, text));
        }
    }
    let result = load(
        defaults.as_ref().map(|(name, text)| Source { name, text }),
        Some(Source {
            name: file,
            text: &text,
        }),
        &ctx,
    );
    Ok(match result {
        Ok(_) => Vec::new(),
        Err(d) => d.iter().map(ToString::to_string).collect(),
    })
}

pub fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Build(a) => build_cmd(a),
        Cmd::Lock { recipe } => lock_cmd(recipe),
        Cmd::Config(ConfigCmd::Validate { file, recipe }) => validate_cmd(file, recipe),
        Cmd::Keygen {
            base,
            secure_boot,
            name,
        } => keygen_cmd(base, secure_boot.then_some(name.as_str())),
        Cmd::Repo(RepoCmd::Add(a)) => repo_add_cmd(a),
        Cmd::Fleet(c) => fleet::fleet_cmd(c),
        Cmd::Pki(c) => fleet::pki_cmd(c),
        Cmd::Run(a) => run::run_cmd(a),
        Cmd::Flash(a) => flash_cmd(a),
        Cmd::Inspect(a) => inspect_cmd(a),
    }
}

/// `keel build`.
fn build_cmd(a: BuildArgs) -> anyhow::Result<()> {
    let BuildArgs {
        recipe,
        out,
        cache_dir,
        bin_dir,
        jobs,
        sign_key,
        secure_boot_key,
        locked,
        quiet,
        json,
    } = a;
    if locked {
        let loaded = keel_image_builder::recipe::load_image(&recipe)?;
        keel_image_builder::lock::check(&loaded)?;
    }
    let cache = Cache::new(match cache_dir {
        Some(d) => d,
        None => Cache::default_root()?,
    });
    let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let started = std::time::Instant::now();
    let mut progress = build_progress(quiet);
    let report = build::build_with(
        &Options {
            recipe,
            out,
            cache,
            bin_dir,
            jobs,
            sign_key,
            secure_boot_key,
        },
        progress.as_mut(),
    )?;
    drop(progress);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if quiet {
        return Ok(());
    }
    print_summary(&report, started);
    Ok(())
}

/// Bars on a terminal, lines otherwise (a log, CI), nothing when quiet.
fn build_progress(quiet: bool) -> Box<dyn keel_image_builder::progress::Progress> {
    if quiet {
        Box::new(keel_image_builder::progress::Quiet)
    } else if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        Box::new(keel_image_builder::progress::Bars::new("keel build"))
    } else {
        Box::new(keel_image_builder::progress::Lines::new("keel build"))
    }
}

/// What `keel build` made, one line per file with its size.
fn print_summary(report: &build::Report, started: std::time::Instant) {
    let size = |p: &PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    println!("keel {} (kernel {})", report.version, report.kernel_release);
    println!(
        "  root fs   {:>10} bytes  {}",
        size(&report.root),
        report.root.display()
    );
    println!(
        "  verity    {:>10} bytes  root hash {}",
        size(&report.verity),
        report.root_hash
    );
    if report.uki.is_file() {
        println!(
            "  UKI       {:>10} bytes  {} (on the ESP as {})",
            size(&report.uki),
            report.uki.display(),
            report.uki_name
        );
    }
    if let Some(d) = &report.disk {
        println!("  disk      {:>10} bytes  {}", size(d), d.display());
    }
    if let Some(b) = &report.bundle {
        println!("  bundle    {:>10} bytes  {}", size(b), b.display());
    }
    for o in &report.outputs {
        println!("  also      {:>10} bytes  {}", size(o), o.display());
    }
    println!("  built in {:.1} s", started.elapsed().as_secs_f64());
}

/// `keel lock`.
fn lock_cmd(recipe: PathBuf) -> anyhow::Result<()> {
    let loaded = keel_image_builder::recipe::load_image(&recipe)?;
    let (path, inputs) = keel_image_builder::lock::write(&loaded)?;
    println!("{}: {} inputs locked", path.display(), inputs.len());
    Ok(())
}

/// `keel config validate`: exits 1 with the problems.
fn validate_cmd(file: PathBuf, recipe: Option<PathBuf>) -> anyhow::Result<()> {
    let problems = validate_config(&file, recipe.as_deref())?;
    if problems.is_empty() {
        println!("{}: valid", file.display());
        return Ok(());
    }
    for p in &problems {
        eprintln!("{p}");
    }
    eprintln!(
        "{}: {} problem{}",
        file.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    std::process::exit(1);
}

/// `keel keygen`.
fn keygen_cmd(base: PathBuf, secure_boot: Option<&str>) -> anyhow::Result<()> {
    if let Some(name) = secure_boot {
        let owner = keel_image_builder::secureboot::keys::keygen(&base, name)
            .with_context(|| format!("making Secure Boot keys in {}", base.display()))?;
        println!(
            "Secure Boot keys in {} (owner {owner}); keep the .key files off the hosts",
            base.display()
        );
        println!(
            "PCR policy key {}: hosts with a TPM seal /var to what it signs",
            base.join(keel_image_builder::secureboot::pcr::PRIVATE)
                .display()
        );
        println!(
            "sign images with: keel build --secure-boot-key {}",
            base.join("db.key").display()
        );
        return Ok(());
    }
    let (secret, public) = keel_image_builder::bundle::keygen(&base)?;
    println!("secret key {} (keep it off the hosts)", secret.display());
    println!("public key {}", public.display());
    Ok(())
}

/// `keel repo add`.
fn repo_add_cmd(a: RepoAddArgs) -> anyhow::Result<()> {
    let RepoAddArgs {
        bundle,
        repo,
        key,
        channel,
        valid_days,
        trust,
        waves,
        rollout_start,
    } = a;
    let rollout = waves
        .map(|w| {
            keel_formats::rollout::Rollout::parse_waves(&w)
                .map(|waves| keel_formats::rollout::Rollout {
                    start: rollout_start.unwrap_or_else(now),
                    waves,
                })
                .map_err(|e| anyhow::anyhow!("--waves {w:?}: {e}"))
        })
        .transpose()?;
    // Days from the command line: a count past u64 seconds is a typo.
    let valid_for_s = valid_days
        .checked_mul(86400)
        .with_context(|| format!("--valid-days {valid_days}: too many days"))?;
    let key = keel_image_builder::bundle::read_secret(&key)?;
    let trust = trust
        .iter()
        .map(|p| keel_image_builder::bundle::read_public(p))
        .collect::<Result<Vec<_>, _>>()?;
    let index = keel_image_builder::repo::add(&keel_image_builder::repo::AddOptions {
        bundle: &bundle,
        repo: &repo,
        key: &key,
        channel: &channel,
        valid_for_s,
        trust: &trust,
        now: now(),
        rollout,
    })?;
    let entry = &index.channels[&channel];
    println!(
        "{}: index version {}, {channel} -> {} ({}), expires in {valid_days} days",
        repo.display(),
        index.index_version,
        entry.version,
        entry.bundle
    );
    Ok(())
}

/// `keel flash`, with a bar on a terminal and a line per 10 % in a log.
fn flash_cmd(a: FlashArgs) -> anyhow::Result<()> {
    let FlashArgs {
        image,
        target,
        config,
        force,
    } = a;
    let started = std::time::Instant::now();
    let mut shown = 0u64;
    // A bar on a terminal; a line per 10 % in a log.
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "keel flash [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let r = keel_image_builder::flash::flash(
        &keel_image_builder::flash::Options {
            image: &image,
            target: &target,
            config: config.as_deref(),
            force,
        },
        &mut |done, total| {
            if let Some(b) = &bar {
                b.set_length(total);
                b.set_position(done);
                return;
            }
            let tenth = done * 10 / total.max(1);
            if tenth > shown {
                shown = tenth;
                eprintln!("keel flash: {} % ({done} of {total} bytes)", tenth * 10);
            }
        },
    )
    .with_context(|| format!("flashing {} to {}", image.display(), target.display()))?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    println!(
        "{}: {} bytes written, read back and verified in {:.1} s; /var partition {} MiB",
        target.display(),
        r.written,
        started.elapsed().as_secs_f64(),
        r.data_size >> 20
    );
    for (label, sha) in &r.partitions {
        println!("  {label:<14} sha256 {sha}");
    }
    if let Some(c) = &config {
        println!(
            "  host config {} on the ESP as {}",
            c.display(),
            keel_image_builder::flash::HOST_CONFIG_ON_ESP
        );
    }
    if let Some(why) = &r.reread_failed {
        println!("  note: the kernel did not re-read the partition table ({why})");
    }
    Ok(())
}

/// `keel inspect`.
fn inspect_cmd(a: InspectArgs) -> anyhow::Result<()> {
    let InspectArgs { path, trust, json } = a;
    let trusted = trust
        .iter()
        .map(|p| keel_image_builder::bundle::read_public(p))
        .collect::<Result<Vec<_>, _>>()?;
    let report = keel_image_builder::inspect::inspect(&path, &trusted)
        .with_context(|| format!("inspecting {}", path.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", keel_image_builder::inspect::render(&report));
    }
    Ok(())
}

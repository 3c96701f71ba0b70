use std::collections::BTreeMap;

use serde::Deserialize;

/// `recipes/<image>.toml`: everything that goes into one image.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecipe {
    pub image: ImageMeta,
    pub kernel: KernelRecipe,
    #[serde(default)]
    pub userland: Userland,
    pub containers: Containers,
    #[serde(default)]
    pub partitions: Partitions,
    #[serde(default)]
    pub update: UpdateRecipe,
    #[serde(default)]
    pub outputs: Outputs,
}

/// `[outputs]`: what `keel build` leaves in its output folder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outputs {
    #[serde(default = "default_formats")]
    pub formats: Vec<OutputFormat>,
}

impl Default for Outputs {
    fn default() -> Self {
        Outputs {
            formats: default_formats(),
        }
    }
}

impl Outputs {
    pub fn has(&self, f: OutputFormat) -> bool {
        self.formats.contains(&f)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// `disk.img`: the GPT disk, sparse.
    Raw,
    /// `disk.qcow2`: the same disk, compressed (needs qemu-img).
    Qcow2,
    /// `keel-VERSION.efi`: the UKI alone.
    Uki,
    /// `vmlinuz`, `initramfs.img`, `cmdline.txt`: for `keel run --direct`.
    Direct,
    /// `manifest.json`: every component with its version, source and sha256.
    Manifest,
}

fn default_formats() -> Vec<OutputFormat> {
    vec![
        OutputFormat::Raw,
        OutputFormat::Uki,
        OutputFormat::Direct,
        OutputFormat::Manifest,
    ]
}

/// `[update]`: the keys an image trusts and its update policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRecipe {
    /// Public key files (`keel keygen`), relative to the recipe. The key
    /// that signs a build (`keel build --sign-key`) is trusted as well.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Written into the bundle's signed manifest: the oldest version it
    /// may replace.
    #[serde(default)]
    pub min_version: Option<String>,
    /// Written into the manifest: hosts on a newer version may install it.
    #[serde(default)]
    pub allow_downgrade: bool,
    #[serde(default)]
    pub policy: keel_spec::policy::Policy,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageMeta {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelRecipe {
    /// Debian package whose `/usr/src/<source>.tar.xz` is the kernel source.
    pub source: String,
    /// The `make` target that gives the starting configuration.
    #[serde(default = "tinyconfig")]
    pub base: String,
    /// Config fragments merged on top of `base`, relative to the recipe.
    pub fragments: Vec<String>,
    /// File listing the options the built `.config` must have.
    pub required: String,
    /// Kernel command line, before the keel keys.
    #[serde(default)]
    pub cmdline: String,
}

fn tinyconfig() -> String {
    "tinyconfig".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Userland {
    /// Package recipes, by name, from `packages/<name>.toml` beside the
    /// image recipe.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Folder of package recipes, relative to the image recipe.
    #[serde(default = "packages_dir")]
    pub packages_dir: String,
}

fn packages_dir() -> String {
    "packages".to_string()
}

impl Default for Userland {
    fn default() -> Self {
        Userland {
            packages: Vec::new(),
            packages_dir: packages_dir(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Containers {
    /// Folders of container definitions, relative to the recipe; the first
    /// that defines a name wins.
    pub dirs: Vec<String>,
    /// Which of them the image runs.
    pub enable: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partitions {
    #[serde(default = "esp_mib")]
    pub esp_mib: u64,
    #[serde(default = "root_mib")]
    pub root_mib: u64,
    #[serde(default = "verity_mib")]
    pub verity_mib: u64,
    #[serde(default = "data_mib")]
    pub data_mib: u64,
}

fn esp_mib() -> u64 {
    64
}
fn root_mib() -> u64 {
    256
}
fn verity_mib() -> u64 {
    16
}
fn data_mib() -> u64 {
    256
}

impl Default for Partitions {
    fn default() -> Self {
        Partitions {
            esp_mib: esp_mib(),
            root_mib: root_mib(),
            verity_mib: verity_mib(),
            data_mib: data_mib(),
        }
    }
}

/// `recipes/packages/<name>.toml`: a userland program built from a Debian
/// source package with musl-gcc, Kbuild style (busybox).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageRecipe {
    /// Debian source package name.
    pub source: String,
    /// C compiler for the target.
    #[serde(default = "musl_gcc")]
    pub cc: String,
    /// `make` target giving the starting configuration.
    pub defconfig: String,
    /// Options set on top of it (`CONFIG_STATIC = "y"`, `"n"` unsets).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Targets to `make` after configuring.
    pub make: Vec<String>,
    /// Files to keep: path in the image's `bin/` → path in the build tree.
    pub files: BTreeMap<String, String>,
    /// A file in the build tree listing one installed link path per line
    /// (busybox.links); each becomes a link to the first of `files`.
    #[serde(default)]
    pub links_file: Option<String>,
}

fn musl_gcc() -> String {
    "musl-gcc".to_string()
}

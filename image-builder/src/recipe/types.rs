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
    /// More files of the root filesystem: path in the image (relative to
    /// `/`) → a file or folder beside the recipe.
    #[serde(default)]
    pub files: BTreeMap<String, ExtraFile>,
    #[serde(default)]
    pub host: HostRecipe,
}

/// `[host]`: the host config the image carries as its defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRecipe {
    /// A host config file, relative to the recipe; a host config on the
    /// ESP overrides it key by key.
    #[serde(default)]
    pub config: Option<String>,
}

/// One entry of `[files]`: `"etc/motd" = "motd"`, or with a mode,
/// `"usr/bin/hello" = { source = "hello.sh", mode = 0o755 }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraFile {
    pub source: String,
    /// Permission bits for the file (each file of a folder); default 0644,
    /// or 0755 where the source is executable.
    pub mode: Option<u32>,
}

impl<'de> Deserialize<'de> for ExtraFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            source: String,
            #[serde(default)]
            mode: Option<u32>,
        }
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ExtraFile;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a source path, or a table with `source` and `mode`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ExtraFile, E> {
                Ok(ExtraFile {
                    source: v.to_string(),
                    mode: None,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ExtraFile, A::Error> {
                let f = Full::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(ExtraFile {
                    source: f.source,
                    mode: f.mode,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
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
    pub policy: keel_formats::policy::Policy,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageMeta {
    pub name: String,
    pub version: String,
}

/// `[kernel]`: built from source (`source`, `base`, `fragments`) or a
/// prebuilt Debian package (`package`, `modules`); exactly one of the two.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelRecipe {
    /// Debian package whose `/usr/src/<source>.tar.xz` is the kernel source.
    #[serde(default)]
    pub source: Option<String>,
    /// A Debian kernel image package used as built
    /// (`linux-image-cloud-amd64`, or a versioned `linux-image-*`).
    #[serde(default)]
    pub package: Option<String>,
    /// The `make` target that gives the starting configuration (default
    /// `tinyconfig`); only with `source`.
    #[serde(default)]
    pub base: Option<String>,
    /// Config fragments merged on top of `base`, relative to the recipe;
    /// only with `source`.
    #[serde(default)]
    pub fragments: Vec<String>,
    /// Modules stage 1 loads, by name, before it looks for the disk; what
    /// they depend on is added. Only with `package`.
    #[serde(default)]
    pub modules: Vec<String>,
    /// File listing the options the kernel's `.config` must have.
    pub required: String,
    /// Kernel command line, before the keel keys.
    #[serde(default)]
    pub cmdline: String,
}

/// Where a validated recipe's kernel comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFrom<'a> {
    Source(&'a str),
    Package(&'a str),
}

impl KernelRecipe {
    /// `package` if the recipe names one, else `source` (validation makes
    /// sure exactly one is there).
    pub fn from(&self) -> KernelFrom<'_> {
        match (&self.package, &self.source) {
            (Some(p), _) => KernelFrom::Package(p),
            (None, s) => KernelFrom::Source(s.as_deref().unwrap_or_default()),
        }
    }

    pub fn base(&self) -> &str {
        self.base.as_deref().unwrap_or("tinyconfig")
    }
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
/// source package with musl-gcc, Kbuild style (busybox) or with a
/// configure script (dropbear).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageRecipe {
    /// Debian source package name.
    pub source: String,
    /// C compiler for the target.
    #[serde(default = "musl_gcc")]
    pub cc: String,
    #[serde(default)]
    pub build: BuildKind,
    /// kconfig: the `make` target giving the starting configuration.
    #[serde(default)]
    pub defconfig: Option<String>,
    /// configure: the arguments of `./configure`.
    #[serde(default)]
    pub configure: Vec<String>,
    /// Files written into the source tree before configuring (a build
    /// options header): path in the tree → contents.
    #[serde(default)]
    pub tree_files: BTreeMap<String, String>,
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

/// How a package's source tree is configured before `make`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildKind {
    /// `make DEFCONFIG`, options set in .config, `make oldconfig`.
    #[default]
    Kconfig,
    /// `./configure ARGS` with CC set.
    Configure,
}

fn musl_gcc() -> String {
    "musl-gcc".to_string()
}

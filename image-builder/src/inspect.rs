//! `keel inspect`: what a disk image (or a flashed device) or an update
//! bundle holds, read without mounting or booting anything.

use std::fs::File;
use std::io::Cursor;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use keel_formats::bootentry::{pe_section, EntryName, ENTRIES_DIR};
use keel_formats::bundle::{payload_start, Manifest, PayloadName};
use keel_formats::cmdline::{to_hex, BootParams, TOP_BLOCK_OFFSET};
use keel_formats::disk::{Slot, VERITY_BLOCK_SIZE};
use keel_formats::signed::{key_id, Kind};

use crate::disk::{self, DiskError};
use crate::esp::{self, EspError};
use crate::flash::HOST_CONFIG_ON_ESP;

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Bundle(#[from] crate::bundle::BundleError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Esp(#[from] EspError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> InspectError + '_ {
    move |source| InspectError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Report {
    Disk(DiskReport),
    Bundle(Box<BundleReport>),
}

#[derive(Debug, Serialize)]
pub struct DiskReport {
    pub path: String,
    pub size: u64,
    pub partitions: Vec<PartRow>,
    pub entries: Vec<Entry>,
    pub slots: Vec<SlotRow>,
    /// The user's host config on the ESP, if any.
    pub host_config: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PartRow {
    pub number: usize,
    pub label: String,
    pub offset: u64,
    pub size: u64,
    pub type_guid: String,
    pub guid: String,
}

#[derive(Debug, Serialize)]
pub struct Entry {
    pub file: String,
    /// "blessed", "on trial", "out of tries" (boots last), or "not keel's".
    pub state: String,
    pub tries_left: Option<u32>,
    pub tries_done: u32,
    /// The slot whose verity partition holds this entry's tree.
    pub slot: Option<String>,
    pub uki: Uki,
}

/// What a UKI says about itself.
#[derive(Debug, Default, Serialize)]
pub struct Uki {
    pub size: u64,
    pub version: Option<String>,
    pub kernel: Option<String>,
    pub cmdline: Option<String>,
    pub root_hash: Option<String>,
    pub containers: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct SlotRow {
    pub slot: String,
    /// The boot entry whose root hash this slot's verity tree has.
    pub entry: Option<String>,
    pub version: Option<String>,
    pub root_hash: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct BundleReport {
    pub path: String,
    pub size: u64,
    pub manifest: Manifest,
    pub signatures: Vec<Signature>,
    /// With trusted keys given: which one vouches for the bundle, or why
    /// none does.
    pub verdict: Option<String>,
    pub uki: Uki,
}

#[derive(Debug, Serialize)]
pub struct Signature {
    pub key_id: String,
    pub public_key: String,
}

fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim_matches('"').to_string())
}

/// Read the sections of a UKI that say what it boots.
pub fn uki_facts(image: &[u8]) -> Uki {
    let text = |name: &str| {
        pe_section(image, name).map(|b| {
            String::from_utf8_lossy(b)
                .trim_end_matches('\0')
                .trim()
                .to_string()
        })
    };
    let osrel = text(".osrel").unwrap_or_default();
    let cmdline = text(".cmdline");
    let root_hash = cmdline
        .as_deref()
        .and_then(|c| BootParams::parse(c).ok())
        .map(|p| to_hex(&p.verity.root_hash));
    Uki {
        size: image.len() as u64,
        version: os_release_value(&osrel, "VERSION_ID"),
        kernel: text(".uname"),
        cmdline,
        root_hash,
        containers: os_release_value(&osrel, "KEEL_CONTAINERS")
            .map(|v| v.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
    }
}

/// Inspect `path`: an update bundle if it starts like one, a disk else.
pub fn inspect(
    path: &Path,
    trusted: &[ed25519_dalek::VerifyingKey],
) -> Result<Report, InspectError> {
    let mut magic = [0u8; 8];
    let f = File::open(path).map_err(io_err(path))?;
    let n = f.read_at(&mut magic, 0).map_err(io_err(path))?;
    if n == 8 && &magic == Kind::Bundle.magic() {
        return Ok(Report::Bundle(Box::new(bundle(path, f, trusted)?)));
    }
    Ok(Report::Disk(disk_report(path, &f)?))
}

fn bundle(
    path: &Path,
    f: File,
    trusted: &[ed25519_dalek::VerifyingKey],
) -> Result<BundleReport, InspectError> {
    let size = f.metadata().map_err(io_err(path))?.len();
    let (env, manifest) = crate::bundle::read_head(path)?;
    let head_len = env.to_bytes().len() as u64;
    let verdict = (!trusted.is_empty()).then(|| match env.verify(trusted) {
        Ok(k) => format!("signed by trusted key {}", key_id(k.as_bytes())),
        Err(e) => format!("NOT trusted: {e}"),
    });
    let uki = match manifest.payload(PayloadName::Uki) {
        Some(p) => {
            let mut bytes = vec![0u8; usize::try_from(p.size).unwrap_or(0)];
            let at = payload_start(head_len) + p.offset;
            f.read_exact_at(&mut bytes, at).map_err(io_err(path))?;
            uki_facts(&bytes)
        }
        None => Uki::default(),
    };
    Ok(BundleReport {
        path: path.display().to_string(),
        size,
        signatures: env
            .signatures
            .iter()
            .map(|(k, _)| Signature {
                key_id: key_id(k),
                public_key: hex::encode(k),
            })
            .collect(),
        manifest,
        verdict,
        uki,
    })
}

fn disk_report(path: &Path, f: &File) -> Result<DiskReport, InspectError> {
    let layout = disk::read_layout_from(f, path)?;
    let read = |label: &str, at: u64, len: usize| -> Result<Option<Vec<u8>>, InspectError> {
        let Some(p) = layout.parts.iter().find(|p| p.label == label) else {
            return Ok(None);
        };
        let len = if len == 0 { p.size as usize } else { len };
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, p.offset + at)
            .map_err(io_err(path))?;
        Ok(Some(buf))
    };
    let esp_bytes = read(keel_formats::disk::ESP_LABEL, 0, 0)?;
    let mut entries = Vec::new();
    let mut host_config = None;
    if let Some(esp_bytes) = &esp_bytes {
        let names = esp::list_dir(Cursor::new(esp_bytes.clone()), ENTRIES_DIR).unwrap_or_default();
        for file in names {
            let uki = esp::read_file(
                Cursor::new(esp_bytes.clone()),
                &format!("{ENTRIES_DIR}/{file}"),
            )?;
            let name = EntryName::parse(&file);
            let state = match &name {
                None => "not keel's",
                Some(n) => match n.tries_left {
                    None => "blessed",
                    Some(0) => "out of tries (boots last)",
                    Some(_) => "on trial",
                },
            };
            entries.push(Entry {
                state: state.to_string(),
                tries_left: name.as_ref().and_then(|n| n.tries_left),
                tries_done: name.as_ref().map_or(0, |n| n.tries_done),
                slot: None,
                uki: uki_facts(&uki),
                file,
            });
        }
        host_config = esp::read_file(Cursor::new(esp_bytes.clone()), HOST_CONFIG_ON_ESP)
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned());
    }
    let mut slots = Vec::new();
    for slot in [Slot::A, Slot::B] {
        let top = read(
            slot.verity_label(),
            TOP_BLOCK_OFFSET,
            VERITY_BLOCK_SIZE as usize,
        )?;
        let owner = top.as_ref().and_then(|top| {
            entries.iter().position(|e| {
                e.uki
                    .cmdline
                    .as_deref()
                    .and_then(|c| BootParams::parse(c).ok())
                    .is_some_and(|p| p.verity.is_top_block(top))
            })
        });
        if let Some(i) = owner {
            entries[i].slot = Some(slot.to_string());
        }
        let e = owner.map(|i| &entries[i]);
        slots.push(SlotRow {
            slot: slot.to_string(),
            entry: e.map(|e| e.file.clone()),
            version: e.and_then(|e| e.uki.version.clone()),
            root_hash: e.and_then(|e| e.uki.root_hash.clone()),
        });
    }
    Ok(DiskReport {
        path: path.display().to_string(),
        size: layout.size,
        partitions: layout
            .parts
            .iter()
            .enumerate()
            .map(|(i, p)| PartRow {
                number: i + 1,
                label: p.label.clone(),
                offset: p.offset,
                size: p.size,
                type_guid: p.type_guid.to_string().to_uppercase(),
                guid: p.part_guid.to_string(),
            })
            .collect(),
        entries,
        slots,
        host_config,
    })
}

fn short(hash: &Option<String>) -> String {
    hash.as_deref()
        .map_or("-".into(), |h| h.chars().take(16).collect())
}

/// The report as a person reads it.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    match r {
        Report::Disk(d) => render_disk(d, &mut line),
        Report::Bundle(b) => render_bundle(b, &mut line),
    }
    out
}

fn render_uki(u: &Uki, line: &mut dyn FnMut(String)) {
    line(format!(
        "      kernel {}, {} bytes",
        u.kernel.as_deref().unwrap_or("?"),
        u.size
    ));
    line(format!(
        "      cmdline {}",
        u.cmdline.as_deref().unwrap_or("?")
    ));
    line(format!("      containers {}", u.containers.join(" ")));
}

fn render_disk(d: &DiskReport, line: &mut dyn FnMut(String)) {
    line(format!("disk {} ({} bytes)", d.path, d.size));
    line("partitions:".into());
    for p in &d.partitions {
        line(format!(
            "  {:>2} {:<14} {:>8} MiB at {:>6} MiB  type {}",
            p.number,
            p.label,
            p.size >> 20,
            p.offset >> 20,
            p.type_guid
        ));
    }
    line("slots:".into());
    for s in &d.slots {
        match &s.entry {
            Some(e) => line(format!(
                "  {}  keel {} ({e}), root hash {}",
                s.slot,
                s.version.as_deref().unwrap_or("?"),
                short(&s.root_hash)
            )),
            None => line(format!(
                "  {}  no boot entry matches its verity tree",
                s.slot
            )),
        }
    }
    line(format!("boot entries ({ENTRIES_DIR}):"));
    for e in &d.entries {
        let tries = match e.tries_left {
            Some(left) => format!(", {left} tries left, {} done", e.tries_done),
            None => String::new(),
        };
        line(format!(
            "  {}: {}{tries}; slot {}; version {}; root hash {}",
            e.file,
            e.state,
            e.slot.as_deref().unwrap_or("none"),
            e.uki.version.as_deref().unwrap_or("?"),
            short(&e.uki.root_hash)
        ));
        render_uki(&e.uki, line);
    }
    match &d.host_config {
        Some(c) => line(format!(
            "host config: {HOST_CONFIG_ON_ESP} on the ESP, {} bytes",
            c.len()
        )),
        None => line("host config: none on the ESP (the image's defaults)".into()),
    }
}

fn render_bundle(b: &BundleReport, line: &mut dyn FnMut(String)) {
    let m = &b.manifest;
    line(format!("bundle {} ({} bytes)", b.path, b.size));
    line(format!(
        "  {} {} (variant {}), created {}",
        m.os, m.version, m.variant, m.created
    ));
    line(format!(
        "  min_version {}, allow_downgrade {}",
        m.min_version.as_deref().unwrap_or("none"),
        m.allow_downgrade
    ));
    line(format!(
        "  verity root hash {}, salt {}, {} data blocks",
        m.verity.root_hash, m.verity.salt, m.verity.data_blocks
    ));
    line("payloads:".into());
    for p in &m.payloads {
        line(format!(
            "  {:<7} {:>10} bytes at {:>10}  sha256 {}  {} chunks",
            p.name.as_str(),
            p.size,
            p.offset,
            p.sha256,
            p.chunks.len()
        ));
    }
    line("signatures:".into());
    for s in &b.signatures {
        line(format!("  key {} ({})", s.key_id, s.public_key));
    }
    if let Some(v) = &b.verdict {
        line(format!("  {v}"));
    }
    line("UKI:".into());
    render_uki(&b.uki, line);
}

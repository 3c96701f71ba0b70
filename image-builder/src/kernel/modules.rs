//! Kernel modules of a prebuilt kernel: which files the image needs for the
//! modules a recipe names, and in what order stage 1 loads them.
//!
//! Debian's image packages ship no `modules.dep` (depmod writes it at
//! install time), so dependencies come from each module's own `.modinfo`
//! section, the same place depmod reads them from.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a 64-bit little-endian ELF module ({why})")]
    NotElf { path: PathBuf, why: &'static str },
    #[error("kernel.modules: no module {name:?} in {dir} (nor built in); modules are named as `lsmod` shows them")]
    Unknown { name: String, dir: PathBuf },
    #[error("kernel modules depend on each other in a circle: {0}")]
    Cycle(String),
}

/// The name the kernel knows a module by: `-` and `_` are the same.
pub fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

/// The `key=value` strings of an ELF module's `.modinfo` section.
pub fn modinfo(elf: &[u8], path: &Path) -> Result<Vec<(String, String)>, ModuleError> {
    let bad = |why| ModuleError::NotElf {
        path: path.to_path_buf(),
        why,
    };
    let u16_at = |o: usize| -> Option<u64> {
        Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?).into())
    };
    let u32_at = |o: usize| -> Option<u64> {
        Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?).into())
    };
    let u64_at =
        |o: usize| -> Option<u64> { Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?)) };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        return Err(bad("bad magic"));
    }
    let shoff = u64_at(0x28).ok_or(bad("short header"))? as usize;
    let shentsize = u16_at(0x3a).ok_or(bad("short header"))? as usize;
    let shnum = u16_at(0x3c).ok_or(bad("short header"))? as usize;
    let shstrndx = u16_at(0x3e).ok_or(bad("short header"))? as usize;
    if shentsize < 0x40 {
        return Err(bad("section headers too small"));
    }
    // (name offset, file offset, size) of section `i`.
    let section = |i: usize| -> Option<(usize, usize, usize)> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((
            u32_at(h)? as usize,
            u64_at(h + 0x18)? as usize,
            u64_at(h + 0x20)? as usize,
        ))
    };
    let bytes_of = |off: usize, size: usize| elf.get(off..off.checked_add(size)?);
    let (_, str_off, str_size) = section(shstrndx).ok_or(bad("no section names"))?;
    let names = bytes_of(str_off, str_size).ok_or(bad("section names out of bounds"))?;
    for i in 0..shnum {
        let (name, off, size) = section(i).ok_or(bad("section header out of bounds"))?;
        let name = names
            .get(name..)
            .and_then(|n| n.split(|&b| b == 0).next())
            .unwrap_or_default();
        if name != b".modinfo" {
            continue;
        }
        let data = bytes_of(off, size).ok_or(bad(".modinfo out of bounds"))?;
        return Ok(data
            .split(|&b| b == 0)
            .filter_map(|kv| {
                let kv = std::str::from_utf8(kv).ok()?;
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect());
    }
    Err(bad("no .modinfo section"))
}

/// What a module needs loaded first: its `depends=` list and the modules
/// its `softdep=` puts before it (`pre:`).
pub fn needs(info: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in info {
        match k.as_str() {
            "depends" => out.extend(v.split(',').filter(|s| !s.is_empty()).map(normalise)),
            "softdep" => {
                let mut pre = false;
                for word in v.split_whitespace() {
                    match word {
                        "pre:" => pre = true,
                        "post:" => pre = false,
                        m if pre => out.push(normalise(m)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// A module tree (`lib/modules/RELEASE`): every `.ko` by name, and the
/// names of those built into the kernel.
#[derive(Debug, Default)]
pub struct Tree {
    pub dir: PathBuf,
    pub files: BTreeMap<String, PathBuf>,
    pub builtin: BTreeSet<String>,
}

impl Tree {
    pub fn open(dir: &Path) -> Result<Tree, ModuleError> {
        let mut tree = Tree {
            dir: dir.to_path_buf(),
            ..Tree::default()
        };
        let mut stack = vec![dir.join("kernel")];
        while let Some(d) = stack.pop() {
            let entries = std::fs::read_dir(&d).map_err(|source| ModuleError::Io {
                path: d.clone(),
                source,
            })?;
            for e in entries {
                let path = e
                    .map_err(|source| ModuleError::Io {
                        path: d.clone(),
                        source,
                    })?
                    .path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                    if let Some(stem) = name.strip_suffix(".ko") {
                        tree.files.insert(normalise(stem), path.clone());
                    }
                }
            }
        }
        let builtin = dir.join("modules.builtin");
        if let Ok(text) = std::fs::read_to_string(&builtin) {
            tree.builtin = text
                .lines()
                .filter_map(|l| l.rsplit('/').next()?.strip_suffix(".ko"))
                .map(normalise)
                .collect();
        }
        Ok(tree)
    }

    /// The modules to load for `wanted`, dependencies first; built-in ones
    /// are left out.
    pub fn resolve(&self, wanted: &[String]) -> Result<Vec<(String, PathBuf)>, ModuleError> {
        let order = load_order(wanted, |name| {
            if self.builtin.contains(name) {
                return Ok(None);
            }
            let path = self.files.get(name).ok_or_else(|| ModuleError::Unknown {
                name: name.to_string(),
                dir: self.dir.clone(),
            })?;
            let elf = std::fs::read(path).map_err(|source| ModuleError::Io {
                path: path.clone(),
                source,
            })?;
            let mut deps = needs(&modinfo(&elf, path)?);
            // A soft dependency may be absent from this kernel entirely.
            deps.retain(|d| self.files.contains_key(d) || self.builtin.contains(d));
            Ok(Some(deps))
        })?;
        Ok(order
            .into_iter()
            .filter_map(|n| Some((n.clone(), self.files.get(&n)?.clone())))
            .collect())
    }
}

/// Depth-first order of `wanted` and everything they need, each after its
/// needs. `deps` gives a module's needs, or `None` when it is built in.
pub fn load_order(
    wanted: &[String],
    mut deps: impl FnMut(&str) -> Result<Option<Vec<String>>, ModuleError>,
) -> Result<Vec<String>, ModuleError> {
    #[derive(PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    let mut marks: BTreeMap<String, Mark> = BTreeMap::new();
    let mut order = Vec::new();
    // (module, its needs still to visit), with the path for cycle reports.
    let mut stack: Vec<(String, Vec<String>)> = Vec::new();
    for root in wanted {
        let root = normalise(root);
        if marks.contains_key(&root) {
            continue;
        }
        let mut enter = |name: String,
                         marks: &mut BTreeMap<String, Mark>|
         -> Result<Option<(String, Vec<String>)>, ModuleError> {
            let Some(mut needs) = deps(&name)? else {
                marks.insert(name, Mark::Done);
                return Ok(None);
            };
            // Popped from the end: reversed, they are visited in order.
            needs.reverse();
            marks.insert(name.clone(), Mark::Visiting);
            Ok(Some((name, needs)))
        };
        if let Some(frame) = enter(root, &mut marks)? {
            stack.push(frame);
        }
        while let Some((name, pending)) = stack.last_mut() {
            match pending.pop() {
                Some(next) => match marks.get(&next) {
                    Some(Mark::Done) => {}
                    Some(Mark::Visiting) => {
                        let mut path: Vec<&str> = stack.iter().map(|(n, _)| n.as_str()).collect();
                        path.push(&next);
                        return Err(ModuleError::Cycle(path.join(" -> ")));
                    }
                    None => {
                        if let Some(frame) = enter(next, &mut marks)? {
                            stack.push(frame);
                        }
                    }
                },
                None => {
                    let name = name.clone();
                    stack.pop();
                    marks.insert(name.clone(), Mark::Done);
                    order.push(name);
                }
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(
        edges: &[(&str, &[&str])],
    ) -> impl FnMut(&str) -> Result<Option<Vec<String>>, ModuleError> {
        let map: BTreeMap<String, Vec<String>> = edges
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect();
        move |n| {
            if n == "builtin" {
                return Ok(None);
            }
            map.get(n).cloned().map(Some).ok_or(ModuleError::Unknown {
                name: n.into(),
                dir: "t".into(),
            })
        }
    }

    #[test]
    fn dependencies_come_first_and_once() {
        let order = load_order(
            &["dm-verity".into(), "virtio_blk".into()],
            graph(&[
                ("dm_verity", &["dm_bufio", "dm_mod", "builtin"]),
                ("dm_bufio", &["dm_mod"]),
                ("dm_mod", &[]),
                ("virtio_blk", &["virtio", "virtio_ring"]),
                ("virtio", &["virtio_ring"]),
                ("virtio_ring", &[]),
            ]),
        )
        .unwrap();
        assert_eq!(
            order,
            [
                "dm_mod",
                "dm_bufio",
                "dm_verity",
                "virtio_ring",
                "virtio",
                "virtio_blk"
            ]
        );
    }

    #[test]
    fn a_cycle_and_an_unknown_module_are_named() {
        let e = load_order(&["a".into()], graph(&[("a", &["b"]), ("b", &["a"])])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "kernel modules depend on each other in a circle: a -> b -> a"
        );
        let e = load_order(&["nope".into()], graph(&[])).unwrap_err();
        assert!(e.to_string().contains("no module \"nope\""), "{e}");
    }

    #[test]
    fn needs_reads_depends_and_soft_pre_dependencies() {
        let info = [
            ("depends".to_string(), "dm-bufio,dm_mod".to_string()),
            ("softdep".to_string(), "pre: crc32c post: foo".to_string()),
            ("license".to_string(), "GPL".to_string()),
        ];
        assert_eq!(needs(&info), ["dm_bufio", "dm_mod", "crc32c"]);
        assert!(needs(&[("depends".into(), String::new())]).is_empty());
    }

    /// A minimal ELF64 with a section-name table and a `.modinfo`.
    fn elf(modinfo: &[u8]) -> Vec<u8> {
        let names = b"\0.shstrtab\0.modinfo\0";
        let mut f = vec![0u8; 0x40];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let names_off = f.len();
        f.extend_from_slice(names);
        let info_off = f.len();
        f.extend_from_slice(modinfo);
        let shoff = f.len();
        f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&0x40u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        for (name, off, size) in [
            (0u32, 0usize, 0usize),
            (1, names_off, names.len()),
            (11, info_off, modinfo.len()),
        ] {
            let mut h = [0u8; 0x40];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            f.extend_from_slice(&h);
        }
        f
    }

    #[test]
    fn modinfo_reads_the_section_and_refuses_what_is_not_elf() {
        let m = elf(b"license=GPL\0depends=virtio,virtio_ring\0name=virtio_blk\0");
        let info = modinfo(&m, Path::new("virtio_blk.ko")).unwrap();
        assert_eq!(info[1], ("depends".into(), "virtio,virtio_ring".into()));
        assert_eq!(needs(&info), ["virtio", "virtio_ring"]);
        let e = modinfo(b"#!/bin/sh\n", Path::new("x.ko")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "x.ko: not a 64-bit little-endian ELF module (bad magic)"
        );
        let mut truncated = m.clone();
        truncated.truncate(0x60);
        assert!(modinfo(&truncated, Path::new("t.ko")).is_err());
    }

    #[test]
    fn tree_resolves_files_and_skips_built_in_modules() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("kernel/drivers");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(
            k.join("virtio_blk.ko"),
            elf(b"depends=virtio\0softdep=pre: gone\0"),
        )
        .unwrap();
        std::fs::write(k.join("virtio.ko"), elf(b"depends=\0")).unwrap();
        std::fs::write(
            dir.path().join("modules.builtin"),
            "kernel/fs/ext4/ext4.ko\n",
        )
        .unwrap();
        let tree = Tree::open(dir.path()).unwrap();
        let got = tree
            .resolve(&["ext4".into(), "virtio-blk".into()])
            .unwrap()
            .into_iter()
            .map(|(n, p)| (n, p.file_name().unwrap().to_string_lossy().into_owned()))
            .collect::<Vec<_>>();
        assert_eq!(
            got,
            [
                ("virtio".to_string(), "virtio.ko".to_string()),
                ("virtio_blk".to_string(), "virtio_blk.ko".to_string())
            ]
        );
        assert!(matches!(
            tree.resolve(&["e1000".into()]),
            Err(ModuleError::Unknown { .. })
        ));
    }
}

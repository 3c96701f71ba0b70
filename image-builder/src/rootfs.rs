//! The read-only root filesystem: a staging folder laid out by keel (no
//! root needed: ownership is set to root by mkfs.erofs), then packed with
//! `mkfs.erofs` with fixed timestamps and UUID so that it is reproducible.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use keel_formats::container::ContainerDef;
use keel_formats::CONTAINERS_DIR;

use crate::package::Package;
use crate::tool::{self, ToolError};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a static executable ({why}); keel images carry no dynamic binaries")]
    NotStatic { path: PathBuf, why: &'static str },
    #[error("container {container}: `rootfs.contents` names {item:?}, which is neither a userland package of the image nor a keel binary")]
    UnknownContent { container: String, item: String },
    #[error("container {container}: `seccomp`: {message}")]
    Seccomp { container: String, message: String },
    #[error("container {container}: {source}")]
    Oci {
        container: String,
        source: crate::oci::OciError,
    },
    #[error("files.{dst}: {path}: {source}")]
    Extra {
        dst: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("files.{dst}: /{path} is keel's own; an image may add files, not replace them")]
    Replaces { dst: String, path: String },
    #[error("{path}: the image's own symlink is on the way; keel writes nothing through one")]
    ThroughSymlink { path: PathBuf },
    #[error(transparent)]
    Tool(#[from] ToolError),
}

/// An entry of the recipe's `[files]`: a file or a folder to copy into the
/// root, at `dst` (relative to `/`).
#[derive(Debug, Clone)]
pub struct Extra {
    pub dst: String,
    pub src: PathBuf,
    /// Every copied file's mode; default 0644, 0755 where executable.
    pub mode: Option<u32>,
}

/// A system container as the build sees it.
#[derive(Debug, Clone)]
pub struct StagedContainer {
    pub name: String,
    pub def: ContainerDef,
    /// The definition as written, copied verbatim into the image.
    pub text: String,
    /// The OCI image of `rootfs.oci`, opened (and its blobs checked) once
    /// when the definition was loaded.
    pub oci: Option<std::sync::Arc<crate::oci::Image>>,
    /// `rootfs.files`, their sources found beside the definition.
    pub files: Vec<(String, PathBuf)>,
}

/// Everything that goes into a root filesystem.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub keel_init: &'a Path,
    pub keelctl: &'a Path,
    /// Folder of keel's own musl binaries; a container's `rootfs.contents`
    /// may name any of them (`keelctl`, `keel-probe`).
    pub bin_dir: &'a Path,
    pub packages: &'a [Package],
    pub containers: &'a [StagedContainer],
    pub os_release: &'a str,
    /// More files of the host, (path below `/`, contents), mode 0644:
    /// trusted keys, the update policy, the default host config.
    pub files: &'a [(String, Vec<u8>)],
    /// The recipe's own files, staged last: they may not replace keel's.
    pub extra: &'a [Extra],
}

/// Why an ELF file is not a static executable, if it is not.
pub fn static_elf_problem(bytes: &[u8]) -> Option<&'static str> {
    if bytes.get(..4) != Some(b"\x7fELF") {
        return Some("not ELF");
    }
    if bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        return Some("not 64-bit little-endian ELF");
    }
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Some("truncated header");
    };
    for i in 0..u64::from(phnum) {
        let at = usize::try_from(phoff + i * u64::from(phentsize)).unwrap_or(usize::MAX);
        match bytes
            .get(at..at + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        {
            None => return Some("truncated program headers"),
            Some(3) => return Some("has an ELF interpreter (dynamically linked)"),
            Some(_) => {}
        }
    }
    None
}

struct Stager {
    root: PathBuf,
    /// Source file → its first staged copy, which later uses hard-link so
    /// that erofs stores each binary once.
    stored: BTreeMap<PathBuf, PathBuf>,
}

impl Stager {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError + '_ {
        move |source| RootfsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// `rel` under the root, refusing a path that goes through a symlink
    /// or `..` (the last part too when `last` is set): an OCI image's
    /// layers can hold links to anywhere on the build machine, and keel
    /// writes into those roots after them. Nothing else writes into the
    /// staging folder meanwhile, so the check holds for the write.
    fn inside(&self, rel: &str, last: bool) -> Result<PathBuf, RootfsError> {
        let rel = Path::new(rel.trim_start_matches('/'));
        let parts: Vec<_> = rel.components().collect();
        let mut p = self.root.clone();
        for (i, c) in parts.iter().enumerate() {
            p.push(c);
            let through = !matches!(c, std::path::Component::Normal(_))
                || (fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink())
                    && (last || i + 1 < parts.len()));
            if through {
                return Err(RootfsError::ThroughSymlink { path: p });
            }
        }
        Ok(p)
    }

    fn dir(&self, rel: &str) -> Result<PathBuf, RootfsError> {
        let p = self.inside(rel, true)?;
        fs::create_dir_all(&p).map_err(Self::io(&p))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).map_err(Self::io(&p))?;
        Ok(p)
    }

    fn parent_of(&self, rel: &str) -> Result<PathBuf, RootfsError> {
        let p = self.root.join(rel.trim_start_matches('/'));
        if let Some(parent) = p.parent() {
            let parent_rel = parent.strip_prefix(&self.root).unwrap_or(parent);
            self.dir(&parent_rel.to_string_lossy())?;
        }
        Ok(p)
    }

    fn file(&self, rel: &str, data: &[u8], mode: u32) -> Result<(), RootfsError> {
        let p = self.parent_of(rel)?;
        self.inside(rel, true)?;
        fs::write(&p, data).map_err(Self::io(&p))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).map_err(Self::io(&p))?;
        Ok(())
    }

    fn executable(&mut self, rel: &str, src: &Path) -> Result<(), RootfsError> {
        let p = self.parent_of(rel)?;
        self.inside(rel, true)?;
        if let Some(first) = self.stored.get(src) {
            fs::hard_link(first, &p).map_err(Self::io(&p))?;
            return Ok(());
        }
        let bytes = fs::read(src).map_err(Self::io(src))?;
        if let Some(why) = static_elf_problem(&bytes) {
            return Err(RootfsError::NotStatic {
                path: src.to_path_buf(),
                why,
            });
        }
        fs::write(&p, &bytes).map_err(Self::io(&p))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).map_err(Self::io(&p))?;
        self.stored.insert(src.to_path_buf(), p);
        Ok(())
    }

    fn link(&self, rel: &str, target: &str) -> Result<(), RootfsError> {
        let p = self.parent_of(rel)?;
        if p.symlink_metadata().is_ok() {
            return Ok(());
        }
        symlink(target, &p).map_err(Self::io(&p))
    }
}

/// Lay out the root filesystem in `dir`, which is emptied first.
pub fn stage(dir: &Path, inputs: &Inputs<'_>) -> Result<(), RootfsError> {
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(Stager::io(dir))?;
    }
    let mut s = Stager {
        root: dir.to_path_buf(),
        stored: BTreeMap::new(),
    };
    s.host(inputs)?;
    for c in inputs.containers {
        s.container(c, inputs)?;
    }
    for e in inputs.extra {
        s.extra(e)?;
    }
    Ok(())
}

impl Stager {
    /// The host's own tree: keel-init as /sbin/init, keelctl, os-release
    /// and the host files.
    fn host(&mut self, inputs: &Inputs<'_>) -> Result<(), RootfsError> {
        self.dir("/")?;
        for d in [
            "dev", "proc", "sys", "run", "tmp", "var", "efi", "etc", "usr/bin", "sbin",
        ] {
            self.dir(d)?;
        }
        self.executable("usr/bin/keel-init", inputs.keel_init)?;
        self.executable("usr/bin/keelctl", inputs.keelctl)?;
        self.link("sbin/init", "/usr/bin/keel-init")?;
        self.file("usr/lib/os-release", inputs.os_release.as_bytes(), 0o644)?;
        self.link("etc/os-release", "../usr/lib/os-release")?;
        self.link("etc/resolv.conf", keel_formats::host::RESOLV_CONF)?;
        for (path, contents) in inputs.files {
            self.file(path, contents, 0o644)?;
        }
        Ok(())
    }

    /// A container: its definition and compiled filter beside the others,
    /// and its root, unpacked from its OCI image if it has one.
    fn container(&mut self, c: &StagedContainer, inputs: &Inputs<'_>) -> Result<(), RootfsError> {
        self.file(
            &format!("{CONTAINERS_DIR}/{}.toml", c.name),
            c.text.as_bytes(),
            0o644,
        )?;
        // The filter compiled here saves keel-init compiling it at boot.
        let filter = keel_formats::seccomp::compile(&c.def.seccomp).map_err(|message| {
            RootfsError::Seccomp {
                container: c.name.clone(),
                message,
            }
        })?;
        if let Some(prog) = filter {
            self.file(
                &format!("{CONTAINERS_DIR}/{}.seccomp", c.name),
                &keel_formats::seccomp::encode(&c.def.seccomp, &prog),
                0o644,
            )?;
        }
        let root = format!("{CONTAINERS_DIR}/{}/rootfs", c.name);
        if let Some(image) = &c.oci {
            crate::oci::unpack(image, &self.root.join(root.trim_start_matches('/'))).map_err(
                |source| RootfsError::Oci {
                    container: c.name.clone(),
                    source,
                },
            )?;
        }
        self.container_skeleton(c, &root, inputs.os_release)?;
        for m in &c.def.mounts {
            self.dir(&format!("{root}/{}", m.target.trim_start_matches('/')))?;
        }
        for w in &c.def.writable {
            self.dir(&format!("{root}/{}", w.path.trim_start_matches('/')))?;
        }
        for item in &c.def.rootfs.contents {
            self.content(c, &root, item, inputs)?;
        }
        self.container_files(c, &root)
    }

    /// The folders and files every container root has, under `root`.
    fn container_skeleton(
        &self,
        c: &StagedContainer,
        root: &str,
        os_release: &str,
    ) -> Result<(), RootfsError> {
        // An image's own folders, users and os-release stay as they are.
        let keep =
            |rel: &str| c.oci.is_some() && self.root.join(rel.trim_start_matches('/')).exists();
        for d in ["dev", "proc", "sys", "tmp", "run", "var", "root", "etc"] {
            let rel = format!("{root}/{d}");
            if !keep(&rel) {
                self.dir(&rel)?;
            }
        }
        // The admin and pull users name the admin shell's and keel-pull's
        // ids for `id`, `ps` and `ls -l`.
        let passwd = format!(
            "root:x:0:0:root:/root:/bin/sh\nadmin:x:{}:{}:keel admin:/root:/bin/sh\n\
             pull:x:{}:{}:keel-pull:/var/lib/keel-pull:/sbin/nologin\n",
            keel_formats::ADMIN_UID,
            keel_formats::ADMIN_GID,
            keel_formats::PULL_UID,
            keel_formats::PULL_GID
        );
        let group = format!(
            "root:x:0:\nadmin:x:{}:\npull:x:{}:\n",
            keel_formats::ADMIN_GID,
            keel_formats::PULL_GID
        );
        for (f, text) in [
            ("etc/passwd", passwd.as_str()),
            ("etc/group", group.as_str()),
            ("etc/os-release", os_release),
        ] {
            let rel = format!("{root}/{f}");
            if !keep(&rel) {
                self.file(&rel, text.as_bytes(), 0o644)?;
            }
        }
        // The host's resolvers, for a container that binds /run/keel/dns
        // (keel-init writes it from the host config or a DHCP lease).
        let resolv = format!("{root}/etc/resolv.conf");
        if !keep(&resolv) {
            self.link(&resolv, keel_formats::host::RESOLV_CONF)?;
        }
        Ok(())
    }

    /// One item of `rootfs.contents`: a keel binary, or a userland
    /// package's files and links. A package wins over a keel binary of the
    /// same name.
    fn content(
        &mut self,
        c: &StagedContainer,
        root: &str,
        item: &str,
        inputs: &Inputs<'_>,
    ) -> Result<(), RootfsError> {
        let own = inputs.bin_dir.join(item);
        if !inputs.packages.iter().any(|p| p.name == item) && own.is_file() {
            return self.executable(&format!("{root}/usr/bin/{item}"), &own);
        }
        let pkg = inputs
            .packages
            .iter()
            .find(|p| p.name == item)
            .ok_or_else(|| RootfsError::UnknownContent {
                container: c.name.clone(),
                item: item.to_string(),
            })?;
        for (dst, src) in &pkg.files {
            self.executable(&format!("{root}/{dst}"), src)?;
        }
        if let Some((first, _)) = pkg.files.first() {
            let target = format!("/{}", first.trim_start_matches('/'));
            for l in &pkg.links {
                self.link(&format!("{root}{l}"), &target)?;
            }
        }
        Ok(())
    }

    /// `rootfs.files`, copied like the recipe's `[files]` but named by the
    /// container in errors.
    fn container_files(&self, c: &StagedContainer, root: &str) -> Result<(), RootfsError> {
        for (dst, src) in &c.files {
            self.extra(&Extra {
                dst: format!("{}/{dst}", root.trim_start_matches('/')),
                src: src.clone(),
                mode: None,
            })
            .map_err(|e| match e {
                RootfsError::Extra { path, source, .. } => RootfsError::Extra {
                    dst: format!("container {}: rootfs.files.{dst}", c.name),
                    path,
                    source,
                },
                other => other,
            })?;
        }
        Ok(())
    }
}

impl Stager {
    /// Copy a `[files]` entry; a folder is copied whole, in name order.
    fn extra(&self, e: &Extra) -> Result<(), RootfsError> {
        let err = |path: &Path| {
            let (dst, path) = (e.dst.clone(), path.to_path_buf());
            move |source| RootfsError::Extra { dst, path, source }
        };
        let mut todo = vec![(e.src.clone(), e.dst.clone())];
        while let Some((src, dst)) = todo.pop() {
            let meta = fs::metadata(&src).map_err(err(&src))?;
            if meta.is_dir() {
                let mut names: Vec<_> = fs::read_dir(&src)
                    .map_err(err(&src))?
                    .map(|d| d.map(|d| d.file_name()))
                    .collect::<Result<_, _>>()
                    .map_err(err(&src))?;
                names.sort();
                for n in names.into_iter().rev() {
                    let n = n.to_string_lossy().into_owned();
                    todo.push((src.join(&n), format!("{dst}/{n}")));
                }
                continue;
            }
            if self.root.join(&dst).symlink_metadata().is_ok() {
                return Err(RootfsError::Replaces {
                    dst: e.dst.clone(),
                    path: dst,
                });
            }
            let data = fs::read(&src).map_err(err(&src))?;
            let mode = e.mode.unwrap_or(if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            });
            self.file(&dst, &data, mode)?;
        }
        Ok(())
    }
}

/// Pack `dir` into an erofs image at `out`.
pub fn mkfs_erofs(dir: &Path, out: &Path, uuid: &str) -> Result<(), RootfsError> {
    if out.exists() {
        fs::remove_file(out).map_err(Stager::io(out))?;
    }
    tool::run(
        Command::new("mkfs.erofs")
            .arg("--quiet")
            .arg("-zlz4hc")
            .arg("-T0")
            .arg(format!("-U{uuid}"))
            .arg("--all-root")
            .arg(out)
            .arg(dir),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_written_through_an_image_s_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir_all(outside.join("bin")).unwrap();
        fs::write(outside.join("bin/x"), b"host file").unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("c")).unwrap();
        // As an OCI layer may leave them: a folder and a file that link out.
        std::os::unix::fs::symlink(&outside, root.join("c/usr")).unwrap();
        std::os::unix::fs::symlink(outside.join("bin/x"), root.join("c/passwd")).unwrap();
        let mut s = Stager {
            root: root.clone(),
            stored: BTreeMap::new(),
        };
        let me = std::env::current_exe().unwrap();
        for e in [
            s.executable("c/usr/bin/x", &me).unwrap_err(),
            s.file("c/passwd", b"evil", 0o644).unwrap_err(),
            s.dir("c/usr/lib").unwrap_err(),
            s.file("c/../outside/bin/x", b"evil", 0o644).unwrap_err(),
        ] {
            assert!(matches!(e, RootfsError::ThroughSymlink { .. }), "{e}");
        }
        assert_eq!(fs::read(outside.join("bin/x")).unwrap(), b"host file");
        assert_eq!(fs::read_dir(outside.join("bin")).unwrap().count(), 1);
        assert!(!outside.join("lib").exists());
    }

    #[test]
    fn the_test_binary_is_checked_as_elf() {
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        // Test binaries are built for the host, dynamically linked.
        assert_eq!(
            static_elf_problem(&me),
            Some("has an ELF interpreter (dynamically linked)")
        );
        assert_eq!(static_elf_problem(b"#!/bin/sh\n"), Some("not ELF"));
    }

    #[test]
    fn stage_lays_out_containers_and_refuses_dynamic_binaries() {
        let dir = tempfile::tempdir().unwrap();
        let def = ContainerDef::parse(
            "command = [\"/bin/sh\"]\n[rootfs]\ncontents = [\"keelctl\"]\n[[mounts]]\nsource = \"/run/keel\"\ntarget = \"/run/keel\"\n",
        )
        .unwrap();
        let containers = [StagedContainer {
            name: "admin".into(),
            def,
            text: "x".into(),
            oci: None,
            files: Vec::new(),
        }];
        let me = std::env::current_exe().unwrap();
        let inputs = Inputs {
            keel_init: &me,
            keelctl: &me,
            bin_dir: dir.path(),
            packages: &[],
            containers: &containers,
            os_release: "ID=keel\n",
            files: &[],
            extra: &[],
        };
        let err = stage(&dir.path().join("root"), &inputs).unwrap_err();
        assert!(matches!(err, RootfsError::NotStatic { .. }), "{err}");
    }

    #[test]
    fn extra_files_are_copied_with_modes_and_never_replace_keel_files() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("conf.d/sub")).unwrap();
        fs::write(src.join("motd"), "hello\n").unwrap();
        fs::write(src.join("conf.d/a.conf"), "a\n").unwrap();
        fs::write(src.join("conf.d/sub/run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(
            src.join("conf.d/sub/run.sh"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let root = dir.path().join("root");
        let s = Stager {
            root: root.clone(),
            stored: BTreeMap::new(),
        };
        s.dir("/").unwrap();
        s.file("usr/lib/os-release", b"ID=keel\n", 0o644).unwrap();
        let extra = |dst: &str, src: PathBuf, mode| Extra {
            dst: dst.into(),
            src,
            mode,
        };
        s.extra(&extra("etc/motd", src.join("motd"), Some(0o600)))
            .unwrap();
        s.extra(&extra("etc/app", src.join("conf.d"), None))
            .unwrap();
        let mode = |p: &str| fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            fs::read_to_string(root.join("etc/motd")).unwrap(),
            "hello\n"
        );
        assert_eq!(mode("etc/motd"), 0o600);
        assert_eq!(mode("etc/app/a.conf"), 0o644);
        assert_eq!(mode("etc/app/sub/run.sh"), 0o755);

        let err = s
            .extra(&extra("usr/lib/os-release", src.join("motd"), None))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "files.usr/lib/os-release: /usr/lib/os-release is keel's own; an image may add files, not replace them"
        );
        let err = s
            .extra(&extra("etc/x", src.join("nonesuch"), None))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("files.etc/x: ") && err.contains("nonesuch"),
            "{err}"
        );
    }
}

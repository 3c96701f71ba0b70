//! Unified kernel images: systemd-stub with the kernel, initramfs, command
//! line and os-release appended as PE sections, as `ukify` does.
//!
//! systemd-stub finds its payload by section name in the loaded image, so
//! each new section gets a virtual address past the stub's own sections and
//! `SizeOfImage` grows to cover them.

use std::ops::Range;

const SECTION_HEADER: usize = 40;
const SCN_INITIALIZED_DATA_READ: u32 = 0x4000_0040;
/// Virtual addresses of payload sections are page-aligned, which every
/// firmware and the stub's kernel hand-over accept.
const PAYLOAD_VA_ALIGN: u32 = 0x1000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UkiError {
    #[error("stub is not a PE32+ image: {0}")]
    NotPe(&'static str),
    #[error("stub has no room in its headers for {wanted} more section headers (room for {room})")]
    NoRoom { wanted: usize, room: usize },
    #[error("section name {0:?} is longer than 8 bytes")]
    LongName(String),
    #[error("stub already has a {0} section")]
    Duplicate(String),
    #[error("UKI would exceed 4 GiB")]
    TooLarge,
}

/// What goes into a UKI besides the stub.
#[derive(Debug)]
pub struct Payload<'a> {
    pub osrel: &'a [u8],
    pub cmdline: &'a [u8],
    pub uname: &'a [u8],
    pub linux: &'a [u8],
    pub initrd: &'a [u8],
}

fn u16_at(b: &[u8], off: usize) -> Result<u16, UkiError> {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(UkiError::NotPe("truncated"))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, UkiError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(UkiError::NotPe("truncated"))
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn align(v: u32, a: u32) -> u32 {
    v.div_ceil(a) * a
}

/// Offsets within the PE headers that assembly reads and patches.
#[derive(Debug)]
struct Layout {
    coff: usize,
    opt: usize,
    sections: usize,
    nsections: usize,
    file_align: u32,
    section_align: u32,
    size_of_headers: u32,
}

fn layout(stub: &[u8]) -> Result<Layout, UkiError> {
    if stub.get(..2) != Some(b"MZ") {
        return Err(UkiError::NotPe("no MZ header"));
    }
    let pe = u32_at(stub, 0x3c)? as usize;
    if stub.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err(UkiError::NotPe("no PE signature"));
    }
    let coff = pe + 4;
    let nsections = u16_at(stub, coff + 2)? as usize;
    let opt_size = u16_at(stub, coff + 16)? as usize;
    let opt = coff + 20;
    if u16_at(stub, opt)? != 0x20b {
        return Err(UkiError::NotPe("not PE32+"));
    }
    Ok(Layout {
        coff,
        opt,
        sections: opt + opt_size,
        nsections,
        section_align: u32_at(stub, opt + 32)?,
        file_align: u32_at(stub, opt + 36)?,
        size_of_headers: u32_at(stub, opt + 60)?,
    })
}

/// One PE section: its name, where it is loaded and where it is in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub virt: Range<u32>,
    pub raw: Range<u32>,
}

/// The sections of a PE image.
pub fn sections(image: &[u8]) -> Result<Vec<Section>, UkiError> {
    let l = layout(image)?;
    (0..l.nsections)
        .map(|i| {
            let h = l.sections + i * SECTION_HEADER;
            let raw = image
                .get(h..h + 8)
                .ok_or(UkiError::NotPe("truncated section table"))?;
            let name = String::from_utf8_lossy(raw)
                .trim_end_matches('\0')
                .to_string();
            let (vsize, va) = (u32_at(image, h + 8)?, u32_at(image, h + 12)?);
            let (rsize, rptr) = (u32_at(image, h + 16)?, u32_at(image, h + 20)?);
            Ok(Section {
                name,
                virt: va..va + vsize,
                raw: rptr..rptr + rsize,
            })
        })
        .collect()
}

/// Append `payload` to `stub` as `.osrel`, `.cmdline`, `.uname`, `.linux`
/// and `.initrd` sections.
pub fn assemble(stub: &[u8], payload: &Payload<'_>) -> Result<Vec<u8>, UkiError> {
    assemble_with(stub, payload, &[])
}

/// The sections [`assemble`] appends, in that order.
pub fn payload_sections<'a>(payload: &Payload<'a>) -> [(&'static str, &'a [u8]); 5] {
    [
        (".osrel", payload.osrel),
        (".cmdline", payload.cmdline),
        (".uname", payload.uname),
        (".linux", payload.linux),
        (".initrd", payload.initrd),
    ]
}

/// [`assemble`], with `extra` sections after the payload's (`.pcrpkey`,
/// `.pcrsig`).
pub fn assemble_with(
    stub: &[u8],
    payload: &Payload<'_>,
    extra: &[(&str, &[u8])],
) -> Result<Vec<u8>, UkiError> {
    let mut new: Vec<(&str, &[u8])> = payload_sections(payload).to_vec();
    new.extend_from_slice(extra);
    let l = layout(stub)?;
    let existing = sections(stub)?;
    for (name, _) in &new {
        if existing.iter().any(|s| s.name == *name) {
            return Err(UkiError::Duplicate((*name).to_string()));
        }
    }
    let table_end = l.sections + l.nsections * SECTION_HEADER;
    let room = (l.size_of_headers as usize).saturating_sub(table_end) / SECTION_HEADER;
    if room < new.len() {
        return Err(UkiError::NoRoom {
            wanted: new.len(),
            room,
        });
    }
    // The section table must be followed by zeroes we may overwrite.
    let free = &stub[table_end..table_end + new.len() * SECTION_HEADER];
    if free.iter().any(|&b| b != 0) {
        return Err(UkiError::NotPe("bytes after the section table are in use"));
    }

    let mut next_va = existing.iter().map(|s| s.virt.end).max().unwrap_or(0);
    let mut file_end = existing
        .iter()
        .map(|s| s.raw.end)
        .max()
        .unwrap_or(l.size_of_headers);
    file_end = file_end.max(u32::try_from(stub.len()).map_err(|_| UkiError::TooLarge)?);
    let mut out = stub.to_vec();
    out.resize(align(file_end, l.file_align) as usize, 0);
    let mut initialized = u32_at(stub, l.opt + 8)?;

    for (i, (name, data)) in new.iter().enumerate() {
        if name.len() > 8 {
            return Err(UkiError::LongName((*name).to_string()));
        }
        let size = u32::try_from(data.len()).map_err(|_| UkiError::TooLarge)?;
        let va = align(next_va, PAYLOAD_VA_ALIGN.max(l.section_align));
        let raw_ptr = u32::try_from(out.len()).map_err(|_| UkiError::TooLarge)?;
        let raw_size = align(size, l.file_align);

        let h = table_end + i * SECTION_HEADER;
        let mut header = [0u8; SECTION_HEADER];
        header[..name.len()].copy_from_slice(name.as_bytes());
        put_u32(&mut header, 8, size);
        put_u32(&mut header, 12, va);
        put_u32(&mut header, 16, raw_size);
        put_u32(&mut header, 20, raw_ptr);
        put_u32(&mut header, 36, SCN_INITIALIZED_DATA_READ);
        out[h..h + SECTION_HEADER].copy_from_slice(&header);

        out.extend_from_slice(data);
        out.resize(raw_ptr as usize + raw_size as usize, 0);
        next_va = va.checked_add(size).ok_or(UkiError::TooLarge)?;
        initialized = initialized
            .checked_add(raw_size)
            .ok_or(UkiError::TooLarge)?;
    }

    let nsections = u16::try_from(l.nsections + new.len()).map_err(|_| UkiError::TooLarge)?;
    out[l.coff + 2..l.coff + 4].copy_from_slice(&nsections.to_le_bytes());
    put_u32(&mut out, l.opt + 8, initialized);
    put_u32(&mut out, l.opt + 56, align(next_va, l.section_align)); // SizeOfImage
    put_u32(&mut out, l.opt + 64, 0); // CheckSum: firmware does not check it
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE32+ with one `.text` section, shaped like systemd-stub.
    fn fake_stub() -> Vec<u8> {
        let mut b = vec![0u8; 0x600];
        b[..2].copy_from_slice(b"MZ");
        put_u32(&mut b, 0x3c, 0x80);
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        b[coff..coff + 2].copy_from_slice(&0x8664u16.to_le_bytes());
        b[coff + 2..coff + 4].copy_from_slice(&1u16.to_le_bytes());
        b[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
        let opt = coff + 20;
        b[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        put_u32(&mut b, opt + 32, 0x200);
        put_u32(&mut b, opt + 36, 0x200);
        put_u32(&mut b, opt + 56, 0x1200);
        put_u32(&mut b, opt + 60, 0x400);
        let sec = opt + 240;
        b[sec..sec + 5].copy_from_slice(b".text");
        put_u32(&mut b, sec + 8, 0x180);
        put_u32(&mut b, sec + 12, 0x1000);
        put_u32(&mut b, sec + 16, 0x200);
        put_u32(&mut b, sec + 20, 0x400);
        b
    }

    fn payload() -> Payload<'static> {
        Payload {
            osrel: b"ID=keel\n",
            cmdline: b"console=ttyS0",
            uname: b"6.1.0",
            linux: &[0xAA; 5000],
            initrd: &[0xBB; 700],
        }
    }

    #[test]
    fn sections_land_after_the_stub_and_hold_their_data() {
        let uki = assemble(&fake_stub(), &payload()).unwrap();
        let secs = sections(&uki).unwrap();
        let names: Vec<_> = secs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [".text", ".osrel", ".cmdline", ".uname", ".linux", ".initrd"]
        );
        let mut prev_va_end = 0x1180;
        for s in &secs[1..] {
            assert!(s.virt.start >= prev_va_end, "{} overlaps", s.name);
            assert_eq!(s.virt.start % PAYLOAD_VA_ALIGN, 0);
            assert_eq!(s.raw.start % 0x200, 0);
            prev_va_end = s.virt.end;
        }
        let linux = &secs[4];
        let data = &uki[linux.raw.start as usize..][..5000];
        assert!(data.iter().all(|&b| b == 0xAA));
        assert_eq!(linux.virt.len(), 5000);
        let l = layout(&uki).unwrap();
        assert!(u32_at(&uki, l.opt + 56).unwrap() >= prev_va_end);
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        assert_eq!(
            assemble(b"nope", &payload()),
            Err(UkiError::NotPe("no MZ header"))
        );
        let uki = assemble(&fake_stub(), &payload()).unwrap();
        assert_eq!(
            assemble(&uki, &payload()),
            Err(UkiError::Duplicate(".osrel".into()))
        );
        let mut small = fake_stub();
        let l = layout(&small).unwrap();
        put_u32(&mut small, l.opt + 60, 0x1a0 + 40);
        assert!(matches!(
            assemble(&small, &payload()),
            Err(UkiError::NoRoom { .. })
        ));
    }
}

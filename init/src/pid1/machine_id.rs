//! The host's machine id (keel_formats::host::MACHINE_ID): kept on /var,
//! drawn from the kernel's random pool the first time (or when the file
//! is not a machine id), copied where services read it.

use std::io::{Read, Write};
use std::path::Path;

use keel_formats::host::{machine_id_text, parse_machine_id};

/// Read the id at `kept`, or draw and keep a new one; copy it to `run`.
/// Returns the id's text and whether it is new.
pub(super) fn ensure(kept: &Path, run: &Path) -> Result<(String, bool), String> {
    fn err(p: &Path) -> impl Fn(std::io::Error) -> String + '_ {
        move |e| format!("{}: {e}", p.display())
    }
    let existing = std::fs::read_to_string(kept)
        .ok()
        .and_then(|t| parse_machine_id(&t));
    let (id, new) = match existing {
        Some(id) => (id, false),
        None => {
            let mut id = [0u8; 16];
            // Zero only with probability 2^-128, but parse refuses it:
            // draw until it is not.
            while parse_machine_id(&machine_id_text(&id)).is_none() {
                std::fs::File::open("/dev/urandom")
                    .and_then(|mut f| f.read_exact(&mut id))
                    .map_err(err(Path::new("/dev/urandom")))?;
            }
            // Written beside it, synced, then renamed: a power cut leaves
            // the old file or the new one, never half of one.
            let tmp = kept.with_extension("new");
            let mut f = std::fs::File::create(&tmp).map_err(err(&tmp))?;
            f.write_all(machine_id_text(&id).as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(err(&tmp))?;
            std::fs::rename(&tmp, kept).map_err(err(kept))?;
            if let Some(dir) = kept.parent() {
                let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
            }
            (id, true)
        }
    };
    let text = machine_id_text(&id);
    std::fs::write(run, &text).map_err(err(run))?;
    Ok((text.trim_end().to_string(), new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawn_once_then_kept_and_a_bad_file_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let (kept, run) = (d.path().join("machine-id"), d.path().join("run-id"));
        let (first, new) = ensure(&kept, &run).unwrap();
        assert!(new);
        assert_eq!(first.len(), 32);
        assert_eq!(std::fs::read_to_string(&run).unwrap(), format!("{first}\n"));
        let (again, new) = ensure(&kept, &run).unwrap();
        assert_eq!((again.as_str(), new), (first.as_str(), false));
        std::fs::write(&kept, "garbage").unwrap();
        let (other, new) = ensure(&kept, &run).unwrap();
        assert!(new);
        assert_ne!(other, first);
        assert_eq!(
            parse_machine_id(&std::fs::read_to_string(&kept).unwrap()),
            parse_machine_id(&other)
        );
    }
}

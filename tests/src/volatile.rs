//! A disk that keeps a write only once the guest flushes it, as a disk
//! with a volatile write cache does when the power goes. It is served to
//! QEMU over NBD on a Unix socket: killing QEMU (a power cut) ends the
//! connection, and every write since the last flush is gone. QEMU alone
//! never loses a completed write, so without this a power-cut test cannot
//! find a missing fsync.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const SECTOR: u64 = 512;

/// The disk file behind a cache of writes not yet flushed, by sector.
struct Cached {
    file: File,
    size: u64,
    pending: BTreeMap<u64, Vec<u8>>,
    at: u64,
    flushed: Arc<AtomicU64>,
}

impl Cached {
    /// Sector `s` as the guest last wrote it.
    fn sector(&self, s: u64) -> std::io::Result<Vec<u8>> {
        if let Some(data) = self.pending.get(&s) {
            return Ok(data.clone());
        }
        let mut data = vec![0u8; SECTOR as usize];
        self.file.read_exact_at(&mut data, s * SECTOR)?;
        Ok(data)
    }
}

impl Read for Cached {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let len = (buf.len() as u64).min(self.size.saturating_sub(self.at));
        let buf = &mut buf[..len as usize];
        self.file.read_exact_at(buf, self.at)?;
        let (first, last) = (self.at / SECTOR, (self.at + len).div_ceil(SECTOR));
        for (&s, data) in self.pending.range(first..last) {
            // The overlap of sector s and [at, at + len).
            let from = (s * SECTOR).max(self.at);
            let to = ((s + 1) * SECTOR).min(self.at + len);
            buf[(from - self.at) as usize..(to - self.at) as usize]
                .copy_from_slice(&data[(from - s * SECTOR) as usize..(to - s * SECTOR) as usize]);
        }
        self.at += len;
        Ok(len as usize)
    }
}

impl Write for Cached {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let len = (buf.len() as u64).min(self.size.saturating_sub(self.at));
        if len == 0 && !buf.is_empty() {
            return Err(std::io::Error::other("write past the end of the disk"));
        }
        let mut done = 0;
        while done < len {
            let pos = self.at + done;
            let s = pos / SECTOR;
            let off = pos % SECTOR;
            let n = (SECTOR - off).min(len - done);
            let mut data = self.sector(s)?;
            data[off as usize..(off + n) as usize]
                .copy_from_slice(&buf[done as usize..(done + n) as usize]);
            self.pending.insert(s, data);
            done += n;
        }
        self.at += len;
        Ok(len as usize)
    }

    /// NBD_CMD_FLUSH: what the guest wrote is on the disk from now on.
    fn flush(&mut self) -> std::io::Result<()> {
        for (s, data) in std::mem::take(&mut self.pending) {
            self.file.write_all_at(&data, s * SECTOR)?;
            self.flushed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl Seek for Cached {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.at = match to {
            SeekFrom::Start(at) => at,
            _ => return Err(std::io::Error::other("NBD seeks from the start only")),
        };
        Ok(self.at)
    }
}

/// An NBD server of one disk file, one connection (one QEMU) at a time.
#[derive(Debug)]
pub struct VolatileDisk {
    socket: PathBuf,
    lost: Arc<AtomicU64>,
    flushed: Arc<AtomicU64>,
}

impl VolatileDisk {
    /// Serve `disk` on the Unix socket `socket`, from a thread that lives
    /// as long as the test.
    pub fn serve(disk: &Path, socket: &Path) -> VolatileDisk {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).expect("binding the NBD socket");
        let disk = disk.to_path_buf();
        let lost = Arc::new(AtomicU64::new(0));
        let flushed = Arc::new(AtomicU64::new(0));
        let (lost_c, flushed_c) = (lost.clone(), flushed.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&disk)
                    .expect("opening the disk behind NBD");
                let size = file.metadata().expect("the disk's size").len();
                let mut cache = Cached {
                    file,
                    size,
                    pending: BTreeMap::new(),
                    at: 0,
                    flushed: flushed_c.clone(),
                };
                let export = nbd::Export {
                    size,
                    send_flush: true,
                    data: (),
                    ..Default::default()
                };
                if nbd::server::handshake(&mut stream, |_| Ok(export)).is_err() {
                    continue;
                }
                // The connection ends with QEMU: a clean exit has flushed
                // (the guest's shutdown and QEMU's close both do), a cut
                // has not, and what is pending is lost either way.
                let _ = nbd::server::transmission(&mut stream, &mut cache);
                lost_c.fetch_add(cache.pending.len() as u64, Ordering::Relaxed);
            }
        });
        VolatileDisk {
            socket: socket.to_path_buf(),
            lost,
            flushed,
        }
    }

    /// The disk for QEMU's `-drive file=`. The nbd crate's server lists
    /// its one export as "rustnbd" and has no NBD_OPT_GO, so QEMU checks
    /// the name it asks for against that list.
    pub fn qemu_file(&self) -> PathBuf {
        PathBuf::from(format!(
            "nbd:unix:{}:exportname=rustnbd",
            self.socket.display()
        ))
    }

    /// Sectors written but never flushed, lost at the end of a connection.
    pub fn lost_sectors(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Sectors flushed onto the disk file.
    pub fn flushed_sectors(&self) -> u64 {
        self.flushed.load(Ordering::Relaxed)
    }
}

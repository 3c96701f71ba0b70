//! virtio-blk backed by a file (virtio 1.1, section 5.2): reads, writes
//! and flushes (fdatasync), read-only when asked. Every request is done
//! before its buffers go back to the guest, so a completed flush means
//! the data is on the host's disk.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use virtio_queue::{Queue, QueueT};
use vm_memory::{ByteValued, GuestMemoryMmap};

use super::{read_config_bytes, VirtioDevice, F_VERSION_1, TYPE_BLOCK};

pub const SECTOR: u64 = 512;
const QUEUE_SIZE: u16 = 256;
/// The largest request's data the device reads or writes in one go.
const CHUNK: usize = 128 << 10;

/// Feature bits.
const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;

/// Request types.
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

/// Request status.
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
/// The length of the ID GET_ID returns.
const ID_LEN: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("disk {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("disk {path}: is a folder, not a file or block device")]
    Folder { path: PathBuf },
}

/// The request header the driver puts first.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct RequestHeader {
    kind: u32,
    reserved: u32,
    sector: u64,
}

// SAFETY: plain integers, no padding, any bit pattern is valid.
unsafe impl ByteValued for RequestHeader {}

pub struct Block {
    file: File,
    read_only: bool,
    sectors: u64,
    id: [u8; ID_LEN],
    config: [u8; 8],
    buf: Vec<u8>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("read_only", &self.read_only)
            .field("sectors", &self.sectors)
            .finish_non_exhaustive()
    }
}

impl Block {
    /// Open `path` (a file or block device). Its size is rounded down to
    /// whole sectors. `id` is what the guest sees as the serial
    /// (/sys/block/vdX/serial), cut to 20 bytes.
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<Block, BlockError> {
        let err = |source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(err)?;
        if file.metadata().map_err(err)?.is_dir() {
            return Err(BlockError::Folder {
                path: path.to_path_buf(),
            });
        }
        // seek(End) gives a block device's size too, where metadata's
        // length is zero.
        let size = {
            use std::io::Seek;
            (&file).seek(std::io::SeekFrom::End(0)).map_err(err)?
        };
        Ok(Block::new(file, read_only, size / SECTOR, id))
    }

    fn new(file: File, read_only: bool, sectors: u64, id: &str) -> Block {
        let mut serial = [0u8; ID_LEN];
        let n = id.len().min(ID_LEN);
        serial[..n].copy_from_slice(&id.as_bytes()[..n]);
        Block {
            file,
            read_only,
            sectors,
            id: serial,
            config: sectors.to_le_bytes(),
            buf: vec![0; CHUNK],
        }
    }

    /// Whether `len` bytes from `sector` lie within the disk.
    fn in_range(&self, sector: u64, len: usize) -> bool {
        let end = (len as u64).div_ceil(SECTOR);
        sector.checked_add(end).is_some_and(|e| e <= self.sectors)
    }

    /// Carry out one request; returns the bytes written into the
    /// guest's buffers (the status byte included).
    fn request(&mut self, chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>) -> u32 {
        let mem = chain.memory();
        let (Ok(mut reader), Ok(mut writer)) =
            (chain.clone().reader(mem), chain.clone().writer(mem))
        else {
            return 0;
        };
        // The status byte is the last writable byte.
        let Some(data_len) = writer.available_bytes().checked_sub(1) else {
            return 0;
        };
        let Ok(mut status_w) = writer.split_at(data_len) else {
            return 0;
        };
        let (status, written) = match reader.read_obj::<RequestHeader>() {
            Err(_) => (S_IOERR, 0),
            Ok(h) => match h.kind {
                T_IN => self.read_into(h.sector, &mut writer, data_len),
                T_OUT if self.read_only => (S_IOERR, 0),
                T_OUT => (self.write_from(h.sector, &mut reader), 0),
                T_FLUSH if self.read_only => (S_OK, 0),
                T_FLUSH => match self.file.sync_data() {
                    Ok(()) => (S_OK, 0),
                    Err(_) => (S_IOERR, 0),
                },
                T_GET_ID => {
                    let n = data_len.min(ID_LEN);
                    match writer.write_all(&self.id[..n]) {
                        Ok(()) => (S_OK, n),
                        Err(_) => (S_IOERR, 0),
                    }
                }
                _ => (S_UNSUPP, 0),
            },
        };
        let _ = status_w.write_all(&[status]);
        written as u32 + 1
    }

    fn read_into(
        &mut self,
        sector: u64,
        writer: &mut virtio_queue::Writer<'_>,
        len: usize,
    ) -> (u8, usize) {
        if !self.in_range(sector, len) {
            return (S_IOERR, 0);
        }
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            let at = sector * SECTOR + done as u64;
            if self.file.read_exact_at(&mut self.buf[..n], at).is_err()
                || writer.write_all(&self.buf[..n]).is_err()
            {
                return (S_IOERR, done);
            }
            done += n;
        }
        (S_OK, done)
    }

    fn write_from(&mut self, sector: u64, reader: &mut virtio_queue::Reader<'_>) -> u8 {
        let len = reader.available_bytes();
        if !self.in_range(sector, len) {
            return S_IOERR;
        }
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            let at = sector * SECTOR + done as u64;
            if reader.read_exact(&mut self.buf[..n]).is_err()
                || self.file.write_all_at(&self.buf[..n], at).is_err()
            {
                return S_IOERR;
            }
            done += n;
        }
        S_OK
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn features(&self) -> u64 {
        F_VERSION_1 | F_FLUSH | if self.read_only { F_RO } else { 0 }
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn process(
        &mut self,
        index: Option<usize>,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> bool {
        // `None` comes at DRIVER_OK, on a vCPU thread, whose seccomp
        // filter has no disk I/O: nothing to do then, as Linux's driver
        // queues requests only once the device is live and notifies.
        let Some(queue) = index.and_then(|i| queues.get_mut(i)) else {
            return false;
        };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = self.request(chain);
            if queue.add_used(mem, head, len).is_err() {
                break;
            }
            used = true;
        }
        used
    }
}

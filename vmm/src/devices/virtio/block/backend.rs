//! The host side of a virtio-blk disk: a raw image file opened once at
//! start (read-only or read-write), read and written at offsets straight
//! from and into guest memory, flushed with fdatasync.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::path::Path;

use vm_memory::{Bytes, GuestAddress};

use super::request::SECTOR_SIZE;
use crate::devices::virtio::queue::Desc;
use crate::memory::GuestMemory;

pub struct DiskFile {
    file: File,
    read_only: bool,
    /// In sectors.
    capacity: u64,
}

impl DiskFile {
    pub fn open(path: &Path, read_only: bool) -> std::io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        Self::from_file(file, read_only)
    }

    pub fn from_file(mut file: File, read_only: bool) -> std::io::Result<Self> {
        let len = file.seek(SeekFrom::End(0))?;
        Ok(Self {
            file,
            read_only,
            capacity: len / SECTOR_SIZE,
        })
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Reads from `sector` into the buffers.
    pub fn read(&mut self, mem: &GuestMemory, sector: u64, bufs: &[Desc]) -> std::io::Result<()> {
        self.file.seek(SeekFrom::Start(sector * SECTOR_SIZE))?;
        for d in bufs {
            mem.read_exact_volatile_from(GuestAddress(d.addr), &mut self.file, d.len as usize)
                .map_err(std::io::Error::other)?;
        }
        Ok(())
    }

    /// Writes the buffers at `sector`.
    pub fn write(&mut self, mem: &GuestMemory, sector: u64, bufs: &[Desc]) -> std::io::Result<()> {
        if self.read_only {
            return Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        }
        self.file.seek(SeekFrom::Start(sector * SECTOR_SIZE))?;
        for d in bufs {
            mem.write_all_volatile_to(GuestAddress(d.addr), &mut self.file, d.len as usize)
                .map_err(std::io::Error::other)?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }
}

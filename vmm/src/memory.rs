//! Guest memory: one region from guest address 0, backed by a memfd mapped
//! shared, so the guest's pages show as the VMM's `RssShmem` and not as its
//! own heap (what the benchmark tells apart).

use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::layout::MAX_MEMORY;

pub type GuestMemory = GuestMemoryMmap<()>;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory of {0} MiB: between 64 MiB and the 3.25 GiB below the MMIO hole")]
    Size(u64),
    #[error("memfd: {0}")]
    Memfd(std::io::Error),
    #[error("mapping guest memory: {0}")]
    Map(String),
}

/// Guest RAM of `mib` MiB at guest address 0.
pub fn create(mib: u64) -> Result<GuestMemory, MemoryError> {
    let size = mib.checked_mul(1 << 20).ok_or(MemoryError::Size(mib))?;
    if !(64 << 20..=MAX_MEMORY).contains(&size) {
        return Err(MemoryError::Size(mib));
    }
    let file = memfd("crius-guest-ram")?;
    file.set_len(size).map_err(MemoryError::Memfd)?;
    let region = GuestRegionMmap::from_range(
        GuestAddress(0),
        size as usize,
        Some(FileOffset::new(file, 0)),
    )
    .map_err(|e| MemoryError::Map(e.to_string()))?;
    GuestMemoryMmap::from_regions(vec![region]).map_err(|e| MemoryError::Map(e.to_string()))
}

fn memfd(name: &str) -> Result<File, MemoryError> {
    let name = std::ffi::CString::new(name)
        .map_err(|_| MemoryError::Memfd(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    // SAFETY: a valid NUL-terminated name; the returned descriptor is
    // checked and owned by the File alone.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a new descriptor nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn sizes_are_checked() {
        assert!(matches!(create(1), Err(MemoryError::Size(1))));
        assert!(matches!(create(4096), Err(MemoryError::Size(_))));
        assert!(matches!(create(u64::MAX), Err(MemoryError::Size(_))));
        let m = create(64).unwrap();
        assert_eq!(m.last_addr(), GuestAddress((64 << 20) - 1));
        m.write_obj(0x1234_5678u32, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            m.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0x1234_5678
        );
        assert!(m.write_obj(0u32, GuestAddress(64 << 20)).is_err());
    }
}

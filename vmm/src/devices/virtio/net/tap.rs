//! The host side of virtio-net: a TAP device made by this process (in the
//! network namespace it was started in), with the 12-byte virtio-net
//! header on every frame and no offloads. It goes away with the process.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// The virtio-net header of a virtio 1.x device (with `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

pub struct Tap {
    file: File,
}

impl Tap {
    /// Creates TAP `name` (at most 15 bytes) in this process's network
    /// namespace.
    pub fn create(name: &str) -> std::io::Result<Tap> {
        if name.is_empty() || name.len() > 15 || name.contains('\0') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "TAP names are 1 to 15 bytes",
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        let fd = file.as_raw_fd();
        ioctl_ptr(fd, TUNSETIFF, &mut req)?;
        let mut hdr_len: libc::c_int = VNET_HDR_LEN as libc::c_int;
        ioctl_ptr(fd, TUNSETVNETHDRSZ, &mut hdr_len)?;
        ioctl_val(fd, TUNSETOFFLOAD, 0)?;
        Ok(Tap { file })
    }

    pub fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }

    pub fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

fn ioctl_ptr<T>(fd: RawFd, req: libc::c_ulong, arg: &mut T) -> std::io::Result<()> {
    // SAFETY: `arg` is a live, properly sized struct for this TUN request.
    let r = unsafe { libc::ioctl(fd, req as _, arg as *mut T) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn ioctl_val(fd: RawFd, req: libc::c_ulong, arg: libc::c_ulong) -> std::io::Result<()> {
    // SAFETY: the request takes an integer argument; no memory is passed.
    let r = unsafe { libc::ioctl(fd, req as _, arg) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

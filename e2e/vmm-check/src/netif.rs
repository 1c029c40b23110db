//! The host end of a TAP, set up with ioctls (the nested test host has no
//! `ip`): an IPv4 address and the link up.

use std::io;

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain data; all zeros is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

fn sockaddr(ip: [u8; 4]) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the bytes of one
    // are a valid value of the other.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(req: libc::c_ulong, ifr: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: a datagram socket for the request, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `ifr` is a live ifreq, which these requests read or write.
    let r = unsafe { libc::ioctl(fd, req as _, ifr as *mut libc::ifreq) };
    let err = io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if r < 0 { Err(err) } else { Ok(()) }
}

pub fn exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

pub fn set_address(name: &str, ip: [u8; 4], prefix: u8) -> io::Result<()> {
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_addr = sockaddr(ip);
    ioctl(libc::SIOCSIFADDR, &mut r)?;
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_netmask = sockaddr(mask.to_be_bytes());
    ioctl(libc::SIOCSIFNETMASK, &mut r)
}

pub fn set_up(name: &str) -> io::Result<()> {
    let mut r = ifreq(name)?;
    ioctl(libc::SIOCGIFFLAGS, &mut r)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member.
    let flags = unsafe { r.ifr_ifru.ifru_flags };
    r.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    ioctl(libc::SIOCSIFFLAGS, &mut r)
}

/// Whether interface `name` exists in this thread's network namespace.
pub fn exists_here(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: a valid C string; if_nametoindex only reads it.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// A network namespace of our own, pinned by a bind mount at `path` (the
/// nested host has no `ip netns`), removed on drop.
pub struct NetNs {
    path: std::path::PathBuf,
}

impl NetNs {
    pub fn create(path: &std::path::Path) -> io::Result<NetNs> {
        std::fs::File::create(path)?;
        let ns = NetNs {
            path: path.to_owned(),
        };
        let target = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        std::thread::spawn(move || -> io::Result<()> {
            // SAFETY: unshare and mount with valid C strings; only this
            // thread moves to the new namespace, and it ends here.
            unsafe {
                if libc::unshare(libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                let src = c"/proc/thread-self/ns/net";
                if libc::mount(
                    src.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        })
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))??;
        Ok(ns)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
        let file = std::fs::File::open(&self.path)?;
        std::thread::spawn(move || -> io::Result<T> {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a namespace descriptor we hold; it moves only
            // this thread, which ends with `f`.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("thread in the namespace panicked"))?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Ok(c) = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

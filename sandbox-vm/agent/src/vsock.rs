//! The agent's vsock listener: a stream socket bound to any CID
//! (`VMADDR_CID_ANY`) on the agent port, handing out each accepted
//! connection as a blocking byte stream (close-on-exec, so the commands the
//! agent runs do not inherit it).

use std::fs::File;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, VsockAddr, accept4, bind, listen, socket,
};

/// How many connections may wait to be accepted.
const BACKLOG: i32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("creating the socket: {0}")]
    Socket(Errno),
    #[error("binding: {0}")]
    Bind(Errno),
    #[error("listening: {0}")]
    Listen(Errno),
}

pub struct Listener(OwnedFd);

impl Listener {
    /// Listens on `port` of every CID of the guest.
    pub fn bind(port: u32) -> Result<Listener, VsockError> {
        let fd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(VsockError::Socket)?;
        bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))
            .map_err(VsockError::Bind)?;
        let backlog = Backlog::new(BACKLOG).map_err(VsockError::Listen)?;
        listen(&fd, backlog).map_err(VsockError::Listen)?;
        Ok(Listener(fd))
    }

    /// Waits for the next connection.
    pub fn accept(&self) -> Result<File, Errno> {
        let raw = accept4(self.0.as_raw_fd(), SockFlag::SOCK_CLOEXEC)?;
        Ok(File::from(owned(raw)))
    }
}

/// Takes ownership of a descriptor `accept4` just returned.
fn owned(raw: i32) -> OwnedFd {
    // SAFETY: `raw` is a descriptor accept4 has just opened for us: valid,
    // and owned by nothing else, so the OwnedFd is its only owner.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

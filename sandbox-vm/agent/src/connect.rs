//! `Connect`: a TCP connection to a port on the guest's loopback (CRI
//! PortForward: the pod's IP lives in the guest), whose bytes then travel
//! on the host's connection both ways, one thread per direction.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `port` on loopback (IPv4, then IPv6).
pub fn connect(port: u16) -> io::Result<TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Ok(s) => Ok(s),
        Err(e4) => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|_| e4)
        }
    }
}

/// Copies both ways between the host's connection and `tcp` until the pod
/// closes, or the host does.
pub fn relay(host: &File, tcp: TcpStream) -> io::Result<()> {
    let mut host_in = host.try_clone()?;
    let mut tcp_out = tcp.try_clone()?;
    std::thread::spawn(move || {
        let _ = io::copy(&mut host_in, &mut tcp_out);
        let _ = tcp_out.shutdown(Shutdown::Write);
    });
    let mut host_out = host.try_clone()?;
    let mut tcp_in = tcp;
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match tcp_in.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if host_out.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    // The pod closed: so does the connection, both ways (the host sees
    // EOF). Not a half-close: a vsock SHUTDOWN of the send side alone is
    // not passed on by every backend (vhost-device-vsock keeps the host's
    // socket open), and the pod reads no more anyway. The copy thread then
    // reads EOF and ends.
    let _ = nix::sys::socket::shutdown(
        std::os::fd::AsRawFd::as_raw_fd(&host_out),
        nix::sys::socket::Shutdown::Both,
    );
    let _ = tcp_in.shutdown(Shutdown::Both);
    Ok(())
}

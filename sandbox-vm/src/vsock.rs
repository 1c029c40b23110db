//! Host side of a guest's vsock: a Unix socket of the vsock backend
//! (vhost-device-vsock for the qemu driver, the VMM itself for the builtin
//! one) on which the host asks for a guest port with `CONNECT <port>\n` and
//! gets `OK <host port>\n` before the stream carries the connection.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The longest acknowledgement line we read (`OK 4294967295\n` is 14).
const MAX_ACK: usize = 32;

/// Opens a connection to `port` in the guest through the backend's socket
/// `uds`. Fails when the backend is not there or nothing in the guest
/// listens on the port (the backend then closes the stream).
pub fn connect(uds: &Path, port: u32, timeout: Duration) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut ack = Vec::with_capacity(MAX_ACK);
    let mut byte = [0u8; 1];
    loop {
        if stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("nothing in the guest accepted vsock port {port}"),
            ));
        }
        if byte[0] == b'\n' {
            break;
        }
        ack.push(byte[0]);
        if ack.len() > MAX_ACK {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "vsock backend sent an overlong acknowledgement",
            ));
        }
    }
    if !ack.starts_with(b"OK ") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "vsock backend answered {:?} to CONNECT",
                String::from_utf8_lossy(&ack)
            ),
        ));
    }
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;

    fn backend(answer: &'static [u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert_eq!(line, "CONNECT 1024\n");
            (&s).write_all(answer).unwrap();
            (&s).write_all(b"payload").unwrap();
        });
        (dir, path)
    }

    #[test]
    fn connect_reads_the_ack_and_no_further() {
        let (_d, path) = backend(b"OK 1073741824\n");
        let mut s = connect(&path, 1024, Duration::from_secs(5)).unwrap();
        let mut rest = String::new();
        s.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "payload");
    }

    #[test]
    fn connect_refuses_a_bad_ack() {
        let (_d, path) = backend(b"NO\n");
        let e = connect(&path, 1024, Duration::from_secs(5)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let (_d, path) = backend(&[b'x'; 100]);
        let e = connect(&path, 1024, Duration::from_secs(5)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}

//! `Stream`: an ExecStream or Attach of the pod's monitor, whose
//! descriptors (pipes, a pty master) cannot cross vsock: the agent takes
//! them and carries their bytes as frames (`crius_proto::agent::Frame`)
//! on the host's connection. A thread per direction: the host's frames go
//! to stdin (or the pty, with resizes as TIOCSWINSZ), each output
//! descriptor goes out as frames, and the end is an `Exit` frame with the
//! exec's code (from the monitor) or empty for an attach.

use std::fs::File;
use std::io::{self, BufRead as _, BufReader, Read, Write};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use crius_proto::agent::{Frame, FrameKind, FrameReader, MAX_FRAME, Response, frame_header};
use crius_proto::monitor::{self, Request as MonitorRequest, StreamFd};

use crate::pod::{PodError, connect_monitor};

/// The frame writer, shared by the output threads.
type Out = Arc<Mutex<File>>;

fn send_frame(out: &Out, kind: FrameKind, data: &[u8]) -> io::Result<()> {
    let mut w = out.lock().unwrap_or_else(|p| p.into_inner());
    w.write_all(&frame_header(kind, data.len()))?;
    w.write_all(data)?;
    w.flush()
}

/// Serves a `Stream` request on `conn` (the host's connection); `answer`
/// sends the one JSON line before the frames.
pub fn serve(
    conn: &File,
    req: &MonitorRequest,
    answer: &mut dyn FnMut(Response) -> io::Result<()>,
) -> Result<(), PodError> {
    let exec = match req {
        MonitorRequest::ExecStream { .. } => true,
        MonitorRequest::Attach { .. } => false,
        _ => {
            return Err(PodError::Invalid(
                "Stream takes an ExecStream or an Attach".into(),
            ));
        }
    };
    let mut mon = connect_monitor()?;
    let mut line = serde_json::to_vec(req).map_err(|e| PodError::Protocol(e.to_string()))?;
    line.push(b'\n');
    mon.write_all(&line).map_err(|e| PodError::Io {
        what: "writing to the pod's monitor".into(),
        source: e,
    })?;
    let (answer_line, fds, rest) = read_line_with_fds(&mon).map_err(|e| PodError::Io {
        what: "reading from the pod's monitor".into(),
        source: e,
    })?;
    let kinds = match serde_json::from_slice::<monitor::Response>(&answer_line) {
        Ok(monitor::Response::Streams { fds: kinds }) if kinds.len() == fds.len() => kinds,
        Ok(monitor::Response::Error { message, .. }) => return Err(PodError::Protocol(message)),
        other => return Err(PodError::Protocol(format!("unexpected answer {other:?}"))),
    };
    if answer(Response::Streams { fds: kinds.clone() }).is_err() {
        return Ok(());
    }
    // The monitor's ends may be non-blocking (its own loop polls them):
    // these threads block.
    for fd in &fds {
        let flags =
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).map_err(|e| PodError::Io {
                what: "a stream's flags".into(),
                source: e.into(),
            })?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(|e| PodError::Io {
            what: "a stream's flags".into(),
            source: e.into(),
        })?;
    }
    let streams: Vec<(StreamFd, File)> = kinds
        .into_iter()
        .zip(fds)
        .map(|(k, fd)| (k, File::from(fd)))
        .collect();
    let out: Out = Arc::new(Mutex::new(conn.try_clone().map_err(|e| PodError::Io {
        what: "the host's connection".into(),
        source: e,
    })?));
    let mut outputs = Vec::new();
    let mut input: Option<File> = None;
    let mut pty: Option<File> = None;
    for (kind, f) in streams {
        match kind {
            StreamFd::Stdin => input = Some(f),
            StreamFd::Stdout => outputs.push((FrameKind::Stdout, f)),
            StreamFd::Stderr => outputs.push((FrameKind::Stderr, f)),
            StreamFd::Pty => pty = Some(f),
        }
    }
    if let Some(p) = &pty {
        // An exec's output is its pty's; an attach has a pipe copy of it.
        if !outputs.iter().any(|(k, _)| *k == FrameKind::Stdout)
            && let Ok(reader) = p.try_clone()
        {
            outputs.push((FrameKind::Stdout, reader));
        }
        input = p.try_clone().ok();
    }
    let readers: Vec<_> = outputs
        .into_iter()
        .map(|(kind, f)| {
            let out = out.clone();
            std::thread::spawn(move || copy_out(f, kind, &out))
        })
        .collect();
    let host_in = conn.try_clone().map_err(|e| PodError::Io {
        what: "the host's connection".into(),
        source: e,
    })?;
    std::thread::spawn(move || copy_in(host_in, input, pty));
    let code = if exec {
        // The monitor answers `Exited` on the same connection.
        let mut r = BufReader::new(std::io::Cursor::new(rest).chain(mon));
        let mut l = Vec::new();
        let _ = r.read_until(b'\n', &mut l);
        match serde_json::from_slice::<monitor::Response>(&l) {
            Ok(monitor::Response::Exited { exit_code }) => Some(exit_code),
            _ => None,
        }
    } else {
        None
    };
    for r in readers {
        let _ = r.join();
    }
    let payload = code.map(i32::to_be_bytes);
    let _ = send_frame(
        &out,
        FrameKind::Exit,
        payload.as_ref().map_or(&[][..], |p| &p[..]),
    );
    Ok(())
}

/// One output descriptor to frames, then an empty frame for its end.
fn copy_out(mut f: File, kind: FrameKind, out: &Out) {
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if send_frame(out, kind, &buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A pty master reads EIO once the other side closed.
            Err(_) => break,
        }
    }
    let _ = send_frame(out, kind, &[]);
}

/// The host's frames to the process: stdin bytes, its end, resizes.
fn copy_in(mut host: File, mut input: Option<File>, pty: Option<File>) {
    let mut frames = FrameReader::default();
    let mut chunk = vec![0u8; MAX_FRAME];
    loop {
        let Ok(next) = frames.next_frame() else {
            return;
        };
        let Some(Frame { kind, data }) = next else {
            match host.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => frames.push(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
            continue;
        };
        match kind {
            // A pty's input stays open (the process gets EOF only if the
            // client sends its EOF character).
            FrameKind::Stdin if data.is_empty() && pty.is_none() => input = None,
            FrameKind::Stdin if data.is_empty() => {}
            FrameKind::Stdin => {
                if let Some(i) = &mut input
                    && i.write_all(&data).is_err()
                {
                    input = None;
                }
            }
            FrameKind::Resize if data.len() == 4 => {
                if let Some(p) = &pty {
                    let ws = libc::winsize {
                        ws_col: u16::from_be_bytes([data[0], data[1]]),
                        ws_row: u16::from_be_bytes([data[2], data[3]]),
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    set_size(p, &ws);
                }
            }
            _ => {}
        }
    }
}

fn set_size(pty: &File, ws: &libc::winsize) {
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which lives
    // across the call; the descriptor is open for as long as `pty` is.
    let _ = unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, ws) };
}

/// Reads a line (and what came after it in the same reads) from the
/// monitor, keeping the descriptors sent with it (SCM_RIGHTS, at most 4).
fn read_line_with_fds(conn: &UnixStream) -> io::Result<(Vec<u8>, Vec<OwnedFd>, Vec<u8>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut buf = Vec::new();
    let mut fds = Vec::new();
    let mut chunk = vec![0u8; 4096];
    while !buf.contains(&b'\n') {
        if buf.len() > monitor::MAX_LINE {
            return Err(io::Error::other("answer line too long"));
        }
        let mut iov = [io::IoSliceMut::new(&mut chunk)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        for cmsg in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                // SAFETY: the kernel installed these descriptors in this
                // process for this message; nothing else owns them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        let n = msg.bytes;
        if n == 0 {
            return Err(io::Error::other("the monitor closed the connection"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let nl = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let rest = buf.split_off(nl + 1);
    Ok((buf, fds, rest))
}

//! Streams of a VM pod, straight from crius to the guest agent: an Exec
//! or Attach is the agent's `Stream` (the guest monitor's descriptors
//! carried as frames), here turned into the seam's async streams; a
//! PortForward connection is the agent's `Connect`. Every frame the guest
//! sends is bounded ([`MAX_FRAME`]); an unknown kind ends the stream.

use crius_proto::agent::{
    Frame, FrameKind, FrameReader, MAX_FRAME, Request, Response, frame_header,
};
use crius_proto::monitor::{self, StreamFd};
use sandbox_api::{Duplex, Result, SandboxError, Stdio, StdioRequest, TermSize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio::sync::{mpsc, oneshot};

use super::agent_error;
use crate::agent_conn::AgentConn;

/// How much of a stream's output may wait for a slow client.
const PIPE: usize = 256 << 10;

/// An Exec (`req.cmd`) or an Attach of container `id`.
pub(super) async fn exec(mut agent: AgentConn, id: &str, req: &StdioRequest) -> Result<Stdio> {
    let request = match &req.cmd {
        Some(cmd) => monitor::Request::ExecStream {
            id: id.to_string(),
            cmd: cmd.clone(),
            tty: req.tty,
            stdin: req.stdin,
        },
        None => monitor::Request::Attach {
            id: id.to_string(),
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        },
    };
    let kinds = match agent
        .call(Request::Stream { request })
        .await
        .map_err(agent_error)?
    {
        Response::Streams { fds } => fds,
        other => {
            return Err(SandboxError::bare(format!(
                "the guest agent answered {other:?} to Stream"
            )));
        }
    };
    let has = |k: StreamFd| kinds.contains(&k);
    let tty = has(StreamFd::Pty);
    let conn = agent.into_stream();
    let (mut rd, mut wr) = tokio::io::split(conn);

    let mut io = Stdio::default();
    // Output: frames to in-memory pipes the client reads.
    let (out_w, out_r) = tokio::io::duplex(PIPE);
    let (err_w, err_r) = tokio::io::duplex(PIPE);
    if req.stdout && (has(StreamFd::Stdout) || tty) {
        io.stdout = Some(Box::pin(out_r));
    }
    if req.stderr && has(StreamFd::Stderr) {
        io.stderr = Some(Box::pin(err_r));
    }
    let (exit_tx, exit_rx) = oneshot::channel::<Option<i32>>();
    tokio::spawn(async move {
        let code = read_frames(&mut rd, out_w, err_w).await;
        let _ = exit_tx.send(code);
    });
    // Input: the client's bytes and sizes to frames.
    let (frames_tx, mut frames_rx) = mpsc::channel::<(FrameKind, Vec<u8>)>(16);
    tokio::spawn(async move {
        while let Some((kind, data)) = frames_rx.recv().await {
            if wr.write_all(&frame_header(kind, data.len())).await.is_err()
                || wr.write_all(&data).await.is_err()
            {
                return;
            }
        }
    });
    if req.stdin && (has(StreamFd::Stdin) || tty) {
        let (client_w, mut in_r) = tokio::io::duplex(PIPE);
        io.stdin = Some(Box::pin(client_w));
        let tx = frames_tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_FRAME];
            loop {
                match in_r.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = tx.send((FrameKind::Stdin, Vec::new())).await;
                        return;
                    }
                    Ok(n) => {
                        if tx
                            .send((FrameKind::Stdin, buf[..n].to_vec()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
    }
    if tty {
        let (size_tx, mut size_rx) = mpsc::channel::<TermSize>(8);
        io.resize = Some(size_tx);
        let tx = frames_tx.clone();
        tokio::spawn(async move {
            while let Some(s) = size_rx.recv().await {
                let mut p = s.width.to_be_bytes().to_vec();
                p.extend_from_slice(&s.height.to_be_bytes());
                if tx.send((FrameKind::Resize, p)).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(frames_tx);
    if req.cmd.is_some() {
        io.exit = Some(Box::pin(async move {
            match exit_rx.await {
                Ok(Some(code)) => Ok(code),
                _ => Err(SandboxError::bare(
                    "the exec's exit code did not come from the guest",
                )),
            }
        }));
    }
    Ok(io)
}

/// Reads the guest's frames into the output pipes until the `Exit` frame
/// (its code) or the end of the connection.
async fn read_frames<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    out: DuplexStream,
    err: DuplexStream,
) -> Option<i32> {
    let mut out = Some(out);
    let mut err = Some(err);
    let mut frames = FrameReader::default();
    let mut chunk = vec![0u8; MAX_FRAME];
    loop {
        let Some(Frame { kind, data }) = frames.next_frame().ok()? else {
            let n = rd.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            frames.push(&chunk[..n]);
            continue;
        };
        let slot = match kind {
            FrameKind::Stdout => &mut out,
            FrameKind::Stderr => &mut err,
            FrameKind::Exit => return Some(i32::from_be_bytes(data.try_into().ok()?)),
            _ => return None,
        };
        if data.is_empty() {
            // That stream's end: the client reads EOF.
            *slot = None;
            continue;
        }
        if let Some(pipe) = slot
            && pipe.write_all(&data).await.is_err()
        {
            // A client that stopped reading: drop the rest of that stream.
            *slot = None;
        }
    }
}

/// A TCP connection to `port` on the guest's loopback.
pub(super) async fn port_forward(mut agent: AgentConn, port: u16) -> Result<Duplex> {
    match agent
        .call(Request::Connect { port })
        .await
        .map_err(agent_error)?
    {
        Response::Ok => Ok(Box::pin(agent.into_stream())),
        other => Err(SandboxError::bare(format!(
            "the guest agent answered {other:?} to Connect"
        ))),
    }
}

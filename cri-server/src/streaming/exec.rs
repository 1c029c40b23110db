//! CRI Exec and Attach: the server side of Kubernetes' remotecommand
//! protocol, `v4.channel.k8s.io` over SPDY and `v5.channel.k8s.io` (or v4)
//! over WebSocket. Over SPDY the client opens one stream per channel,
//! named by its `streamType` header: `error`, then `stdin`, `stdout`,
//! `stderr` (not with a tty) and `resize` (with a tty), each only when
//! asked for; over WebSocket the channels are numbered in one connection
//! (`ws`). Once they are all there the command starts in the container
//! (through its pod's monitor, which hands over the process's stdio), or
//! for Attach the monitor hands over the container's stdin and copies of
//! its output;
//! stdout and stderr are copied to their streams until EOF, stdin from its
//! stream until the client closes it, resize messages (JSON
//! `{"Width":w,"Height":h}`, one after another) go to the pty. At the exit
//! the error stream gets a `metav1.Status`: `Success`, or `Failure` with
//! reason `NonZeroExitCode` and the code. An attach ends with the
//! container's output (or the client), with `Success`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sandbox_api::stdio::{Reader, Writer};
use sandbox_api::{Container, Pod, SandboxController, Stdio, StdioRequest, TermSize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::{spdy, ws};

/// One channel (stdin, stdout, ...) over either transport.
pub(super) trait Chan: Send + Sync + 'static {
    /// Sends `data`; false once the channel or connection is gone.
    fn send(&self, data: &[u8]) -> impl Future<Output = bool> + Send;
    /// Ends this side of the channel.
    fn close(&self) -> impl Future<Output = ()> + Send;
    /// The client's next data; None at its end of the channel.
    fn recv(&mut self) -> impl Future<Output = Option<Bytes>> + Send;
}

/// The connection the channels run on.
pub(super) trait Conn: Send + Sync {
    fn close(&self) -> impl Future<Output = ()> + Send;
    fn closed(&self) -> impl Future<Output = ()> + Send;
}

impl Chan for spdy::Stream {
    async fn send(&self, data: &[u8]) -> bool {
        spdy::Stream::send(self, data).await.is_ok()
    }
    async fn close(&self) {
        let _ = spdy::Stream::close(self).await;
    }
    async fn recv(&mut self) -> Option<Bytes> {
        spdy::Stream::recv(self).await
    }
}

impl Conn for spdy::Session {
    async fn close(&self) {
        spdy::Session::close(self).await;
    }
    async fn closed(&self) {
        spdy::Session::closed(self).await;
    }
}

impl Chan for ws::Channel {
    async fn send(&self, data: &[u8]) -> bool {
        ws::Channel::send(self, data).await
    }
    /// The client reads a channel's end at the connection's end.
    async fn close(&self) {}
    async fn recv(&mut self) -> Option<Bytes> {
        ws::Channel::recv(self).await
    }
}

impl Conn for ws::Session {
    async fn close(&self) {
        ws::Session::close(self).await;
    }
    async fn closed(&self) {
        ws::Session::closed(self).await;
    }
}

/// How long the client has to open its streams.
const STREAMS_TIMEOUT: Duration = Duration::from_secs(30);
/// After the process exits, how long output still held open (by a child
/// left behind) is copied before the streams are closed.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// A CRI Exec (with its command) or Attach (`cmd` None), checked when
/// its URL was made, and the sandbox that runs it.
pub struct StdioCall {
    pub controller: Arc<dyn SandboxController>,
    pub pod: Pod,
    pub container: Container,
    pub req: StdioRequest,
}

struct Channels<C> {
    error: Option<C>,
    stdin: Option<C>,
    stdout: Option<C>,
    stderr: Option<C>,
    resize: Option<C>,
}

impl<C> Default for Channels<C> {
    fn default() -> Self {
        Channels {
            error: None,
            stdin: None,
            stdout: None,
            stderr: None,
            resize: None,
        }
    }
}

impl<C> Channels<C> {
    fn complete(&self, req: &StdioRequest) -> bool {
        self.error.is_some()
            && (!req.stdin || self.stdin.is_some())
            && (!req.stdout || self.stdout.is_some())
            && (!req.stderr || req.tty || self.stderr.is_some())
            && (!req.tty || self.resize.is_some())
    }
}

/// Over SPDY: gathers the client's streams, then runs.
pub async fn serve(
    call: StdioCall,
    session: spdy::Session,
    mut incoming: mpsc::Receiver<spdy::Stream>,
) {
    let req = &call.req;
    let mut ch = Channels::default();
    let gathered = tokio::time::timeout(STREAMS_TIMEOUT, async {
        while !ch.complete(req) {
            let Some(stream) = incoming.recv().await else {
                return false;
            };
            let slot = match stream.header("streamtype") {
                Some("error") => &mut ch.error,
                Some("stdin") if req.stdin => &mut ch.stdin,
                Some("stdout") if req.stdout => &mut ch.stdout,
                Some("stderr") if req.stderr && !req.tty => &mut ch.stderr,
                Some("resize") if req.tty => &mut ch.resize,
                other => {
                    tracing::debug!(?other, "exec: unexpected stream");
                    let _ = stream.reset(3).await;
                    continue;
                }
            };
            if stream.reply().await.is_err() {
                return false;
            }
            *slot = Some(stream);
        }
        true
    })
    .await;
    if gathered != Ok(true) {
        tracing::debug!("exec: the client did not open its streams");
        session.close().await;
        return;
    }
    execute(call, ch, &session).await;
}

/// Over WebSocket: the channels the request asked for exist from the
/// start (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize).
pub async fn serve_ws(
    call: StdioCall,
    session: ws::Session,
    mut inputs: std::collections::HashMap<u8, mpsc::Receiver<Bytes>>,
) {
    let req = &call.req;
    let ch = Channels {
        error: Some(session.channel(3, None)),
        stdin: req.stdin.then(|| session.channel(0, inputs.remove(&0))),
        stdout: req.stdout.then(|| session.channel(1, None)),
        stderr: (req.stderr && !req.tty).then(|| session.channel(2, None)),
        resize: req.tty.then(|| session.channel(4, inputs.remove(&4))),
    };
    execute(call, ch, &session).await;
}

/// Starts the exec (or attach), copies until it ends, writes the status.
async fn execute<C: Chan, S: Conn>(call: StdioCall, mut ch: Channels<C>, session: &S) {
    let started = match &call.req.cmd {
        Some(_) => {
            call.controller
                .exec(&call.pod, &call.container, &call.req)
                .await
        }
        None => {
            call.controller
                .attach(&call.pod, &call.container, &call.req)
                .await
        }
    };
    let process = match started {
        Ok(p) => p,
        Err(e) => {
            let msg = crate::error::chain(&e);
            if let Some(err) = &ch.error {
                let _ = err.send(failure_status(&msg, None).as_bytes()).await;
            }
            finish(session, &ch).await;
            return;
        }
    };
    let exit_code = run(process, &mut ch, session).await;
    if let Some(err) = &ch.error {
        let status = match exit_code {
            Ok(0) => r#"{"metadata":{},"status":"Success"}"#.to_string(),
            Ok(code) => failure_status(
                &format!("command terminated with non-zero exit code: exit code {code}"),
                Some(code),
            ),
            Err(msg) => failure_status(&msg, None),
        };
        let _ = err.send(status.as_bytes()).await;
    }
    finish(session, &ch).await;
}

/// Copies between the process and the streams until it exits; its exit
/// code.
async fn run<C: Chan, S: Conn>(
    process: Stdio,
    ch: &mut Channels<C>,
    session: &S,
) -> Result<i32, String> {
    let Stdio {
        stdin,
        stdout,
        stderr,
        resize,
        exit,
    } = process;
    let mut outputs = tokio::task::JoinSet::new();
    let mut inputs = tokio::task::JoinSet::new();
    // Output not asked for is dropped (the process gets EPIPE), as a client
    // that does not read would.
    for (source, stream) in [(stdout, ch.stdout.take()), (stderr, ch.stderr.take())] {
        if let (Some(source), Some(stream)) = (source, stream) {
            outputs.spawn(copy_out(source, stream));
        }
    }
    match (stdin, ch.stdin.take()) {
        (Some(sink), Some(stream)) => {
            inputs.spawn(copy_in(stream, sink));
        }
        // Input the process does not take (an attach to a container
        // without stdin) is read and dropped, so the session never stalls
        // on it.
        (None, Some(mut stream)) => {
            inputs.spawn(async move { while stream.recv().await.is_some() {} });
        }
        _ => {}
    }
    if let (Some(sizes), Some(stream)) = (resize, ch.resize.take()) {
        inputs.spawn(resizes(stream, sizes));
    }
    let exit = match exit {
        Some(exit) => tokio::select! {
            code = exit => code.map_err(|e| crate::error::chain(&e)),
            () = session.closed() => Err("the client went away".to_string()),
        },
        // An attach: until the container's output ends (or, with no
        // output asked for, its input), or the client goes.
        None => {
            let until = async {
                if outputs.is_empty() {
                    while inputs.join_next().await.is_some() {}
                } else {
                    while outputs.join_next().await.is_some() {}
                }
            };
            tokio::select! {
                () = until => Ok(0),
                () = session.closed() => Err("the client went away".to_string()),
            }
        }
    };
    // Output a child left behind still holds is copied a little longer.
    let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, async {
        while outputs.join_next().await.is_some() {}
    })
    .await;
    outputs.abort_all();
    inputs.abort_all();
    exit
}

/// Closes every stream and the session.
async fn finish<C: Chan, S: Conn>(session: &S, ch: &Channels<C>) {
    for s in [&ch.error, &ch.stdin, &ch.stdout, &ch.stderr, &ch.resize]
        .into_iter()
        .flatten()
    {
        s.close().await;
    }
    session.close().await;
}

fn failure_status(message: &str, exit_code: Option<i32>) -> String {
    let mut status = serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": message,
    });
    if let Some(code) = exit_code {
        status["reason"] = "NonZeroExitCode".into();
        status["details"] = serde_json::json!({
            "causes": [{"reason": "ExitCode", "message": code.to_string()}]
        });
    } else {
        status["reason"] = "InternalError".into();
    }
    status.to_string()
}

async fn copy_out<C: Chan>(mut source: Reader, stream: C) {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match source.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !stream.send(&buf[..n]).await {
                    break;
                }
            }
        }
    }
    stream.close().await;
}

/// Copies the client's input to the process; closing the client's stdin
/// closes the process's (see [`Stdio`] for a terminal).
async fn copy_in<C: Chan>(mut stream: C, mut sink: Writer) {
    while let Some(data) = stream.recv().await {
        if sink.write_all(&data).await.is_err() {
            return;
        }
    }
}

/// Passes the client's terminal sizes (JSON `{"Width":w,"Height":h}`, one
/// after another) to the sandbox.
async fn resizes<C: Chan>(mut stream: C, sizes: mpsc::Sender<TermSize>) {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Size {
        width: u16,
        height: u16,
    }
    let mut pending = Vec::new();
    while let Some(data) = stream.recv().await {
        pending.extend_from_slice(&data);
        if pending.len() > 4096 {
            return;
        }
        let mut de = serde_json::Deserializer::from_slice(&pending).into_iter::<Size>();
        let mut used = 0;
        while let Some(Ok(size)) = de.next() {
            used = de.byte_offset();
            let size = TermSize {
                width: size.width,
                height: size.height,
            };
            if sizes.send(size).await.is_err() {
                return;
            }
        }
        pending.drain(..used);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_status_carries_the_exit_code() {
        let s: serde_json::Value =
            serde_json::from_str(&failure_status("command terminated", Some(3))).unwrap();
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
    }
}

//! One connected plugin: its registration and configuration, and calls to
//! its service with a deadline each. A reader task reads the socket: it
//! answers the plugin's calls to crius's runtime service and hands
//! answers to the calls waiting for them. A plugin that closes its
//! socket, breaks the protocol or misses a deadline is closed, as NRI
//! does: crius goes on without it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::oneshot;

use crate::api::{self, Event};
use crate::wire::{self, Request, Response, Status};

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("the plugin's connection is closed")]
    Closed,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{1} (code {0})")]
    Status(i32, String),
    #[error("undecodable answer")]
    Decode(#[from] prost::DecodeError),
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error("socket")]
    Io(#[from] std::io::Error),
}

impl CallError {
    /// Whether the plugin is gone or broken (it is closed, and the event
    /// goes on without it), rather than refusing the event.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, CallError::Status(..))
    }
}

type Pending = HashMap<u32, oneshot::Sender<Result<Vec<u8>, CallError>>>;

/// What the plugin's registration told.
#[derive(Debug)]
struct Registration {
    name: String,
    idx: String,
}

pub struct Plugin {
    /// `<index>-<name>`, as NRI names plugins in logs.
    pub id: String,
    /// The index it registered with: plugins are called in its order.
    pub idx: String,
    pub name: String,
    /// The events it subscribed to (a mask of [`Event::bit`]s).
    events: AtomicI32,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    pending: Arc<Mutex<Pending>>,
    /// ttrpc client streams: odd, counting up.
    next_stream: AtomicU32,
    closed: Arc<AtomicBool>,
    reader: tokio::task::JoinHandle<()>,
    request_timeout: Duration,
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no registration within {0:?}")]
    RegistrationTimeout(Duration),
    #[error("closed before registering")]
    ClosedEarly,
    #[error("invalid plugin index {0:?}: two digits, 00 to 99")]
    BadIndex(String),
    #[error("invalid plugin name {0:?}")]
    BadName(String),
    #[error("configure")]
    Configure(#[source] CallError),
    #[error("subscribed to unknown events (mask {0:#x})")]
    BadEvents(i32),
}

/// What crius tells a plugin when configuring it.
#[derive(Clone, Debug)]
pub struct Settings {
    pub runtime_name: String,
    pub runtime_version: String,
    pub registration_timeout: Duration,
    pub request_timeout: Duration,
}

impl Plugin {
    /// Serves a fresh connection until the plugin has registered and been
    /// configured.
    pub async fn connect(stream: UnixStream, settings: &Settings) -> Result<Plugin, ConnectError> {
        let (mut read, writer) = stream.into_split();
        let writer = Arc::new(tokio::sync::Mutex::new(writer));
        let pending: Arc<Mutex<Pending>> = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (reg_tx, reg_rx) = oneshot::channel();
        let reader = {
            let writer = writer.clone();
            let pending = pending.clone();
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut reg_tx = Some(reg_tx);
                let why = serve(&mut read, &writer, &pending, &mut reg_tx).await;
                tracing::info!(reason = %why, "NRI plugin connection closed");
                closed.store(true, Ordering::SeqCst);
                let _ = writer.lock().await.shutdown().await;
                let waiting: Vec<_> = lock(&pending).drain().collect();
                for (_, tx) in waiting {
                    let _ = tx.send(Err(CallError::Closed));
                }
            })
        };
        let reg = match tokio::time::timeout(settings.registration_timeout, reg_rx).await {
            Ok(Ok(reg)) => reg,
            Ok(Err(_)) => {
                reader.abort();
                return Err(ConnectError::ClosedEarly);
            }
            Err(_) => {
                reader.abort();
                return Err(ConnectError::RegistrationTimeout(
                    settings.registration_timeout,
                ));
            }
        };
        let plugin = Plugin {
            id: format!("{}-{}", reg.idx, reg.name),
            idx: reg.idx,
            name: reg.name,
            events: AtomicI32::new(0),
            writer,
            pending,
            next_stream: AtomicU32::new(1),
            closed,
            reader,
            request_timeout: settings.request_timeout,
        };
        if plugin.idx.len() != 2 || !plugin.idx.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ConnectError::BadIndex(plugin.idx.clone()));
        }
        if plugin.name.is_empty()
            || plugin.name.len() > 256
            || !plugin
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(ConnectError::BadName(plugin.name.clone()));
        }
        let configure = api::ConfigureRequest {
            config: String::new(),
            runtime_name: settings.runtime_name.clone(),
            runtime_version: settings.runtime_version.clone(),
            registration_timeout: settings.registration_timeout.as_millis() as i64,
            request_timeout: settings.request_timeout.as_millis() as i64,
            nri_version: api::NRI_VERSION.into(),
        };
        let answer: api::ConfigureResponse = plugin
            .call("Configure", &configure)
            .await
            .map_err(ConnectError::Configure)?;
        let events = match answer.events {
            0 => api::VALID_EVENTS,
            e if e & !api::VALID_EVENTS != 0 => return Err(ConnectError::BadEvents(e)),
            e => e,
        };
        plugin.events.store(events, Ordering::SeqCst);
        Ok(plugin)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub fn subscribed(&self, event: Event) -> bool {
        self.events.load(Ordering::SeqCst) & event.bit() != 0
    }

    /// Closes the connection; calls waiting on it fail as closed.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.reader.abort();
        let waiting: Vec<_> = lock(&self.pending).drain().collect();
        for (_, tx) in waiting {
            let _ = tx.send(Err(CallError::Closed));
        }
        let writer = self.writer.clone();
        tokio::spawn(async move {
            let _ = writer.lock().await.shutdown().await;
        });
    }

    /// Calls a method of the plugin's service, within the request timeout.
    pub async fn call<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        method: &str,
        req: &Req,
    ) -> Result<Resp, CallError> {
        if self.is_closed() {
            return Err(CallError::Closed);
        }
        let envelope = Request {
            service: api::PLUGIN_SERVICE.into(),
            method: method.into(),
            payload: req.encode_to_vec(),
            timeout_nano: self.request_timeout.as_nanos() as i64,
        }
        .encode_to_vec();
        // The stream taken under the writer's lock: ttrpc servers refuse a
        // stream ID lower than one they have seen.
        let sent = AtomicU32::new(0);
        let exchange = async {
            let (tx, rx) = oneshot::channel();
            {
                let mut writer = self.writer.lock().await;
                let stream = self.next_stream.fetch_add(2, Ordering::SeqCst);
                let frame = wire::frame(
                    wire::PLUGIN_CONN,
                    stream,
                    wire::TYPE_REQUEST,
                    wire::FLAG_REMOTE_CLOSED,
                    &envelope,
                )?;
                lock(&self.pending).insert(stream, tx);
                sent.store(stream, Ordering::SeqCst);
                writer.write_all(&frame).await?;
            }
            rx.await.unwrap_or(Err(CallError::Closed))
        };
        let answer = match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(a) => a,
            Err(_) => Err(CallError::Timeout(self.request_timeout)),
        };
        lock(&self.pending).remove(&sent.load(Ordering::SeqCst));
        Ok(Resp::decode(answer?.as_slice())?)
    }
}

/// Reads the socket until it ends or breaks; says why.
async fn serve(
    read: &mut tokio::net::unix::OwnedReadHalf,
    writer: &tokio::sync::Mutex<OwnedWriteHalf>,
    pending: &Mutex<Pending>,
    reg_tx: &mut Option<oneshot::Sender<Registration>>,
) -> String {
    let mut reader = wire::Reader::default();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match read.read(&mut buf).await {
            Ok(0) => return "closed by the plugin".into(),
            Ok(n) => n,
            Err(e) => return format!("read: {e}"),
        };
        let messages = match reader.feed(&buf[..n]) {
            Ok(m) => m,
            Err(e) => return e.to_string(),
        };
        for m in messages {
            match (m.conn, m.kind) {
                (wire::PLUGIN_CONN, wire::TYPE_RESPONSE) => {
                    let Some(tx) = lock(pending).remove(&m.stream) else {
                        continue;
                    };
                    let answer = Response::decode(m.data.as_slice())
                        .map_err(CallError::from)
                        .and_then(|r| match r.status {
                            Some(s) if s.code != wire::CODE_OK => {
                                Err(CallError::Status(s.code, s.message))
                            }
                            _ => Ok(r.payload),
                        });
                    let _ = tx.send(answer);
                }
                (wire::RUNTIME_CONN, wire::TYPE_REQUEST) => {
                    let reply = answer_runtime_call(&m.data, reg_tx);
                    let frame = match wire::frame(
                        wire::RUNTIME_CONN,
                        m.stream,
                        wire::TYPE_RESPONSE,
                        0,
                        &reply.encode_to_vec(),
                    ) {
                        Ok(f) => f,
                        Err(e) => return e.to_string(),
                    };
                    if let Err(e) = writer.lock().await.write_all(&frame).await {
                        return format!("write: {e}");
                    }
                }
                // Stream data and anything else: no NRI call uses them.
                _ => {}
            }
        }
    }
}

/// The runtime service: RegisterPlugin, and UpdateContainers, which
/// crius does not apply (every update is answered as failed).
fn answer_runtime_call(
    data: &[u8],
    reg_tx: &mut Option<oneshot::Sender<Registration>>,
) -> Response {
    let status = |code, message: &str| Response {
        status: Some(Status {
            code,
            message: message.into(),
        }),
        payload: Vec::new(),
    };
    let Ok(req) = Request::decode(data) else {
        return status(wire::CODE_INVALID_ARGUMENT, "undecodable request");
    };
    if req.service != api::RUNTIME_SERVICE {
        return status(wire::CODE_UNIMPLEMENTED, "unknown service");
    }
    match req.method.as_str() {
        "RegisterPlugin" => {
            let Ok(r) = api::RegisterPluginRequest::decode(req.payload.as_slice()) else {
                return status(wire::CODE_INVALID_ARGUMENT, "undecodable registration");
            };
            match reg_tx.take() {
                Some(tx) => {
                    let _ = tx.send(Registration {
                        name: r.plugin_name,
                        idx: r.plugin_idx,
                    });
                    Response {
                        status: Some(Status::default()),
                        payload: api::Empty {}.encode_to_vec(),
                    }
                }
                None => status(wire::CODE_INVALID_ARGUMENT, "already registered"),
            }
        }
        "UpdateContainers" => {
            let Ok(r) = api::UpdateContainersRequest::decode(req.payload.as_slice()) else {
                return status(wire::CODE_INVALID_ARGUMENT, "undecodable update");
            };
            tracing::warn!(
                updates = r.update.len(),
                evictions = r.evict.len(),
                "an NRI plugin asked for unsolicited container updates, which crius does not apply"
            );
            Response {
                status: Some(Status::default()),
                payload: api::UpdateContainersResponse { failed: r.update }.encode_to_vec(),
            }
        }
        _ => status(wire::CODE_UNIMPLEMENTED, "unknown method"),
    }
}

fn lock(p: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

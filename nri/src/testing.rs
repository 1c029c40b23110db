//! A plugin for tests (feature `testing`): it speaks the protocol over a
//! real socket, as critest's Go stub does, and answers as a test says.

use std::sync::{Arc, Mutex};

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::api;
use crate::wire::{self, Request, Response, Status};

/// What a test plugin does with a call other than Configure and
/// Synchronize: answer it (a payload, or a status code and message), or
/// never answer (None).
pub type Behaviour = Box<dyn Fn(&str, &[u8]) -> Option<Result<Vec<u8>, (i32, String)>> + Send>;

/// Connects a plugin that registers as `idx-name` and subscribes to
/// `events`; returns the methods called on it, as they come.
pub async fn plugin(
    socket: &std::path::Path,
    name: &str,
    idx: &str,
    events: i32,
    behaviour: Behaviour,
) -> std::io::Result<Arc<Mutex<Vec<String>>>> {
    let mut s = UnixStream::connect(socket).await?;
    let reg = api::RegisterPluginRequest {
        plugin_name: name.into(),
        plugin_idx: idx.into(),
        nri_version: String::new(),
    };
    let req = Request {
        service: api::RUNTIME_SERVICE.into(),
        method: "RegisterPlugin".into(),
        payload: reg.encode_to_vec(),
        timeout_nano: 0,
    };
    let frame = wire::frame(
        wire::RUNTIME_CONN,
        1,
        wire::TYPE_REQUEST,
        wire::FLAG_REMOTE_CLOSED,
        &req.encode_to_vec(),
    )
    .map_err(std::io::Error::other)?;
    s.write_all(&frame).await?;
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    tokio::spawn(async move {
        let mut reader = wire::Reader::default();
        let mut buf = vec![0; 65536];
        // As ttrpc's server: a stream ID must be above every one before.
        let mut last_stream = 0;
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            let Ok(messages) = reader.feed(&buf[..n]) else {
                return;
            };
            if n == 0 {
                return;
            }
            for m in messages {
                if m.conn != wire::PLUGIN_CONN {
                    continue;
                }
                let Ok(r) = Request::decode(m.data.as_slice()) else {
                    return;
                };
                if let Ok(mut seen) = seen.lock() {
                    seen.push(r.method.clone());
                }
                let in_order = m.stream > last_stream;
                last_stream = last_stream.max(m.stream);
                let answer = match r.method.as_str() {
                    _ if !in_order => Some(Err((
                        wire::CODE_INVALID_ARGUMENT,
                        "StreamID cannot be re-used and must increment".to_string(),
                    ))),
                    "Configure" => Some(Ok(api::ConfigureResponse { events }.encode_to_vec())),
                    "Synchronize" => Some(Ok(Vec::new())),
                    method => behaviour(method, &r.payload),
                };
                let Some(answer) = answer else { continue };
                let resp = match answer {
                    Ok(payload) => Response {
                        status: None,
                        payload,
                    },
                    Err((code, message)) => Response {
                        status: Some(Status { code, message }),
                        payload: Vec::new(),
                    },
                };
                let Ok(f) = wire::frame(
                    wire::PLUGIN_CONN,
                    m.stream,
                    wire::TYPE_RESPONSE,
                    0,
                    &resp.encode_to_vec(),
                ) else {
                    return;
                };
                if s.write_all(&f).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(calls)
}

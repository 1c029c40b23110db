//! The vm-monitor's side for crius: the namespace sandbox's monitor
//! protocol (`crius_proto::monitor`) on `<pod dir>/monitor.sock` (0600),
//! so that crius drives a VM pod's containers as it drives a namespace
//! pod's, through the agent: creation (with what crius wrote in the host
//! bundle's `create.json`), start, signals, state, ExecSync, deletion;
//! log reopening and watches of exits are served from the host's records.
//! ExecStream and Attach are not served here (crius reaches the agent for
//! streams itself). Shutdown stops the containers (the guest monitor's
//! shutdown, whose exits are recorded), then the VM.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crius_proto::agent::{Request as AgentRequest, Response as AgentResponse};
use crius_proto::monitor::{ErrorKind, MAX_LINE, PROTOCOL_VERSION, Request, Response};
use sandbox_container::monitor::{LogSink, PID_FILE, SOCKET_FILE};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use super::PodVm;
use super::guest::{Ctr, State};
use crate::agent_conn::AgentConn;

/// What the guest needs to create a container, in its host bundle
/// (written by crius): [`GuestCreate`].
pub const CREATE_FILE: &str = "create.json";

/// `create.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestCreate {
    /// The image's layers (names in the layer share), bottom first.
    pub layers: Vec<String>,
    /// The share's paths that are host mount points (see the agent's
    /// `CreateContainer`).
    pub submounts: Vec<String>,
}
/// How long a shutdown waits for the guest's exits to come.
const EXITS_WAIT: Duration = Duration::from_secs(5);
/// The most console log kept on the host (it is cut beyond).
const MAX_CONSOLE: u64 = 4 << 20;
/// How long an answer of the guest may take (an ExecSync's: its own
/// timeout more).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Why serving ended.
pub(crate) enum Ended {
    Shutdown,
    VmDied,
}

/// Binds `monitor.sock` (0600) and writes `monitor.pid`.
pub(crate) fn bind(dir: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    let sock = dir.join(SOCKET_FILE);
    if sock.as_os_str().len() > sandbox_api::fs::MAX_SOCKET_PATH {
        return Err(std::io::Error::other(
            "pod directory path too long for a socket",
        ));
    }
    if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
        return Err(std::io::Error::other("a monitor already serves this pod"));
    }
    let _ = std::fs::remove_file(&sock);
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(&sock);
    nix::sys::stat::umask(old);
    let listener = listener?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
    sandbox_api::fs::write_atomic(
        &dir.join(PID_FILE),
        format!("{}\n", std::process::id()).as_bytes(),
        0o600,
    )?;
    Ok(listener)
}

/// Serves crius until a Shutdown is answered or the VM ends.
pub(crate) async fn serve(
    listener: UnixListener,
    dir: PathBuf,
    state: Arc<State>,
    pod: Arc<PodVm>,
) -> Ended {
    let (shut_tx, mut shut_rx) = mpsc::channel::<()>(1);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((conn, _)) => {
                    tokio::spawn(serve_conn(conn, dir.clone(), state.clone(), pod.clone(), shut_tx.clone()));
                }
                Err(e) => tracing::warn!("accept: {e}"),
            },
            _ = shut_rx.recv() => return Ended::Shutdown,
            _ = tick.tick() => {
                let running = {
                    let mut vm = pod.vm.lock().unwrap_or_else(|p| p.into_inner());
                    if vm.cap_console(MAX_CONSOLE) {
                        tracing::warn!("the guest's console passed {MAX_CONSOLE} bytes: cut");
                    }
                    vm.running()
                };
                if !running {
                    tracing::error!("the VM ended: its containers are recorded as killed");
                    state.all_exited("VMDied");
                    super::stop_vm(&pod);
                    return Ended::VmDied;
                }
            }
        }
    }
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error {
        kind,
        message: message.into(),
    }
}

async fn send(conn: &mut UnixStream, r: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    line.push(b'\n');
    conn.write_all(&line).await
}

async fn serve_conn(
    conn: UnixStream,
    dir: PathBuf,
    state: Arc<State>,
    pod: Arc<PodVm>,
    shut: mpsc::Sender<()>,
) {
    let mut conn = BufReader::new(conn);
    loop {
        let mut buf = Vec::new();
        match (&mut conn)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let req = match serde_json::from_slice::<Request>(&buf) {
            Ok(r) => r,
            Err(e) => {
                let _ = send(
                    conn.get_mut(),
                    &error(
                        ErrorKind::InvalidArgument,
                        format!("malformed request: {e}"),
                    ),
                )
                .await;
                return;
            }
        };
        if matches!(req, Request::Watch) {
            watch(conn.get_mut(), &state).await;
            return;
        }
        let shutdown = matches!(req, Request::Shutdown);
        let r = answer(req, &dir, &state, &pod).await;
        if send(conn.get_mut(), &r).await.is_err() {
            return;
        }
        if shutdown && matches!(r, Response::Ok) {
            let _ = shut.send(()).await;
            return;
        }
    }
}

/// A watch: the exits recorded so far, then each one as it comes.
async fn watch(conn: &mut UnixStream, state: &State) {
    let mut rx = state.exits.subscribe();
    let recorded: Vec<(String, crius_proto::monitor::ExitRecord)> = state
        .ctrs()
        .iter()
        .filter_map(|(id, c)| c.exit.clone().map(|e| (id.clone(), e)))
        .collect();
    for (id, exit) in recorded {
        if send(conn, &Response::ContainerExited { id, exit })
            .await
            .is_err()
        {
            return;
        }
    }
    loop {
        match rx.recv().await {
            Ok((id, exit)) => {
                if send(conn, &Response::ContainerExited { id, exit })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            // Fallen behind: crius watches again and gets every exit.
            Err(_) => return,
        }
    }
}

/// One request of the guest's monitor, through the agent: its answer.
async fn ask_guest(dir: &Path, request: Request) -> Response {
    let conn = AgentConn::connect(&super::vsock_path(dir)).await;
    let mut agent = match conn {
        Ok(a) => a.with_max_line(MAX_LINE),
        Err(e) => return error(ErrorKind::Internal, sandbox_api::error::chain(&e)),
    };
    let within = match &request {
        Request::ExecSync { timeout_ms: 0, .. } => None,
        Request::ExecSync { timeout_ms, .. } => {
            Some(ANSWER_TIMEOUT + Duration::from_millis(*timeout_ms))
        }
        _ => Some(ANSWER_TIMEOUT),
    };
    match agent
        .call_within(AgentRequest::Monitor { request }, within)
        .await
    {
        Ok(AgentResponse::Monitor { response }) => response,
        Ok(other) => error(ErrorKind::Internal, format!("the agent answered {other:?}")),
        Err(e) => error(ErrorKind::Internal, sandbox_api::error::chain(&e)),
    }
}

async fn answer(req: Request, dir: &Path, state: &Arc<State>, pod: &Arc<PodVm>) -> Response {
    match req {
        Request::Hello => Response::Hello {
            version: PROTOCOL_VERSION,
            pid: std::process::id(),
        },
        Request::CreateContainer {
            id,
            bundle,
            log_path,
            stdin,
            stdin_once,
            tty,
        } => create(dir, state, id, bundle, log_path, stdin, stdin_once, tty).await,
        Request::DeleteContainer { id } => {
            let r = match AgentConn::connect(&super::vsock_path(dir)).await {
                Ok(mut a) => {
                    a.call(AgentRequest::RemoveContainer { id: id.clone() })
                        .await
                }
                Err(e) => Err(e),
            };
            match r {
                Ok(_) => {
                    state.ctrs().remove(&id);
                    Response::Ok
                }
                Err(e) => error(ErrorKind::Internal, sandbox_api::error::chain(&e)),
            }
        }
        Request::ReopenLog { id } => match state.ctrs().get_mut(&id) {
            Some(c) => match c.log.reopen() {
                Ok(()) => Response::Ok,
                Err(e) => error(ErrorKind::Internal, format!("reopening the log: {e}")),
            },
            None => error(ErrorKind::NotFound, "no such container"),
        },
        Request::Shutdown => {
            shutdown(dir, state, pod).await;
            Response::Ok
        }
        Request::ExecStream { .. } | Request::Attach { .. } => error(
            ErrorKind::InvalidArgument,
            "streams of a VM pod go to its guest agent",
        ),
        Request::Watch => error(
            ErrorKind::InvalidArgument,
            "a watch is a connection of its own",
        ),
        other => ask_guest(dir, other).await,
    }
}

#[allow(clippy::too_many_arguments)]
async fn create(
    dir: &Path,
    state: &Arc<State>,
    id: String,
    bundle: PathBuf,
    log_path: Option<PathBuf>,
    stdin: bool,
    stdin_once: bool,
    tty: bool,
) -> Response {
    let guest: GuestCreate = match std::fs::read(bundle.join(CREATE_FILE))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(l) => l,
        Err(e) => return error(ErrorKind::InvalidArgument, format!("{CREATE_FILE}: {e}")),
    };
    let log = match LogSink::open(log_path) {
        Ok(l) => l,
        Err(e) => return error(ErrorKind::Internal, format!("opening the log: {e}")),
    };
    if state.ctrs().contains_key(&id) {
        return error(ErrorKind::FailedPrecondition, "container already exists");
    }
    state.ctrs().insert(id.clone(), Ctr::new(bundle, log));
    let created = match AgentConn::connect(&super::vsock_path(dir)).await {
        Ok(mut a) => {
            a.call(AgentRequest::CreateContainer {
                id: id.clone(),
                layers: guest.layers,
                submounts: guest.submounts,
                stdin,
                stdin_once,
                tty,
            })
            .await
        }
        Err(e) => Err(e),
    };
    match created {
        Ok(AgentResponse::Monitor {
            response: r @ Response::Created { .. },
        }) => r,
        Ok(AgentResponse::Monitor { response }) => {
            state.ctrs().remove(&id);
            response
        }
        Ok(other) => {
            state.ctrs().remove(&id);
            error(ErrorKind::Internal, format!("the agent answered {other:?}"))
        }
        Err(e) => {
            state.ctrs().remove(&id);
            error(ErrorKind::Internal, sandbox_api::error::chain(&e))
        }
    }
}

/// Stops the guest's containers (their exits come through the guest's
/// watch, for a while), records the rest as killed, then stops the VM.
async fn shutdown(dir: &Path, state: &Arc<State>, pod: &Arc<PodVm>) {
    let _ = ask_guest(dir, Request::Shutdown).await;
    let start = Instant::now();
    while start.elapsed() < EXITS_WAIT && state.ctrs().values().any(|c| c.exit.is_none()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    state.all_exited("Error");
    super::stop_vm(pod);
}

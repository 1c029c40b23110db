//! Serving CRI v1 on the Unix socket: the socket's directory is 0711 and the
//! socket 0600; every request goes through one logging layer.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crius_proto::cri::image_service_server::ImageServiceServer;
use crius_proto::cri::runtime_service_server::RuntimeServiceServer;
use image_store::ImageStore;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::codegen::http;

use crate::config::Config;
use crate::image::Images;
use crate::runtime::{Runtime, RuntimeApi};
use crate::sandboxes::Sandboxes;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("prepare {path}")]
    Dir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("listen on {path}")]
    Listen {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} is another crius's (pid {pid}): one crius per root and state directory",
        dir.display()
    )]
    InUse {
        dir: std::path::PathBuf,
        pid: String,
    },
    #[error("open image store")]
    Images(#[source] image_store::Error),
    #[error("open state store")]
    Store(#[source] crate::store::StoreError),
    #[error("set up the sandboxes")]
    Sandbox(#[source] sandbox_api::SandboxError),
    #[error(transparent)]
    Nri(nri::NriError),
    #[error("listen for streaming on {0}")]
    Streaming(String, #[source] std::io::Error),
    #[error("serve")]
    Serve(#[source] tonic::transport::Error),
}

/// Creates `path` with `mode`.
fn state_dir(path: &Path, mode: u32) -> Result<(), ServeError> {
    let err = |source| ServeError::Dir {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)
}

/// The lock file of a root or state directory.
const LOCK_FILE: &str = "crius.lock";

/// Holds `<dir>/crius.lock` (flock, with our pid in it) for as long as the
/// returned file lives: a second crius on the same directory refuses to
/// start, instead of taking the first one's socket and pods.
fn lock_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, ServeError> {
    use std::io::{Read as _, Seek as _, Write as _};
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join(LOCK_FILE);
    let err = |source| ServeError::Dir {
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(err)?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut held) => {
            held.set_len(0).map_err(err)?;
            held.rewind().map_err(err)?;
            held.write_all(format!("{}\n", std::process::id()).as_bytes())
                .map_err(err)?;
            Ok(held)
        }
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Err(ServeError::InUse {
                dir: dir.to_path_buf(),
                pid: pid.trim().to_string(),
            })
        }
        Err((_, errno)) => Err(err(errno.into())),
    }
}

/// How long a shutdown waits for open connections before exiting.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Binds the socket: a stale socket file is replaced, the mode is 0600.
pub fn bind(socket: &Path) -> Result<UnixListener, ServeError> {
    let listen_err = |source| ServeError::Listen {
        path: socket.to_path_buf(),
        source,
    };
    if let Some(dir) = socket.parent() {
        // The socket itself is 0600: others can search the directory (it may
        // be the state directory, see `serve`) but not connect.
        state_dir(dir, 0o711)?;
    }
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(listen_err(e)),
        _ => {}
    }
    let listener = UnixListener::bind(socket).map_err(listen_err)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(listen_err)?;
    Ok(listener)
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    // Searchable by others (not listable): containers of pods with their
    // own user namespace reach their files under it by path.
    state_dir(&config.state, 0o711)?;
    // Image content (configs carry env), snapshots with the images'
    // setuid files, containers' writable layers: root's alone.
    state_dir(&config.root, 0o700)?;
    let mut _locks = vec![lock_dir(&config.state)?];
    if config.root != config.state {
        _locks.push(lock_dir(&config.root)?);
    }
    let images = ImageStore::open(
        &config.root.join("images"),
        config.registry.clone(),
        config.image.clone(),
    )
    .map_err(ServeError::Images)?;
    let images = Arc::new(images);
    let store = Arc::new(Store::open(&config.state.join("cri")).map_err(ServeError::Store)?);
    let (sink, events) = sandbox_api::EventSink::new();
    let sandboxes =
        Arc::new(Sandboxes::new(&config, images.clone(), sink).map_err(ServeError::Sandbox)?);
    let streams = crate::streaming::StreamServer::start(
        &config.stream_address,
        Duration::from_secs(config.stream_idle_timeout.max(1)),
    )
    .await
    .map_err(|e| ServeError::Streaming(config.stream_address.clone(), e))?;
    // SIGTERM and SIGINT are ours from before the socket is bound: one
    // that comes while recovery runs (a client may already be connected)
    // ends crius gracefully once it is done, not by the default action.
    use tokio::signal::unix::{SignalKind, signal};
    let signals = [SignalKind::terminate(), SignalKind::interrupt()].map(|k| signal(k).ok());
    let nri = nri::Nri::new(nri::Settings {
        runtime_name: "crius".into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        registration_timeout: Duration::from_millis(config.nri.registration_timeout_ms),
        request_timeout: Duration::from_millis(config.nri.request_timeout_ms),
    });
    if config.nri.enable {
        nri.listen(
            &config.nri.socket_path,
            Arc::new(crate::runtime::NriHost(store.clone())),
        )
        .map_err(ServeError::Nri)?;
    }
    // Bound once everything that can refuse the config has: a crius that
    // does not start leaves no socket.
    let listener = bind(&config.socket)?;
    tracing::info!(socket = %config.socket.display(), root = %config.root.display(), "crius serving CRI v1");
    let runtime = Arc::new(Runtime::new(
        &config,
        store.clone(),
        images.clone(),
        sandboxes,
        streams,
        nri,
    ));
    // Exits are recorded from the start: recovery hands pods back to
    // their sandboxes, which replay the exits that happened meanwhile.
    tokio::spawn(runtime.clone().record_events(events));
    runtime.recover().await;
    // On SIGINT or SIGTERM: stop accepting, let running calls finish, and
    // exit after SHUTDOWN_GRACE even if clients (kubelet always has one)
    // keep their connections open. Pods live on in their monitors.
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let [mut term, mut int] = signals;
        tokio::select! {
            () = signalled(term.as_mut()) => {}
            () = signalled(int.as_mut()) => {}
        }
        tracing::info!("shutting down");
        let _ = stopping_tx.send(());
    };
    let server = tonic::transport::Server::builder()
        .layer(LogLayer)
        .layer(crate::cri_ext::CriExtLayer)
        .add_service(RuntimeServiceServer::new(RuntimeApi(runtime)))
        .add_service(ImageServiceServer::new(Images::new(images, store)))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown);
    let grace = async {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
            tracing::info!("clients still connected after the grace period: exiting");
        } else {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        r = server => r.map_err(ServeError::Serve),
        () = grace => Ok(()),
    };
    let _ = std::fs::remove_file(&config.socket);
    result
}

/// Resolves when `signal` comes (never without a handler).
async fn signalled(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Logs each RPC with its gRPC code and duration.
#[derive(Clone, Copy)]
struct LogLayer;

impl<S> tower::Layer<S> for LogLayer {
    type Service = Log<S>;
    fn layer(&self, inner: S) -> Log<S> {
        Log(inner)
    }
}

#[derive(Clone)]
struct Log<S>(S);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The client's deadline from a `grpc-timeout` header (`<digits><unit>`).
fn grpc_timeout(v: &str) -> Option<Duration> {
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl<S, B, RB> tower::Service<http::Request<B>> for Log<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let rpc = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        let start = Instant::now();
        // tonic answers a passed deadline with CANCELLED; gRPC (and kubelet,
        // and critest) expect DEADLINE_EXCEEDED. Ours fires a millisecond
        // before tonic's, which polls this inner future first.
        let deadline = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout)
            .map(|d| d.saturating_sub(Duration::from_millis(1)));
        let fut = self.0.call(req);
        Box::pin(async move {
            let res = match deadline {
                Some(d) => match tokio::time::timeout(d, fut).await {
                    Ok(r) => r,
                    Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                        "{rpc} did not finish within the caller's deadline"
                    ))
                    .into_http()),
                },
                None => fut.await,
            };
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            match &res {
                Ok(resp) => {
                    // Errors travel as trailers-only responses: the status
                    // is in the headers.
                    let code = resp
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("0");
                    if code == "0" {
                        tracing::debug!(rpc, ms, "ok");
                    } else {
                        let msg = resp
                            .headers()
                            .get("grpc-message")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        tracing::info!(rpc, ms, code, msg, "failed");
                    }
                }
                Err(_) => tracing::warn!(rpc, ms, "transport error"),
            }
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tonic alone answers a passed deadline with CANCELLED; the layer
    /// answers DEADLINE_EXCEEDED first (what kubelet and critest expect).
    #[tokio::test]
    async fn a_passed_deadline_is_deadline_exceeded() {
        use tower::{Layer as _, Service as _};
        let slow = tower::service_fn(|_: http::Request<()>| async {
            tokio::time::sleep(Duration::from_secs(600)).await;
            Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
        });
        let mut svc = LogLayer.layer(slow);
        let req = http::Request::builder()
            .uri("/runtime.v1.ImageService/PullImage")
            .header("grpc-timeout", "20m")
            .body(())
            .unwrap();
        // The 20 ms deadline, not the handler's 600 s.
        let resp = tokio::time::timeout(Duration::from_secs(120), svc.call(req))
            .await
            .expect("answered at the deadline")
            .unwrap();
        assert_eq!(resp.headers().get("grpc-status").unwrap(), "4");
        // Without a deadline the call runs to its end.
        let fast = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
        });
        let mut svc = LogLayer.layer(fast);
        let resp = svc.call(http::Request::new(())).await.unwrap();
        assert!(resp.headers().get("grpc-status").is_none());
    }

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(grpc_timeout("1m"), Some(Duration::from_millis(1)));
        assert_eq!(grpc_timeout("998u"), Some(Duration::from_micros(998)));
        assert_eq!(grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout(""), None);
        assert_eq!(grpc_timeout("x"), None);
        assert_eq!(grpc_timeout("12"), None);
    }
}

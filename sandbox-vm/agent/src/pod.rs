//! The pod in the guest. `StartPod` mounts the pod's virtio-fs share, sets
//! the hostname, mounts the pod's /dev/shm and starts the pod's monitor
//! (the namespace sandbox's own, run from this binary as
//! `/init monitor <pod dir>`, forwarding its containers' output to its
//! watches). Containers are then the monitor's: `CreateContainer` makes
//! the bundle (the host's spec, a rootfs overlay of the share's layers and
//! a writable layer in guest memory) and asks the monitor; `Monitor`
//! passes any other request on and relays what it answers;
//! `RemoveContainer` deletes the container, then its rootfs and bundle.
//!
//! Guest paths: the pod directory [`POD_DIR`] (monitor.json, monitor.sock,
//! shm/, ns/), bundles under [`BUNDLES`], writable layers under [`LAYERS`],
//! libcontainer's state under [`RUNTIME_ROOT`]; the shares at
//! `crius_proto::agent::GUEST_SHARE` and `GUEST_LAYERS`.

use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crius_proto::agent::{GUEST_LAYERS, GUEST_SHARE, Response};
use crius_proto::monitor::{self, Request as MonitorRequest};
use nix::mount::{MntFlags, MsFlags};
use sandbox_container::monitor::{MonitorConfig, SOCKET_FILE};

use crate::reaper::{Reaped, Reaper};

pub const POD_DIR: &str = "/run/crius/pod";
pub const BUNDLES: &str = "/run/crius/bundles";
pub const LAYERS: &str = "/run/crius/upper";
pub const RUNTIME_ROOT: &str = "/run/crius/runc";

/// The largest spec read from the share.
const MAX_SPEC: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("the pod is not started (no StartPod)")]
    NotStarted,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Mount(#[from] crate::mount::MountError),
    #[error("starting the pod's monitor: {0}")]
    Monitor(#[from] sandbox_container::monitor::MonitorError),
    #[error("bad container: {0}")]
    Invalid(String),
    #[error("the pod's monitor: {0}")]
    Protocol(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> PodError {
    let what = what.into();
    move |source| PodError::Io { what, source }
}

/// Container IDs and layer names become file names here.
fn check_name(what: &str, name: &str) -> Result<(), PodError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(PodError::Invalid(format!("bad {what} {name:?}")))
    }
}

fn make_dir(path: &Path, mode: u32) -> Result<(), PodError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(io_err(format!("creating {}", path.display())))
}

/// `StartPod`: see the module's documentation. Once started, a second
/// call answers at once.
pub fn start_pod(
    reaper: &Reaper,
    share: &str,
    layers: &str,
    hostname: &str,
    pid: bool,
) -> Result<(), PodError> {
    let pod = Path::new(POD_DIR);
    if UnixStream::connect(pod.join(SOCKET_FILE)).is_ok() {
        return Ok(());
    }
    crate::mount::mount_fs(share, GUEST_SHARE, "virtiofs", None, false)?;
    crate::mount::mount_fs(layers, GUEST_LAYERS, "virtiofs", None, true)?;
    if !hostname.is_empty() {
        nix::unistd::sethostname(hostname).map_err(|e| PodError::Io {
            what: "setting the hostname".into(),
            source: e.into(),
        })?;
    }
    make_dir(pod, 0o700)?;
    let shm = pod.join("shm");
    make_dir(&shm, 0o755)?;
    nix::mount::mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )
    .map_err(|e| PodError::Io {
        what: "mounting the pod's shm".into(),
        source: e.into(),
    })?;
    let cfg = MonitorConfig {
        // The guest is the pod: its network and UTS namespaces are the
        // pod's; IPC (and PID, when shared) ones of the monitor's.
        hostname: String::new(),
        net: false,
        ipc: true,
        uts: false,
        pid,
        userns: None,
        runtime_root: PathBuf::from(RUNTIME_ROOT),
        forward_output: true,
    };
    cfg.write(pod)?;
    // The monitor's own log goes to the share, where the host can read it
    // (for reports of failures in the guest).
    let _ = std::os::unix::fs::symlink(
        Path::new(GUEST_SHARE).join("pod-monitor.log"),
        pod.join(sandbox_container::monitor::LOG_FILE),
    );
    let mut cmd =
        sandbox_container::monitor::spawn_command(pod, Path::new("/proc/self/exe"), &["monitor"])?;
    let mut spawned = reaper
        .spawn(&mut cmd)
        .map_err(io_err("running the pod's monitor"))?;
    let mut out = Vec::new();
    let mut err = Vec::new();
    if let Some(mut o) = spawned.child.stdout.take() {
        let _ = o.read_to_end(&mut out);
    }
    if let Some(mut e) = spawned.child.stderr.take() {
        let _ = e.read_to_end(&mut err);
    }
    let (ok, status) = match spawned.waiter.wait() {
        Reaped::Exited(nix::sys::wait::WaitStatus::Exited(_, 0)) => (true, "exit 0".to_string()),
        Reaped::Exited(s) => (false, format!("{s:?}")),
        other => (false, format!("{other:?}")),
    };
    let monitor_pid = sandbox_container::monitor::spawned_pid(ok, &status, &out, &err)?;
    console!("pod monitor {monitor_pid} up");
    Ok(())
}

/// A connection to the pod's monitor.
pub fn connect_monitor() -> Result<UnixStream, PodError> {
    UnixStream::connect(Path::new(POD_DIR).join(SOCKET_FILE)).map_err(|_| PodError::NotStarted)
}

/// Sends one request to the pod's monitor on `conn`.
fn send_request(conn: &mut UnixStream, req: &MonitorRequest) -> Result<(), PodError> {
    let mut line = serde_json::to_vec(req).map_err(|e| PodError::Protocol(e.to_string()))?;
    line.push(b'\n');
    conn.write_all(&line)
        .map_err(io_err("writing to the pod's monitor"))
}

/// Reads one answer line of the pod's monitor; None at its end.
fn read_response(conn: &mut BufReader<UnixStream>) -> Result<Option<monitor::Response>, PodError> {
    let mut buf = Vec::new();
    let limit = u64::try_from(monitor::MAX_LINE).unwrap_or(u64::MAX);
    let n = conn
        .by_ref()
        .take(limit)
        .read_until(b'\n', &mut buf)
        .map_err(io_err("reading from the pod's monitor"))?;
    if n == 0 {
        return Ok(None);
    }
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(|e| PodError::Protocol(format!("bad answer: {e}")))
}

/// One request, one answer.
pub fn ask(req: &MonitorRequest) -> Result<monitor::Response, PodError> {
    let mut conn = connect_monitor()?;
    send_request(&mut conn, req)?;
    read_response(&mut BufReader::new(conn))?
        .ok_or_else(|| PodError::Protocol("the monitor closed the connection".into()))
}

/// `Monitor`: passes `req` on and sends each answer through `send` (a
/// `Watch`'s until either side ends).
pub fn relay(
    req: &MonitorRequest,
    send: &mut dyn FnMut(Response) -> io::Result<()>,
) -> Result<(), PodError> {
    let mut conn = connect_monitor()?;
    send_request(&mut conn, req)?;
    let watch = matches!(req, MonitorRequest::Watch);
    let mut conn = BufReader::new(conn);
    while let Some(response) = read_response(&mut conn)? {
        if send(Response::Monitor { response }).is_err() {
            // The host went away: so does this relay.
            return Ok(());
        }
        if !watch {
            break;
        }
    }
    Ok(())
}

/// `CreateContainer`: see the module's documentation.
pub fn create_container(
    id: &str,
    layers: &[String],
    submounts: &[String],
    stdin: bool,
    stdin_once: bool,
    tty: bool,
) -> Result<monitor::Response, PodError> {
    check_name("container id", id)?;
    if layers.is_empty() {
        return Err(PodError::Invalid("a container needs image layers".into()));
    }
    for l in layers {
        check_name("layer", l)?;
    }
    let share = Path::new(GUEST_SHARE);
    let bundle = Path::new(BUNDLES).join(id);
    let layer = Path::new(LAYERS).join(id);
    let made = (|| {
        make_dir(&bundle.join("rootfs"), 0o700)?;
        make_dir(&layer.join("upper"), 0o755)?;
        make_dir(&layer.join("work"), 0o700)?;
        let mut spec = Vec::new();
        std::fs::File::open(share.join("containers").join(id).join("config.json"))
            .and_then(|f| f.take(MAX_SPEC).read_to_end(&mut spec))
            .map_err(io_err("reading the container's spec from the share"))?;
        std::fs::write(bundle.join("config.json"), &spec)
            .map_err(io_err("writing the bundle's config.json"))?;
        std::fs::set_permissions(
            bundle.join("config.json"),
            std::fs::Permissions::from_mode(0o600),
        )
        .map_err(io_err("writing the bundle's config.json"))?;
        // Each layer is a mount point on the host, so a submount here,
        // mounted on first access: overlayfs takes no automount point as a
        // layer, only what is mounted there.
        for l in layers {
            std::fs::read_dir(Path::new(GUEST_LAYERS).join(l))
                .map_err(io_err(format!("image layer {l}")))?;
        }
        let lower = layers
            .iter()
            .rev()
            .map(|l| Path::new(GUEST_LAYERS).join(l).display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let data = format!(
            "lowerdir={lower},upperdir={},workdir={}",
            layer.join("upper").display(),
            layer.join("work").display()
        );
        nix::mount::mount(
            Some("overlay"),
            &bundle.join("rootfs"),
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(|e| PodError::Io {
            what: "mounting the container's rootfs".into(),
            source: e.into(),
        })?;
        for m in submounts {
            let p = Path::new(m);
            if !p.starts_with(GUEST_SHARE) || m.contains("/../") || m.ends_with("/..") {
                return Err(PodError::Invalid(format!("bad submount {m:?}")));
            }
            // Reaching it mounts it; one gone meanwhile is not ours to fail.
            let _ = std::fs::metadata(p);
            let _ = std::fs::read_dir(p).map(|mut d| d.next());
        }
        ask(&MonitorRequest::CreateContainer {
            id: id.to_owned(),
            bundle: bundle.clone(),
            log_path: None,
            stdin,
            stdin_once,
            tty,
        })
    })();
    match made {
        Ok(r @ monitor::Response::Created { .. }) => Ok(r),
        other => {
            clean_up(id);
            other
        }
    }
}

/// `RemoveContainer`: see the module's documentation.
pub fn remove_container(id: &str) -> Result<(), PodError> {
    check_name("container id", id)?;
    match ask(&MonitorRequest::DeleteContainer { id: id.to_owned() })? {
        monitor::Response::Ok => {}
        monitor::Response::Error { message, .. } => return Err(PodError::Protocol(message)),
        other => return Err(PodError::Protocol(format!("unexpected {other:?}"))),
    }
    clean_up(id);
    Ok(())
}

/// Unmounts and removes a container's rootfs and bundle; gone is fine.
fn clean_up(id: &str) {
    let bundle = Path::new(BUNDLES).join(id);
    let _ = nix::mount::umount2(&bundle.join("rootfs"), MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir_all(&bundle);
    let _ = std::fs::remove_dir_all(Path::new(LAYERS).join(id));
}

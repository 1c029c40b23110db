//! `crius vm-monitor <pod dir>`: the host process of one VM pod, which
//! outlives crius as a namespace sandbox pod's monitor does. It boots the
//! pod's VM (the VMM and its helpers are its children), joins the pod's
//! network to the VM (see [`crate::pod_net`]), makes the guest the pod
//! (the agent's `StartPod`), and then:
//!
//! - writes each container's log on the host, in the CRI format, from the
//!   raw output the guest's monitor forwards (`guest.rs`), and records each
//!   exit in the container's host bundle (`exit.json`) the moment the guest
//!   reports it;
//! - serves crius the namespace sandbox's monitor protocol on
//!   `<pod dir>/monitor.sock` (`host.rs`): container creation, start,
//!   signals, deletion, ExecSync, log reopening, watches of exits,
//!   shutdown; streaming exec, attach, port forwards, stats and updates go
//!   from crius to the agent directly;
//! - holds the pod's mount namespace ([`crate::mount_ns`]): the shares
//!   and all that is bound into them are mounted there, not on the host;
//! - ends the pod when the VM ends: every container without an exit is
//!   recorded as killed (reason `VMDied`), then the process exits.
//!
//! Files of the pod directory: [`CONFIG_FILE`] (written by crius),
//! `monitor.sock`, `monitor.pid`, `vm-monitor.log`, `vm/` (the VM's work
//! directory: console log, vsock sockets), `share/` and `layers/` (the
//! directories shared with the guest over virtio-fs, tags [`SHARE_TAG`]
//! and [`LAYERS_TAG`], the latter read-only).

mod guest;
mod host;

pub use host::{CREATE_FILE, GuestCreate};

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agent_conn::{AgentConn, ConnError};
use crate::hypervisor::{Net, Share, Vm, VmConfig, VmError};

/// What crius tells a VM pod's monitor, in the pod directory.
pub const CONFIG_FILE: &str = "vm.json";
/// The virtio-fs tags of the pod's shares: its files, specs and volumes
/// (read-write), and its image layers (read-only).
pub const SHARE_TAG: &str = "pod";
pub const LAYERS_TAG: &str = "layers";
/// The VM's network interface on the host side (in the pod's netns).
pub const TAP: &str = "tap0";
/// The vm-monitor's own log, in the pod directory.
pub const LOG_FILE: &str = "vm-monitor.log";
/// The VM's processes (the VMM first), in the pod directory: what a stop
/// kills if the vm-monitor is gone.
pub const PIDS_FILE: &str = "vm.pids";

/// How long a graceful stop of the VM may take.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// `vm.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmPodConfig {
    pub id: String,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub hostname: String,
    /// The pod's containers share one PID namespace.
    pub pid_shared: bool,
    /// The hypervisor driver (the host's choice).
    #[serde(default)]
    pub driver: crate::driver::DriverChoice,
    pub net: Option<PodNetConfig>,
}

/// The pod's network, as CNI set it up on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetConfig {
    /// The network namespace pin.
    pub netns: PathBuf,
    /// CNI's interface there (`eth0`).
    pub interface: String,
    /// The pod's IPv4 address and prefix, and gateway, from CNI.
    pub address: String,
    pub prefix_len: u8,
    pub gateway: Option<String>,
}

impl VmPodConfig {
    pub fn load(pod_dir: &Path) -> std::io::Result<VmPodConfig> {
        let bytes = std::fs::read(pod_dir.join(CONFIG_FILE))?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }

    pub fn write(&self, pod_dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        sandbox_api::fs::write_atomic(&pod_dir.join(CONFIG_FILE), &bytes, 0o600)
    }
}

/// The VM's vsock backend socket, for connections to the agent.
pub fn vsock_path(pod_dir: &Path) -> PathBuf {
    pod_dir.join("vm").join("vsock.sock")
}

/// The shares' directories on the host.
pub fn share_dir(pod_dir: &Path) -> PathBuf {
    pod_dir.join("share")
}

pub fn layers_dir(pod_dir: &Path) -> PathBuf {
    pod_dir.join("layers")
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("the pod's network")]
    Net(#[from] crate::pod_net::PodNetError),
    #[error("booting the VM")]
    Vm(#[from] VmError),
    #[error("the guest agent")]
    Agent(#[from] ConnError),
    #[error("{0}")]
    Task(String),
}

/// The running pod: its VM and the redirect joining its network to it.
pub(crate) struct PodVm {
    pub vm: Mutex<Vm>,
    pub redirect: Mutex<Option<crate::pod_net::TcRedirect>>,
}

/// `crius vm-monitor <pod dir>`: call before any thread exists.
pub fn main(pod_dir: &Path) -> ExitCode {
    if !pod_dir.is_absolute() {
        eprintln!("crius vm-monitor: the pod directory must be an absolute path");
        return ExitCode::from(2);
    }
    sandbox_container::monitor::daemonize("crius vm-monitor", |ready| {
        init_tracing(pod_dir);
        // Still one thread: the whole process moves.
        if let Err(e) = crate::mount_ns::unshare_own() {
            ready.failed(&format!("a mount namespace of its own: {e}"));
            return ExitCode::FAILURE;
        }
        let cfg = match VmPodConfig::load(pod_dir) {
            Ok(c) => c,
            Err(e) => {
                ready.failed(&format!("reading {CONFIG_FILE}: {e}"));
                return ExitCode::FAILURE;
            }
        };
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                ready.failed(&format!("starting tokio: {e}"));
                return ExitCode::FAILURE;
            }
        };
        rt.block_on(run(pod_dir.to_path_buf(), cfg, ready))
    })
}

fn init_tracing(pod_dir: &Path) {
    use std::os::unix::fs::OpenOptionsExt as _;
    let Ok(file) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(pod_dir.join(LOG_FILE))
    else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(Mutex::new(file))
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .try_init();
}

async fn run(dir: PathBuf, cfg: VmPodConfig, ready: sandbox_container::monitor::Ready) -> ExitCode {
    let pod = match boot(&dir, &cfg).await {
        Ok(p) => Arc::new(p),
        Err(e) => {
            let why = sandbox_api::error::chain(&e);
            tracing::error!("start-up failed: {why}");
            ready.failed(&why);
            return ExitCode::FAILURE;
        }
    };
    let state = Arc::new(guest::State::new());
    let listener = match host::bind(&dir) {
        Ok(l) => l,
        Err(e) => {
            ready.failed(&format!("binding the monitor socket: {e}"));
            stop_vm(&pod);
            return ExitCode::FAILURE;
        }
    };
    // The guest's exits and output, from now on.
    let watch = tokio::spawn(guest::watch(dir.clone(), state.clone(), pod.clone()));
    ready.ok();
    tracing::info!(pod = %cfg.id, "VM pod ready");
    let ended = host::serve(listener, dir.clone(), state.clone(), pod.clone()).await;
    watch.abort();
    let reason = match ended {
        host::Ended::Shutdown => "shut down",
        host::Ended::VmDied => "the VM ended",
    };
    tracing::info!(reason, "vm-monitor exits");
    let _ = std::fs::remove_file(dir.join(sandbox_container::monitor::SOCKET_FILE));
    let _ = std::fs::remove_file(dir.join(sandbox_container::monitor::PID_FILE));
    ExitCode::SUCCESS
}

/// Boots the VM, joins the pod's network to it and makes the guest the
/// pod. On error nothing is left running.
async fn boot(dir: &Path, cfg: &VmPodConfig) -> Result<PodVm, BootError> {
    let iface = match &cfg.net {
        Some(n) => {
            let (netns, name) = (n.netns.clone(), n.interface.clone());
            Some(
                tokio::task::spawn_blocking(move || crate::pod_net::inspect(&netns, &name))
                    .await
                    .map_err(|e| BootError::Task(e.to_string()))??,
            )
        }
        None => None,
    };
    let mut vc = VmConfig::new(
        &cfg.id,
        dir.join("vm"),
        cfg.kernel.clone(),
        cfg.initramfs.clone(),
    );
    vc.vcpus = cfg.vcpus;
    vc.memory_mib = cfg.memory_mib;
    vc.shares = vec![
        Share {
            tag: SHARE_TAG.into(),
            dir: share_dir(dir),
            read_only: false,
        },
        Share {
            tag: LAYERS_TAG.into(),
            dir: layers_dir(dir),
            read_only: true,
        },
    ];
    if let (Some(n), Some(i)) = (&cfg.net, &iface) {
        vc.net = Some(Net {
            tap: TAP.into(),
            mac: i.mac.clone(),
            netns: Some(n.netns.clone()),
        });
    }
    let driver = crate::driver::select(cfg.driver).driver;
    let vm = tokio::task::spawn_blocking(move || driver.start(&vc))
        .await
        .map_err(|e| BootError::Task(e.to_string()))??;
    let pids: Vec<String> = vm.pids().iter().map(u32::to_string).collect();
    if let Err(e) =
        sandbox_api::fs::write_atomic(&dir.join(PIDS_FILE), pids.join(" ").as_bytes(), 0o600)
    {
        tracing::warn!("writing {PIDS_FILE}: {e}");
    }
    let pod = PodVm {
        vm: Mutex::new(vm),
        redirect: Mutex::new(None),
    };
    match set_up_guest(dir, cfg, iface.as_ref(), &pod).await {
        Ok(()) => Ok(pod),
        Err(e) => {
            stop_vm(&pod);
            Err(e)
        }
    }
}

async fn set_up_guest(
    dir: &Path,
    cfg: &VmPodConfig,
    iface: Option<&crate::pod_net::PodInterface>,
    pod: &PodVm,
) -> Result<(), BootError> {
    let mut agent = AgentConn::connect(&vsock_path(dir)).await?;
    if let (Some(n), Some(i)) = (&cfg.net, iface) {
        let (netns, name) = (n.netns.clone(), n.interface.clone());
        let redirect = tokio::task::spawn_blocking(move || {
            crate::pod_net::TcRedirect::set_up(&netns, &name, TAP)
        })
        .await
        .map_err(|e| BootError::Task(e.to_string()))??;
        *pod.redirect.lock().unwrap_or_else(|p| p.into_inner()) = Some(redirect);
        agent
            .call(crius_proto::agent::Request::ConfigureInterface {
                mac: i.mac.clone(),
                address: n.address.clone(),
                prefix_len: n.prefix_len,
                gateway: n.gateway.clone(),
                mtu: Some(i.mtu),
            })
            .await?;
    }
    agent
        .call(crius_proto::agent::Request::StartPod {
            share: SHARE_TAG.into(),
            layers: LAYERS_TAG.into(),
            hostname: cfg.hostname.clone(),
            pid: cfg.pid_shared,
        })
        .await?;
    Ok(())
}

/// Stops the VM (the agent's shutdown, then the kill) and undoes the
/// network redirect; idempotent. Blocking (up to [`STOP_GRACE`]): the
/// vm-monitor has nothing else to do then.
pub(crate) fn stop_vm(pod: &PodVm) {
    let mut vm = pod.vm.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = vm.stop(STOP_GRACE) {
        tracing::warn!(error = %sandbox_api::error::chain(&e), "stopping the VM");
    }
    if let Some(r) = pod
        .redirect
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        && let Err(e) = r.tear_down()
    {
        tracing::warn!(error = %sandbox_api::error::chain(&e), "undoing the network redirect");
    }
}

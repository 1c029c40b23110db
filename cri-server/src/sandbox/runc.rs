//! The namespace sandbox (handlers "" and "runc"), server side: pod
//! directories and files, the pod's network through CNI, container rootfs
//! overlays and OCI bundles. Everything that forks (namespaces, container
//! processes) happens in the pod's monitor, which this talks to.
//!
//! Layout: `<state>/pods/<pod>/` (0700: hostname, hosts, resolv.conf, shm/,
//! ns/, monitor.json, monitor.sock), `<state>/containers/<c>/` (the bundle:
//! config.json, rootfs/, exit.json) and `<root>/containers/<c>/` (the
//! overlay's upper and work dirs).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crius_proto::cri::{IdMapping, NamespaceMode};
use crius_proto::monitor::{ErrorKind, ExecResult, ExitRecord, Request, Response, StreamFd};
use image_store::{Image, ImageStore};
use sandbox_container::cni::{self, Cni, CniOptions, PodNetwork};
use sandbox_container::monitor::{
    ExecStreams, IdRange, MonitorClient, MonitorConfig, MonitorError, UsernsMaps,
};
use sandbox_container::spec;

use super::SandboxController;
use super::files;
use crate::config::Config;
use crate::error::Error;
use crate::store::{ContainerRecord, PodRecord};

pub struct RuncSandbox {
    state: PathBuf,
    root: PathBuf,
    cni: Cni,
    images: Arc<ImageStore>,
    host: spec::HostLimits,
    seccomp_root: PathBuf,
    /// `image_volumes` in the config.
    image_volumes: bool,
}

fn internal(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Internal(format!("{what}: {e}"))
}

fn monitor_error(e: sandbox_container::monitor::MonitorError) -> Error {
    Error::Internal(format!("pod monitor: {}", crate::error::chain(&e)))
}

fn streams_error(e: MonitorError) -> Error {
    match e {
        MonitorError::Remote { kind, message } => answer_error(kind, message),
        e => monitor_error(e),
    }
}

/// Sorts the descriptors the monitor handed over.
fn stream_io(mut streams: ExecStreams) -> (super::StreamIo, ExecStreams) {
    let mut io = super::StreamIo::default();
    for (kind, fd) in std::mem::take(&mut streams.fds) {
        let slot = match kind {
            StreamFd::Stdin => &mut io.stdin,
            StreamFd::Stdout => &mut io.stdout,
            StreamFd::Stderr => &mut io.stderr,
            StreamFd::Pty => &mut io.pty,
        };
        *slot = Some(fd);
    }
    (io, streams)
}

fn cni_error(e: cni::Error) -> Error {
    match e {
        cni::Error::NoConfig { .. } => {
            Error::FailedPrecondition(format!("pod network: {}", crate::error::chain(&e)))
        }
        e => Error::Internal(format!("pod network: {}", crate::error::chain(&e))),
    }
}

/// A spec generation error as ours.
fn spec_error(e: spec::SpecError) -> Error {
    match e {
        spec::SpecError::Invalid(m) => Error::InvalidArgument(m),
        spec::SpecError::NotFound(m) => Error::NotFound(m),
        spec::SpecError::FailedPrecondition(m) => Error::FailedPrecondition(m),
        e => Error::Internal(crate::error::chain(&e)),
    }
}

/// A monitor's error answer as ours.
fn answer_error(kind: ErrorKind, message: String) -> Error {
    match kind {
        ErrorKind::NotFound => Error::NotFound(message),
        ErrorKind::InvalidArgument => Error::InvalidArgument(message),
        ErrorKind::FailedPrecondition => Error::FailedPrecondition(message),
        ErrorKind::DeadlineExceeded => Error::DeadlineExceeded(message),
        ErrorKind::Internal => Error::Internal(message),
    }
}

impl RuncSandbox {
    pub fn new(config: &Config, images: Arc<ImageStore>) -> Result<RuncSandbox, Error> {
        let mut opts = CniOptions::new(config.state.join("cni-cache"));
        opts.conf_dirs = config.cni.conf_dirs.clone();
        opts.bin_dirs = config.cni.bin_dirs.clone();
        opts.plugin_timeout = Duration::from_secs(config.cni.plugin_timeout.max(1));
        let cni = Cni::new(opts).map_err(cni_error)?;
        // Searchable (not listable) by others: containers of pods with
        // their own user namespace are set up from inside it and reach
        // their bundle and pod files by path.
        for d in [config.state.join("pods"), config.state.join("containers")] {
            files::make_dir(&d, 0o711).map_err(internal("create state dirs"))?;
        }
        files::make_dir(&config.root.join("containers"), 0o700)
            .map_err(internal("create root dirs"))?;
        Ok(RuncSandbox {
            state: config.state.clone(),
            root: config.root.clone(),
            cni,
            images,
            host: spec::HostLimits::detect(),
            seccomp_root: config.root.join("seccomp"),
            image_volumes: config.image_volumes,
        })
    }

    fn pod_dir(&self, id: &str) -> PathBuf {
        self.state.join("pods").join(id)
    }

    fn bundle(&self, id: &str) -> PathBuf {
        self.state.join("containers").join(id)
    }

    fn layer_dir(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }

    fn pod_network(pod: &PodRecord, netns: &Path) -> PodNetwork {
        let meta = pod.config.metadata.clone().unwrap_or_default();
        PodNetwork {
            id: pod.id.clone(),
            name: meta.name,
            namespace: meta.namespace,
            uid: meta.uid,
            netns: netns.to_path_buf(),
            port_mappings: pod
                .config
                .port_mappings
                .iter()
                .filter_map(|p| {
                    Some(cni::PortMapping {
                        host_port: u16::try_from(p.host_port).ok().filter(|h| *h != 0)?,
                        container_port: u16::try_from(p.container_port).ok()?,
                        protocol: match p.protocol {
                            1 => cni::Protocol::Udp,
                            2 => cni::Protocol::Sctp,
                            _ => cni::Protocol::Tcp,
                        },
                        host_ip: p.host_ip.parse().ok(),
                    })
                })
                .collect(),
        }
    }

    async fn client(&self, pod: &PodRecord) -> Result<MonitorClient, Error> {
        MonitorClient::connect(&self.pod_dir(&pod.id))
            .await
            .map_err(monitor_error)
    }

    /// Sends one request to the pod's monitor; an error answer becomes ours.
    async fn ask(&self, pod: &PodRecord, req: Request) -> Result<Response, Error> {
        let mut client = self.client(pod).await?;
        match client.request(&req).await.map_err(monitor_error)? {
            Response::Error { kind, message } => Err(answer_error(kind, message)),
            r => Ok(r),
        }
    }

    /// What the spec builder needs of this container.
    fn spec_input<'a>(
        &'a self,
        pod: &'a PodRecord,
        c: &'a ContainerRecord,
        image: &'a Image,
        pod_dir: &Path,
        rootfs: &'a Path,
    ) -> spec::SpecInput<'a> {
        let (host_net, host_ipc, pod_pid) = Self::namespaces(pod);
        let ns = pod_dir.join("ns");
        let pid_init = fs::read_to_string(ns.join("pid-init")).ok();
        let parent = pod.cgroup_parent().unwrap_or_else(|| "/crius".to_string());
        spec::SpecInput {
            sandbox_id: &pod.id,
            pod: &pod.config,
            container: &c.config,
            image_name: &c.image_name,
            image: &image.config,
            rootfs,
            pod_namespaces: spec::PodNamespaces {
                net: (!host_net).then(|| ns.join("net")),
                ipc: (!host_ipc).then(|| ns.join("ipc")),
                uts: (!host_net).then(|| ns.join("uts")),
                // The pin, or for pods of an earlier crius the init's.
                pid: pid_init.filter(|_| pod_pid).map(|p| {
                    let pin = ns.join("pid");
                    if pin.exists() {
                        pin
                    } else {
                        PathBuf::from(format!("/proc/{}/ns/pid", p.trim()))
                    }
                }),
                pid_target: None,
                user: Self::userns(pod).ok().flatten().map(|_| ns.join("user")),
            },
            cgroups_path: format!("{parent}/crius-{}", c.id),
            hostname: fs::read_to_string(pod_dir.join("hostname"))
                .map(|h| h.trim().to_string())
                .unwrap_or_default(),
            etc_files: spec::EtcFiles {
                hosts: Some(pod_dir.join("hosts")),
                resolv_conf: Some(pod_dir.join("resolv.conf")),
                hostname: Some(pod_dir.join("hostname")),
                shm: (!host_ipc).then(|| pod_dir.join("shm")),
            },
            host: self.host.clone(),
            seccomp_profile_root: &self.seccomp_root,
            seccomp_default_when_unset: false,
        }
    }

    /// Image volumes: each image named by a mount (pulled already, as
    /// kubelet does before CreateContainer) is mounted read-only once at
    /// `<bundle>/image-mounts/<n>`, where [`files::unmount_all_under`]
    /// finds it at removal (and at the rollback of a failed create). Returns
    /// the container's mounts with each image mount rewritten as a
    /// read-only bind of the image. (k8s-cri 0.11 has no
    /// `Mount.image_sub_path` or `ImageSpec.image_ref` yet: the whole image
    /// is mounted, and ContainerStatus echoes the mount as requested.)
    fn mount_image_volumes(
        &self,
        c: &mut ContainerRecord,
        bundle: &Path,
    ) -> Result<Vec<crius_proto::cri::Mount>, Error> {
        let mut mounted: Vec<(String, PathBuf)> = Vec::new();
        let mut out = Vec::with_capacity(c.config.mounts.len());
        let mut refs = Vec::with_capacity(c.config.mounts.len());
        for (i, m) in c.config.mounts.iter().enumerate() {
            if m.image.is_none() {
                out.push(m.clone());
                refs.push(None);
                continue;
            }
            if !self.image_volumes {
                return Err(Error::InvalidArgument(
                    "image volumes are turned off in crius's config (image_volumes = false)".into(),
                ));
            }
            let sub_path = match &c.mount_sub_paths {
                Some(paths) => paths.get(i).cloned().unwrap_or_default(),
                None => {
                    return Err(Error::InvalidArgument(
                        "the request's image volume sub paths could not be read (a compressed \
                         message): send it uncompressed"
                            .into(),
                    ));
                }
            };
            let reference = spec::check_image_mount(m).map_err(spec_error)?;
            let image = self.images.get(reference)?.ok_or_else(|| {
                Error::NotFound(format!("image {reference:?} not found: pull it first"))
            })?;
            let id = image.id.to_string();
            refs.push(Some(id.clone()));
            let root = match mounted.iter().find(|(mounted_id, _)| *mounted_id == id) {
                Some((_, root)) => root.clone(),
                None => {
                    let root = bundle.join("image-mounts").join(mounted.len().to_string());
                    files::make_dir(&root, 0o700).map_err(internal("create image mount dir"))?;
                    files::mount_image(&self.images.layer_dirs(&image), &root)
                        .map_err(|e| Error::Internal(format!("mount image {id}: {e}")))?;
                    mounted.push((id.clone(), root.clone()));
                    root
                }
            };
            let source = spec::resolve_sub_path(&root, &sub_path).map_err(spec_error)?;
            out.push(spec::prepared_image_mount(m, &source));
        }
        c.mount_image_refs = refs;
        Ok(out)
    }

    /// Signals every process of a container through its cgroup (the
    /// spec's), for a container whose monitor is gone.
    fn signal_orphan(&self, c: &ContainerRecord, signal: i32) -> Result<(), Error> {
        let path = self
            .cgroups_path(c)
            .ok_or_else(|| Error::Internal(format!("container {} has no cgroup", c.id)))?;
        sandbox_container::monitor::signal_orphaned_container(&path, signal)
            .map_err(internal("signal through the cgroup"))
    }

    /// The container's cgroups path, from its bundle's config.json.
    fn cgroups_path(&self, c: &ContainerRecord) -> Option<String> {
        let config = fs::read(self.bundle(&c.id).join("config.json")).ok()?;
        let spec: serde_json::Value = serde_json::from_slice(&config).ok()?;
        spec["linux"]["cgroupsPath"].as_str().map(str::to_string)
    }

    /// The ID maps of the pod's own user namespace (mode POD), None for the
    /// host's; invalid options are refused.
    fn userns(pod: &PodRecord) -> Result<Option<UsernsMaps>, Error> {
        let Some(u) = pod.namespace_options().userns_options else {
            return Ok(None);
        };
        spec::check_userns(&u).map_err(spec_error)?;
        let range = |m: &[IdMapping]| {
            m.first().map(|m| IdRange {
                container: m.container_id,
                host: m.host_id,
                size: m.length,
            })
        };
        Ok(match (range(&u.uids), range(&u.gids)) {
            (Some(uid), Some(gid)) if u.mode == NamespaceMode::Pod as i32 => {
                Some(UsernsMaps { uid, gid })
            }
            _ => None,
        })
    }

    fn namespaces(pod: &PodRecord) -> (bool, bool, bool) {
        let ns = pod.namespace_options();
        let host_net = ns.network == NamespaceMode::Node as i32;
        let host_ipc = ns.ipc == NamespaceMode::Node as i32;
        let pod_pid = ns.pid == NamespaceMode::Pod as i32;
        (host_net, host_ipc, pod_pid)
    }
}

#[tonic::async_trait]
impl SandboxController for RuncSandbox {
    async fn run_pod(&self, pod: &mut PodRecord) -> Result<(), Error> {
        let userns = Self::userns(pod)?;
        let (host_net, host_ipc, pod_pid) = Self::namespaces(pod);
        let ns = pod.namespace_options();
        if userns.is_some() && (host_net || host_ipc || ns.pid == NamespaceMode::Node as i32) {
            return Err(Error::InvalidArgument(
                "a pod with its own user namespace cannot use the host's network, IPC or \
                 PID namespace"
                    .into(),
            ));
        }
        let dir = self.pod_dir(&pod.id);
        // A pod with its own user namespace: its containers are set up from
        // inside it and must reach their files here by path.
        files::make_dir(&dir, if userns.is_some() { 0o711 } else { 0o700 })
            .map_err(internal("create pod dir"))?;
        let hostname = if host_net {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            files::hostname(&pod.config).map_err(Error::InvalidArgument)?
        };
        fs::write(dir.join("hostname"), format!("{hostname}\n"))
            .map_err(internal("write hostname"))?;
        let resolv = files::resolv_conf(pod.config.dns_config.as_ref())
            .map_err(internal("read resolv.conf"))?;
        fs::write(dir.join("resolv.conf"), resolv).map_err(internal("write resolv.conf"))?;
        fs::write(dir.join("hosts"), files::hosts(&hostname, &[]))
            .map_err(internal("write hosts"))?;
        if !host_ipc {
            let shm = dir.join("shm");
            files::make_dir(&shm, 0o755).map_err(internal("create shm dir"))?;
            files::mount_shm(&shm).map_err(|e| Error::Internal(format!("mount pod shm: {e}")))?;
        }
        let monitor = MonitorConfig {
            hostname: hostname.clone(),
            net: !host_net,
            ipc: !host_ipc,
            uts: !host_net,
            pid: pod_pid,
            userns,
            runtime_root: self.state.join("runc"),
        };
        let pid = sandbox_container::monitor::spawn_pod_monitor(&dir, &monitor)
            .await
            .map_err(monitor_error)?;
        pod.monitor_pid = Some(pid);
        if !host_net {
            let netns = dir.join("ns").join("net");
            pod.netns = Some(netns.clone());
            let net = Self::pod_network(pod, &netns);
            let cni = self.cni.clone();
            // Mark the attachment before the ADD: a crash in between still
            // owes the DEL.
            pod.network_attached = true;
            let result = tokio::task::spawn_blocking(move || cni.add(&net))
                .await
                .map_err(|e| Error::Internal(format!("CNI task: {e}")))?
                .map_err(cni_error)?;
            pod.ips = result.pod_ips().iter().map(|ip| ip.to_string()).collect();
            fs::write(dir.join("hosts"), files::hosts(&hostname, &pod.ips))
                .map_err(internal("write hosts"))?;
        }
        Ok(())
    }

    async fn stop_pod(&self, pod: &mut PodRecord) -> Result<(), Error> {
        let dir = self.pod_dir(&pod.id);
        if pod.network_attached {
            let netns = pod
                .netns
                .clone()
                .unwrap_or_else(|| dir.join("ns").join("net"));
            let net = Self::pod_network(pod, &netns);
            let cni = self.cni.clone();
            tokio::task::spawn_blocking(move || cni.del(&net))
                .await
                .map_err(|e| Error::Internal(format!("CNI task: {e}")))?
                .map_err(cni_error)?;
            pod.network_attached = false;
        }
        if dir.join("monitor.sock").exists() {
            match self.ask(pod, Request::Shutdown).await {
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(pod = %pod.id, error = %crate::error::chain(&e), "monitor shutdown")
                }
            }
        }
        if let Some(pid) = pod.monitor_pid.take() {
            sandbox_container::monitor::kill_stale(&dir, pid);
        }
        files::unmount_all_under(&dir).map_err(internal("unmount pod mounts"))?;
        Ok(())
    }

    async fn remove_pod(&self, pod: &PodRecord) -> Result<(), Error> {
        files::remove_tree(&self.pod_dir(&pod.id)).map_err(internal("remove pod dir"))
    }

    async fn create_container(
        &self,
        pod: &PodRecord,
        c: &mut ContainerRecord,
        image: &Image,
    ) -> Result<(), Error> {
        let bundle = self.bundle(&c.id);
        let rootfs = bundle.join("rootfs");
        let layer = self.layer_dir(&c.id);
        c.bundle = bundle.clone();
        let userns = Self::userns(pod)?;
        // Only root reaches the bundle (the rootfs is not nosuid on the
        // host until the container is created), or in a pod with its own
        // user namespace also the pod's root, as which the container is
        // set up and reaches its rootfs by path.
        files::make_dir(&bundle, 0o700).map_err(internal("create bundle"))?;
        if let Some(maps) = &userns {
            nix::unistd::chown(
                &bundle,
                Some(nix::unistd::Uid::from_raw(maps.uid.host)),
                Some(nix::unistd::Gid::from_raw(maps.gid.host)),
            )
            .map_err(|e| internal("own bundle")(e.into()))?;
        }
        files::make_dir(&rootfs, 0o700).map_err(internal("create bundle"))?;
        files::make_dir(&layer.join("upper"), 0o755).map_err(internal("create upper dir"))?;
        files::make_dir(&layer.join("work"), 0o700).map_err(internal("create work dir"))?;
        match userns {
            None => files::mount_overlay(
                &self.images.layer_dirs(image),
                &layer.join("upper"),
                &layer.join("work"),
                &rootfs,
            ),
            Some(maps) => files::mount_overlay_idmapped(
                &self.images.layer_dirs(image),
                &layer.join("upper"),
                &layer.join("work"),
                &rootfs,
                &files::IdmapOptions {
                    userns: &self.pod_dir(&pod.id).join("ns").join("user"),
                    scratch: &layer.join("idmap"),
                    owner: (maps.uid.host, maps.gid.host),
                },
            ),
        }
        .map_err(internal("mount rootfs"))?;
        c.rootfs_mounted = true;
        if !c.log_path.is_empty()
            && let Some(parent) = Path::new(&c.log_path).parent()
        {
            fs::create_dir_all(parent).map_err(internal("create log dir"))?;
        }
        let pod_dir = self.pod_dir(&pod.id);
        let mounts = self.mount_image_volumes(c, &bundle)?;
        // As containerd: missing host paths created, symlinks resolved,
        // propagation checked against the host mount; the record keeps
        // the paths as asked for.
        let config = crius_proto::cri::ContainerConfig {
            mounts: spec::prepare_host_paths(&mounts).map_err(spec_error)?,
            ..c.config.clone()
        };
        let mut input = self.spec_input(pod, c, image, &pod_dir, &rootfs);
        input.container = &config;
        let spec = spec::build(&input).map_err(spec_error)?;
        if let Some(p) = spec.process() {
            let u = p.user();
            c.user = Some(crius_proto::cri::LinuxContainerUser {
                uid: u.uid().into(),
                gid: u.gid().into(),
                supplemental_groups: u
                    .additional_gids()
                    .iter()
                    .flatten()
                    .map(|g| (*g).into())
                    .collect(),
            });
        }
        let json = serde_json::to_vec_pretty(&spec)
            .map_err(|e| Error::Internal(format!("encode spec: {e}")))?;
        // 0600: the spec carries the container's env.
        sandbox_container::monitor::write_atomic(&bundle.join("config.json"), &json, 0o600)
            .map_err(internal("write config.json"))?;
        let resp = self
            .ask(
                pod,
                Request::CreateContainer {
                    id: c.id.clone(),
                    bundle,
                    log_path: (!c.log_path.is_empty()).then(|| PathBuf::from(&c.log_path)),
                    stdin: c.config.stdin,
                    stdin_once: c.config.stdin_once,
                    tty: c.config.tty,
                },
            )
            .await?;
        if let Response::Created { pid } = resp {
            c.pid = pid;
        }
        files::seal_rootfs(&rootfs).map_err(internal("make the rootfs nosuid,nodev"))?;
        Ok(())
    }

    async fn start_container(&self, pod: &PodRecord, c: &ContainerRecord) -> Result<(), Error> {
        self.ask(pod, Request::StartContainer { id: c.id.clone() })
            .await
            .map(|_| ())
    }

    async fn signal_container(
        &self,
        pod: &PodRecord,
        c: &ContainerRecord,
        signal: i32,
        all: bool,
    ) -> Result<(), Error> {
        let asked = self
            .ask(
                pod,
                Request::Signal {
                    id: c.id.clone(),
                    signal,
                    all,
                },
            )
            .await
            .map(|_| ());
        match asked {
            Err(e) if !self.pod_alive(pod) => {
                // The monitor is gone: signal the container through its
                // cgroup; its exit is recorded by `container_exit`.
                tracing::warn!(container = %c.id, error = %crate::error::chain(&e), "pod monitor gone: signalling through the cgroup");
                self.signal_orphan(c, signal)
            }
            r => r,
        }
    }

    fn container_exit(&self, c: &ContainerRecord) -> Option<ExitRecord> {
        let exit_file = self.bundle(&c.id).join("exit.json");
        if let Ok(bytes) = fs::read(&exit_file) {
            return serde_json::from_slice(&bytes).ok();
        }
        // A container whose pod monitor is gone cannot be told apart from a
        // dead one (its stdio went with the monitor): it is killed and
        // recorded as killed, once.
        let pod_dir = self.pod_dir(&c.pod_id);
        if c.bundle.as_os_str().is_empty()
            || !pod_dir.exists()
            || sandbox_container::monitor::monitor_alive(&pod_dir)
        {
            return None;
        }
        if let Err(e) = self.signal_orphan(c, libc::SIGKILL) {
            tracing::warn!(container = %c.id, error = %crate::error::chain(&e), "killing a container of a dead monitor");
        }
        let exit = ExitRecord {
            exit_code: 128 + libc::SIGKILL,
            signal: Some(libc::SIGKILL),
            finished_at: crate::store::now_ns(),
            reason: "Error".into(),
        };
        let bytes = serde_json::to_vec(&exit).ok()?;
        if let Err(e) = sandbox_container::monitor::write_atomic(&exit_file, &bytes, 0o600) {
            tracing::warn!(container = %c.id, error = %e, "recording the exit of a container of a dead monitor");
        }
        tracing::warn!(container = %c.id, pod = %c.pod_id, "the pod's monitor is gone: container recorded as killed");
        Some(exit)
    }

    fn pod_alive(&self, pod: &PodRecord) -> bool {
        let dir = self.pod_dir(&pod.id);
        !dir.exists() || sandbox_container::monitor::monitor_alive(&dir)
    }

    /// libcontainer moves each new container and exec process into its
    /// cgroup: the kernel lock that takes is warmed here first (see
    /// `sandbox_container::cgroup_warm`), on a blocking thread.
    fn warm_up(&self) {
        tokio::task::spawn_blocking(|| {
            if let Err(e) = sandbox_container::cgroup_warm::warm() {
                tracing::debug!("warming the cgroup attach lock: {e}");
            }
        });
    }

    async fn remove_container(
        &self,
        pod: Option<&PodRecord>,
        c: &ContainerRecord,
    ) -> Result<(), Error> {
        if let Some(pod) = pod
            && self.pod_dir(&pod.id).join("monitor.sock").exists()
            && let Err(e) = self
                .ask(pod, Request::DeleteContainer { id: c.id.clone() })
                .await
        {
            tracing::warn!(container = %c.id, error = %crate::error::chain(&e), "monitor delete");
        }
        if pod.is_none_or(|p| !self.pod_alive(p)) {
            // Nobody deleted it through libcontainer: its cgroup is ours to
            // remove (its processes were killed when its exit was recorded).
            if let Some(path) = self.cgroups_path(c)
                && let Err(e) = sandbox_container::monitor::remove_orphaned_cgroup(&path)
            {
                tracing::warn!(container = %c.id, error = %e, "removing the cgroup of a container of a dead monitor");
            }
        }
        files::remove_tree(&self.bundle(&c.id)).map_err(internal("remove bundle"))?;
        files::remove_tree(&self.layer_dir(&c.id)).map_err(internal("remove container layer"))?;
        // libcontainer's state, which a gone monitor could not delete.
        files::remove_tree(&self.state.join("runc").join(&c.id))
            .map_err(internal("remove container state"))?;
        Ok(())
    }

    async fn exec_sync(
        &self,
        pod: &PodRecord,
        c: &ContainerRecord,
        cmd: Vec<String>,
        timeout_ms: u64,
    ) -> Result<ExecResult, Error> {
        match self
            .ask(
                pod,
                Request::ExecSync {
                    id: c.id.clone(),
                    cmd,
                    timeout_ms,
                },
            )
            .await?
        {
            Response::Exec(r) => Ok(r),
            other => Err(Error::Internal(format!(
                "pod monitor answered {other:?} to ExecSync"
            ))),
        }
    }

    async fn exec_stream(
        &self,
        pod: &PodRecord,
        c: &ContainerRecord,
        cmd: Vec<String>,
        tty: bool,
        stdin: bool,
    ) -> Result<super::StreamIo, Error> {
        let streams = ExecStreams::start(&self.pod_dir(&pod.id), &c.id, cmd, tty, stdin)
            .await
            .map_err(streams_error)?;
        let (mut io, streams) = stream_io(streams);
        io.exit = Some(Box::pin(async move {
            streams.wait().await.map_err(monitor_error)
        }));
        Ok(io)
    }

    async fn attach(
        &self,
        pod: &PodRecord,
        c: &ContainerRecord,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> Result<super::StreamIo, Error> {
        let streams = ExecStreams::attach(&self.pod_dir(&pod.id), &c.id, stdin, stdout, stderr)
            .await
            .map_err(streams_error)?;
        Ok(stream_io(streams).0)
    }

    async fn reopen_log(&self, pod: &PodRecord, c: &ContainerRecord) -> Result<(), Error> {
        self.ask(pod, Request::ReopenLog { id: c.id.clone() })
            .await
            .map(|_| ())
    }

    async fn update_resources(
        &self,
        c: &ContainerRecord,
        r: &crius_proto::cri::LinuxContainerResources,
    ) -> Result<(), Error> {
        use sandbox_container::cgroup_update::{self, Limits, UpdateError};
        let config = fs::read(self.bundle(&c.id).join("config.json"))
            .map_err(internal("read config.json"))?;
        let spec: serde_json::Value = serde_json::from_slice(&config)
            .map_err(|e| Error::Internal(format!("config.json: {e}")))?;
        let cgroup = spec["linux"]["cgroupsPath"]
            .as_str()
            .and_then(sandbox_container::stats::cgroups_path_dir)
            .ok_or_else(|| {
                Error::FailedPrecondition(format!("container {} has no cgroup", c.id))
            })?;
        let limits = Limits {
            cpu_shares: r.cpu_shares.max(0) as u64,
            cpu_quota: r.cpu_quota,
            cpu_period: r.cpu_period.max(0) as u64,
            memory: r.memory_limit_in_bytes,
            cpuset_cpus: r.cpuset_cpus.clone(),
            cpuset_mems: r.cpuset_mems.clone(),
            hugepages: r
                .hugepage_limits
                .iter()
                .map(|h| (h.page_size.clone(), h.limit))
                .collect(),
            unified: r
                .unified
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        tokio::task::spawn_blocking(move || {
            cgroup_update::apply(&sandbox_container::stats::Cgroups::host(), &cgroup, &limits)
        })
        .await
        .map_err(|e| Error::Internal(format!("update task: {e}")))?
        .map_err(|e| match e {
            UpdateError::Invalid(m) => Error::InvalidArgument(m),
            UpdateError::NoCgroup(m) => {
                Error::FailedPrecondition(format!("cgroup {m} does not exist"))
            }
            e => Error::Internal(crate::error::chain(&e)),
        })
    }

    fn network_status(&self) -> Result<(), String> {
        self.cni.status().map_err(|e| crate::error::chain(&e))
    }

    async fn container_stats(
        &self,
        c: &ContainerRecord,
        processes: bool,
    ) -> Result<super::ContainerUsage, Error> {
        let bundle = self.bundle(&c.id);
        let upper = self.layer_dir(&c.id).join("upper");
        let layers = self.root.join("containers");
        tokio::task::spawn_blocking(move || {
            super::usage::read_container(&bundle, &upper, &layers, processes)
        })
        .await
        .map_err(|e| Error::Internal(format!("stats task: {e}")))
    }

    async fn pod_stats(&self, pod: &PodRecord, own_cgroup: bool) -> Result<super::PodUsage, Error> {
        let parent = pod.cgroup_parent().filter(|_| own_cgroup);
        let netns = pod.netns.clone();
        tokio::task::spawn_blocking(move || {
            super::usage::read_pod(parent.as_deref(), netns.as_deref())
        })
        .await
        .map_err(|e| Error::Internal(format!("stats task: {e}")))
    }
}

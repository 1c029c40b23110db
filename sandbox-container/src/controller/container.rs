//! Containers: CreateContainer mounts the rootfs overlay and image volumes,
//! writes the bundle's config.json from the spec builder and has the pod's
//! monitor create the container; Start, Signal and Remove go to the monitor
//! too, or, for a container whose monitor is gone, to its cgroup.

use std::fs;
use std::path::{Path, PathBuf};

use crius_proto::cri::{LinuxContainerUser, Mount};
use crius_proto::monitor::{Request, Response};
use image_store::ImageStore;
use sandbox_api::{Container, ContainerImage, Journal, Pod, Result, SandboxError};

use super::{ContainerState, NamespaceSandbox, namespaces, pod_files, rootfs, userns};
use crate::spec;
use crate::stats::bundle_cgroups_path as cgroups_path;

impl NamespaceSandbox {
    /// What the spec builder needs of this container.
    fn spec_input<'a>(
        &'a self,
        pod: &'a Pod,
        c: &'a Container,
        image: &'a ContainerImage,
        pod_dir: &Path,
        rootfs: &'a Path,
    ) -> spec::SpecInput<'a> {
        let (host_net, host_ipc, pod_pid) = namespaces(pod);
        let ns = pod_dir.join("ns");
        let pid_init = fs::read_to_string(ns.join("pid-init")).ok();
        let parent = super::pod_cgroup::parent(pod);
        spec::SpecInput {
            sandbox_id: &pod.id,
            pod: &pod.config,
            container: &c.config,
            image_name: &c.image_name,
            image: &image.config,
            rootfs,
            root_path: None,
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
                user: userns(pod).ok().flatten().map(|_| ns.join("user")),
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

    pub(super) async fn create(
        &self,
        pod: &Pod,
        c: &mut Container,
        image: &ContainerImage,
        journal: &dyn Journal,
    ) -> Result<()> {
        let bundle = self.bundle(&c.id);
        let rootfs_dir = bundle.join("rootfs");
        let layer = self.layer_dir(&c.id);
        let mut state = ContainerState {
            bundle: bundle.clone(),
            ..ContainerState::default()
        };
        let userns = userns(pod)?;
        // Only root reaches the bundle (the rootfs is not nosuid on the
        // host until the container is created), or in a pod with its own
        // user namespace also the pod's root, as which the container is
        // set up and reaches its rootfs by path.
        pod_files::make_dir(&bundle, 0o700).map_err(SandboxError::at("create bundle"))?;
        if let Some(maps) = &userns {
            nix::unistd::chown(
                &bundle,
                Some(nix::unistd::Uid::from_raw(maps.uid.host)),
                Some(nix::unistd::Gid::from_raw(maps.gid.host)),
            )
            .map_err(SandboxError::at("own bundle"))?;
        }
        pod_files::make_dir(&rootfs_dir, 0o700).map_err(SandboxError::at("create bundle"))?;
        pod_files::make_dir(&layer.join("upper"), 0o755)
            .map_err(SandboxError::at("create upper dir"))?;
        pod_files::make_dir(&layer.join("work"), 0o700)
            .map_err(SandboxError::at("create work dir"))?;
        // Recorded before the mount: a crash after it still unmounts.
        state.rootfs_mounted = true;
        c.sandbox.set(&state);
        journal.save_container(c).await?;
        let layers = &image.layers;
        match &userns {
            None => rootfs::mount_overlay(
                layers,
                &layer.join("upper"),
                &layer.join("work"),
                &rootfs_dir,
            ),
            Some(maps) => rootfs::mount_overlay_idmapped(
                layers,
                &layer.join("upper"),
                &layer.join("work"),
                &rootfs_dir,
                &rootfs::IdmapOptions {
                    userns: &self.pod_dir(&pod.id).join("ns").join("user"),
                    scratch: &layer.join("idmap"),
                    owner: (maps.uid.host, maps.gid.host),
                },
            ),
        }
        .map_err(SandboxError::at("mount rootfs"))?;
        if !c.log_path.is_empty()
            && let Some(parent) = Path::new(&c.log_path).parent()
        {
            fs::create_dir_all(parent).map_err(SandboxError::at("create log dir"))?;
        }
        let pod_dir = self.pod_dir(&pod.id);
        let mounts = mount_image_volumes(
            &self.images,
            self.image_volumes,
            c,
            &bundle.join("image-mounts"),
        )?;
        // As containerd: missing host paths created, symlinks resolved,
        // propagation checked against the host mount; the record keeps
        // the paths as asked for.
        let config = crius_proto::cri::ContainerConfig {
            mounts: spec::prepare_host_paths(&mounts)?,
            ..c.config.clone()
        };
        let mut input = self.spec_input(pod, c, image, &pod_dir, &rootfs_dir);
        input.container = &config;
        let spec = spec::build(&input)?;
        if let Some(p) = spec.process() {
            let u = p.user();
            c.user = Some(LinuxContainerUser {
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
        let json = serde_json::to_vec_pretty(&spec).map_err(SandboxError::at("encode spec"))?;
        // 0600: the spec carries the container's env.
        sandbox_api::fs::write_atomic(&bundle.join("config.json"), &json, 0o600)
            .map_err(SandboxError::at("write config.json"))?;
        self.watches.add_container(&pod.id, &c.id);
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
            state.pid = pid;
            c.sandbox.set(&state);
        }
        rootfs::seal_rootfs(&rootfs_dir).map_err(SandboxError::at("make the rootfs nosuid,nodev"))
    }

    pub(super) async fn signal(
        &self,
        pod: &Pod,
        c: &Container,
        signal: i32,
        all: bool,
    ) -> Result<()> {
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
            Err(e) if !self.monitor_alive(&pod.id) => {
                // The monitor is gone: signal the container through its
                // cgroup (its exit was, or will be, recorded by the watch).
                tracing::warn!(container = %c.id, error = %sandbox_api::error::chain(&e), "pod monitor gone: signalling through the cgroup");
                signal_orphan(&self.bundle(&c.id), signal)
            }
            r => r,
        }
    }

    pub(super) async fn remove(&self, pod: Option<&Pod>, c: &Container) -> Result<()> {
        if let Some(pod) = pod
            && self
                .pod_dir(&pod.id)
                .join(crate::monitor::SOCKET_FILE)
                .exists()
            && let Err(e) = self
                .ask(pod, Request::DeleteContainer { id: c.id.clone() })
                .await
        {
            tracing::warn!(container = %c.id, error = %sandbox_api::error::chain(&e), "monitor delete");
        }
        let bundle = self.bundle(&c.id);
        if pod.is_none_or(|p| !self.monitor_alive(&p.id)) {
            // Nobody deleted it through libcontainer: its cgroup is ours to
            // remove (its processes were killed when its exit was recorded).
            if let Some(path) = cgroups_path(&bundle)
                && let Err(e) = crate::monitor::remove_orphaned_cgroup(&path)
            {
                tracing::warn!(container = %c.id, error = %e, "removing the cgroup of a container of a dead monitor");
            }
        }
        if let Some(pod) = pod {
            self.watches.remove_container(&pod.id, &c.id);
        }
        rootfs::remove_tree(&bundle).map_err(SandboxError::at("remove bundle"))?;
        rootfs::remove_tree(&self.layer_dir(&c.id))
            .map_err(SandboxError::at("remove container layer"))?;
        // libcontainer's state, which a gone monitor could not delete.
        rootfs::remove_tree(&self.state.join("runc").join(&c.id))
            .map_err(SandboxError::at("remove container state"))
    }
}

/// Signals every process of the container of `bundle` through its cgroup
/// (the spec's), for a container whose monitor is gone.
pub(super) fn signal_orphan(bundle: &Path, signal: i32) -> Result<()> {
    let path = cgroups_path(bundle)
        .ok_or_else(|| SandboxError::bare(format!("{} has no cgroup", bundle.display())))?;
    crate::monitor::signal_orphaned_container(&path, signal)
        .map_err(SandboxError::at("signal through the cgroup"))
}

/// Image volumes: each image named by a mount (pulled already, as kubelet
/// does before CreateContainer) is mounted read-only, nosuid and nodev once
/// at `<dir>/<n>`, where [`rootfs::unmount_all_under`] finds it at removal
/// (and at the rollback of a failed create). Returns the container's mounts
/// with each image mount rewritten as a read-only bind of the image (or of
/// its sub path) and sets the container's image refs. For both sandboxes
/// (`enabled`: the config's `image_volumes`).
pub fn mount_image_volumes(
    images: &ImageStore,
    enabled: bool,
    c: &mut Container,
    dir: &Path,
) -> Result<Vec<Mount>> {
    let mut mounted: Vec<(String, PathBuf)> = Vec::new();
    let mut out = Vec::with_capacity(c.config.mounts.len());
    let mut refs = Vec::with_capacity(c.config.mounts.len());
    for (i, m) in c.config.mounts.iter().enumerate() {
        if m.image.is_none() {
            out.push(m.clone());
            refs.push(None);
            continue;
        }
        if !enabled {
            return Err(SandboxError::InvalidArgument(
                "image volumes are turned off in crius's config (image_volumes = false)".into(),
            ));
        }
        let sub_path = match &c.mount_sub_paths {
            Some(paths) => paths.get(i).cloned().unwrap_or_default(),
            None => {
                return Err(SandboxError::InvalidArgument(
                    "the request's image volume sub paths could not be read (a compressed \
                     message): send it uncompressed"
                        .into(),
                ));
            }
        };
        let reference = spec::check_image_mount(m)?;
        let image = images
            .get(reference)
            .map_err(SandboxError::at("look up an image volume's image"))?
            .ok_or_else(|| {
                SandboxError::NotFound(format!("image {reference:?} not found: pull it first"))
            })?;
        let id = image.id.to_string();
        refs.push(Some(id.clone()));
        let root = match mounted.iter().find(|(mounted_id, _)| *mounted_id == id) {
            Some((_, root)) => root.clone(),
            None => {
                let root = dir.join(mounted.len().to_string());
                pod_files::make_dir(&root, 0o700)
                    .map_err(SandboxError::at("create image mount dir"))?;
                rootfs::mount_image(&images.layer_dirs(&image), &root)
                    .map_err(|e| SandboxError::internal(format!("mount image {id}"), e))?;
                mounted.push((id.clone(), root.clone()));
                root
            }
        };
        let source = spec::resolve_sub_path(&root, &sub_path)?;
        out.push(spec::prepared_image_mount(m, &source));
    }
    c.mount_image_refs = refs;
    Ok(out)
}

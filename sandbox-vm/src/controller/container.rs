//! Containers of a VM pod. CreateContainer binds the image's layers
//! (read-only, nosuid, nodev) and the CRI mounts' host paths into the
//! pod's share, in the pod's mount namespace ([`crate::mount_ns`]), builds the container's spec with the namespace sandbox's
//! own code for the guest (its rootfs, namespaces, cgroup and files at
//! their guest paths), writes it to the share and the layer list to the
//! host bundle, and has the pod's vm-monitor create it in the guest. Start,
//! signals and deletion go to the vm-monitor too.

use std::os::fd::{AsFd as _, OwnedFd};
use std::path::{Path, PathBuf};

use crius_proto::agent::GUEST_SHARE;
use crius_proto::cri::{LinuxContainerUser, Mount, MountPropagation};
use crius_proto::monitor::{Request, Response};
use nix::mount::MsFlags;
use sandbox_api::{Container, ContainerImage, Journal, Pod, Result, SandboxError};
use sandbox_container::controller::{pod_files, rootfs};
use sandbox_container::spec;

use super::VmSandbox;
use crate::vm_monitor::share_dir;

/// The guest's paths the pod's monitor uses (the agent's `pod.rs`).
const GUEST_POD: &str = "/run/crius/pod";
const GUEST_BUNDLES: &str = "/run/crius/bundles";
/// The cgroup the guest's containers are under (the agent's usage.rs).
const GUEST_CGROUP: &str = "/crius";

/// A mount cloned on the host, to be attached in the pod's mount
/// namespace: a bind that sees the host's mounts as they are now (the
/// pod's namespace has them as they were when it started, on a host whose
/// root mount is private).
struct HostTree {
    tree: OwnedFd,
    is_dir: bool,
}

impl HostTree {
    /// `src` and the mounts under it.
    fn clone(src: &Path) -> std::io::Result<HostTree> {
        Ok(HostTree {
            is_dir: src.is_dir(),
            tree: sandbox_container::mount_tree::clone(src, true)?,
        })
    }

    /// Attaches the tree at `dst` (made as the source is, a directory or a
    /// file), read-only when asked (its top mount), and always nosuid and
    /// nodev.
    fn attach(&self, dst: &Path, read_only: bool) -> std::io::Result<()> {
        if self.is_dir {
            std::fs::create_dir_all(dst)?;
        } else {
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dst)?;
        }
        sandbox_container::mount_tree::attach(self.tree.as_fd(), dst)?;
        let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | rootfs::HOST_SAFE;
        if read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        nix::mount::mount(None::<&str>, dst, None::<&str>, flags, None::<&str>)?;
        Ok(())
    }
}

/// Whether `path` is a mount point (its device differs from its parent's,
/// or mountinfo lists it).
fn is_mounted(path: &Path) -> bool {
    sandbox_container::mountinfo::read()
        .map(|t| t.iter().any(|m| m.mount_point == path))
        .unwrap_or(false)
}

impl VmSandbox {
    pub(super) async fn create(
        &self,
        pod: &Pod,
        c: &mut Container,
        image: &ContainerImage,
        journal: &dyn Journal,
    ) -> Result<()> {
        let dir = self.pod_dir(&pod.id);
        let share = share_dir(&dir);
        let bundle = self.bundle(&c.id);
        pod_files::make_dir(&bundle, 0o700).map_err(SandboxError::at("create the host bundle"))?;
        journal.save_container(c).await?;
        if !c.log_path.is_empty()
            && let Some(parent) = Path::new(&c.log_path).parent()
        {
            std::fs::create_dir_all(parent).map_err(SandboxError::at("create log dir"))?;
        }
        // The layers and volumes: cloned here, mounted in the pod's mount
        // namespace.
        let ns = crate::mount_ns::PodMountNs::of(&dir).await?;
        let job = ShareJob::prepare(self, c, &share, &image.layers, &dir)?;
        let (shared, container) = ns
            .run(move || job.run())
            .await
            .map_err(SandboxError::at("join the pod's mount namespace"))?;
        c.mount_image_refs = container.mount_image_refs;
        let Shared {
            layers,
            mounts,
            submounts,
        } = shared?;
        let config = crius_proto::cri::ContainerConfig {
            mounts,
            ..c.config.clone()
        };
        // The image's /etc/passwd and /etc/group, for the spec's user: a
        // read-only overlay of its layers on the host for the while.
        let view = bundle.join("image");
        pod_files::make_dir(&view, 0o700).map_err(SandboxError::at("create the image view"))?;
        rootfs::mount_image(&image.layers, &view).map_err(SandboxError::at("mount the image"))?;
        let guest_rootfs = Path::new(GUEST_BUNDLES).join(&c.id).join("rootfs");
        let g = Path::new(GUEST_SHARE);
        let pod_pid = pod.namespace_options().pid == crius_proto::cri::NamespaceMode::Pod as i32;
        let built = spec::build(&spec::SpecInput {
            sandbox_id: &pod.id,
            pod: &pod.config,
            container: &config,
            image_name: &c.image_name,
            image: &image.config,
            rootfs: &view,
            root_path: Some(&guest_rootfs),
            pod_namespaces: spec::PodNamespaces {
                // The guest's own network and UTS namespaces are the pod's.
                net: None,
                ipc: Some(Path::new(GUEST_POD).join("ns/ipc")),
                uts: None,
                pid: pod_pid.then(|| Path::new(GUEST_POD).join("ns/pid")),
                pid_target: None,
                user: None,
            },
            cgroups_path: format!("{GUEST_CGROUP}/{}", c.id),
            hostname: std::fs::read_to_string(share.join("pod/hostname"))
                .map(|h| h.trim().to_string())
                .unwrap_or_default(),
            etc_files: spec::EtcFiles {
                hosts: Some(g.join("pod/hosts")),
                resolv_conf: Some(g.join("pod/resolv.conf")),
                hostname: Some(g.join("pod/hostname")),
                shm: Some(Path::new(GUEST_POD).join("shm")),
            },
            host: spec::HostLimits::vm_guest(),
            seccomp_profile_root: &self.cfg.state.join("seccomp"),
            seccomp_default_when_unset: false,
        });
        let _ = rootfs::unmount(&view);
        let _ = std::fs::remove_dir(&view);
        let built = built?;
        if let Some(p) = built.process() {
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
        let json = serde_json::to_vec_pretty(&built).map_err(SandboxError::at("encode spec"))?;
        let spec_dir = share.join("containers").join(&c.id);
        pod_files::make_dir(&spec_dir, 0o700).map_err(SandboxError::at("create the spec dir"))?;
        sandbox_api::fs::write_atomic(&spec_dir.join("config.json"), &json, 0o600)
            .map_err(SandboxError::at("write config.json"))?;
        let guest = crate::vm_monitor::GuestCreate { layers, submounts };
        let guest = serde_json::to_vec(&guest).map_err(SandboxError::at("encode create.json"))?;
        sandbox_api::fs::write_atomic(&bundle.join(crate::vm_monitor::CREATE_FILE), &guest, 0o600)
            .map_err(SandboxError::at("write create.json"))?;
        self.watches.add_container(&pod.id, &c.id);
        self.ask(
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
        .await
        .and_then(|r| match r {
            Response::Created { .. } => Ok(()),
            other => Err(SandboxError::bare(format!(
                "the VM pod's monitor answered {other:?} to CreateContainer"
            ))),
        })
    }

    pub(super) async fn remove(&self, pod: Option<&Pod>, c: &Container) -> Result<()> {
        if let Some(pod) = pod {
            let dir = self.pod_dir(&pod.id);
            if dir.join(sandbox_container::monitor::SOCKET_FILE).exists()
                && let Err(e) = self
                    .ask(pod, Request::DeleteContainer { id: c.id.clone() })
                    .await
            {
                tracing::warn!(container = %c.id, error = %sandbox_api::error::chain(&e), "vm-monitor delete");
            }
            self.watches.remove_container(&pod.id, &c.id);
            let share = share_dir(&dir);
            let volumes = share.join("volumes").join(&c.id);
            // Unmounted in the pod's mount namespace; a vm-monitor gone
            // took its mounts with it.
            if let Ok(ns) = crate::mount_ns::PodMountNs::of(&dir).await {
                let v = volumes.clone();
                ns.run(move || rootfs::unmount_all_under(&v))
                    .await
                    .and_then(|r| r)
                    .map_err(SandboxError::at("unmount the container's volumes"))?;
            }
            rootfs::remove_tree(&volumes)
                .map_err(SandboxError::at("unshare the container's volumes"))?;
            rootfs::remove_tree(&share.join("containers").join(&c.id))
                .map_err(SandboxError::at("remove the container's spec"))?;
        }
        rootfs::remove_tree(&self.bundle(&c.id)).map_err(SandboxError::at("remove the host bundle"))
    }
}

/// What CreateContainer mounts in the pod's mount namespace.
struct ShareJob {
    images: std::sync::Arc<image_store::ImageStore>,
    image_volumes: bool,
    container: Container,
    share: PathBuf,
    /// The image's layers: their names, and their clones.
    layers: Vec<(String, HostTree)>,
    layers_dir: PathBuf,
    /// The container's host-path mounts, prepared, and their clones, by
    /// the index of the CRI mount (image volumes have none).
    host_paths: Vec<Option<(Mount, HostTree)>>,
    /// The guest paths of the host's mount points under those host paths.
    submounts: Vec<String>,
}

/// What the guest is told of it.
struct Shared {
    /// The layers' names in the layer share, bottom first.
    layers: Vec<String>,
    /// The container's CRI mounts at their guest paths.
    mounts: Vec<Mount>,
    /// The guest paths of the host's mount points under bound host paths.
    submounts: Vec<String>,
}

/// Where `host` (in the share) is in the guest.
fn guest_path(share: &Path, host: &Path) -> Result<String> {
    let rel = host
        .strip_prefix(share)
        .map_err(|_| SandboxError::bare(format!("{} is not in the pod's share", host.display())))?;
    Ok(Path::new(GUEST_SHARE).join(rel).display().to_string())
}

impl ShareJob {
    /// On the host: the layers' and host paths' clones (host paths made
    /// if missing, as for a namespace sandbox pod) and the submounts.
    fn prepare(
        vm: &VmSandbox,
        c: &Container,
        share: &Path,
        layers: &[PathBuf],
        pod_dir: &Path,
    ) -> Result<ShareJob> {
        if let Some(m) = c.config.mounts.iter().find(|m| {
            matches!(
                MountPropagation::try_from(m.propagation),
                Ok(MountPropagation::PropagationBidirectional
                    | MountPropagation::PropagationHostToContainer)
            )
        }) {
            return Err(SandboxError::InvalidArgument(format!(
                "mount {:?}: a vm pod's mounts cannot propagate to or from the host",
                m.container_path
            )));
        }
        let mut cloned = Vec::with_capacity(layers.len());
        for l in layers {
            let name = l
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| {
                    SandboxError::bare(format!("a layer without a name: {}", l.display()))
                })?
                .to_string();
            let tree = HostTree::clone(l).map_err(SandboxError::at("clone an image layer"))?;
            cloned.push((name, tree));
        }
        let table = sandbox_container::mountinfo::read()
            .map_err(SandboxError::at("read the host's mounts"))?;
        let volumes = share.join("volumes").join(&c.id);
        let mut host_paths = Vec::with_capacity(c.config.mounts.len());
        let mut submounts = Vec::new();
        for (i, m) in c.config.mounts.iter().enumerate() {
            if m.image.is_some() {
                host_paths.push(None);
                continue;
            }
            let m = spec::prepare_host_paths(std::slice::from_ref(m))?
                .pop()
                .ok_or_else(|| SandboxError::bare("a host path prepared into nothing"))?;
            let src = Path::new(&m.host_path);
            let tree = HostTree::clone(src)
                .map_err(|e| SandboxError::internal(format!("clone {}", m.host_path), e))?;
            let dst = volumes.join(i.to_string());
            for sub in table.iter().filter(|t| t.mount_point != src) {
                if let Ok(rel) = sub.mount_point.strip_prefix(src) {
                    submounts.push(guest_path(share, &dst.join(rel))?);
                }
            }
            host_paths.push(Some((m, tree)));
        }
        Ok(ShareJob {
            images: vm.images.clone(),
            image_volumes: vm.cfg.image_volumes,
            container: c.clone(),
            share: share.to_path_buf(),
            layers: cloned,
            layers_dir: crate::vm_monitor::layers_dir(pod_dir),
            host_paths,
            submounts,
        })
    }

    /// In the pod's namespace: mounts, and gives the container back with
    /// its image volumes' references set (whatever the outcome: a removal
    /// releases them).
    fn run(mut self) -> (Result<Shared>, Container) {
        let shared = self.mount();
        (shared, self.container)
    }

    fn mount(&mut self) -> Result<Shared> {
        // The image's layers, shared by the pod's containers.
        let mut layers = Vec::with_capacity(self.layers.len());
        for (name, tree) in &self.layers {
            let dst = self.layers_dir.join(name);
            if !is_mounted(&dst) {
                tree.attach(&dst, true)
                    .map_err(SandboxError::at("share an image layer"))?;
            }
            layers.push(name.clone());
        }
        // Each CRI mount: an image volume mounted in the share, or a host
        // path attached there (`volumes/<id>/<n>` and `images/<n>`), by
        // their guest paths.
        let share = self.share.as_path();
        let volumes = share.join("volumes").join(&self.container.id);
        let mounts = sandbox_container::controller::mount_image_volumes(
            &self.images,
            self.image_volumes,
            &mut self.container,
            &volumes.join("images"),
        )?;
        let mut out = Vec::with_capacity(mounts.len());
        for (i, m) in mounts.into_iter().enumerate() {
            match self.host_paths.get(i) {
                Some(Some((prepared, tree))) => {
                    let dst = volumes.join(i.to_string());
                    tree.attach(&dst, prepared.readonly).map_err(|e| {
                        SandboxError::internal(format!("share {}", prepared.host_path), e)
                    })?;
                    out.push(Mount {
                        host_path: guest_path(share, &dst)?,
                        ..prepared.clone()
                    });
                }
                _ => out.push(Mount {
                    host_path: guest_path(share, Path::new(&m.host_path))?,
                    ..m
                }),
            }
        }
        Ok(Shared {
            layers,
            mounts: out,
            submounts: std::mem::take(&mut self.submounts),
        })
    }
}

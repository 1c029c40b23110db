//! Containers of a VM pod. CreateContainer binds the image's layers
//! (read-only, nosuid, nodev) and the CRI mounts' host paths into the
//! pod's share, builds the container's spec with the namespace sandbox's
//! own code for the guest (its rootfs, namespaces, cgroup and files at
//! their guest paths), writes it to the share and the layer list to the
//! host bundle, and has the pod's vm-monitor create it in the guest. Start,
//! signals and deletion go to the vm-monitor too.

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

/// Bind-mounts `src` at `dst` (made as `src` is, a directory or a file),
/// read-only when asked, and always nosuid and nodev on the host.
fn bind(src: &Path, dst: &Path, read_only: bool) -> std::io::Result<()> {
    if src.is_dir() {
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
    nix::mount::mount(
        Some(src),
        dst,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | rootfs::HOST_SAFE;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    nix::mount::mount(None::<&str>, dst, None::<&str>, flags, None::<&str>)?;
    Ok(())
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
        // The image's layers, shared by the pod's containers.
        let mut layers = Vec::with_capacity(image.layers.len());
        for l in &image.layers {
            let name = l
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| {
                    SandboxError::bare(format!("a layer without a name: {}", l.display()))
                })?
                .to_string();
            let dst = crate::vm_monitor::layers_dir(&dir).join(&name);
            if !is_mounted(&dst) {
                bind(l, &dst, true).map_err(SandboxError::at("share an image layer"))?;
            }
            layers.push(name);
        }
        if !c.log_path.is_empty()
            && let Some(parent) = Path::new(&c.log_path).parent()
        {
            std::fs::create_dir_all(parent).map_err(SandboxError::at("create log dir"))?;
        }
        let mounts = self.share_mounts(c, &share)?;
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
        let layers_json = serde_json::to_vec(&layers).map_err(SandboxError::at("encode layers"))?;
        sandbox_api::fs::write_atomic(
            &bundle.join(crate::vm_monitor::LAYERS_FILE),
            &layers_json,
            0o600,
        )
        .map_err(SandboxError::at("write the layer list"))?;
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

    /// The container's CRI mounts with each host path bound into the
    /// share (`volumes/<id>/<n>`) and named by its guest path.
    fn share_mounts(&self, c: &Container, share: &Path) -> Result<Vec<Mount>> {
        if c.config.mounts.iter().any(|m| m.image.is_some()) {
            return Err(SandboxError::InvalidArgument(
                "image volumes are not supported in vm pods yet".into(),
            ));
        }
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
        let prepared = spec::prepare_host_paths(&c.config.mounts)?;
        let mut out = Vec::with_capacity(prepared.len());
        for (i, m) in prepared.iter().enumerate() {
            let rel = Path::new("volumes").join(&c.id).join(i.to_string());
            bind(Path::new(&m.host_path), &share.join(&rel), m.readonly)
                .map_err(|e| SandboxError::internal(format!("share {}", m.host_path), e))?;
            out.push(Mount {
                host_path: Path::new(GUEST_SHARE).join(&rel).display().to_string(),
                ..m.clone()
            });
        }
        Ok(out)
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
            rootfs::remove_tree(&share.join("volumes").join(&c.id))
                .map_err(SandboxError::at("unshare the container's volumes"))?;
            rootfs::remove_tree(&share.join("containers").join(&c.id))
                .map_err(SandboxError::at("remove the container's spec"))?;
        }
        rootfs::remove_tree(&self.bundle(&c.id)).map_err(SandboxError::at("remove the host bundle"))
    }
}

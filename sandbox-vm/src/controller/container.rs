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
        let (mounts, submounts) = self.share_mounts(c, &share)?;
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

    /// The container's CRI mounts with each host path bound into the
    /// share (`volumes/<id>/<n>`) and each image volume mounted there
    /// (`volumes/<id>/images/<n>`), named by their guest paths; and the
    /// guest paths of the host mount points under the bound host paths.
    fn share_mounts(&self, c: &mut Container, share: &Path) -> Result<(Vec<Mount>, Vec<String>)> {
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
        let volumes = share.join("volumes").join(&c.id);
        let images = volumes.join("images");
        let mounts = sandbox_container::controller::mount_image_volumes(
            &self.images,
            self.cfg.image_volumes,
            c,
            &images,
        )?;
        let guest = |host: &Path| -> Result<String> {
            let rel = host.strip_prefix(share).map_err(|_| {
                SandboxError::bare(format!("{} is not in the pod's share", host.display()))
            })?;
            Ok(Path::new(GUEST_SHARE).join(rel).display().to_string())
        };
        let table = sandbox_container::mountinfo::read()
            .map_err(SandboxError::at("read the host's mounts"))?;
        let mut out = Vec::with_capacity(mounts.len());
        let mut submounts = Vec::new();
        for (i, m) in mounts.iter().enumerate() {
            if Path::new(&m.host_path).starts_with(&images) {
                // An image volume: mounted in the share already.
                out.push(Mount {
                    host_path: guest(Path::new(&m.host_path))?,
                    ..m.clone()
                });
                continue;
            }
            let prepared = spec::prepare_host_paths(std::slice::from_ref(m))?;
            let Some(m) = prepared.into_iter().next() else {
                continue;
            };
            let dst = volumes.join(i.to_string());
            let src = Path::new(&m.host_path);
            bind(src, &dst, m.readonly)
                .map_err(|e| SandboxError::internal(format!("share {}", m.host_path), e))?;
            for sub in table.iter().filter(|t| t.mount_point != src) {
                if let Ok(rel) = sub.mount_point.strip_prefix(src) {
                    submounts.push(guest(&dst.join(rel))?);
                }
            }
            out.push(Mount {
                host_path: guest(&dst)?,
                ..m
            });
        }
        Ok((out, submounts))
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

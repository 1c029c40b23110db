//! The OCI runtime spec of a container, built from the CRI request, the
//! pod config and the image config, as containerd's CRI plugin does
//! (kubelet and critest depend on the details).
//!
//! [`build`] is a pure function of its [`SpecInput`], apart from a few
//! bounded reads: `/etc/passwd` and `/etc/group` of the container's rootfs
//! (through `openat2(RESOLVE_IN_ROOT)`, never leaving the rootfs), a
//! Localhost seccomp profile, and `stat` of requested host devices. It
//! mounts nothing and starts nothing; host facts (cgroup mode, our own
//! `oom_score_adj` and capabilities) come in as [`HostLimits`], detected
//! once with [`HostLimits::detect`].
//!
//! A privileged container (which needs a privileged pod) gets every
//! capability the runtime holds, all devices allowed in the device cgroup,
//! writable `/sys` and `/sys/fs/cgroup`, no masked or read-only paths, no
//! cgroup namespace and no seccomp filter at all, even a named Localhost
//! one (containerd's behaviour, which critest checks).
//!
//! What is decided where:
//!
//! | part | module |
//! | --- | --- |
//! | args, env, cwd | `process` |
//! | uid, gid, supplementary groups | `user` (+ `rootfs` for the reads) |
//! | capabilities (inheritable always empty) | `caps` |
//! | mounts, masked / read-only paths | `mounts` (host side: `host_paths`) |
//! | devices and the device cgroup | `devices` |
//! | seccomp (selection, Localhost profiles) | `seccomp`, RuntimeDefault in `seccomp_default` |
//! | sysctls | `sysctl` ([`validate_sysctls`] is public for the pod side) |
//! | cgroup resources, `oom_score_adj` | `resources` |
//!
//! The host side of CRI mounts is [`prepare_host_paths`], called before
//! [`build`]: it creates missing host paths, resolves symlinks in them and
//! checks that bidirectional (host-to-container) mounts sit on shared
//! (shared or slave) host mounts.
//!
//! CRI image volumes (mounts with `image` set) are mounted by the caller,
//! which rewrites them as read-only binds ([`prepared_image_mount`], with
//! [`check_image_mount`] and [`resolve_sub_path`]); [`build`] refuses one
//! that was not prepared.
//!
//! User namespaces: [`check_userns`] validates the CRI options (mode POD
//! with one mapping from ID 0); the caller makes the namespace and idmaps
//! the image layers. Not handled here: the image config's `Volumes`
//! (ignored), id-mapped CRI mounts (refused), SELinux (ignored), AppArmor (a Localhost
//! profile is refused; the host has none), CDI devices (ignored), and
//! enumerating host devices for privileged containers.

mod caps;
mod devices;
mod error;
mod host;
mod host_paths;
mod image_volumes;
mod mounts;
mod process;
mod resources;
mod rootfs;
mod seccomp;
mod seccomp_default;
mod sysctl;
mod user;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crius_proto::cri::{
    ContainerConfig, LinuxContainerSecurityContext, NamespaceMode, PodSandboxConfig, UserNamespace,
    security_profile::ProfileType,
};
use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{Linux, LinuxNamespace, LinuxNamespaceType, Process, Root, Spec, User};

pub use error::SpecError;
pub use host::{CgroupMode, HostLimits, recursive_read_only_supported};
pub use host_paths::prepare_host_paths;
pub use image_volumes::{check_image_mount, prepared_image_mount, resolve_sub_path};
pub use mounts::{DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS};
pub use process::DEFAULT_PATH;
pub use sysctl::validate_sysctls;

/// The OCI runtime spec version written into `ociVersion`.
pub const OCI_VERSION: &str = "1.2.0";

/// The annotations set on every container spec (containerd's names).
pub mod annotations {
    /// Always `container` here (`sandbox` for a pod's own process).
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    /// The container's CRI name.
    pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
    /// The pod's id.
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    /// The pod's name.
    pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
    /// The pod's namespace.
    pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
    /// The pod's uid.
    pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
    /// The image the container runs.
    pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
}

/// The pod's pinned namespaces, as paths to join. `None` means the host's
/// namespace (host network, host IPC, host UTS), except for `pid` where
/// `None` means the pod shares no PID namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNamespaces {
    /// The pod's network namespace; `None` for a host-network pod.
    pub net: Option<PathBuf>,
    /// The pod's IPC namespace; `None` for a host-IPC pod.
    pub ipc: Option<PathBuf>,
    /// The pod's UTS namespace; `None` for a pod in the host's.
    pub uts: Option<PathBuf>,
    /// The pod's shared PID namespace (its init process's), joined by
    /// containers whose PID mode is `POD`; `None` when the pod has none,
    /// and such containers then get their own.
    pub pid: Option<PathBuf>,
    /// The PID namespace of the target container, for PID mode `TARGET`.
    pub pid_target: Option<PathBuf>,
    /// The pod's own user namespace (user namespace mode `POD`), which owns
    /// its other namespaces; `None` for the host's.
    pub user: Option<PathBuf>,
}

/// Host paths of the pod's files, bind-mounted into each container.
/// `None` skips the file (the image's own stays visible; for `shm`, the
/// container gets a private tmpfs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcFiles {
    /// The pod's `/etc/hosts`.
    pub hosts: Option<PathBuf>,
    /// The pod's `/etc/resolv.conf`.
    pub resolv_conf: Option<PathBuf>,
    /// The pod's `/etc/hostname`.
    pub hostname: Option<PathBuf>,
    /// The pod's shm directory (a tmpfs), mounted at `/dev/shm`. Ignored for
    /// a host-IPC pod, which gets the host's `/dev/shm`.
    pub shm: Option<PathBuf>,
}

/// Everything a container's spec is made from.
#[derive(Debug, Clone)]
pub struct SpecInput<'a> {
    /// The pod's id (for annotations).
    pub sandbox_id: &'a str,
    /// The pod's CRI config.
    pub pod: &'a PodSandboxConfig,
    /// The container's CRI config.
    pub container: &'a ContainerConfig,
    /// The image's name as the user gave it (for annotations); empty means
    /// `container.image.image`.
    pub image_name: &'a str,
    /// The image's config (untrusted).
    pub image: &'a ImageConfiguration,
    /// The container's rootfs, already mounted; only `/etc/passwd` and
    /// `/etc/group` are read from it.
    pub rootfs: &'a Path,
    /// The rootfs path the spec names, when the runtime sees the rootfs
    /// elsewhere than `rootfs` (a VM pod's, in the guest).
    pub root_path: Option<&'a Path>,
    /// The pod's namespaces.
    pub pod_namespaces: PodNamespaces,
    /// `linux.cgroupsPath`, computed by the caller; empty leaves it unset.
    pub cgroups_path: String,
    /// The pod's hostname (also `HOSTNAME` in the environment).
    pub hostname: String,
    /// The pod's files to bind-mount.
    pub etc_files: EtcFiles,
    /// Facts about the host.
    pub host: HostLimits,
    /// Where relative Localhost seccomp profiles are found.
    pub seccomp_profile_root: &'a Path,
    /// Whether a container that asks for no seccomp profile gets
    /// RuntimeDefault (kubelet's `SeccompDefault` done runtime-side);
    /// `false` is containerd's default (unconfined).
    pub seccomp_default_when_unset: bool,
}

fn security_context(c: &ContainerConfig) -> Option<&LinuxContainerSecurityContext> {
    c.linux.as_ref().and_then(|l| l.security_context.as_ref())
}

fn namespace(typ: LinuxNamespaceType, path: Option<&Path>) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ);
    ns.set_path(path.map(Path::to_path_buf));
    ns
}

/// Checks user namespace options (kubelet's `hostUsers`): `NODE` is the
/// host's user namespace and takes no mappings; `POD` asks for one of the
/// pod's own, mapped by exactly one uid and one gid range, each mapping
/// container ID 0; `CONTAINER` and `TARGET` do not apply to user
/// namespaces.
pub fn check_userns(u: &UserNamespace) -> Result<(), SpecError> {
    match NamespaceMode::try_from(u.mode) {
        Ok(NamespaceMode::Node) if u.uids.is_empty() && u.gids.is_empty() => Ok(()),
        Ok(NamespaceMode::Node) => Err(SpecError::invalid(
            "the host's user namespace (mode NODE) takes no ID mappings",
        )),
        Ok(NamespaceMode::Pod) => {
            for (what, maps) in [("uid", &u.uids), ("gid", &u.gids)] {
                let [m] = maps.as_slice() else {
                    return Err(SpecError::invalid(format!(
                        "a pod user namespace needs exactly one {what} mapping, got {}",
                        maps.len()
                    )));
                };
                if m.container_id != 0 {
                    return Err(SpecError::invalid(format!(
                        "the {what} mapping must start at container ID 0 (root), not {}",
                        m.container_id
                    )));
                }
                if m.length == 0 || m.host_id.checked_add(m.length).is_none() {
                    return Err(SpecError::invalid(format!(
                        "the {what} mapping of {} IDs from host ID {} is out of range",
                        m.length, m.host_id
                    )));
                }
            }
            Ok(())
        }
        Ok(mode @ (NamespaceMode::Container | NamespaceMode::Target)) => {
            Err(SpecError::invalid(format!(
                "user namespace mode {} does not exist: use POD or NODE",
                mode.as_str_name()
            )))
        }
        Err(_) => Err(SpecError::invalid(format!(
            "unknown user namespace mode {}",
            u.mode
        ))),
    }
}

/// The namespaces of a container: the pod's user namespace when it has one,
/// PID by its mode (`POD`: the pod's,
/// `CONTAINER`: new, `NODE`: the host's, `TARGET`: the target's), network,
/// IPC and UTS from the pod (absent for the host's), a new mount
/// namespace, and a new cgroup namespace on cgroup v2 unless privileged.
fn namespaces(
    input: &SpecInput,
    sc: Option<&LinuxContainerSecurityContext>,
    privileged: bool,
) -> Result<Vec<LinuxNamespace>, SpecError> {
    let pns = &input.pod_namespaces;
    let opts = sc.and_then(|s| s.namespace_options.as_ref());
    let userns = opts.and_then(|o| o.userns_options.as_ref());
    let wants_pod_userns = userns.is_some_and(|u| u.mode == NamespaceMode::Pod as i32);
    let mut out = Vec::with_capacity(7);
    match (&pns.user, wants_pod_userns) {
        (Some(path), true) => out.push(namespace(LinuxNamespaceType::User, Some(path))),
        (None, false) => {}
        (Some(_), false) => {
            return Err(SpecError::invalid(
                "the pod has its own user namespace: its containers must use it (mode POD)",
            ));
        }
        (None, true) => {
            return Err(SpecError::invalid(
                "the container asks for the pod's user namespace, but the pod has none",
            ));
        }
    }
    if pns.user.is_some() && privileged {
        return Err(SpecError::invalid(
            "a privileged container cannot run in a user namespace",
        ));
    }
    let pid_mode = opts.map_or(NamespaceMode::Pod as i32, |o| o.pid);
    match NamespaceMode::try_from(pid_mode) {
        Ok(NamespaceMode::Pod) => {
            out.push(namespace(LinuxNamespaceType::Pid, pns.pid.as_deref()));
        }
        Ok(NamespaceMode::Container) => out.push(namespace(LinuxNamespaceType::Pid, None)),
        Ok(NamespaceMode::Node) => {}
        Ok(NamespaceMode::Target) => match &pns.pid_target {
            Some(p) => out.push(namespace(LinuxNamespaceType::Pid, Some(p))),
            None => {
                return Err(SpecError::invalid(
                    "the target container's PID namespace is unknown",
                ));
            }
        },
        Err(_) => return Err(SpecError::invalid("unknown PID namespace mode")),
    }
    for (typ, path) in [
        (LinuxNamespaceType::Network, &pns.net),
        (LinuxNamespaceType::Ipc, &pns.ipc),
        (LinuxNamespaceType::Uts, &pns.uts),
    ] {
        if let Some(p) = path {
            out.push(namespace(typ, Some(p)));
        }
    }
    out.push(namespace(LinuxNamespaceType::Mount, None));
    if input.host.cgroup == CgroupMode::V2 && !privileged {
        out.push(namespace(LinuxNamespaceType::Cgroup, None));
    }
    Ok(out)
}

/// Refuses AppArmor profiles we cannot apply (the host has no AppArmor):
/// a Localhost profile is an error, the others are ignored, as containerd
/// does on such a host.
fn check_apparmor(sc: Option<&LinuxContainerSecurityContext>) -> Result<(), SpecError> {
    let Some(sc) = sc else { return Ok(()) };
    let localhost = match &sc.apparmor {
        Some(p) => ProfileType::try_from(p.profile_type) == Ok(ProfileType::Localhost),
        None => {
            #[allow(deprecated)]
            let old = sc.apparmor_profile.as_str();
            old.starts_with("localhost/")
        }
    };
    if localhost {
        return Err(SpecError::invalid("apparmor is not supported on this host"));
    }
    Ok(())
}

fn annotations(input: &SpecInput) -> HashMap<String, String> {
    let mut a: HashMap<String, String> = input.container.annotations.clone();
    let pod_meta = input.pod.metadata.clone().unwrap_or_default();
    let name = input
        .container
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let image = if input.image_name.is_empty() {
        input
            .container
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default()
    } else {
        input.image_name.to_string()
    };
    for (k, v) in [
        (annotations::CONTAINER_TYPE, "container".to_string()),
        (annotations::CONTAINER_NAME, name),
        (annotations::SANDBOX_ID, input.sandbox_id.to_string()),
        (annotations::SANDBOX_NAME, pod_meta.name),
        (annotations::SANDBOX_NAMESPACE, pod_meta.namespace),
        (annotations::SANDBOX_UID, pod_meta.uid),
        (annotations::IMAGE_NAME, image),
    ] {
        a.insert(k.to_string(), v);
    }
    a
}

/// Builds the OCI runtime spec of a container.
///
/// Errors: [`SpecError::Invalid`] for a request or image config that is
/// invalid or asks for something unsupported, [`SpecError::NotFound`] for
/// a missing user, group, device or seccomp profile, [`SpecError::Io`] for
/// other failed reads. Never panics.
pub fn build(input: &SpecInput) -> Result<Spec, SpecError> {
    let c = input.container;
    let sc = security_context(c);
    let pod_linux = input.pod.linux.as_ref();
    let pod_privileged = pod_linux
        .and_then(|l| l.security_context.as_ref())
        .is_some_and(|s| s.privileged);
    let privileged = sc.is_some_and(|s| s.privileged);
    if privileged && !pod_privileged {
        return Err(SpecError::invalid(
            "a privileged container needs a privileged pod",
        ));
    }
    check_apparmor(sc)?;

    let image = input.image.config().as_ref();
    let args = process::args(&c.command, &c.args, image)?;
    let env = process::env(&input.hostname, image, &c.envs)?;
    let cwd = process::cwd(&c.working_dir, image)?;

    let image_user = image.and_then(|i| i.user().as_deref());
    let resolved = user::resolve(input.rootfs, sc, image_user)?;
    let mut user = User::default();
    user.set_uid(resolved.uid);
    user.set_gid(resolved.gid);
    user.set_additional_gids(Some(resolved.additional_gids));

    let cap_sets = caps::compute(
        sc.and_then(|s| s.capabilities.as_ref()),
        privileged,
        input.host.cap_mask(),
    )?;

    let seccomp_choice = seccomp::choose(sc, input.seccomp_profile_root)?;
    let seccomp = seccomp::build(
        &seccomp_choice,
        privileged,
        input.seccomp_default_when_unset,
        cap_sets.bounding,
        &input.host,
    )?;

    let host_ipc = input.pod_namespaces.ipc.is_none();
    let host_net = input.pod_namespaces.net.is_none();
    let readonly_rootfs = sc.is_some_and(|s| s.readonly_rootfs);
    let mounts = mounts::build(
        &c.mounts,
        &input.etc_files,
        readonly_rootfs,
        privileged,
        host_ipc,
    )?;
    let (masked, mut readonly_paths) = mounts::masked_and_readonly(sc, privileged)?;
    let mut mounts = mounts;
    let namespaces = namespaces(input, sc, privileged)?;
    let joins_pid_ns = namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::Pid && n.path().is_some());
    if input.host.cgroup == CgroupMode::V1 && joins_pid_ns {
        mounts::cgroup_v1_binds(
            &mut mounts.mounts,
            &input.cgroups_path,
            &input.host.v1_controllers,
            privileged,
        );
        if !privileged {
            readonly_paths.push("/sys/fs/cgroup".into());
        }
    }

    let devices = devices::build(&c.devices, privileged)?;
    let container_resources = c.linux.as_ref().and_then(|l| l.resources.as_ref());
    let resources = resources::build(container_resources, &input.host, devices.rules)?;
    let oom_score_adj = resources::oom_score_adj(container_resources, &input.host);

    let sysctls = match pod_linux {
        Some(l) => validate_sysctls(&l.sysctls, host_net, host_ipc)?,
        None => HashMap::new(),
    };

    let mut process = Process::default();
    process.set_terminal(Some(c.tty));
    process.set_console_size(None);
    process.set_user(user);
    process.set_args(Some(args));
    process.set_command_line(None);
    process.set_env(Some(env));
    process.set_cwd(PathBuf::from(cwd));
    process.set_capabilities(Some(cap_sets.to_oci()));
    process.set_rlimits(None);
    // Unset rather than false: libcontainer loads a seccomp filter before
    // dropping capabilities only when the flag is absent, and a filter
    // loaded after the drop fails without no_new_privs.
    process.set_no_new_privileges(sc.is_some_and(|s| s.no_new_privs).then_some(true));
    process.set_apparmor_profile(None);
    process.set_oom_score_adj(oom_score_adj);
    process.set_selinux_label(None);
    process.set_io_priority(None);
    process.set_scheduler(None);
    process.set_exec_cpu_affinity(None);

    let mut linux = Linux::default();
    linux.set_net_devices(None);
    linux.set_uid_mappings(None);
    linux.set_gid_mappings(None);
    linux.set_sysctl((!sysctls.is_empty()).then_some(sysctls));
    linux.set_resources(Some(resources));
    linux.set_cgroups_path(
        (!input.cgroups_path.is_empty()).then(|| PathBuf::from(&input.cgroups_path)),
    );
    linux.set_namespaces(Some(namespaces));
    linux.set_devices((!devices.devices.is_empty()).then_some(devices.devices));
    linux.set_seccomp(seccomp);
    linux.set_rootfs_propagation(mounts.rootfs_propagation);
    linux.set_masked_paths(Some(masked));
    linux.set_readonly_paths(Some(readonly_paths));
    linux.set_mount_label(None);
    linux.set_intel_rdt(None);
    linux.set_memory_policy(None);
    linux.set_personality(None);
    linux.set_time_offsets(None);

    let mut root = Root::default();
    root.set_path(input.root_path.unwrap_or(input.rootfs).to_path_buf());
    root.set_readonly(Some(readonly_rootfs));

    let mut spec = Spec::default();
    spec.set_version(OCI_VERSION.to_string());
    spec.set_root(Some(root));
    spec.set_mounts(Some(mounts.mounts));
    spec.set_process(Some(process));
    spec.set_hostname(
        input
            .pod_namespaces
            .uts
            .is_some()
            .then(|| input.hostname.clone()),
    );
    spec.set_domainname(None);
    spec.set_hooks(None);
    spec.set_annotations(Some(annotations(input)));
    spec.set_linux(Some(linux));
    spec.set_solaris(None);
    spec.set_windows(None);
    spec.set_vm(None);
    spec.set_zos(None);
    Ok(spec)
}

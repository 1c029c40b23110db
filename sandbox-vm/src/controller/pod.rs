//! VM pods: RunPodSandbox makes the pod's network namespace on the host
//! and attaches it with CNI (the same call as the namespace sandbox's),
//! writes the pod's files into its share, and starts the pod's
//! vm-monitor, which boots the VM, joins eth0 to it and makes the guest the
//! pod; the call answers once the agent has. StopPodSandbox shuts the
//! vm-monitor down (containers, then the VM), undoes the network and the
//! namespace pin.

use std::net::IpAddr;
use std::path::Path;

use crius_proto::cri::NamespaceMode;
use crius_proto::monitor::Request;
use sandbox_api::{Journal, Pod, Result, SandboxError};
use sandbox_container::cni::PodNetwork;
use sandbox_container::controller::{pod_cgroup, pod_files, rootfs};

use super::{PodState, VmSandbox};
use crate::vm_monitor::{PodNetConfig, VmPodConfig};

/// CNI's interface in the pod's namespace.
const IFNAME: &str = "eth0";

/// A network namespace of its own, pinned at `pin` (a file bind-mounted
/// over by the namespace), made by a short-lived thread that unshares it.
fn make_netns(pin: &Path) -> std::io::Result<()> {
    std::fs::File::create(pin)?;
    let pin = pin.to_path_buf();
    std::thread::Builder::new()
        .name("crius-netns".into())
        .spawn(move || -> std::io::Result<()> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &pin,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )?;
            Ok(())
        })?
        .join()
        .map_err(|_| std::io::Error::other("the netns thread panicked"))?
}

/// The pin's undoing; gone is fine.
fn remove_netns(pin: &Path) -> std::io::Result<()> {
    rootfs::unmount(pin)?;
    match std::fs::remove_file(pin) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl VmSandbox {
    /// vCPUs and MiB for the pod, from its resources (limits and kubelet's
    /// overhead) within the configured bounds.
    fn size(&self, pod: &Pod) -> (u8, u32) {
        let linux = pod.config.linux.as_ref();
        let res = linux.and_then(|l| l.resources.as_ref());
        let over = linux.and_then(|l| l.overhead.as_ref());
        let cpus = res
            .filter(|r| r.cpu_quota > 0 && r.cpu_period > 0)
            .map(|r| (r.cpu_quota + r.cpu_period - 1) / r.cpu_period);
        let vcpus = match cpus {
            Some(n) => u8::try_from(n).unwrap_or(u8::MAX),
            None => self.cfg.vcpus,
        }
        .clamp(1, self.cfg.max_vcpus.max(1));
        let limit = res.map_or(0, |r| r.memory_limit_in_bytes.max(0))
            + over.map_or(0, |o| o.memory_limit_in_bytes.max(0));
        let memory_mib = u32::try_from(limit >> 20)
            .unwrap_or(u32::MAX)
            .max(self.cfg.memory_mib)
            .min(self.cfg.max_memory_mib.max(self.cfg.memory_mib));
        (vcpus, memory_mib)
    }

    pub(super) async fn run(&self, pod: &mut Pod, journal: &dyn Journal) -> Result<Vec<String>> {
        let ns = pod.namespace_options();
        if ns.network == NamespaceMode::Node as i32
            || ns.ipc == NamespaceMode::Node as i32
            || ns.pid == NamespaceMode::Node as i32
        {
            return Err(SandboxError::InvalidArgument(
                "a vm pod has its own kernel: it cannot use the host's network, IPC or PID \
                 namespace"
                    .into(),
            ));
        }
        if ns
            .userns_options
            .as_ref()
            .is_some_and(|u| u.mode == NamespaceMode::Pod as i32)
        {
            return Err(SandboxError::InvalidArgument(
                "a vm pod has its own kernel: pod user namespaces are not supported".into(),
            ));
        }
        for (what, p) in [
            ("kernel", &self.cfg.kernel),
            ("initramfs", &self.cfg.initramfs),
        ] {
            if !p.is_file() {
                return Err(SandboxError::FailedPrecondition(format!(
                    "no guest {what} for vm pods ({}): build it with scripts/guest-kernel and \
                     scripts/guest-agent, or set vm.{what} in crius's config",
                    p.display()
                )));
            }
        }
        self.cni.status().map_err(SandboxError::from)?;
        let dir = self.pod_dir(&pod.id);
        pod_files::make_dir(&dir, 0o700).map_err(SandboxError::at("create the pod's directory"))?;
        let share = crate::vm_monitor::share_dir(&dir);
        for sub in ["pod", "containers", "volumes"] {
            pod_files::make_dir(&share.join(sub), 0o755)
                .map_err(SandboxError::at("create the pod's share"))?;
        }
        pod_files::make_dir(&crate::vm_monitor::layers_dir(&dir), 0o755)
            .map_err(SandboxError::at("create the pod's layer share"))?;
        let hostname = pod_files::hostname(&pod.config).map_err(SandboxError::InvalidArgument)?;
        std::fs::write(share.join("pod/hostname"), format!("{hostname}\n"))
            .map_err(SandboxError::at("write hostname"))?;
        let resolv = pod_files::resolv_conf(pod.config.dns_config.as_ref())
            .map_err(SandboxError::at("read the host's resolv.conf"))?;
        std::fs::write(share.join("pod/resolv.conf"), resolv)
            .map_err(SandboxError::at("write resolv.conf"))?;
        let (vcpus, memory_mib) = self.size(pod);
        let mut state = PodState {
            vcpus,
            memory_mib,
            ..PodState::default()
        };
        // The namespace, then the attachment, each recorded before it is
        // made.
        let netns = dir.join("netns");
        state.netns = Some(netns.clone());
        state.network_attached = true;
        pod.sandbox.set(&state);
        journal.save_pod(pod).await?;
        let pin = netns.clone();
        tokio::task::spawn_blocking(move || make_netns(&pin))
            .await
            .map_err(task_error)?
            .map_err(SandboxError::at("make the pod's network namespace"))?;
        let net = PodNetwork::for_pod(pod, &netns);
        let c = self.cni.clone();
        let result = tokio::task::spawn_blocking(move || c.add(&net))
            .await
            .map_err(task_error)??;
        let ips: Vec<String> = result.pod_ips().iter().map(|ip| ip.to_string()).collect();
        let v4 = result
            .ips
            .iter()
            .find(|i| matches!(i.address.addr, IpAddr::V4(_)))
            .ok_or_else(|| {
                SandboxError::FailedPrecondition(
                    "the pod network gave no IPv4 address: vm pods need one".into(),
                )
            })?;
        std::fs::write(share.join("pod/hosts"), pod_files::hosts(&hostname, &ips))
            .map_err(SandboxError::at("write hosts"))?;
        let cfg = VmPodConfig {
            id: pod.id.clone(),
            kernel: self.cfg.kernel.clone(),
            initramfs: self.cfg.initramfs.clone(),
            vcpus,
            memory_mib,
            hostname,
            pid_shared: pod.namespace_options().pid == NamespaceMode::Pod as i32,
            driver: self.cfg.driver,
            net: Some(PodNetConfig {
                netns: netns.clone(),
                interface: IFNAME.into(),
                address: v4.address.addr.to_string(),
                prefix_len: v4.address.prefix_len,
                gateway: v4.gateway.map(|g| g.to_string()),
            }),
        };
        cfg.write(&dir)
            .map_err(SandboxError::at("write the VM pod's config"))?;
        let d = dir.clone();
        let pid = tokio::task::spawn_blocking(move || {
            sandbox_container::monitor::spawn(&d, Path::new("/proc/self/exe"), &["vm-monitor"])
        })
        .await
        .map_err(task_error)??;
        state.monitor_pid = Some(pid);
        pod.sandbox.set(&state);
        // The vm-monitor, the VMM and its helpers leave crius's cgroup.
        let cgroup = pod_cgroup::own(pod);
        let moved = tokio::task::spawn_blocking(move || pod_cgroup::enter_own(&cgroup, pid))
            .await
            .map_err(task_error)
            .and_then(|r| r);
        if let Err(e) = moved {
            tracing::warn!(pod = %pod.id, error = %sandbox_api::error::chain(&e), "the pod's processes stay in crius's cgroup");
        }
        self.watches.watch(&pod.id, &dir, std::iter::empty());
        Ok(ips)
    }

    pub(super) async fn stop(&self, pod: &mut Pod, journal: &dyn Journal) -> Result<()> {
        let dir = self.pod_dir(&pod.id);
        let mut state: PodState = pod.sandbox.get();
        self.watches.stopping(&pod.id);
        if dir.join(sandbox_container::monitor::SOCKET_FILE).exists()
            && let Err(e) = self.ask(pod, Request::Shutdown).await
        {
            tracing::warn!(pod = %pod.id, error = %sandbox_api::error::chain(&e), "vm-monitor shutdown");
        }
        if let Some(pid) = state.monitor_pid.take() {
            kill_leftovers(&dir, pid);
        }
        let cgroup = pod_cgroup::own(pod);
        tokio::task::spawn_blocking(move || pod_cgroup::remove_own(&cgroup))
            .await
            .map_err(task_error)??;
        if state.network_attached {
            let netns = state.netns.clone().unwrap_or_else(|| dir.join("netns"));
            let net = PodNetwork::for_pod(pod, &netns);
            let c = self.cni.clone();
            tokio::task::spawn_blocking(move || c.del(&net))
                .await
                .map_err(task_error)??;
            state.network_attached = false;
        }
        if let Some(netns) = state.netns.take() {
            remove_netns(&netns).map_err(SandboxError::at("remove the pod's network namespace"))?;
        }
        pod.sandbox.set(&state);
        journal.save_pod(pod).await?;
        rootfs::unmount_all_under(&dir).map_err(SandboxError::at("unmount the pod's share"))
    }
}

/// Ends what a vm-monitor that did not shut down left: the vm-monitor
/// (`pid`) and the VM's processes (their pids in `vm.pids`), each only if
/// it still runs with the pod's directory on its command line.
fn kill_leftovers(dir: &Path, pid: u32) {
    let mut pids = vec![pid];
    if let Ok(s) = std::fs::read_to_string(dir.join(crate::vm_monitor::PIDS_FILE)) {
        pids.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    }
    let needle = dir.as_os_str().as_encoded_bytes();
    for p in pids {
        let ours = std::fs::read(format!("/proc/{p}/cmdline"))
            .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle));
        if ours && p > 1 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn task_error(e: tokio::task::JoinError) -> SandboxError {
    SandboxError::internal("a blocking task", e)
}

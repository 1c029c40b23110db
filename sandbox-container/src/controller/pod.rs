//! Pods: RunPodSandbox writes the pod's files, mounts its /dev/shm, starts
//! its monitor (which pins the namespaces) and attaches its network with
//! CNI; StopPodSandbox undoes the network and ends the monitor. Each step
//! that needs undoing is saved before it is taken, so a crash at any point
//! leaves a record the restarted crius can stop.

use std::fs;

use crius_proto::cri::NamespaceMode;
use crius_proto::monitor::Request;
use sandbox_api::{Journal, Pod, Result, SandboxError};

use super::{NamespaceSandbox, PodState, namespaces, pod_cgroup, pod_files, rootfs, userns};
use crate::cni::PodNetwork;
use crate::monitor::MonitorConfig;

impl NamespaceSandbox {
    pub(super) async fn run(&self, pod: &mut Pod, journal: &dyn Journal) -> Result<Vec<String>> {
        let userns = userns(pod)?;
        let (host_net, host_ipc, pod_pid) = namespaces(pod);
        let ns = pod.namespace_options();
        if userns.is_some() && (host_net || host_ipc || ns.pid == NamespaceMode::Node as i32) {
            return Err(SandboxError::InvalidArgument(
                "a pod with its own user namespace cannot use the host's network, IPC or \
                 PID namespace"
                    .into(),
            ));
        }
        if !host_net && let Err(why) = self.cni.status() {
            // Refused before anything is made.
            return Err(SandboxError::from(why));
        }
        let dir = self.pod_dir(&pod.id);
        // A pod with its own user namespace: its containers are set up from
        // inside it and must reach their files here by path.
        pod_files::make_dir(&dir, if userns.is_some() { 0o711 } else { 0o700 })
            .map_err(SandboxError::at("create pod dir"))?;
        let hostname = if host_net {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            pod_files::hostname(&pod.config).map_err(SandboxError::InvalidArgument)?
        };
        fs::write(dir.join("hostname"), format!("{hostname}\n"))
            .map_err(SandboxError::at("write hostname"))?;
        let resolv = pod_files::resolv_conf(pod.config.dns_config.as_ref())
            .map_err(SandboxError::at("read the host's resolv.conf"))?;
        fs::write(dir.join("resolv.conf"), resolv)
            .map_err(SandboxError::at("write resolv.conf"))?;
        fs::write(dir.join("hosts"), pod_files::hosts(&hostname, &[]))
            .map_err(SandboxError::at("write hosts"))?;
        if !host_ipc {
            let shm = dir.join("shm");
            pod_files::make_dir(&shm, 0o755).map_err(SandboxError::at("create shm dir"))?;
            pod_files::mount_shm(&shm).map_err(SandboxError::at("mount pod shm"))?;
        }
        let monitor = MonitorConfig {
            hostname: hostname.clone(),
            net: !host_net,
            ipc: !host_ipc,
            uts: !host_net,
            pid: pod_pid,
            userns,
            runtime_root: self.state.join("runc"),
            forward_output: false,
        };
        let pid = crate::monitor::spawn_pod_monitor(&dir, &monitor).await?;
        let mut state = PodState {
            monitor_pid: Some(pid),
            ..PodState::default()
        };
        pod.sandbox.set(&state);
        self.watches.watch(&pod.id, &dir, std::iter::empty());
        // Out of crius's cgroup, beside the network's set-up (see
        // pod_cgroup.rs); awaited on every path, so that a roll-back's
        // removal of the cgroup comes after.
        let cgroup = pod_cgroup::own(pod);
        let moving = tokio::task::spawn_blocking(move || pod_cgroup::enter_own(&cgroup, pid));
        let ips = if host_net {
            Ok(Vec::new())
        } else {
            self.attach(pod, journal, &mut state, &hostname).await
        };
        match moving.await.map_err(super::task_error).and_then(|r| r) {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(pod = %pod.id, error = %sandbox_api::error::chain(&e), "the pod's processes stay in crius's cgroup")
            }
        }
        ips
    }

    /// The pod's network: CNI ADD in its namespace, recorded first.
    async fn attach(
        &self,
        pod: &mut Pod,
        journal: &dyn Journal,
        state: &mut PodState,
        hostname: &str,
    ) -> Result<Vec<String>> {
        let dir = self.pod_dir(&pod.id);
        let netns = dir.join("ns").join("net");
        state.netns = Some(netns.clone());
        // Recorded before the ADD: a crash in between still owes the DEL.
        state.network_attached = true;
        pod.sandbox.set(&*state);
        journal.save_pod(pod).await?;
        let net = PodNetwork::for_pod(pod, &netns);
        let cni = self.cni.clone();
        let result = tokio::task::spawn_blocking(move || cni.add(&net))
            .await
            .map_err(super::task_error)??;
        let ips: Vec<String> = result.pod_ips().iter().map(|ip| ip.to_string()).collect();
        fs::write(dir.join("hosts"), pod_files::hosts(hostname, &ips))
            .map_err(SandboxError::at("write hosts"))?;
        Ok(ips)
    }

    pub(super) async fn stop(&self, pod: &mut Pod, journal: &dyn Journal) -> Result<()> {
        let dir = self.pod_dir(&pod.id);
        let mut state: PodState = pod.sandbox.get();
        if state.network_attached {
            let netns = state
                .netns
                .clone()
                .unwrap_or_else(|| dir.join("ns").join("net"));
            let net = PodNetwork::for_pod(pod, &netns);
            let cni = self.cni.clone();
            tokio::task::spawn_blocking(move || cni.del(&net))
                .await
                .map_err(super::task_error)??;
            state.network_attached = false;
            pod.sandbox.set(&state);
            journal.save_pod(pod).await?;
        }
        // The monitor's going is expected from here on.
        self.watches.stopping(&pod.id);
        if dir.join(crate::monitor::SOCKET_FILE).exists()
            && let Err(e) = self.ask(pod, Request::Shutdown).await
        {
            tracing::warn!(pod = %pod.id, error = %sandbox_api::error::chain(&e), "monitor shutdown");
        }
        if let Some(pid) = state.monitor_pid.take() {
            crate::monitor::kill_stale(&dir, pid);
            pod.sandbox.set(&state);
        }
        let cgroup = pod_cgroup::own(pod);
        tokio::task::spawn_blocking(move || pod_cgroup::remove_own(&cgroup))
            .await
            .map_err(super::task_error)??;
        rootfs::unmount_all_under(&dir).map_err(SandboxError::at("unmount pod mounts"))?;
        Ok(())
    }
}

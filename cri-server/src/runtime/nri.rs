//! NRI on the runtime's side: pods and containers as NRI plugins see
//! them, a plugin's adjustment applied to a container's CRI config (so
//! both handlers honour it), the state a joining plugin is synchronized
//! with, and each stop event delivered once.
//!
//! Lock order: a store lock (pod or container) may be held when an NRI
//! scope is taken, never taken while one is held, so a plugin joining
//! (which waits for every scope to end) cannot deadlock an event.

use std::sync::Arc;

use crius_proto::cri::{
    ContainerConfig, HugepageLimit, KeyValue, LinuxContainerResources, Mount, MountPropagation,
};
use nri::api;

use super::Runtime;
use crate::store::{ContainerPhase, ContainerRecord, PodRecord, PodState, Store};

/// A pod as plugins see it.
pub(super) fn nri_pod(p: &PodRecord) -> api::PodSandbox {
    let meta = p.config.metadata.clone().unwrap_or_default();
    api::PodSandbox {
        id: p.id.clone(),
        name: meta.name,
        uid: meta.uid,
        namespace: meta.namespace,
        labels: p.config.labels.clone(),
        annotations: p.config.annotations.clone(),
        runtime_handler: p.runtime_handler.clone(),
        linux: Some(api::LinuxPodSandbox {
            cgroup_parent: p
                .config
                .linux
                .as_ref()
                .map(|l| l.cgroup_parent.clone())
                .unwrap_or_default(),
            ..Default::default()
        }),
        pid: 0,
        ips: p.ips.clone(),
    }
}

/// A container as plugins see it: its CRI config (the command line and
/// environment as CRI gave them, without the image's defaults).
pub(super) fn nri_container(c: &ContainerRecord) -> api::Container {
    let config = &c.config;
    let state = match c.phase {
        ContainerPhase::Creating => api::ContainerState::Unknown,
        ContainerPhase::Created => api::ContainerState::Created,
        ContainerPhase::Running => api::ContainerState::Running,
        ContainerPhase::Exited => api::ContainerState::Stopped,
    };
    let resources = config.linux.as_ref().and_then(|l| l.resources.as_ref());
    api::Container {
        id: c.id.clone(),
        pod_sandbox_id: c.pod_id.clone(),
        name: config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default(),
        state: state as i32,
        labels: config.labels.clone(),
        annotations: config.annotations.clone(),
        args: config.command.iter().chain(&config.args).cloned().collect(),
        env: config
            .envs
            .iter()
            .map(|kv| format!("{}={}", kv.key, kv.value))
            .collect(),
        mounts: config
            .mounts
            .iter()
            .map(|m| api::Mount {
                destination: m.container_path.clone(),
                r#type: "bind".into(),
                source: m.host_path.clone(),
                options: vec![
                    "rbind".into(),
                    if m.readonly { "ro" } else { "rw" }.into(),
                    match m.propagation() {
                        MountPropagation::PropagationPrivate => "rprivate",
                        MountPropagation::PropagationHostToContainer => "rslave",
                        MountPropagation::PropagationBidirectional => "rshared",
                    }
                    .into(),
                ],
            })
            .collect(),
        linux: Some(api::LinuxContainer {
            resources: resources.map(nri_resources),
            oom_score_adj: resources.map(|r| api::OptionalInt {
                value: r.oom_score_adj,
            }),
            ..Default::default()
        }),
        created_at: c.created_at,
        started_at: c.started_at,
        finished_at: c.exit.as_ref().map_or(0, |e| e.finished_at),
        exit_code: c.exit.as_ref().map_or(0, |e| e.exit_code),
        status_reason: c.exit.as_ref().map_or(String::new(), |e| e.reason.clone()),
        image: Some(api::Image {
            name: c.image_name.clone(),
            config_digest: c.image_id.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// CRI resources as NRI's.
pub(super) fn nri_resources(r: &LinuxContainerResources) -> api::LinuxResources {
    let int = |v: i64| (v != 0).then_some(api::OptionalInt { value: v });
    let uint = |v: i64| (v > 0).then_some(api::OptionalUInt { value: v as u64 });
    api::LinuxResources {
        memory: Some(api::LinuxMemory {
            limit: int(r.memory_limit_in_bytes),
            swap: int(r.memory_swap_limit_in_bytes),
            ..Default::default()
        }),
        cpu: Some(api::LinuxCpu {
            shares: uint(r.cpu_shares),
            quota: int(r.cpu_quota),
            period: uint(r.cpu_period),
            cpus: r.cpuset_cpus.clone(),
            mems: r.cpuset_mems.clone(),
            ..Default::default()
        }),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|h| api::HugepageLimit {
                page_size: h.page_size.clone(),
                limit: h.limit,
            })
            .collect(),
        unified: r.unified.clone(),
        ..Default::default()
    }
}

/// Applies the plugins' merged changes to a container's CRI config.
pub(super) fn apply(adj: &nri::Adjustment, config: &mut ContainerConfig) {
    for (key, value) in &adj.annotations {
        match value {
            Some(v) => config.annotations.insert(key.clone(), v.clone()),
            None => config.annotations.remove(key),
        };
    }
    for (key, value) in &adj.env {
        config.envs.retain(|kv| kv.key != *key);
        if let Some(v) = value {
            config.envs.push(KeyValue {
                key: key.clone(),
                value: v.clone(),
            });
        }
    }
    for dest in &adj.removed_mounts {
        config.mounts.retain(|m| m.container_path != *dest);
    }
    for m in &adj.mounts {
        config.mounts.retain(|c| c.container_path != m.destination);
        let mut mount = Mount {
            container_path: m.destination.clone(),
            host_path: m.source.clone(),
            readonly: m.readonly,
            ..Default::default()
        };
        mount.set_propagation(match m.propagation {
            nri::Propagation::Private => MountPropagation::PropagationPrivate,
            nri::Propagation::Slave => MountPropagation::PropagationHostToContainer,
            nri::Propagation::Shared => MountPropagation::PropagationBidirectional,
        });
        config.mounts.push(mount);
    }
    if let Some(args) = &adj.args {
        config.command = args.clone();
        config.args.clear();
    }
    let r = &adj.resources;
    if *r == nri::Resources::default() {
        return;
    }
    let res = config
        .linux
        .get_or_insert_with(Default::default)
        .resources
        .get_or_insert_with(Default::default);
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    if let Some(v) = r.memory_limit {
        res.memory_limit_in_bytes = v;
    }
    if let Some(v) = r.memory_swap {
        res.memory_swap_limit_in_bytes = v;
    }
    if let Some(v) = r.cpu_shares {
        res.cpu_shares = clamp(v);
    }
    if let Some(v) = r.cpu_quota {
        res.cpu_quota = v;
    }
    if let Some(v) = r.cpu_period {
        res.cpu_period = clamp(v);
    }
    if let Some(v) = &r.cpuset_cpus {
        res.cpuset_cpus = v.clone();
    }
    if let Some(v) = &r.cpuset_mems {
        res.cpuset_mems = v.clone();
    }
    if let Some(v) = r.oom_score_adj {
        res.oom_score_adj = v;
    }
    for (size, limit) in &r.hugepage_limits {
        res.hugepage_limits.retain(|h| h.page_size != *size);
        res.hugepage_limits.push(HugepageLimit {
            page_size: size.clone(),
            limit: *limit,
        });
    }
    for (k, v) in &r.unified {
        res.unified.insert(k.clone(), v.clone());
    }
}

/// What a joining plugin is synchronized with: every pod and container
/// whose set-up has ended (one still being set up reaches it as an
/// event).
pub struct NriHost(pub Arc<Store>);

impl nri::Host for NriHost {
    fn snapshot(&self) -> (Vec<api::PodSandbox>, Vec<api::Container>) {
        let pods = self
            .0
            .pods()
            .iter()
            .filter(|p| p.state != PodState::Creating)
            .map(nri_pod)
            .collect();
        let containers = self
            .0
            .containers()
            .iter()
            .filter(|c| c.phase != ContainerPhase::Creating)
            .map(nri_container)
            .collect();
        (pods, containers)
    }
}

impl Runtime {
    /// Whether `key`'s event is yet to be delivered (and from now on, is).
    fn nri_first(&self, key: String) -> bool {
        self.nri_sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key)
    }

    /// Forgets a removed pod's or container's delivered events.
    pub(super) fn nri_forget(&self, id: &str) {
        self.nri_sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k| k.split_once('/').map(|(_, i)| i) != Some(id));
    }

    /// Delivers StopContainer for an exited container, once; the caller
    /// holds the container's lock.
    pub(super) async fn nri_container_stopped(&self, id: &str) {
        let Some(c) = self.store.container(id) else {
            return;
        };
        if c.phase != ContainerPhase::Exited || !self.nri_first(format!("stop/{id}")) {
            return;
        }
        let Some(p) = self.store.pod(&c.pod_id) else {
            return;
        };
        self.nri
            .scope()
            .await
            .stop_container(&nri_pod(&p), &nri_container(&c))
            .await;
    }

    /// The same, taking the container's lock.
    pub(super) async fn nri_container_stopped_taking_lock(&self, id: &str) {
        let lock = self.store.lock(id);
        let _held = lock.lock().await;
        self.nri_container_stopped(id).await;
    }

    /// Delivers StopPodSandbox once per pod; false when it was already.
    pub(super) fn nri_pod_stop_first(&self, id: &str) -> bool {
        self.nri_first(format!("stop/{id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adjustment_lands_in_the_cri_config() {
        let mut config = ContainerConfig {
            envs: vec![
                KeyValue {
                    key: "KEEP".into(),
                    value: "1".into(),
                },
                KeyValue {
                    key: "DROP".into(),
                    value: "1".into(),
                },
            ],
            command: vec!["/bin/old".into()],
            args: vec!["x".into()],
            ..Default::default()
        };
        let adj = nri::Adjustment {
            env: vec![("DROP".into(), None), ("NEW".into(), Some("2".into()))],
            annotations: vec![("a".into(), Some("b".into()))],
            mounts: vec![nri::BindMount {
                destination: "/data".into(),
                source: "/srv".into(),
                readonly: true,
                propagation: nri::Propagation::Slave,
            }],
            args: Some(vec!["/bin/new".into()]),
            resources: nri::Resources {
                memory_limit: Some(64 << 20),
                cpuset_cpus: Some("0".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        apply(&adj, &mut config);
        let env: Vec<_> = config.envs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(env, ["KEEP", "NEW"]);
        assert_eq!(config.annotations["a"], "b");
        assert_eq!(config.command, ["/bin/new"]);
        assert!(config.args.is_empty());
        assert_eq!(config.mounts[0].host_path, "/srv");
        assert!(config.mounts[0].readonly);
        assert_eq!(
            config.mounts[0].propagation(),
            MountPropagation::PropagationHostToContainer
        );
        let res = config.linux.unwrap().resources.unwrap();
        assert_eq!(res.memory_limit_in_bytes, 64 << 20);
        assert_eq!(res.cpuset_cpus, "0");
    }
}

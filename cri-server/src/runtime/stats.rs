//! ContainerStats, ListContainerStats, PodSandboxStats and
//! ListPodSandboxStats: what the sandbox reads of the containers' cgroups
//! and writable layers and of the pods' cgroups and networks, in the CRI's
//! terms. CPU rates (`usage_nano_cores`) come from the previous sample of
//! the same container or pod, kept here.

use std::collections::HashMap;
use std::sync::Mutex;

use crius_proto::cri::{
    ContainerAttributes, ContainerStats, ContainerStatsRequest, ContainerStatsResponse, CpuUsage,
    FilesystemIdentifier, FilesystemUsage, LinuxPodSandboxStats, ListContainerStatsRequest,
    ListContainerStatsResponse, ListPodSandboxStatsRequest, ListPodSandboxStatsResponse,
    MemoryUsage, NetworkInterfaceUsage, NetworkUsage, PodSandboxAttributes, PodSandboxStats,
    PodSandboxStatsRequest, PodSandboxStatsResponse, ProcessUsage, SwapUsage, UInt64Value,
};
use crius_proto::usage::{
    CgroupStats, ContainerUsage, CpuStats, MemoryStats, NetInterface, PidsStats,
};

use super::{Runtime, labels_match};
use crate::error::Error;
use crate::store::{ContainerPhase, ContainerRecord, PodRecord, PodState};

/// A rate needs samples at least this far apart (ns); a sooner call gets
/// the last rate again.
const MIN_WINDOW: i64 = 1_000_000_000;

#[derive(Debug, Clone, Copy)]
struct Sample {
    timestamp: i64,
    usage_ns: u64,
    rate: Option<u64>,
}

/// The last CPU sample of each container and pod.
#[derive(Debug, Default)]
pub(super) struct CpuSamples(Mutex<HashMap<String, Sample>>);

impl CpuSamples {
    /// The CPU use of `key` in nanocores since its previous sample, which
    /// this one replaces; `None` for a first sample or a counter that went
    /// back.
    fn rate(&self, key: &str, timestamp: i64, usage_ns: u64) -> Option<u64> {
        let mut samples = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(prev) = samples.get(key)
            && usage_ns >= prev.usage_ns
            && timestamp >= prev.timestamp
        {
            let window = timestamp - prev.timestamp;
            if window < MIN_WINDOW {
                return prev.rate;
            }
            let rate = u128::from(usage_ns - prev.usage_ns) * 1_000_000_000 / window as u128;
            let rate = u64::try_from(rate).unwrap_or(u64::MAX);
            samples.insert(
                key.to_string(),
                Sample {
                    timestamp,
                    usage_ns,
                    rate: Some(rate),
                },
            );
            return Some(rate);
        }
        samples.insert(
            key.to_string(),
            Sample {
                timestamp,
                usage_ns,
                rate: None,
            },
        );
        None
    }

    /// Forgets the samples of objects that are gone.
    fn retain(&self, live: impl Fn(&str) -> bool) {
        let mut samples = self.0.lock().unwrap_or_else(|e| e.into_inner());
        samples.retain(|k, _| live(k));
    }
}

fn pod_key(id: &str) -> String {
    format!("pod/{id}")
}

fn value(v: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value: v })
}

fn cpu_usage(timestamp: i64, cpu: Option<&CpuStats>, rate: Option<u64>) -> CpuUsage {
    CpuUsage {
        timestamp,
        usage_core_nano_seconds: cpu.and_then(|c| value(c.usage_ns)),
        usage_nano_cores: rate.and_then(value),
    }
}

fn memory_usage(timestamp: i64, m: Option<&MemoryStats>) -> MemoryUsage {
    let Some(m) = m else {
        return MemoryUsage {
            timestamp,
            ..MemoryUsage::default()
        };
    };
    MemoryUsage {
        timestamp,
        working_set_bytes: value(m.working_set),
        available_bytes: m.limit.and_then(|l| value(l.saturating_sub(m.working_set))),
        usage_bytes: value(m.usage),
        rss_bytes: value(m.rss),
        page_faults: value(m.page_faults),
        major_page_faults: value(m.major_page_faults),
    }
}

fn swap_usage(timestamp: i64, m: Option<&MemoryStats>) -> Option<SwapUsage> {
    let m = m?;
    let swap = m.swap?;
    Some(SwapUsage {
        timestamp,
        swap_available_bytes: m
            .memsw_limit
            .zip(m.limit)
            .and_then(|(all, mem)| value(all.saturating_sub(mem).saturating_sub(swap))),
        swap_usage_bytes: value(swap),
    })
}

fn interface_usage(i: &NetInterface) -> NetworkInterfaceUsage {
    NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: value(i.rx_bytes),
        rx_errors: value(i.rx_errors),
        tx_bytes: value(i.tx_bytes),
        tx_errors: value(i.tx_errors),
    }
}

fn network_usage(timestamp: i64, ifs: &[NetInterface]) -> NetworkUsage {
    let default = ifs
        .iter()
        .find(|i| i.name == "eth0")
        .or_else(|| ifs.first());
    NetworkUsage {
        timestamp,
        default_interface: default.map(interface_usage),
        interfaces: ifs.iter().map(interface_usage).collect(),
    }
}

/// The pod's usage as the sum of its containers' (a pod without a cgroup
/// of its own).
fn sum(cgroups: &[&CgroupStats]) -> Option<CgroupStats> {
    if cgroups.is_empty() {
        return None;
    }
    let mut total = CgroupStats::default();
    for c in cgroups {
        if let Some(cpu) = &c.cpu {
            total.cpu.get_or_insert_with(CpuStats::default).usage_ns += cpu.usage_ns;
        }
        if let Some(m) = &c.memory {
            let t = total.memory.get_or_insert_with(MemoryStats::default);
            t.usage += m.usage;
            t.working_set += m.working_set;
            t.rss += m.rss;
            t.page_faults += m.page_faults;
            t.major_page_faults += m.major_page_faults;
        }
        if let Some(p) = &c.pids {
            total.pids.get_or_insert_with(PidsStats::default).current += p.current;
        }
    }
    Some(total)
}

impl Runtime {
    /// A container's usage, from its pod's sandbox.
    async fn usage_of(
        &self,
        c: &ContainerRecord,
        processes: bool,
    ) -> Result<ContainerUsage, Error> {
        let pod = self.pod_of(c)?;
        Ok(self
            .controller(&pod.runtime_handler)?
            .container_stats(&pod, c, processes)
            .await?)
    }

    fn container_stats_of(&self, c: &ContainerRecord, u: &ContainerUsage) -> ContainerStats {
        let t = u.timestamp;
        let cg = u.cgroup.as_ref();
        let cpu = cg.and_then(|s| s.cpu.as_ref());
        let rate = cpu.and_then(|cpu| self.cpu_samples.rate(&c.id, t, cpu.usage_ns));
        let memory = cg.and_then(|s| s.memory.as_ref());
        ContainerStats {
            attributes: Some(ContainerAttributes {
                id: c.id.clone(),
                metadata: c.config.metadata.clone(),
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
            }),
            cpu: Some(cpu_usage(t, cpu, rate)),
            memory: Some(memory_usage(t, memory)),
            writable_layer: u.layer.as_ref().map(|l| FilesystemUsage {
                timestamp: t,
                fs_id: Some(FilesystemIdentifier {
                    mountpoint: l.mountpoint.display().to_string(),
                }),
                used_bytes: value(l.usage.bytes),
                inodes_used: value(l.usage.inodes),
            }),
            swap: swap_usage(t, memory),
        }
    }

    /// The containers whose stats are asked for: all but those being
    /// created.
    fn stats_containers(&self, filter: impl Fn(&ContainerRecord) -> bool) -> Vec<ContainerRecord> {
        self.store
            .containers()
            .into_iter()
            .filter(|c| c.phase != ContainerPhase::Creating && filter(c))
            .collect()
    }

    pub(super) async fn container_stats(
        &self,
        req: ContainerStatsRequest,
    ) -> Result<ContainerStatsResponse, Error> {
        let c = self.container(&req.container_id)?;
        let u = self.usage_of(&c, false).await?;
        Ok(ContainerStatsResponse {
            stats: Some(self.container_stats_of(&c, &u)),
        })
    }

    pub(super) async fn list_container_stats(
        &self,
        req: ListContainerStatsRequest,
    ) -> Result<ListContainerStatsResponse, Error> {
        let f = req.filter.unwrap_or_default();
        let containers = self.stats_containers(|c| {
            c.id.starts_with(&f.id)
                && c.pod_id.starts_with(&f.pod_sandbox_id)
                && labels_match(&c.config.labels, &f.label_selector)
        });
        let mut stats = Vec::with_capacity(containers.len());
        for c in &containers {
            match self.usage_of(c, false).await {
                Ok(u) => stats.push(self.container_stats_of(c, &u)),
                Err(e) => {
                    tracing::warn!(container = %c.id, error = %crate::error::chain(&e), "container stats")
                }
            }
        }
        self.forget_gone_samples();
        Ok(ListContainerStatsResponse { stats })
    }

    fn forget_gone_samples(&self) {
        let pods: std::collections::HashSet<String> = self
            .store
            .pods()
            .into_iter()
            .map(|p| pod_key(&p.id))
            .collect();
        let containers: std::collections::HashSet<String> = self
            .store
            .containers()
            .into_iter()
            .map(|c| c.container.id)
            .collect();
        self.cpu_samples
            .retain(|k| pods.contains(k) || containers.contains(k));
    }

    /// Whether the pod's cgroup parent is its own (no other pod uses it),
    /// so that it holds exactly the pod's containers.
    pub(super) fn pod_owns_cgroup(&self, pod: &PodRecord) -> bool {
        let parent = |p: &PodRecord| p.cgroup_parent().unwrap_or_default();
        let mine = parent(pod);
        !mine.is_empty()
            && self
                .store
                .pods()
                .iter()
                .all(|p| p.id == pod.id || parent(p) != mine)
    }

    async fn pod_sandbox_stats_of(&self, pod: &PodRecord) -> Result<PodSandboxStats, Error> {
        let ctl = self.controller(&pod.runtime_handler)?;
        let containers = self.stats_containers(|c| c.pod_id == pod.id);
        let mut usages = Vec::with_capacity(containers.len());
        let mut container_stats = Vec::with_capacity(containers.len());
        for c in &containers {
            let u = ctl.container_stats(pod, c, false).await?;
            container_stats.push(self.container_stats_of(c, &u));
            usages.push(u);
        }
        let pu = ctl.pod_stats(pod, self.pod_owns_cgroup(pod)).await?;
        let t = pu.timestamp;
        let cgroup = pu.cgroup.clone().or_else(|| {
            sum(&usages
                .iter()
                .filter_map(|u| u.cgroup.as_ref())
                .collect::<Vec<_>>())
        });
        let cpu = cgroup.as_ref().and_then(|c| c.cpu.as_ref());
        let rate = cpu.and_then(|cpu| self.cpu_samples.rate(&pod_key(&pod.id), t, cpu.usage_ns));
        Ok(PodSandboxStats {
            attributes: Some(PodSandboxAttributes {
                id: pod.id.clone(),
                metadata: pod.config.metadata.clone(),
                labels: pod.config.labels.clone(),
                annotations: pod.config.annotations.clone(),
            }),
            linux: Some(LinuxPodSandboxStats {
                cpu: Some(cpu_usage(t, cpu, rate)),
                memory: Some(memory_usage(
                    t,
                    cgroup.as_ref().and_then(|c| c.memory.as_ref()),
                )),
                network: pu.network.as_deref().map(|ifs| network_usage(t, ifs)),
                process: Some(ProcessUsage {
                    timestamp: t,
                    process_count: cgroup
                        .as_ref()
                        .and_then(|c| c.pids.as_ref())
                        .and_then(|p| value(p.current)),
                }),
                containers: container_stats,
            }),
            windows: None,
        })
    }

    pub(super) async fn pod_sandbox_stats(
        &self,
        req: PodSandboxStatsRequest,
    ) -> Result<PodSandboxStatsResponse, Error> {
        let pod = self.store.pod(&req.pod_sandbox_id).ok_or_else(|| {
            Error::NotFound(format!("pod sandbox {:?} not found", req.pod_sandbox_id))
        })?;
        Ok(PodSandboxStatsResponse {
            stats: Some(self.pod_sandbox_stats_of(&pod).await?),
        })
    }

    /// The stats of ready pods (as containerd: a stopped pod has no
    /// network or processes left to report).
    pub(super) async fn list_pod_sandbox_stats(
        &self,
        req: ListPodSandboxStatsRequest,
    ) -> Result<ListPodSandboxStatsResponse, Error> {
        let f = req.filter.unwrap_or_default();
        let mut stats = Vec::new();
        for pod in self.store.pods() {
            if pod.state != PodState::Ready
                || !pod.id.starts_with(&f.id)
                || !labels_match(&pod.config.labels, &f.label_selector)
            {
                continue;
            }
            match self.pod_sandbox_stats_of(&pod).await {
                Ok(s) => stats.push(s),
                Err(e) => {
                    tracing::warn!(pod = %pod.id, error = %crate::error::chain(&e), "pod stats")
                }
            }
        }
        self.forget_gone_samples();
        Ok(ListPodSandboxStatsResponse { stats })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_rates_need_two_samples_a_window_apart() {
        let s = CpuSamples::default();
        let sec: i64 = 1_000_000_000;
        let ns: u64 = 1_000_000_000;
        assert_eq!(s.rate("c", 10 * sec, 1_000), None);
        // Half a core over two seconds.
        assert_eq!(s.rate("c", 12 * sec, 1_000 + ns), Some(ns / 2));
        // Too soon: the last rate, and the sample is kept.
        assert_eq!(s.rate("c", 12 * sec + 5, 2 * ns), Some(ns / 2));
        assert_eq!(s.rate("c", 13 * sec, 1_000 + 2 * ns), Some(ns));
        // A counter that went back starts over.
        assert_eq!(s.rate("c", 14 * sec, 5), None);
        s.retain(|k| k != "c");
        assert_eq!(s.rate("c", 15 * sec, 10), None);
    }

    #[test]
    fn memory_and_swap_in_cri_terms() {
        let m = MemoryStats {
            usage: 100,
            working_set: 60,
            rss: 40,
            swap: Some(5),
            limit: Some(1000),
            memsw_limit: Some(1500),
            page_faults: 7,
            major_page_faults: 1,
            ..MemoryStats::default()
        };
        let u = memory_usage(9, Some(&m));
        assert_eq!(u.available_bytes, value(940));
        assert_eq!(u.working_set_bytes, value(60));
        assert_eq!(u.major_page_faults, value(1));
        let s = swap_usage(9, Some(&m)).unwrap();
        assert_eq!(s.swap_available_bytes, value(495));
        assert_eq!(s.swap_usage_bytes, value(5));
        // Unlimited: nothing available to report; no cgroup: no values.
        let m = MemoryStats { limit: None, ..m };
        assert_eq!(memory_usage(9, Some(&m)).available_bytes, None);
        assert_eq!(
            memory_usage(9, None),
            MemoryUsage {
                timestamp: 9,
                ..MemoryUsage::default()
            }
        );
        let a = CgroupStats {
            memory: Some(m.clone()),
            pids: Some(PidsStats {
                current: 2,
                limit: None,
            }),
            ..CgroupStats::default()
        };
        let total = sum(&[&a, &a]).unwrap();
        assert_eq!(total.memory.unwrap().usage, 200);
        assert_eq!(total.pids.unwrap().current, 4);
        assert!(total.cpu.is_none());
        assert!(sum(&[]).is_none());
    }
}

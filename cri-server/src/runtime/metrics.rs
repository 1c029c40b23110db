//! ListMetricDescriptors and ListPodSandboxMetrics: the cAdvisor metrics
//! kubelet serves on /metrics/cadvisor when it takes pod and container
//! stats from the CRI, filled from the same readings as the stats calls
//! (the container's cgroup, processes and writable layer; the pod's
//! network namespace). Labels: `id`, `name` and `image` of the container
//! (of the pod for network metrics, image empty), then the metric's own.
//! Values are integers, as the CRI has them: seconds are whole seconds.
//! Not reported: hugetlb, pressure, ulimits and the memory reservation,
//! which critest lists as not required.

use crius_proto::cri::{
    ContainerMetrics, ListMetricDescriptorsRequest, ListMetricDescriptorsResponse,
    ListPodSandboxMetricsRequest, ListPodSandboxMetricsResponse, Metric, MetricDescriptor,
    MetricType, PodSandboxMetrics, UInt64Value,
};
use crius_proto::usage::{ContainerUsage, NetInterface};

use super::Runtime;
use crate::error::Error;
use crate::store::{ContainerPhase, ContainerRecord, PodRecord, PodState};

const BASE_LABELS: [&str; 3] = ["id", "name", "image"];

struct Desc {
    name: &'static str,
    help: &'static str,
    /// Label keys after the base ones.
    labels: &'static [&'static str],
    kind: MetricType,
}

const fn counter(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Desc {
    Desc {
        name,
        help,
        labels,
        kind: MetricType::Counter,
    }
}

const fn gauge(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Desc {
    Desc {
        name,
        help,
        labels,
        kind: MetricType::Gauge,
    }
}

const NET: &[&str] = &["interface"];
const DEVICE: &[&str] = &["device"];

const DESCRIPTORS: &[Desc] = &[
    // CPU
    counter(
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        &["cpu"],
    ),
    counter(
        "container_cpu_user_seconds_total",
        "Cumulative user cpu time consumed in seconds.",
        &[],
    ),
    counter(
        "container_cpu_system_seconds_total",
        "Cumulative system cpu time consumed in seconds.",
        &[],
    ),
    counter(
        "container_cpu_cfs_periods_total",
        "Number of elapsed enforcement period intervals.",
        &[],
    ),
    counter(
        "container_cpu_cfs_throttled_periods_total",
        "Number of throttled period intervals.",
        &[],
    ),
    counter(
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled.",
        &[],
    ),
    // Memory
    gauge(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        &[],
    ),
    gauge(
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        &[],
    ),
    gauge("container_memory_rss", "Size of RSS in bytes.", &[]),
    gauge(
        "container_memory_cache",
        "Number of bytes of page cache memory.",
        &[],
    ),
    gauge(
        "container_memory_mapped_file",
        "Size of memory mapped files in bytes.",
        &[],
    ),
    gauge(
        "container_memory_kernel_usage",
        "Size of kernel memory allocated in bytes.",
        &[],
    ),
    gauge(
        "container_memory_swap",
        "Container swap usage in bytes.",
        &[],
    ),
    gauge(
        "container_memory_max_usage_bytes",
        "Maximum memory usage recorded in bytes.",
        &[],
    ),
    counter(
        "container_memory_failcnt",
        "Number of memory usage hits limits.",
        &[],
    ),
    counter(
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures.",
        &["failure_type", "scope"],
    ),
    counter(
        "container_oom_events_total",
        "Count of out of memory events observed for the container.",
        &[],
    ),
    // Processes
    gauge(
        "container_processes",
        "Number of processes running inside the container.",
        &[],
    ),
    gauge(
        "container_threads",
        "Number of threads running inside the container.",
        &[],
    ),
    gauge(
        "container_threads_max",
        "Maximum number of threads allowed inside the container, infinity if value is zero.",
        &[],
    ),
    gauge(
        "container_file_descriptors",
        "Number of open file descriptors for the container.",
        &[],
    ),
    gauge(
        "container_sockets",
        "Number of open sockets for the container.",
        &[],
    ),
    // Filesystem: the writable layer and the filesystem it is on; block I/O.
    gauge(
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container's writable layer.",
        &[],
    ),
    gauge(
        "container_fs_limit_bytes",
        "Number of bytes that can be consumed by the container on this filesystem.",
        &[],
    ),
    gauge(
        "container_fs_inodes_total",
        "Number of inodes of the filesystem of the writable layer.",
        &[],
    ),
    gauge(
        "container_fs_inodes_free",
        "Number of available inodes of the filesystem of the writable layer.",
        &[],
    ),
    counter(
        "container_fs_reads_bytes_total",
        "Cumulative count of bytes read.",
        DEVICE,
    ),
    counter(
        "container_fs_writes_bytes_total",
        "Cumulative count of bytes written.",
        DEVICE,
    ),
    counter(
        "container_fs_reads_total",
        "Cumulative count of reads completed.",
        DEVICE,
    ),
    counter(
        "container_fs_writes_total",
        "Cumulative count of writes completed.",
        DEVICE,
    ),
    counter(
        "container_blkio_device_usage_total",
        "Blkio device bytes usage.",
        &["device", "major", "minor", "operation"],
    ),
    // Settings
    gauge(
        "container_spec_cpu_period",
        "CPU period of the container, in microseconds.",
        &[],
    ),
    gauge(
        "container_spec_cpu_quota",
        "CPU quota of the container, in microseconds.",
        &[],
    ),
    gauge(
        "container_spec_cpu_shares",
        "CPU share of the container.",
        &[],
    ),
    gauge(
        "container_spec_memory_limit_bytes",
        "Memory limit for the container, zero if unlimited.",
        &[],
    ),
    gauge(
        "container_spec_memory_swap_limit_bytes",
        "Memory and swap limit for the container, zero if unlimited.",
        &[],
    ),
    // Times
    gauge(
        "container_last_seen",
        "Last time a container was seen by the exporter.",
        &[],
    ),
    gauge(
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        &[],
    ),
    // Network (the pod's)
    counter(
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        NET,
    ),
    counter(
        "container_network_receive_packets_total",
        "Cumulative count of packets received.",
        NET,
    ),
    counter(
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving.",
        NET,
    ),
    counter(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
        NET,
    ),
    counter(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        NET,
    ),
    counter(
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted.",
        NET,
    ),
    counter(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting.",
        NET,
    ),
    counter(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
        NET,
    ),
];

const NS_PER_S: u64 = 1_000_000_000;

/// Metrics of one object, all with the same base labels.
struct Out {
    base: [String; 3],
    metrics: Vec<Metric>,
}

impl Out {
    fn new(id: &str, name: &str, image: &str) -> Out {
        Out {
            base: [id.to_string(), name.to_string(), image.to_string()],
            metrics: Vec::new(),
        }
    }

    fn put(&mut self, name: &'static str, value: u64, labels: &[&str]) {
        let Some(d) = DESCRIPTORS.iter().find(|d| d.name == name) else {
            debug_assert!(false, "metric {name} has no descriptor");
            return;
        };
        debug_assert_eq!(d.labels.len(), labels.len(), "labels of {name}");
        self.metrics.push(Metric {
            name: name.to_string(),
            // Gathered live.
            timestamp: 0,
            metric_type: d.kind as i32,
            label_values: self
                .base
                .iter()
                .cloned()
                .chain(labels.iter().map(|l| l.to_string()))
                .collect(),
            value: Some(UInt64Value { value }),
        });
    }
}

fn container_metrics(c: &ContainerRecord, u: &ContainerUsage) -> Vec<Metric> {
    let name = c
        .config
        .metadata
        .as_ref()
        .map(|m| m.name.as_str())
        .unwrap_or_default();
    let mut o = Out::new(&c.id, name, &c.image_name);
    let secs = |ns: i64| u64::try_from(ns).unwrap_or(0) / NS_PER_S;
    o.put("container_last_seen", secs(u.timestamp), &[]);
    let started = if c.started_at > 0 {
        c.started_at
    } else {
        c.created_at
    };
    o.put("container_start_time_seconds", secs(started), &[]);
    let cg = u.cgroup.clone().unwrap_or_default();
    if let Some(cpu) = &cg.cpu {
        o.put(
            "container_cpu_usage_seconds_total",
            cpu.usage_ns / NS_PER_S,
            &["total"],
        );
        o.put(
            "container_cpu_user_seconds_total",
            cpu.user_ns / NS_PER_S,
            &[],
        );
        o.put(
            "container_cpu_system_seconds_total",
            cpu.system_ns / NS_PER_S,
            &[],
        );
        o.put("container_cpu_cfs_periods_total", cpu.periods, &[]);
        o.put(
            "container_cpu_cfs_throttled_periods_total",
            cpu.throttled_periods,
            &[],
        );
        o.put(
            "container_cpu_cfs_throttled_seconds_total",
            cpu.throttled_ns / NS_PER_S,
            &[],
        );
        if let Some(p) = cpu.period_us {
            o.put("container_spec_cpu_period", p, &[]);
        }
        if let Some(q) = cpu.quota_us {
            o.put("container_spec_cpu_quota", q, &[]);
        }
        if let Some(s) = cpu.shares {
            o.put("container_spec_cpu_shares", s, &[]);
        }
    }
    if let Some(m) = &cg.memory {
        o.put("container_memory_usage_bytes", m.usage, &[]);
        o.put("container_memory_working_set_bytes", m.working_set, &[]);
        o.put("container_memory_rss", m.rss, &[]);
        o.put("container_memory_cache", m.cache, &[]);
        o.put("container_memory_mapped_file", m.mapped_file, &[]);
        if let Some(k) = m.kernel {
            o.put("container_memory_kernel_usage", k, &[]);
        }
        if let Some(s) = m.swap {
            o.put("container_memory_swap", s, &[]);
        }
        if let Some(mx) = m.max_usage {
            o.put("container_memory_max_usage_bytes", mx, &[]);
        }
        o.put("container_memory_failcnt", m.failcnt, &[]);
        for (kind, scope, v) in [
            ("pgfault", "container", m.local_page_faults),
            ("pgfault", "hierarchy", m.page_faults),
            ("pgmajfault", "container", m.local_major_page_faults),
            ("pgmajfault", "hierarchy", m.major_page_faults),
        ] {
            o.put("container_memory_failures_total", v, &[kind, scope]);
        }
        o.put("container_oom_events_total", m.oom_kills, &[]);
        o.put(
            "container_spec_memory_limit_bytes",
            m.limit.unwrap_or(0),
            &[],
        );
        o.put(
            "container_spec_memory_swap_limit_bytes",
            m.memsw_limit.unwrap_or(0),
            &[],
        );
    }
    if let Some(p) = &u.processes {
        o.put("container_processes", p.processes, &[]);
        o.put("container_threads", p.threads, &[]);
        o.put("container_file_descriptors", p.fds, &[]);
        o.put("container_sockets", p.sockets, &[]);
    }
    if let Some(p) = &cg.pids {
        o.put("container_threads_max", p.limit.unwrap_or(0), &[]);
    }
    for io in &cg.io {
        let dev = io.device.clone();
        let (major, minor) = (io.major.to_string(), io.minor.to_string());
        o.put("container_fs_reads_bytes_total", io.read_bytes, &[&dev]);
        o.put("container_fs_writes_bytes_total", io.write_bytes, &[&dev]);
        o.put("container_fs_reads_total", io.reads, &[&dev]);
        o.put("container_fs_writes_total", io.writes, &[&dev]);
        for (op, v) in [("read", io.read_bytes), ("write", io.write_bytes)] {
            o.put(
                "container_blkio_device_usage_total",
                v,
                &[&dev, &major, &minor, op],
            );
        }
    }
    if let Some(l) = &u.layer {
        o.put("container_fs_usage_bytes", l.usage.bytes, &[]);
        if let Some(fs) = &l.fs {
            o.put("container_fs_limit_bytes", fs.capacity_bytes, &[]);
            o.put("container_fs_inodes_total", fs.inodes, &[]);
            o.put("container_fs_inodes_free", fs.inodes_free, &[]);
        }
    }
    o.metrics
}

fn pod_metrics(pod: &PodRecord, network: &[NetInterface]) -> Vec<Metric> {
    let name = pod
        .config
        .metadata
        .as_ref()
        .map(|m| m.name.as_str())
        .unwrap_or_default();
    let mut o = Out::new(&pod.id, name, "");
    for i in network {
        let n = [i.name.as_str()];
        o.put("container_network_receive_bytes_total", i.rx_bytes, &n);
        o.put("container_network_receive_packets_total", i.rx_packets, &n);
        o.put(
            "container_network_receive_packets_dropped_total",
            i.rx_dropped,
            &n,
        );
        o.put("container_network_receive_errors_total", i.rx_errors, &n);
        o.put("container_network_transmit_bytes_total", i.tx_bytes, &n);
        o.put("container_network_transmit_packets_total", i.tx_packets, &n);
        o.put(
            "container_network_transmit_packets_dropped_total",
            i.tx_dropped,
            &n,
        );
        o.put("container_network_transmit_errors_total", i.tx_errors, &n);
    }
    o.metrics
}

impl Runtime {
    pub(super) async fn list_metric_descriptors(
        &self,
        _: ListMetricDescriptorsRequest,
    ) -> Result<ListMetricDescriptorsResponse, Error> {
        Ok(ListMetricDescriptorsResponse {
            descriptors: DESCRIPTORS
                .iter()
                .map(|d| MetricDescriptor {
                    name: d.name.to_string(),
                    help: d.help.to_string(),
                    label_keys: BASE_LABELS
                        .iter()
                        .chain(d.labels)
                        .map(|l| l.to_string())
                        .collect(),
                })
                .collect(),
        })
    }

    /// Metrics of the ready pods and of their created and running
    /// containers.
    pub(super) async fn list_pod_sandbox_metrics(
        &self,
        _: ListPodSandboxMetricsRequest,
    ) -> Result<ListPodSandboxMetricsResponse, Error> {
        let mut pod_metrics_out = Vec::new();
        for pod in self.store.pods() {
            if pod.state != PodState::Ready {
                continue;
            }
            let ctl = self.controller(&pod.runtime_handler)?;
            let network = match ctl.pod_stats(&pod, false).await {
                Ok(u) => u.network.unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(pod = %pod.id, error = %crate::error::chain(&e), "pod metrics");
                    Vec::new()
                }
            };
            let mut container_metrics_out = Vec::new();
            for c in self.store.containers_of(&pod.id) {
                if !matches!(c.phase, ContainerPhase::Created | ContainerPhase::Running) {
                    continue;
                }
                match ctl.container_stats(&pod, &c, true).await {
                    Ok(u) => container_metrics_out.push(ContainerMetrics {
                        container_id: c.id.clone(),
                        metrics: container_metrics(&c, &u),
                    }),
                    Err(e) => {
                        tracing::warn!(container = %c.id, error = %crate::error::chain(&e), "container metrics")
                    }
                }
            }
            pod_metrics_out.push(PodSandboxMetrics {
                pod_sandbox_id: pod.id.clone(),
                metrics: pod_metrics(&pod, &network),
                container_metrics: container_metrics_out,
            });
        }
        Ok(ListPodSandboxMetricsResponse {
            pod_metrics: pod_metrics_out,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashSet;
    use std::path::PathBuf;

    use crius_proto::cri::{
        ContainerConfig, ContainerMetadata, PodSandboxConfig, PodSandboxMetadata,
    };
    use crius_proto::usage::{
        CgroupStats, CpuStats, DirUsage, FsInfo, IoStats, LayerUsage, MemoryStats, PidsStats,
        ProcessStats,
    };

    use super::*;

    fn record() -> ContainerRecord {
        serde_json::from_value(serde_json::json!({
            "id": "c1", "pod_id": "p1",
            "config": ContainerConfig {
                metadata: Some(ContainerMetadata { name: "web".into(), attempt: 0 }),
                ..ContainerConfig::default()
            },
            "image_name": "busybox", "image_id": "sha256:x", "phase": "running",
            "created_at": 1_000_000_000_i64, "started_at": 3_000_000_000_i64, "pid": 3,
            "exit": null, "log_path": "", "bundle": "/b", "rootfs_mounted": true,
        }))
        .unwrap()
    }

    fn full_usage() -> ContainerUsage {
        ContainerUsage {
            timestamp: 5_500_000_000,
            cgroup: Some(CgroupStats {
                cpu: Some(CpuStats {
                    usage_ns: 2_500_000_000,
                    shares: Some(1024),
                    period_us: Some(100_000),
                    quota_us: Some(20_000),
                    ..CpuStats::default()
                }),
                memory: Some(MemoryStats {
                    usage: 4096,
                    working_set: 2048,
                    kernel: Some(1),
                    swap: Some(0),
                    max_usage: Some(8192),
                    limit: Some(1 << 26),
                    ..MemoryStats::default()
                }),
                pids: Some(PidsStats {
                    current: 1,
                    limit: None,
                }),
                io: vec![IoStats {
                    device: "/dev/sda".into(),
                    major: 8,
                    minor: 0,
                    ..IoStats::default()
                }],
            }),
            processes: Some(ProcessStats {
                processes: 1,
                threads: 1,
                fds: 3,
                sockets: 0,
            }),
            layer: Some(LayerUsage {
                mountpoint: PathBuf::from("/var/lib/crius/containers"),
                usage: DirUsage {
                    bytes: 4096,
                    inodes: 2,
                    complete: true,
                },
                fs: Some(FsInfo::default()),
            }),
        }
    }

    /// Every metric has a descriptor with as many label keys as it has
    /// values, and everything critest requires is there.
    #[test]
    fn metrics_match_their_descriptors() {
        let rt_descs: Vec<MetricDescriptor> = DESCRIPTORS
            .iter()
            .map(|d| MetricDescriptor {
                name: d.name.into(),
                help: d.help.into(),
                label_keys: BASE_LABELS
                    .iter()
                    .chain(d.labels)
                    .map(|s| s.to_string())
                    .collect(),
            })
            .collect();
        let names: HashSet<&str> = DESCRIPTORS.iter().map(|d| d.name).collect();
        assert_eq!(names.len(), DESCRIPTORS.len(), "names are unique");
        let c = record();
        let mut metrics = container_metrics(&c, &full_usage());
        let pod: PodRecord = serde_json::from_value(serde_json::json!({
            "id": "p1",
            "config": PodSandboxConfig {
                metadata: Some(PodSandboxMetadata { name: "pod".into(), ..Default::default() }),
                ..PodSandboxConfig::default()
            },
            "runtime_handler": "", "state": "ready", "created_at": 1, "ips": [],
            "netns": null, "monitor_pid": null, "network_attached": false,
        }))
        .unwrap();
        metrics.extend(pod_metrics(
            &pod,
            &[NetInterface {
                name: "eth0".into(),
                ..NetInterface::default()
            }],
        ));
        let mut seen = HashSet::new();
        for m in &metrics {
            let d = rt_descs.iter().find(|d| d.name == m.name).unwrap();
            assert_eq!(d.label_keys.len(), m.label_values.len(), "{}", m.name);
            seen.insert(m.name.as_str());
        }
        for d in DESCRIPTORS {
            assert!(seen.contains(d.name), "{} not emitted", d.name);
        }
        let get = |n: &str| metrics.iter().find(|m| m.name == n).unwrap();
        let cpu = get("container_cpu_usage_seconds_total");
        assert_eq!(cpu.value.as_ref().unwrap().value, 2);
        assert_eq!(cpu.label_values, ["c1", "web", "busybox", "total"]);
        assert_eq!(cpu.metric_type, MetricType::Counter as i32);
        assert_eq!(
            get("container_start_time_seconds")
                .value
                .as_ref()
                .unwrap()
                .value,
            3
        );
        assert_eq!(
            get("container_network_receive_bytes_total").label_values,
            ["p1", "pod", "", "eth0"]
        );
    }
}

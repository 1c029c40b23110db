//! The changes plugins ask of a container being created, merged in plugin
//! order into one [`Adjustment`]. Two plugins changing the same thing (an
//! annotation, an environment variable, a mount's destination, a resource
//! limit) is a conflict and fails the creation, as in NRI. What crius
//! cannot apply yet (OCI hooks, devices, CDI devices, rlimits, seccomp,
//! namespaces, sysctls, the scheduler, RDT, block I/O classes, pids and
//! device cgroup rules, real-time CPU and kernel memory limits) fails it
//! too, naming the plugin and the field: never silently dropped.

use std::collections::HashMap;

use crate::api::{self, ContainerAdjustment, LinuxResources};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdjustError {
    #[error("plugins {first} and {second} both adjust {field}")]
    Conflict {
        field: String,
        first: String,
        second: String,
    },
    #[error("plugin {plugin} adjusts {field}, which crius does not apply")]
    Unsupported { plugin: String, field: &'static str },
    #[error("plugin {plugin} adjusts {field}: {why}")]
    Invalid {
        plugin: String,
        field: String,
        why: &'static str,
    },
}

/// A mount a plugin adds: a bind mount of `source` at `destination`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    pub destination: String,
    pub source: String,
    pub readonly: bool,
    /// `rshared`, `rslave` or `rprivate` (the default), as given.
    pub propagation: Propagation,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Propagation {
    #[default]
    Private,
    Slave,
    Shared,
}

/// The merged changes, each applied over what the container's config had.
/// `None` in a key/value list removes the key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Adjustment {
    pub annotations: Vec<(String, Option<String>)>,
    pub env: Vec<(String, Option<String>)>,
    /// Mounts added; a later entry replaces one at the same destination.
    pub mounts: Vec<BindMount>,
    /// Destinations whose mounts are removed.
    pub removed_mounts: Vec<String>,
    /// The whole command line, replacing the container's.
    pub args: Option<Vec<String>>,
    pub resources: Resources,
}

/// The resource limits plugins may set, as CRI's
/// `LinuxContainerResources` has them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub memory_limit: Option<i64>,
    pub memory_swap: Option<i64>,
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    pub oom_score_adj: Option<i64>,
    pub hugepage_limits: Vec<(String, u64)>,
    pub unified: Vec<(String, String)>,
}

impl Adjustment {
    pub fn is_empty(&self) -> bool {
        *self == Adjustment::default()
    }
}

/// Merges the plugins' adjustments, in the order given.
#[derive(Default)]
pub struct Merger {
    adjustment: Adjustment,
    /// Who changed what ("env FOO", "memory limit", ...).
    owners: HashMap<String, String>,
}

/// NRI marks a removal with a leading '-' on the key.
fn removal(key: &str) -> (&str, bool) {
    match key.strip_prefix('-') {
        Some(k) => (k, true),
        None => (key, false),
    }
}

fn set<T: AsRef<[u8]>>(v: &Option<T>) -> bool {
    v.as_ref().is_some_and(|b| !b.as_ref().is_empty())
}

impl Merger {
    pub fn finish(self) -> Adjustment {
        self.adjustment
    }

    fn claim(&mut self, plugin: &str, field: String) -> Result<(), AdjustError> {
        match self.owners.get(&field) {
            Some(first) if first != plugin => Err(AdjustError::Conflict {
                field,
                first: first.clone(),
                second: plugin.into(),
            }),
            _ => {
                self.owners.insert(field, plugin.into());
                Ok(())
            }
        }
    }

    /// Adds one plugin's adjustment.
    pub fn add(&mut self, plugin: &str, adj: ContainerAdjustment) -> Result<(), AdjustError> {
        refuse(
            plugin,
            [
                (set(&adj.hooks), "OCI hooks"),
                (!adj.rlimits.is_empty(), "rlimits"),
                (!adj.cdi_devices.is_empty(), "CDI devices"),
            ],
        )?;
        let mut annotations: Vec<_> = adj.annotations.into_iter().collect();
        annotations.sort();
        for (key, value) in annotations {
            let (key, remove) = removal(&key);
            self.claim(plugin, format!("annotation {key}"))?;
            self.adjustment
                .annotations
                .push((key.into(), (!remove).then_some(value)));
        }
        for kv in adj.env {
            let (key, remove) = removal(&kv.key);
            if key.is_empty() || key.contains('=') {
                return Err(AdjustError::Invalid {
                    plugin: plugin.into(),
                    field: format!("env {key:?}"),
                    why: "not a variable name",
                });
            }
            self.claim(plugin, format!("env {key}"))?;
            self.adjustment
                .env
                .push((key.into(), (!remove).then_some(kv.value)));
        }
        for m in adj.mounts {
            let (dest, remove) = removal(&m.destination);
            if !dest.starts_with('/') {
                return Err(AdjustError::Invalid {
                    plugin: plugin.into(),
                    field: format!("mount at {dest:?}"),
                    why: "the destination must be an absolute path",
                });
            }
            self.claim(plugin, format!("mount at {dest}"))?;
            if remove {
                self.adjustment.mounts.retain(|b| b.destination != dest);
                self.adjustment.removed_mounts.push(dest.into());
            } else {
                let mount = bind_mount(plugin, m)?;
                self.adjustment
                    .mounts
                    .retain(|b| b.destination != mount.destination);
                self.adjustment.mounts.push(mount);
            }
        }
        if !adj.args.is_empty() {
            self.claim(plugin, "args".into())?;
            self.adjustment.args = Some(adj.args);
        }
        let Some(linux) = adj.linux else {
            return Ok(());
        };
        refuse(
            plugin,
            [
                (!linux.devices.is_empty(), "devices"),
                (!linux.cgroups_path.is_empty(), "the cgroups path"),
                (set(&linux.io_priority), "the I/O priority"),
                (set(&linux.seccomp_policy), "the seccomp policy"),
                (!linux.namespaces.is_empty(), "namespaces"),
                (!linux.sysctl.is_empty(), "sysctls"),
                (!linux.net_devices.is_empty(), "network devices"),
                (set(&linux.scheduler), "the scheduler"),
                (set(&linux.rdt), "RDT"),
                (set(&linux.memory_policy), "the memory policy"),
            ],
        )?;
        if let Some(oom) = linux.oom_score_adj {
            self.claim(plugin, "oom score adjustment".into())?;
            self.adjustment.resources.oom_score_adj = Some(oom.value);
        }
        if let Some(r) = linux.resources {
            self.resources(plugin, r)?;
        }
        Ok(())
    }

    fn resources(&mut self, plugin: &str, r: LinuxResources) -> Result<(), AdjustError> {
        refuse(
            plugin,
            [
                (set(&r.blockio_class), "the block I/O class"),
                (set(&r.rdt_class), "the RDT class"),
                (!r.devices.is_empty(), "device cgroup rules"),
                (set(&r.pids), "the pids limit"),
            ],
        )?;
        if let Some(m) = r.memory {
            refuse(
                plugin,
                [
                    (m.reservation.is_some(), "the memory reservation"),
                    (m.kernel.is_some(), "the kernel memory limit"),
                    (m.kernel_tcp.is_some(), "the kernel TCP memory limit"),
                    (m.swappiness.is_some(), "swappiness"),
                    (set(&m.disable_oom_killer), "the OOM killer switch"),
                    (set(&m.use_hierarchy), "memory use_hierarchy"),
                ],
            )?;
            if let Some(v) = m.limit {
                self.claim(plugin, "memory limit".into())?;
                self.adjustment.resources.memory_limit = Some(v.value);
            }
            if let Some(v) = m.swap {
                self.claim(plugin, "memory+swap limit".into())?;
                self.adjustment.resources.memory_swap = Some(v.value);
            }
        }
        if let Some(c) = r.cpu {
            refuse(
                plugin,
                [(
                    c.realtime_runtime.is_some() || c.realtime_period.is_some(),
                    "real-time CPU limits",
                )],
            )?;
            let res = &mut self.adjustment.resources;
            let mut claims = Vec::new();
            if let Some(v) = c.shares {
                res.cpu_shares = Some(v.value);
                claims.push("CPU shares");
            }
            if let Some(v) = c.quota {
                res.cpu_quota = Some(v.value);
                claims.push("CPU quota");
            }
            if let Some(v) = c.period {
                res.cpu_period = Some(v.value);
                claims.push("CPU period");
            }
            if !c.cpus.is_empty() {
                res.cpuset_cpus = Some(c.cpus);
                claims.push("cpuset CPUs");
            }
            if !c.mems.is_empty() {
                res.cpuset_mems = Some(c.mems);
                claims.push("cpuset memory nodes");
            }
            for field in claims {
                self.claim(plugin, field.into())?;
            }
        }
        for h in r.hugepage_limits {
            self.claim(plugin, format!("hugepage limit {}", h.page_size))?;
            let res = &mut self.adjustment.resources;
            res.hugepage_limits.retain(|(size, _)| *size != h.page_size);
            res.hugepage_limits.push((h.page_size, h.limit));
        }
        let mut unified: Vec<_> = r.unified.into_iter().collect();
        unified.sort();
        for (key, value) in unified {
            self.claim(plugin, format!("cgroup v2 {key}"))?;
            self.adjustment.resources.unified.push((key, value));
        }
        Ok(())
    }
}

/// Fails with the first of `fields` the plugin set (`true`), by name.
fn refuse<const N: usize>(
    plugin: &str,
    fields: [(bool, &'static str); N],
) -> Result<(), AdjustError> {
    match fields.into_iter().find(|(is, _)| *is) {
        Some((_, field)) => Err(AdjustError::Unsupported {
            plugin: plugin.into(),
            field,
        }),
        None => Ok(()),
    }
}

/// A mount a plugin adds, which crius takes only as a bind mount.
fn bind_mount(plugin: &str, m: api::Mount) -> Result<BindMount, AdjustError> {
    let invalid = |why| AdjustError::Invalid {
        plugin: plugin.into(),
        field: format!("mount at {:?}", m.destination),
        why,
    };
    if !matches!(m.r#type.as_str(), "" | "bind" | "rbind") {
        return Err(invalid("only bind mounts are applied"));
    }
    if !m.source.starts_with('/') {
        return Err(invalid("the source must be an absolute path"));
    }
    let mut mount = BindMount {
        destination: m.destination.clone(),
        source: m.source.clone(),
        readonly: false,
        propagation: Propagation::Private,
    };
    for o in &m.options {
        match o.as_str() {
            "ro" => mount.readonly = true,
            "rw" | "bind" | "rbind" | "private" | "rprivate" => {}
            "slave" | "rslave" => mount.propagation = Propagation::Slave,
            "shared" | "rshared" => mount.propagation = Propagation::Shared,
            _ => {
                return Err(invalid(
                    "an option other than ro, rw, (r)bind and propagation",
                ));
            }
        }
    }
    Ok(mount)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        KeyValue, LinuxContainerAdjustment, LinuxCpu, LinuxMemory, Mount, OptionalInt,
    };

    fn env(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn adjustments_of_two_plugins_merge_in_order() {
        let mut m = Merger::default();
        m.add(
            "10-a",
            ContainerAdjustment {
                env: vec![env("A", "1"), env("-GONE", "")],
                annotations: [("x".to_string(), "y".to_string())].into(),
                args: vec!["/bin/sh".into(), "-c".into(), "true".into()],
                ..Default::default()
            },
        )
        .unwrap();
        m.add(
            "20-b",
            ContainerAdjustment {
                mounts: vec![Mount {
                    destination: "/data".into(),
                    r#type: "bind".into(),
                    source: "/srv/data".into(),
                    options: vec!["rbind".into(), "ro".into(), "rslave".into()],
                }],
                linux: Some(LinuxContainerAdjustment {
                    resources: Some(LinuxResources {
                        memory: Some(LinuxMemory {
                            limit: Some(OptionalInt { value: 1 << 30 }),
                            ..Default::default()
                        }),
                        cpu: Some(LinuxCpu {
                            cpus: "0-1".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    oom_score_adj: Some(OptionalInt { value: 500 }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .unwrap();
        let a = m.finish();
        assert_eq!(
            a.env,
            vec![("A".into(), Some("1".into())), ("GONE".into(), None)]
        );
        assert_eq!(a.annotations, vec![("x".into(), Some("y".into()))]);
        assert_eq!(a.args.as_ref().map(Vec::len), Some(3));
        assert_eq!(
            a.mounts,
            vec![BindMount {
                destination: "/data".into(),
                source: "/srv/data".into(),
                readonly: true,
                propagation: Propagation::Slave,
            }]
        );
        assert_eq!(a.resources.memory_limit, Some(1 << 30));
        assert_eq!(a.resources.cpuset_cpus.as_deref(), Some("0-1"));
        assert_eq!(a.resources.oom_score_adj, Some(500));
    }

    #[test]
    fn two_plugins_changing_one_thing_conflict() {
        let mut m = Merger::default();
        m.add(
            "10-a",
            ContainerAdjustment {
                env: vec![env("A", "1")],
                ..Default::default()
            },
        )
        .unwrap();
        let e = m
            .add(
                "20-b",
                ContainerAdjustment {
                    env: vec![env("-A", "")],
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert_eq!(e.to_string(), "plugins 10-a and 20-b both adjust env A");
    }

    #[test]
    fn what_crius_cannot_apply_is_refused_by_name() {
        let e = Merger::default()
            .add(
                "10-a",
                ContainerAdjustment {
                    rlimits: vec![vec![1]],
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "plugin 10-a adjusts rlimits, which crius does not apply"
        );
        let e = Merger::default()
            .add(
                "10-a",
                ContainerAdjustment {
                    mounts: vec![Mount {
                        destination: "/tmp".into(),
                        r#type: "tmpfs".into(),
                        source: "tmpfs".into(),
                        options: vec![],
                    }],
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("only bind mounts"), "{e}");
        // An empty Hooks message is no hook.
        Merger::default()
            .add(
                "10-a",
                ContainerAdjustment {
                    hooks: Some(Vec::new()),
                    ..Default::default()
                },
            )
            .unwrap();
    }
}

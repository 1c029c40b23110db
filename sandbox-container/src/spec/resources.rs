//! Resources: CPU, memory, hugepages, cgroup v2 unified entries, and the
//! OOM score adjustment.

use std::collections::HashMap;

use crius_proto::cri::LinuxContainerResources;
use oci_spec::runtime::{LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxPids, LinuxResources};

use super::error::{SpecError, quote};
use super::{CgroupMode, HostLimits};

/// Checks a cpuset list such as `0-3,8`.
fn check_cpuset(s: &str, what: &str) -> Result<(), SpecError> {
    let ok = s.len() <= 4096
        && s.split(',').all(|range| {
            let mut ends = range.splitn(2, '-');
            let is_num = |p: Option<&str>| {
                p.is_some_and(|p| {
                    !p.is_empty() && p.len() <= 10 && p.bytes().all(|b| b.is_ascii_digit())
                })
            };
            let lo = ends.next();
            let hi = ends.next();
            is_num(lo) && (hi.is_none() || is_num(hi))
        });
    if !ok {
        return Err(SpecError::invalid(format!("invalid {what} {}", quote(s))));
    }
    Ok(())
}

/// Checks a hugepage size as kubelet writes it: digits and a unit
/// (`2MB`, `1GB`, `64KB`).
fn check_page_size(s: &str) -> Result<(), SpecError> {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    if digits.is_empty()
        || digits.len() > 8
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || !matches!(unit, "KB" | "MB" | "GB" | "TB" | "PB")
    {
        return Err(SpecError::invalid(format!(
            "invalid hugepage size {}",
            quote(s)
        )));
    }
    Ok(())
}

/// Checks a cgroup v2 file name and value from `unified`: a plain file
/// name of the form `controller.knob` (no `/`, no `..`) and a one-line
/// value.
fn check_unified(key: &str, value: &str) -> Result<(), SpecError> {
    let key_ok = !key.is_empty()
        && key.len() <= 256
        && key.contains('.')
        && !key.starts_with('.')
        && !key.contains("..")
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.'));
    if !key_ok {
        return Err(SpecError::invalid(format!(
            "invalid unified cgroup key {}",
            quote(key)
        )));
    }
    if value.len() > 4096 || value.chars().any(|c| matches!(c, '\n' | '\r' | '\0')) {
        return Err(SpecError::invalid(format!(
            "invalid value for unified cgroup key {}",
            quote(key)
        )));
    }
    Ok(())
}

fn non_negative(v: i64, what: &str) -> Result<i64, SpecError> {
    if v < 0 {
        return Err(SpecError::invalid(format!("{what} must not be negative")));
    }
    Ok(v)
}

/// Converts the CRI resources, on top of `devices` rules.
///
/// Zero means unset for every number. `cpu_quota` and
/// `memory_swap_limit_in_bytes` may be -1 (unlimited); any other negative
/// value is an error. The swap limit defaults to the memory limit (no swap)
/// when the host has a swap controller. Hugepage limits are skipped (with a
/// warning) on a host without the hugetlb controller, as containerd's
/// `tolerate_missing_hugetlb_controller` does. `unified` is passed through
/// on cgroup v2; on v1 only `pids.max` is kept (as the pids limit).
pub(crate) fn build(
    r: Option<&LinuxContainerResources>,
    host: &HostLimits,
    devices: Vec<oci_spec::runtime::LinuxDeviceCgroup>,
) -> Result<LinuxResources, SpecError> {
    let mut out = LinuxResources::default();
    out.set_devices(Some(devices));
    let Some(r) = r else { return Ok(out) };

    let mut cpu = LinuxCpu::default();
    let mut cpu_set = false;
    let shares = non_negative(r.cpu_shares, "cpu_shares")?;
    if shares > 0 {
        cpu.set_shares(Some(shares as u64));
        cpu_set = true;
    }
    let period = non_negative(r.cpu_period, "cpu_period")?;
    if period > 0 {
        cpu.set_period(Some(period as u64));
        cpu_set = true;
    }
    if r.cpu_quota < -1 {
        return Err(SpecError::invalid("cpu_quota must not be negative"));
    }
    if r.cpu_quota != 0 {
        cpu.set_quota(Some(r.cpu_quota));
        cpu_set = true;
    }
    if !r.cpuset_cpus.is_empty() {
        check_cpuset(&r.cpuset_cpus, "cpuset_cpus")?;
        cpu.set_cpus(Some(r.cpuset_cpus.clone()));
        cpu_set = true;
    }
    if !r.cpuset_mems.is_empty() {
        check_cpuset(&r.cpuset_mems, "cpuset_mems")?;
        cpu.set_mems(Some(r.cpuset_mems.clone()));
        cpu_set = true;
    }
    if cpu_set {
        out.set_cpu(Some(cpu));
    }

    let mut mem = LinuxMemory::default();
    let limit = non_negative(r.memory_limit_in_bytes, "memory_limit_in_bytes")?;
    if r.memory_swap_limit_in_bytes < -1 {
        return Err(SpecError::invalid(
            "memory_swap_limit_in_bytes must not be negative",
        ));
    }
    if limit > 0 {
        mem.set_limit(Some(limit));
        if r.memory_swap_limit_in_bytes == 0 && host.swap_controller {
            mem.set_swap(Some(limit));
        }
    }
    if r.memory_swap_limit_in_bytes != 0 && host.swap_controller {
        mem.set_swap(Some(r.memory_swap_limit_in_bytes));
    }
    if mem.limit().is_some() || mem.swap().is_some() {
        out.set_memory(Some(mem));
    }

    if !r.hugepage_limits.is_empty() {
        let mut limits = Vec::with_capacity(r.hugepage_limits.len());
        for h in &r.hugepage_limits {
            check_page_size(&h.page_size)?;
            let limit = i64::try_from(h.limit)
                .map_err(|_| SpecError::invalid("hugepage limit is too large"))?;
            let mut l = LinuxHugepageLimit::default();
            l.set_page_size(h.page_size.clone());
            l.set_limit(limit);
            limits.push(l);
        }
        if host.hugetlb {
            out.set_hugepage_limits(Some(limits));
        } else {
            tracing::warn!("hugetlb cgroup controller is missing; hugepage limits skipped");
        }
    }

    if !r.unified.is_empty() {
        let mut unified = HashMap::with_capacity(r.unified.len());
        for (k, v) in &r.unified {
            check_unified(k, v)?;
            unified.insert(k.clone(), v.clone());
        }
        match host.cgroup {
            CgroupMode::V2 => {
                out.set_unified(Some(unified));
            }
            CgroupMode::V1 => {
                if let Some(v) = unified.get("pids.max") {
                    let limit = if v == "max" {
                        -1
                    } else {
                        v.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                            SpecError::invalid(format!("invalid pids.max {}", quote(v)))
                        })?
                    };
                    let mut pids = LinuxPids::default();
                    pids.set_limit(limit);
                    out.set_pids(Some(pids));
                }
                if unified.keys().any(|k| k != "pids.max") {
                    tracing::warn!("unified cgroup entries ignored on cgroup v1");
                }
            }
        }
    }
    Ok(out)
}

/// The OOM score adjustment: the requested value, within -1000..=1000, and
/// never below what this process has (lowering it needs
/// CAP_SYS_RESOURCE). Never an error. `None` when no resources are given
/// (the process inherits the monitor's).
pub(crate) fn oom_score_adj(r: Option<&LinuxContainerResources>, host: &HostLimits) -> Option<i32> {
    let r = r?;
    let adj = r.oom_score_adj.clamp(-1000, 1000) as i32;
    Some(adj.max(host.min_oom_score_adj.clamp(-1000, 1000)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crius_proto::cri::HugepageLimit;

    fn host() -> HostLimits {
        HostLimits {
            swap_controller: true,
            ..HostLimits::default()
        }
    }

    #[test]
    fn cpu_and_memory() {
        let r = LinuxContainerResources {
            cpu_shares: 512,
            cpu_period: 100000,
            cpu_quota: 50000,
            cpuset_cpus: "0-1,3".into(),
            cpuset_mems: "0".into(),
            memory_limit_in_bytes: 1 << 20,
            ..Default::default()
        };
        let out = build(Some(&r), &host(), vec![]).unwrap();
        let cpu = out.cpu().as_ref().unwrap();
        assert_eq!(cpu.shares(), Some(512));
        assert_eq!(cpu.period(), Some(100000));
        assert_eq!(cpu.quota(), Some(50000));
        assert_eq!(cpu.cpus().as_deref(), Some("0-1,3"));
        let mem = out.memory().as_ref().unwrap();
        assert_eq!(mem.limit(), Some(1 << 20));
        assert_eq!(mem.swap(), Some(1 << 20));

        let mut no_swap = host();
        no_swap.swap_controller = false;
        let out = build(Some(&r), &no_swap, vec![]).unwrap();
        assert_eq!(out.memory().as_ref().unwrap().swap(), None);

        let r2 = LinuxContainerResources {
            memory_limit_in_bytes: 1 << 20,
            memory_swap_limit_in_bytes: -1,
            cpu_quota: -1,
            ..Default::default()
        };
        let out = build(Some(&r2), &host(), vec![]).unwrap();
        assert_eq!(out.memory().as_ref().unwrap().swap(), Some(-1));
        assert_eq!(out.cpu().as_ref().unwrap().quota(), Some(-1));

        let out = build(None, &host(), vec![]).unwrap();
        assert!(out.cpu().is_none() && out.memory().is_none());
        assert_eq!(out.devices().as_ref().map(Vec::len), Some(0));
    }

    #[test]
    fn negative_values_are_errors() {
        for r in [
            LinuxContainerResources {
                cpu_shares: -1,
                ..Default::default()
            },
            LinuxContainerResources {
                cpu_period: -1,
                ..Default::default()
            },
            LinuxContainerResources {
                cpu_quota: -2,
                ..Default::default()
            },
            LinuxContainerResources {
                memory_limit_in_bytes: -1,
                ..Default::default()
            },
            LinuxContainerResources {
                memory_swap_limit_in_bytes: -2,
                ..Default::default()
            },
            LinuxContainerResources {
                cpuset_cpus: "0-a".into(),
                ..Default::default()
            },
            LinuxContainerResources {
                cpuset_mems: "-1".into(),
                ..Default::default()
            },
        ] {
            assert!(
                matches!(build(Some(&r), &host(), vec![]), Err(SpecError::Invalid(_))),
                "{r:?}"
            );
        }
    }

    #[test]
    fn hugepages() {
        let r = LinuxContainerResources {
            hugepage_limits: vec![
                HugepageLimit {
                    page_size: "2MB".into(),
                    limit: 0,
                },
                HugepageLimit {
                    page_size: "1GB".into(),
                    limit: 1 << 30,
                },
            ],
            ..Default::default()
        };
        let out = build(Some(&r), &host(), vec![]).unwrap();
        let h = out.hugepage_limits().as_ref().unwrap();
        assert_eq!(h[1].page_size(), "1GB");
        assert_eq!(h[1].limit(), 1 << 30);

        let mut no_hugetlb = host();
        no_hugetlb.hugetlb = false;
        let out = build(Some(&r), &no_hugetlb, vec![]).unwrap();
        assert!(out.hugepage_limits().is_none());

        for bad in ["2M", "MB", "2mb", "../2MB", "99999999999MB"] {
            let r = LinuxContainerResources {
                hugepage_limits: vec![HugepageLimit {
                    page_size: bad.into(),
                    limit: 0,
                }],
                ..Default::default()
            };
            assert!(build(Some(&r), &host(), vec![]).is_err(), "{bad}");
        }
        let r = LinuxContainerResources {
            hugepage_limits: vec![HugepageLimit {
                page_size: "2MB".into(),
                limit: u64::MAX,
            }],
            ..Default::default()
        };
        assert!(build(Some(&r), &host(), vec![]).is_err());
    }

    #[test]
    fn unified_by_cgroup_mode() {
        let r = LinuxContainerResources {
            unified: HashMap::from([
                ("memory.high".to_string(), "1000000".to_string()),
                ("pids.max".to_string(), "100".to_string()),
            ]),
            ..Default::default()
        };
        let out = build(Some(&r), &host(), vec![]).unwrap();
        assert_eq!(out.unified().as_ref().unwrap().len(), 2);
        assert!(out.pids().is_none());

        let v1 = HostLimits {
            cgroup: CgroupMode::V1,
            ..host()
        };
        let out = build(Some(&r), &v1, vec![]).unwrap();
        assert!(out.unified().is_none());
        assert_eq!(out.pids().unwrap().limit(), 100);

        for (k, v) in [
            ("../x", "1"),
            ("memory/high", "1"),
            ("memory.high", "1\n2"),
            ("nodot", "1"),
        ] {
            let r = LinuxContainerResources {
                unified: HashMap::from([(k.to_string(), v.to_string())]),
                ..Default::default()
            };
            assert!(build(Some(&r), &host(), vec![]).is_err(), "{k}");
        }
    }

    #[test]
    fn oom_clamp() {
        let h = HostLimits {
            min_oom_score_adj: -500,
            ..host()
        };
        let r = |v| LinuxContainerResources {
            oom_score_adj: v,
            ..Default::default()
        };
        assert_eq!(oom_score_adj(Some(&r(-999)), &h), Some(-500));
        assert_eq!(oom_score_adj(Some(&r(-500)), &h), Some(-500));
        assert_eq!(oom_score_adj(Some(&r(100)), &h), Some(100));
        assert_eq!(oom_score_adj(Some(&r(5000)), &h), Some(1000));
        assert_eq!(oom_score_adj(Some(&r(i64::MIN)), &h), Some(-500));
        assert_eq!(oom_score_adj(None, &h), None);
        let h = HostLimits {
            min_oom_score_adj: 0,
            ..host()
        };
        assert_eq!(oom_score_adj(Some(&r(-997)), &h), Some(0));
    }
}

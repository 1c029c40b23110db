//! Applying new resource limits to a running container's cgroup
//! (UpdateContainerResources), on cgroup v1 (and this host's hybrid
//! layout) and v2. Only what the request sets is written; zero means
//! "leave as is", as the CRI says.

use std::fs;
use std::io;
use std::path::Path;

use crius_proto::usage::Limits;

use crate::stats::Cgroups;

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("cgroup {0} does not exist")]
    NoCgroup(String),
    #[error("{0}")]
    Invalid(String),
    #[error("write {path}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// A value that may go into a cgroup file: no newline, NUL, `/` tricks.
fn safe(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 256
        && v.chars().all(|c| c.is_ascii_graphic() || c == ' ')
        && !v.contains('/')
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), UpdateError> {
    let path = dir.join(file);
    fs::write(&path, value).map_err(|source| UpdateError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Converts v1 cpu shares (2..262144) to a v2 cpu.weight (1..10000), as
/// runc does.
fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

/// Applies `l` to `cgroup` (a path relative to the hierarchy roots).
pub fn apply(cgroups: &Cgroups, cgroup: &Path, l: &Limits) -> Result<(), UpdateError> {
    for v in [&l.cpuset_cpus, &l.cpuset_mems] {
        if !v.is_empty()
            && !v
                .chars()
                .all(|c| c.is_ascii_digit() || c == ',' || c == '-')
        {
            return Err(UpdateError::Invalid(format!(
                "cpuset {v:?} is not a CPU or node list"
            )));
        }
    }
    for (size, _) in &l.hugepages {
        if !size.chars().all(|c| c.is_ascii_alphanumeric()) || size.is_empty() {
            return Err(UpdateError::Invalid(format!(
                "hugepage size {size:?} is not valid"
            )));
        }
    }
    let dir = |controller: &str| -> Result<std::path::PathBuf, UpdateError> {
        cgroups
            .dir(controller, cgroup)
            .filter(|d| d.is_dir())
            .ok_or_else(|| UpdateError::NoCgroup(cgroup.display().to_string()))
    };
    if cgroups.is_unified() {
        let d = dir("")?;
        if l.cpu_shares > 0 {
            write(
                &d,
                "cpu.weight",
                &shares_to_weight(l.cpu_shares).to_string(),
            )?;
        }
        if l.cpu_quota != 0 || l.cpu_period > 0 {
            let quota = if l.cpu_quota > 0 {
                l.cpu_quota.to_string()
            } else {
                "max".to_string()
            };
            let period = if l.cpu_period > 0 {
                l.cpu_period
            } else {
                100_000
            };
            write(&d, "cpu.max", &format!("{quota} {period}"))?;
        }
        if l.memory > 0 {
            write(&d, "memory.max", &l.memory.to_string())?;
        }
        if !l.cpuset_cpus.is_empty() {
            write(&d, "cpuset.cpus", &l.cpuset_cpus)?;
        }
        if !l.cpuset_mems.is_empty() {
            write(&d, "cpuset.mems", &l.cpuset_mems)?;
        }
        for (size, limit) in &l.hugepages {
            write(&d, &format!("hugetlb.{size}.max"), &limit.to_string())?;
        }
        for (file, value) in &l.unified {
            let name_ok = file.split('.').count() >= 2
                && file
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_');
            if !name_ok || !safe(value) {
                return Err(UpdateError::Invalid(format!(
                    "unified entry {file:?} = {value:?} is not valid"
                )));
            }
            write(&d, file, value)?;
        }
        return Ok(());
    }
    if !l.unified.is_empty() {
        return Err(UpdateError::Invalid(
            "unified resources need cgroup v2".into(),
        ));
    }
    if l.cpu_shares > 0 {
        write(&dir("cpu")?, "cpu.shares", &l.cpu_shares.to_string())?;
    }
    if l.cpu_period > 0 {
        write(&dir("cpu")?, "cpu.cfs_period_us", &l.cpu_period.to_string())?;
    }
    if l.cpu_quota != 0 {
        write(&dir("cpu")?, "cpu.cfs_quota_us", &l.cpu_quota.to_string())?;
    }
    if !l.cpuset_cpus.is_empty() {
        write(&dir("cpuset")?, "cpuset.cpus", &l.cpuset_cpus)?;
    }
    if !l.cpuset_mems.is_empty() {
        write(&dir("cpuset")?, "cpuset.mems", &l.cpuset_mems)?;
    }
    if l.memory > 0 {
        write(
            &dir("memory")?,
            "memory.limit_in_bytes",
            &l.memory.to_string(),
        )?;
    }
    for (size, limit) in &l.hugepages {
        write(
            &dir("hugetlb")?,
            &format!("hugetlb.{size}.limit_in_bytes"),
            &limit.to_string(),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_v1_files_and_refuses_bad_values() {
        let t = tempfile::tempdir().unwrap();
        for c in ["cpu,cpuacct", "memory", "cpuset"] {
            fs::create_dir_all(t.path().join(c).join("pod/c1")).unwrap();
        }
        let cg = Cgroups::at(t.path());
        let l = Limits {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory: 64 << 20,
            cpuset_cpus: "0".into(),
            ..Default::default()
        };
        apply(&cg, Path::new("/pod/c1"), &l).unwrap();
        let read =
            |c: &str, f: &str| fs::read_to_string(t.path().join(c).join("pod/c1").join(f)).unwrap();
        assert_eq!(read("cpu,cpuacct", "cpu.shares"), "512");
        assert_eq!(read("cpu,cpuacct", "cpu.cfs_quota_us"), "50000");
        assert_eq!(
            read("memory", "memory.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
        assert_eq!(read("cpuset", "cpuset.cpus"), "0");
        let bad = Limits {
            cpuset_cpus: "0\n1".into(),
            ..Default::default()
        };
        assert!(matches!(
            apply(&cg, Path::new("/pod/c1"), &bad),
            Err(UpdateError::Invalid(_))
        ));
        assert!(matches!(
            apply(&cg, Path::new("/pod/missing"), &l),
            Err(UpdateError::NoCgroup(_))
        ));
        assert!(apply(&cg, Path::new("/../etc"), &l).is_err());
    }

    #[test]
    fn shares_map_to_weights() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
    }
}

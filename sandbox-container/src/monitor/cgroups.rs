//! What is read and done in cgroups directly, not through libcontainer:
//! the OOM kill counter of a container's, signalling every process
//! (real-time signals too, which libcontainer's kill does not take, and
//! without marking the container stopped as libcontainer's kill does),
//! moving a process in (crius, a pod's processes into the pod's own
//! cgroup) and removing a cgroup.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use super::sys;

use crate::cgroup_mounts::CgroupMounts;
use crate::cgroup_mounts::relative;

impl CgroupMounts {
    /// Moves process `pid` into `cgroup` in every hierarchy (v1 ones,
    /// named ones such as `name=systemd` among them, and the cgroup2
    /// mount), making it where missing; a v1 cpuset directory made here
    /// (or found without CPUs) gets its parent's CPUs and memory nodes, as
    /// the kernel requires before anything joins it. Where a hierarchy
    /// refuses, the others are still joined and the first error returned.
    pub fn enter(&self, cgroup: &Path, pid: u32) -> io::Result<()> {
        if !is_container_cgroup(cgroup) {
            return Err(io::Error::other(format!(
                "refusing cgroup path {}",
                cgroup.display()
            )));
        }
        let pid = pid.to_string();
        let mut first_error = None;
        let hierarchies = self
            .v1()
            .iter()
            .map(|(controllers, mnt)| (controllers.iter().any(|c| c == "cpuset"), mnt.as_path()))
            .chain(self.v2().map(|mnt| (false, mnt)));
        for (cpuset, mnt) in hierarchies {
            let joined = make_cgroup(mnt, relative(cgroup), cpuset)
                .and_then(|dir| std::fs::write(dir.join("cgroup.procs"), &pid))
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", mnt.display())));
            if let Err(e) = joined {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Removes `cgroup` from every hierarchy; a missing directory is fine.
    /// Processes still in it (killed ones not yet gone) are SIGKILLed and
    /// the removal retried for up to [`REMOVE_WAIT`].
    pub fn remove(&self, cgroup: &Path) -> io::Result<()> {
        if !is_container_cgroup(cgroup) {
            return Err(io::Error::other(format!(
                "refusing cgroup path {}",
                cgroup.display()
            )));
        }
        let dirs = self
            .v1()
            .iter()
            .map(|(_, mnt)| mnt.join(relative(cgroup)))
            .chain(self.v2_dir(cgroup));
        for dir in dirs {
            remove_dir(&dir)?;
        }
        Ok(())
    }

    /// Whether the memory controller of `cgroup` recorded an OOM kill.
    pub fn oom_killed(&self, cgroup: &Path) -> bool {
        if !is_container_cgroup(cgroup) {
            return false;
        }
        let (file, dir) = if self.is_v1() {
            ("memory.oom_control", self.v1_dir("memory", cgroup))
        } else {
            ("memory.events", self.v2_dir(cgroup))
        };
        let Some(dir) = dir else { return false };
        match std::fs::read_to_string(dir.join(file)) {
            Ok(s) => oom_kill_count(&s) > 0,
            Err(e) => {
                tracing::debug!("reading {file} of {}: {e}", cgroup.display());
                false
            }
        }
    }

    /// Sends `signal` to every process in `cgroup`, freezing it meanwhile
    /// where a freezer is available (so nothing forks past the signal).
    pub fn kill_all(&self, cgroup: &Path, signal: i32) -> io::Result<()> {
        if !is_container_cgroup(cgroup) {
            return Err(io::Error::other(format!(
                "refusing cgroup path {}",
                cgroup.display()
            )));
        }
        if self.is_v1() {
            let freezer = self.v1_dir("freezer", cgroup);
            let procs_dir = freezer
                .clone()
                .or_else(|| self.v1_dir("pids", cgroup))
                .or_else(|| self.v1_dir("memory", cgroup))
                .ok_or_else(|| io::Error::other("no cgroup v1 hierarchy for the container"))?;
            let frozen = freezer.as_deref().is_some_and(|f| freeze_v1(f, true));
            let r = signal_procs(&procs_dir, signal, frozen);
            if frozen && let Some(f) = &freezer {
                freeze_v1(f, false);
            }
            r
        } else {
            let dir = self
                .v2_dir(cgroup)
                .ok_or_else(|| io::Error::other("no cgroup2 mount"))?;
            if signal == libc::SIGKILL && std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
                return Ok(());
            }
            let frozen = freeze_v2(&dir, true);
            let r = signal_procs(&dir, signal, frozen);
            if frozen {
                freeze_v2(&dir, false);
            }
            r
        }
    }
}

/// Makes `rel` under the hierarchy mounted at `mnt`, a directory at a
/// time; with `cpuset`, each one without CPUs or memory nodes gets its
/// parent's.
fn make_cgroup(mnt: &Path, rel: &Path, cpuset: bool) -> io::Result<std::path::PathBuf> {
    let mut dir = mnt.to_path_buf();
    for part in rel.components() {
        let parent = dir.clone();
        dir.push(part);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        if cpuset {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let own = std::fs::read_to_string(dir.join(file))?;
                if own.trim().is_empty() {
                    std::fs::write(dir.join(file), std::fs::read_to_string(parent.join(file))?)?;
                }
            }
        }
    }
    Ok(dir)
}

/// Never act on a hierarchy's root (an empty path would signal every
/// process of the host) nor outside it.
fn is_container_cgroup(cgroup: &Path) -> bool {
    use std::path::Component;
    let rel = relative(cgroup);
    rel.components().next().is_some() && rel.components().all(|c| matches!(c, Component::Normal(_)))
}

fn oom_kill_count(s: &str) -> u64 {
    s.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn read_procs(dir: &Path) -> io::Result<Vec<i32>> {
    Ok(std::fs::read_to_string(dir.join("cgroup.procs"))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// Signals the processes of `dir`; when not frozen, repeats a few times
/// to catch processes forked meanwhile.
fn signal_procs(dir: &Path, signal: i32, frozen: bool) -> io::Result<()> {
    let rounds = if frozen { 1 } else { 3 };
    let mut seen = std::collections::HashSet::new();
    for _ in 0..rounds {
        let mut new = false;
        for pid in read_procs(dir)? {
            if seen.insert(pid) {
                new = true;
                match sys::kill_raw(pid, signal) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if !new {
            break;
        }
    }
    Ok(())
}

/// How long [`CgroupMounts::remove`] waits for a cgroup to empty.
const REMOVE_WAIT: Duration = Duration::from_secs(1);

/// Removes one cgroup directory, killing what is left in it (EBUSY) and
/// retrying with a growing pause until [`REMOVE_WAIT`] passes.
fn remove_dir(dir: &Path) -> io::Result<()> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < REMOVE_WAIT => {
                let _ = signal_procs(dir, libc::SIGKILL, false);
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
        }
    }
}

const FREEZE_WAIT: Duration = Duration::from_millis(500);

fn freeze_v1(dir: &Path, freeze: bool) -> bool {
    let state = dir.join("freezer.state");
    let want = if freeze { "FROZEN" } else { "THAWED" };
    if std::fs::write(&state, want).is_err() {
        return false;
    }
    let start = Instant::now();
    while start.elapsed() < FREEZE_WAIT {
        match std::fs::read_to_string(&state) {
            Ok(s) if s.trim() == want => return true,
            Ok(_) => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => return false,
        }
    }
    if freeze {
        // Do not leave it half frozen.
        let _ = std::fs::write(&state, "THAWED");
    }
    false
}

fn freeze_v2(dir: &Path, freeze: bool) -> bool {
    if std::fs::write(dir.join("cgroup.freeze"), if freeze { "1" } else { "0" }).is_err() {
        return false;
    }
    let want = if freeze { "frozen 1" } else { "frozen 0" };
    let start = Instant::now();
    while start.elapsed() < FREEZE_WAIT {
        match std::fs::read_to_string(dir.join("cgroup.events")) {
            Ok(s) if s.lines().any(|l| l == want) => return true,
            Ok(_) => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => return false,
        }
    }
    if freeze {
        let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_counts_and_cgroup_paths() {
        let m = CgroupMounts::from_table(&crate::mountinfo::parse(
            "1 0 0:1 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
        ));
        assert_eq!(
            oom_kill_count("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            2
        );
        assert_eq!(
            oom_kill_count("low 0\nhigh 0\nmax 1\noom 1\noom_kill 0\n"),
            0
        );
        for bad in ["", "/", "/a/../..", "./.."] {
            assert!(!is_container_cgroup(Path::new(bad)), "{bad:?}");
        }
        assert!(is_container_cgroup(Path::new("/kubepods/pod1/c1")));
        assert!(m.kill_all(Path::new("/"), libc::SIGKILL).is_err());
    }
}

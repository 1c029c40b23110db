//! Warming the kernel's cgroup attach lock before a container process is
//! made.
//!
//! Moving a process into a cgroup (a pid written to `cgroup.procs` or
//! `tasks`, v1 or v2) takes the kernel's global `cgroup_threadgroup_rwsem`
//! for writing. The first such writer after a quiet spell waits for an RCU
//! grace period (5 to 8 ms on the test host, more under load); writers
//! within about 15 ms of the last one do not wait. libcontainer's
//! intermediate process makes this move for every container and exec it
//! creates, late in CreateContainer and ExecSync, so each call paid the
//! whole grace period.
//!
//! [`warm`] makes a move that changes nothing (this process into the
//! cgroup it is in) and is called on a blocking thread at the start of
//! those calls: the grace period runs beside the call's own work, and
//! libcontainer's move finds the lock warm. The only cgroup file written is
//! the one of this process's own cgroup; a process moved elsewhere by
//! somebody between the read of `/proc/self/cgroup` and the write (a
//! window of microseconds) would be moved back.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use crate::stats::Cgroups;

/// The host's hierarchies, looked up once (they do not move).
static HOST: std::sync::LazyLock<Cgroups> = std::sync::LazyLock::new(Cgroups::host);

/// Moves this process into the cgroup it is in (see the module doc).
pub fn warm() -> io::Result<()> {
    let own = fs::read_to_string("/proc/self/cgroup")?;
    let procs = procs_file(&HOST, &own).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no cgroup hierarchy of this process",
        )
    })?;
    fs::OpenOptions::new()
        .write(true)
        .open(procs)?
        .write_all(std::process::id().to_string().as_bytes())
}

/// The `cgroup.procs` of this process's cgroup in one of `cgroups`'
/// hierarchies, from the text of `/proc/self/cgroup`.
fn procs_file(cgroups: &Cgroups, proc_self_cgroup: &str) -> Option<PathBuf> {
    proc_self_cgroup.lines().find_map(|line| {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let controller = if cgroups.is_unified() {
            // cgroup2: the "0::<path>" line.
            if !controllers.is_empty() {
                return None;
            }
            ""
        } else {
            // A v1 hierarchy with a controller (not a named one).
            controllers
                .split(',')
                .find(|c| !c.is_empty() && !c.contains('='))?
        };
        let dir = cgroups.dir(controller, Path::new(path))?;
        let procs = dir.join("cgroup.procs");
        procs.is_file().then_some(procs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_procs_file_of_a_v1_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cpu,cpuacct").join("crius/x");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cgroup.procs"), "").unwrap();
        fs::create_dir_all(root.path().join("systemd")).unwrap();
        let cgroups = Cgroups::at(root.path());
        let own = "9:name=systemd:/\n3:cpu,cpuacct:/crius/x\n0::/\n";
        assert_eq!(procs_file(&cgroups, own), Some(dir.join("cgroup.procs")));
        // A hierarchy without the directory is skipped.
        assert_eq!(procs_file(&cgroups, "3:cpu,cpuacct:/gone\n"), None);
    }

    #[test]
    fn finds_the_procs_file_of_cgroup2() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("cgroup.controllers"), "cpu memory").unwrap();
        let dir = root.path().join("system.slice/crius.service");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cgroup.procs"), "").unwrap();
        let cgroups = Cgroups::at(root.path());
        assert_eq!(
            procs_file(&cgroups, "0::/system.slice/crius.service\n"),
            Some(dir.join("cgroup.procs"))
        );
    }

    #[test]
    fn warming_leaves_this_process_where_it_was() {
        if !nix::unistd::geteuid().is_root() {
            sandbox_api::testing::skip(
                "cgroup_warm::warming_leaves_this_process_where_it_was",
                "needs root to write cgroup.procs",
            );
            return;
        }
        let before = fs::read_to_string("/proc/self/cgroup").unwrap();
        warm().unwrap();
        assert_eq!(fs::read_to_string("/proc/self/cgroup").unwrap(), before);
    }
}

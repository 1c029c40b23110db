//! What a test checks is gone once the product cleaned up: mounts under a
//! directory, processes naming it, cgroups and their processes under a
//! cgroup parent. Each reader fails the test when it cannot read what it
//! checks (an unreadable mount table or cgroup tree is not "nothing left").

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Mount points of this mount namespace at `dir` or below it.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .expect("read /proc/self/mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(String::from)
        .collect()
}

/// The processes whose command line names `dir` (a pod's monitor, a VM's
/// processes: their command lines carry the pod's directory).
pub fn processes_naming(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // A process gone meanwhile names nothing.
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

/// Each cgroup hierarchy's directory for `cgroup`: every v1 mount and the
/// cgroup2 one under /sys/fs/cgroup, or the cgroup2 tree that is
/// /sys/fs/cgroup.
fn hierarchy_dirs(cgroup: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.procs").exists() {
        // One cgroup2 tree at the root.
        return vec![root.join(cgroup.trim_start_matches('/'))];
    }
    let dirs: Vec<PathBuf> = fs::read_dir(root)
        .expect("read /sys/fs/cgroup")
        .flatten()
        .filter(|e| e.path().join("cgroup.procs").exists())
        .map(|e| e.path().join(cgroup.trim_start_matches('/')))
        .collect();
    assert!(!dirs.is_empty(), "no cgroup hierarchy under /sys/fs/cgroup");
    dirs
}

/// The entries of `dir`; none when it does not exist.
fn entries(dir: &Path) -> Vec<fs::DirEntry> {
    match fs::read_dir(dir) {
        Ok(d) => d.map(|e| e.expect("read a cgroup directory")).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read {}: {e}", dir.display()),
    }
}

/// The cgroups directly below `parent`, in every hierarchy.
pub fn cgroups_under(parent: &str) -> Vec<String> {
    hierarchy_dirs(parent)
        .iter()
        .flat_map(|d| entries(d))
        .filter(|e| e.path().is_dir())
        .map(|e| e.path().display().to_string())
        .collect()
}

/// The PIDs in any cgroup at or below `parent`, in any hierarchy.
pub fn cgroup_procs(parent: &str) -> Vec<u32> {
    fn walk(dir: &Path, out: &mut Vec<u32>) {
        match fs::read_to_string(dir.join("cgroup.procs")) {
            Ok(s) => out.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => panic!("read {}/cgroup.procs: {e}", dir.display()),
        }
        for e in entries(dir) {
            if e.path().is_dir() {
                walk(&e.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    for d in hierarchy_dirs(parent) {
        walk(&d, &mut out);
    }
    out.sort();
    out.dedup();
    out
}

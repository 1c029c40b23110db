//! What a test checks is gone once the product cleaned up: mounts under a
//! directory, processes naming it, cgroups and their processes under a
//! cgroup parent. Each reader fails the test when it cannot read what it
//! checks (an unreadable mount table or cgroup tree is not "nothing left").
//!
//! And what a killed test process left (its crius died with it, its pods'
//! monitors did not): [`sweep_killed_runs`], run once per test process,
//! removes the crius directories and pod cgroups of test processes that
//! are gone, and nothing else: only directories marked with
//! [`OWNER_FILE`] and cgroups named `crius-e2e-<pid>-...`.

use std::fs;
use std::io;
#[cfg(test)]
use std::os::unix::process::ExitStatusExt as _;
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

/// Each cgroup hierarchy's root: every v1 mount and the cgroup2 one under
/// /sys/fs/cgroup, or the cgroup2 tree that is /sys/fs/cgroup.
fn hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.procs").exists() {
        return vec![root.to_path_buf()];
    }
    let dirs: Vec<PathBuf> = fs::read_dir(root)
        .expect("read /sys/fs/cgroup")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").exists())
        .collect();
    assert!(!dirs.is_empty(), "no cgroup hierarchy under /sys/fs/cgroup");
    dirs
}

/// Each hierarchy's directory for `cgroup`.
fn hierarchy_dirs(cgroup: &str) -> Vec<PathBuf> {
    hierarchies()
        .into_iter()
        .map(|h| h.join(cgroup.trim_start_matches('/')))
        .collect()
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

/// The file in each test crius's directory naming the test process.
pub const OWNER_FILE: &str = "crius-e2e.owner";

/// The prefix of the cgroup parents of the tests' pods
/// (`crius-e2e-<pid>-<n>`).
pub const CGROUP_PREFIX: &str = "crius-e2e-";

/// Whether the test process `pid` (from an owner mark) is gone.
fn gone(pid: &str) -> bool {
    pid.trim()
        .parse::<u32>()
        .is_ok_and(|p| p != std::process::id() && !Path::new(&format!("/proc/{p}")).exists())
}

fn kill(pid: u32) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Sweeps what test processes that are gone left: their crius directories
/// under the temp dir (processes naming them killed, mounts under them
/// detached, then removed) and their pods' cgroups (processes killed,
/// removed deepest first). Once per process; best effort, logged.
pub fn sweep_killed_runs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(sweep);
}

fn sweep() {
    for e in fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = e.path();
        let Ok(owner) = fs::read_to_string(dir.join(OWNER_FILE)) else {
            continue;
        };
        if !gone(&owner) {
            continue;
        }
        eprintln!(
            "sweeping {} (its test process {} is gone)",
            dir.display(),
            owner.trim()
        );
        processes_naming(&dir.join("")).into_iter().for_each(kill);
        let mut mounts = mounts_under(&dir);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        if let Err(e) = fs::remove_dir_all(&dir) {
            eprintln!("sweeping {}: {e}", dir.display());
        }
    }
    for h in hierarchies() {
        for e in fs::read_dir(&h).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(CGROUP_PREFIX)
                .and_then(|rest| rest.split('-').next())
            else {
                continue;
            };
            if gone(pid) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
}

/// Kills what is in the cgroup `dir` and below, and removes them deepest
/// first.
fn remove_cgroup_tree(dir: &Path) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            remove_cgroup_tree(&e.path());
        }
    }
    for _ in 0..100 {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<u32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() {
            break;
        }
        pids.into_iter().for_each(kill);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if let Err(e) = fs::remove_dir(dir) {
        eprintln!("sweeping cgroup {}: {e}", dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a killed test process leaves: its crius directory with a mount
    /// and a process naming it, its pods' cgroup with a process in it; and
    /// beside them what a live one has, which stays.
    #[test]
    fn the_sweep_removes_what_gone_test_processes_left_and_nothing_else() {
        let dead = {
            let mut c = std::process::Command::new("true").spawn().unwrap();
            c.wait().unwrap();
            c.id()
        };
        let left = tempfile::Builder::new()
            .prefix("cr")
            .tempdir()
            .unwrap()
            .keep();
        fs::write(left.join(OWNER_FILE), dead.to_string()).unwrap();
        let live = tempfile::Builder::new().prefix("cr").tempdir().unwrap();
        fs::write(live.path().join(OWNER_FILE), std::process::id().to_string()).unwrap();
        let mnt = left.join("state/shm");
        fs::create_dir_all(&mnt).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &mnt,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let mut monitor = std::process::Command::new("sh")
            .args([
                "-c",
                "sleep 600",
                &format!("{}/state/pods/x", left.display()),
            ])
            .spawn()
            .unwrap();
        let cgroup = format!("{CGROUP_PREFIX}{dead}-0/crius-pod-x");
        let mem = Path::new("/sys/fs/cgroup/memory").join(&cgroup);
        fs::create_dir_all(&mem).unwrap();
        let mut in_cgroup = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        fs::write(mem.join("cgroup.procs"), in_cgroup.id().to_string()).unwrap();

        sweep();

        assert!(!left.exists(), "the gone process's directory stays");
        assert!(live.path().exists(), "a live process's directory went");
        assert!(mounts_under(&left).is_empty());
        assert!(
            monitor.wait().unwrap().signal().is_some(),
            "the monitor lives"
        );
        assert!(
            in_cgroup.wait().unwrap().signal().is_some(),
            "the cgroup's process lives"
        );
        assert!(!mem.parent().unwrap().exists(), "the cgroup stays");
    }
}

//! Resource usage as the CRI's stats and metrics report it: a cgroup's CPU,
//! memory, pids and block I/O counters (cgroup v1, v2, and hybrid hosts,
//! where the v1 controllers do the accounting and the cgroup2 mount beside
//! them has none of ours), the processes, threads and open files in a
//! cgroup, a directory tree's bytes and inodes (a container's writable
//! layer), a filesystem's size, and a network namespace's interfaces.
//!
//! Everything here reads files only; the cgroup root is a parameter so
//! tests run against fake trees.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use crius_proto::usage::{
    CgroupStats, ContainerUsage, CpuStats, DirUsage, FsInfo, IoStats, LayerUsage, MemoryStats,
    NetInterface, PidsStats, PodUsage, ProcessStats,
};
use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

/// The cgroup hierarchies of a host.
#[derive(Debug, Clone)]
pub struct Cgroups {
    layout: Layout,
}

#[derive(Debug, Clone)]
enum Layout {
    /// One cgroup2 tree at the root.
    Unified(PathBuf),
    /// cgroup v1 hierarchies: controller and the directory it is mounted
    /// on (`cpu,cpuacct` serves both). A hybrid host's cgroup2 mount
    /// (`unified/`) names no controller and is not used.
    Legacy(Vec<(String, PathBuf)>),
}

/// A limit above this is "unlimited" (cgroup v1 writes
/// `PAGE_COUNTER_MAX` pages as 9223372036854771712).
const UNLIMITED: u64 = 1 << 62;
/// Processes and descriptors looked at per cgroup, at most.
const MAX_PROCS: usize = 4096;
const MAX_FDS: u64 = 1 << 20;

impl Cgroups {
    /// The hierarchies of this host (`crate::cgroup_mounts`).
    pub fn host() -> Cgroups {
        Cgroups::of(&crate::cgroup_mounts::CgroupMounts::detect())
    }

    /// The hierarchies of `mounts`: its v1 controllers where it has any
    /// (a hybrid host's cgroup2 mount names none), else its cgroup2 tree.
    pub fn of(mounts: &crate::cgroup_mounts::CgroupMounts) -> Cgroups {
        if !mounts.is_v1()
            && let Some(v2) = mounts.v2()
        {
            return Cgroups {
                layout: Layout::Unified(v2.to_path_buf()),
            };
        }
        let mut v1: Vec<(String, PathBuf)> = Vec::new();
        for (controllers, mount) in mounts.v1() {
            for controller in controllers {
                if v1.iter().all(|(c, _)| c != controller) {
                    v1.push((controller.clone(), mount.clone()));
                }
            }
        }
        Cgroups {
            layout: Layout::Legacy(v1),
        }
    }

    /// A fake tree at `root` for tests: a cgroup2 tree (it has
    /// `cgroup.controllers`) or one v1 hierarchy per directory, named after
    /// its controllers.
    #[cfg(test)]
    pub(crate) fn at(root: &Path) -> Cgroups {
        if root.join("cgroup.controllers").is_file() {
            return Cgroups {
                layout: Layout::Unified(root.to_path_buf()),
            };
        }
        let mut v1 = Vec::new();
        for e in fs::read_dir(root).into_iter().flatten().flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            for controller in name.split(',') {
                if v1.iter().all(|(c, _)| c != controller) {
                    v1.push((controller.to_string(), e.path()));
                }
            }
        }
        Cgroups {
            layout: Layout::Legacy(v1),
        }
    }

    /// Whether cgroups here are cgroup2 ones.
    pub fn is_unified(&self) -> bool {
        matches!(self.layout, Layout::Unified(_))
    }

    /// The directory of `cgroup` in the hierarchy that has `controller`
    /// (v2: the one tree), whether it exists or not.
    pub fn dir(&self, controller: &str, cgroup: &Path) -> Option<PathBuf> {
        let rel = relative(cgroup)?;
        match &self.layout {
            Layout::Unified(root) => Some(root.join(rel)),
            Layout::Legacy(v1) => v1
                .iter()
                .find(|(c, _)| c == controller)
                .map(|(_, mnt)| mnt.join(rel)),
        }
    }

    fn existing_dir(&self, controller: &str, cgroup: &Path) -> Option<PathBuf> {
        self.dir(controller, cgroup).filter(|d| d.is_dir())
    }

    /// The usage of `cgroup` (a path in the hierarchies such as an OCI
    /// `cgroupsPath`, leading `/` or not); `None` when it exists in none
    /// of the hierarchies or names something outside them.
    pub fn read(&self, cgroup: &Path) -> Option<CgroupStats> {
        match &self.layout {
            Layout::Unified(_) => {
                let dir = self.existing_dir("", cgroup)?;
                Some(CgroupStats {
                    cpu: cpu_v2(&dir),
                    memory: memory_v2(&dir),
                    pids: pids(&dir),
                    io: read(&dir.join("io.stat"))
                        .map(|s| parse_io_stat(&s))
                        .unwrap_or_default(),
                })
            }
            Layout::Legacy(_) => {
                let cpuacct = self.existing_dir("cpuacct", cgroup);
                let memory = self.existing_dir("memory", cgroup);
                let pids_dir = self.existing_dir("pids", cgroup);
                let blkio = self.existing_dir("blkio", cgroup);
                if cpuacct.is_none() && memory.is_none() && pids_dir.is_none() {
                    return None;
                }
                let cpu_dir = self.existing_dir("cpu", cgroup);
                Some(CgroupStats {
                    cpu: cpuacct.and_then(|d| cpu_v1(&d, cpu_dir.as_deref())),
                    memory: memory.as_deref().and_then(memory_v1),
                    pids: pids_dir.as_deref().and_then(pids).or_else(|| {
                        // No pids controller: count the tasks themselves.
                        let d = memory.as_deref()?;
                        Some(PidsStats {
                            current: count_lines(&d.join("tasks"))?,
                            limit: None,
                        })
                    }),
                    io: blkio.as_deref().map(io_v1).unwrap_or_default(),
                })
            }
        }
    }

    /// The processes directly in `cgroup`, their threads and open files.
    pub fn processes(&self, cgroup: &Path) -> Option<ProcessStats> {
        let (dir, threads_file) = match &self.layout {
            Layout::Unified(_) => (self.existing_dir("", cgroup)?, "cgroup.threads"),
            Layout::Legacy(_) => (
                ["pids", "memory", "cpuacct", "freezer"]
                    .iter()
                    .find_map(|c| self.existing_dir(c, cgroup))?,
                "tasks",
            ),
        };
        let procs: Vec<u32> = read(&dir.join("cgroup.procs"))?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        let mut s = ProcessStats {
            processes: procs.len() as u64,
            threads: count_lines(&dir.join(threads_file)).unwrap_or(0),
            ..ProcessStats::default()
        };
        for pid in procs.iter().take(MAX_PROCS) {
            let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                if s.fds >= MAX_FDS {
                    return Some(s);
                }
                s.fds += 1;
                if fs::read_link(fd.path())
                    .is_ok_and(|t| t.as_os_str().as_bytes().starts_with(b"socket:"))
                {
                    s.sockets += 1;
                }
            }
        }
        Some(s)
    }
}

/// `cgroup` as a path relative to a hierarchy's root, if it stays inside.
fn relative(cgroup: &Path) -> Option<&Path> {
    let rel = cgroup.strip_prefix("/").unwrap_or(cgroup);
    rel.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then_some(rel)
}

/// The cgroup an OCI `cgroupsPath` names, relative to the hierarchy roots:
/// a path (cgroupfs driver) or systemd's `slice:prefix:name`, which
/// expands as runc's systemd driver does.
pub fn cgroups_path_dir(cgroups_path: &str) -> Option<PathBuf> {
    let p = cgroups_path.trim();
    if p.is_empty() {
        return None;
    }
    let path = match p.split(':').collect::<Vec<_>>()[..] {
        [slice, prefix, name] if !p.starts_with('/') => {
            let mut dir = expand_slice(slice)?;
            if name.ends_with(".slice") {
                dir.push(name);
            } else if prefix.is_empty() {
                dir.push(format!("{name}.scope"));
            } else {
                dir.push(format!("{prefix}-{name}.scope"));
            }
            dir
        }
        _ => PathBuf::from(p),
    };
    relative(&path).map(Path::to_path_buf)
}

/// The systemd slice as a path relative to the cgroup root.
fn expand_slice(slice: &str) -> Option<PathBuf> {
    let path = sandbox_api::object::slice_path(slice)?;
    Some(PathBuf::from(path.trim_start_matches('/')))
}

fn read(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok()
}

/// A file holding one number; "max" and absent files are `None`.
fn read_u64(path: &Path) -> Option<u64> {
    read(path)?.trim().parse().ok()
}

/// A limit file: a number, `max` or a v1 "unlimited" value.
fn read_limit(path: &Path) -> Option<u64> {
    read_u64(path).filter(|v| *v < UNLIMITED)
}

/// "key value" lines (memory.stat, cpu.stat, memory.events).
fn keyed(s: &str) -> HashMap<&str, u64> {
    s.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k, v.trim().parse().ok()?))
        })
        .collect()
}

fn count_lines(path: &Path) -> Option<u64> {
    Some(read(path)?.lines().filter(|l| !l.trim().is_empty()).count() as u64)
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

fn cpu_v1(cpuacct: &Path, cpu: Option<&Path>) -> Option<CpuStats> {
    let mut s = CpuStats {
        usage_ns: read_u64(&cpuacct.join("cpuacct.usage"))?,
        ..CpuStats::default()
    };
    match (
        read_u64(&cpuacct.join("cpuacct.usage_user")),
        read_u64(&cpuacct.join("cpuacct.usage_sys")),
    ) {
        (Some(u), Some(sys)) => (s.user_ns, s.system_ns) = (u, sys),
        _ => {
            // Older kernels: clock ticks in cpuacct.stat.
            if let Some(stat) = read(&cpuacct.join("cpuacct.stat")) {
                let k = keyed(&stat);
                let ns = 1_000_000_000 / clock_ticks();
                s.user_ns = k.get("user").copied().unwrap_or(0).saturating_mul(ns);
                s.system_ns = k.get("system").copied().unwrap_or(0).saturating_mul(ns);
            }
        }
    }
    if let Some(cpu) = cpu {
        if let Some(stat) = read(&cpu.join("cpu.stat")) {
            let k = keyed(&stat);
            s.periods = k.get("nr_periods").copied().unwrap_or(0);
            s.throttled_periods = k.get("nr_throttled").copied().unwrap_or(0);
            s.throttled_ns = k.get("throttled_time").copied().unwrap_or(0);
        }
        s.shares = read_u64(&cpu.join("cpu.shares"));
        s.period_us = read_u64(&cpu.join("cpu.cfs_period_us"));
        // -1 is "no quota" and does not parse as u64.
        s.quota_us = read_u64(&cpu.join("cpu.cfs_quota_us"));
    }
    Some(s)
}

fn cpu_v2(dir: &Path) -> Option<CpuStats> {
    let stat = read(&dir.join("cpu.stat"))?;
    let k = keyed(&stat);
    let us = |key: &str| k.get(key).copied().unwrap_or(0).saturating_mul(1000);
    let mut s = CpuStats {
        usage_ns: k.get("usage_usec")?.saturating_mul(1000),
        user_ns: us("user_usec"),
        system_ns: us("system_usec"),
        periods: k.get("nr_periods").copied().unwrap_or(0),
        throttled_periods: k.get("nr_throttled").copied().unwrap_or(0),
        throttled_ns: us("throttled_usec"),
        // The inverse of the kubelet's shares -> weight conversion.
        shares: read_u64(&dir.join("cpu.weight"))
            .map(|w| 2 + (w.clamp(1, 10_000) - 1) * 262_142 / 9_999),
        ..CpuStats::default()
    };
    if let Some(max) = read(&dir.join("cpu.max")) {
        let mut f = max.split_whitespace();
        s.quota_us = f.next().and_then(|q| q.parse().ok());
        s.period_us = f.next().and_then(|p| p.parse().ok());
    }
    Some(s)
}

fn memory_v1(dir: &Path) -> Option<MemoryStats> {
    let usage = read_u64(&dir.join("memory.usage_in_bytes"))?;
    let stat = read(&dir.join("memory.stat")).unwrap_or_default();
    let k = keyed(&stat);
    // The hierarchical (total_) counts, else the cgroup's own.
    let get = |key: &str| {
        k.get(format!("total_{key}").as_str())
            .or_else(|| k.get(key))
            .copied()
            .unwrap_or(0)
    };
    let limit = read_limit(&dir.join("memory.limit_in_bytes"));
    Some(MemoryStats {
        usage,
        working_set: usage.saturating_sub(get("inactive_file")),
        rss: get("rss"),
        cache: get("cache"),
        mapped_file: get("mapped_file"),
        kernel: read_u64(&dir.join("memory.kmem.usage_in_bytes")),
        swap: k.get("total_swap").or_else(|| k.get("swap")).copied(),
        max_usage: read_u64(&dir.join("memory.max_usage_in_bytes")),
        failcnt: read_u64(&dir.join("memory.failcnt")).unwrap_or(0),
        page_faults: get("pgfault"),
        major_page_faults: get("pgmajfault"),
        local_page_faults: k.get("pgfault").copied().unwrap_or(0),
        local_major_page_faults: k.get("pgmajfault").copied().unwrap_or(0),
        oom_kills: read(&dir.join("memory.oom_control"))
            .and_then(|s| keyed(&s).get("oom_kill").copied())
            .unwrap_or(0),
        limit,
        memsw_limit: read_limit(&dir.join("memory.memsw.limit_in_bytes")),
    })
}

fn memory_v2(dir: &Path) -> Option<MemoryStats> {
    let usage = read_u64(&dir.join("memory.current"))?;
    let stat = read(&dir.join("memory.stat")).unwrap_or_default();
    let k = keyed(&stat);
    let get = |key: &str| k.get(key).copied().unwrap_or(0);
    let events = read(&dir.join("memory.events")).unwrap_or_default();
    let events = keyed(&events);
    let kernel = k.get("kernel").copied().or_else(|| {
        // Before Linux 5.18 there is no total: add up its parts.
        ["kernel_stack", "pagetables", "percpu", "sock", "slab"]
            .iter()
            .map(|p| k.get(p).copied())
            .sum()
    });
    let limit = read_limit(&dir.join("memory.max"));
    let swap_limit = read_limit(&dir.join("memory.swap.max"));
    Some(MemoryStats {
        usage,
        working_set: usage.saturating_sub(get("inactive_file")),
        rss: get("anon"),
        cache: get("file"),
        mapped_file: get("file_mapped"),
        kernel,
        // Absent only on kernels without swap (a VM pod's guest): nothing
        // is swapped there.
        swap: read_u64(&dir.join("memory.swap.current")).or(Some(0)),
        max_usage: read_u64(&dir.join("memory.peak")),
        failcnt: events.get("max").copied().unwrap_or(0),
        page_faults: get("pgfault"),
        major_page_faults: get("pgmajfault"),
        local_page_faults: get("pgfault"),
        local_major_page_faults: get("pgmajfault"),
        oom_kills: events.get("oom_kill").copied().unwrap_or(0),
        limit,
        memsw_limit: limit.zip(swap_limit).map(|(m, s)| m.saturating_add(s)),
    })
}

fn pids(dir: &Path) -> Option<PidsStats> {
    Some(PidsStats {
        current: read_u64(&dir.join("pids.current"))?,
        limit: read_limit(&dir.join("pids.max")),
    })
}

fn io_v1(dir: &Path) -> Vec<IoStats> {
    // The throttle files count every I/O; the CFQ/BFQ ones only those
    // their scheduler saw.
    let pick = |files: &[&str]| {
        files
            .iter()
            .filter_map(|f| read(&dir.join(f)))
            .find(|s| s.lines().any(|l| l.contains(':')))
            .unwrap_or_default()
    };
    let bytes = pick(&[
        "blkio.throttle.io_service_bytes_recursive",
        "blkio.io_service_bytes_recursive",
    ]);
    let ops = pick(&[
        "blkio.throttle.io_serviced_recursive",
        "blkio.io_serviced_recursive",
    ]);
    let mut devices: Vec<IoStats> = Vec::new();
    for (text, is_bytes) in [(&bytes, true), (&ops, false)] {
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(dev), Some(op), Some(v)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let (Some((major, minor)), Ok(v)) = (parse_dev(dev), v.parse::<u64>()) else {
                continue;
            };
            let d = device(&mut devices, major, minor);
            match (op, is_bytes) {
                ("Read", true) => d.read_bytes += v,
                ("Write", true) => d.write_bytes += v,
                ("Read", false) => d.reads += v,
                ("Write", false) => d.writes += v,
                _ => {}
            }
        }
    }
    devices
}

fn parse_io_stat(s: &str) -> Vec<IoStats> {
    let mut devices = Vec::new();
    for line in s.lines() {
        let mut f = line.split_whitespace();
        let Some((major, minor)) = f.next().and_then(parse_dev) else {
            continue;
        };
        let d = device(&mut devices, major, minor);
        for kv in f {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let v: u64 = v.parse().unwrap_or(0);
            match k {
                "rbytes" => d.read_bytes += v,
                "wbytes" => d.write_bytes += v,
                "rios" => d.reads += v,
                "wios" => d.writes += v,
                _ => {}
            }
        }
    }
    devices
}

fn parse_dev(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn device(devices: &mut Vec<IoStats>, major: u64, minor: u64) -> &mut IoStats {
    let i = match devices
        .iter()
        .position(|d| d.major == major && d.minor == minor)
    {
        Some(i) => i,
        None => {
            devices.push(IoStats {
                device: block_device_name(major, minor),
                major,
                minor,
                ..IoStats::default()
            });
            devices.len() - 1
        }
    };
    &mut devices[i]
}

/// The name of a block device (`/dev/sda`), from sysfs; `major:minor`
/// when it has none.
fn block_device_name(major: u64, minor: u64) -> String {
    read(Path::new(&format!("/sys/dev/block/{major}:{minor}/uevent")))
        .and_then(|u| {
            u.lines()
                .find_map(|l| l.strip_prefix("DEVNAME="))
                .map(|n| format!("/dev/{}", n.trim()))
        })
        .unwrap_or_else(|| format!("{major}:{minor}"))
}

/// How deep the walk descends: one open descriptor per level.
const MAX_DEPTH: u32 = 128;

/// Measures the tree at `path` without following symbolic links (the
/// tree belongs to a container: each directory is opened relative to its
/// parent with `O_NOFOLLOW`, and one on another filesystem is not
/// entered), stopping after `max_inodes` inodes.
pub fn dir_usage(path: &Path, max_inodes: u64) -> io::Result<DirUsage> {
    let root = Dir::open(path, dir_flags(), Mode::empty()).map_err(io::Error::from)?;
    let st = fstat(&root).map_err(io::Error::from)?;
    let mut w = Walk {
        dev: st.st_dev,
        max_inodes: max_inodes.max(1),
        seen: HashSet::new(),
        usage: DirUsage {
            bytes: allocated(&st),
            inodes: 1,
            complete: true,
        },
    };
    w.dir(root, 0);
    Ok(w.usage)
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

fn allocated(st: &FileStat) -> u64 {
    (st.st_blocks.max(0) as u64).saturating_mul(512)
}

struct Walk {
    dev: u64,
    max_inodes: u64,
    /// Inodes with more than one link, counted once.
    seen: HashSet<u64>,
    usage: DirUsage,
}

impl Walk {
    fn dir(&mut self, mut d: Dir, depth: u32) {
        let mut names = Vec::new();
        for entry in d.iter() {
            let Ok(e) = entry else {
                self.usage.complete = false;
                break;
            };
            let name = e.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            if self.usage.inodes + names.len() as u64 >= self.max_inodes {
                self.usage.complete = false;
                break;
            }
            if let Ok(n) = CString::new(name) {
                names.push(n);
            }
        }
        let mut subdirs = Vec::new();
        for name in names {
            // Gone meanwhile: not counted.
            let Ok(st) = fstatat(&d, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
                continue;
            };
            let is_dir = st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits();
            if !is_dir && st.st_nlink > 1 && !self.seen.insert(st.st_ino) {
                continue;
            }
            self.usage.inodes += 1;
            self.usage.bytes += allocated(&st);
            if is_dir && st.st_dev == self.dev {
                subdirs.push(name);
            }
        }
        if depth >= MAX_DEPTH {
            self.usage.complete &= subdirs.is_empty();
            return;
        }
        for name in subdirs {
            if self.usage.inodes >= self.max_inodes {
                self.usage.complete = false;
                return;
            }
            // O_NOFOLLOW: a directory swapped for a link meanwhile fails.
            let Ok(sub) = Dir::openat(&d, name.as_c_str(), dir_flags(), Mode::empty()) else {
                continue;
            };
            if fstat(&sub).is_ok_and(|st| st.st_dev == self.dev) {
                self.dir(sub, depth + 1);
            }
        }
    }
}

pub fn fs_info(path: &Path) -> io::Result<FsInfo> {
    let s = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    let frag = s.fragment_size() as u64;
    Ok(FsInfo {
        capacity_bytes: (s.blocks() as u64).saturating_mul(frag),
        available_bytes: (s.blocks_available() as u64).saturating_mul(frag),
        inodes: s.files() as u64,
        inodes_free: s.files_free() as u64,
    })
}

/// Parses /proc/net/dev, leaving out the loopback interface.
pub fn parse_net_dev(s: &str) -> Vec<NetInterface> {
    s.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            let v: Vec<u64> = rest
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            if name == "lo" || v.len() < 12 {
                return None;
            }
            Some(NetInterface {
                name: name.to_string(),
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errors: v[2],
                rx_dropped: v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errors: v[10],
                tx_dropped: v[11],
            })
        })
        .collect()
}

/// The interfaces of the network namespace pinned at `netns`: read by a
/// short-lived thread that joins the namespace (threads have their own;
/// it ends with the thread).
pub fn netns_interfaces(netns: &Path) -> io::Result<Vec<NetInterface>> {
    let ns = fs::File::open(netns)?;
    std::thread::Builder::new()
        .name("crius-netstat".into())
        .spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
            fs::read_to_string("/proc/thread-self/net/dev").map(|s| parse_net_dev(&s))
        })?
        .join()
        .map_err(|_| io::Error::other("network stats thread panicked"))?
}

/// Inodes a writable layer walk counts at most (kubelet asks every ten
/// seconds or so; a bigger layer reports a lower bound).
const MAX_LAYER_INODES: u64 = 1_000_000;

/// This host's cgroup hierarchies, found once.
pub fn host_cgroups() -> &'static Cgroups {
    static CGROUPS: OnceLock<Cgroups> = OnceLock::new();
    CGROUPS.get_or_init(Cgroups::host)
}

/// The `linux.cgroupsPath` of the OCI bundle at `bundle` (its
/// config.json): the one place it is read back.
pub fn bundle_cgroups_path(bundle: &Path) -> Option<String> {
    let config = fs::read(bundle.join("config.json")).ok()?;
    let spec: serde_json::Value = serde_json::from_slice(&config).ok()?;
    spec["linux"]["cgroupsPath"].as_str().map(str::to_string)
}

/// The cgroup (relative to the hierarchies' roots) the OCI bundle at
/// `bundle` puts its container in.
pub fn bundle_cgroup(bundle: &Path) -> Option<PathBuf> {
    cgroups_path_dir(&bundle_cgroups_path(bundle)?)
}

/// A container's usage: its bundle's cgroup, its writable layer `upper`
/// (reported as on `mountpoint`) and, with `processes`, its processes;
/// blocking (it walks the layer).
pub fn container_usage(
    bundle: &Path,
    upper: &Path,
    mountpoint: &Path,
    processes: bool,
) -> ContainerUsage {
    let timestamp = sandbox_api::now_ns();
    let cgroup_dir = bundle_cgroup(bundle);
    let cgroup = cgroup_dir.as_deref().and_then(|d| host_cgroups().read(d));
    let processes = cgroup_dir
        .as_deref()
        .filter(|_| processes && cgroup.is_some())
        .and_then(|d| host_cgroups().processes(d));
    let layer = match dir_usage(upper, MAX_LAYER_INODES) {
        Ok(usage) => Some(LayerUsage {
            mountpoint: mountpoint.to_path_buf(),
            usage,
            fs: fs_info(upper).ok(),
        }),
        Err(e) => {
            tracing::debug!("writable layer {}: {e}", upper.display());
            None
        }
    };
    ContainerUsage {
        timestamp,
        cgroup,
        processes,
        layer,
    }
}

/// A pod's usage: the cgroup `cgroup_parent` names, if given, and the
/// network namespace pinned at `netns`; blocking.
pub fn pod_usage(cgroup_parent: Option<&str>, netns: Option<&Path>) -> PodUsage {
    let timestamp = sandbox_api::now_ns();
    let cgroup = cgroup_parent
        .and_then(cgroups_path_dir)
        .and_then(|d| host_cgroups().read(&d));
    let network = netns.and_then(|ns| match netns_interfaces(ns) {
        Ok(ifs) => Some(ifs),
        Err(e) => {
            tracing::debug!("network stats of {}: {e}", ns.display());
            None
        }
    });
    PodUsage {
        timestamp,
        cgroup,
        network,
    }
}

#[cfg(test)]
mod tests;

//! What the host allows: facts about this machine and this process that
//! change the spec, detected once by the caller and passed in, so that
//! spec generation itself stays a pure function.

use std::io::Read;
use std::path::Path;

use oci_spec::runtime::Capabilities;

use super::caps::{self, ALL_KNOWN, CapMask};

/// The cgroup layout of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgroupMode {
    /// cgroup v1, including the hybrid layout (v1 controllers plus a
    /// cgroup2 mount at `/sys/fs/cgroup/unified`): no cgroup namespace,
    /// no `unified` resources.
    V1,
    /// The unified hierarchy only.
    #[default]
    V2,
}

/// Host facts that shape a container's spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLimits {
    /// The lowest `oom_score_adj` a container may get: this process's own
    /// value, since lowering it needs CAP_SYS_RESOURCE.
    pub min_oom_score_adj: i32,
    /// cgroup v1 (or hybrid) or v2.
    pub cgroup: CgroupMode,
    /// Whether memory+swap limits can be set.
    pub swap_controller: bool,
    /// Whether the hugetlb controller is there (else hugepage limits are
    /// skipped, as containerd's `tolerate_missing_hugetlb_controller`).
    pub hugetlb: bool,
    /// The capabilities this process holds and can hand out; `None` means
    /// all capabilities known to oci-spec.
    pub capabilities: Option<Capabilities>,
    /// The running kernel's `(major, minor)`, for `minKernel` in seccomp
    /// profiles; `None` when unknown (rules are then kept).
    pub kernel: Option<(u32, u32)>,
    /// On cgroup v1, the entries of `/sys/fs/cgroup` that reach a v1
    /// controller hierarchy: (name, the hierarchy's mount directory), the
    /// mounts themselves (`cpu,cpuacct`) and their symlinks (`cpu`).
    pub v1_controllers: Vec<(String, String)>,
}

impl HostLimits {
    /// The guest of a VM pod: the kernel crius builds
    /// (`sandbox-vm/guest/kernel.config`): Linux 6.1, cgroup v2 without
    /// hugetlb or swap accounting, every capability, run as root.
    pub fn vm_guest() -> HostLimits {
        HostLimits {
            hugetlb: false,
            kernel: Some((6, 1)),
            ..HostLimits::default()
        }
    }
}

impl Default for HostLimits {
    /// A permissive host: no oom floor below -1000, cgroup v2, hugetlb,
    /// no swap controller, every capability.
    fn default() -> Self {
        HostLimits {
            min_oom_score_adj: -1000,
            cgroup: CgroupMode::V2,
            swap_controller: false,
            hugetlb: true,
            capabilities: None,
            kernel: None,
            v1_controllers: Vec::new(),
        }
    }
}

/// Reads a small procfs or sysfs file, at most 64 KiB.
fn read_small(path: &Path) -> Option<String> {
    let mut s = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(64 << 10)
        .read_to_string(&mut s)
        .ok()?;
    Some(s)
}

impl HostLimits {
    /// Detects the limits of this host and process from `/proc/self` and
    /// `/sys/fs/cgroup`. Never fails: what cannot be read gets a
    /// conservative value (oom floor 0, no swap controller, no hugetlb,
    /// all capabilities, unknown kernel).
    pub fn detect() -> HostLimits {
        let min_oom_score_adj = read_small(Path::new("/proc/self/oom_score_adj"))
            .and_then(|s| s.trim().parse::<i32>().ok())
            .unwrap_or_else(|| {
                tracing::warn!("cannot read /proc/self/oom_score_adj; assuming 0");
                0
            });

        let cgroup = match nix::sys::statfs::statfs("/sys/fs/cgroup") {
            Ok(st) if st.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => {
                CgroupMode::V2
            }
            _ => CgroupMode::V1,
        };

        let (hugetlb, swap_controller) = match cgroup {
            CgroupMode::V1 => (
                Path::new("/sys/fs/cgroup/hugetlb").is_dir(),
                Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists(),
            ),
            CgroupMode::V2 => {
                let controllers =
                    read_small(Path::new("/sys/fs/cgroup/cgroup.controllers")).unwrap_or_default();
                let hugetlb = controllers.split_whitespace().any(|c| c == "hugetlb");
                (hugetlb, v2_swap_available())
            }
        };

        let capabilities = read_small(Path::new("/proc/self/status")).and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(caps::parse_hex_mask)
                .map(caps::to_set)
        });

        let kernel = read_small(Path::new("/proc/sys/kernel/osrelease")).and_then(|s| {
            let mut it = s.trim().split(['.', '-']);
            let major = it.next()?.parse().ok()?;
            let minor = it.next()?.parse().ok()?;
            Some((major, minor))
        });

        let v1_controllers = match cgroup {
            CgroupMode::V1 => v1_controllers(
                &crate::cgroup_mounts::CgroupMounts::detect(),
                Path::new("/sys/fs/cgroup"),
            ),
            CgroupMode::V2 => Vec::new(),
        };

        HostLimits {
            min_oom_score_adj,
            cgroup,
            swap_controller,
            hugetlb,
            capabilities,
            kernel,
            v1_controllers,
        }
    }

    /// The capability mask this host can hand out.
    pub(crate) fn cap_mask(&self) -> CapMask {
        match &self.capabilities {
            None => ALL_KNOWN,
            Some(set) => caps::from_set(set),
        }
    }
}

/// The v1 controllers libcontainer makes a container's cgroup in (named
/// hierarchies such as `name=systemd`, and controllers it does not manage,
/// get none).
const V1_MANAGED: [&str; 12] = [
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
];

/// The v1 hierarchies of managed controllers mounted directly under
/// `root`, and the symlinks in `root` that point at them.
fn v1_controllers(
    mounts: &crate::cgroup_mounts::CgroupMounts,
    root: &Path,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = mounts
        .v1()
        .iter()
        .filter(|(controllers, _)| controllers.iter().any(|c| V1_MANAGED.contains(&c.as_str())))
        .filter_map(|(_, mount)| {
            let dir = mount.strip_prefix(root).ok()?.to_str()?;
            (!dir.is_empty() && !dir.contains('/')).then(|| (dir.to_string(), dir.to_string()))
        })
        .collect();
    let mut links = Vec::new();
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if out.iter().any(|(_, dir)| *dir == target) {
            links.push((entry.file_name().to_string_lossy().into_owned(), target));
        }
    }
    out.extend(links);
    out.sort();
    out.dedup();
    out
}

/// Whether the kernel has `mount_setattr(2)` (Linux 5.12), which
/// libcontainer uses for `rro` (recursive read-only) bind mounts: what the
/// runtime handlers advertise as `recursive_read_only_mounts`. Probed once,
/// with an invalid call: EINVAL or EBADF when the call exists, ENOSYS (or
/// EPERM from a seccomp filter) when it cannot be used.
pub fn recursive_read_only_supported() -> bool {
    static PROBE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PROBE.get_or_init(|| {
        // SAFETY: a null attribute pointer with size 0 is refused by the
        // kernel before anything is read or changed.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                -1,
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                std::ptr::null_mut::<libc::c_void>(),
                0usize,
            )
        };
        let errno = std::io::Error::last_os_error().raw_os_error();
        r == -1 && matches!(errno, Some(libc::EINVAL) | Some(libc::EBADF))
    })
}

/// Whether `memory.swap.max` exists in this process's cgroup (or the
/// nearest non-root parent): the swap controller is enabled there.
fn v2_swap_available() -> bool {
    let Some(own) = read_small(Path::new("/proc/self/cgroup")).and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(|p| p.trim().to_string())
    }) else {
        return false;
    };
    let mut p = Path::new(&own);
    loop {
        let rel = p.strip_prefix("/").unwrap_or(p);
        if rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return false;
        }
        if rel.as_os_str().is_empty() {
            return false;
        }
        if Path::new("/sys/fs/cgroup")
            .join(rel)
            .join("memory.swap.max")
            .exists()
        {
            return true;
        }
        match p.parent() {
            Some(parent) => p = parent,
            None => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_controllers_from_mountinfo() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("cpu,cpuacct")).unwrap();
        std::os::unix::fs::symlink("cpu,cpuacct", root.path().join("cpu")).unwrap();
        std::os::unix::fs::symlink("elsewhere", root.path().join("other")).unwrap();
        let r = root.path().display();
        let mountinfo = format!(
            "30 25 0:26 / {r}/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n\
             31 25 0:27 / {r}/memory rw,nosuid - cgroup cgroup rw,memory\n\
             34 25 0:30 / {r}/systemd rw,nosuid - cgroup cgroup rw,name=systemd\n\
             32 25 0:28 / {r}/unified rw,nosuid - cgroup2 cgroup2 rw\n\
             33 25 0:29 / /elsewhere/x rw - cgroup cgroup rw,pids\n"
        );
        assert_eq!(
            v1_controllers(
                &crate::cgroup_mounts::CgroupMounts::from_table(&crate::mountinfo::parse(
                    &mountinfo
                )),
                root.path()
            ),
            [
                ("cpu".to_string(), "cpu,cpuacct".to_string()),
                ("cpu,cpuacct".into(), "cpu,cpuacct".into()),
                ("memory".into(), "memory".into()),
            ]
        );
    }

    #[test]
    fn detect_never_fails() {
        let h = HostLimits::detect();
        assert!((-1000..=1000).contains(&h.min_oom_score_adj));
        assert!(h.cap_mask() & !ALL_KNOWN == 0);
    }

    #[test]
    fn rro_probe_matches_the_kernel() {
        // mount_setattr arrived in 5.12 (a seccomp filter may still hide
        // it from a newer kernel's processes).
        let h = HostLimits::detect();
        if let Some(k) = h.kernel
            && recursive_read_only_supported()
        {
            assert!(k >= (5, 12), "{k:?}");
        }
    }

    #[test]
    fn default_is_permissive() {
        let h = HostLimits::default();
        assert_eq!(h.cap_mask(), ALL_KNOWN);
        assert_eq!(h.cgroup, CgroupMode::V2);
    }
}

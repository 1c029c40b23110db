//! The cgroup hierarchies of this host, from the mount table: one
//! detection for every reader (stats, the monitor's kills and removals,
//! the spec's list of v1 controllers). A hybrid host's cgroup2 mount names
//! no controller; containers' cgroups are then v1 ones.

use std::path::{Path, PathBuf};

#[derive(Debug, Default, Clone)]
pub struct CgroupMounts {
    /// cgroup v1 hierarchies: their controllers (named hierarchies such
    /// as `name=systemd` have none) and mount points.
    v1: Vec<(Vec<String>, PathBuf)>,
    /// A cgroup2 mount.
    v2: Option<PathBuf>,
}

impl CgroupMounts {
    /// This host's, from the calling thread's mount table (none when it
    /// cannot be read, which is logged).
    pub fn detect() -> CgroupMounts {
        match crate::mountinfo::read() {
            Ok(table) => Self::from_table(&table),
            Err(e) => {
                tracing::warn!("reading mountinfo: {e}");
                CgroupMounts::default()
            }
        }
    }

    pub fn from_table(table: &[crate::mountinfo::Mount]) -> CgroupMounts {
        let mut m = CgroupMounts::default();
        for e in table {
            match e.fs_type.as_str() {
                "cgroup" => {
                    let controllers = e
                        .super_options
                        .split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains('='))
                        .map(str::to_owned)
                        .collect();
                    m.v1.push((controllers, e.mount_point.clone()));
                }
                "cgroup2" if m.v2.is_none() => m.v2 = Some(e.mount_point.clone()),
                _ => {}
            }
        }
        m
    }

    /// The v1 hierarchies: controllers and mount point.
    pub fn v1(&self) -> &[(Vec<String>, PathBuf)] {
        &self.v1
    }

    /// The cgroup2 mount.
    pub fn v2(&self) -> Option<&Path> {
        self.v2.as_deref()
    }

    /// Whether containers' cgroups are v1 ones (legacy or hybrid hosts).
    pub fn is_v1(&self) -> bool {
        self.v1.iter().any(|(c, _)| !c.is_empty())
    }

    /// `cgroup`'s directory in the v1 hierarchy of `controller`.
    pub fn v1_dir(&self, controller: &str, cgroup: &Path) -> Option<PathBuf> {
        self.v1
            .iter()
            .find(|(c, _)| c.iter().any(|x| x == controller))
            .map(|(_, mnt)| mnt.join(relative(cgroup)))
    }

    /// `cgroup`'s directory in the cgroup2 mount.
    pub fn v2_dir(&self, cgroup: &Path) -> Option<PathBuf> {
        self.v2.as_ref().map(|mnt| mnt.join(relative(cgroup)))
    }
}

/// A cgroup path without its leading `/`.
pub fn relative(cgroup: &Path) -> &Path {
    cgroup.strip_prefix("/").unwrap_or(cgroup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo() {
        let parse = |t: &str| CgroupMounts::from_table(&crate::mountinfo::parse(t));
        let m = parse(
            "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
             40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
             41 31 0:38 / /sys/fs/cgroup/uni\\040fied rw,relatime - cgroup2 cgroup2 rw\n",
        );
        assert!(m.is_v1());
        assert_eq!(
            m.v1_dir("memory", Path::new("/a/b")),
            Some(PathBuf::from("/sys/fs/cgroup/memory/a/b"))
        );
        assert_eq!(m.v2(), Some(Path::new("/sys/fs/cgroup/uni fied")));
        let m = parse("1 0 0:1 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
        assert!(!m.is_v1());
    }
}

//! Mounts: the default filesystems of a container, the pod's files
//! (`/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`, `/dev/shm`), the CRI
//! mounts, and the masked and read-only paths.

use std::path::{Path, PathBuf};

use crius_proto::cri::{LinuxContainerSecurityContext, Mount as CriMount, MountPropagation};
use oci_spec::runtime::Mount;

use super::EtcFiles;
use super::error::{SpecError, quote};

/// The longest container path accepted.
pub(crate) const MAX_PATH: usize = 4096;

/// Checks and normalizes an absolute path inside the container: it must
/// start with `/`, have no `..` component and no NUL; `.` components,
/// repeated and trailing slashes are removed.
pub(crate) fn clean_container_path(p: &str, what: &str) -> Result<String, SpecError> {
    if !p.starts_with('/') {
        return Err(SpecError::invalid(format!(
            "{what} {} is not absolute",
            quote(p)
        )));
    }
    if p.len() > MAX_PATH || p.contains('\0') {
        return Err(SpecError::invalid(format!("invalid {what} {}", quote(p))));
    }
    let mut out = String::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(SpecError::invalid(format!(
                    "{what} {} has a \"..\" component",
                    quote(p)
                )));
            }
            c => {
                out.push('/');
                out.push_str(c);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

fn depth(p: &str) -> usize {
    p.matches('/').count()
}

fn mount(dst: &str, typ: &str, src: impl Into<PathBuf>, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(dst));
    m.set_typ(Some(typ.to_string()));
    m.set_source(Some(src.into()));
    m.set_options(Some(options.iter().map(|s| s.to_string()).collect()));
    m
}

/// containerd's default mounts of a container (without `/run`).
fn default_mounts(privileged: bool) -> Vec<Mount> {
    let ro_or_rw = if privileged { "rw" } else { "ro" };
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", ro_or_rw],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", ro_or_rw],
        ),
    ]
}

/// Replaces the `cgroup` mount at /sys/fs/cgroup, on a cgroup v1 host, by
/// what libcontainer would make of it: a tmpfs with each v1 hierarchy's
/// directory of the container's cgroup (`cgroups_path`) bound at its name
/// (symlinked names, `cpu` for `cpu,cpuacct`, bound too). For containers
/// that join an existing PID namespace: there libcontainer 0.7 looks
/// itself up in the host's /proc by its PID inside the namespace and fails
/// when that PID does not exist on the host. The caller makes
/// /sys/fs/cgroup read-only (a readonly path) unless privileged.
pub(super) fn cgroup_v1_binds(
    mounts: &mut Vec<Mount>,
    cgroups_path: &str,
    controllers: &[(String, String)],
    privileged: bool,
) {
    let Some(at) = mounts.iter().position(|m| {
        m.destination() == Path::new("/sys/fs/cgroup") && m.typ().as_deref() == Some("cgroup")
    }) else {
        return;
    };
    let ro_or_rw = if privileged { "rw" } else { "ro" };
    let mut replacement = vec![mount(
        "/sys/fs/cgroup",
        "tmpfs",
        "tmpfs",
        &["nosuid", "noexec", "nodev", "mode=755", "size=64k"],
    )];
    let path = cgroups_path.trim_start_matches('/');
    for (name, dir) in controllers {
        replacement.push(mount(
            &format!("/sys/fs/cgroup/{name}"),
            "bind",
            format!("/sys/fs/cgroup/{dir}/{path}"),
            &["rbind", "nosuid", "noexec", "nodev", ro_or_rw],
        ));
    }
    mounts.splice(at..=at, replacement);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Propagation {
    Private,
    Slave,
    Shared,
}

/// A bind mount to add, from the CRI or for a pod file.
#[derive(Debug)]
struct Bind {
    dst: String,
    src: PathBuf,
    readonly: bool,
    recursive_readonly: bool,
    propagation: Propagation,
}

/// Checks a CRI mount's host path: absolute, no NUL, no `..` component
/// (kubelet never sends one; refusing it keeps a path that climbs out of
/// a volume directory from being created or resolved).
fn check_host_path(p: &str) -> Result<PathBuf, SpecError> {
    if !p.starts_with('/') || p.contains('\0') || p.len() > MAX_PATH {
        return Err(SpecError::invalid(format!(
            "mount host path {} is not a valid absolute path",
            quote(p)
        )));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(SpecError::invalid(format!(
            "mount host path {} has a \"..\" component",
            quote(p)
        )));
    }
    Ok(PathBuf::from(p))
}

/// Checks a CRI mount as [`build`] does, without building anything.
pub(crate) fn check_cri_mount(m: &CriMount) -> Result<(), SpecError> {
    cri_bind(m).map(|_| ())
}

fn cri_bind(m: &CriMount) -> Result<Bind, SpecError> {
    let dst = clean_container_path(&m.container_path, "mount container path")?;
    if dst == "/" {
        return Err(SpecError::invalid("a mount over / is not allowed"));
    }
    if m.image.is_some() {
        // The caller mounts the image and passes a read-only bind of it
        // (`image_volumes`); one that reaches here was not prepared.
        return Err(SpecError::invalid(format!(
            "image volume at {} was not mounted: image volumes are prepared by the sandbox",
            quote(&dst)
        )));
    }
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(SpecError::invalid("id-mapped mounts are not supported"));
    }
    let src = check_host_path(&m.host_path)?;
    let propagation = match MountPropagation::try_from(m.propagation) {
        Ok(MountPropagation::PropagationPrivate) => Propagation::Private,
        Ok(MountPropagation::PropagationHostToContainer) => Propagation::Slave,
        Ok(MountPropagation::PropagationBidirectional) => Propagation::Shared,
        Err(_) => {
            tracing::warn!(
                propagation = m.propagation,
                "unknown mount propagation; using private"
            );
            Propagation::Private
        }
    };
    if m.recursive_read_only {
        if !m.readonly {
            return Err(SpecError::invalid(
                "recursive read-only mount requires readonly",
            ));
        }
        if propagation != Propagation::Private {
            return Err(SpecError::invalid(
                "recursive read-only mount requires private propagation",
            ));
        }
    }
    Ok(Bind {
        dst,
        src,
        readonly: m.readonly,
        recursive_readonly: m.recursive_read_only,
        propagation,
    })
}

/// The mounts of a container and the rootfs propagation they need.
pub(crate) struct Mounts {
    pub mounts: Vec<Mount>,
    pub rootfs_propagation: Option<String>,
}

/// Builds the mount list: defaults first (without those a CRI mount
/// replaces, and without everything under `/dev` when `/dev` itself is
/// mounted), then the CRI mounts and the pod files, shallowest
/// destination first.
///
/// Every bind is `rbind` with an explicit propagation (`rprivate`,
/// `rslave` for host-to-container, `rshared` for bidirectional) and `ro`,
/// `rro` or `rw`. The pod's `/etc` files are read-only when the rootfs is;
/// `/dev/shm` is the pod's shm directory, or the host's `/dev/shm` for a
/// host-IPC pod. The rootfs propagation is `shared` when a bind is
/// bidirectional, else `slave` when one is host-to-container, else unset
/// (libcontainer then makes the container's mounts slaves), as containerd
/// sets it.
///
/// libcontainer 0.7 ignores the per-mount propagation options (runc
/// honours them) and applies the rootfs propagation to every mount: under
/// `shared` the monitor's executor (`monitor::propagation`) sets each
/// bind's own `rprivate` or `rslave` before the container's exec.
///
/// Host paths are not created or resolved here: see
/// [`super::prepare_host_paths`].
pub(crate) fn build(
    cri_mounts: &[CriMount],
    etc: &EtcFiles,
    readonly_rootfs: bool,
    privileged: bool,
    host_ipc: bool,
) -> Result<Mounts, SpecError> {
    let mut binds = Vec::with_capacity(cri_mounts.len() + 4);
    for m in cri_mounts {
        binds.push(cri_bind(m)?);
    }
    let shm = if host_ipc {
        Some(PathBuf::from("/dev/shm"))
    } else {
        etc.shm.clone()
    };
    let extras: [(&str, Option<&Path>, bool); 4] = [
        ("/etc/hostname", etc.hostname.as_deref(), readonly_rootfs),
        ("/etc/hosts", etc.hosts.as_deref(), readonly_rootfs),
        (
            "/etc/resolv.conf",
            etc.resolv_conf.as_deref(),
            readonly_rootfs,
        ),
        ("/dev/shm", shm.as_deref(), false),
    ];
    for (dst, src, readonly) in extras {
        let Some(src) = src else { continue };
        if binds.iter().any(|b| b.dst == dst) {
            continue;
        }
        binds.push(Bind {
            dst: dst.to_string(),
            src: src.to_path_buf(),
            readonly,
            recursive_readonly: false,
            propagation: Propagation::Private,
        });
    }
    binds.sort_by_key(|b| depth(&b.dst));

    let dev_replaced = binds.iter().any(|b| b.dst == "/dev");
    let mut mounts: Vec<Mount> = default_mounts(privileged)
        .into_iter()
        .filter(|m| {
            let dst = m.destination().to_string_lossy();
            let replaced = binds.iter().any(|b| b.dst == dst);
            let under_dev = dev_replaced && dst.starts_with("/dev/");
            !(replaced || under_dev)
        })
        .collect();

    // The rootfs propagation in the OCI spec's words ("shared", "slave"):
    // libcontainer refuses runc's "rshared" and "rslave" aliases ("failed
    // to prepare rootfs") and always applies it recursively.
    let mut rootfs_propagation: Option<&str> = None;
    for b in binds {
        let prop = match b.propagation {
            Propagation::Private => "rprivate",
            Propagation::Slave => {
                if rootfs_propagation != Some("shared") {
                    rootfs_propagation = Some("slave");
                }
                "rslave"
            }
            Propagation::Shared => {
                rootfs_propagation = Some("shared");
                "rshared"
            }
        };
        let access = if b.recursive_readonly {
            "rro"
        } else if b.readonly {
            "ro"
        } else {
            "rw"
        };
        mounts.push(mount(&b.dst, "bind", b.src, &["rbind", prop, access]));
    }
    // libcontainer 0.7 ignores the per-mount propagation options and gives
    // every bind the rootfs's (its default is a recursive slave, so a
    // "private" bind would receive host mounts): with no bind asking for
    // propagation, make the whole tree private, which is what each bind
    // asked for.
    Ok(Mounts {
        mounts,
        rootfs_propagation: Some(rootfs_propagation.unwrap_or("private").to_string()),
    })
}

/// containerd's default masked paths.
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// containerd's default read-only paths.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn path_list(given: &[String], default: &[&str], what: &str) -> Result<Vec<String>, SpecError> {
    if given.is_empty() {
        return Ok(default.iter().map(|s| s.to_string()).collect());
    }
    given
        .iter()
        .map(|p| clean_container_path(p, what))
        .collect()
}

/// Masked and read-only paths: the CRI lists when given, else the
/// defaults; none for a privileged container.
pub(crate) fn masked_and_readonly(
    sc: Option<&LinuxContainerSecurityContext>,
    privileged: bool,
) -> Result<(Vec<String>, Vec<String>), SpecError> {
    if privileged {
        return Ok((Vec::new(), Vec::new()));
    }
    let empty = Vec::new();
    let masked = sc.map_or(&empty, |s| &s.masked_paths);
    let readonly = sc.map_or(&empty, |s| &s.readonly_paths);
    Ok((
        path_list(masked, DEFAULT_MASKED_PATHS, "masked path")?,
        path_list(readonly, DEFAULT_READONLY_PATHS, "read-only path")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cri(dst: &str, src: &str) -> CriMount {
        CriMount {
            container_path: dst.into(),
            host_path: src.into(),
            ..Default::default()
        }
    }

    fn find<'a>(m: &'a Mounts, dst: &str) -> Vec<&'a Mount> {
        m.mounts
            .iter()
            .filter(|m| m.destination() == Path::new(dst))
            .collect()
    }

    fn opts(m: &Mount) -> Vec<String> {
        m.options().clone().unwrap_or_default()
    }

    fn etc() -> EtcFiles {
        EtcFiles {
            hosts: Some("/pod/hosts".into()),
            resolv_conf: Some("/pod/resolv.conf".into()),
            hostname: Some("/pod/hostname".into()),
            shm: Some("/pod/shm".into()),
        }
    }

    #[test]
    fn clean_paths() {
        assert_eq!(clean_container_path("/a//b/./c/", "p").unwrap(), "/a/b/c");
        assert_eq!(clean_container_path("/", "p").unwrap(), "/");
        assert!(clean_container_path("a/b", "p").is_err());
        assert!(clean_container_path("/a/../b", "p").is_err());
        assert!(clean_container_path("/a/..", "p").is_err());
        assert!(clean_container_path("/a\0", "p").is_err());
        assert_eq!(clean_container_path("/a/..b", "p").unwrap(), "/a/..b");
    }

    #[test]
    fn defaults_and_pod_files() {
        let m = build(&[], &etc(), false, false, false).unwrap();
        let dsts: Vec<_> = m.mounts.iter().map(|m| m.destination().clone()).collect();
        let want = [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
            "/etc/hostname",
            "/etc/hosts",
            "/etc/resolv.conf",
            "/dev/shm",
        ];
        assert_eq!(dsts, want.iter().map(PathBuf::from).collect::<Vec<_>>());
        let dev = find(&m, "/dev")[0];
        assert_eq!(
            opts(dev),
            ["nosuid", "strictatime", "mode=755", "size=65536k"]
        );
        assert!(opts(find(&m, "/sys")[0]).contains(&"ro".to_string()));
        assert!(opts(find(&m, "/sys/fs/cgroup")[0]).contains(&"ro".to_string()));
        let shm = find(&m, "/dev/shm")[0];
        assert_eq!(shm.source().as_deref(), Some(Path::new("/pod/shm")));
        assert_eq!(opts(shm), ["rbind", "rprivate", "rw"]);
        assert_eq!(opts(find(&m, "/etc/hosts")[0]), ["rbind", "rprivate", "rw"]);
        assert_eq!(m.rootfs_propagation.as_deref(), Some("private"));

        let m = build(&[], &etc(), true, false, false).unwrap();
        assert_eq!(
            opts(find(&m, "/etc/resolv.conf")[0]),
            ["rbind", "rprivate", "ro"]
        );
        assert_eq!(opts(find(&m, "/dev/shm")[0]), ["rbind", "rprivate", "rw"]);
    }

    #[test]
    fn privileged_sysfs_and_cgroup_rw() {
        let m = build(&[], &EtcFiles::default(), false, true, false).unwrap();
        assert!(opts(find(&m, "/sys")[0]).contains(&"rw".to_string()));
        assert!(opts(find(&m, "/sys/fs/cgroup")[0]).contains(&"rw".to_string()));
        // no shm dir given: the default tmpfs stays
        assert_eq!(find(&m, "/dev/shm")[0].typ().as_deref(), Some("tmpfs"));
    }

    #[test]
    fn host_ipc_binds_host_shm() {
        let m = build(&[], &etc(), false, false, true).unwrap();
        let shm = find(&m, "/dev/shm");
        assert_eq!(shm.len(), 1);
        assert_eq!(shm[0].source().as_deref(), Some(Path::new("/dev/shm")));
    }

    #[test]
    fn propagation_options() {
        let mut a = cri("/a", "/h/a");
        a.propagation = MountPropagation::PropagationPrivate as i32;
        let mut b = cri("/b", "/h/b");
        b.propagation = MountPropagation::PropagationHostToContainer as i32;
        b.readonly = true;
        let m = build(&[a, b.clone()], &EtcFiles::default(), false, false, false).unwrap();
        assert_eq!(opts(find(&m, "/a")[0]), ["rbind", "rprivate", "rw"]);
        assert_eq!(opts(find(&m, "/b")[0]), ["rbind", "rslave", "ro"]);
        // the OCI name: libcontainer refuses "rslave"
        assert_eq!(m.rootfs_propagation.as_deref(), Some("slave"));

        let mut c = cri("/c", "/h/c");
        c.propagation = MountPropagation::PropagationBidirectional as i32;
        let m = build(
            &[c.clone(), b.clone()],
            &EtcFiles::default(),
            false,
            false,
            false,
        )
        .unwrap();
        assert_eq!(opts(find(&m, "/c")[0]), ["rbind", "rshared", "rw"]);
        assert_eq!(m.rootfs_propagation.as_deref(), Some("shared"));
        // bidirectional wins whatever the order
        let m = build(&[b, c], &EtcFiles::default(), false, false, false).unwrap();
        assert_eq!(m.rootfs_propagation.as_deref(), Some("shared"));

        let mut d = cri("/d", "/h/d");
        d.propagation = 42;
        let m = build(&[d], &EtcFiles::default(), false, false, false).unwrap();
        assert_eq!(opts(find(&m, "/d")[0]), ["rbind", "rprivate", "rw"]);
    }

    #[test]
    fn recursive_read_only() {
        let mut a = cri("/a", "/h/a");
        a.readonly = true;
        a.recursive_read_only = true;
        let m = build(&[a.clone()], &EtcFiles::default(), false, false, false).unwrap();
        assert_eq!(opts(find(&m, "/a")[0]), ["rbind", "rprivate", "rro"]);

        a.readonly = false;
        assert!(matches!(
            build(&[a.clone()], &EtcFiles::default(), false, false, false),
            Err(SpecError::Invalid(_))
        ));
        a.readonly = true;
        for p in [
            MountPropagation::PropagationHostToContainer,
            MountPropagation::PropagationBidirectional,
        ] {
            a.propagation = p as i32;
            assert!(matches!(
                build(&[a.clone()], &EtcFiles::default(), false, false, false),
                Err(SpecError::Invalid(_))
            ));
        }
    }

    #[test]
    fn cri_mounts_replace_defaults_and_sort_by_depth() {
        let mounts = [
            cri("/x/y/z", "/h/z"),
            cri("/etc/hosts", "/kubelet/hosts"),
            cri("/sys", "/h/sys"),
            cri("/x", "/h/x"),
        ];
        let m = build(&mounts, &etc(), false, false, false).unwrap();
        let hosts = find(&m, "/etc/hosts");
        assert_eq!(hosts.len(), 1);
        assert_eq!(
            hosts[0].source().as_deref(),
            Some(Path::new("/kubelet/hosts"))
        );
        let sys = find(&m, "/sys");
        assert_eq!(sys.len(), 1);
        assert_eq!(sys[0].typ().as_deref(), Some("bind"));
        let pos = |d: &str| {
            m.mounts
                .iter()
                .position(|m| m.destination() == Path::new(d))
        };
        assert!(pos("/x") < pos("/x/y/z"));

        // /dev replaced: nothing below it from the defaults
        let m = build(
            &[cri("/dev", "/dev")],
            &EtcFiles::default(),
            false,
            false,
            false,
        )
        .unwrap();
        assert!(find(&m, "/dev/pts").is_empty());
        assert!(find(&m, "/dev/mqueue").is_empty());
    }

    #[test]
    fn bad_cri_mounts() {
        for m in [
            cri("rel", "/h"),
            cri("/a/../etc", "/h"),
            cri("/", "/h"),
            cri("/a", ""),
            cri("/a", "rel"),
            cri("/a", "/h/../etc"),
            cri("/a", "/h/.."),
        ] {
            assert!(matches!(
                build(&[m], &EtcFiles::default(), false, false, false),
                Err(SpecError::Invalid(_))
            ));
        }
        // ".." inside a name is not a component
        assert!(
            build(
                &[cri("/a", "/h/..x")],
                &EtcFiles::default(),
                false,
                false,
                false
            )
            .is_ok()
        );
        let mut img = cri("/a", "");
        img.image = Some(Default::default());
        assert!(build(&[img], &EtcFiles::default(), false, false, false).is_err());
    }

    #[test]
    fn masked_paths_defaults_and_overrides() {
        let (m, r) = masked_and_readonly(None, false).unwrap();
        assert_eq!(m, DEFAULT_MASKED_PATHS);
        assert_eq!(r, DEFAULT_READONLY_PATHS);
        assert!(m.contains(&"/sys/devices/virtual/powercap".to_string()));

        let sc = LinuxContainerSecurityContext {
            masked_paths: vec!["/bin/ls".into()],
            ..Default::default()
        };
        let (m, r) = masked_and_readonly(Some(&sc), false).unwrap();
        assert_eq!(m, ["/bin/ls"]);
        assert_eq!(r, DEFAULT_READONLY_PATHS);

        let (m, r) = masked_and_readonly(Some(&sc), true).unwrap();
        assert!(m.is_empty() && r.is_empty());

        let bad = LinuxContainerSecurityContext {
            readonly_paths: vec!["/proc/../etc".into()],
            ..Default::default()
        };
        assert!(masked_and_readonly(Some(&bad), false).is_err());
    }
}

//! Tests of the whole spec: one fixture pod and container, varied.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crius_proto::cri::{
    Capability as CriCaps, ContainerConfig, ContainerMetadata, ImageSpec, Int64Value, KeyValue,
    LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, SecurityProfile, security_profile::ProfileType,
};
use oci_spec::image::{ConfigBuilder, ImageConfiguration, ImageConfigurationBuilder};
use oci_spec::runtime::{Capability, LinuxNamespaceType, LinuxSeccompAction, Spec};

use super::*;

struct Fixture {
    rootfs: tempfile::TempDir,
    pod: PodSandboxConfig,
    container: ContainerConfig,
    image: ImageConfiguration,
    pod_namespaces: PodNamespaces,
    host: HostLimits,
}

fn pod_ns() -> PodNamespaces {
    PodNamespaces {
        net: Some("/run/crius/ns/p1/net".into()),
        ipc: Some("/run/crius/ns/p1/ipc".into()),
        uts: Some("/run/crius/ns/p1/uts".into()),
        pid: None,
        pid_target: None,
        user: None,
    }
}

fn fixture() -> Fixture {
    let rootfs = tempfile::tempdir().unwrap();
    std::fs::create_dir(rootfs.path().join("etc")).unwrap();
    std::fs::write(
        rootfs.path().join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\nwww-data:x:33:33::/var/www:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        rootfs.path().join("etc/group"),
        "root:x:0:\nwww-data:x:33:\nadm:x:4:www-data\n",
    )
    .unwrap();
    let pod = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "pod".into(),
            uid: "uid-1".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "pod-host".into(),
        linux: Some(LinuxPodSandboxConfig {
            sysctls: HashMap::from([("kernel.shm_rmid_forced".into(), "1".into())]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let container = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "ctr".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: "busybox:1.29".into(),
            ..Default::default()
        }),
        envs: vec![KeyValue {
            key: "FOO".into(),
            value: "bar".into(),
        }],
        annotations: HashMap::from([
            ("user.annotation".into(), "x".into()),
            (annotations::CONTAINER_TYPE.into(), "sandbox".into()),
        ]),
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                cpu_shares: 2,
                memory_limit_in_bytes: 64 << 20,
                oom_score_adj: -998,
                ..Default::default()
            }),
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(NamespaceOption {
                    pid: NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    let image = ImageConfigurationBuilder::default()
        .config(
            ConfigBuilder::default()
                .entrypoint(vec!["/bin/sh".to_string()])
                .cmd(vec!["-c".to_string(), "sleep 1".to_string()])
                .env(vec!["PATH=/bin".to_string()])
                .user("www-data".to_string())
                .volumes(vec!["/data".to_string()])
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    Fixture {
        rootfs,
        pod,
        container,
        image,
        pod_namespaces: pod_ns(),
        host: HostLimits {
            min_oom_score_adj: 0,
            ..HostLimits::default()
        },
    }
}

impl Fixture {
    fn sc(&mut self) -> &mut LinuxContainerSecurityContext {
        self.container
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
    }

    fn build(&self) -> Result<Spec, SpecError> {
        let input = SpecInput {
            sandbox_id: "sandbox-1",
            pod: &self.pod,
            container: &self.container,
            image_name: "",
            image: &self.image,
            rootfs: self.rootfs.path(),
            root_path: None,
            pod_namespaces: self.pod_namespaces.clone(),
            cgroups_path: "/kubepods/pod-1/ctr-1".into(),
            hostname: "pod-host".into(),
            etc_files: EtcFiles {
                hosts: Some("/run/crius/pods/p1/hosts".into()),
                resolv_conf: Some("/run/crius/pods/p1/resolv.conf".into()),
                hostname: Some("/run/crius/pods/p1/hostname".into()),
                shm: Some("/run/crius/pods/p1/shm".into()),
            },
            host: self.host.clone(),
            seccomp_profile_root: Path::new("/var/lib/kubelet/seccomp"),
            seccomp_default_when_unset: false,
        };
        build(&input)
    }
}

fn ns_types(s: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
    s.linux()
        .as_ref()
        .unwrap()
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| (n.typ(), n.path().clone()))
        .collect()
}

fn caps_of(s: &Spec) -> &oci_spec::runtime::LinuxCapabilities {
    s.process()
        .as_ref()
        .unwrap()
        .capabilities()
        .as_ref()
        .unwrap()
}

#[test]
fn full_spec_round_trips_through_json() {
    let f = fixture();
    let spec = f.build().unwrap();
    let json = serde_json::to_string_pretty(&spec).unwrap();
    let back: Spec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec);
    assert!(json.contains("\"ociVersion\": \"1.2.0\""));

    let p = spec.process().as_ref().unwrap();
    assert_eq!(p.args().as_ref().unwrap(), &["/bin/sh", "-c", "sleep 1"]);
    assert_eq!(
        p.env().as_ref().unwrap(),
        &["PATH=/bin", "HOSTNAME=pod-host", "FOO=bar"]
    );
    assert_eq!(p.cwd(), Path::new("/"));
    assert_eq!((p.user().uid(), p.user().gid()), (33, 33));
    assert_eq!(p.user().additional_gids().as_ref().unwrap(), &[4, 33]);
    assert_eq!(p.no_new_privileges(), None, "unset, not false (see mod.rs)");
    assert_eq!(p.oom_score_adj(), Some(0), "clamped to the host's floor");
    assert!(p.rlimits().is_none());
    assert_eq!(p.terminal(), Some(false));

    assert_eq!(spec.hostname().as_deref(), Some("pod-host"));
    let root = spec.root().as_ref().unwrap();
    assert_eq!(root.path(), f.rootfs.path());
    assert_eq!(root.readonly(), Some(false));

    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(
        linux.cgroups_path().as_deref(),
        Some(Path::new("/kubepods/pod-1/ctr-1"))
    );
    assert_eq!(
        linux
            .sysctl()
            .as_ref()
            .unwrap()
            .get("kernel.shm_rmid_forced")
            .map(String::as_str),
        Some("1")
    );
    assert!(linux.seccomp().is_none(), "unset seccomp is unconfined");
    assert_eq!(
        linux.masked_paths().as_ref().unwrap().len(),
        DEFAULT_MASKED_PATHS.len()
    );
    let res = linux.resources().as_ref().unwrap();
    assert_eq!(res.cpu().as_ref().unwrap().shares(), Some(2));
    assert_eq!(res.memory().as_ref().unwrap().limit(), Some(64 << 20));
    assert!(!res.devices().as_ref().unwrap()[0].allow());

    let a = spec.annotations().as_ref().unwrap();
    assert_eq!(a[annotations::CONTAINER_TYPE], "container");
    assert_eq!(a[annotations::SANDBOX_ID], "sandbox-1");
    assert_eq!(a[annotations::SANDBOX_NAME], "pod");
    assert_eq!(a[annotations::SANDBOX_NAMESPACE], "default");
    assert_eq!(a[annotations::SANDBOX_UID], "uid-1");
    assert_eq!(a[annotations::CONTAINER_NAME], "ctr");
    assert_eq!(a[annotations::IMAGE_NAME], "busybox:1.29");
    assert_eq!(a["user.annotation"], "x");

    // Image volumes are ignored.
    assert!(
        !spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.destination() == Path::new("/data"))
    );
}

#[test]
fn namespaces_by_mode() {
    let mut f = fixture();
    let s = f.build().unwrap();
    assert_eq!(
        ns_types(&s),
        vec![
            (LinuxNamespaceType::Pid, None),
            (
                LinuxNamespaceType::Network,
                Some("/run/crius/ns/p1/net".into())
            ),
            (LinuxNamespaceType::Ipc, Some("/run/crius/ns/p1/ipc".into())),
            (LinuxNamespaceType::Uts, Some("/run/crius/ns/p1/uts".into())),
            (LinuxNamespaceType::Mount, None),
            (LinuxNamespaceType::Cgroup, None),
        ]
    );

    f.pod_namespaces.pid = Some("/proc/123/ns/pid".into());
    f.sc().namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Pod as i32,
        ..Default::default()
    });
    let s = f.build().unwrap();
    assert_eq!(
        ns_types(&s)[0],
        (LinuxNamespaceType::Pid, Some("/proc/123/ns/pid".into()))
    );

    f.sc().namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Node as i32,
        ..Default::default()
    });
    f.pod_namespaces = PodNamespaces::default(); // host network, IPC, UTS
    f.pod.linux.as_mut().unwrap().sysctls.clear();
    f.host.cgroup = CgroupMode::V1;
    let s = f.build().unwrap();
    assert_eq!(ns_types(&s), vec![(LinuxNamespaceType::Mount, None)]);
    assert!(
        s.hostname().is_none(),
        "no hostname in the host's UTS namespace"
    );
    let shm: Vec<_> = s
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .filter(|m| m.destination() == Path::new("/dev/shm"))
        .collect();
    assert_eq!(shm[0].source().as_deref(), Some(Path::new("/dev/shm")));

    f.sc().namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Target as i32,
        ..Default::default()
    });
    assert!(matches!(f.build(), Err(SpecError::Invalid(_))));
    f.pod_namespaces.pid_target = Some("/proc/9/ns/pid".into());
    assert_eq!(
        ns_types(&f.build().unwrap())[0],
        (LinuxNamespaceType::Pid, Some("/proc/9/ns/pid".into()))
    );

    f.sc().namespace_options = Some(NamespaceOption {
        userns_options: Some(Default::default()), // mode POD
        ..Default::default()
    });
    assert!(
        matches!(f.build(), Err(SpecError::Invalid(_))),
        "the pod has no user namespace"
    );
    f.pod_namespaces.user = Some("/run/p/ns/user".into());
    let s = f.build().unwrap();
    assert!(ns_types(&s).contains(&(LinuxNamespaceType::User, Some("/run/p/ns/user".into()))));
    f.sc().namespace_options = None;
    assert!(
        matches!(f.build(), Err(SpecError::Invalid(_))),
        "a container outside its pod's user namespace"
    );
}

#[test]
fn sysctls_checked_against_pod_namespaces() {
    let mut f = fixture();
    f.pod.linux.as_mut().unwrap().sysctls = HashMap::from([(
        "kernel.shm_rmid_forced".into(),
        "1+kernel.core_pattern=|/x".into(),
    )]);
    assert!(matches!(f.build(), Err(SpecError::Invalid(_))));
    f.pod.linux.as_mut().unwrap().sysctls =
        HashMap::from([("kernel.shm_rmid_forced".into(), "1=1".into())]);
    assert!(matches!(f.build(), Err(SpecError::Invalid(_))));

    f.pod.linux.as_mut().unwrap().sysctls =
        HashMap::from([("net.ipv4.ip_unprivileged_port_start".into(), "0".into())]);
    assert!(f.build().is_ok());
    f.pod_namespaces.net = None;
    assert!(matches!(f.build(), Err(SpecError::Invalid(_))));
}

#[test]
fn privileged_versus_not() {
    let mut f = fixture();
    let s = f.build().unwrap();
    let linux = s.linux().as_ref().unwrap();
    assert!(!linux.masked_paths().as_ref().unwrap().is_empty());
    assert!(!linux.readonly_paths().as_ref().unwrap().is_empty());
    assert_eq!(caps_of(&s).bounding().as_ref().unwrap().len(), 14);

    f.sc().privileged = true;
    assert!(
        matches!(f.build(), Err(SpecError::Invalid(_))),
        "pod not privileged"
    );

    f.pod.linux.as_mut().unwrap().security_context = Some(LinuxSandboxSecurityContext {
        privileged: true,
        ..Default::default()
    });
    f.sc().seccomp = Some(SecurityProfile {
        profile_type: ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    });
    let s = f.build().unwrap();
    let linux = s.linux().as_ref().unwrap();
    assert!(linux.masked_paths().as_ref().unwrap().is_empty());
    assert!(linux.readonly_paths().as_ref().unwrap().is_empty());
    assert!(linux.seccomp().is_none());
    let rules = linux
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .as_ref()
        .unwrap();
    assert_eq!(rules.len(), 1);
    assert!(rules[0].allow());
    assert_eq!(caps_of(&s).bounding().as_ref().unwrap().len(), 41);
    assert!(
        !ns_types(&s)
            .iter()
            .any(|(t, _)| *t == LinuxNamespaceType::Cgroup)
    );
    let sys = s
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new("/sys"))
        .unwrap();
    assert!(sys.options().as_ref().unwrap().contains(&"rw".to_string()));

    // A Localhost profile is ignored too (critest checks it), unread.
    f.sc().seccomp = Some(SecurityProfile {
        profile_type: ProfileType::Localhost as i32,
        localhost_ref: "/nonexistent/block-hostname.json".into(),
    });
    let s = f.build().unwrap();
    assert!(s.linux().as_ref().unwrap().seccomp().is_none());
}

#[test]
fn inheritable_capabilities_always_empty() {
    let mut cases: Vec<Fixture> = Vec::new();
    cases.push(fixture());
    let mut f = fixture();
    f.sc().capabilities = Some(CriCaps {
        add_capabilities: vec!["ALL".into()],
        ..Default::default()
    });
    cases.push(f);
    let mut f = fixture();
    f.sc().capabilities = Some(CriCaps {
        add_capabilities: vec!["NET_ADMIN".into()],
        drop_capabilities: vec!["ALL".into()],
        add_ambient_capabilities: vec!["NET_ADMIN".into()],
    });
    cases.push(f);
    let mut f = fixture();
    f.pod.linux.as_mut().unwrap().security_context = Some(LinuxSandboxSecurityContext {
        privileged: true,
        ..Default::default()
    });
    f.sc().privileged = true;
    cases.push(f);
    for f in &cases {
        let s = f.build().unwrap();
        let c = caps_of(&s);
        assert_eq!(c.inheritable().as_ref().map(|i| i.len()), Some(0));
        assert_eq!(c.bounding(), c.effective());
        assert_eq!(c.bounding(), c.permitted());
    }
    let s = cases[2].build().unwrap();
    let c = caps_of(&s);
    assert_eq!(c.ambient().as_ref().unwrap().len(), 1);
    assert!(
        c.ambient()
            .as_ref()
            .unwrap()
            .contains(&Capability::NetAdmin)
    );
    assert_eq!(c.bounding().as_ref().unwrap().len(), 1);
}

#[test]
fn seccomp_runtime_default_and_localhost() {
    let mut f = fixture();
    f.sc().seccomp = Some(SecurityProfile {
        profile_type: ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    });
    let s = f.build().unwrap();
    let sec = s.linux().as_ref().unwrap().seccomp().as_ref().unwrap();
    assert_eq!(sec.default_action(), LinuxSeccompAction::ScmpActErrno);

    let dir = tempfile::tempdir().unwrap();
    f.sc().seccomp = Some(SecurityProfile {
        profile_type: ProfileType::Localhost as i32,
        localhost_ref: dir
            .path()
            .join("missing.json")
            .to_string_lossy()
            .into_owned(),
    });
    assert!(matches!(f.build(), Err(SpecError::NotFound(_))));
}

#[test]
fn user_from_cri_and_image_user_bounds() {
    let mut f = fixture();
    f.sc().run_as_user = Some(Int64Value { value: 1000 });
    f.sc().run_as_group = Some(Int64Value { value: 3000 });
    f.sc().supplemental_groups = vec![4000];
    let s = f.build().unwrap();
    let u = s.process().as_ref().unwrap().user();
    assert_eq!((u.uid(), u.gid()), (1000, 3000));
    assert_eq!(u.additional_gids().as_ref().unwrap(), &[3000, 4000]);

    for bad in ["4294967296", "2147483648", "-1"] {
        let mut f = fixture();
        let mut cfg = f.image.config().clone().unwrap();
        cfg.set_user(Some(bad.to_string()));
        f.image.set_config(Some(cfg));
        match f.build() {
            Ok(s) => panic!(
                "{bad} gave uid {}",
                s.process().as_ref().unwrap().user().uid()
            ),
            Err(e) => assert!(matches!(e, SpecError::Invalid(_)), "{bad}: {e}"),
        }
    }
}

#[test]
fn readonly_rootfs_and_no_new_privs() {
    let mut f = fixture();
    f.sc().readonly_rootfs = true;
    f.sc().no_new_privs = true;
    let s = f.build().unwrap();
    assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
    assert_eq!(
        s.process().as_ref().unwrap().no_new_privileges(),
        Some(true)
    );
    let hosts = s
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new("/etc/hosts"))
        .unwrap();
    assert!(
        hosts
            .options()
            .as_ref()
            .unwrap()
            .contains(&"ro".to_string())
    );
}

#[test]
fn apparmor_localhost_refused() {
    let mut f = fixture();
    f.sc().apparmor = Some(SecurityProfile {
        profile_type: ProfileType::Localhost as i32,
        localhost_ref: "p".into(),
    });
    assert!(matches!(f.build(), Err(SpecError::Invalid(_))));
    f.sc().apparmor = Some(SecurityProfile {
        profile_type: ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    });
    assert!(f.build().is_ok());
}

#[test]
fn no_command_is_invalid() {
    let mut f = fixture();
    f.image = ImageConfigurationBuilder::default().build().unwrap();
    let err = f.build().unwrap_err();
    assert_eq!(err.to_string(), "no command specified");
}

#[test]
fn userns_options_checked() {
    use crius_proto::cri::{IdMapping, UserNamespace};
    let map = |c, h, l| IdMapping {
        container_id: c,
        host_id: h,
        length: l,
    };
    let pod = |uids: Vec<IdMapping>| UserNamespace {
        mode: NamespaceMode::Pod as i32,
        gids: uids.clone(),
        uids,
    };
    assert!(check_userns(&pod(vec![map(0, 1000, 100000)])).is_ok());
    for bad in [
        pod(vec![]),
        pod(vec![map(0, 1000, 100000), map(0, 2000, 100000)]),
        pod(vec![map(1, 1000, 100000)]),
        pod(vec![map(0, 1000, 0)]),
        pod(vec![map(0, u32::MAX, 2)]),
        UserNamespace {
            mode: NamespaceMode::Container as i32,
            ..Default::default()
        },
        UserNamespace {
            mode: NamespaceMode::Target as i32,
            ..Default::default()
        },
        UserNamespace {
            mode: NamespaceMode::Node as i32,
            uids: vec![map(0, 1000, 1)],
            gids: vec![],
        },
        UserNamespace {
            mode: 42,
            ..Default::default()
        },
    ] {
        assert!(
            matches!(check_userns(&bad), Err(SpecError::Invalid(_))),
            "{bad:?}"
        );
    }
    let node = UserNamespace {
        mode: NamespaceMode::Node as i32,
        ..Default::default()
    };
    assert!(check_userns(&node).is_ok());
}

#[test]
fn cgroup_v1_binds_for_containers_joining_a_pid_namespace() {
    let mut f = fixture();
    f.host.cgroup = CgroupMode::V1;
    f.host.v1_controllers = vec![
        ("cpu".into(), "cpu,cpuacct".into()),
        ("cpu,cpuacct".into(), "cpu,cpuacct".into()),
        ("memory".into(), "memory".into()),
    ];
    let cgroup_mounts = |s: &Spec| -> Vec<(String, String, String)> {
        s.mounts()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.destination().starts_with("/sys/fs/cgroup"))
            .map(|m| {
                (
                    m.destination().display().to_string(),
                    m.typ().clone().unwrap_or_default(),
                    m.source()
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                )
            })
            .collect()
    };
    // Its own PID namespace: libcontainer's cgroup mount.
    f.sc().namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Container as i32,
        ..Default::default()
    });
    let s = f.build().unwrap();
    assert_eq!(cgroup_mounts(&s)[0].1, "cgroup");
    // The pod's: a tmpfs and the container's cgroup of each hierarchy.
    f.pod_namespaces.pid = Some("/proc/123/ns/pid".into());
    f.sc().namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Pod as i32,
        ..Default::default()
    });
    let s = f.build().unwrap();
    let cg = "kubepods/pod-1/ctr-1";
    assert_eq!(
        cgroup_mounts(&s),
        [
            ("/sys/fs/cgroup".into(), "tmpfs".into(), "tmpfs".into()),
            (
                "/sys/fs/cgroup/cpu".into(),
                "bind".into(),
                format!("/sys/fs/cgroup/cpu,cpuacct/{cg}")
            ),
            (
                "/sys/fs/cgroup/cpu,cpuacct".into(),
                "bind".into(),
                format!("/sys/fs/cgroup/cpu,cpuacct/{cg}")
            ),
            (
                "/sys/fs/cgroup/memory".into(),
                "bind".into(),
                format!("/sys/fs/cgroup/memory/{cg}")
            ),
        ]
    );
    let ro = s
        .linux()
        .as_ref()
        .unwrap()
        .readonly_paths()
        .clone()
        .unwrap();
    assert!(ro.contains(&"/sys/fs/cgroup".to_string()), "{ro:?}");
}

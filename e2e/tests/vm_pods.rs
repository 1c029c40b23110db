//! VM pods end to end: the real crius with the `vm` runtime handler, our
//! guest kernel and agent booted by the host's driver (qemu with TCG on
//! these machines), real CNI, the test registry's images. Each pod's
//! containers run in its own guest, under the namespace sandbox's monitor
//! there; their logs and exits are recorded on the host by the pod's
//! vm-monitor.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::Duration;

use crius_proto::cri::*;
use e2e::crius::Crius;
use e2e::guest::vm_toml;
use e2e::pods::{self, Env, pod_config, run_pod_on, start, status, stop_remove_pod};
use e2e::test_images::HTTPD;

async fn pull(c: &Crius, image: &str) {
    c.images()
        .await
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("pull {image}: {e:?}"));
}

/// The end of a VM pod's console (the guest kernel's and agent's lines),
/// for failure reports.
fn console(c: &Crius, pod: &str) -> String {
    let path = c.state.join("vm").join(pod).join("vm/console.log");
    let log = std::fs::read_to_string(&path).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    let monitor =
        std::fs::read_to_string(c.state.join("vm").join(pod).join("share/pod-monitor.log"))
            .unwrap_or_default();
    let mtail: Vec<&str> = monitor.lines().rev().take(30).collect();
    format!(
        "{}\nthe guest's pod monitor:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        mtail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

/// Creates a container in a VM pod, or fails with the guest's console.
async fn create(e: &Env, pod: &str, pc: &PodSandboxConfig, config: ContainerConfig) -> String {
    match pods::try_create(&e.c, pod, pc, config).await {
        Ok(id) => id,
        Err(err) => panic!("create: {err:?}\nconsole:\n{}", console(&e.c, pod)),
    }
}

#[tokio::test]
async fn a_vm_pod_runs_containers_with_logs_exec_and_network() {
    let e = Env::start(&vm_toml()).await;
    pull(&e.c, HTTPD).await;
    let handlers =
        e.c.runtime()
            .await
            .status(StatusRequest { verbose: true })
            .await
            .unwrap()
            .into_inner();
    assert!(
        handlers.runtime_handlers.iter().any(|h| h.name == "vm"),
        "Status lists the vm handler: {:?}",
        handlers.runtime_handlers
    );
    let vm_info: serde_json::Value = serde_json::from_str(&handlers.info["vm"]).unwrap();
    assert!(Path::new(vm_info["kernel"].as_str().unwrap()).is_file());

    let pc = pod_config(&e, "vm-pod");
    let pod = run_pod_on(&e.c, &pc, "vm").await;
    let st =
        e.c.runtime()
            .await
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.clone(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
    let s = st.status.unwrap();
    assert_eq!(s.state, PodSandboxState::SandboxReady as i32);
    assert_eq!(s.runtime_handler, "vm");
    let ip = s.network.unwrap().ip;
    assert!(
        ip.starts_with("198.18.") || ip.starts_with("198.19."),
        "pod IP {ip}"
    );
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    assert!(
        ["qemu", "builtin"].contains(&info["driver"].as_str().unwrap()),
        "{info}"
    );

    // A container: its output is logged on the host in the CRI format.
    let c1 = create(
        &e,
        &pod,
        &pc,
        pods::busybox(
            "talker",
            &[
                "sh",
                "-c",
                "echo hello from the guest; echo oops >&2; exec sleep 1000",
            ],
        ),
    )
    .await;
    start(&e.c, &c1).await;
    let log = pods::wait_log(&e.c, &c1, "oops").await;
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with(" stdout F hello from the guest")),
        "{log}"
    );
    assert!(lines.iter().any(|l| l.ends_with(" stderr F oops")), "{log}");

    // It runs in the guest: another kernel, the pod's hostname.
    let (code, out) = pods::sh(&e.c, &c1, "uname -r; hostname").await;
    assert_eq!(code, 0, "{out}");
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut out_lines = out.lines();
    let guest_kernel = out_lines.next().unwrap();
    assert_ne!(
        guest_kernel,
        host_kernel.trim(),
        "the container shares the host's kernel"
    );
    assert_eq!(out_lines.next(), Some("host-vm-pod"));

    // Streaming exec, with and without a terminal (crictl over SPDY).
    let out = e.c.crictl_ok(&[
        "exec",
        &c1,
        "sh",
        "-c",
        "echo streamed; echo err >&2; exit 0",
    ]);
    assert!(out.contains("streamed"), "{out}");
    let out = e.c.crictl_in_terminal(
        &["exec", "-it", &c1, "sh", "-c", "tty; stty size; echo hello"],
        Some("cols 91 rows 17"),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/dev/pts/") && text.contains("17 91") && text.contains("hello"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A host path with a mount under it made after the pod started: the
    // container sees it, the host's mount table holds none of the pod's
    // shares (they are in the pod's own namespace), and the host
    // unmounts and removes the submount while the pod runs.
    let vol = tempfile::tempdir().unwrap();
    let sub = vol.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &sub,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    std::fs::write(sub.join("file"), "on the submount\n").unwrap();
    let mut reader = pods::busybox("reader", &["sleep", "1000"]);
    reader.mounts = vec![Mount {
        host_path: vol.path().display().to_string(),
        container_path: "/data".into(),
        ..Default::default()
    }];
    let c3 = create(&e, &pod, &pc, reader).await;
    start(&e.c, &c3).await;
    let (code, out) = pods::sh(&e.c, &c3, "cat /data/sub/file").await;
    assert_eq!((code, out.trim()), (0, "on the submount"));
    let pin = e.c.state.join("vm").join(&pod).join("netns");
    assert_eq!(
        pods::mounts_under(&e.c.state),
        vec![pin.display().to_string()],
        "the host's table has the pod's mounts, not only its netns pin"
    );
    nix::mount::umount2(&sub, nix::mount::MntFlags::MNT_DETACH).unwrap();
    std::fs::remove_dir(&sub).expect("the host removes its unmounted submount");

    // The pod's IP lives in the guest: the host reaches a server there.
    let web = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "web".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: HTTPD.into(),
            ..Default::default()
        }),
        log_path: "web.log".into(),
        ..Default::default()
    };
    let c2 = create(&e, &pod, &pc, web).await;
    start(&e.c, &c2).await;
    pods::wait_log(&e.c, &c2, "httpd").await;
    let answer = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let tried = std::net::TcpStream::connect_timeout(
                &format!("{ip}:80").parse().unwrap(),
                Duration::from_secs(5),
            )
            .and_then(|mut s| {
                s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                let mut buf = String::new();
                s.read_to_string(&mut buf)?;
                Ok(buf)
            });
            match tried {
                Ok(a) => return a,
                Err(err) if std::time::Instant::now() < deadline => {
                    eprintln!("pod not reachable yet: {err}");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(err) => panic!("the pod's server is not reachable: {err}"),
            }
        }
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Stop: the exit is recorded (TERM kills the sleeping shell).
    e.c.runtime()
        .await
        .stop_container(StopContainerRequest {
            container_id: c1.clone(),
            timeout: 10,
        })
        .await
        .unwrap();
    let st = status(&e.c, &c1).await;
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 128 + 15, "{st:?}");

    let dir = e.c.state.join("vm").join(&pod);
    assert!(
        !e2e::leftovers::processes_naming(&dir).is_empty(),
        "the pod's processes"
    );
    stop_remove_pod(&e.c, &pod).await;
    assert_eq!(
        e2e::leftovers::processes_naming(&dir),
        Vec::<u32>::new(),
        "processes left"
    );
    assert!(!dir.exists(), "the pod's directory is left");
    assert_eq!(pods::mounts_under(&e.c.state), Vec::<String>::new());
}

/// crius killed (SIGKILL) and started again: the VM pod runs on, an exit
/// during the gap is recorded, no log line is lost. Then the VM itself is
/// killed: the pod reads NotReady and its container exited, its reason
/// naming the VM.
#[tokio::test]
async fn vm_pods_outlive_crius_and_report_their_vm_dying() {
    let mut e = Env::start(&vm_toml()).await;
    let pc = pod_config(&e, "vm-restart");
    let pod = run_pod_on(&e.c, &pc, "vm").await;
    let ticker = create(
        &e,
        &pod,
        &pc,
        pods::busybox(
            "ticker",
            &[
                "sh",
                "-c",
                "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done",
            ],
        ),
    )
    .await;
    start(&e.c, &ticker).await;
    let quitter = create(
        &e,
        &pod,
        &pc,
        pods::busybox("quitter", &["sh", "-c", "sleep 4; echo bye; exit 7"]),
    )
    .await;
    start(&e.c, &quitter).await;
    pods::wait_log(&e.c, &ticker, "tick 3\n").await;

    e.c.kill_and_restart().unwrap();
    // The quitter exits while crius is down (or just after it is back).
    let st = pods::wait_exited(&e.c, &quitter).await;
    assert_eq!(st.exit_code, 7, "{st:?}");
    let log = pods::wait_log(&e.c, &quitter, "bye").await;
    assert!(log.contains(" stdout F bye"), "{log}");
    assert_eq!(
        status(&e.c, &ticker).await.state,
        ContainerState::ContainerRunning as i32
    );
    // Every tick, in order, none lost across the restart.
    let last = {
        let log = pods::wait_log(&e.c, &ticker, "tick 60\n").await;
        let ticks: Vec<u64> = log
            .lines()
            .filter_map(|l| l.rsplit_once("tick ").and_then(|(_, n)| n.parse().ok()))
            .collect();
        let expected: Vec<u64> = (0..ticks.len() as u64).collect();
        assert_eq!(ticks, expected, "ticks lost or out of order");
        ticks.len()
    };
    assert!(last > 60);

    // The vm-monitor and the VMM live in the pod's own cgroup, not in
    // crius's.
    let dir = e.c.state.join("vm").join(&pod);
    let vmm: i32 = std::fs::read_to_string(dir.join("vm.pids"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let own = format!("{}/crius-pod-{pod}", e.cgroup_parent);
    let vm_monitor: u32 = std::fs::read_to_string(dir.join("monitor.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for pid in [vm_monitor, vmm as u32] {
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(
            cgroups.lines().all(|l| l.ends_with(&format!(":{own}"))),
            "process {pid} is not in {own} in every hierarchy:\n{cgroups}"
        );
    }

    // The VM dies: its VMM is killed.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vmm),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let st = pods::wait_exited(&e.c, &ticker).await;
    assert_eq!(st.reason, "VMDied", "{st:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s =
            e.c.runtime()
                .await
                .pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: pod.clone(),
                    verbose: false,
                })
                .await
                .unwrap()
                .into_inner()
                .status
                .unwrap();
        if s.state == PodSandboxState::SandboxNotready as i32 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the pod stays Ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_remove_pod(&e.c, &pod).await;
    assert_eq!(
        e2e::leftovers::processes_naming(&dir),
        Vec::<u32>::new(),
        "processes left"
    );
    assert!(!dir.exists());
    let left: Vec<String> = e2e::leftovers::cgroups_under(&e.cgroup_parent)
        .into_iter()
        .filter(|c| c.ends_with(&own))
        .collect();
    assert_eq!(left, Vec::<String>::new(), "the pod's own cgroup is left");
    assert_eq!(pods::mounts_under(&e.c.state), Vec::<String>::new());
}

/// A VM pod that cannot start (no guest kernel) is refused with a reason
/// and leaves nothing; options a VM cannot take are refused.
#[tokio::test]
async fn vm_pods_refuse_what_they_cannot_do_and_leave_nothing() {
    let e = Env::start(
        "[vm]\nkernel = \"/nonexistent/vmlinux\"\ninitramfs = \"/nonexistent/initramfs.img\"\n",
    )
    .await;
    let pc = pod_config(&e, "vm-refused");
    let err =
        e.c.runtime()
            .await
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pc.clone()),
                runtime_handler: "vm".into(),
            })
            .await
            .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("guest kernel"), "{err:?}");
    let mut host_net = pc.clone();
    host_net
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options = Some(NamespaceOption {
        network: NamespaceMode::Node as i32,
        ..Default::default()
    });
    let err =
        e.c.runtime()
            .await
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(host_net),
                runtime_handler: "vm".into(),
            })
            .await
            .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let pods =
        e.c.runtime()
            .await
            .list_pod_sandbox(ListPodSandboxRequest::default())
            .await
            .unwrap()
            .into_inner()
            .items;
    assert!(pods.is_empty(), "{pods:?}");
    let vm_dir = e.c.state.join("vm");
    assert_eq!(
        std::fs::read_dir(&vm_dir).map(|d| d.count()).unwrap_or(0),
        0,
        "pod directories left"
    );
    assert_eq!(e2e::leftovers::processes_naming(&vm_dir), Vec::<u32>::new());
}

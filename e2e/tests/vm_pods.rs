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
use e2e::pods::{self, Env, pod_config, run_pod_on, start, status, stop_remove_pod};
use e2e::test_images::HTTPD;

/// crius's config for VM pods: our guest kernel and initramfs.
fn vm_toml() -> String {
    let kernel = e2e::guest::kernel().expect("guest kernel");
    let initramfs = e2e::guest::initramfs().expect("guest initramfs");
    format!("[vm]\nkernel = {kernel:?}\ninitramfs = {initramfs:?}\n")
}

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

/// Processes whose command line names `dir` (a VM pod's processes).
fn processes_of(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes().to_vec();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle.as_slice()))
        })
        .collect()
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
    assert!(!processes_of(&dir).is_empty(), "the pod's processes");
    stop_remove_pod(&e.c, &pod).await;
    assert_eq!(processes_of(&dir), Vec::<u32>::new(), "processes left");
    assert!(!dir.exists(), "the pod's directory is left");
    assert_eq!(pods::mounts_under(&e.c.state), Vec::<String>::new());
}

//! kubelet (v1.37, built once per machine by `scripts/kube`) run against a
//! CRI runtime: standalone (no API server, static pods from a manifest
//! directory), or registered with an API server ([`Kubelet::start_with`]
//! a kubeconfig and the node's address); its HTTPS server on loopback, or
//! on the node's address (anonymous, AlwaysAllow), for what it reports of
//! its pods (`/pods`: statuses with readiness, restart counts and waiting
//! reasons).
//!
//! kubelet changes the host it runs on; [`Kubelet`] puts it back: the
//! sysctls it sets at start (saved before, restored after), its cgroups
//! (under a `crius-e2e-<pid>-` root of ours, removed after, swept if the
//! test is killed), and the fixed paths it writes when they were not there
//! before (`/var/log/containers`, `/var/lib/kubelet`, ...). Everything
//! else of it lives in a temporary directory: root dir, certificates, pod
//! logs, volume plugins. Its iptables chains are not made
//! (`makeIPTablesUtilChains: false`). One kubelet at a time per machine
//! (a lock), as those fixed paths are shared.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The sysctls kubelet sets at start (`setupKernelTunables`).
const SYSCTLS: [&str; 6] = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// Paths kubelet writes whatever its configuration says; removed after it
/// when they were not there before.
const FIXED_PATHS: [&str; 4] = [
    "/var/log/containers",
    "/var/lib/kubelet",
    "/usr/libexec/kubernetes",
    "/var/log/pods",
];

/// The kubelet binary (`scripts/kube`, cached outside the clone).
pub fn kubelet_bin() -> io::Result<PathBuf> {
    crate::guest::script_output("kube").map(|d| d.join("kubelet"))
}

/// What kubelet changes on the host, as it was before.
struct HostState {
    sysctls: Vec<(PathBuf, String)>,
    absent: Vec<PathBuf>,
}

impl HostState {
    fn save() -> io::Result<HostState> {
        let mut sysctls = Vec::new();
        for s in SYSCTLS {
            let p = Path::new("/proc/sys").join(s);
            sysctls.push((p.clone(), fs::read_to_string(&p)?.trim().to_owned()));
        }
        let absent = FIXED_PATHS
            .iter()
            .map(PathBuf::from)
            .filter(|p| !p.exists())
            .collect();
        Ok(HostState { sysctls, absent })
    }

    /// Puts the host back; returns what it could not.
    fn restore(&self) -> Vec<String> {
        let mut failed = Vec::new();
        for (p, v) in &self.sysctls {
            if fs::read_to_string(p)
                .map(|s| s.trim().to_owned())
                .ok()
                .as_ref()
                != Some(v)
                && let Err(e) = fs::write(p, v)
            {
                failed.push(format!("{}: {e}", p.display()));
            }
        }
        for p in &self.absent {
            if p.exists()
                && let Err(e) = fs::remove_dir_all(p)
            {
                failed.push(format!("{}: {e}", p.display()));
            }
        }
        failed
    }
}

/// A standalone kubelet on a crius.
pub struct Kubelet {
    child: Option<Child>,
    client: reqwest::Client,
    dir: tempfile::TempDir,
    bin: PathBuf,
    args: Vec<String>,
    pub manifests: PathBuf,
    pub pod_logs: PathBuf,
    pub node: String,
    /// Where its server listens: 127.0.0.1, or the node's address.
    pub address: String,
    pub port: u16,
    /// Its cgroup root, `/crius-e2e-<pid>-kubelet`.
    pub cgroup_root: String,
    host: HostState,
    _lock: nix::fcntl::Flock<fs::File>,
}

fn lock() -> io::Result<nix::fcntl::Flock<fs::File>> {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/crius-e2e-kubelet.lock")?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e.into())
}

impl Kubelet {
    /// Starts kubelet standalone on the CRI runtime at `socket` and waits
    /// until its server answers.
    pub async fn start(socket: &Path) -> io::Result<Kubelet> {
        Kubelet::start_with(socket, None).await
    }

    /// [`Kubelet::start`], registered with the API server of `kubeconfig`
    /// when given, as a node with the address `node_ip` (kubelet refuses a
    /// loopback one), where its server then listens.
    pub async fn start_with(socket: &Path, api: Option<(&Path, &str)>) -> io::Result<Kubelet> {
        let bin = kubelet_bin()?;
        let lock = lock()?;
        let host = HostState::save()?;
        let dir = tempfile::Builder::new()
            .prefix("crius-kubelet-")
            .tempdir()?;
        let manifests = dir.path().join("manifests");
        let pod_logs = dir.path().join("pods");
        for d in [&manifests, &pod_logs] {
            fs::create_dir_all(d)?;
        }
        let cgroup_root = format!(
            "/{}{}-kubelet",
            crate::leftovers::CGROUP_PREFIX,
            std::process::id()
        );
        make_cgroup(&cgroup_root)?;
        let node = format!("crius-e2e-{}", std::process::id());
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(io::Error::other)?;
        let mut k = Kubelet {
            child: None,
            client,
            bin,
            args: Vec::new(),
            manifests,
            pod_logs,
            node,
            address: api.map_or("127.0.0.1", |(_, ip)| ip).to_owned(),
            port: 0,
            cgroup_root,
            host,
            dir,
            _lock: lock,
        };
        // A port of its own: kubelet cannot be told port 0; when the one
        // tried is taken it exits, and the next is tried.
        let first = 20000 + (std::process::id() % 20000) as u16;
        for i in 0..20u16 {
            k.port = first.wrapping_add(i * 101) % 40000 + 20000;
            k.write_config(socket, api.map(|(k, _)| k))?;
            k.spawn()?;
            match k.wait_ready().await {
                Ok(()) => return Ok(k),
                Err(e) if k.log().contains("address already in use") => {
                    k.kill();
                    eprintln!("kubelet: port {} taken ({e}); another", k.port);
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("no free port for kubelet in 20 tries"))
    }

    fn write_config(&mut self, socket: &Path, kubeconfig: Option<&Path>) -> io::Result<()> {
        let d = self.dir.path();
        let endpoint = format!("unix://{}", socket.display());
        let config = json!({
            "kind": "KubeletConfiguration",
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "staticPodPath": self.manifests,
            "fileCheckFrequency": "1s",
            "syncFrequency": "5s",
            "podLogsDir": self.pod_logs,
            "volumePluginDir": d.join("volume-plugins"),
            "address": self.address,
            "port": self.port,
            "readOnlyPort": 0,
            "healthzPort": 0,
            "authentication": {"anonymous": {"enabled": true}, "webhook": {"enabled": false}},
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": endpoint,
            "imageServiceEndpoint": endpoint,
            // This host: cgroup v1 controllers, cgroupfs, no OOM score
            // change for kubelet itself.
            "failCgroupV1": false,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "oomScoreAdj": 0,
            "failSwapOn": false,
            "makeIPTablesUtilChains": false,
            // A test machine's disk and memory are no reason to evict or
            // collect images.
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            // Crash loops at a pace a test can watch.
            "crashLoopBackOff": {"maxContainerRestartPeriod": "5s"},
        });
        fs::write(d.join("config.json"), config.to_string())?;
        self.args = vec![
            "--config".into(),
            d.join("config.json").display().to_string(),
            "--root-dir".into(),
            d.join("root").display().to_string(),
            "--cert-dir".into(),
            d.join("pki").display().to_string(),
            "--hostname-override".into(),
            self.node.clone(),
            "--v=2".into(),
        ];
        if let Some(k) = kubeconfig {
            self.args.extend([
                "--kubeconfig".into(),
                k.display().to_string(),
                "--node-ip".into(),
                self.address.clone(),
            ]);
        }
        Ok(())
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("kubelet.log"))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        crate::crius::die_with_parent(&mut cmd);
        self.child = Some(cmd.spawn()?);
        Ok(())
    }

    async fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                return Err(io::Error::other(format!("kubelet exited: {status}")));
            }
            if self.get("/healthz").await.is_ok_and(|b| b == "ok") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "kubelet did not answer within 120 s; log:\n{}",
                    self.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn get(&self, path: &str) -> io::Result<String> {
        self.client
            .get(format!("https://{}:{}{path}", self.address, self.port))
            .send()
            .await
            .map_err(io::Error::other)?
            .text()
            .await
            .map_err(io::Error::other)
    }

    /// kubelet's stats summary (`/stats/summary`), as the metrics server
    /// and `kubectl top` read it; an error (kubelet's message) when it
    /// cannot make one.
    pub async fn stats_summary(&self) -> io::Result<Value> {
        let body = self.get("/stats/summary").await?;
        serde_json::from_str(&body).map_err(|_| io::Error::other(body))
    }

    /// kubelet's own log (klog, `--v=2`).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("kubelet.log")).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Writes a static pod's manifest (JSON); kubelet names the pod
    /// `<name>-<node>`.
    pub fn add_manifest(&self, name: &str, pod: &Value) -> io::Result<()> {
        let tmp = self.manifests.join(format!(".{name}.tmp"));
        fs::write(&tmp, pod.to_string())?;
        fs::rename(tmp, self.manifests.join(format!("{name}.json")))
    }

    pub fn remove_manifest(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.manifests.join(format!("{name}.json")))
    }

    /// kubelet's view of the static pod `name` (its `/pods` entry), if it
    /// has one.
    pub async fn pod(&self, name: &str) -> io::Result<Option<Value>> {
        let list: Value =
            serde_json::from_str(&self.get("/pods").await?).map_err(io::Error::other)?;
        let full = format!("{name}-{}", self.node);
        Ok(list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["metadata"]["name"] == full.as_str())
            .cloned())
    }

    /// Polls the pod `name` until `done` holds of it (120 s at most).
    pub async fn wait_pod(&self, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = None;
        loop {
            match self.pod(name).await {
                Ok(Some(p)) if done(&p) => return p,
                Ok(p) => last = p,
                Err(e) => eprintln!("kubelet /pods: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "pod {name}: {what} did not happen in 120 s; last status:\n{}\nkubelet log:\n{}",
                serde_json::to_string_pretty(&last.map(|p| p["status"].clone()))
                    .unwrap_or_default(),
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The CRI calls kubelet logged as Unimplemented by crius, by name.
    pub fn unimplemented_calls(&self) -> Vec<String> {
        let mut calls: Vec<String> = self
            .log()
            .lines()
            .filter(|l| l.contains("code = Unimplemented"))
            .map(|l| {
                // klog: `... "Message" err="rpc error: ..." ... ` with the
                // CRI method named in the message or the error.
                l.split(|c: char| !c.is_ascii_alphanumeric())
                    .find(|w| CRI_CALLS.contains(w))
                    .unwrap_or(l)
                    .to_owned()
            })
            .collect();
        calls.sort();
        calls.dedup();
        calls
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops kubelet (SIGTERM, then SIGKILL after 30 s).
    pub fn stop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill();
    }

    /// Stops kubelet and puts the host back: its cgroups (which must hold
    /// no process by then), the sysctls, the fixed paths. Returns what is
    /// left; the test asserts it is nothing.
    pub fn finish(&mut self) -> Vec<String> {
        self.stop();
        let mut left = Vec::new();
        let procs = crate::leftovers::cgroup_procs(&self.cgroup_root);
        if !procs.is_empty() {
            left.push(format!("processes in kubelet's cgroups: {procs:?}"));
        }
        left.extend(remove_cgroup(&self.cgroup_root));
        left.extend(self.host.restore());
        left
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop();
        let _ = remove_cgroup(&self.cgroup_root);
        let _ = self.host.restore();
    }
}

/// The CRI methods, to name a logged Unimplemented call.
const CRI_CALLS: &[&str] = &[
    "Version",
    "RunPodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "PodSandboxStatus",
    "ListPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "ListContainers",
    "ContainerStatus",
    "UpdateContainerResources",
    "ReopenContainerLog",
    "ExecSync",
    "Exec",
    "Attach",
    "PortForward",
    "ContainerStats",
    "ListContainerStats",
    "PodSandboxStats",
    "ListPodSandboxStats",
    "UpdateRuntimeConfig",
    "Status",
    "CheckpointContainer",
    "GetContainerEvents",
    "ListMetricDescriptors",
    "ListPodSandboxMetrics",
    "RuntimeConfig",
    "UpdatePodSandboxResources",
    "ListImages",
    "ImageStatus",
    "PullImage",
    "RemoveImage",
    "ImageFsInfo",
];

/// Every cgroup hierarchy's directory (v1 controllers and the cgroup2
/// mount).
fn hierarchies() -> Vec<PathBuf> {
    fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").exists())
        .collect()
}

/// Makes the cgroup `path` in every hierarchy (kubelet wants its root to
/// exist), v1 cpuset with its parent's CPUs and memory nodes.
fn make_cgroup(path: &str) -> io::Result<()> {
    for h in hierarchies() {
        let dir = h.join(path.trim_start_matches('/'));
        fs::create_dir_all(&dir)?;
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = fs::read_to_string(h.join(f)) {
                fs::write(dir.join(f), v.trim())?;
            }
        }
    }
    Ok(())
}

/// Removes the cgroup `path` and everything below it, deepest first, in
/// every hierarchy; returns what it could not remove.
fn remove_cgroup(path: &str) -> Vec<String> {
    fn below(dir: &Path, failed: &mut Vec<String>) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                below(&e.path(), failed);
            }
        }
        if let Err(e) = fs::remove_dir(dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            failed.push(format!("cgroup {}: {e}", dir.display()));
        }
    }
    let mut failed = Vec::new();
    for h in hierarchies() {
        below(&h.join(path.trim_start_matches('/')), &mut failed);
    }
    failed
}

//! The real `crius` binary under test: started with a temporary root, state
//! and socket and a generated config, talked to with a tonic CRI client or
//! crictl, stopped (or SIGKILLed and restarted) by its PID.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crius_proto::cri::image_service_client::ImageServiceClient;
use crius_proto::cri::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// Path of the crius binary: `$CRIUS_BIN`, else beside the test's target dir.
pub fn crius_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CRIUS_BIN") {
        return PathBuf::from(p);
    }
    // target/debug/deps/<test> -> target/debug/crius
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("crius"))
        .unwrap_or_else(|| PathBuf::from("crius"))
}

/// Path of crictl: `$CRICTL`, else on PATH, else in Go's bin dir.
pub fn crictl_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CRICTL") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/root/go/bin")]) {
        let p = dir.join("crictl");
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from("crictl")
}

/// Asks the kernel to SIGKILL the child when the thread that started it
/// dies, so a crashed test leaves no process behind.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Whether the crius at `bin` has NRI (`crius config` prints its section).
fn has_nri(bin: &Path) -> bool {
    Command::new(bin)
        .arg("config")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("[nri]"))
}

fn nri_socket(state: &Path) -> PathBuf {
    state.join("nri.sock")
}

pub struct Crius {
    /// The binary run.
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub socket: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
}

impl Crius {
    /// Starts crius with `mirrors` (registry host -> endpoint URL) and any
    /// extra TOML appended to the config.
    pub fn start(mirrors: &[(&str, &str)], extra: &str) -> io::Result<Crius> {
        Crius::start_with(&crius_bin(), mirrors, extra)
    }

    /// [`Crius::start`] with the binary `bin`.
    pub fn start_with(bin: &Path, mirrors: &[(&str, &str)], extra: &str) -> io::Result<Crius> {
        // Short: Unix socket paths under it (pod monitors, libcontainer's
        // notify sockets with 64-digit IDs) must fit in 107 bytes.
        crate::leftovers::sweep_killed_runs();
        let dir = tempfile::Builder::new().prefix("cr").tempdir()?;
        fs::write(
            dir.path().join(crate::leftovers::OWNER_FILE),
            std::process::id().to_string(),
        )?;
        // Searchable, as /run is: containers of pods with their own user
        // namespace reach their files under the state directory by path.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        let socket = state.join("crius.sock");
        let config = dir.path().join("config.toml");
        let mut text = format!(
            "root = {:?}\nstate = {:?}\nsocket = {:?}\nlog_level = \"info,crius=debug,sandbox_container=debug\"\n{extra}\n",
            root, state, socket
        );
        for (host, endpoint) in mirrors {
            text.push_str(&format!(
                "[registry.mirrors.{host:?}]\nendpoints = [{endpoint:?}]\n"
            ));
        }
        // NRI's socket is this crius's own, not the host's; plugins in
        // tests (critest's) may hold an event a few seconds on purpose. A
        // build from before NRI (bench-critest's --crius-before) refuses
        // the section: it goes only to a crius whose config has it.
        if has_nri(bin) {
            text.push_str(&format!(
                "[nri]\nsocket_path = {:?}\nrequest_timeout_ms = 10000\n",
                nri_socket(&state)
            ));
        }
        fs::write(&config, text)?;
        let mut c = Crius {
            bin: bin.to_path_buf(),
            dir,
            child: None,
            socket,
            root,
            state,
            config,
        };
        c.spawn()?;
        Ok(c)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("crius.log"))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        die_with_parent(&mut cmd);
        let child = cmd.spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                return Err(io::Error::other(format!(
                    "crius exited with {status} before listening; log:\n{}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(io::Error::other(format!(
            "crius did not listen within 20 s; log:\n{}",
            self.log()
        )))
    }

    /// The socket NRI plugins connect to.
    pub fn nri_socket(&self) -> PathBuf {
        nri_socket(&self.state)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("crius.log")).unwrap_or_default()
    }

    /// SIGKILLs crius (by its PID) and starts it again on the same dirs.
    pub fn kill_and_restart(&mut self) -> io::Result<()> {
        self.kill()?;
        self.spawn()
    }

    /// SIGKILLs crius (by its PID) and reaps it; [`Crius::restart`] starts
    /// it again.
    pub fn kill(&mut self) -> io::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Starts crius again on the same dirs, after [`Crius::kill`].
    pub fn restart(&mut self) -> io::Result<()> {
        self.spawn()
    }

    /// SIGTERM, then wait; returns the exit status.
    pub fn stop(&mut self) -> io::Result<Option<std::process::ExitStatus>> {
        let Some(mut c) = self.child.take() else {
            return Ok(None);
        };
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(s) = c.try_wait()? {
                return Ok(Some(s));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        c.kill()?;
        Ok(Some(c.wait()?))
    }

    async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        let path = self.socket.clone();
        // The URI is required by tonic and ignored by the connector.
        Endpoint::from_static("http://crius.invalid")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    let s = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, io::Error>(TokioIo::new(s))
                }
            }))
            .await
    }

    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel().await.expect("connect to crius"))
    }

    pub async fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel().await.expect("connect to crius"))
    }

    /// crictl pointed at this instance, to run as the caller likes.
    pub fn crictl_command(&self, args: &[&str]) -> Command {
        let endpoint = format!("unix://{}", self.socket.display());
        let cfg = self.dir.path().join("crictl.yaml");
        let _ = fs::write(&cfg, "");
        let mut cmd = Command::new(crictl_bin());
        cmd.arg("--config")
            .arg(&cfg)
            .arg("--runtime-endpoint")
            .arg(&endpoint)
            .arg("--image-endpoint")
            .arg(&endpoint)
            .arg("--timeout")
            .arg("60s")
            .args(args);
        cmd
    }

    /// crictl with a terminal of its own (under script(1): `exec -it` and
    /// `attach -t` want one), the terminal first sized by `stty` (e.g.
    /// "cols 91 rows 17") when given.
    pub fn crictl_in_terminal(&self, args: &[&str], stty: Option<&str>) -> Output {
        let crictl = self.crictl_command(args);
        let line = std::iter::once(crictl.get_program())
            .chain(crictl.get_args())
            .map(|a| format!("'{}'", a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ");
        let line = match stty {
            Some(size) => format!("stty {size}; {line}"),
            None => line,
        };
        Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run script(1)")
    }

    /// The PID of pod `pod`'s monitor (its pid file).
    pub fn monitor_pid(&self, pod: &str) -> u32 {
        fs::read_to_string(self.state.join("pods").join(pod).join("monitor.pid"))
            .expect("monitor pid file")
            .trim()
            .parse()
            .expect("monitor pid")
    }

    /// Runs crictl against this crius.
    pub fn crictl(&self, args: &[&str]) -> Output {
        self.crictl_command(args).output().expect("run crictl")
    }

    pub fn crictl_ok(&self, args: &[&str]) -> String {
        let out = self.crictl(args);
        assert!(
            out.status.success(),
            "crictl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Crius {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// How many descriptors process `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

//! The hypervisor seam: what a driver (`qemu` or `builtin`) is
//! given to start a VM, and the running VM it hands back.
//!
//! A driver starts the VMM process(es) for one VM with its work directory
//! (sockets, console log); the [`Vm`] it returns is the same for every
//! driver: its processes, the vsock backend socket on which the host reaches
//! the guest agent, and a stop that asks the agent to shut down, then kills.
//! Every failure of a start leaves no process and no file behind.

use std::fmt;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::agent_client::{AgentClient, AgentError, Health};

/// How a VM's vCPUs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's software emulation (TCG).
    Tcg,
}

impl fmt::Display for Accelerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        })
    }
}

/// The kind of KVM this host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKvm {
    /// No /dev/kvm.
    Absent,
    /// `kvm_pvm`: software nested virtualization that runs tiny payloads but
    /// no stock Linux guest.
    Pvm,
    /// KVM on VMX or SVM: runs any guest.
    Hardware,
}

impl HostKvm {
    pub fn detect() -> Self {
        Self::detect_in(Path::new("/"))
    }

    fn detect_in(root: &Path) -> Self {
        if !root.join("dev/kvm").exists() {
            HostKvm::Absent
        } else if root.join("sys/module/kvm_pvm").exists() {
            HostKvm::Pvm
        } else {
            HostKvm::Hardware
        }
    }

    /// The accelerator a standard Linux guest can run under here.
    pub fn accelerator(self) -> Accelerator {
        match self {
            HostKvm::Hardware => Accelerator::Kvm,
            HostKvm::Absent | HostKvm::Pvm => Accelerator::Tcg,
        }
    }
}

/// A disk: a raw image file, seen by the guest as the next `/dev/vdX`.
#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    pub read_only: bool,
}

/// A virtio-net interface on a TAP device that the driver creates (and that
/// goes away with the VM) in the network namespace `netns` (a path such as
/// `/run/netns/NAME`; the caller's namespace when None).
#[derive(Debug, Clone)]
pub struct Net {
    pub tap: String,
    pub mac: String,
    pub netns: Option<PathBuf>,
}

/// A host directory shared with the guest over virtio-fs (one virtiofsd
/// per share, see [`crate::virtiofs`]). The guest mounts it by `tag`
/// (`mount -t virtiofs TAG DIR`, the agent's `Mount` with fstype
/// `virtiofs`). While the VM runs, `dir` is a mount point of its own with
/// shared propagation, so that directories mounted under it later (image
/// layers, volumes) reach the guest; the stop unmounts it with whatever is
/// still mounted under it. The directory is the VM's alone while it runs.
#[derive(Debug, Clone)]
pub struct Share {
    /// 1 to 36 bytes of ASCII letters, digits, `-`, `_` and `.`.
    pub tag: String,
    /// An existing host directory.
    pub dir: PathBuf,
    /// The guest can neither write nor change metadata.
    pub read_only: bool,
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    /// A name for logs.
    pub id: String,
    /// The VM's work directory: created by the start (it must not exist)
    /// and removed by the stop.
    pub dir: PathBuf,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// Appended to the driver's kernel command line.
    pub cmdline: String,
    pub disks: Vec<Disk>,
    pub net: Option<Net>,
    /// virtio-fs shares.
    pub shares: Vec<Share>,
    /// Describe the devices in ACPI tables, for kernels that cannot take
    /// virtio-mmio devices from their command line (stock distribution
    /// kernels); ours can, and boots faster without ACPI.
    pub acpi: bool,
    /// How long the guest agent may take to answer after the start.
    pub boot_timeout: Duration,
}

impl VmConfig {
    pub fn new(id: &str, dir: PathBuf, kernel: PathBuf, initramfs: PathBuf) -> Self {
        Self {
            id: id.into(),
            dir,
            vcpus: 1,
            memory_mib: 256,
            kernel,
            initramfs,
            cmdline: String::new(),
            disks: Vec::new(),
            net: None,
            shares: Vec::new(),
            acpi: false,
            boot_timeout: Duration::from_secs(60),
        }
    }
}

/// A hypervisor driver.
pub trait Hypervisor: Send + Sync {
    /// `qemu` or `builtin`.
    fn name(&self) -> &'static str;
    fn accelerator(&self) -> Accelerator;
    /// Starts a VM and returns once its agent answers.
    fn start(&self, config: &VmConfig) -> Result<Vm, VmError>;
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{what} {path}: {source}")]
    Missing {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("invalid VM config: {0}")]
    Config(String),
    #[error("VM work directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("{process} exited during boot ({status}); {log}")]
    DiedDuringBoot {
        process: &'static str,
        status: String,
        log: String,
    },
    #[error("the guest agent did not answer within {timeout:?} ({last}); {log}")]
    BootTimeout {
        timeout: Duration,
        last: String,
        log: String,
    },
    #[error("stopping the VM: {0}")]
    Stop(io::Error),
    #[error(transparent)]
    Share(#[from] crate::virtiofs::ShareError),
}

/// One process of a VM (the VMM, the vsock backend) and its log file.
pub(crate) struct VmProcess {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
}

/// A running VM.
pub struct Vm {
    id: String,
    dir: PathBuf,
    driver: &'static str,
    accelerator: Accelerator,
    /// The VMM first, then its helpers.
    processes: Vec<VmProcess>,
    /// PIDs of helpers that fork a child and wait for it (virtiofsd's
    /// namespace sandbox): their children are killed first, so that they
    /// reap them (an orphan may have no reaper).
    parents: Vec<u32>,
    /// Share mount points, released once every process is gone.
    mounts: Vec<crate::virtiofs::SharedMount>,
    vsock: PathBuf,
    console: PathBuf,
    stopped: bool,
}

impl Vm {
    pub(crate) fn new(
        config: &VmConfig,
        driver: &'static str,
        accelerator: Accelerator,
        vsock: PathBuf,
        console: PathBuf,
    ) -> Self {
        Self {
            id: config.id.clone(),
            dir: config.dir.clone(),
            driver,
            accelerator,
            processes: Vec::new(),
            parents: Vec::new(),
            mounts: Vec::new(),
            vsock,
            console,
            stopped: false,
        }
    }

    pub(crate) fn add_process(&mut self, p: VmProcess) {
        self.processes.push(p);
    }

    /// Adds a helper that forks a child and waits for it.
    pub(crate) fn add_parent_process(&mut self, p: VmProcess) {
        self.parents.push(p.child.id());
        self.processes.push(p);
    }

    /// Adds a mount to release when the VM's processes are gone.
    pub(crate) fn add_mount(&mut self, m: crate::virtiofs::SharedMount) {
        self.mounts.push(m);
    }

    /// Adds the VMM process: the first, whose exit ends the VM.
    pub(crate) fn add_vmm(&mut self, p: VmProcess) {
        self.processes.insert(0, p);
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn driver(&self) -> &'static str {
        self.driver
    }

    pub fn accelerator(&self) -> Accelerator {
        self.accelerator
    }

    /// PIDs of the VM's processes, the VMM first.
    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(|p| p.child.id()).collect()
    }

    /// The vsock backend's socket (see [`crate::vsock`]).
    pub fn vsock_path(&self) -> &Path {
        &self.vsock
    }

    /// A new connection to the guest agent.
    pub fn agent(&self, timeout: Duration) -> Result<AgentClient, AgentError> {
        AgentClient::connect(&self.vsock, timeout)
    }

    /// Waits until the agent answers `Health`, failing early when a process
    /// of the VM exits. The first connection waits for the agent's "up"
    /// line on the console: connections made while the guest boots can
    /// wedge the vsock backend (seen with vhost-device-vsock under load).
    /// A guest that prints the line early only gets tried earlier.
    pub(crate) fn wait_for_agent(&mut self, timeout: Duration) -> Result<Health, VmError> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(2);
        let mut console = ConsoleWatch::default();
        let mut last = String::from("the agent has not said it is up on the console");
        loop {
            for p in &mut self.processes {
                if let Ok(Some(status)) = p.child.try_wait() {
                    let process = p.name;
                    return Err(VmError::DiedDuringBoot {
                        process,
                        status: describe(status),
                        log: self.logs(),
                    });
                }
            }
            if console.saw_up(&self.console) {
                match self.agent(Duration::from_secs(2)).and_then(|mut a| {
                    a.set_timeout(Some(Duration::from_secs(5)))?;
                    a.health()
                }) {
                    Ok(h) => return Ok(h),
                    Err(e) => last = e.to_string(),
                }
            }
            if Instant::now() >= deadline {
                return Err(VmError::BootTimeout {
                    timeout,
                    last,
                    log: self.logs(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// The last lines of the console and the processes' logs, for errors.
    fn logs(&self) -> String {
        let mut parts = vec![format!("console: {}", tail(&self.console))];
        for p in &self.processes {
            parts.push(format!("{}: {}", p.name, tail(&p.log)));
        }
        parts.join("; ")
    }

    /// Stops the VM: asks the agent to shut down and waits up to `grace`
    /// for the VMM to exit, then kills what is left, reaps it and removes
    /// the work directory. Idempotent.
    pub fn stop(&mut self, grace: Duration) -> Result<(), VmError> {
        if self.stopped {
            return Ok(());
        }
        if !grace.is_zero() && self.vmm_running() {
            let asked = self
                .agent(grace.min(Duration::from_secs(1)))
                .and_then(|mut a| {
                    a.set_timeout(Some(grace))?;
                    a.shutdown()
                });
            match asked {
                Ok(()) => {
                    let deadline = Instant::now() + grace;
                    while self.vmm_running() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                Err(e) => tracing::debug!(vm = %self.id, error = %e, "graceful shutdown"),
            }
        }
        self.kill_all();
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(VmError::Stop(e)),
        }
        self.stopped = true;
        tracing::info!(vm = %self.id, "VM stopped");
        Ok(())
    }

    /// Cuts the console log once it holds more than `max` bytes (its
    /// writer appends, so it goes on at the start); true when cut.
    pub fn cap_console(&self, max: u64) -> bool {
        match fs::metadata(&self.console) {
            Ok(m) if m.len() > max => fs::OpenOptions::new()
                .write(true)
                .open(&self.console)
                .and_then(|f| f.set_len(0))
                .is_ok(),
            _ => false,
        }
    }

    /// Whether the VMM still runs (a VM whose VMM exited is over).
    pub fn running(&mut self) -> bool {
        self.vmm_running()
    }

    fn vmm_running(&mut self) -> bool {
        self.processes
            .first_mut()
            .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    /// SIGKILLs and reaps every process, the VMM first, then releases the
    /// mounts, the last made first (one may be under another).
    fn kill_all(&mut self) {
        for p in &mut self.processes {
            if let Ok(None) = p.child.try_wait() {
                if self.parents.contains(&p.child.id()) {
                    kill_children_first(&mut p.child);
                }
                let _ = p.child.kill();
            }
            let _ = p.child.wait();
        }
        while let Some(m) = self.mounts.pop() {
            drop(m);
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if !self.stopped {
            self.kill_all();
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// SIGKILLs the children of `parent` (listed by /proc) and gives it a
/// moment to reap them and exit by itself. `parent` is stopped meanwhile,
/// so that it cannot fork a child after the list is read (that child,
/// orphaned, would be a zombie of init's).
fn kill_children_first(parent: &mut Child) {
    use nix::sys::signal::{Signal, kill};
    let pid = parent.id();
    let target = nix::unistd::Pid::from_raw(pid as i32);
    // The PID is ours until we reap it: signals cannot reach another.
    let _ = kill(target, Signal::SIGSTOP);
    let deadline = Instant::now() + Duration::from_millis(500);
    while !stopped(pid) && Instant::now() < deadline {
        if !matches!(parent.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let children =
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for child in children
        .split_whitespace()
        .filter_map(|c| c.parse::<i32>().ok())
    {
        // A listed child keeps its PID until its parent reaps it, and the
        // parent is stopped.
        let _ = kill(nix::unistd::Pid::from_raw(child), Signal::SIGKILL);
    }
    let _ = kill(target, Signal::SIGCONT);
    let deadline = Instant::now() + Duration::from_secs(2);
    while matches!(parent.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether process `pid` is stopped (state `T` in /proc).
fn stopped(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|close| stat[close + 1..].split_whitespace().next())
            == Some("T")
    })
}

/// Reads a growing console log for the agent's "up" line, from where it
/// left off; at most [`ConsoleWatch::LIMIT`] bytes in all (a guest that
/// floats its console is not read to the end).
#[derive(Default)]
struct ConsoleWatch {
    offset: u64,
    carry: Vec<u8>,
    seen: bool,
}

impl ConsoleWatch {
    const LIMIT: u64 = 4 << 20;

    fn saw_up(&mut self, path: &Path) -> bool {
        if self.seen || self.offset >= Self::LIMIT {
            return true;
        }
        let needle = format!(
            "{}{}",
            crius_proto::agent::CONSOLE_PREFIX,
            crius_proto::agent::UP
        );
        let Ok(mut f) = fs::File::open(path) else {
            return false;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return false;
        }
        let mut buf = std::mem::take(&mut self.carry);
        let before = buf.len();
        if (&mut f)
            .take(Self::LIMIT - self.offset)
            .read_to_end(&mut buf)
            .is_err()
        {
            return false;
        }
        self.offset += (buf.len() - before) as u64;
        self.seen = buf.windows(needle.len()).any(|w| w == needle.as_bytes());
        // Keep a needle's length, in case it straddles two reads.
        let keep = buf.len().saturating_sub(needle.len());
        self.carry = buf.split_off(keep);
        self.seen || self.offset >= Self::LIMIT
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (_, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// The last few hundred bytes of a log file, on one line.
pub(crate) fn tail(path: &Path) -> String {
    const TAIL: u64 = 600;
    let read = || -> io::Result<String> {
        let mut f = fs::File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(TAIL)))?;
        let mut buf = Vec::new();
        f.take(TAIL).read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf)
            .split(['\n', '\r'])
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" | "))
    };
    match read() {
        Ok(s) if s.is_empty() => "(empty)".into(),
        Ok(s) => s,
        Err(e) => format!("({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_kvm_kinds() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(HostKvm::detect_in(root.path()), HostKvm::Absent);
        fs::create_dir_all(root.path().join("dev")).unwrap();
        fs::write(root.path().join("dev/kvm"), "").unwrap();
        assert_eq!(HostKvm::detect_in(root.path()), HostKvm::Hardware);
        fs::create_dir_all(root.path().join("sys/module/kvm_pvm")).unwrap();
        assert_eq!(HostKvm::detect_in(root.path()), HostKvm::Pvm);
        assert_eq!(HostKvm::Pvm.accelerator(), Accelerator::Tcg);
        assert_eq!(HostKvm::Hardware.accelerator(), Accelerator::Kvm);
    }

    #[test]
    fn console_watch_finds_the_up_line_across_reads() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console.log");
        let mut w = ConsoleWatch::default();
        assert!(!w.saw_up(&p), "no file yet");
        fs::write(&p, "[0.1] booting\ncrius-ag").unwrap();
        assert!(!w.saw_up(&p));
        fs::write(&p, "[0.1] booting\ncrius-agent: up: version 1\n").unwrap();
        assert!(w.saw_up(&p));
        assert!(w.saw_up(&p), "stays seen");
    }

    #[test]
    fn tail_keeps_the_end_on_one_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        let mut s = String::new();
        for i in 0..200 {
            s.push_str(&format!("line {i}\n"));
        }
        fs::write(&p, s).unwrap();
        let t = tail(&p);
        assert!(t.ends_with("line 199"), "{t}");
        assert!(!t.contains('\n'));
        assert!(tail(&d.path().join("absent")).starts_with('('));
    }
}

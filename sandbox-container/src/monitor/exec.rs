//! ExecSync: a process joined to a running container (libcontainer's
//! tenant builder), its output collected up to [`EXEC_OUTPUT_LIMIT`] per
//! stream, answered when the process exits (not at EOF of its pipes, which
//! a background child may hold open).

use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::Instant;

use crius_proto::monitor::{EXEC_OUTPUT_LIMIT, ErrorKind, ExecResult};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::oci_spec::runtime::Spec;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::WaitStatus;

use super::container::{Ctr, DRAIN_BUDGET, Fail};
use super::logfmt::StreamKind;
use super::{sys, write_atomic};

/// How much one readiness event may read from one exec pipe.
const READ_BUDGET: usize = 1 << 20;

pub struct Exec {
    pub pid: i32,
    /// The connection waiting for the answer.
    pub conn: u64,
    /// The container it runs in.
    pub ctr: String,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    out: Vec<u8>,
    err: Vec<u8>,
    pub deadline: Option<Instant>,
    pub timed_out: bool,
}

impl Exec {
    /// Starts `cmd` in `ctr` as the process of its spec with the command
    /// replaced; stdin is /dev/null. Note: libcontainer 0.7's tenant
    /// builder does not apply the spec's seccomp profile to it.
    pub fn start(
        state_root: &Path,
        ctr: &Ctr,
        cmd: Vec<String>,
        conn: u64,
        deadline: Option<Instant>,
    ) -> Result<Exec, Fail> {
        if cmd.is_empty() {
            return Err(Fail::new(ErrorKind::InvalidArgument, "empty command"));
        }
        if cmd.iter().any(|a| a.contains('\0')) {
            return Err(Fail::new(ErrorKind::InvalidArgument, "NUL in command"));
        }
        let spec = Spec::load(ctr.bundle.join("config.json"))
            .map_err(|e| Fail::internal(format!("loading the container's spec: {e}")))?;
        // The container's own process, with the command replaced: user,
        // groups, cwd, env, capabilities, rlimits, no_new_privileges and
        // AppArmor profile all come from the spec.
        let mut process = spec.process().clone().unwrap_or_default();
        process.set_args(Some(cmd));
        process.set_terminal(Some(false));
        process.set_console_size(None);
        let process_json = state_root.join(&ctr.id).join("exec-process.json");
        let json = serde_json::to_vec(&process)
            .map_err(|e| Fail::internal(format!("encoding the exec process: {e}")))?;
        write_atomic(&process_json, &json, 0o600)
            .map_err(|e| Fail::internal(format!("writing the exec process: {e}")))?;

        let io = |e: std::io::Error| Fail::internal(format!("making exec pipes: {e}"));
        let (out_r, out_w) = sys::pipe(true, false).map_err(io)?;
        let (err_r, err_w) = sys::pipe(true, false).map_err(io)?;
        let null: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/null")
            .map_err(io)?
            .into();

        let mut builder = ContainerBuilder::new(ctr.id.clone(), SyscallType::default())
            .with_root_path(state_root)
            .map_err(|e| Fail::libcontainer("runtime root", e))?;
        builder.stdin = Some(null);
        builder.stdout = Some(out_w);
        builder.stderr = Some(err_w);
        let built = builder
            .as_tenant()
            .with_process(Some(&process_json))
            .with_detach(true)
            .build();
        let _ = std::fs::remove_file(&process_json);
        let pid = built.map_err(|e| Fail::libcontainer("starting exec", e))?;
        Ok(Exec {
            pid: pid.as_raw(),
            conn,
            ctr: ctr.id.clone(),
            stdout: Some(out_r),
            stderr: Some(err_r),
            out: Vec::new(),
            err: Vec::new(),
            deadline,
            timed_out: false,
        })
    }

    /// Reads what a pipe has (at most `budget` bytes), keeping the first
    /// [`EXEC_OUTPUT_LIMIT`] bytes and discarding the rest.
    pub fn read_pipe(&mut self, kind: StreamKind, budget: usize) {
        let (slot, acc) = match kind {
            StreamKind::Stdout => (&mut self.stdout, &mut self.out),
            StreamKind::Stderr => (&mut self.stderr, &mut self.err),
        };
        let Some(fd) = slot else { return };
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0;
        while total < budget {
            match sys::read_some(fd.as_fd(), &mut buf) {
                Ok(Some(0)) | Err(_) => {
                    *slot = None;
                    return;
                }
                Ok(Some(n)) => {
                    total += n;
                    let keep = n.min(EXEC_OUTPUT_LIMIT - acc.len());
                    acc.extend_from_slice(&buf[..keep]);
                }
                Ok(None) => return,
            }
        }
    }

    pub fn read_ready(&mut self, kind: StreamKind) {
        self.read_pipe(kind, READ_BUDGET);
    }

    /// Kills the process at its deadline.
    pub fn time_out(&mut self) {
        self.deadline = None;
        self.timed_out = true;
        let _ = sys::kill_raw(self.pid, libc::SIGKILL);
    }

    /// The process was reaped: drains what its pipes hold now and builds
    /// the answer. A timed-out exec reports exit code -1.
    pub fn finish(mut self, status: WaitStatus) -> ExecResult {
        self.read_pipe(StreamKind::Stdout, DRAIN_BUDGET);
        self.read_pipe(StreamKind::Stderr, DRAIN_BUDGET);
        let exit_code = if self.timed_out {
            -1
        } else {
            match status {
                WaitStatus::Exited(_, code) => code,
                WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
                _ => 255,
            }
        };
        ExecResult {
            exit_code,
            stdout: self.out,
            stderr: self.err,
            timed_out: self.timed_out,
        }
    }
}

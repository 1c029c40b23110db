//! ExecSync: a process joined to a running container (libcontainer's
//! tenant builder), its output collected up to [`EXEC_OUTPUT_LIMIT`] per
//! stream, answered when the process exits (not at EOF of its pipes, which
//! a background child may hold open).
//!
//! # The container's seccomp filter
//!
//! libcontainer 0.7's tenant builder rebuilds the spec's `linux` section
//! without `seccomp`, so by itself it would exec the command unfiltered.
//! [`FilterExecutor`], plugged in through libcontainer's public
//! [`Executor`] hook, loads the container's filter in the exec's own
//! process as the last step before `execve`: after libcontainer has joined
//! the namespaces and cgroup and set rlimits, user, groups, capabilities
//! and no_new_privs. Nothing is exec'd in between (no helper binary, no
//! dependency on the image's libraries); `/proc/<pid>/exe` is the user's
//! command from its first instruction.
//!
//! Loading a filter needs no_new_privs or CAP_SYS_ADMIN. With
//! no_new_privileges in the spec, libcontainer has set it already. Without
//! it (the CRI default) the exec must not gain no_new_privs (setuid and
//! file-capability binaries keep working, as in the container's init and as
//! with runc), so, like runc and libcontainer's own init, the filter is
//! loaded while the process still holds CAP_SYS_ADMIN: the process
//! libcontainer sets up gets CAP_SYS_ADMIN and CAP_SETPCAP added to its
//! bounding, permitted and effective sets, and the executor drops to the
//! spec's exact capabilities right after loading the filter (the drop runs
//! under the filter, as runc's and libcontainer's init's do). The extra
//! capabilities exist only in that process between libcontainer's
//! capability step and the drop, in code of ours, with nothing of the
//! container's running in it (libcontainer's own set-up before that step
//! holds root's full set anyway). The process is not dumpable until it
//! execs (inherited from the monitor), so nothing in the container can
//! ptrace it meanwhile. The result is checked against the container's init
//! (`monitor_exec_sync_seccomp` in the monitor tests compares CapBnd,
//! CapPrm, CapEff, NoNewPrivs and Seccomp).
//!
//! # The pod's user namespace
//!
//! The tenant builder does not join user namespaces either: in a pod with
//! its own, the command would run with the host's IDs. For such a
//! container libcontainer sets the exec up as the host's root, with the
//! spec's capabilities plus [`LOAD_CAPS`]; the executor then opens the user
//! namespace of the container's PID 1 (`/proc/1/ns/user` in the
//! container's /proc, checked to be the pod's: the same nsfs inode as its
//! pin), joins it (which grants a full capability set inside it and none
//! outside), sets the spec's groups, gid and uid there, loads the filter
//! and drops to the spec's capabilities before the exec.
//!
//! A profile with `SCMP_ACT_NOTIFY` rules is refused for exec: its listener
//! would need the notify descriptor, which only libcontainer's own (init)
//! path delivers.

use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::Instant;

use crius_proto::monitor::{EXEC_OUTPUT_LIMIT, ErrorKind, ExecResult, StreamFd};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::oci_spec::runtime::{
    Capabilities, Capability, LinuxCapabilities, LinuxNamespaceType, LinuxSeccomp, Process, Spec,
};
use libcontainer::syscall::linux::LinuxSyscall;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::sys::wait::WaitStatus;

use super::container::{Ctr, DRAIN_BUDGET, Fail};
use super::logfmt::StreamKind;
use super::sys;

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
    /// A CRI Exec: answered with `Exited` (its stdio went to the client).
    pub streaming: bool,
}

/// The exec's stdio ends (the process's sides).
struct Stdio {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

/// How the exec gets its terminal, if any.
enum Terminal<'a> {
    /// No terminal: these pipes (or /dev/null).
    None(Stdio),
    /// A pty libcontainer makes in the container, its master sent to this
    /// console socket.
    Console(&'a Path),
}

/// Starts `cmd` in `ctr` as the process of its spec with the command
/// replaced, under the spec's seccomp filter (see the module
/// documentation); its pid.
fn spawn(
    state_root: &Path,
    ctr: &Ctr,
    cmd: Vec<String>,
    terminal: Terminal<'_>,
) -> Result<i32, Fail> {
    if cmd.is_empty() {
        return Err(Fail::new(ErrorKind::InvalidArgument, "empty command"));
    }
    if cmd.iter().any(|a| a.contains('\0')) {
        return Err(Fail::new(ErrorKind::InvalidArgument, "NUL in command"));
    }
    let spec = Spec::load(ctr.bundle.join("config.json"))
        .map_err(|e| Fail::internal(format!("loading the container's spec: {e}")))?;
    // libcontainer 0.7's tenant builder joins every namespace of the
    // container but its user namespace: the executor joins that one.
    let userns_pin = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|ns| ns.iter().find(|n| n.typ() == LinuxNamespaceType::User))
        .map(|n| n.path().clone());
    // The container's own process, with the command replaced: user,
    // groups, cwd, env, capabilities, rlimits, no_new_privileges and
    // AppArmor profile all come from the spec.
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(cmd));
    process.set_terminal(Some(matches!(terminal, Terminal::Console(_))));
    process.set_console_size(None);
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    let mut executor = FilterExecutor::prepare(seccomp, &mut process)?;
    if let Some(pin) = userns_pin {
        executor.join_userns(pin.as_deref(), &mut process)?;
    }
    let process_json = state_root.join(&ctr.id).join("exec-process.json");
    let json = serde_json::to_vec(&process)
        .map_err(|e| Fail::internal(format!("encoding the exec process: {e}")))?;
    // Read by libcontainer right away and removed after: a plain write
    // (no fsync; it need not survive a crash).
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&process_json)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &json))
        .map_err(|e| Fail::internal(format!("writing the exec process: {e}")))?;

    let mut builder = ContainerBuilder::new(ctr.id.clone(), SyscallType::default())
        .with_root_path(state_root)
        .map_err(|e| Fail::libcontainer("runtime root", e))?;
    match terminal {
        Terminal::None(stdio) => {
            builder.stdin = Some(stdio.stdin);
            builder.stdout = Some(stdio.stdout);
            builder.stderr = Some(stdio.stderr);
        }
        Terminal::Console(path) => builder = builder.with_console_socket(Some(path)),
    }
    let built = builder
        .with_executor(executor)
        .as_tenant()
        .with_process(Some(&process_json))
        .with_detach(true)
        .build();
    let _ = std::fs::remove_file(&process_json);
    let pid = built.map_err(|e| {
        let mut fail = Fail::libcontainer("starting exec", e);
        // libcontainer pads the exec's error report with NULs.
        fail.message.retain(|c| c != '\0');
        fail
    })?;
    Ok(pid.as_raw())
}

fn dev_null() -> std::io::Result<OwnedFd> {
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/null")?
        .into())
}

impl Exec {
    /// Starts `cmd` in `ctr` for ExecSync, its output captured here (see
    /// the module documentation); stdin is /dev/null.
    pub fn start(
        state_root: &Path,
        ctr: &Ctr,
        cmd: Vec<String>,
        conn: u64,
        deadline: Option<Instant>,
    ) -> Result<Exec, Fail> {
        let io = |e: std::io::Error| Fail::internal(format!("making exec pipes: {e}"));
        let (out_r, out_w) = sys::pipe(true, false).map_err(io)?;
        let (err_r, err_w) = sys::pipe(true, false).map_err(io)?;
        let stdio = Stdio {
            stdin: dev_null().map_err(io)?,
            stdout: out_w,
            stderr: err_w,
        };
        let pid = spawn(state_root, ctr, cmd, Terminal::None(stdio))?;
        Ok(Exec {
            pid,
            conn,
            ctr: ctr.id.clone(),
            stdout: Some(out_r),
            stderr: Some(err_r),
            out: Vec::new(),
            err: Vec::new(),
            deadline,
            timed_out: false,
            streaming: false,
        })
    }

    /// Starts `cmd` in `ctr` for a streaming client (CRI Exec) and returns
    /// the client's ends of its stdio: the pty master with `tty`, else
    /// stdin's write end (with `stdin`; /dev/null otherwise) and the read
    /// ends of stdout and stderr. Nothing is read here.
    pub fn start_streaming(
        state_root: &Path,
        ctr: &Ctr,
        cmd: Vec<String>,
        conn: u64,
        tty: bool,
        stdin: bool,
    ) -> Result<(Exec, Vec<(StreamFd, OwnedFd)>), Fail> {
        let io = |e: std::io::Error| Fail::internal(format!("making exec pipes: {e}"));
        let mut fds = Vec::new();
        let pid = if tty {
            let path = state_root.join(format!("{}.etty", ctr.id));
            let _ = std::fs::remove_file(&path);
            let listener = std::os::unix::net::UnixListener::bind(&path)
                .map_err(|e| Fail::internal(format!("console socket: {e}")))?;
            let spawned = spawn(state_root, ctr, cmd, Terminal::Console(&path));
            let master = match &spawned {
                Ok(_) => super::container::receive_pty_master(&listener),
                Err(_) => Err(std::io::Error::other("no exec")),
            };
            let _ = std::fs::remove_file(&path);
            let pid = spawned?;
            match master {
                Ok(m) => fds.push((StreamFd::Pty, m)),
                Err(e) => {
                    let _ = sys::kill_raw(pid, libc::SIGKILL);
                    return Err(Fail::internal(format!("receiving the pty master: {e}")));
                }
            }
            pid
        } else {
            let (stdin_r, stdin_w) = if stdin {
                let (r, w) = sys::pipe(false, false).map_err(io)?;
                (r, Some(w))
            } else {
                (dev_null().map_err(io)?, None)
            };
            let (out_r, out_w) = sys::pipe(false, false).map_err(io)?;
            let (err_r, err_w) = sys::pipe(false, false).map_err(io)?;
            let stdio = Stdio {
                stdin: stdin_r,
                stdout: out_w,
                stderr: err_w,
            };
            let pid = spawn(state_root, ctr, cmd, Terminal::None(stdio))?;
            if let Some(w) = stdin_w {
                fds.push((StreamFd::Stdin, w));
            }
            fds.push((StreamFd::Stdout, out_r));
            fds.push((StreamFd::Stderr, err_r));
            pid
        };
        let exec = Exec {
            pid,
            conn,
            ctr: ctr.id.clone(),
            stdout: None,
            stderr: None,
            out: Vec::new(),
            err: Vec::new(),
            deadline: None,
            timed_out: false,
            streaming: true,
        };
        Ok((exec, fds))
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

/// The capabilities an exec holds while its seccomp filter is loaded
/// without no_new_privs: CAP_SYS_ADMIN for the load, CAP_SETPCAP to drop
/// the bounding set afterwards.
const LOAD_CAPS: [Capability; 2] = [Capability::SysAdmin, Capability::Setpcap];

/// libcontainer's last step of an exec: loads the container's seccomp
/// filter, drops the capabilities raised for that (if any) to the spec's,
/// then execs the command as libcontainer's [`DefaultExecutor`] does. It
/// runs in the exec's process, after every other step of its set-up.
#[derive(Clone)]
struct FilterExecutor {
    seccomp: Option<LinuxSeccomp>,
    /// The spec's capabilities, when the process runs with [`LOAD_CAPS`]
    /// added until the filter is loaded.
    drop_to: Option<LinuxCapabilities>,
    /// The pod's user namespace to join, and the spec's identity in it.
    userns: Option<UsernsJoin>,
}

/// The pod's user namespace (the nsfs device and inode of its pin) and the
/// exec's identity inside it.
#[derive(Clone, Debug)]
struct UsernsJoin {
    ns: (u64, u64),
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

impl FilterExecutor {
    /// The executor for an exec of `process` (the spec's, command
    /// replaced) in a container whose filter is `seccomp`; adds
    /// [`LOAD_CAPS`] to `process` when the load needs them.
    fn prepare(
        seccomp: Option<LinuxSeccomp>,
        process: &mut Process,
    ) -> Result<FilterExecutor, Fail> {
        let Some(seccomp) = seccomp else {
            return Ok(FilterExecutor {
                seccomp: None,
                drop_to: None,
                userns: None,
            });
        };
        if libcontainer::seccomp::is_notify(&seccomp) {
            return Err(Fail::new(
                ErrorKind::FailedPrecondition,
                "exec in a container whose seccomp profile has SCMP_ACT_NOTIFY rules is not supported",
            ));
        }
        let drop_to = match (process.no_new_privileges(), process.capabilities()) {
            // libcontainer sets no_new_privs before anything else.
            (Some(true), _) => None,
            // No capability change: the process keeps what it has.
            (_, None) => None,
            (_, Some(caps)) => match caps.effective() {
                Some(eff) if !eff.contains(&Capability::SysAdmin) => {
                    let spec_caps = caps.clone();
                    process.set_capabilities(Some(with_load_caps(&spec_caps)));
                    Some(spec_caps)
                }
                // CAP_SYS_ADMIN is there already (or the effective set is
                // left as it is: root's full set).
                _ => None,
            },
        };
        Ok(FilterExecutor {
            seccomp: Some(seccomp),
            drop_to,
            userns: None,
        })
    }

    /// Makes the exec join the user namespace pinned at `pin` (see the
    /// module documentation): `process` is set up as the host's root with
    /// its capabilities plus [`LOAD_CAPS`], and its own user, groups and
    /// capabilities are applied by the executor inside the namespace.
    fn join_userns(&mut self, pin: Option<&Path>, process: &mut Process) -> Result<(), Fail> {
        use std::os::unix::fs::MetadataExt as _;
        let pin = pin.ok_or_else(|| Fail::internal("the user namespace has no path"))?;
        let meta = std::fs::metadata(pin)
            .map_err(|e| Fail::internal(format!("the pod's user namespace: {e}")))?;
        let user = process.user().clone();
        self.userns = Some(UsernsJoin {
            ns: (meta.dev(), meta.ino()),
            uid: user.uid(),
            gid: user.gid(),
            groups: user.additional_gids().clone().unwrap_or_default(),
        });
        let mut root = user;
        root.set_uid(0);
        root.set_gid(0);
        root.set_additional_gids(None);
        process.set_user(root);
        let caps = match self.drop_to.clone() {
            Some(spec_caps) => spec_caps,
            None => process.capabilities().clone().unwrap_or_default(),
        };
        // CAP_SYS_PTRACE too: the container's PID 1 may be the pod's init,
        // which is not dumpable, and only that opens its namespace files.
        let mut raised = with_load_caps(&caps);
        let add = |set: &Option<Capabilities>| {
            let mut set = set.clone().unwrap_or_default();
            set.insert(Capability::SysPtrace);
            Some(set)
        };
        raised.set_bounding(add(raised.bounding()));
        raised.set_effective(add(raised.effective()));
        raised.set_permitted(add(raised.permitted()));
        process.set_capabilities(Some(raised));
        self.drop_to = Some(caps);
        Ok(())
    }
}

/// Joins the user namespace of the container's PID 1 if it is the pod's,
/// and takes the exec's identity in it (keeping the capabilities the join
/// granted, for the filter load and the drop that follow).
fn enter_userns(u: &UsernsJoin) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let ns = std::fs::File::open("/proc/1/ns/user")
        .map_err(|e| format!("opening the container's user namespace: {e}"))?;
    let meta = ns
        .metadata()
        .map_err(|e| format!("the container's user namespace: {e}"))?;
    if (meta.dev(), meta.ino()) != u.ns {
        return Err("the container's PID 1 is not in the pod's user namespace".into());
    }
    // A terminal libcontainer opened for the exec before this join belongs
    // to host root (nobody inside, so /dev/tty would not reopen): it goes
    // to the exec's user, as a pty made inside the namespace would.
    // Best effort: without CAP_CHOWN in the spec it stays as it is.
    let stdin = std::io::stdin();
    if nix::unistd::isatty(&stdin).unwrap_or(false)
        && let (Some(uid), Some(gid)) = (
            host_id("/proc/1/uid_map", u.uid),
            host_id("/proc/1/gid_map", u.gid),
        )
    {
        let _ = nix::unistd::fchown(
            &stdin,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        );
    }
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWUSER)
        .map_err(|e| format!("joining the pod's user namespace: {e}"))?;
    let groups: Vec<nix::unistd::Gid> = u
        .groups
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).map_err(|e| format!("setgroups: {e}"))?;
    let gid = nix::unistd::Gid::from_raw(u.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setresgid: {e}"))?;
    // Keep the permitted set across the uid change: the drop to the
    // spec's capabilities comes after the filter load.
    nix::sys::prctl::set_keepcaps(true).map_err(|e| format!("keepcaps: {e}"))?;
    let uid = nix::unistd::Uid::from_raw(u.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setresuid: {e}"))?;
    nix::sys::prctl::set_keepcaps(false).map_err(|e| format!("keepcaps: {e}"))?;
    Ok(())
}

/// The host ID that `id` inside maps to, from an `{uid,gid}_map` file read
/// from the host's user namespace.
fn host_id(map: &str, id: u32) -> Option<u32> {
    map_id(&std::fs::read_to_string(map).ok()?, id)
}

fn map_id(map: &str, id: u32) -> Option<u32> {
    map.lines().find_map(|l| {
        let mut f = l.split_whitespace().map(|n| n.parse::<u32>().ok());
        let (inside, outside, count) = (f.next()??, f.next()??, f.next()??);
        let offset = id.checked_sub(inside).filter(|o| *o < count)?;
        outside.checked_add(offset)
    })
}

/// `caps` with [`LOAD_CAPS`] in the bounding, effective and permitted sets
/// (a permitted set libcontainer leaves alone is not touched: it holds
/// them already).
fn with_load_caps(caps: &LinuxCapabilities) -> LinuxCapabilities {
    let add = |set: Option<&Capabilities>| -> Capabilities {
        let mut set = set.cloned().unwrap_or_default();
        set.extend(LOAD_CAPS);
        set
    };
    let mut out = caps.clone();
    // libcontainer empties the bounding set when the spec has none.
    out.set_bounding(Some(add(caps.bounding().as_ref())));
    out.set_effective(Some(add(caps.effective().as_ref())));
    if let Some(permitted) = caps.permitted() {
        out.set_permitted(Some(add(Some(permitted))));
    }
    out
}

impl Executor for FilterExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        if let Some(u) = &self.userns {
            enter_userns(u).map_err(ExecutorError::Other)?;
            if let Some(caps) = &self.drop_to {
                // A uid change cleared the effective set: back to the
                // spec's plus what the filter load needs.
                libcontainer::capabilities::drop_privileges(&with_load_caps(caps), &LinuxSyscall)
                    .map_err(|e| {
                    ExecutorError::Other(format!(
                        "capabilities in the pod's user namespace: {}",
                        sandbox_api::error::chain(&e)
                    ))
                })?;
            }
        }
        if let Some(seccomp) = &self.seccomp {
            // Notify rules were refused in `prepare`: no descriptor comes
            // back.
            libcontainer::seccomp::initialize_seccomp(seccomp).map_err(|e| {
                ExecutorError::Other(format!(
                    "loading the seccomp filter: {}",
                    sandbox_api::error::chain(&e)
                ))
            })?;
        }
        if let Some(caps) = &self.drop_to {
            libcontainer::capabilities::drop_privileges(caps, &LinuxSyscall).map_err(|e| {
                ExecutorError::Other(format!(
                    "dropping the capabilities raised to load the seccomp filter: {}",
                    sandbox_api::error::chain(&e)
                ))
            })?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::map_id;

    #[test]
    fn ids_map_through_each_range() {
        let map = "         0     200000      65536\n     65536     300000         10\n";
        assert_eq!(map_id(map, 0), Some(200_000));
        assert_eq!(map_id(map, 5), Some(200_005));
        assert_eq!(map_id(map, 65_536), Some(300_000));
        assert_eq!(map_id(map, 65_546), None);
        assert_eq!(map_id("garbage\n", 0), None);
    }
}

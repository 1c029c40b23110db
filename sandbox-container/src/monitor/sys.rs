//! Small system-call helpers of the monitor. Every `unsafe` block of the
//! monitor lives here, each in a short function with its reasoning.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::fcntl::{FcntlArg, FdFlag, OFlag, SealFlag, fcntl};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, sigaction};
use nix::unistd::{ForkResult, Pid};

/// `fork(2)`. Callers must be single-threaded (the monitor is), and the
/// child must end with [`exit_now`] rather than return into the caller's
/// stack.
pub fn fork() -> io::Result<ForkResult> {
    ensure_single_threaded()?;
    // SAFETY: the process has one thread (checked just above), so the child
    // gets a consistent copy of every lock and allocator state.
    unsafe { nix::unistd::fork() }.map_err(io::Error::from)
}

/// Ends a forked child without running destructors or atexit handlers.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` only ends the process; nothing is unwound.
    unsafe { libc::_exit(code) }
}

/// Fails unless this process has exactly one thread (forking a threaded
/// process is what the monitor exists to avoid).
pub fn ensure_single_threaded() -> io::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse::<u32>().ok());
    match threads {
        Some(1) => Ok(()),
        Some(n) => Err(io::Error::other(format!(
            "the monitor must be single-threaded, found {n} threads"
        ))),
        None => Err(io::Error::other("cannot count threads")),
    }
}

/// A pipe; both ends close-on-exec, the read end (and, with
/// `nonblocking_write`, the write end) non-blocking as asked.
pub fn pipe(nonblocking_read: bool, nonblocking_write: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    if nonblocking_read {
        set_nonblocking(r.as_fd())?;
    }
    if nonblocking_write {
        set_nonblocking(w.as_fd())?;
    }
    Ok((r, w))
}

pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = fcntl(fd, FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags))?;
    Ok(())
}

pub fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// Reads once, retrying on EINTR. `Ok(None)` means "would block".
pub fn read_some(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match nix::unistd::read(fd, buf) {
            Ok(n) => return Ok(Some(n)),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes all of `buf` to a blocking descriptor.
pub fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `poll(2)`; EINTR is reported as zero ready descriptors.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: `fds` is a valid, exclusively borrowed slice of pollfd
    // structures and its exact length is passed along.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(n as usize)
}

/// `kill(2)` with a raw signal number (real-time signals included).
pub fn kill_raw(pid: i32, signal: i32) -> io::Result<()> {
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: kill has no memory effects; pid > 0 names one process only.
    let r = unsafe { libc::kill(pid, signal) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `signal` is a signal number kill(2) accepts.
pub fn valid_signal(signal: i32) -> bool {
    (1..=libc::SIGRTMAX()).contains(&signal)
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the options used here (subreaper, dumpable) take one integer
    // argument and no pointers.
    let r = unsafe {
        libc::prctl(
            option,
            arg,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets `lo` up in the current network namespace.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket(2) takes no pointers; the fd is owned at once.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: req is a valid ifreq for the ioctl to read and write.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the SIOCGIFFLAGS answer filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn set_child_subreaper() -> io::Result<()> {
    prctl(libc::PR_SET_CHILD_SUBREAPER, 1)
}

pub fn set_not_dumpable() -> io::Result<()> {
    prctl(libc::PR_SET_DUMPABLE, 0)
}

/// Sets the calling thread's name (`comm`, up to 15 bytes).
pub fn set_name(name: &str) {
    let Ok(c) = CString::new(name) else { return };
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of which the kernel
    // copies at most 16 bytes; `c` outlives the call.
    unsafe {
        libc::prctl(
            libc::PR_SET_NAME,
            c.as_ptr() as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        );
    }
}

/// Closes every descriptor above 2 but those in `keep`.
pub fn close_fds_except(keep: &[RawFd]) -> io::Result<()> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        if let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<RawFd>().ok())
        {
            fds.push(fd);
        }
    }
    // The directory's own descriptor is closed by now and yields EBADF.
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: nothing in this process owns these descriptors any
            // more (the caller has just started and holds only `keep`);
            // closing an already closed number yields EBADF, ignored.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// Points descriptors 0, 1 and 2 at /dev/null, so that nothing numbered
/// 0..=2 is ever handed out for anything else.
pub fn stdio_to_dev_null() -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for target in 0..=2 {
        // SAFETY: dup2 onto 0..=2 replaces the standard streams, which are
        // owned by the process as a whole, with /dev/null.
        let r = unsafe { libc::dup2(null.as_raw_fd(), target) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The write end of the signal self-pipe, for the handler.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signal: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    // SAFETY: only async-signal-safe calls: errno is saved and restored
    // around write(2) on a non-blocking pipe (a full pipe drops the byte,
    // which is fine: one pending byte is enough to wake the loop).
    unsafe {
        let errno = *libc::__errno_location();
        let b = signal as u8;
        libc::write(fd, (&b as *const u8).cast(), 1);
        *libc::__errno_location() = errno;
    }
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Resets every signal to its default action and unblocks all signals, so
/// that nothing ignored or blocked by whoever started us leaks into the
/// containers (dispositions and masks survive fork and exec).
pub fn reset_signals() -> io::Result<()> {
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for signal in Signal::iterator() {
        if matches!(signal, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no code of ours in signal context.
        let _ = unsafe { sigaction(signal, &dfl) };
    }
    // Real-time signals: glibc's posix_spawn (which std's Command uses)
    // leaves its internal ones (32, 33) ignored in the child, and glibc's
    // sigaction refuses to touch them, so ignored ones are reset with the
    // raw system call.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    for signal in 32..=libc::SIGRTMAX() {
        if raw_signal_ignored(signal) {
            raw_signal_default(signal)?;
        }
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    Ok(())
}

/// The kernel's `struct sigaction` (x86_64 and aarch64 layout).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[repr(C)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn raw_sigaction(signal: i32, new: Option<&KernelSigaction>) -> io::Result<KernelSigaction> {
    let mut old = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    let new_ptr = new.map_or(std::ptr::null(), |n| n as *const KernelSigaction);
    // SAFETY: rt_sigaction reads `new` (if any) and writes `old`, both of
    // the kernel's layout with an 8-byte signal set, as passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            signal,
            new_ptr,
            &mut old as *mut KernelSigaction,
            std::mem::size_of::<u64>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(old)
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn raw_signal_ignored(signal: i32) -> bool {
    raw_sigaction(signal, None).is_ok_and(|a| a.handler == libc::SIG_IGN)
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn raw_signal_default(signal: i32) -> io::Result<()> {
    let dfl = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    raw_sigaction(signal, Some(&dfl)).map(|_| ())
}

/// Installs the monitor's handlers: SIGCHLD, SIGTERM, SIGINT and SIGHUP
/// write their number to a self-pipe (returned, read end non-blocking);
/// SIGPIPE is caught by a no-op handler, so a write to a closed peer fails
/// with EPIPE. Caught (rather than ignored or blocked) signals are reset to
/// the default by execve, so containers start with clean dispositions.
pub fn install_signal_pipe() -> io::Result<OwnedFd> {
    let (r, w) = pipe(true, true)?;
    SIGNAL_PIPE.store(w.as_raw_fd(), Ordering::Relaxed);
    // The write end lives as long as the process.
    std::mem::forget(w);
    let catch = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART | SaFlags::SA_NOCLDSTOP,
        SigSet::empty(),
    );
    for signal in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        // SAFETY: `on_signal` is async-signal-safe (see there).
        unsafe { sigaction(signal, &catch) }?;
    }
    let noop = SigAction::new(
        SigHandler::Handler(ignore_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: `ignore_signal` does nothing.
    unsafe { sigaction(Signal::SIGPIPE, &noop) }?;
    Ok(r)
}

/// Blocks `signals` (for sigwait) in the calling thread.
pub fn block_signals(signals: &[Signal]) -> io::Result<SigSet> {
    let mut set = SigSet::empty();
    for s in signals {
        set.add(*s);
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&set), None)?;
    Ok(set)
}

/// A sealed in-memory copy of `src`: memfd_create(MFD_CLOEXEC |
/// MFD_ALLOW_SEALING), copy, then F_SEAL_SEAL | SHRINK | GROW | WRITE.
pub fn sealed_memfd_copy(name: &str, src: &mut std::fs::File) -> io::Result<OwnedFd> {
    let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: memfd_create reads the NUL-terminated name; on success the
    // returned descriptor is new and owned by nobody else.
    let raw =
        unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor (checked above) that we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut file = std::fs::File::from(fd);
    let copied = io::copy(src, &mut file)?;
    if copied == 0 {
        return Err(io::Error::other("the executable is empty"));
    }
    let fd = OwnedFd::from(file);
    let seals = SealFlag::F_SEAL_SEAL
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE;
    // F_SEAL_WRITE fails with EBUSY while a page of the copy still has an
    // extra reference: freshly written pages wait in per-CPU LRU batches,
    // and the kernel drains only the sealing CPU's (CI saw it once, on the
    // first pod of a crius). Other CPUs drain theirs soon: try again.
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match fcntl(fd.as_fd(), FcntlArg::F_ADD_SEALS(seals)) {
            Ok(_) => return Ok(fd),
            Err(nix::errno::Errno::EBUSY) if pause < std::time::Duration::from_secs(1) => {
                std::thread::sleep(pause);
                pause *= 2;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The current seals of a memfd.
#[cfg(test)]
pub fn seals(fd: BorrowedFd<'_>) -> io::Result<SealFlag> {
    let bits = fcntl(fd, FcntlArg::F_GET_SEALS)?;
    Ok(SealFlag::from_bits_retain(bits))
}

/// The pid of this process.
pub fn getpid() -> i32 {
    Pid::this().as_raw()
}

//! Confinement, once the VM is built and before any vCPU runs (their
//! threads wait for it): every
//! descriptor the VMM needs is open by then, so it drops what it no longer
//! needs. No capabilities (KVM and the TAP are open descriptors; nothing
//! else needs privilege), `no_new_privs`, and a seccomp filter allowing the
//! system calls the vCPU and device threads make and nothing else: no
//! execve, no open of a path, no new socket but a Unix one (a guest
//! connection to `<vsock>_<port>`), ioctl only KVM_RUN and FIONBIO. Any
//! other call fails with EPERM.
//!
//! At start (before anything is opened), [`close_inherited_fds`] closes
//! whatever descriptor above stderr the parent let through.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xae80;
/// What `set_nonblocking` calls (libc's type for it differs between gnu
/// and musl).
const FIONBIO: u64 = 0x5421;

/// The system calls allowed without conditions.
const ALLOWED: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fstat,
    libc::SYS_close,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_fcntl,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getrandom,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The filter, as a BPF program.
pub fn filter() -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|&nr| (nr, Vec::new())).collect();
    let arg_eq = |index: u8, value: u64| {
        SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(|e| e.to_string())
    };
    rules.insert(
        libc::SYS_ioctl,
        vec![arg_eq(1, KVM_RUN)?, arg_eq(1, FIONBIO)?],
    );
    rules.insert(libc::SYS_socket, vec![arg_eq(0, libc::AF_UNIX as u64)?]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| e.to_string())?;
    BpfProgram::try_from(filter).map_err(|e| e.to_string())
}

/// Installs the filter on every thread of the process (the vCPU threads
/// exist by then: the filter allows no new thread).
pub fn install() -> Result<(), String> {
    let program = filter()?;
    seccompiler::apply_filter_all_threads(&program).map_err(|e| e.to_string())
}

/// Drops every capability and sets no_new_privs, for the calling thread
/// and the threads it starts afterwards: call it before starting them.
pub fn drop_capabilities() -> Result<(), String> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset reads a version-3 header and two data structs, which
    // we pass and which outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) };
    if r != 0 {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if r != 0 {
        return Err(format!("no_new_privs: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Closes every descriptor above 2: the VMM starts with stdin, stdout and
/// stderr only, whatever its parent leaked.
pub fn close_inherited_fds() {
    // SAFETY: close_range with integer arguments; nothing in this process
    // owns a descriptor above 2 yet (it runs first in main).
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if r != 0 {
        // Kernels before 5.9: the slow way.
        for fd in 3..1024 {
            // SAFETY: as above; EBADF for descriptors that are not open.
            unsafe { libc::close(fd) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_refuses_open_exec_and_inet_sockets() {
        let program = filter().unwrap();
        // The filter binds only the thread that installs it.
        std::thread::spawn(move || {
            let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
            seccompiler::apply_filter(&program).unwrap();
            let e = std::fs::File::open("/etc/hostname").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EPERM));
            let e = std::process::Command::new("/bin/true")
                .status()
                .unwrap_err();
            assert!(e.raw_os_error().is_some(), "{e}");
            assert!(std::net::TcpListener::bind("127.0.0.1:0").is_err());
            // What the VMM does keeps working.
            use std::io::{Read, Write};
            (&a).write_all(b"x").unwrap();
            let mut buf = [0u8; 1];
            (&b).read_exact(&mut buf).unwrap();
            b.set_nonblocking(true).unwrap();
            let _ = std::time::SystemTime::now();
        })
        .join()
        .unwrap();
        // This thread is not confined.
        assert!(std::fs::File::open("/proc/self/status").is_ok());
    }
}

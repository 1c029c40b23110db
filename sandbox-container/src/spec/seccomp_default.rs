//! crius's RuntimeDefault seccomp profile: everything is refused with
//! `EPERM` except an allow list of the common system calls, in the manner
//! of Docker's and containerd's default profiles, plus the system calls
//! that need a capability, allowed only when the container has it.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};

use super::error::SpecError;

use super::caps::{
    CAP_BPF, CAP_DAC_READ_SEARCH, CAP_PERFMON, CAP_SYS_ADMIN, CAP_SYS_BOOT, CAP_SYS_CHROOT,
    CAP_SYS_MODULE, CAP_SYS_NICE, CAP_SYS_PACCT, CAP_SYS_PTRACE, CAP_SYS_RAWIO, CAP_SYS_TIME,
    CAP_SYS_TTY_CONFIG, CAP_SYSLOG, CapMask, bit,
};

/// `EPERM`, what a refused system call returns.
const EPERM: u32 = 1;
/// `ENOSYS`, what `clone3` returns without CAP_SYS_ADMIN, so that libcs
/// fall back to `clone` (whose flags can be checked).
const ENOSYS: u32 = 38;
/// `AF_VSOCK`: sockets of this family are refused.
const AF_VSOCK: u64 = 40;
/// CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
/// CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWCGROUP.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// System calls allowed to every container.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// System calls allowed only on this architecture.
#[cfg(target_arch = "x86_64")]
const ARCH_ALLOWED: &[&str] = &["arch_prctl", "modify_ldt"];
#[cfg(target_arch = "aarch64")]
const ARCH_ALLOWED: &[&str] = &[
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "sync_file_range2",
    "breakpoint",
    "cacheflush",
    "set_tls",
];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ARCH_ALLOWED: &[&str] = &[];

/// System calls allowed when the container holds a capability.
const BY_CAPABILITY: &[(u32, &[&str])] = &[
    (CAP_DAC_READ_SEARCH, &["open_by_handle_at"]),
    (
        CAP_SYS_ADMIN,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (CAP_SYS_BOOT, &["reboot"]),
    (CAP_SYS_CHROOT, &["chroot"]),
    (
        CAP_SYS_MODULE,
        &["delete_module", "init_module", "finit_module"],
    ),
    (CAP_SYS_PACCT, &["acct"]),
    (
        CAP_SYS_PTRACE,
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    (CAP_SYS_RAWIO, &["iopl", "ioperm"]),
    (
        CAP_SYS_TIME,
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    (CAP_SYS_TTY_CONFIG, &["vhangup"]),
    (
        CAP_SYS_NICE,
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    (CAP_SYSLOG, &["syslog"]),
    (CAP_BPF, &["bpf"]),
    (CAP_PERFMON, &["perf_event_open"]),
];

/// `personality(2)` values allowed: PER_LINUX, PER_LINUX32,
/// UNAME26, UNAME26|PER_LINUX32, and the query (0xffffffff).
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// The seccomp name of the host's architecture.
pub(crate) fn primary_arch() -> Option<Arch> {
    if cfg!(target_arch = "x86_64") {
        Some(Arch::ScmpArchX86_64)
    } else if cfg!(target_arch = "aarch64") {
        Some(Arch::ScmpArchAarch64)
    } else {
        None
    }
}

/// The seccomp architectures of the host's native architecture (and the
/// compatibility ones it runs).
pub(crate) fn native_arches() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchArm, Arch::ScmpArchAarch64]
    } else {
        Vec::new()
    }
}

fn syscall(names: &[&str], action: LinuxSeccompAction, args: Vec<LinuxSeccompArg>) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names.iter().map(|n| n.to_string()).collect());
    s.set_action(action);
    if !args.is_empty() {
        s.set_args(Some(args));
    }
    s
}

fn arg(
    index: usize,
    value: u64,
    value_two: Option<u64>,
    op: LinuxSeccompOperator,
) -> Result<LinuxSeccompArg, SpecError> {
    let mut b = LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .op(op);
    if let Some(v) = value_two {
        b = b.value_two(v);
    }
    b.build()
        .map_err(|_| SpecError::invalid("cannot build a seccomp argument"))
}

/// The RuntimeDefault profile for a container holding `caps` (its bounding
/// set).
pub(crate) fn profile(caps: CapMask) -> Result<LinuxSeccomp, SpecError> {
    let allow = LinuxSeccompAction::ScmpActAllow;
    let mut calls = vec![syscall(ALLOWED, allow, vec![])];
    if !ARCH_ALLOWED.is_empty() {
        calls.push(syscall(ARCH_ALLOWED, allow, vec![]));
    }
    calls.push(syscall(
        &["socket"],
        allow,
        vec![arg(0, AF_VSOCK, None, LinuxSeccompOperator::ScmpCmpNe)?],
    ));
    for p in PERSONALITIES {
        calls.push(syscall(
            &["personality"],
            allow,
            vec![arg(0, *p, None, LinuxSeccompOperator::ScmpCmpEq)?],
        ));
    }
    for (cap, names) in BY_CAPABILITY {
        if caps & bit(*cap) != 0 {
            calls.push(syscall(names, allow, vec![]));
        }
    }
    if caps & bit(CAP_SYS_ADMIN) == 0 {
        // clone without namespace flags; clone3 (flags in memory, not
        // checkable) answers ENOSYS so that libcs fall back to clone.
        calls.push(syscall(
            &["clone"],
            allow,
            vec![arg(
                0,
                CLONE_NAMESPACE_FLAGS,
                Some(0),
                LinuxSeccompOperator::ScmpCmpMaskedEq,
            )?],
        ));
        let mut clone3 = syscall(&["clone3"], LinuxSeccompAction::ScmpActErrno, vec![]);
        clone3.set_errno_ret(Some(ENOSYS));
        calls.push(clone3);
    }

    let mut s = LinuxSeccomp::default();
    s.set_default_action(LinuxSeccompAction::ScmpActErrno);
    s.set_default_errno_ret(Some(EPERM));
    let arches = native_arches();
    if !arches.is_empty() {
        s.set_architectures(Some(arches));
    }
    s.set_syscalls(Some(calls));
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::caps::DEFAULT_CAPS;

    fn allowed(p: &LinuxSeccomp, name: &str) -> bool {
        p.syscalls().as_ref().unwrap().iter().any(|s| {
            s.action() == LinuxSeccompAction::ScmpActAllow
                && s.args().is_none()
                && s.names().iter().any(|n| n == name)
        })
    }

    #[test]
    fn default_profile_shape() {
        let p = profile(DEFAULT_CAPS).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(EPERM));
        assert!(allowed(&p, "read"));
        assert!(allowed(&p, "execve"));
        assert!(allowed(&p, "chroot"), "CAP_SYS_CHROOT is a default cap");
        for refused in [
            "mount",
            "ptrace",
            "unshare",
            "setns",
            "kexec_load",
            "reboot",
            "clone",
        ] {
            assert!(!allowed(&p, refused), "{refused}");
        }
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
    }

    #[test]
    fn capabilities_open_system_calls() {
        let p = profile(DEFAULT_CAPS | bit(CAP_SYS_ADMIN) | bit(CAP_SYS_PTRACE)).unwrap();
        for name in [
            "mount", "umount2", "unshare", "setns", "clone", "clone3", "ptrace",
        ] {
            assert!(allowed(&p, name), "{name}");
        }
    }

    #[test]
    fn no_duplicate_names_in_allow_list() {
        let mut v = ALLOWED.to_vec();
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), ALLOWED.len());
    }
}

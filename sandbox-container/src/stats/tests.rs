#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::os::unix::fs::symlink;

use super::*;

fn put(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

const CG: &str = "/kubepods/pod123/crius-abc";

/// A v1 memory.stat where the hierarchical counts differ from the
/// cgroup's own.
const V1_MEMORY_STAT: &str = "cache 100\nrss 200\nmapped_file 30\nswap 0\npgfault 5\n\
pgmajfault 1\ninactive_file 40\ntotal_cache 4096\ntotal_rss 8192\ntotal_mapped_file 1024\n\
total_swap 512\ntotal_pgfault 77\ntotal_pgmajfault 3\ntotal_inactive_file 2048\n";

/// The v1 controllers of `root` with one cgroup; `cpu_dir` names the
/// directory cpu and cpuacct share.
fn fake_v1(root: &Path, cpu_dir: &str) {
    let cg = CG.trim_start_matches('/');
    put(
        root,
        &format!("{cpu_dir}/{cg}/cpuacct.usage"),
        "123456789\n",
    );
    put(
        root,
        &format!("{cpu_dir}/{cg}/cpuacct.usage_user"),
        "100000000\n",
    );
    put(
        root,
        &format!("{cpu_dir}/{cg}/cpuacct.usage_sys"),
        "23456789\n",
    );
    put(
        root,
        &format!("{cpu_dir}/{cg}/cpu.stat"),
        "nr_periods 10\nnr_throttled 2\nthrottled_time 5000\n",
    );
    put(root, &format!("{cpu_dir}/{cg}/cpu.shares"), "512\n");
    put(
        root,
        &format!("{cpu_dir}/{cg}/cpu.cfs_period_us"),
        "100000\n",
    );
    put(root, &format!("{cpu_dir}/{cg}/cpu.cfs_quota_us"), "-1\n");
    put(
        root,
        &format!("memory/{cg}/memory.usage_in_bytes"),
        "10000\n",
    );
    put(root, &format!("memory/{cg}/memory.stat"), V1_MEMORY_STAT);
    put(
        root,
        &format!("memory/{cg}/memory.limit_in_bytes"),
        "9223372036854771712\n",
    );
    put(
        root,
        &format!("memory/{cg}/memory.max_usage_in_bytes"),
        "20000\n",
    );
    put(
        root,
        &format!("memory/{cg}/memory.kmem.usage_in_bytes"),
        "300\n",
    );
    put(root, &format!("memory/{cg}/memory.failcnt"), "4\n");
    put(
        root,
        &format!("memory/{cg}/memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
    );
    put(root, &format!("memory/{cg}/cgroup.procs"), "");
    put(root, &format!("memory/{cg}/tasks"), "");
    put(root, &format!("pids/{cg}/pids.current"), "3\n");
    put(root, &format!("pids/{cg}/pids.max"), "max\n");
    put(root, &format!("pids/{cg}/cgroup.procs"), "");
    put(root, &format!("pids/{cg}/tasks"), "");
    put(
        root,
        &format!("blkio/{cg}/blkio.throttle.io_service_bytes_recursive"),
        "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Total 12288\nTotal 12288\n",
    );
    put(
        root,
        &format!("blkio/{cg}/blkio.throttle.io_serviced_recursive"),
        "8:0 Read 1\n8:0 Write 2\n8:0 Total 3\nTotal 3\n",
    );
}

fn expected_v1() -> CgroupStats {
    CgroupStats {
        cpu: Some(CpuStats {
            usage_ns: 123_456_789,
            user_ns: 100_000_000,
            system_ns: 23_456_789,
            periods: 10,
            throttled_periods: 2,
            throttled_ns: 5000,
            shares: Some(512),
            period_us: Some(100_000),
            quota_us: None,
        }),
        memory: Some(MemoryStats {
            usage: 10_000,
            working_set: 10_000 - 2048,
            rss: 8192,
            cache: 4096,
            mapped_file: 1024,
            kernel: Some(300),
            swap: Some(512),
            max_usage: Some(20_000),
            failcnt: 4,
            page_faults: 77,
            major_page_faults: 3,
            local_page_faults: 5,
            local_major_page_faults: 1,
            oom_kills: 1,
            limit: None,
            memsw_limit: None,
        }),
        pids: Some(PidsStats {
            current: 3,
            limit: None,
        }),
        io: vec![IoStats {
            device: block_device_name(8, 0),
            major: 8,
            minor: 0,
            read_bytes: 4096,
            write_bytes: 8192,
            reads: 1,
            writes: 2,
        }],
    }
}

#[test]
fn reads_cgroup_v1() {
    let t = tempfile::tempdir().unwrap();
    // cpu and cpuacct co-mounted, as systemd does.
    fake_v1(t.path(), "cpu,cpuacct");
    let cg = Cgroups::at(t.path());
    assert!(!cg.is_unified());
    assert_eq!(cg.read(Path::new(CG)), Some(expected_v1()));
    // A relative path names the same cgroup.
    assert_eq!(
        cg.read(Path::new(CG.trim_start_matches('/'))),
        Some(expected_v1())
    );
    assert_eq!(cg.read(Path::new("/kubepods/pod123/other")), None);
    assert_eq!(cg.read(Path::new("/kubepods/../../etc")), None);
}

#[test]
fn reads_the_v1_controllers_of_a_hybrid_host() {
    let t = tempfile::tempdir().unwrap();
    fake_v1(t.path(), "cpuacct");
    // cpu mounted apart from cpuacct: its files move there.
    let cg = CG.trim_start_matches('/');
    for f in [
        "cpu.stat",
        "cpu.shares",
        "cpu.cfs_period_us",
        "cpu.cfs_quota_us",
    ] {
        fs::create_dir_all(t.path().join("cpu").join(cg)).unwrap();
        fs::rename(
            t.path().join("cpuacct").join(cg).join(f),
            t.path().join("cpu").join(cg).join(f),
        )
        .unwrap();
    }
    // The cgroup2 mount beside them, with only hugetlb: its numbers must
    // not be used.
    put(t.path(), "unified/cgroup.controllers", "hugetlb\n");
    put(
        t.path(),
        &format!("unified/{cg}/cpu.stat"),
        "usage_usec 999\nuser_usec 1\nsystem_usec 2\n",
    );
    put(t.path(), &format!("unified/{cg}/memory.current"), "1\n");
    let cgroups = Cgroups::at(t.path());
    assert!(!cgroups.is_unified());
    assert_eq!(cgroups.read(Path::new(CG)), Some(expected_v1()));
}

#[test]
fn reads_cgroup_v2() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let cg = CG.trim_start_matches('/');
    put(root, "cgroup.controllers", "cpu memory pids io\n");
    put(
        root,
        &format!("{cg}/cpu.stat"),
        "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 4\nnr_throttled 1\n\
         throttled_usec 20\n",
    );
    put(root, &format!("{cg}/cpu.weight"), "10000\n");
    put(root, &format!("{cg}/cpu.max"), "50000 100000\n");
    put(root, &format!("{cg}/memory.current"), "8192\n");
    put(
        root,
        &format!("{cg}/memory.stat"),
        "anon 4096\nfile 2048\nkernel 512\nfile_mapped 1024\ninactive_file 10000\n\
         pgfault 9\npgmajfault 2\n",
    );
    put(root, &format!("{cg}/memory.max"), "1048576\n");
    put(root, &format!("{cg}/memory.swap.max"), "max\n");
    put(root, &format!("{cg}/memory.swap.current"), "0\n");
    put(root, &format!("{cg}/memory.peak"), "9000\n");
    put(
        root,
        &format!("{cg}/memory.events"),
        "low 0\nhigh 0\nmax 6\noom 1\noom_kill 1\n",
    );
    put(root, &format!("{cg}/pids.current"), "2\n");
    put(root, &format!("{cg}/pids.max"), "1024\n");
    put(
        root,
        &format!("{cg}/io.stat"),
        "8:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n\
         253:1 rbytes=5 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n",
    );
    put(root, &format!("{cg}/cgroup.procs"), "");
    put(root, &format!("{cg}/cgroup.threads"), "");
    let cgroups = Cgroups::at(root);
    assert!(cgroups.is_unified());
    let s = cgroups.read(Path::new(CG)).unwrap();
    assert_eq!(
        s.cpu,
        Some(CpuStats {
            usage_ns: 1_500_000,
            user_ns: 1_000_000,
            system_ns: 500_000,
            periods: 4,
            throttled_periods: 1,
            throttled_ns: 20_000,
            // The highest weight is the highest shares.
            shares: Some(262_144),
            period_us: Some(100_000),
            quota_us: Some(50_000),
        })
    );
    assert_eq!(
        s.memory,
        Some(MemoryStats {
            usage: 8192,
            // inactive_file above usage: the working set floors at 0.
            working_set: 0,
            rss: 4096,
            cache: 2048,
            mapped_file: 1024,
            kernel: Some(512),
            swap: Some(0),
            max_usage: Some(9000),
            failcnt: 6,
            page_faults: 9,
            major_page_faults: 2,
            local_page_faults: 9,
            local_major_page_faults: 2,
            oom_kills: 1,
            limit: Some(1_048_576),
            memsw_limit: None,
        })
    );
    assert_eq!(
        s.pids,
        Some(PidsStats {
            current: 2,
            limit: Some(1024)
        })
    );
    assert_eq!(s.io.len(), 2);
    assert_eq!((s.io[0].read_bytes, s.io[0].writes), (100, 2));
    assert_eq!((s.io[1].major, s.io[1].minor, s.io[1].reads), (253, 1, 1));
    assert_eq!(
        cgroups.processes(Path::new(CG)),
        Some(ProcessStats::default())
    );
    assert_eq!(cgroups.read(Path::new("/nope")), None);
}

#[test]
fn v1_without_usage_files_is_partial() {
    let t = tempfile::tempdir().unwrap();
    put(t.path(), "memory/a/memory.usage_in_bytes", "100\n");
    put(t.path(), "memory/a/tasks", "1\n2\n");
    fs::create_dir_all(t.path().join("cpuacct/a")).unwrap();
    let s = Cgroups::at(t.path()).read(Path::new("/a")).unwrap();
    assert_eq!(s.cpu, None);
    let m = s.memory.unwrap();
    assert_eq!((m.usage, m.working_set, m.rss), (100, 100, 0));
    // No pids controller: the tasks are counted.
    assert_eq!(s.pids.unwrap().current, 2);
    assert!(s.io.is_empty());
}

#[test]
fn cgroups_paths() {
    assert_eq!(
        cgroups_path_dir("/kubepods/pod1/crius-x"),
        Some(PathBuf::from("kubepods/pod1/crius-x"))
    );
    assert_eq!(
        cgroups_path_dir("kubepods-besteffort-pod1.slice:crius:abc"),
        Some(PathBuf::from(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/crius-abc.scope"
        ))
    );
    assert_eq!(
        cgroups_path_dir(":crius:abc"),
        Some(PathBuf::from("crius-abc.scope"))
    );
    assert_eq!(
        cgroups_path_dir("system.slice::x.slice"),
        Some(PathBuf::from("system.slice/x.slice"))
    );
    for bad in ["", "/a/../b", "a--b.slice:p:n", "x:p:n"] {
        assert_eq!(cgroups_path_dir(bad), None, "{bad:?}");
    }
}

#[test]
fn parses_net_dev() {
    let s = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n\
    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n\
  eth0:    2048      10    1    2    0     0          0         0     1024       8    3    4    0     0       0          0\n";
    assert_eq!(
        parse_net_dev(s),
        vec![NetInterface {
            name: "eth0".into(),
            rx_bytes: 2048,
            rx_packets: 10,
            rx_errors: 1,
            rx_dropped: 2,
            tx_bytes: 1024,
            tx_packets: 8,
            tx_errors: 3,
            tx_dropped: 4,
        }]
    );
    // Our own namespace, joined by the reading thread (root only).
    if nix::unistd::geteuid().is_root() {
        let ours = parse_net_dev(&fs::read_to_string("/proc/self/net/dev").unwrap());
        let read = netns_interfaces(Path::new("/proc/self/ns/net")).unwrap();
        let names = |v: &[NetInterface]| v.iter().map(|i| i.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&read), names(&ours));
    }
    assert!(netns_interfaces(Path::new("/nonexistent")).is_err());
}

#[test]
fn measures_a_tree_without_following_links() {
    let t = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    // A big file outside the tree, linked from inside: not counted.
    fs::write(outside.path().join("big"), vec![1u8; 1 << 20]).unwrap();
    let upper = t.path().join("upper");
    fs::create_dir_all(upper.join("a/b")).unwrap();
    fs::write(upper.join("a/b/f"), vec![1u8; 64 * 1024]).unwrap();
    fs::hard_link(upper.join("a/b/f"), upper.join("a/f2")).unwrap();
    symlink(outside.path().join("big"), upper.join("link")).unwrap();
    symlink(outside.path(), upper.join("dirlink")).unwrap();
    let u = dir_usage(&upper, 1000).unwrap();
    // upper, a, a/b, a/b/f (= a/f2), link, dirlink.
    assert_eq!(u.inodes, 6);
    assert!(u.complete);
    assert!(u.bytes >= 64 * 1024, "{u:?}");
    assert!(
        u.bytes < (1 << 20),
        "the link's target is not counted: {u:?}"
    );
    // The bound stops the walk and says so.
    let u = dir_usage(&upper, 3).unwrap();
    assert!(!u.complete);
    assert!(u.inodes <= 3, "{u:?}");
    // A link as the root is refused.
    assert!(dir_usage(&upper.join("dirlink"), 1000).is_err());
    assert!(dir_usage(&t.path().join("missing"), 1000).is_err());
    let fsi = fs_info(t.path()).unwrap();
    assert!(fsi.capacity_bytes >= fsi.available_bytes && fsi.capacity_bytes > 0);
}

/// A real cgroup with a process in it: created under this host's
/// hierarchies, read, removed. Skipped where cgroups cannot be created
/// (not root, read-only /sys/fs/cgroup).
#[test]
fn reads_a_real_cgroup() {
    use std::io::Write;
    use std::process::{Command, Stdio};

    let cgroups = Cgroups::host();
    let name = PathBuf::from(format!("crius-stats-test-{}", std::process::id()));
    let controllers: &[&str] = if cgroups.is_unified() {
        &[""]
    } else {
        &["memory", "cpuacct", "pids"]
    };
    let dirs: Vec<PathBuf> = controllers
        .iter()
        .filter_map(|c| cgroups.dir(c, &name))
        .collect();
    if dirs.len() != controllers.len() || dirs.iter().any(|d| fs::create_dir(d).is_err()) {
        sandbox_api::testing::skip("stats::tests", "cannot create cgroups here");
        for d in &dirs {
            let _ = fs::remove_dir(d);
        }
        return;
    }
    let mut child = Command::new("sh")
        .args([
            "-c",
            "read x; dd if=/dev/zero of=/dev/null bs=1M count=64 2>/dev/null; sleep 30",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    for d in &dirs {
        fs::write(d.join("cgroup.procs"), &pid).unwrap();
    }
    // Now in the cgroup: let it work.
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut last = None;
    while std::time::Instant::now() < deadline {
        let s = cgroups.read(&name).unwrap();
        let done = s.cpu.as_ref().is_some_and(|c| c.usage_ns > 0)
            && s.memory.as_ref().is_some_and(|m| m.usage > 0)
            && s.pids.as_ref().is_some_and(|p| p.current >= 1);
        last = Some(s);
        if done {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let procs = cgroups.processes(&name);
    // Kill everything in the cgroup (the shell's children too); each
    // process leaves it as it is reaped.
    for _ in 0..250 {
        let left = fs::read_to_string(dirs[0].join("cgroup.procs")).unwrap_or_default();
        if left.trim().is_empty() {
            break;
        }
        for p in left.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = child.try_wait();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.wait();
    for d in &dirs {
        for _ in 0..100 {
            if fs::remove_dir(d).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    let s = last.unwrap();
    assert!(s.cpu.unwrap().usage_ns > 0);
    let m = s.memory.unwrap();
    assert!(m.usage > 0 && m.working_set <= m.usage, "{m:?}");
    assert!(s.pids.unwrap().current >= 1);
    let procs = procs.unwrap();
    assert!(
        procs.processes >= 1 && procs.threads >= 1 && procs.fds >= 1,
        "{procs:?}"
    );
    assert!(dirs.iter().all(|d| !d.exists()), "cgroups left: {dirs:?}");
}

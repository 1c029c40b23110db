//! The pod monitor for real: as root, with real processes, libcontainer
//! and e2e's busybox rootfs. Each test starts its own monitor through
//! `spawn` (the test-only binary `crius-monitor-test` stands in for
//! `crius monitor`), and its guard removes everything the test made, also
//! when the test fails: containers, cgroups, mounts, processes.

#[cfg(test)]
mod monitor {
    use std::collections::BTreeSet;
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    use std::os::unix::net::UnixStream;
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, Instant};

    use crius_proto::monitor::{EXEC_OUTPUT_LIMIT, ErrorKind, ExitRecord, PROTOCOL_VERSION, Phase};
    use oci_spec::runtime::{
        Arch, LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
        LinuxResourcesBuilder, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompBuilder,
        LinuxSyscallBuilder, Spec,
    };
    use sandbox_container::monitor::{self, MonitorClient, MonitorConfig, MonitorError};

    const BIN: &str = env!("CARGO_BIN_EXE_crius-monitor-test");
    /// How long a test waits for what should come at once: far above any
    /// expected time, far below the failure it detects.
    const PATIENCE: Duration = Duration::from_secs(120);
    const HOSTNAME: &str = "crius-test-pod";

    fn rootfs() -> PathBuf {
        static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
        static LOCK: Mutex<()> = Mutex::new(());
        let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        ROOTFS
            .get_or_init(|| e2e::test_images::busybox_rootfs().expect("busybox rootfs"))
            .clone()
    }

    fn cgroup_parent() -> String {
        format!("crius-test-{}", std::process::id())
    }

    /// Every cgroup hierarchy directory (v1 controllers and cgroup2).
    fn cgroup_roots() -> Vec<PathBuf> {
        let mut roots = Vec::new();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            if (right.starts_with("cgroup ") || right.starts_with("cgroup2 "))
                && let Some(mp) = left.split(' ').nth(4)
            {
                roots.push(PathBuf::from(mp));
            }
        }
        roots
    }

    fn alive(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state follows the parenthesised command name.
            Ok(s) => s
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
            Err(_) => false,
        }
    }

    fn wait_gone(pid: u32, within: Duration) -> bool {
        let start = Instant::now();
        while alive(pid) {
            if start.elapsed() > within {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    fn mounts_under(dir: &Path) -> Vec<PathBuf> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
        mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(PathBuf::from)
            .filter(|p| p.starts_with(dir))
            .collect()
    }

    /// One pod: its directory, monitor and containers, removed on drop.
    struct Pod {
        tmp: tempfile::TempDir,
        dir: PathBuf,
        pid: u32,
        cfg: MonitorConfig,
        cids: Mutex<Vec<String>>,
    }

    impl Pod {
        fn config(dir: &Path, ns: MonitorConfig) -> MonitorConfig {
            MonitorConfig {
                hostname: HOSTNAME.into(),
                runtime_root: dir.join("state"),
                ..ns
            }
        }

        fn prepare(ns: MonitorConfig) -> (tempfile::TempDir, PathBuf, MonitorConfig) {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("pod");
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
            let cfg = Pod::config(&dir, ns);
            cfg.write(&dir).unwrap();
            (tmp, dir, cfg)
        }

        fn start(ns: MonitorConfig) -> Pod {
            let (tmp, dir, cfg) = Pod::prepare(ns);
            let t = Instant::now();
            let pid = monitor::spawn(&dir, Path::new(BIN), &["monitor"]).expect("spawn");
            eprintln!("monitor {pid} ready in {:?}", t.elapsed());
            Pod {
                tmp,
                dir,
                pid,
                cfg,
                cids: Mutex::new(Vec::new()),
            }
        }

        /// Namespaces of its own, but the PID one.
        fn all_ns() -> MonitorConfig {
            MonitorConfig {
                net: true,
                ipc: true,
                uts: true,
                pid: false,
                ..MonitorConfig::default()
            }
        }

        async fn client(&self) -> MonitorClient {
            MonitorClient::connect(&self.dir).await.expect("connect")
        }

        fn log_path(&self, cid: &str) -> PathBuf {
            self.tmp.path().join("logs").join(format!("{cid}.log"))
        }

        /// Writes a bundle running `args`; `edit` may change the spec.
        /// `cid` names the container's cgroup under the file's one parent,
        /// whose processes a pod's clean-up kills: no two pods (tests) may
        /// use the same one.
        fn bundle(&self, cid: &str, args: &[&str], edit: impl FnOnce(&mut Spec)) -> PathBuf {
            static OWNERS: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
            {
                let mut owners = OWNERS.lock().unwrap();
                match owners.iter().find(|(c, _)| c == cid) {
                    Some((_, dir)) => {
                        assert_eq!(dir, &self.dir, "container id {cid} used by two tests")
                    }
                    None => owners.push((cid.to_owned(), self.dir.clone())),
                }
            }
            self.cids.lock().unwrap().push(cid.to_owned());
            let bundle = self.tmp.path().join("bundles").join(cid);
            std::fs::create_dir_all(&bundle).unwrap();
            std::fs::create_dir_all(self.tmp.path().join("logs")).unwrap();
            let mut spec = Spec::default();
            spec.set_hostname(None);
            let mut root = spec.root().clone().unwrap();
            root.set_path(rootfs());
            root.set_readonly(Some(true));
            spec.set_root(Some(root));
            let mut process = spec.process().clone().unwrap();
            process.set_terminal(Some(false));
            process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
            process.set_env(Some(vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()]));
            spec.set_process(Some(process));
            let mut linux = spec.linux().clone().unwrap();
            let pin = |t: LinuxNamespaceType, name: &str| -> LinuxNamespace {
                LinuxNamespaceBuilder::default()
                    .typ(t)
                    .path(monitor::ns_path(&self.dir, name))
                    .build()
                    .unwrap()
            };
            let new = |t: LinuxNamespaceType| -> LinuxNamespace {
                LinuxNamespaceBuilder::default().typ(t).build().unwrap()
            };
            let ns = &self.cfg;
            let mut namespaces = vec![new(LinuxNamespaceType::Mount)];
            if ns.net {
                namespaces.push(pin(LinuxNamespaceType::Network, "net"));
            }
            if ns.ipc {
                namespaces.push(pin(LinuxNamespaceType::Ipc, "ipc"));
            }
            if ns.uts {
                namespaces.push(pin(LinuxNamespaceType::Uts, "uts"));
            }
            match monitor::pod_init_pid(&self.dir).unwrap() {
                Some(init) => namespaces.push(
                    LinuxNamespaceBuilder::default()
                        .typ(LinuxNamespaceType::Pid)
                        .path(format!("/proc/{init}/ns/pid"))
                        .build()
                        .unwrap(),
                ),
                None => namespaces.push(new(LinuxNamespaceType::Pid)),
            }
            linux.set_namespaces(Some(namespaces));
            linux.set_cgroups_path(Some(PathBuf::from(format!("/{}/{cid}", cgroup_parent()))));
            spec.set_linux(Some(linux));
            edit(&mut spec);
            spec.save(bundle.join("config.json")).unwrap();
            bundle
        }

        /// Creates and starts a container; returns its bundle.
        async fn run(&self, c: &mut MonitorClient, cid: &str, args: &[&str]) -> PathBuf {
            let bundle = self.bundle(cid, args, |_| {});
            let log = self.log_path(cid);
            let t = Instant::now();
            c.create(cid, &bundle, Some(&log), false, false, false)
                .await
                .expect("create");
            let created = t.elapsed();
            c.start(cid).await.expect("start");
            eprintln!(
                "{cid}: created in {created:?}, started in {:?}",
                t.elapsed()
            );
            bundle
        }
    }

    impl Drop for Pod {
        fn drop(&mut self) {
            if std::thread::panicking() || std::env::var_os("CRIUS_TEST_SHOW_LOG").is_some() {
                let log = std::fs::read_to_string(self.dir.join(monitor::LOG_FILE));
                eprintln!("--- monitor.log ---\n{}", log.unwrap_or_default());
            }
            // Shut the monitor down if it still runs, else kill it.
            if alive(self.pid) {
                if let Ok(mut s) = UnixStream::connect(self.dir.join(monitor::SOCKET_FILE)) {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                    let _ = s.write_all(b"{\"op\":\"shutdown\"}\n");
                    let _ = BufReader::new(s).read_line(&mut String::new());
                }
                if !wait_gone(self.pid, Duration::from_secs(10)) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(self.pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            if let Ok(Some(init)) = monitor::pod_init_pid(&self.dir) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(init as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            for m in mounts_under(&self.dir).into_iter().rev() {
                let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
            }
            // Kill what is left in our cgroups, then remove them.
            let parent = cgroup_parent();
            let cids = self.cids.lock().unwrap().clone();
            for root in cgroup_roots() {
                for cid in &cids {
                    let cg = root.join(&parent).join(cid);
                    if let Ok(procs) = std::fs::read_to_string(cg.join("cgroup.procs")) {
                        for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                        }
                    }
                }
            }
            for root in cgroup_roots() {
                for cid in &cids {
                    let cg = root.join(&parent).join(cid);
                    let start = Instant::now();
                    while cg.exists() && start.elapsed() < Duration::from_secs(5) {
                        if std::fs::remove_dir(&cg).is_ok() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                // Fails while another test still has containers: the last
                // one removes it.
                let _ = std::fs::remove_dir(root.join(&parent));
            }
        }
    }

    async fn wait_exit(c: &mut MonitorClient, cid: &str) -> ExitRecord {
        let start = Instant::now();
        loop {
            let st = c.state(cid).await.expect("state");
            if st.phase == Phase::Exited {
                assert_eq!(st.pid, 0);
                return st.exit.expect("exit record");
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{cid} did not exit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// (stream, tag, message) of every line of a CRI log, checking the
    /// timestamps.
    fn read_log(path: &Path) -> Vec<(String, String, Vec<u8>)> {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(bytes.last(), Some(&b'\n'));
        let mut out = Vec::new();
        for line in bytes[..bytes.len() - 1].split(|&b| b == b'\n') {
            let mut it = line.splitn(4, |&b| b == b' ');
            let ts = std::str::from_utf8(it.next().unwrap()).unwrap();
            check_timestamp(ts);
            let stream = String::from_utf8(it.next().unwrap().to_vec()).unwrap();
            let tag = String::from_utf8(it.next().unwrap().to_vec()).unwrap();
            let msg = it.next().unwrap().to_vec();
            out.push((stream, tag, msg));
        }
        out
    }

    fn check_timestamp(ts: &str) {
        // 2026-11-26T05:30:00.123456789Z, close to now.
        let b = ts.as_bytes();
        assert_eq!(b.len(), 30, "{ts}");
        for (i, c) in b.iter().enumerate() {
            match i {
                4 | 7 => assert_eq!(*c, b'-', "{ts}"),
                10 => assert_eq!(*c, b'T', "{ts}"),
                13 | 16 => assert_eq!(*c, b':', "{ts}"),
                19 => assert_eq!(*c, b'.', "{ts}"),
                29 => assert_eq!(*c, b'Z', "{ts}"),
                _ => assert!(c.is_ascii_digit(), "{ts}"),
            }
        }
        let now = monitor::logfmt::rfc3339_nano(std::time::SystemTime::now());
        assert_eq!(&ts[..10], &now[..10], "timestamp {ts} is not today ({now})");
    }

    fn ns_inode(path: impl AsRef<Path>) -> u64 {
        std::fs::metadata(path).unwrap().ino()
    }

    /// A watch gets the exits recorded so far at once, then each new one;
    /// with `forward_output`, each container's output, raw and in order,
    /// before its exit, and no log file is written.
    #[tokio::test]
    async fn watches_get_exits_and_forwarded_output() {
        use crius_proto::agent::Stream;
        use crius_proto::monitor::{Request, Response};
        use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

        let pod = Pod::start(MonitorConfig {
            forward_output: true,
            ..Pod::all_ns()
        });
        let mut c = pod.client().await;
        // Exited before any watch: its output and exit wait for one.
        pod.run(&mut c, "early", &["sh", "-c", "echo early; exit 3"])
            .await;
        assert_eq!(wait_exit(&mut c, "early").await.exit_code, 3);
        let mut watch = tokio::io::BufReader::new(
            tokio::net::UnixStream::connect(pod.dir.join(monitor::SOCKET_FILE))
                .await
                .unwrap(),
        );
        let mut line = serde_json::to_vec(&Request::Watch).unwrap();
        line.push(b'\n');
        watch.get_mut().write_all(&line).await.unwrap();
        // Output written while the line was read: 200 KiB in many writes.
        pod.run(
            &mut c,
            "late",
            &["sh", "-c", "i=0; while [ $i -lt 2000 ]; do echo line-$i-padding-padding-padding-padding-padding-padding-padding-padding-padding; i=$((i+1)); done; echo bye >&2; exit 5"],
        )
        .await;
        let mut early = Vec::new();
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let mut exits = Vec::new();
        while exits.len() < 2 {
            let mut l = String::new();
            let n = tokio::time::timeout(Duration::from_secs(60), watch.read_line(&mut l))
                .await
                .expect("a watch line in time")
                .unwrap();
            assert!(n > 0, "the watch ended early");
            match serde_json::from_str::<Response>(&l).unwrap() {
                Response::ContainerExited { id, exit } => exits.push((id, exit.exit_code)),
                Response::Output { id, stream, data } => {
                    assert!(
                        !exits.iter().any(|(e, _)| *e == id),
                        "output after the exit"
                    );
                    match (id.as_str(), stream) {
                        ("early", Stream::Stdout) => early.extend(data),
                        ("late", Stream::Stdout) => stdout.extend(data),
                        ("late", Stream::Stderr) => stderr.extend(data),
                        other => panic!("unexpected output {other:?}"),
                    }
                }
                other => panic!("unexpected on a watch: {other:?}"),
            }
        }
        assert_eq!(exits, [("early".to_string(), 3), ("late".to_string(), 5)]);
        let text = String::from_utf8(stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2000);
        assert!(lines[0].starts_with("line-0-") && lines[1999].starts_with("line-1999-"));
        assert_eq!(stderr, b"bye\n");
        assert_eq!(early, b"early\n", "kept until a watch came");
        assert!(
            !pod.log_path("late").exists(),
            "no log file when forwarding"
        );
    }

    #[tokio::test]
    async fn monitor_hello_files_and_memfd_exe() {
        let pod = Pod::start(Pod::all_ns());
        let mut c = pod.client().await;
        let (version, pid) = c.hello().await.unwrap();
        assert_eq!(version, PROTOCOL_VERSION);
        assert_eq!(pid, pod.pid);
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert!(
            exe.to_string_lossy().contains("memfd:"),
            "{}",
            exe.display()
        );
        let sock = std::fs::metadata(pod.dir.join(monitor::SOCKET_FILE)).unwrap();
        assert_eq!(sock.mode() & 0o777, 0o600);
        let pidfile = std::fs::read_to_string(pod.dir.join(monitor::PID_FILE)).unwrap();
        assert_eq!(pidfile.trim(), pid.to_string());
        assert_eq!(
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .unwrap()
                .trim(),
            "crius-monitor"
        );
        // Its own session, and only the descriptors it needs.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
        assert_eq!(fields[3], pid.to_string(), "session id");
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count();
        assert!(fds <= 10, "{fds} descriptors");
        // Namespace pins are mounted.
        let pins = mounts_under(&pod.dir);
        assert_eq!(pins.len(), 3, "{pins:?}");
        // A second monitor for the same pod is refused and changes nothing.
        let err = monitor::spawn(&pod.dir, Path::new(BIN), &["monitor"]).unwrap_err();
        assert!(err.to_string().contains("already serves"), "{err}");
        assert_eq!(mounts_under(&pod.dir), pins);
        assert_eq!(c.hello().await.unwrap().1, pid);
    }

    #[tokio::test]
    async fn monitor_spawn_reports_errors() {
        let (_tmp, dir, mut cfg) = Pod::prepare(Pod::all_ns());
        std::fs::write(dir.join(monitor::CONFIG_FILE), b"{\"hostname\": 1}").unwrap();
        let err = monitor::spawn(&dir, Path::new(BIN), &["monitor"]).unwrap_err();
        assert!(matches!(err, MonitorError::Spawn(_)), "{err}");
        assert!(err.to_string().contains("monitor config"), "{err}");
        // A failure after the namespaces were pinned undoes them.
        cfg.runtime_root = PathBuf::from("/proc/no-such-dir/state");
        std::fs::write(
            dir.join(monitor::CONFIG_FILE),
            serde_json::to_vec(&cfg).unwrap(),
        )
        .unwrap();
        let err = monitor::spawn(&dir, Path::new(BIN), &["monitor"]).unwrap_err();
        assert!(err.to_string().contains("runtime root"), "{err}");
        assert!(mounts_under(&dir).is_empty());
        assert!(!dir.join(monitor::SOCKET_FILE).exists());
        let err =
            monitor::spawn(Path::new("/no/such/pod"), Path::new(BIN), &["monitor"]).unwrap_err();
        assert!(matches!(err, MonitorError::Spawn(_)), "{err}");
    }

    #[tokio::test]
    async fn monitor_exit_code_and_logs() {
        let pod = Pod::start(Pod::all_ns());
        let mut c = pod.client().await;
        let bundle = pod
            .run(
                &mut c,
                "exit3",
                &["sh", "-c", "echo out; echo err >&2; exit 3"],
            )
            .await;
        let exit = wait_exit(&mut c, "exit3").await;
        assert_eq!((exit.exit_code, exit.signal), (3, None));
        assert_eq!(exit.reason, "Error");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        assert!((now - exit.finished_at).abs() < 60_000_000_000);
        assert_eq!(monitor::read_exit_record(&bundle).unwrap(), Some(exit));
        let mode = std::fs::metadata(pod.log_path("exit3")).unwrap().mode();
        assert_eq!(mode & 0o777, 0o640);
        let mut lines = read_log(&pod.log_path("exit3"));
        lines.sort();
        assert_eq!(
            lines,
            vec![
                ("stderr".into(), "F".into(), b"err".to_vec()),
                ("stdout".into(), "F".into(), b"out".to_vec()),
            ]
        );
        // Starting it again fails; deleting it twice succeeds.
        let err = c.start("exit3").await.unwrap_err();
        assert_eq!(
            err.remote_kind(),
            Some(ErrorKind::FailedPrecondition),
            "{err}"
        );
        c.delete("exit3").await.unwrap();
        c.delete("exit3").await.unwrap();
        let err = c.state("exit3").await.unwrap_err();
        assert_eq!(err.remote_kind(), Some(ErrorKind::NotFound), "{err}");
        assert!(!pod.cfg.runtime_root.join("exit3").exists());
    }

    #[tokio::test]
    async fn monitor_long_lines_and_completed() {
        let pod = Pod::start(Pod::all_ns());
        let mut c = pod.client().await;
        let script =
            "dd if=/dev/zero bs=1024 count=40 2>/dev/null | tr '\\000' x; echo; printf tail";
        pod.run(&mut c, "long", &["sh", "-c", script]).await;
        let exit = wait_exit(&mut c, "long").await;
        assert_eq!((exit.exit_code, exit.reason.as_str()), (0, "Completed"));
        let lines: Vec<(String, String, usize)> = read_log(&pod.log_path("long"))
            .into_iter()
            .map(|(s, t, m)| {
                assert!(m.iter().all(|&b| b == b'x') || m == b"tail");
                (s, t, m.len())
            })
            .collect();
        let l = |t: &str, n| ("stdout".to_string(), t.to_string(), n);
        assert_eq!(
            lines,
            vec![l("P", 16384), l("P", 16384), l("F", 8192), l("F", 4)]
        );
        c.delete("long").await.unwrap();
    }

    /// A SIGTERM sent before the container's init catches it (a Stop right
    /// after a Start) is not lost: the kernel drops it for a PID 1 without
    /// a handler, and the monitor sends it again once the handler is there.
    #[tokio::test]
    async fn a_signal_before_the_handler_is_delivered_once_it_is_there() {
        let pod = Pod::start(Pod::all_ns());
        let mut c = pod.client().await;
        pod.run(
            &mut c,
            "late-trap",
            &[
                "sh",
                "-c",
                "sleep 1; trap 'exit 7' TERM; while :; do sleep 0.1; done",
            ],
        )
        .await;
        c.signal("late-trap", libc::SIGTERM, false).await.unwrap();
        let exit = tokio::time::timeout(PATIENCE, wait_exit(&mut c, "late-trap"))
            .await
            .expect("the late handler got the SIGTERM");
        assert_eq!(exit.exit_code, 7, "{exit:?}");
        c.delete("late-trap").await.unwrap();
    }

    /// A signal sent before the container's init has exec'd its program
    /// (created, not started: the init still has the monitor's handlers,
    /// which swallow it) reaches the program once it can take it.
    #[tokio::test]
    async fn a_signal_before_the_exec_reaches_the_program() {
        let pod = Pod::start(Pod::all_ns());
        let mut c = pod.client().await;
        let bundle = pod.bundle(
            "pre-exec",
            &[
                "sh",
                "-c",
                "trap 'exit 9' TERM; while :; do sleep 0.1; done",
            ],
            |_| {},
        );
        c.create(
            "pre-exec",
            &bundle,
            Some(&pod.log_path("pre-exec")),
            false,
            false,
            false,
        )
        .await
        .expect("create");
        c.signal("pre-exec", libc::SIGTERM, false).await.unwrap();
        c.start("pre-exec").await.expect("start");
        let exit = tokio::time::timeout(PATIENCE, wait_exit(&mut c, "pre-exec"))
            .await
            .expect("the program got the SIGTERM");
        assert_eq!(exit.exit_code, 9, "{exit:?}");
        c.delete("pre-exec").await.unwrap();
    }

    #[tokio::test]
    async fn monitor_sigkill_is_137_and_delete_kills() {
        let pod = Pod::start(Pod::all_ns());
        let mut c = pod.client().await;
        pod.run(&mut c, "sleeper", &["sleep", "1000"]).await;
        let st = c.state("sleeper").await.unwrap();
        assert_eq!(st.phase, Phase::Running);
        assert!(alive(st.pid));
        // Once it has exec'd (start returns before), the container holds
        // only its standard descriptors, with no signal ignored or blocked.
        let start = Instant::now();
        while std::fs::read_to_string(format!("/proc/{}/comm", st.pid)).unwrap() != "sleep\n" {
            assert!(start.elapsed() < Duration::from_secs(60), "no exec");
            std::thread::sleep(Duration::from_millis(5));
        }
        let fds: BTreeSet<String> = std::fs::read_dir(format!("/proc/{}/fd", st.pid))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(fds, ["0", "1", "2"].map(String::from).into());
        let status = std::fs::read_to_string(format!("/proc/{}/status", st.pid)).unwrap();
        for field in ["SigIgn:", "SigBlk:"] {
            let v = status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .unwrap()
                .trim();
            assert_eq!(v, "0000000000000000", "{field}");
        }
        c.signal("sleeper", 9, false).await.unwrap();
        let exit = wait_exit(&mut c, "sleeper").await;
        assert_eq!((exit.exit_code, exit.signal), (137, Some(9)));
        assert_eq!(exit.reason, "Error");
        assert!(!alive(st.pid));
        // A bad signal is refused; signalling an exited container is fine.
        let err = c.signal("sleeper", 0, false).await.unwrap_err();
        assert_eq!(err.remote_kind(), Some(ErrorKind::InvalidArgument));
        c.signal("sleeper", 15, true).await.unwrap();
        c.delete("sleeper").await.unwrap();

        // Delete kills a running container (CRI RemoveContainer is forced).
        pod.run(&mut c, "sleeper2", &["sleep", "1000"]).await;
        let pid = c.state("sleeper2").await.unwrap().pid;
        c.delete("sleeper2").await.unwrap();
        assert!(!alive(pid));
        let cg = format!("/sys/fs/cgroup/memory/{}/sleeper2", cgroup_parent());
        assert!(!Path::new(&cg).exists(), "{cg} left behind");

        // So is a created container that never started.
        let bundle = pod.bundle("unstarted", &["sleep", "1000"], |_| {});
        let pid = c
            .create("unstarted", &bundle, None, true, true, false)
            .await
            .unwrap();
        let st = c.state("unstarted").await.unwrap();
        assert_eq!((st.phase, st.pid), (Phase::Created, pid));
        c.delete("unstarted").await.unwrap();
        assert!(!alive(pid));
        assert!(!pod.cfg.runtime_root.join("unstarted").exists());
    }

    #[tokio::test]
    async fn monitor_oom_killed() {
        let pod = Pod::start(Pod::all_ns());
        let mut c = pod.client().await;
        let script = "x=$(head -c 200000000 /dev/zero | tr '\\000' a); echo survived";
        let bundle = pod.bundle("oom", &["sh", "-c", script], |spec| {
            let mut linux = spec.linux().clone().unwrap();
            let mem = LinuxMemoryBuilder::default()
                .limit(32 << 20)
                .build()
                .unwrap();
            let res = LinuxResourcesBuilder::default()
                .memory(mem)
                .build()
                .unwrap();
            linux.set_resources(Some(res));
            spec.set_linux(Some(linux));
        });
        c.create(
            "oom",
            &bundle,
            Some(&pod.log_path("oom")),
            false,
            false,
            false,
        )
        .await
        .unwrap();
        c.start("oom").await.unwrap();
        let exit = wait_exit(&mut c, "oom").await;
        assert_eq!(exit.reason, "OOMKilled", "{exit:?}");
        assert_eq!(exit.exit_code, 137);
        c.delete("oom").await.unwrap();
    }

    #[tokio::test]
    async fn monitor_exec_sync() {
        let pod = Pod::start(Pod::all_ns());
        let mut c = pod.client().await;
        pod.run(&mut c, "execs", &["sleep", "1000"]).await;
        let cmd = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let none = Duration::ZERO;

        let t = Instant::now();
        let r = c
            .exec_sync("execs", cmd(&["echo", "hi"]), none)
            .await
            .unwrap();
        eprintln!("exec echo: {:?}", t.elapsed());
        assert_eq!((r.exit_code, r.timed_out), (0, false));
        assert_eq!(r.stdout, b"hi\n");
        assert!(r.stderr.is_empty());

        let r = c
            .exec_sync("execs", cmd(&["sh", "-c", "echo e >&2; exit 7"]), none)
            .await
            .unwrap();
        assert_eq!((r.exit_code, r.stderr.as_slice()), (7, &b"e\n"[..]));

        // Only the standard descriptors (3 is ls's own directory).
        let r = c
            .exec_sync("execs", cmd(&["ls", "/proc/self/fd"]), none)
            .await
            .unwrap();
        let fds: Vec<&str> = std::str::from_utf8(&r.stdout)
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(fds, ["0", "1", "2", "3"]);

        // Timeout: killed, reported as timed out with exit code -1, not
        // before its time and long before the command would end (the
        // deadline is far from both).
        let t = Instant::now();
        let r = tokio::time::timeout(
            PATIENCE,
            c.exec_sync("execs", cmd(&["sleep", "600"]), Duration::from_millis(500)),
        )
        .await
        .expect("the timed-out exec was answered")
        .unwrap();
        assert!(r.timed_out);
        assert_eq!(r.exit_code, -1);
        assert!(t.elapsed() >= Duration::from_millis(500));

        // A background child holding the pipes does not hold the answer.
        let r = tokio::time::timeout(
            PATIENCE,
            c.exec_sync("execs", cmd(&["sh", "-c", "sleep 600 & echo bg"]), none),
        )
        .await
        .expect("answered before the background child ends")
        .unwrap();
        assert_eq!((r.exit_code, r.stdout.as_slice()), (0, &b"bg\n"[..]));

        // Output is capped per stream, and the writer is not blocked.
        let t = Instant::now();
        let r = c
            .exec_sync(
                "execs",
                cmd(&[
                    "sh",
                    "-c",
                    "head -c 20000000 /dev/zero; head -c 17000000 /dev/zero >&2",
                ]),
                none,
            )
            .await
            .unwrap();
        eprintln!("exec of 2 x 16 MiB: {:?}", t.elapsed());
        assert_eq!(r.exit_code, 0);
        assert_eq!(r.stdout.len(), EXEC_OUTPUT_LIMIT);
        assert_eq!(r.stderr.len(), EXEC_OUTPUT_LIMIT);

        // The user and working directory of the spec; errors.
        let r = c
            .exec_sync("execs", cmd(&["sh", "-c", "id -u; pwd"]), none)
            .await
            .unwrap();
        assert_eq!(r.stdout, b"0\n/\n");
        let err = c.exec_sync("execs", vec![], none).await.unwrap_err();
        assert_eq!(err.remote_kind(), Some(ErrorKind::InvalidArgument));
        let err = c.exec_sync("nope", cmd(&["true"]), none).await.unwrap_err();
        assert_eq!(err.remote_kind(), Some(ErrorKind::NotFound));
        let r = c.exec_sync("execs", cmd(&["/no/such/binary"]), none).await;
        assert!(
            r.is_err() || r.as_ref().is_ok_and(|r| r.exit_code != 0),
            "{r:?}"
        );

        // An exec gets the spec's user, groups, directory, environment and
        // rlimits (1024 open files in the default spec).
        let bundle = pod.bundle("execs-user", &["sleep", "1000"], |spec| {
            let mut p = spec.process().clone().unwrap();
            let mut user = p.user().clone();
            user.set_uid(65534);
            user.set_gid(65534);
            user.set_additional_gids(Some(vec![1234]));
            p.set_user(user);
            p.set_cwd("/tmp".into());
            p.set_env(Some(vec!["PATH=/bin:/usr/bin".into(), "FOO=bar".into()]));
            spec.set_process(Some(p));
        });
        c.create("execs-user", &bundle, None, false, false, false)
            .await
            .unwrap();
        c.start("execs-user").await.unwrap();
        let script = "id -u; id -G; pwd; echo $FOO; ulimit -n";
        let r = c
            .exec_sync("execs-user", cmd(&["sh", "-c", script]), none)
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&r.stdout),
            "65534\n65534 1234\n/tmp\nbar\n1024\n",
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );
        c.delete("execs-user").await.unwrap();

        c.signal("execs", 9, true).await.unwrap();
        wait_exit(&mut c, "execs").await;
        let err = c
            .exec_sync("execs", cmd(&["true"]), none)
            .await
            .unwrap_err();
        assert_eq!(err.remote_kind(), Some(ErrorKind::FailedPrecondition));
        c.delete("execs").await.unwrap();
    }

    /// A profile that allows everything but chmod (EPERM).
    fn no_chmod_profile() -> LinuxSeccomp {
        let rule = LinuxSyscallBuilder::default()
            .names(
                ["chmod", "fchmod", "fchmodat", "fchmodat2"]
                    .map(String::from)
                    .to_vec(),
            )
            .action(LinuxSeccompAction::ScmpActErrno)
            .build()
            .unwrap();
        LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .architectures(vec![Arch::ScmpArchNative])
            .syscalls(vec![rule])
            .build()
            .unwrap()
    }

    /// The `Seccomp`, `NoNewPrivs` and capability lines of a status file.
    fn security_lines(status: &str) -> Vec<String> {
        const FIELDS: [&str; 5] = ["Seccomp:", "NoNewPrivs:", "CapBnd:", "CapPrm:", "CapEff:"];
        let lines: Vec<String> = status
            .lines()
            .filter(|l| FIELDS.iter().any(|f| l.starts_with(f)))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(lines.len(), FIELDS.len(), "{status}");
        lines
    }

    fn field<'a>(lines: &'a [String], name: &str) -> &'a str {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {lines:?}"))
            .trim()
    }

    /// ExecSync runs under the container's seccomp filter, with exactly
    /// the capabilities and no_new_privs of the container's init (also when
    /// capabilities were raised to load the filter without no_new_privs),
    /// and its process is the user's command, not crius.
    #[tokio::test]
    async fn monitor_exec_sync_seccomp() {
        let pod = Pod::start(Pod::all_ns());
        let mut c = pod.client().await;
        // (id, uid, no_new_privileges, seccomp)
        let cases: [(&str, u32, Option<bool>, bool); 4] = [
            ("sc-root", 0, None, true),
            ("sc-user", 65534, None, true),
            ("sc-nnp", 0, Some(true), true),
            ("sc-none", 0, None, false),
        ];
        for (cid, uid, nnp, filtered) in cases {
            let bundle = pod.bundle(cid, &["sleep", "1000"], |spec| {
                let mut p = spec.process().clone().unwrap();
                let mut user = p.user().clone();
                user.set_uid(uid);
                user.set_gid(uid);
                p.set_user(user);
                p.set_no_new_privileges(nnp);
                spec.set_process(Some(p));
                let mut linux = spec.linux().clone().unwrap();
                linux.set_seccomp(filtered.then(no_chmod_profile));
                spec.set_linux(Some(linux));
            });
            c.create(cid, &bundle, None, false, false, false)
                .await
                .unwrap();
            c.start(cid).await.unwrap();
            let init = c.state(cid).await.unwrap().pid;
            let start = Instant::now();
            while std::fs::read_to_string(format!("/proc/{init}/comm")).unwrap() != "sleep\n" {
                assert!(start.elapsed() < Duration::from_secs(60), "no exec");
                std::thread::sleep(Duration::from_millis(5));
            }
            let init_lines =
                security_lines(&std::fs::read_to_string(format!("/proc/{init}/status")).unwrap());

            // $$: the exec's own process (the shell), not a child of it.
            let script = "cat /proc/$$/status; echo ---; readlink /proc/$$/exe; \
                          f=/dev/shm/f$$; touch $f; chmod 400 $f && echo chmod-ok || echo chmod-failed";
            let r = c
                .exec_sync(
                    cid,
                    vec!["sh".into(), "-c".into(), script.into()],
                    Duration::ZERO,
                )
                .await
                .unwrap();
            let out = String::from_utf8_lossy(&r.stdout);
            let err = String::from_utf8_lossy(&r.stderr);
            assert_eq!(r.exit_code, 0, "{cid}: {out} {err}");
            let (status, rest) = out.split_once("---\n").unwrap();
            let lines = security_lines(status);
            // Exactly the init's seccomp mode, no_new_privs and capabilities.
            assert_eq!(lines, init_lines, "{cid}");
            assert_eq!(
                field(&lines, "Seccomp:"),
                if filtered { "2" } else { "0" },
                "{cid}"
            );
            assert_eq!(
                field(&lines, "NoNewPrivs:"),
                if nnp == Some(true) { "1" } else { "0" },
                "{cid}"
            );
            // CAP_SYS_ADMIN (21) and CAP_SETPCAP (8), raised for the load,
            // are gone (the spec has neither).
            for set in ["CapBnd:", "CapPrm:", "CapEff:"] {
                let bits = u64::from_str_radix(field(&lines, set), 16).unwrap();
                assert_eq!(bits & (1 << 21 | 1 << 8), 0, "{cid} {set} {bits:x}");
            }
            let mut rest = rest.lines();
            let exe = rest.next().unwrap();
            assert!(
                exe.starts_with('/') && !exe.contains("memfd") && !exe.contains("crius"),
                "{cid}: exe {exe}"
            );
            if filtered {
                assert_eq!(rest.next(), Some("chmod-failed"), "{cid}: {out} {err}");
                assert!(err.contains("Operation not permitted"), "{cid}: {err}");
            } else {
                assert_eq!(rest.next(), Some("chmod-ok"), "{cid}: {out} {err}");
            }
            c.delete(cid).await.unwrap();
        }
    }

    #[tokio::test]
    async fn monitor_pod_namespaces_are_shared() {
        let pod = Pod::start(Pod::all_ns());
        let mut c = pod.client().await;
        pod.run(&mut c, "ns-a", &["sleep", "1000"]).await;
        pod.run(&mut c, "ns-b", &["sleep", "1000"]).await;
        let none = Duration::ZERO;
        let r = c
            .exec_sync("ns-a", vec!["hostname".into()], none)
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), HOSTNAME);
        let host_net = ns_inode("/proc/self/ns/net");
        for ns in ["net", "ipc", "uts"] {
            let pin = ns_inode(monitor::ns_path(&pod.dir, ns));
            for cid in ["ns-a", "ns-b"] {
                let pid = c.state(cid).await.unwrap().pid;
                assert_eq!(ns_inode(format!("/proc/{pid}/ns/{ns}")), pin, "{cid} {ns}");
            }
        }
        assert_ne!(ns_inode(monitor::ns_path(&pod.dir, "net")), host_net);
        // Each container has its own PID namespace here.
        let a = c.state("ns-a").await.unwrap().pid;
        let b = c.state("ns-b").await.unwrap().pid;
        assert_ne!(
            ns_inode(format!("/proc/{a}/ns/pid")),
            ns_inode(format!("/proc/{b}/ns/pid"))
        );
    }

    #[tokio::test]
    async fn monitor_pod_pid_namespace_and_host_namespaces() {
        let ns = MonitorConfig {
            net: false,
            ipc: false,
            uts: true,
            pid: true,
            ..MonitorConfig::default()
        };
        let pod = Pod::start(ns);
        let init = monitor::pod_init_pid(&pod.dir).unwrap().expect("pid-init");
        assert!(alive(init));
        let mut c = pod.client().await;
        pod.run(&mut c, "pidns-a", &["sleep", "1000"]).await;
        pod.run(&mut c, "pidns-b", &["sleep", "1000"]).await;
        let init_ns = ns_inode(format!("/proc/{init}/ns/pid"));
        for cid in ["pidns-a", "pidns-b"] {
            let pid = c.state(cid).await.unwrap().pid;
            assert_eq!(ns_inode(format!("/proc/{pid}/ns/pid")), init_ns);
            // The host's network namespace, as configured.
            assert_eq!(
                ns_inode(format!("/proc/{pid}/ns/net")),
                ns_inode("/proc/self/ns/net")
            );
        }
        let r = c
            .exec_sync(
                "pidns-a",
                vec!["cat".into(), "/proc/1/comm".into()],
                Duration::ZERO,
            )
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "crius-pod-init");
        // b sees a's sleep.
        let r = c
            .exec_sync(
                "pidns-b",
                vec!["pgrep".into(), "sleep".into()],
                Duration::ZERO,
            )
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&r.stdout).lines().count(),
            2,
            "{r:?}"
        );
        // The uts and pid pins.
        assert_eq!(mounts_under(&pod.dir).len(), 2);
        c.shutdown().await.unwrap();
        assert!(
            wait_gone(init, Duration::from_secs(5)),
            "pod init {init} still alive"
        );
        assert!(wait_gone(pod.pid, Duration::from_secs(5)));
    }

    #[tokio::test]
    async fn monitor_shutdown_cleans_up() {
        let pod = Pod::start(Pod::all_ns());
        let mut c = pod.client().await;
        let bundle = pod.run(&mut c, "down-a", &["sleep", "1000"]).await;
        pod.run(&mut c, "down-b", &["sleep", "1000"]).await;
        let pids = [
            c.state("down-a").await.unwrap().pid,
            c.state("down-b").await.unwrap().pid,
        ];
        assert_eq!(mounts_under(&pod.dir).len(), 3);
        let t = Instant::now();
        c.shutdown().await.unwrap();
        eprintln!("shutdown: {:?}", t.elapsed());
        assert!(
            wait_gone(pod.pid, Duration::from_secs(5)),
            "monitor still alive"
        );
        for pid in pids {
            assert!(!alive(pid));
        }
        let exit = monitor::read_exit_record(&bundle)
            .unwrap()
            .expect("exit.json");
        assert_eq!((exit.exit_code, exit.signal), (137, Some(9)));
        assert!(!pod.dir.join(monitor::SOCKET_FILE).exists());
        assert_eq!(mounts_under(&pod.dir), Vec::<PathBuf>::new());
        assert!(!monitor::ns_path(&pod.dir, "net").exists());
        for cid in ["down-a", "down-b"] {
            let cg = format!("/sys/fs/cgroup/memory/{}/{cid}", cgroup_parent());
            assert!(!Path::new(&cg).exists(), "{cg} left behind");
            assert!(!pod.cfg.runtime_root.join(cid).exists());
        }
        assert!(MonitorClient::connect(&pod.dir).await.is_err());
    }

    #[tokio::test]
    async fn monitor_survives_its_spawner() {
        let (tmp, dir, cfg) = Pod::prepare(Pod::all_ns());
        let out = std::process::Command::new(BIN)
            .arg("spawn")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let pod = Pod {
            tmp,
            dir,
            pid,
            cfg,
            cids: Mutex::new(Vec::new()),
        };
        // The spawner has exited (output() reaped it); the monitor answers.
        let mut c = pod.client().await;
        assert_eq!(c.hello().await.unwrap().1, pid);
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert!(
            exe.to_string_lossy().contains("memfd:"),
            "{}",
            exe.display()
        );
    }

    #[tokio::test]
    async fn monitor_protocol_errors_and_concurrency() {
        let pod = Pod::start(Pod::all_ns());
        let sock = pod.dir.join(monitor::SOCKET_FILE);

        // A malformed line gets an error, then the connection closes.
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"{\"op\":\"hello\"}\nnot json\n{\"op\":\"hello\"}\n")
            .unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("\"hello\""), "{line}");
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("invalid_argument"), "{line}");
        line.clear();
        assert_eq!(r.read_line(&mut line).unwrap(), 0, "{line}");

        // Unknown op, bad id, relative bundle, a tty the bundle's process
        // lacks, unknown container.
        let mut c = pod.client().await;
        let bad = c
            .request(&serde_json::from_str(r#"{"op":"delete_container","id":"x"}"#).unwrap())
            .await
            .unwrap();
        assert_eq!(bad, crius_proto::monitor::Response::Ok);
        let bundle = pod.bundle("proto", &["true"], |_| {});
        for (id, bundle, tty) in [
            ("../x", bundle.clone(), false),
            ("proto", PathBuf::from("rel"), false),
            ("proto", bundle.clone(), true),
        ] {
            let err = c
                .create(id, &bundle, None, false, false, tty)
                .await
                .unwrap_err();
            assert_eq!(err.remote_kind(), Some(ErrorKind::InvalidArgument), "{err}");
        }
        let err = c
            .create(
                "proto",
                Path::new("/no/such/bundle"),
                None,
                false,
                false,
                false,
            )
            .await;
        assert!(matches!(err, Err(MonitorError::Remote { .. })), "{err:?}");
        for r in [c.start("x").await, c.reopen_log("x").await] {
            assert_eq!(r.unwrap_err().remote_kind(), Some(ErrorKind::NotFound));
        }
        // The monitor still serves after all that.
        c.hello().await.unwrap();

        // Without a log path, output is drained and dropped.
        let bundle = pod.bundle(
            "nolog",
            &["sh", "-c", "head -c 1000000 /dev/zero; echo"],
            |_| {},
        );
        c.create("nolog", &bundle, None, false, false, false)
            .await
            .unwrap();
        c.start("nolog").await.unwrap();
        assert_eq!(wait_exit(&mut c, "nolog").await.exit_code, 0);
        c.delete("nolog").await.unwrap();

        // A long exec on one connection does not hold up another: while
        // it runs, the other connection is answered, and deleting the
        // container there answers the exec (which would run 617 s).
        pod.run(&mut c, "conc", &["sleep", "1000"]).await;
        let mut c2 = pod.client().await;
        let slow = c.exec_sync("conc", vec!["sleep".into(), "617".into()], Duration::ZERO);
        let other = async {
            // The exec is running (its process is there).
            let t = Instant::now();
            while !std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
                std::fs::read(p.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x00617\x00")
            }) {
                assert!(t.elapsed() < PATIENCE, "the exec never ran");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for _ in 0..5 {
                c2.hello().await.unwrap();
                c2.state("conc").await.unwrap();
            }
            c2.delete("conc").await
        };
        let (slow, del) = tokio::time::timeout(PATIENCE, async { tokio::join!(slow, other) })
            .await
            .expect("the other connection was answered during the exec");
        del.unwrap();
        assert_eq!(slow.unwrap().exit_code, 137);
        let cg = format!("/sys/fs/cgroup/memory/{}/conc", cgroup_parent());
        assert!(!Path::new(&cg).exists(), "{cg} left behind");

        // Reopening the log after rotation writes to a new file.
        pod.run(&mut c, "conc", &["sleep", "1000"]).await;
        let log = pod.log_path("conc");
        std::fs::rename(&log, log.with_extension("old")).unwrap();
        c.reopen_log("conc").await.unwrap();
        assert!(log.exists());
    }

    #[tokio::test]
    async fn monitor_kill_stale() {
        let pod = Pod::start(MonitorConfig {
            pid: true,
            ..Pod::all_ns()
        });
        let init = monitor::pod_init_pid(&pod.dir).unwrap().expect("pid-init");
        // Not a monitor, or not this pod's: left alone.
        assert!(!monitor::kill_stale(Path::new("/no/such/pod"), pod.pid));
        assert!(!monitor::kill_stale(&pod.dir, std::process::id()));
        assert!(alive(pod.pid));
        let mut c = pod.client().await;
        c.hello().await.unwrap();
        // net, ipc, uts and pid pins.
        assert_eq!(mounts_under(&pod.dir).len(), 4);

        assert!(monitor::kill_stale(&pod.dir, pod.pid));
        assert!(wait_gone(pod.pid, Duration::from_secs(5)));
        assert!(wait_gone(init, Duration::from_secs(5)));
        assert_eq!(mounts_under(&pod.dir), Vec::<PathBuf>::new());
        assert!(!pod.dir.join(monitor::SOCKET_FILE).exists());
        assert!(!monitor::kill_stale(&pod.dir, pod.pid));
    }
}

//! CRI Exec, Attach and PortForward through the streaming server, driven
//! by the real crictl over SPDY (its default transport): output and exit
//! codes, stdin, a terminal, attaching to a container's stdio, and TCP
//! connections forwarded into the pod (on both handlers: a VM pod's go
//! through its guest agent).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crius_proto::cri::{ContainerConfig, ContainerState};
use e2e::crius::open_fds;
use e2e::pods::{Env, create, pod_config, run_pod, run_pod_on, start, stop_remove_pod};

use e2e::pods::busybox as container_config;

#[tokio::test(flavor = "multi_thread")]
async fn crictl_exec_streams_output_stdin_exit_codes_and_a_tty() {
    let e = Env::start("").await;
    let pc = pod_config(&e, "exec");
    let pod = run_pod(&e.c, &pc).await;
    let ctr = create(&e.c, &pod, &pc, container_config("c", &["sleep", "1000"])).await;
    start(&e.c, &ctr).await;

    // Output on both streams, kept apart, and the exit code.
    let out = e.c.crictl(&[
        "exec",
        &ctr,
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; exit 3",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "to-out\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("to-err\n"), "{err}");
    // crictl reports the code (and exits 1).
    assert!(err.contains("exit code 3"), "{err}");
    assert!(!out.status.success());
    let ok = e.c.crictl_ok(&["exec", &ctr, "cat", "/proc/self/cgroup"]);
    assert!(
        ok.contains(&ctr),
        "the exec runs in the container's cgroup: {ok}"
    );

    // stdin to the process, its EOF when ours ends.
    let mut child =
        e.c.crictl_command(&["exec", "-i", &ctr, "sh", "-c", "tr a-z A-Z; echo done"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped in\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "PIPED IN\ndone\n");

    // A terminal: crictl wants one itself, so it runs under script(1). The
    // client sends its size once the session is up, which can be after
    // the shell starts (as with any runtime): the shell waits for it.
    let out = e.c.crictl_in_terminal(
        &[
            "exec",
            "-it",
            &ctr,
            "sh",
            "-c",
            "tty; n=0; until [ \"$(stty size)\" = \"17 91\" ] || [ $n = 500 ]; \
             do n=$((n+1)); done; stty size",
        ],
        Some("cols 91 rows 17"),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("/dev/pts/"),
        "the exec has a terminal: {text}"
    );
    assert!(
        text.contains("17 91"),
        "the client's size reaches the pty: {text}"
    );

    // The same over WebSocket (v5.channel.k8s.io).
    let out = e.c.crictl(&[
        "exec",
        "-r",
        "websocket",
        &ctr,
        "sh",
        "-c",
        "echo ws-out; echo ws-err >&2; exit 4",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ws-out\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("ws-err\n"), "{err}");
    assert!(err.contains("exit code 4"), "{err}");
    let mut child =
        e.c.crictl_command(&["exec", "-r", "websocket", "-i", &ctr, "tr", "a-z", "A-Z"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"over websocket\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OVER WEBSOCKET\n");

    // Sessions leave no descriptor behind, in the server or the monitor.
    let fds = open_fds;
    let server = e.c.pid().unwrap();
    let monitor = e.c.monitor_pid(&pod);
    let before = (fds(server), fds(monitor));
    for _ in 0..20 {
        e.c.crictl_ok(&["exec", &ctr, "true"]);
        let mut child =
            e.c.crictl_command(&["exec", "-i", &ctr, "cat"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
        child.stdin.take().unwrap().write_all(b"x").unwrap();
        assert!(child.wait().unwrap().success());
    }
    // (Connections of earlier sessions may still be closing when `before`
    // is taken: at most as many as then.)
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = (fds(server), fds(monitor));
        if now.0 <= before.0 && now.1 <= before.1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "descriptors (server, monitor): {now:?}, before {before:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Bad requests get clear errors.
    let bad = e.c.crictl(&["exec", "no-such-container", "true"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not found"),
        "{bad:?}"
    );

    stop_remove_pod(&e.c, &pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crictl_port_forward_reaches_a_server_in_the_pod() {
    port_forward_reaches_a_server_in_the_pod("").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crictl_port_forward_reaches_a_server_in_a_vm_pod() {
    port_forward_reaches_a_server_in_the_pod("vm").await;
}

/// Each answer is read to its end: the pod's close reaches the client.
async fn port_forward_reaches_a_server_in_the_pod(handler: &str) {
    let e = if handler == "vm" {
        Env::start(&e2e::guest::vm_toml()).await
    } else {
        Env::start("").await
    };
    let pc = pod_config(&e, "pf");
    let pod = run_pod_on(&e.c, &pc, handler).await;
    // A one-line web server on the pod's loopback only: reachable through
    // the pod's network namespace, not from the host.
    let ctr = create(
        &e.c,
        &pod,
        &pc,
        container_config(
            "web",
            &[
                "sh",
                "-c",
                "mkdir /www && echo hello-through-the-forward > /www/index.html && \
                 exec httpd -f -p 127.0.0.1:8080 -h /www",
            ],
        ),
    )
    .await;
    start(&e.c, &ctr).await;
    // Serving before the forward starts: client-go ends a port forward
    // whose connection the pod refuses (crius reports the refusal).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !e
        .c
        .crictl(&[
            "exec",
            "-s",
            &ctr,
            "wget",
            "-q",
            "-O-",
            "http://127.0.0.1:8080/index.html",
        ])
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "httpd never served in the pod");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A local port crictl picks: "Forwarding from 127.0.0.1:PORT -> 8080".
    let mut pf =
        e.c.crictl_command(&["port-forward", &pod, ":8080"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    let mut out = BufReader::new(pf.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.contains("Forwarding from"), "{first}");
    let port: u16 = first
        .split_whitespace()
        .find_map(|w| w.strip_prefix("127.0.0.1:"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no local port in {first:?}"));
    // crictl goes on writing to its stdout (one line per connection): it
    // is read to the end, or crictl dies of the closed pipe.
    std::thread::spawn(move || out.lines().for_each(drop));

    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let got = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
            let mut r = String::new();
            s.read_to_string(&mut r)?;
            Ok(r)
        })();
        match got {
            Ok(r) if r.contains("hello-through-the-forward") => break r,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no page through the forward: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(body.starts_with("HTTP/1."), "{body}");
    // A second connection over the same session.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    assert!(r.contains("hello-through-the-forward"), "{r}");

    let _ = pf.kill();
    let _ = pf.wait();
    stop_remove_pod(&e.c, &pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crictl_attach_talks_to_the_containers_stdio() {
    let e = Env::start("").await;
    let pc = pod_config(&e, "attach");
    let pod = run_pod(&e.c, &pc).await;
    // A shell reading commands from stdin, which closes when the first
    // attached client closes it (attached over WebSocket; exec covers SPDY).
    let config = ContainerConfig {
        stdin: true,
        stdin_once: true,
        ..container_config("sh", &["sh"])
    };
    let ctr = create(&e.c, &pod, &pc, config).await;
    start(&e.c, &ctr).await;

    let mut child =
        e.c.crictl_command(&["attach", "-r", "websocket", "-i", &ctr])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(b"echo hello-attach; echo to-err >&2\n")
        .unwrap();
    // The shell answers; then its stdin closes (and it exits).
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "hello-attach\n");
    drop(input);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "", "nothing more on stdout");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("to-err"),
        "{out:?}"
    );
    // stdin_once: the shell got EOF and exited.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = e2e::pods::status(&e.c, &ctr).await;
        if s.state == ContainerState::ContainerExited as i32 {
            assert_eq!(s.exit_code, 0);
            break;
        }
        assert!(Instant::now() < deadline, "the shell did not exit: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the log has what the attached client saw.
    let logs = e.c.crictl_ok(&["logs", &ctr]);
    assert!(logs.contains("hello-attach"), "{logs}");
    // A stopped container cannot be attached to.
    let bad = e.c.crictl(&["attach", &ctr]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not running"),
        "{bad:?}"
    );

    stop_remove_pod(&e.c, &pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_clients_attach_at_once_and_leave_the_container_running() {
    let e = Env::start("").await;
    let pc = pod_config(&e, "attach2");
    let pod = run_pod(&e.c, &pc).await;
    let ctr = create(
        &e.c,
        &pod,
        &pc,
        container_config(
            "ticker",
            &["sh", "-c", "while true; do echo tick; sleep 0.1; done"],
        ),
    )
    .await;
    start(&e.c, &ctr).await;
    let attach = || {
        e.c.crictl_command(&["attach", &ctr])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (attach(), attach());
    let mut out_a = BufReader::new(a.stdout.take().unwrap());
    let mut out_b = BufReader::new(b.stdout.take().unwrap());
    for out in [&mut out_a, &mut out_b] {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, "tick\n");
    }
    // Detaching (the clients go away) leaves the container running and
    // logging.
    let _ = a.kill();
    let _ = b.kill();
    let _ = (a.wait(), b.wait());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = e2e::pods::status(&e.c, &ctr).await;
    assert_eq!(s.state, ContainerState::ContainerRunning as i32, "{s:?}");
    let mut again = attach();
    let mut line = String::new();
    BufReader::new(again.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "tick\n");
    let _ = again.kill();
    let _ = again.wait();

    // Clients that detach from a quiet container (nothing written to
    // their pipes, so no EPIPE) are forgotten all the same.
    let quiet = create(
        &e.c,
        &pod,
        &pc,
        container_config("quiet", &["sleep", "1000"]),
    )
    .await;
    start(&e.c, &quiet).await;
    let monitor = e.c.monitor_pid(&pod);
    let fds = || open_fds(monitor);
    let before = fds();
    for _ in 0..5 {
        let mut c =
            e.c.crictl_command(&["attach", &quiet])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
        // Attached: the monitor holds the client's pipes.
        let attached = Instant::now() + Duration::from_secs(60);
        while fds() <= before {
            assert!(Instant::now() < attached, "the client never attached");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = c.kill();
        let _ = c.wait();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while fds() > before {
        assert!(
            Instant::now() < deadline,
            "the monitor keeps {} descriptors, had {before}",
            fds()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_remove_pod(&e.c, &pod).await;
}

/// A session that carries nothing for `stream_idle_timeout` is closed (the
/// exec's crictl returns long before its command would end); one that
/// carries a little now and then is not.
#[tokio::test(flavor = "multi_thread")]
async fn quiet_sessions_are_closed_busy_ones_are_not() {
    let e = Env::start("stream_idle_timeout = 4\n").await;
    let pc = pod_config(&e, "idle");
    let pod = run_pod(&e.c, &pc).await;
    let ctr = create(&e.c, &pod, &pc, container_config("c", &["sleep", "1000"])).await;
    start(&e.c, &ctr).await;

    let busy = e.c.crictl(&[
        "exec",
        &ctr,
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8; do echo $i; sleep 1; done",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&busy.stdout),
        "1\n2\n3\n4\n5\n6\n7\n8\n",
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
    assert!(busy.status.success());

    let mut quiet =
        e.c.crictl_command(&["exec", &ctr, "sleep", "600"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    // crictl returns: its connection was closed long before `sleep` ends.
    while quiet.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the quiet session was not closed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        e.c.log().contains("streaming session idle: closed"),
        "{}",
        e.c.log()
    );
    stop_remove_pod(&e.c, &pod).await;
}

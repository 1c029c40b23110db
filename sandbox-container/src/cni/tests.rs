//! Tests of the CNI caller with the real plugins (Debian's
//! containernetworking-plugins in /usr/lib/cni) and with small shell-script
//! plugins. Run as root.
//!
//! Every test that runs real plugins does so in a thread of its own that
//! first moves into a fresh network namespace, which is the plugins' "host":
//! the bridge, the host ends of the veths, portmap's iptables rules and the
//! `ip_forward` that the bridge plugin turns on for `isGateway` all live in
//! that namespace and vanish with the thread, so the machine's own network
//! is never touched. Pod namespaces are made with `ip netns add`. Guards
//! delete every pod netns and bridge a test made, even when it fails.

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;

static SEQ: AtomicU32 = AtomicU32::new(1);

fn seq() -> u32 {
    SEQ.fetch_add(1, Ordering::SeqCst)
}

/// Runs `f` on a new thread inside a new network namespace.
fn in_own_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let thread = s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET) (the tests run as root)");
            f()
        });
        match thread.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

fn ip(args: &[&str]) -> (bool, String) {
    let out = Proc::new("ip")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .expect("run ip");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A pod network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        let name = format!("crius-cni-test-{}-{}", std::process::id(), seq());
        let (ok, _) = ip(&["netns", "add", &name]);
        assert!(ok, "ip netns add {name}");
        Netns { name }
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    fn delete(&self) {
        if self.path().exists() {
            ip(&["netns", "del", &self.name]);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// A link (the test's bridge), deleted on drop.
struct Link(String);

impl Drop for Link {
    fn drop(&mut self) {
        if ip(&["link", "show", &self.0]).0 {
            ip(&["link", "del", &self.0]);
        }
    }
}

/// One test network: conf dir with a conflist, cache dir, pod netns.
struct Fixture {
    // Dropped in this order: pod netns (and with it the veth), bridge, files.
    ns: Netns,
    _bridge: Link,
    tmp: tempfile::TempDir,
    network: String,
    n: u32,
    cni: Cni,
}

impl Fixture {
    fn options(tmp: &Path) -> CniOptions {
        let mut opts = CniOptions::new(tmp.join("state/cni-cache"));
        opts.conf_dirs = vec![tmp.join("net.d")];
        opts.plugin_timeout = Duration::from_secs(20);
        opts
    }

    /// bridge + host-local (198.18.<n>.0/24) [+ portmap].
    fn bridge(portmap: bool) -> Fixture {
        let n = seq();
        assert!(n < 256);
        let tmp = tempfile::tempdir().unwrap();
        let bridge = format!("crcni{}{n}", std::process::id() % 10000);
        let network = format!("crius-test-{n}");
        let mut plugins = vec![json!({
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": format!("198.18.{n}.0/24")}]],
                "dataDir": tmp.path().join("ipam"),
            },
        })];
        if portmap {
            // snat false: no MASQUERADE rule, no route_localnet.
            plugins.push(
                json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": false}),
            );
        }
        let conf = json!({"cniVersion": "1.0.0", "name": network, "plugins": plugins});
        Self::with_conf(n, tmp, network, conf, Link(bridge))
    }

    fn with_conf(
        n: u32,
        tmp: tempfile::TempDir,
        network: String,
        conf: Value,
        bridge: Link,
    ) -> Fixture {
        fs::create_dir_all(tmp.path().join("net.d")).unwrap();
        fs::write(
            tmp.path().join("net.d/10-test.conflist"),
            serde_json::to_vec_pretty(&conf).unwrap(),
        )
        .unwrap();
        let cni = Cni::new(Self::options(tmp.path())).unwrap();
        Fixture {
            ns: Netns::new(),
            _bridge: bridge,
            tmp,
            network,
            n,
            cni,
        }
    }

    fn pod(&self) -> PodNetwork {
        PodNetwork {
            id: format!("crius{}x{}", std::process::id(), self.n),
            name: "web".into(),
            namespace: "default".into(),
            uid: format!("uid-{}", self.n),
            netns: self.ns.path(),
            port_mappings: Vec::new(),
        }
    }

    fn in_subnet(&self, ip: IpAddr) -> bool {
        ip.to_string().starts_with(&format!("198.18.{}.", self.n))
    }

    /// host-local's reservation file of `ip`.
    fn lease(&self, ip: IpAddr) -> PathBuf {
        self.tmp
            .path()
            .join("ipam")
            .join(&self.network)
            .join(ip.to_string())
    }

    fn eth0(&self) -> (bool, String) {
        ip(&["-n", &self.ns.name, "-o", "addr", "show", "dev", "eth0"])
    }
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let v = f();
    eprintln!("{what}: {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
    v
}

#[test]
fn cni_bridge_add_check_del() {
    in_own_netns(|| {
        let f = Fixture::bridge(true);
        let pod = f.pod();
        let result = timed("ADD bridge+portmap", || f.cni.add(&pod)).unwrap();
        let ips = result.pod_ips();
        assert_eq!(ips.len(), 1, "{result:?}");
        assert!(f.in_subnet(ips[0]), "{ips:?}");
        let (ok, addr) = f.eth0();
        assert!(
            ok && addr.contains(&format!("inet {}/24", ips[0])),
            "{addr}"
        );
        assert!(f.lease(ips[0]).exists());
        assert_eq!(result.cni_version, "1.0.0");
        assert!(
            result
                .interfaces
                .iter()
                .any(|i| i.name == "eth0" && i.in_sandbox())
        );

        let cache = f.cni.cache_path(&f.network, &pod);
        let mode = fs::metadata(&cache)
            .expect("cache file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(f.cni.cached_result(&pod).unwrap(), Some(result.clone()));

        timed("CHECK", || f.cni.check(&pod)).unwrap();

        timed("DEL", || f.cni.del(&pod)).unwrap();
        assert!(!cache.exists());
        assert!(!f.eth0().0, "eth0 still there");
        assert!(!f.lease(ips[0]).exists(), "IP not released");
        assert_eq!(f.cni.cached_result(&pod).unwrap(), None);
        assert!(matches!(f.cni.check(&pod), Err(Error::NotAttached { .. })));

        // Idempotent: again, and after the netns is gone.
        timed("DEL again", || f.cni.del(&pod)).unwrap();
        f.ns.delete();
        f.cni.del(&pod).unwrap();
        assert!(!cache.exists());
    });
}

#[test]
fn cni_del_after_restart_uses_cache_alone() {
    in_own_netns(|| {
        let f = Fixture::bridge(true);
        let pod = f.pod();
        let ip0 = f.cni.add(&pod).unwrap().pod_ips()[0];
        let opts = f.cni.options().clone();
        // The conf dir loses its config: only the cache knows the network.
        fs::remove_file(f.tmp.path().join("net.d/10-test.conflist")).unwrap();

        let fresh = Cni::new(opts).unwrap();
        assert!(matches!(fresh.status(), Err(Error::NoConfig { .. })));
        assert_eq!(fresh.cached_result(&pod).unwrap().unwrap().pod_ips(), [ip0]);
        fresh.check(&pod).unwrap();
        timed("DEL from cache", || fresh.del(&pod)).unwrap();
        assert!(!f.eth0().0);
        assert!(!f.lease(ip0).exists());
        assert!(!fresh.cache_path(&f.network, &pod).exists());
        // Neither cache nor config: nothing to run the plugins with.
        assert!(matches!(fresh.del(&pod), Err(Error::NoConfig { .. })));
    });
}

/// After a reboot: the pod's netns is gone, its config too, and no record
/// names it; the sweep DELs it from the cache (the IP goes back) and leaves
/// the attachments of live pods alone.
#[test]
fn cni_sweep_releases_what_no_record_names() {
    in_own_netns(|| {
        let f = Fixture::bridge(false);
        let pod = f.pod();
        let ip0 = f.cni.add(&pod).unwrap().pod_ips()[0];
        let swept = f.cni.sweep(&|id| id == pod.id).unwrap();
        assert!(swept.is_empty(), "a live pod is kept");
        assert!(f.lease(ip0).exists());
        f.ns.delete();
        fs::remove_file(f.tmp.path().join("net.d/10-test.conflist")).unwrap();
        let swept = f.cni.sweep(&|_| false).unwrap();
        assert_eq!(swept, std::slice::from_ref(&pod.id));
        assert!(!f.lease(ip0).exists(), "IP not released");
        assert!(!f.cni.cache_path(&f.network, &pod).exists());
        assert!(f.cni.sweep(&|_| false).unwrap().is_empty());
    });
}

/// Entries of the cache's earlier home move to the new one, once.
#[test]
fn cni_cache_entries_move() {
    let tmp = tempfile::tempdir().unwrap();
    let (old, new) = (tmp.path().join("state/cni"), tmp.path().join("root/cni"));
    assert_eq!(super::move_cache_entries(&old, &new).unwrap(), 0);
    fs::create_dir_all(&old).unwrap();
    fs::write(old.join("a@eth0@n.json"), "{}").unwrap();
    assert_eq!(super::move_cache_entries(&old, &new).unwrap(), 1);
    assert_eq!(fs::read_to_string(new.join("a@eth0@n.json")).unwrap(), "{}");
    assert!(!old.exists());
}

#[test]
fn cni_del_after_netns_removed() {
    in_own_netns(|| {
        let f = Fixture::bridge(false);
        let pod = f.pod();
        let ip0 = f.cni.add(&pod).unwrap().pod_ips()[0];
        f.ns.delete();
        assert!(!pod.netns.exists());
        timed("DEL without netns", || f.cni.del(&pod)).unwrap();
        assert!(!f.lease(ip0).exists(), "IP not released");
        assert!(!f.cni.cache_path(&f.network, &pod).exists());
        f.cni.del(&pod).unwrap();
    });
}

#[test]
fn cni_port_mappings_reach_portmap() {
    in_own_netns(|| {
        let f = Fixture::bridge(true);
        let mut pod = f.pod();
        let gw: IpAddr = format!("198.18.{}.1", f.n).parse().unwrap();
        pod.port_mappings = vec![
            PortMapping {
                host_port: 18080,
                container_port: 80,
                protocol: Protocol::Tcp,
                host_ip: None,
            },
            // No host port: not passed on.
            PortMapping {
                host_port: 0,
                container_port: 81,
                protocol: Protocol::Tcp,
                host_ip: None,
            },
            PortMapping {
                host_port: 18053,
                container_port: 53,
                protocol: Protocol::Udp,
                host_ip: Some(gw),
            },
        ];
        let result = timed("ADD with ports", || f.cni.add(&pod)).unwrap();
        assert!(f.in_subnet(result.pod_ips()[0]));
        let cached = fs::read(f.cni.cache_path(&f.network, &pod)).unwrap();
        let cached: Value = serde_json::from_slice(&cached).unwrap();
        assert_eq!(
            cached["capabilityArgs"]["portMappings"],
            json!([
                {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 18053, "containerPort": 53, "protocol": "udp", "hostIP": gw.to_string()},
            ])
        );
        // Only this test's own namespace is looked at.
        let rules = |args: &[&str]| {
            let out = Proc::new("iptables").args(args).output().unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert!(rules(&["-t", "nat", "-S"]).contains("--dport 18080"));
        // No CHECK here: portmap 1.1.1's CHECK of IPv4-only mappings looks
        // for an ip6tables chain too and fails (containernetworking/plugins
        // issue 819).
        f.cni.del(&pod).unwrap();
        assert!(!rules(&["-t", "nat", "-S"]).contains("--dport 18080"));
        f.cni.del(&pod).unwrap();
    });
}

#[test]
fn cni_loopback_list() {
    in_own_netns(|| {
        let n = seq();
        let tmp = tempfile::tempdir().unwrap();
        let conf = json!({"cniVersion": "1.0.0", "name": format!("lo-{n}"), "plugins": [{"type": "loopback"}]});
        let f = Fixture::with_conf(n, tmp, format!("lo-{n}"), conf, Link(format!("crcnilo{n}")));
        let pod = f.pod();
        let result = timed("ADD loopback", || f.cni.add(&pod)).unwrap();
        assert!(
            result.pod_ips().contains(&"127.0.0.1".parse().unwrap()),
            "{result:?}"
        );
        let (ok, lo) = ip(&["-n", &f.ns.name, "-o", "addr", "show", "dev", "lo"]);
        assert!(ok && lo.contains("inet 127.0.0.1/8"), "{lo}");
        f.cni.check(&pod).unwrap();
        f.cni.del(&pod).unwrap();
        f.cni.del(&pod).unwrap();
        assert!(!f.cni.cache_path(&f.network, &pod).exists());
    });
}

/// A tempdir with conf and bin dirs for script plugins.
struct Scripted {
    tmp: tempfile::TempDir,
    cni: Cni,
}

impl Scripted {
    fn new(timeout: Duration) -> Scripted {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("net.d")).unwrap();
        fs::create_dir_all(tmp.path().join("bin")).unwrap();
        let mut opts = CniOptions::new(tmp.path().join("cache"));
        opts.conf_dirs = vec![tmp.path().join("net.d")];
        opts.bin_dirs = vec![tmp.path().join("missing-bin"), tmp.path().join("bin")];
        opts.plugin_timeout = timeout;
        let cni = Cni::new(opts).unwrap();
        Scripted { tmp, cni }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn plugin(&self, name: &str, body: &str) {
        let path = self.dir().join("bin").join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn conf(&self, plugins: Value) {
        let conf = json!({"cniVersion": "1.0.0", "name": "scripted", "plugins": plugins});
        fs::write(
            self.dir().join("net.d/10-scripted.conflist"),
            serde_json::to_vec(&conf).unwrap(),
        )
        .unwrap();
    }

    fn pod(&self) -> PodNetwork {
        PodNetwork {
            id: "0123abcd".into(),
            name: "web-0".into(),
            namespace: "prod".into(),
            uid: "7f1c-42".into(),
            netns: "/run/netns/crius-cni-test-none".into(),
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: Protocol::Sctp,
                host_ip: None,
            }],
        }
    }
}

#[test]
fn cni_protocol_env_stdin_order() {
    let s = Scripted::new(Duration::from_secs(10));
    let d = s.dir().display().to_string();
    // Records each call (numbered) and answers ADD with an address that
    // names the call.
    let body = format!(
        r#"n=$(cat {d}/seq 2>/dev/null || echo 0); n=$((n+1)); echo $n > {d}/seq
cat > {d}/$n.stdin
env | grep '^CNI_' | sort > {d}/$n.env
basename "$0" > {d}/$n.name
if [ "$CNI_COMMAND" = ADD ]; then
  printf '{{"cniVersion":"1.0.0","interfaces":[{{"name":"eth0","sandbox":"%s"}}],"ips":[{{"address":"198.19.%s.5/24","interface":0}}]}}' "$CNI_NETNS" "$n"
fi"#
    );
    s.plugin("rec1", &body);
    s.plugin("rec2", &body);
    s.conf(json!([
        {"type": "rec1", "name": "ignored", "k": 1},
        {"type": "rec2", "capabilities": {"portMappings": true, "bandwidth": true}},
    ]));
    let pod = s.pod();
    let result = s.cni.add(&pod).unwrap();
    assert_eq!(result.pod_ips(), ["198.19.2.5".parse::<IpAddr>().unwrap()]);
    s.cni.check(&pod).unwrap();
    s.cni.del(&pod).unwrap();

    let call = |n: u32| {
        let name = fs::read_to_string(s.dir().join(format!("{n}.name"))).unwrap();
        let env = fs::read_to_string(s.dir().join(format!("{n}.env"))).unwrap();
        let stdin: Value =
            serde_json::from_slice(&fs::read(s.dir().join(format!("{n}.stdin"))).unwrap()).unwrap();
        (name.trim().to_string(), env, stdin)
    };
    let first_result = json!({"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/run/netns/crius-cni-test-none"}],"ips":[{"address":"198.19.1.5/24","interface":0}]});
    let (name, env, stdin) = call(1);
    assert_eq!(name, "rec1");
    let want_env = format!(
        "CNI_ARGS=K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=0123abcd;K8S_POD_UID=7f1c-42;IgnoreUnknown=1\n\
         CNI_COMMAND=ADD\nCNI_CONTAINERID=0123abcd\nCNI_IFNAME=eth0\n\
         CNI_NETNS=/run/netns/crius-cni-test-none\nCNI_PATH={d}/missing-bin:{d}/bin\n"
    );
    assert_eq!(env, want_env);
    assert_eq!(
        stdin,
        json!({"type": "rec1", "name": "scripted", "cniVersion": "1.0.0", "k": 1})
    );
    let (name, env, stdin) = call(2);
    assert_eq!(name, "rec2");
    assert!(env.contains("CNI_COMMAND=ADD\n"));
    assert_eq!(
        stdin,
        json!({"type": "rec2", "name": "scripted", "cniVersion": "1.0.0",
               "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "sctp"}]},
               "prevResult": first_result})
    );
    // CHECK in order, DEL in reverse, all with the final result.
    let order: Vec<(String, &str)> = (3..=6)
        .map(|n| {
            let (name, env, stdin) = call(n);
            assert_eq!(stdin["prevResult"], result.raw, "call {n}");
            let cmd = if env.contains("CNI_COMMAND=CHECK\n") {
                "CHECK"
            } else if env.contains("CNI_COMMAND=DEL\n") {
                "DEL"
            } else {
                "?"
            };
            (name, cmd)
        })
        .collect();
    let want: Vec<(String, &str)> = vec![
        ("rec1".into(), "CHECK"),
        ("rec2".into(), "CHECK"),
        ("rec2".into(), "DEL"),
        ("rec1".into(), "DEL"),
    ];
    assert_eq!(order, want);
    assert!(!s.dir().join("7.name").exists());
}

#[test]
fn cni_plugin_errors() {
    let s = Scripted::new(Duration::from_secs(10));
    // ADD: CNI error object; DEL: "container unknown" (code 3).
    s.plugin(
        "failer",
        r#"cat >/dev/null
if [ "$CNI_COMMAND" = ADD ]; then
  echo '{"cniVersion":"1.0.0","code":7,"msg":"Invalid Configuration","details":"no subnet"}'
else
  echo '{"cniVersion":"1.0.0","code":3,"msg":"no such container"}'
fi
exit 1"#,
    );
    s.conf(json!([{"type": "failer"}]));
    let pod = s.pod();
    let e = s.cni.add(&pod).unwrap_err();
    match &e {
        Error::Plugin {
            plugin,
            command,
            source,
        } => {
            assert_eq!(
                (plugin.as_str(), *command, source.code),
                ("failer", "ADD", 7)
            );
        }
        other => panic!("want Plugin, got {other:?}"),
    }
    assert_eq!(
        sandbox_api::error::chain(&e),
        "plugin \"failer\" ADD failed: Invalid Configuration; no subnet (code 7)"
    );
    assert!(!s.cni.cache_path("scripted", &pod).exists());
    s.cni.del(&pod).unwrap();

    // No error object: exit status and stderr.
    s.plugin("crasher", "echo 'boom: bad thing' >&2\nexit 2");
    s.conf(json!([{"type": "crasher"}]));
    let e = s.cni.add(&pod).unwrap_err();
    assert!(matches!(e, Error::PluginExit { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "plugin \"crasher\" ADD failed (exit status: 2): boom: bad thing"
    );
    assert!(matches!(s.cni.del(&pod), Err(Error::PluginExit { .. })));

    // Success with something that is not a result.
    s.plugin("liar", "echo 'not json'");
    s.conf(json!([{"type": "liar"}]));
    let e = s.cni.add(&pod).unwrap_err();
    assert!(
        matches!(e, Error::InvalidResult { ref plugin, .. } if plugin == "liar"),
        "{e:?}"
    );
}

#[test]
fn cni_config_errors() {
    let s = Scripted::new(Duration::from_secs(10));
    let pod = s.pod();
    assert!(matches!(s.cni.add(&pod), Err(Error::NoConfig { .. })));
    assert!(matches!(s.cni.del(&pod), Err(Error::NoConfig { .. })));
    assert!(matches!(s.cni.status(), Err(Error::NoConfig { .. })));
    assert!(matches!(s.cni.check(&pod), Err(Error::NotAttached { .. })));
    let e = s.cni.status().unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "no network config found in {}",
            s.dir().join("net.d").display()
        )
    );

    for bad in ["/usr/lib/cni/bridge", "../bin/bridge", ".."] {
        s.conf(json!([{"type": bad}]));
        match s.cni.add(&pod) {
            Err(Error::InvalidConfig {
                source: ConfigError::BadType(t),
                ..
            }) => assert_eq!(t, bad),
            other => panic!("{bad}: want InvalidConfig, got {other:?}"),
        }
    }

    s.conf(json!([{"type": "crius-no-such-plugin"}]));
    let e = s.cni.add(&pod).unwrap_err();
    assert!(
        matches!(&e, Error::PluginNotFound { plugin, .. } if plugin == "crius-no-such-plugin"),
        "{e:?}"
    );
    assert!(e.to_string().contains("crius-no-such-plugin"));
    assert!(matches!(s.cni.status(), Err(Error::PluginNotFound { .. })));

    // Pod fields that cannot be passed on.
    s.conf(json!([{"type": "crius-no-such-plugin"}]));
    let mut bad = pod.clone();
    bad.id = "../x".into();
    assert!(matches!(
        s.cni.add(&bad),
        Err(Error::InvalidArgument { .. })
    ));
    let mut bad = pod.clone();
    bad.name = "a;K8S_POD_UID=x".into();
    assert!(matches!(
        s.cni.add(&bad),
        Err(Error::InvalidArgument { .. })
    ));
    let mut bad = pod;
    bad.netns = "relative".into();
    assert!(matches!(
        s.cni.del(&bad),
        Err(Error::InvalidArgument { .. })
    ));
    let mut opts = s.cni.options().clone();
    opts.ifname = "eth0/../x".into();
    assert!(Cni::new(opts).is_err());
}

/// Whether `pid` has exited: no such process, or a zombie left for init.
fn dead(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

#[test]
fn cni_hanging_plugin_times_out_and_is_killed() {
    let timeout = Duration::from_millis(300);
    let s = Scripted::new(timeout);
    let d = s.dir().display().to_string();
    s.plugin(
        "hang",
        &format!(
            "echo $$ > {d}/$CNI_COMMAND.pid\nsleep 100 &\necho $! > {d}/$CNI_COMMAND.sleep.pid\nwait"
        ),
    );
    s.conf(json!([{"type": "hang"}]));
    let pod = s.pod();
    let started = Instant::now();
    let e = s.cni.add(&pod).unwrap_err();
    let elapsed = started.elapsed();
    eprintln!("ADD + undoing DEL, both timing out: {elapsed:?}");
    match &e {
        Error::Timeout {
            plugin,
            command,
            timeout: t,
        } => assert_eq!((plugin.as_str(), *command, *t), ("hang", "ADD", timeout)),
        other => panic!("want Timeout, got {other:?}"),
    }
    // ADD, then the DEL that undoes it: two timeouts, and long before the
    // plugins' 100 s sleeps would end.
    assert!(
        elapsed >= timeout * 2 && elapsed < Duration::from_secs(60),
        "{elapsed:?}"
    );
    let read_pid = |name: &str| -> i32 {
        fs::read_to_string(s.dir().join(name))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    for cmd in ["ADD", "DEL"] {
        let plugin = read_pid(&format!("{cmd}.pid"));
        // Reaped by us: gone at once.
        assert!(
            !Path::new(&format!("/proc/{plugin}")).exists(),
            "{cmd} plugin {plugin} left"
        );
        // Its child was killed with the process group.
        let child = read_pid(&format!("{cmd}.sleep.pid"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !dead(child) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(dead(child), "{cmd} plugin's child {child} still running");
    }
}

//! The pod network reaches the VM, for real: a pod network namespace with
//! `eth0` (one end of a veth, as the CNI bridge plugin leaves it) whose
//! other end is in a second namespace of the test's own playing the node;
//! our guest booted through the qemu driver with its TAP in the pod's
//! namespace, joined to eth0 by `sandbox_vm::pod_net` (tc ingress qdiscs
//! and u32 + mirred redirects), configured with eth0's MAC, MTU, address and
//! gateway. Then the node reaches a server in the guest on the pod IP, and
//! the guest reaches a server on the node.
//!
//! Only 198.19.240.0/24, only namespaces made here (nothing in the host's
//! root namespace, no routing off the machine, ip_forward untouched).
//! Leftovers of a killed earlier run are swept by their names; the
//! namespaces (and with them the veth and the TAP) go on drop, also when
//! the test fails.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command as Process;
use std::time::{Duration, Instant};

use e2e::guest::{self, NetNs};
use sandbox_vm::agent_client::{AgentClient, Command};
use sandbox_vm::hypervisor::{Disk, Hypervisor, Net, VmConfig};
use sandbox_vm::pod_net::{self, PodNetError, TcRedirect};
use sandbox_vm::qemu::QemuDriver;

const CAP: usize = 1 << 20;
const TESTBIN: &str = "/mnt/ro/crius-testbin";
/// Namespace names: fixed, so that a later run sweeps what a killed one
/// left (NetNs::create deletes a namespace of the same name first).
const POD_NS: &str = "crius-vmnet-pod";
const NODE_NS: &str = "crius-vmnet-node";
const NODE_VETH: &str = "vmnet-node";
const TAP: &str = "vmnet-tap0";
const NODE_IP: &str = "198.19.240.1";
const POD_IP: &str = "198.19.240.2";
const MTU: u32 = 1400;

/// `tc ARGS` in the pod's namespace, for looking only.
fn tc(args: &[&str]) -> String {
    let out = Process::new("ip")
        .args(["netns", "exec", POD_NS, "tc"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "tc {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn testbin_disk(tmp: &Path) -> std::path::PathBuf {
    let root = tmp.join("ro-root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::copy(
        e2e::test_images::testbin().unwrap(),
        root.join("crius-testbin"),
    )
    .unwrap();
    let image = tmp.join("ro.img");
    guest::ext4_image(&image, Some(&root), 32).unwrap();
    image
}

/// The pod's namespace with eth0 as a CNI bridge plugin leaves it (an
/// address, a default route through the gateway), its veth peer in the
/// node's namespace with the gateway address.
fn pod_network() -> (NetNs, NetNs) {
    // The node first: dropped last, after the pod (the veth goes with
    // either).
    let node = NetNs::create(NODE_NS).unwrap();
    let pod = NetNs::create(POD_NS).unwrap();
    node.ip(&[
        "link", "add", NODE_VETH, "mtu", "1400", "type", "veth", "peer", "name", "eth0", "mtu",
        "1400", "netns", POD_NS,
    ])
    .unwrap();
    node.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", NODE_VETH])
        .unwrap();
    node.ip(&["link", "set", NODE_VETH, "up"]).unwrap();
    pod.ip(&["addr", "add", &format!("{POD_IP}/24"), "dev", "eth0"])
        .unwrap();
    pod.ip(&["link", "set", "eth0", "up"]).unwrap();
    pod.ip(&["route", "add", "default", "via", NODE_IP])
        .unwrap();
    (node, pod)
}

#[test]
fn pod_network_reaches_the_guest() {
    let tmp = tempfile::Builder::new()
        .prefix("crius-vmnet-")
        .tempdir()
        .unwrap();
    let (node, pod) = pod_network();

    let eth0 = pod_net::inspect(&pod.path(), "eth0").unwrap();
    assert_eq!(eth0.mtu, MTU);
    assert_eq!(eth0.ipv4, Some((POD_IP.parse().unwrap(), 24)));
    assert_eq!(eth0.gateway, Some(NODE_IP.parse::<Ipv4Addr>().unwrap()));
    assert_eq!(eth0.mac.len(), 17, "{eth0:?}");
    assert!(matches!(
        pod_net::inspect(&pod.path(), "eth9"),
        Err(PodNetError::NoInterface(_))
    ));

    let mut c = VmConfig::new(
        "podnet",
        tmp.path().join("vm"),
        guest::kernel().expect("guest kernel"),
        guest::initramfs().expect("guest initramfs"),
    );
    c.boot_timeout = Duration::from_secs(120);
    c.disks = vec![Disk {
        path: testbin_disk(tmp.path()),
        read_only: true,
    }];
    c.net = Some(Net {
        tap: TAP.into(),
        mac: eth0.mac.clone(),
        netns: Some(pod.path()),
    });
    let mut vm = QemuDriver::from_host().start(&c).unwrap();

    // A TAP that is not there: an error, and eth0 keeps no qdisc of ours.
    assert!(matches!(
        TcRedirect::set_up(&pod.path(), "eth0", "vmnet-none"),
        Err(PodNetError::NoInterface(_))
    ));
    assert!(!tc(&["qdisc", "show", "dev", "eth0"]).contains("ingress"));

    let redirect = TcRedirect::set_up(&pod.path(), "eth0", TAP).unwrap();
    for dev in ["eth0", TAP] {
        let filters = tc(&["filter", "show", "dev", dev, "ingress"]);
        assert!(filters.contains("u32"), "{dev}: {filters}");
        assert!(filters.contains("mirred"), "{dev}: {filters}");
        assert!(filters.contains("Redirect"), "{dev}: {filters}");
    }
    assert!(
        tc(&["filter", "show", "dev", "eth0", "ingress"]).contains(TAP),
        "eth0 redirects to the TAP"
    );
    // A second redirect on the same pair is refused, and takes nothing of
    // the first one down.
    assert!(TcRedirect::set_up(&pod.path(), "eth0", TAP).is_err());
    assert!(tc(&["filter", "show", "dev", TAP, "ingress"]).contains("mirred"));

    let (ip, prefix) = eth0.ipv4.unwrap();
    let mut agent = vm.agent(Duration::from_secs(5)).unwrap();
    agent.mount("/dev/vda", "/mnt/ro", "ext4", true).unwrap();
    agent
        .configure_interface_with_mtu(
            &eth0.mac,
            &ip.to_string(),
            prefix,
            eth0.gateway.map(|g| g.to_string()).as_deref(),
            Some(eth0.mtu),
        )
        .unwrap();
    // The guest's NIC: eth0's MAC and MTU.
    let mut sys = |file: &str| {
        let out = agent
            .run(
                &Command::new([TESTBIN, "cat", &format!("/sys/class/net/eth0/{file}")]),
                CAP,
            )
            .unwrap();
        assert_eq!(out.code, Some(0), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    assert_eq!(sys("address"), eth0.mac);
    assert_eq!(sys("mtu"), MTU.to_string());

    // The node reaches a server in the guest on the pod IP.
    let uds = vm.vsock_path().to_owned();
    let guest_server = std::thread::spawn(move || {
        let mut a = AgentClient::connect(&uds, Duration::from_secs(5)).unwrap();
        let mut httpd = Command::new([TESTBIN, "httpd"]);
        httpd.env = vec!["CRIUS_TESTBIN_PORT=8080".into()];
        httpd.timeout = Some(Duration::from_secs(300));
        // Ends when the VM stops.
        let _ = a.run(&httpd, CAP);
    });
    let answer = node
        .run(|| {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                match TcpStream::connect((POD_IP, 8080)) {
                    Ok(mut s) => {
                        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
                        let mut body = String::new();
                        s.read_to_string(&mut body).unwrap();
                        return body;
                    }
                    Err(e) if Instant::now() > deadline => panic!("guest server: {e}"),
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })
        .unwrap();
    assert!(answer.contains("It works!"), "{answer}");

    // The guest reaches a server on the node, by the default route's
    // gateway.
    let listener = node
        .run(|| TcpListener::bind((NODE_IP, 8081)))
        .unwrap()
        .unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf).unwrap();
        s.write_all(b"HTTP/1.0 200 OK\r\n\r\nfrom the node\n")
            .unwrap();
        peer
    });
    let mut fetch = Command::new([TESTBIN, "fetch", &format!("{NODE_IP}:8081")]);
    fetch.timeout = Some(Duration::from_secs(120));
    let out = agent.run(&fetch, CAP).unwrap();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("from the node"));
    let peer = server.join().unwrap();
    assert_eq!(peer.ip().to_string(), POD_IP, "the guest speaks as the pod");

    // Stop: the redirect first, then the VM (its TAP goes with qemu).
    drop(agent);
    redirect.tear_down().unwrap();
    assert!(!tc(&["qdisc", "show", "dev", "eth0"]).contains("ingress"));
    assert!(!tc(&["qdisc", "show", "dev", TAP]).contains("ingress"));
    // Idempotent, also by names once the TAP is gone.
    vm.stop(Duration::from_secs(10)).unwrap();
    guest_server.join().unwrap();
    pod_net::tear_down(&pod.path(), "eth0", TAP).unwrap();
    assert!(!pod.links().unwrap().contains(&TAP.to_owned()));
    assert!(!tmp.path().join("vm").exists());
    drop(pod);
    drop(node);
    let list = Process::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        !list.contains(POD_NS) && !list.contains(NODE_NS),
        "namespaces left: {list}"
    );
}

#[test]
fn dropping_the_redirect_tears_it_down() {
    // No VM needed: a second veth pair stands in for the TAP.
    const NS: &str = "crius-vmnet-drop";
    let ns = NetNs::create(NS).unwrap();
    ns.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "vmnet-fake",
    ])
    .unwrap();
    // eth0 stays down: with both ends of one veth redirected into each
    // other, a frame would circle for ever.
    {
        let _r = TcRedirect::set_up(&ns.path(), "eth0", "vmnet-fake").unwrap();
        let out = Process::new("ip")
            .args([
                "netns",
                "exec",
                NS,
                "tc",
                "qdisc",
                "show",
                "dev",
                "vmnet-fake",
            ])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("ingress"));
    }
    for dev in ["eth0", "vmnet-fake"] {
        let out = Process::new("ip")
            .args(["netns", "exec", NS, "tc", "qdisc", "show", "dev", dev])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("ingress"),
            "{dev}"
        );
    }
    // set_up brought the stand-in up with eth0's MTU.
    let out = Process::new("ip")
        .args(["-n", NS, "link", "show", "vmnet-fake"])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&out.stdout);
    assert!(link.contains("mtu 1500") && link.contains(",UP"), "{link}");
}

//! A pod network for tests: a bridge made here with a gateway address from
//! 198.18.0.0/15, a CNI conflist (bridge with isGateway false, so the
//! plugin never turns on ip_forward; host-local IPAM; portmap)
//! in a temporary conf dir. Dropping it deletes the bridge and the files.
//! Nothing is routed or masqueraded off the machine: portmap's SNAT only
//! rewrites connections from 127.0.0.1 to a host port (hairpin traffic
//! that stays on our bridge), which critest's port mapping spec makes.

use std::io;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct TestNetwork {
    dir: tempfile::TempDir,
    pub bridge: String,
    /// `198.18.N.0/24`
    pub subnet: String,
    pub gateway: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `ip ARGS`, failing with its stderr.
pub(crate) fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl TestNetwork {
    /// A network unique to this process and call.
    pub fn create() -> io::Result<TestNetwork> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // 198.18.0.0/15 holds 512 /24s: spread by PID, then by call.
        let net = ((pid % 100) * 5 + n % 5) as usize % 512;
        let (a, b) = (18 + net / 256, net % 256);
        let subnet = format!("198.{a}.{b}.0/24");
        let gateway = format!("198.{a}.{b}.1");
        let bridge = format!("crius{}n{n}", pid % 100000);
        let dir = tempfile::Builder::new().prefix("crius-cni-").tempdir()?;
        // A stale bridge of a crashed run with this name: ours to remove.
        let _ = ip(&["link", "del", &bridge]);
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        let net = TestNetwork {
            dir,
            bridge,
            subnet,
            gateway,
        };
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.gateway),
            "dev",
            &net.bridge,
        ])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("crius-test-{}", net.bridge),
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": net.bridge,
                    "isGateway": false,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": net.subnet, "gateway": net.gateway}]],
                        "routes": [{"dst": net.subnet}],
                        "dataDir": net.dir.path().join("ipam"),
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
            ]
        });
        std::fs::create_dir_all(net.conf_dir())?;
        std::fs::write(
            net.conf_dir().join("10-crius-test.conflist"),
            conf.to_string(),
        )?;
        Ok(net)
    }

    /// The conf dir to give crius (`[cni] conf_dirs`).
    pub fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    /// The crius config section for this network.
    pub fn toml(&self) -> String {
        format!("[cni]\nconf_dirs = [{:?}]\n", self.conf_dir())
    }

    /// The addresses host-local IPAM holds for pods now (a file per
    /// address under its data dir).
    pub fn allocated_ips(&self) -> Vec<String> {
        let nets = std::fs::read_dir(self.dir.path().join("ipam"))
            .into_iter()
            .flatten()
            .flatten();
        let mut ips: Vec<String> = nets
            .flat_map(|n| std::fs::read_dir(n.path()).into_iter().flatten().flatten())
            .filter_map(|f| f.file_name().into_string().ok())
            .filter(|name| name.parse::<std::net::IpAddr>().is_ok())
            .collect();
        ips.sort();
        ips
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

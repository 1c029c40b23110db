//! A pod network for tests: a bridge made here with a gateway address from
//! 198.18.0.0/15 (a /24 claimed by a lock file, so no two networks of any
//! test processes share one), a CNI conflist (bridge with isGateway false, so the
//! plugin never turns on ip_forward; host-local IPAM; portmap)
//! in a temporary conf dir. Dropping it deletes the bridge and the files.
//! Nothing is routed or masqueraded off the machine: portmap's SNAT only
//! rewrites connections from 127.0.0.1 to a host port (hairpin traffic
//! that stays on our bridge), which critest's port mapping spec makes.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct TestNetwork {
    /// The claim on this network's subnet and bridge name, held while the
    /// network lives (see [`TestNetwork::create`]).
    _claim: nix::fcntl::Flock<std::fs::File>,
    dir: tempfile::TempDir,
    pub bridge: String,
    /// `198.18.N.0/24`
    pub subnet: String,
    pub gateway: String,
    /// A directory of test CNI plugins crius also searches.
    bin_dir: Option<PathBuf>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Where test networks claim their subnets, one lock file per /24.
const CLAIMS: &str = "/run/crius-test-nets";

/// Claims a free /24 of 198.18.0.0/15 (512 of them), for as long as the
/// returned lock is held: across every test process at once, no two
/// networks share a subnet or a bridge name. A claim dies with its process,
/// so a killed run's subnets come free, and its bridge (same name) is
/// removed by the next claimer.
fn claim(hint: usize) -> io::Result<(usize, nix::fcntl::Flock<std::fs::File>)> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(CLAIMS)?;
    for i in 0..512 {
        let index = (hint + i) % 512;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(format!("{CLAIMS}/{index}.lock"))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok((index, lock)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => continue,
            Err((_, e)) => return Err(e.into()),
        }
    }
    Err(io::Error::other(
        "all 512 test subnets of 198.18.0.0/15 are in use",
    ))
}

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
    /// A network of its own: a /24 and a bridge no other test network,
    /// of this process or another, has while it lives.
    pub fn create() -> io::Result<TestNetwork> {
        TestNetwork::create_gated(None)
    }

    /// [`TestNetwork::create`], with the test plugin
    /// `crius-test-cni-gate` (its binary given) chained after the bridge,
    /// holding each ADD until `<gate_dir>/open` exists.
    pub fn create_gated(gate: Option<(&Path, &Path)>) -> io::Result<TestNetwork> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) as usize;
        // Start the search where other processes are unlikely to be.
        let (net, claim) = claim(std::process::id() as usize * 7 + n)?;
        let (a, b) = (18 + net / 256, net % 256);
        let subnet = format!("198.{a}.{b}.0/24");
        let gateway = format!("198.{a}.{b}.1");
        let bridge = format!("crtestnet{net}");
        let dir = tempfile::Builder::new().prefix("crius-cni-").tempdir()?;
        // A bridge of this name is a killed run's (we hold the claim).
        let _ = ip(&["link", "del", &bridge]);
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        let mut net = TestNetwork {
            _claim: claim,
            dir,
            bridge,
            subnet,
            gateway,
            bin_dir: None,
        };
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.gateway),
            "dev",
            &net.bridge,
        ])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        let mut plugins = vec![serde_json::json!({
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
        })];
        if let Some((binary, gate_dir)) = gate {
            plugins.push(serde_json::json!({"type": "crius-test-cni-gate", "gateDir": gate_dir}));
            net.bin_dir = binary.parent().map(Path::to_path_buf);
        }
        plugins.push(serde_json::json!(
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
        ));
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("crius-test-{}", net.bridge),
            "plugins": plugins,
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
        match &self.bin_dir {
            None => format!("[cni]\nconf_dirs = [{:?}]\n", self.conf_dir()),
            Some(bin) => format!(
                "[cni]\nconf_dirs = [{:?}]\nbin_dirs = [{:?}, \"/opt/cni/bin\", \"/usr/lib/cni\"]\n",
                self.conf_dir(),
                bin
            ),
        }
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

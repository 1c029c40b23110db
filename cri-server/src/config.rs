//! The configuration file (TOML, `/etc/crius/config.toml` or `--config`).
//! Every key has a default, so no file is needed.

use std::path::{Path, PathBuf};

use image_store::ImageConfig;
use image_store::registry::RegistryConfig;
use serde::{Deserialize, Serialize};

/// Where the config is read from when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/crius/config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse config {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("config {path}: {why}")]
    Invalid { path: PathBuf, why: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Persistent data: images, snapshots, metadata.
    pub root: PathBuf,
    /// Runtime state, gone at reboot.
    pub state: PathBuf,
    /// The CRI socket.
    pub socket: PathBuf,
    /// `tracing` filter, e.g. `info` or `crius=debug`; `RUST_LOG` wins.
    pub log_level: String,
    /// The cgroup driver reported to kubelet.
    pub cgroup_driver: CgroupDriver,
    /// The runtime handler of pods that name none (no RuntimeClass, as
    /// kubelet's static pods without an API server): `runc` or `vm`.
    pub default_runtime_handler: String,
    /// Mount image volumes (CRI mounts naming an image); on by default,
    /// `false` refuses them.
    pub image_volumes: bool,
    /// Where the streaming server (the URLs of Exec and PortForward)
    /// listens: `host:port`, port 0 for any free one.
    pub stream_address: String,
    /// Seconds a streaming session (exec, attach, port forward) may carry
    /// nothing either way before it is closed.
    pub stream_idle_timeout: u64,
    /// How long an ExecSync without a timeout (0) may run, in seconds;
    /// 0: for ever.
    pub exec_sync_max_seconds: u64,
    pub registry: RegistryConfig,
    pub image: ImageConfig,
    pub cni: CniConfig,
    pub vm: VmConfig,
    pub nri: NriConfig,
}

/// `[nri]`: NRI, the Node Resource Interface: plugins that connect to a
/// socket and hook into pod and container lifecycle events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NriConfig {
    /// Listen for plugins (on by default, as in containerd 2).
    pub enable: bool,
    /// The socket plugins connect to (root-only).
    pub socket_path: PathBuf,
    /// How long a connected plugin has to register, in milliseconds.
    pub registration_timeout_ms: u64,
    /// How long a plugin has to answer one event, in milliseconds; a
    /// plugin that misses it is disconnected.
    pub request_timeout_ms: u64,
}

impl Default for NriConfig {
    fn default() -> Self {
        NriConfig {
            enable: true,
            socket_path: PathBuf::from("/var/run/nri/nri.sock"),
            registration_timeout_ms: 5000,
            request_timeout_ms: 2000,
        }
    }
}

/// `[vm]`: the VM sandbox (runtime handler `vm`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmConfig {
    /// The guest kernel (a PVH-bootable vmlinux) and initramfs (the agent).
    /// Empty: the newest that `scripts/guest-kernel` and
    /// `scripts/guest-agent` built under `/var/tmp/crius-guest`
    /// (`crius config` shows which).
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// `auto` (our own VMM where KVM runs standard guests, else qemu),
    /// `builtin` or `qemu`.
    pub driver: String,
    /// A pod's VM when its resources say nothing: vCPUs and MiB.
    pub vcpus: u8,
    pub memory_mib: u32,
    /// The most a pod's resources can get its VM.
    pub max_vcpus: u8,
    pub max_memory_mib: u32,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            kernel: PathBuf::new(),
            initramfs: PathBuf::new(),
            driver: "auto".into(),
            vcpus: 1,
            memory_mib: 256,
            max_vcpus: 8,
            max_memory_mib: 16 << 10,
        }
    }
}

/// Where the guest scripts leave their builds.
const GUEST_DIR: &str = "/var/tmp/crius-guest";

/// The newest of the files in `dir` named `<prefix>...<suffix>`, or with
/// `sub`, of the files `sub` inside the directories so named.
fn newest(dir: &Path, prefix: &str, suffix: &str, sub: Option<&str>) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with(prefix) && n.ends_with(suffix)
        })
        .map(|e| match sub {
            Some(s) => e.path().join(s),
            None => e.path(),
        })
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
}

/// `[cni]`: where pod network configs and plugins are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CniConfig {
    /// Network config dirs; the first valid file (by name) is used.
    pub conf_dirs: Vec<PathBuf>,
    /// Plugin dirs, searched in order.
    pub bin_dirs: Vec<PathBuf>,
    /// Seconds one plugin call may take.
    pub plugin_timeout: u64,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dirs: vec![PathBuf::from("/etc/cni/net.d")],
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            plugin_timeout: 30,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from("/var/lib/crius"),
            state: PathBuf::from("/run/crius"),
            socket: PathBuf::from("/run/crius/crius.sock"),
            log_level: "info".to_string(),
            cgroup_driver: CgroupDriver::Cgroupfs,
            default_runtime_handler: "runc".to_string(),
            image_volumes: true,
            stream_address: "127.0.0.1:0".to_string(),
            stream_idle_timeout: 4 * 3600,
            exec_sync_max_seconds: 3600,
            registry: RegistryConfig::default(),
            image: ImageConfig::default(),
            cni: CniConfig::default(),
            vm: VmConfig::default(),
            nri: NriConfig::default(),
        }
    }
}

impl Config {
    /// Loads `path`, or the default file if it exists, or the defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                return Config::parse("", &path);
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Config::parse(&text, &path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        let mut c = c;
        let guest = Path::new(GUEST_DIR);
        if c.vm.kernel.as_os_str().is_empty()
            && let Some(k) = newest(guest, "kernel-", "", Some("vmlinux"))
        {
            c.vm.kernel = k;
        }
        if c.vm.initramfs.as_os_str().is_empty()
            && let Some(i) = newest(guest, "initramfs-", ".img", None)
        {
            c.vm.initramfs = i;
        }
        if !["auto", "builtin", "qemu"].contains(&c.vm.driver.as_str()) {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                why: format!("vm.driver is auto, builtin or qemu, not {:?}", c.vm.driver),
            });
        }
        for (what, p) in [
            ("root", &c.root),
            ("state", &c.state),
            ("socket", &c.socket),
            ("nri.socket_path", &c.nri.socket_path),
        ] {
            if !p.is_absolute() {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    why: format!("{what} must be an absolute path, not {}", p.display()),
                });
            }
        }
        Ok(c)
    }

    /// The effective config as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_mirrors() {
        let c = Config::parse("", Path::new("x")).unwrap();
        assert_eq!(c.socket, PathBuf::from("/run/crius/crius.sock"));
        let c = Config::parse(
            r#"
root = "/tmp/r"
[registry.mirrors."registry.k8s.io"]
endpoints = ["http://127.0.0.1:5000"]
"#,
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.root, PathBuf::from("/tmp/r"));
        assert_eq!(
            c.registry.mirrors["registry.k8s.io"].endpoints,
            vec!["http://127.0.0.1:5000".to_string()]
        );
        let again = Config::parse(&c.to_toml(), Path::new("x")).unwrap();
        assert_eq!(again.registry.mirrors.len(), 1);
    }

    #[test]
    fn rejects_unknown_keys_and_relative_paths() {
        assert!(Config::parse("rooot = \"/x\"", Path::new("x")).is_err());
        assert!(Config::parse("root = \"x\"", Path::new("x")).is_err());
    }
}

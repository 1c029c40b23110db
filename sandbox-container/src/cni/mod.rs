//! Pod networking through CNI plugins: our own small CNI caller (spec
//! 1.0.0 and 0.4.0; 0.3.x and 1.1.0 configs run too, their results have the
//! same shape).
//!
//! - **Config**: the first valid `.conflist` / `.conf` / `.json` file of the
//!   conf dirs ([`NetworkConfigList::load`]), re-read on every call so a
//!   config that a network daemonset installs later is picked up. No file at
//!   all is [`Error::NoConfig`] (the server's `NetworkReady=false` reason).
//! - **ADD** ([`Cni::add`]) runs the plugins in order, each given the
//!   previous one's result as `prevResult` and, in `runtimeConfig`, the
//!   capability arguments it declares (only `portMappings` is produced). The
//!   last result is cached on disk (see below) and returned. When a plugin
//!   fails, the whole list is DELeted (best effort, logged) before the error
//!   is returned, so a failed ADD leaks no address.
//! - **DEL** ([`Cni::del`]) runs the plugins in reverse order with the
//!   cached config, capability arguments and result of the ADD (so a pod is
//!   torn down by the plugins that set it up, after a restart of crius and
//!   even after the conf dir changed); with no cache entry, with the current
//!   config and no `prevResult`. `CNI_NETNS` is always the pod's netns path,
//!   even when it no longer exists: the spec asks plugins to clean up what
//!   they can and succeed then (bridge, host-local, loopback and portmap do).
//!   As the spec says, DEL stops at the first plugin error and returns it,
//!   keeping the cache entry for a retry; the one error ignored (logged) is
//!   the well-known code 3, "container unknown", which the spec defines as
//!   needing no cleanup. The cache entry is removed after a successful DEL,
//!   so a second DEL runs the plugins again without `prevResult` and
//!   succeeds too.
//! - **CHECK** ([`Cni::check`]) runs the plugins in order with the cached
//!   config and result; a network with `disableCheck` passes untouched.
//! - **Plugins** are searched in the bin dirs in order, run with a timeout
//!   (default 30 s; on expiry the plugin's process group is SIGKILLed and
//!   the plugin reaped), and their error objects (`{"code", "msg",
//!   "details"}`) become [`Error::Plugin`] naming the plugin.
//! - **Cache**: `<cache dir>/<container id>@<ifname>@<network>.json`, 0600,
//!   written atomically (temp file, fsync, rename).
//!
//! The code is blocking (`std::process`, a few helper threads per plugin
//! run): call it from a dedicated thread or `tokio::task::spawn_blocking`.
//! Plugins run in the network namespace of the calling thread.

mod cache;
mod config;
mod error;
mod exec;
mod result;

#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tracing::{debug, info, warn};

pub use config::{NetworkConfigList, PluginConfig, SUPPORTED_VERSIONS, find_plugin};
pub use error::{ConfigError, Error, PluginError, Result};
pub use result::{Dns, Interface, IpConfig, IpPrefix, IpPrefixError, NetworkResult, Route};

pub use cache::move_entries as move_cache_entries;
use cache::{Cache, CacheEntry, Found};
use exec::{Command, Invocation, PluginEnv};

/// Where the CNI caller finds configs and plugins, and where it caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniOptions {
    /// Network config dirs, in priority order.
    pub conf_dirs: Vec<PathBuf>,
    /// Plugin binary dirs, in search order (also passed as `CNI_PATH`).
    pub bin_dirs: Vec<PathBuf>,
    /// Where ADD results are cached: on persistent storage (for example
    /// `<root>/cni-cache`), so that what a reboot left attached (host-local
    /// IPAM's allocations, hostPort rules' records) is swept at the next
    /// start.
    pub cache_dir: PathBuf,
    /// The pod's interface name (`CNI_IFNAME`).
    pub ifname: String,
    /// Longest run of one plugin.
    pub plugin_timeout: Duration,
}

impl CniOptions {
    /// The defaults: conf dir `/etc/cni/net.d`, bin dirs `/opt/cni/bin` and
    /// `/usr/lib/cni`, interface `eth0`, 30 s per plugin.
    pub fn new(cache_dir: impl Into<PathBuf>) -> CniOptions {
        CniOptions {
            conf_dirs: vec![PathBuf::from("/etc/cni/net.d")],
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            cache_dir: cache_dir.into(),
            ifname: "eth0".to_string(),
            plugin_timeout: Duration::from_secs(30),
        }
    }
}

/// The pod, as the plugins see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNetwork {
    /// The pod sandbox id: `CNI_CONTAINERID` and `K8S_POD_INFRA_CONTAINER_ID`.
    pub id: String,
    /// Pod name (`K8S_POD_NAME`).
    pub name: String,
    /// Pod namespace (`K8S_POD_NAMESPACE`).
    pub namespace: String,
    /// Pod UID (`K8S_POD_UID`).
    pub uid: String,
    /// Path of the pod's network namespace (`CNI_NETNS`).
    pub netns: PathBuf,
    /// Host ports; entries with `host_port` 0 are not passed on.
    pub port_mappings: Vec<PortMapping>,
}

impl PodNetwork {
    /// A CRI pod, in network namespace `netns` (its port mappings with a
    /// host port; the rest are not the plugins' business).
    pub fn for_pod(pod: &sandbox_api::Pod, netns: &std::path::Path) -> PodNetwork {
        let meta = pod.config.metadata.clone().unwrap_or_default();
        PodNetwork {
            id: pod.id.clone(),
            name: meta.name,
            namespace: meta.namespace,
            uid: meta.uid,
            netns: netns.to_path_buf(),
            port_mappings: pod
                .config
                .port_mappings
                .iter()
                .filter_map(|p| {
                    Some(PortMapping {
                        host_port: u16::try_from(p.host_port).ok().filter(|h| *h != 0)?,
                        container_port: u16::try_from(p.container_port).ok()?,
                        protocol: match p.protocol {
                            1 => Protocol::Udp,
                            2 => Protocol::Sctp,
                            _ => Protocol::Tcp,
                        },
                        host_ip: p.host_ip.parse().ok(),
                    })
                })
                .collect(),
        }
    }
}

/// A host port forwarded to the pod (the `portMappings` capability).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
    /// Host address to bind; all addresses when `None`.
    pub host_ip: Option<std::net::IpAddr>,
}

/// A port mapping's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The lowercase name CNI plugins expect.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// The CNI caller. Cheap to create; holds no state beyond its options (the
/// config is read per call, results live in the cache dir), so a fresh one
/// after a restart DELs what an old one ADDed.
#[derive(Debug, Clone)]
pub struct Cni {
    opts: CniOptions,
    cache: Cache,
}

impl Cni {
    /// A caller with these options; fails only on an invalid `ifname`.
    pub fn new(opts: CniOptions) -> Result<Cni> {
        validate_ifname(&opts.ifname)?;
        let cache = Cache::new(opts.cache_dir.clone());
        Ok(Cni { opts, cache })
    }

    /// The options it was made with.
    pub fn options(&self) -> &CniOptions {
        &self.opts
    }

    /// Reads the current network config from the conf dirs.
    pub fn config(&self) -> Result<NetworkConfigList> {
        NetworkConfigList::load(&self.opts.conf_dirs)
    }

    /// Whether pods can be networked now: a valid config whose plugins are
    /// all installed. The error is the reason for `NetworkReady=false`.
    pub fn status(&self) -> Result<()> {
        let list = self.config()?;
        self.binaries(&list).map(|_| ())
    }

    /// Attaches the pod to the network: ADD through every plugin, result
    /// cached. The cache entry is written (without a result) before the
    /// first plugin runs, so a crash in the middle still owes a DEL. On
    /// failure the attachment is DELeted again (best effort; the entry
    /// stays until a DEL works).
    pub fn add(&self, pod: &PodNetwork) -> Result<NetworkResult> {
        let started = Instant::now();
        let env = self.plugin_env(pod)?;
        let list = self.config()?;
        let binaries = self.binaries(&list)?;
        let caps = capability_args(pod);
        let pending = self.cache_result(&list, &env, &caps, Value::Null)?;
        match self.add_list(&list, &binaries, &env, &caps) {
            Ok(result) => {
                info!(
                    network = %list.name,
                    pod = %format!("{}/{}", pod.namespace, pod.name),
                    id = %pod.id,
                    ips = ?result.pod_ips(),
                    elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                    "CNI ADD"
                );
                Ok(result)
            }
            Err(e) => {
                warn!(
                    network = %list.name,
                    id = %pod.id,
                    error = %sandbox_api::error::chain(&e),
                    "CNI ADD failed; undoing it with DEL"
                );
                match self.run_each(Command::Del, &list, &binaries, &env, &caps, None) {
                    Ok(()) => self.cache.remove(&pending)?,
                    Err(del) => warn!(
                        network = %list.name,
                        id = %pod.id,
                        error = %sandbox_api::error::chain(&del),
                        "CNI DEL after a failed ADD failed"
                    ),
                }
                Err(e)
            }
        }
    }

    fn add_list(
        &self,
        list: &NetworkConfigList,
        binaries: &[PathBuf],
        env: &PluginEnv,
        caps: &Map<String, Value>,
    ) -> Result<NetworkResult> {
        let mut prev: Option<Value> = None;
        let mut last_plugin = "";
        for (plugin, binary) in list.plugins.iter().zip(binaries) {
            let stdout =
                self.run_plugin(Command::Add, list, plugin, binary, env, caps, prev.as_ref())?;
            let value: Value =
                serde_json::from_slice(&stdout).map_err(|source| Error::InvalidResult {
                    plugin: plugin.plugin_type.clone(),
                    command: Command::Add.as_str(),
                    source,
                })?;
            prev = Some(value);
            last_plugin = &plugin.plugin_type;
        }
        let raw = prev.unwrap_or(Value::Null);
        let result = NetworkResult::from_value(raw).map_err(|source| Error::InvalidResult {
            plugin: last_plugin.to_string(),
            command: Command::Add.as_str(),
            source,
        })?;
        self.cache_result(list, env, caps, result.raw.clone())?;
        Ok(result)
    }

    /// Caches what a DEL or CHECK of this attachment needs: `result` is the
    /// ADD's, or null while the ADD runs.
    fn cache_result(
        &self,
        list: &NetworkConfigList,
        env: &PluginEnv,
        caps: &Map<String, Value>,
        result: Value,
    ) -> Result<PathBuf> {
        self.cache.write(&CacheEntry::new(
            &list.name,
            &env.container_id,
            &env.ifname,
            &env.netns,
            list.to_value(),
            caps.clone(),
            result,
        ))
    }

    /// Detaches the pod: DEL through every plugin in reverse order, then the
    /// cache entry is removed. Idempotent; see the module doc.
    pub fn del(&self, pod: &PodNetwork) -> Result<()> {
        let started = Instant::now();
        let env = self.plugin_env(pod)?;
        let found = self.cache.find(&env.container_id, &env.ifname)?;
        if found.is_empty() {
            let list = self.config()?;
            let binaries = self.binaries(&list)?;
            let caps = capability_args(pod);
            self.run_each(Command::Del, &list, &binaries, &env, &caps, None)?;
            info!(
                network = %list.name,
                id = %pod.id,
                cached = false,
                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                "CNI DEL"
            );
            return Ok(());
        }
        for f in found {
            let cached = f.entry.ok().and_then(|entry| {
                match NetworkConfigList::from_list_value(entry.config) {
                    Ok(list) => Some((list, entry.capability_args, entry.result)),
                    Err(e) => {
                        warn!(path = %f.path.display(), error = %e, "invalid config in CNI cache");
                        None
                    }
                }
            });
            let (list, caps, result) = match cached {
                Some(c) => c,
                // Unusable entry: DEL with what we have now.
                None => (self.config()?, capability_args(pod), Value::Null),
            };
            // prevResult on DEL exists since 0.4.0.
            let prev = (!result.is_null() && list.version_at_least((0, 4, 0))).then_some(&result);
            let binaries = self.binaries(&list)?;
            self.run_each(Command::Del, &list, &binaries, &env, &caps, prev)?;
            self.cache.remove(&f.path)?;
            info!(
                network = %list.name,
                id = %pod.id,
                cached = true,
                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                "CNI DEL"
            );
        }
        Ok(())
    }

    /// Checks the pod's attachment: CHECK through every plugin, with the
    /// cached ADD. [`Error::NotAttached`] when nothing is cached.
    pub fn check(&self, pod: &PodNetwork) -> Result<()> {
        let env = self.plugin_env(pod)?;
        let found = self.cache.find(&env.container_id, &env.ifname)?;
        if found.is_empty() {
            return Err(Error::NotAttached {
                container_id: env.container_id,
                ifname: env.ifname,
            });
        }
        for f in found {
            let entry = f.entry.map_err(|source| Error::CorruptCache {
                path: f.path.clone(),
                source,
            })?;
            if entry.result.is_null() {
                // An ADD that did not finish.
                return Err(Error::NotAttached {
                    container_id: env.container_id,
                    ifname: env.ifname,
                });
            }
            let list = NetworkConfigList::from_list_value(entry.config).map_err(|e| {
                Error::CorruptCache {
                    path: f.path.clone(),
                    source: serde::de::Error::custom(e),
                }
            })?;
            if list.disable_check {
                debug!(network = %list.name, "CNI CHECK disabled by config");
                continue;
            }
            if !list.version_at_least((0, 4, 0)) {
                return Err(Error::CheckUnsupported {
                    network: list.name,
                    version: list.cni_version,
                });
            }
            let binaries = self.binaries(&list)?;
            let caps = entry.capability_args;
            self.run_each(
                Command::Check,
                &list,
                &binaries,
                &env,
                &caps,
                Some(&entry.result),
            )?;
        }
        Ok(())
    }

    /// DELs every attachment in the cache whose pod `live` does not know
    /// (its records went with a reboot, or a crash came between ADD and
    /// the record): the plugins release its IP and host ports though its
    /// network namespace is gone. Returns the pods swept.
    pub fn sweep(&self, live: &dyn Fn(&str) -> bool) -> Result<Vec<String>> {
        let mut swept = Vec::new();
        let ids = self.cache.container_ids()?;
        debug!(dir = %self.opts.cache_dir.display(), attachments = ids.len(), "CNI sweep");
        for id in ids {
            if live(&id) {
                continue;
            }
            let gone = PodNetwork {
                id: id.clone(),
                netns: self.opts.cache_dir.join("gone"),
                ..PodNetwork::default()
            };
            let gone = match self.cache.find(&id, &self.opts.ifname)?.first() {
                Some(Found {
                    entry: Ok(entry), ..
                }) => PodNetwork {
                    netns: entry.netns.clone(),
                    ..gone
                },
                _ => gone,
            };
            match self.del(&gone) {
                Ok(()) => swept.push(id),
                Err(e) => {
                    warn!(id = %id, error = %sandbox_api::error::chain(&e), "cannot sweep a CNI attachment")
                }
            }
        }
        Ok(swept)
    }

    /// The cached ADD result of the pod (the first, if it is on several
    /// networks), for example to report its IPs after a restart.
    pub fn cached_result(&self, pod: &PodNetwork) -> Result<Option<NetworkResult>> {
        let env = self.plugin_env(pod)?;
        for f in self.cache.find(&env.container_id, &env.ifname)? {
            if let Ok(entry) = f.entry
                && let Ok(result) = NetworkResult::from_value(entry.result)
            {
                return Ok(Some(result));
            }
        }
        Ok(None)
    }

    /// The path a pod's ADD result is cached at for network `network`.
    pub fn cache_path(&self, network: &str, pod: &PodNetwork) -> PathBuf {
        self.cache.path(network, &pod.id, &self.opts.ifname)
    }

    /// DEL (reverse order) or CHECK (in order) through every plugin with the
    /// same `prevResult`.
    fn run_each(
        &self,
        command: Command,
        list: &NetworkConfigList,
        binaries: &[PathBuf],
        env: &PluginEnv,
        caps: &Map<String, Value>,
        prev: Option<&Value>,
    ) -> Result<()> {
        let mut plugins: Vec<_> = list.plugins.iter().zip(binaries).collect();
        if command == Command::Del {
            plugins.reverse();
        }
        for (plugin, binary) in plugins {
            match self.run_plugin(command, list, plugin, binary, env, caps, prev) {
                Ok(_) => {}
                Err(Error::Plugin { plugin, source, .. })
                    if command == Command::Del && source.code == PluginError::CONTAINER_UNKNOWN =>
                {
                    warn!(
                        %plugin,
                        error = %source,
                        "CNI DEL: container unknown to the plugin, nothing to clean up"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn run_plugin(
        &self,
        command: Command,
        list: &NetworkConfigList,
        plugin: &PluginConfig,
        binary: &Path,
        env: &PluginEnv,
        caps: &Map<String, Value>,
        prev: Option<&Value>,
    ) -> Result<Vec<u8>> {
        let stdin = list
            .exec_config(plugin, caps, prev)
            .to_string()
            .into_bytes();
        exec::run(Invocation {
            command,
            plugin: &plugin.plugin_type,
            binary,
            env,
            stdin,
            timeout: self.opts.plugin_timeout,
        })
    }

    /// Every plugin's binary, found before any runs.
    fn binaries(&self, list: &NetworkConfigList) -> Result<Vec<PathBuf>> {
        list.plugins
            .iter()
            .map(|p| find_plugin(&p.plugin_type, &self.opts.bin_dirs))
            .collect()
    }

    fn plugin_env(&self, pod: &PodNetwork) -> Result<PluginEnv> {
        if !config::valid_name(&pod.id) {
            return Err(invalid(
                "pod sandbox id",
                &pod.id,
                "must be letters, digits, '_', '.' or '-'",
            ));
        }
        for (what, value) in [
            ("pod name", &pod.name),
            ("pod namespace", &pod.namespace),
            ("pod uid", &pod.uid),
        ] {
            if value.contains([';', '=', '\0']) {
                return Err(invalid(what, value, "contains ';', '=' or NUL"));
            }
        }
        if !pod.netns.is_absolute() {
            return Err(invalid(
                "netns path",
                &pod.netns.display().to_string(),
                "is not absolute",
            ));
        }
        let args = format!(
            "K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={};IgnoreUnknown=1",
            pod.namespace, pod.name, pod.id, pod.uid
        );
        let path = std::env::join_paths(&self.opts.bin_dirs).unwrap_or_else(|_| OsString::new());
        Ok(PluginEnv {
            container_id: pod.id.clone(),
            netns: pod.netns.clone(),
            ifname: self.opts.ifname.clone(),
            args,
            path,
        })
    }
}

/// The capability arguments we produce: `portMappings` (host port set).
fn capability_args(pod: &PodNetwork) -> Map<String, Value> {
    let mappings: Vec<Value> = pod
        .port_mappings
        .iter()
        .filter(|m| m.host_port != 0)
        .map(|m| {
            let mut v = json!({
                "hostPort": m.host_port,
                "containerPort": m.container_port,
                "protocol": m.protocol.as_str(),
            });
            if let (Some(ip), Some(obj)) = (m.host_ip, v.as_object_mut()) {
                obj.insert("hostIP".into(), ip.to_string().into());
            }
            v
        })
        .collect();
    let mut caps = Map::new();
    if !mappings.is_empty() {
        caps.insert("portMappings".into(), Value::Array(mappings));
    }
    caps
}

fn validate_ifname(ifname: &str) -> Result<()> {
    if ifname.len() > 15 || !config::valid_name(ifname) {
        return Err(invalid(
            "interface name",
            ifname,
            "must be 1 to 15 letters, digits, '_', '.' or '-'",
        ));
    }
    Ok(())
}

fn invalid(what: &'static str, value: &str, why: &'static str) -> Error {
    Error::InvalidArgument {
        what,
        value: value.to_string(),
        why,
    }
}

//! The one place cri-server names the sandbox crates: each sandbox is
//! built here from crius's config and registered under the runtime
//! handlers it reports; `crius monitor` and `crius vm-monitor` (the
//! sandboxes' per-pod processes) are dispatched from here too. Everything else in cri-server
//! talks to sandboxes through `sandbox_api::SandboxController`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use image_store::ImageStore;
use sandbox_api::{EventSink, Handler, SandboxController, SandboxError};

use crate::config::Config;

/// The registered sandboxes, by runtime handler.
pub struct Sandboxes {
    by_handler: BTreeMap<String, Arc<dyn SandboxController>>,
    /// In registration order, the empty handler (the default) first.
    handlers: Vec<Handler>,
    /// The handler that the empty one stands for.
    default: String,
    all: Vec<Arc<dyn SandboxController>>,
}

impl Sandboxes {
    /// Builds every sandbox; each sends its events to `events`.
    pub fn new(
        config: &Config,
        images: Arc<ImageStore>,
        events: EventSink,
    ) -> Result<Sandboxes, SandboxError> {
        // On persistent storage, so that a reboot's leftovers are swept;
        // it was under `state` before.
        let cache = config.root.join("cni-cache");
        sandbox_container::cni::move_cache_entries(&config.state.join("cni-cache"), &cache)
            .map_err(SandboxError::at("move the CNI cache"))?;
        let mut cni = sandbox_container::cni::CniOptions::new(cache);
        cni.conf_dirs = config.cni.conf_dirs.clone();
        cni.bin_dirs = config.cni.bin_dirs.clone();
        cni.plugin_timeout = Duration::from_secs(config.cni.plugin_timeout.max(1));
        let namespaces = sandbox_container::controller::NamespaceSandbox::new(
            sandbox_container::controller::Config {
                state: config.state.clone(),
                root: config.root.clone(),
                cni: cni.clone(),
                image_volumes: config.image_volumes,
            },
            images.clone(),
            events.clone(),
        )?;
        let vm = sandbox_vm::controller::VmSandbox::new(
            sandbox_vm::controller::Config {
                state: config.state.clone(),
                cni,
                kernel: config.vm.kernel.clone(),
                initramfs: config.vm.initramfs.clone(),
                driver: config.vm.driver.parse().unwrap_or_default(),
                vcpus: config.vm.vcpus,
                memory_mib: config.vm.memory_mib,
                max_vcpus: config.vm.max_vcpus,
                max_memory_mib: config.vm.max_memory_mib,
                image_volumes: config.image_volumes,
            },
            images,
            events,
        )?;
        let mut all = Sandboxes::of(vec![Arc::new(namespaces), Arc::new(vm)]);
        all.set_default(&config.default_runtime_handler)
            .map_err(SandboxError::InvalidArgument)?;
        Ok(all)
    }

    /// Registers `all` under the handlers each reports (the first to claim
    /// a name keeps it).
    pub fn of(all: Vec<Arc<dyn SandboxController>>) -> Sandboxes {
        let mut by_handler = BTreeMap::new();
        let mut handlers: Vec<Handler> = Vec::new();
        for s in &all {
            for h in s.handlers() {
                if !by_handler.contains_key(&h.name) {
                    by_handler.insert(h.name.clone(), s.clone());
                    handlers.push(h);
                }
            }
        }
        Sandboxes {
            by_handler,
            handlers,
            default: String::new(),
            all,
        }
    }

    /// Makes `name`'s sandbox the one of pods that name no handler (the
    /// empty handler), with its features.
    pub fn set_default(&mut self, name: &str) -> Result<(), String> {
        let unknown = || {
            format!(
                "default_runtime_handler {name:?}: crius has {:?}",
                self.names()
            )
        };
        if name.is_empty() {
            return Err(unknown());
        }
        let sandbox = self.by_handler.get(name).ok_or_else(unknown)?.clone();
        let mut features = self
            .handlers
            .iter()
            .find(|h| h.name == name)
            .cloned()
            .ok_or_else(unknown)?;
        features.name = String::new();
        self.by_handler.insert(String::new(), sandbox);
        self.handlers.retain(|h| !h.name.is_empty());
        self.handlers.insert(0, features);
        self.default = name.to_owned();
        Ok(())
    }

    /// The handler a pod's record keeps: the one named, or for none the
    /// default's name, so that its calls reach the same sandbox after a
    /// restart with another default.
    pub fn resolve<'a>(&'a self, handler: &'a str) -> &'a str {
        if handler.is_empty() && !self.default.is_empty() {
            &self.default
        } else {
            handler
        }
    }

    /// Every handler with its features, the empty one first.
    pub fn handlers(&self) -> &[Handler] {
        &self.handlers
    }

    /// The sandbox of a runtime handler.
    pub fn get(&self, handler: &str) -> Option<&Arc<dyn SandboxController>> {
        self.by_handler.get(handler)
    }

    /// Every sandbox, in registration order.
    pub fn all(&self) -> &[Arc<dyn SandboxController>] {
        &self.all
    }

    /// The handler names, for messages.
    pub fn names(&self) -> Vec<&str> {
        self.by_handler.keys().map(String::as_str).collect()
    }
}

/// Raises crius's open-files limit to its hard limit; the namespace
/// sandbox's monitors put their containers' back to the one crius had.
/// Returns (before, now).
pub fn raise_nofile() -> nix::Result<(u64, u64)> {
    sandbox_container::monitor::nofile::raise()
}

/// `crius monitor <pod dir>`: the namespace sandbox's per-pod monitor;
/// `crius vm-monitor <pod dir>`: a VM pod's host process. Must run before
/// any thread or async runtime exists.
pub fn monitor_main(kind: &str, pod_dir: &Path) -> ExitCode {
    match kind {
        "vm-monitor" => sandbox_vm::vm_monitor::main(pod_dir),
        _ => sandbox_container::monitor::main(pod_dir),
    }
}

//! The one place cri-server names the sandbox crates: each sandbox is
//! built here from crius's config and registered under the runtime
//! handlers it reports; `crius monitor` (the namespace sandbox's per-pod
//! process) is dispatched from here too. Everything else in cri-server
//! talks to sandboxes through `sandbox_api::SandboxController`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use image_store::ImageStore;
use sandbox_api::{EventSink, SandboxController, SandboxError};

use crate::config::Config;

/// The registered sandboxes, by runtime handler.
pub struct Sandboxes {
    by_handler: BTreeMap<String, Arc<dyn SandboxController>>,
    all: Vec<Arc<dyn SandboxController>>,
}

impl Sandboxes {
    /// Builds every sandbox; each sends its events to `events`.
    pub fn new(
        config: &Config,
        images: Arc<ImageStore>,
        events: EventSink,
    ) -> Result<Sandboxes, SandboxError> {
        let mut cni = sandbox_container::cni::CniOptions::new(config.state.join("cni-cache"));
        cni.conf_dirs = config.cni.conf_dirs.clone();
        cni.bin_dirs = config.cni.bin_dirs.clone();
        cni.plugin_timeout = Duration::from_secs(config.cni.plugin_timeout.max(1));
        let namespaces = sandbox_container::controller::NamespaceSandbox::new(
            sandbox_container::controller::Config {
                state: config.state.clone(),
                root: config.root.clone(),
                cni,
                image_volumes: config.image_volumes,
            },
            images,
            events,
        )?;
        let vm = sandbox_vm::controller::VmSandbox::new();
        Ok(Sandboxes::of(vec![Arc::new(namespaces), Arc::new(vm)]))
    }

    /// Registers `all` under the handlers each reports (the first to claim
    /// a name keeps it).
    pub fn of(all: Vec<Arc<dyn SandboxController>>) -> Sandboxes {
        let mut by_handler = BTreeMap::new();
        for s in &all {
            for h in s.handlers() {
                by_handler.entry(h.name).or_insert_with(|| s.clone());
            }
        }
        Sandboxes { by_handler, all }
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

/// `crius monitor <pod dir>`: the namespace sandbox's per-pod monitor.
/// Must run before any thread or async runtime exists.
pub fn monitor_main(pod_dir: &Path) -> ExitCode {
    sandbox_container::monitor::main(pod_dir)
}

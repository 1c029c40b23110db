//! The VM sandbox behind the seam (runtime handler `vm`): each pod in a
//! microVM of its own, booted through the host's [`Hypervisor`] driver.
//! Pods do not run yet: every pod and container call answers
//! Unimplemented; Status already reports the driver and accelerator VMs
//! get on this host.

use std::time::Duration;

use async_trait::async_trait;
use sandbox_api::{
    Container, ContainerImage, ContainerUsage, Duplex, ExecResult, Handler, Journal,
    LinuxContainerResources, Pod, PodUsage, Result, SandboxController, SandboxError, Stdio,
    StdioRequest,
};

use crate::driver::{DriverChoice, select};
use crate::hypervisor::{HostKvm, Hypervisor};

pub struct VmSandbox {
    driver: Box<dyn Hypervisor>,
    /// Why this host got that driver.
    reason: String,
    host_kvm: HostKvm,
}

impl VmSandbox {
    pub fn new() -> VmSandbox {
        let host_kvm = HostKvm::detect();
        let picked = select(DriverChoice::from_env());
        tracing::info!(
            driver = picked.driver.name(),
            accelerator = %picked.driver.accelerator(),
            ?host_kvm,
            reason = %picked.reason,
            "VM sandbox"
        );
        VmSandbox {
            driver: picked.driver,
            reason: picked.reason,
            host_kvm,
        }
    }
}

impl Default for VmSandbox {
    fn default() -> Self {
        Self::new()
    }
}

fn not_yet() -> SandboxError {
    SandboxError::Unimplemented("the vm runtime handler runs no pods yet".into())
}

#[async_trait]
impl SandboxController for VmSandbox {
    fn handlers(&self) -> Vec<Handler> {
        vec![Handler {
            name: "vm".into(),
            recursive_read_only_mounts: false,
            user_namespaces: false,
        }]
    }

    fn info(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "driver": self.driver.name(),
            "reason": self.reason,
            "accelerator": self.driver.accelerator().to_string(),
            "hostKvm": match self.host_kvm {
                HostKvm::Absent => "absent",
                HostKvm::Pvm => "kvm_pvm",
                HostKvm::Hardware => "hardware",
            },
        }))
    }

    fn network_status(&self) -> std::result::Result<(), String> {
        Ok(())
    }

    async fn run_pod(&self, _: &mut Pod, _: &dyn Journal) -> Result<Vec<String>> {
        Err(not_yet())
    }

    async fn stop_pod(&self, _: &mut Pod, _: &dyn Journal) -> Result<()> {
        Ok(())
    }

    async fn remove_pod(&self, _: &Pod) -> Result<()> {
        Ok(())
    }

    async fn adopt_pod(&self, _: &Pod, _: &[Container]) {}

    fn pod_info(&self, _: &Pod) -> serde_json::Value {
        serde_json::Value::Null
    }

    async fn create_container(
        &self,
        _: &Pod,
        _: &mut Container,
        _: &ContainerImage,
        _: &dyn Journal,
    ) -> Result<()> {
        Err(not_yet())
    }

    async fn start_container(&self, _: &Pod, _: &Container) -> Result<()> {
        Err(not_yet())
    }

    async fn signal_container(&self, _: &Pod, _: &Container, _: i32, _: bool) -> Result<()> {
        Err(not_yet())
    }

    async fn remove_container(&self, _: Option<&Pod>, _: &Container) -> Result<()> {
        Ok(())
    }

    fn container_info(&self, _: &Pod, _: &Container) -> serde_json::Value {
        serde_json::Value::Null
    }

    async fn exec_sync(
        &self,
        _: &Pod,
        _: &Container,
        _: Vec<String>,
        _: Option<Duration>,
    ) -> Result<ExecResult> {
        Err(not_yet())
    }

    async fn exec(&self, _: &Pod, _: &Container, _: &StdioRequest) -> Result<Stdio> {
        Err(not_yet())
    }

    async fn attach(&self, _: &Pod, _: &Container, _: &StdioRequest) -> Result<Stdio> {
        Err(not_yet())
    }

    async fn port_forward(&self, _: &Pod, _: u16) -> Result<Duplex> {
        Err(not_yet())
    }

    async fn reopen_log(&self, _: &Pod, _: &Container) -> Result<()> {
        Err(not_yet())
    }

    async fn update_resources(
        &self,
        _: &Pod,
        _: &Container,
        _: &LinuxContainerResources,
    ) -> Result<()> {
        Err(not_yet())
    }

    async fn container_stats(&self, _: &Pod, _: &Container, _: bool) -> Result<ContainerUsage> {
        Err(not_yet())
    }

    async fn pod_stats(&self, _: &Pod, _: bool) -> Result<PodUsage> {
        Err(not_yet())
    }
}

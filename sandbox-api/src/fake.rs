//! A sandbox for unit tests of the edge: fixed handlers, info and network
//! status; every pod and container call answers Unimplemented.

use std::time::Duration;

use async_trait::async_trait;

use crate::{
    Container, ContainerImage, ContainerUsage, Duplex, ExecResult, Handler, Journal,
    LinuxContainerResources, Pod, PodUsage, Result, SandboxController, SandboxError, Stdio,
    StdioRequest,
};

pub struct FakeSandbox {
    pub handlers: Vec<Handler>,
    pub info: Option<serde_json::Value>,
    pub network: std::result::Result<(), String>,
}

fn not_yet() -> SandboxError {
    SandboxError::Unimplemented("a fake sandbox".into())
}

#[async_trait]
impl SandboxController for FakeSandbox {
    fn handlers(&self) -> Vec<Handler> {
        self.handlers.clone()
    }

    fn info(&self) -> Option<serde_json::Value> {
        self.info.clone()
    }

    fn network_status(&self) -> std::result::Result<(), String> {
        self.network.clone()
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

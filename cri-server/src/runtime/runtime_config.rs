//! RuntimeConfig: the cgroup driver kubelet must use.

use crius_proto::cri::{self, LinuxRuntimeConfiguration, RuntimeConfigResponse};

use crate::config::CgroupDriver;

pub fn runtime_config(driver: CgroupDriver) -> RuntimeConfigResponse {
    let driver = match driver {
        CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
        CgroupDriver::Systemd => cri::CgroupDriver::Systemd,
    };
    RuntimeConfigResponse {
        linux: Some(LinuxRuntimeConfiguration {
            cgroup_driver: driver as i32,
        }),
    }
}

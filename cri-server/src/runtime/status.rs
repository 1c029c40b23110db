//! Status: the RuntimeReady and NetworkReady conditions, the runtime
//! handlers crius answers to with their features (recursive read-only
//! mounts when the kernel has mount_setattr), and the runtime's features
//! (SupplementalGroupsPolicy). Verbose, it says in `info["vm"]` which
//! hypervisor driver and accelerator VMs get on this host, and in
//! `info["podCIDR"]` the pod CIDR kubelet last passed (UpdateRuntimeConfig).

use crius_proto::cri::{
    RuntimeCondition, RuntimeFeatures, RuntimeHandler, RuntimeHandlerFeatures, RuntimeStatus,
    StatusRequest, StatusResponse,
};

/// Handlers advertised to kubelet: the default (empty) handler and `runc`
/// are the namespace sandbox.
const HANDLERS: &[&str] = &["", "runc"];

pub fn status(req: StatusRequest, network: Result<(), String>, pod_cidr: &str) -> StatusResponse {
    let conditions = vec![
        RuntimeCondition {
            r#type: "RuntimeReady".to_string(),
            status: true,
            reason: String::new(),
            message: String::new(),
        },
        match network {
            Ok(()) => RuntimeCondition {
                r#type: "NetworkReady".to_string(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            Err(why) => RuntimeCondition {
                r#type: "NetworkReady".to_string(),
                status: false,
                reason: "NetworkPluginNotReady".to_string(),
                message: why,
            },
        },
    ];
    StatusResponse {
        status: Some(RuntimeStatus { conditions }),
        info: if req.verbose {
            let mut info: std::collections::HashMap<String, String> =
                [("vm".to_string(), vm_info())].into();
            if !pod_cidr.is_empty() {
                info.insert("podCIDR".to_string(), pod_cidr.to_string());
            }
            info
        } else {
            Default::default()
        },
        runtime_handlers: HANDLERS
            .iter()
            .map(|h| RuntimeHandler {
                name: h.to_string(),
                features: Some(RuntimeHandlerFeatures {
                    // libcontainer applies "rro" with mount_setattr.
                    recursive_read_only_mounts:
                        sandbox_container::spec::recursive_read_only_supported(),
                    // A pod's own (mode POD, idmapped layers) and the
                    // host's (NODE).
                    user_namespaces: true,
                }),
            })
            .collect(),
        // The spec module implements Merge and Strict, and ContainerStatus
        // reports the user.
        features: Some(RuntimeFeatures {
            supplemental_groups_policy: true,
        }),
    }
}

/// The VM sandbox on this host: its driver and the accelerator its VMs get.
fn vm_info() -> String {
    use sandbox_vm::hypervisor::{HostKvm, Hypervisor};
    let kvm = HostKvm::detect();
    let driver = sandbox_vm::qemu::QemuDriver::from_host();
    serde_json::json!({
        "driver": driver.name(),
        "accelerator": driver.accelerator().to_string(),
        "hostKvm": match kvm {
            HostKvm::Absent => "absent",
            HostKvm::Pvm => "kvm_pvm",
            HostKvm::Hardware => "hardware",
        },
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbose_status_names_the_vm_driver_and_accelerator() {
        let quiet = status(StatusRequest { verbose: false }, Ok(()), "");
        assert!(quiet.info.is_empty());
        let verbose = status(StatusRequest { verbose: true }, Ok(()), "198.18.4.0/24");
        assert_eq!(verbose.info["podCIDR"], "198.18.4.0/24");
        let vm: serde_json::Value = serde_json::from_str(&verbose.info["vm"]).unwrap();
        assert_eq!(vm["driver"], "qemu");
        assert!(["kvm", "tcg"].contains(&vm["accelerator"].as_str().unwrap()));
    }
}

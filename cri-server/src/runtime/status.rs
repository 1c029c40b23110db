//! Status: the RuntimeReady and NetworkReady conditions, the runtime
//! handlers crius answers to with their features (recursive read-only
//! mounts when the kernel has mount_setattr), and the runtime's features
//! (SupplementalGroupsPolicy).

use crius_proto::cri::{
    RuntimeCondition, RuntimeFeatures, RuntimeHandler, RuntimeHandlerFeatures, RuntimeStatus,
    StatusRequest, StatusResponse,
};

/// Handlers advertised to kubelet: the default (empty) handler and `runc`
/// are the namespace sandbox.
const HANDLERS: &[&str] = &["", "runc"];

pub fn status(_: StatusRequest, network: Result<(), String>) -> StatusResponse {
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
        info: Default::default(),
        runtime_handlers: HANDLERS
            .iter()
            .map(|h| RuntimeHandler {
                name: h.to_string(),
                features: Some(RuntimeHandlerFeatures {
                    // libcontainer applies "rro" with mount_setattr.
                    recursive_read_only_mounts:
                        sandbox_container::spec::recursive_read_only_supported(),
                    user_namespaces: false,
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

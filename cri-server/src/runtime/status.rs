//! Status: the RuntimeReady and NetworkReady conditions (the network is
//! ready when every sandbox can give pods one), the runtime handlers of the
//! registered sandboxes with their features, and the runtime's features
//! (SupplementalGroupsPolicy). Verbose, `info` has each sandbox's own
//! report under its first handler's name (for `vm`: the hypervisor driver
//! and accelerator VMs get on this host), and in `podCIDR` the pod CIDR
//! kubelet last passed (UpdateRuntimeConfig).

use crius_proto::cri::{
    RuntimeCondition, RuntimeFeatures, RuntimeHandler, RuntimeHandlerFeatures, RuntimeStatus,
    StatusRequest, StatusResponse,
};

use crate::sandboxes::Sandboxes;

pub fn status(req: StatusRequest, sandboxes: &Sandboxes, pod_cidr: &str) -> StatusResponse {
    let network = sandboxes
        .all()
        .iter()
        .map(|s| s.network_status())
        .find(Result::is_err)
        .unwrap_or(Ok(()));
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
    let mut info = std::collections::HashMap::new();
    if req.verbose {
        for s in sandboxes.all() {
            if let (Some(v), Some(h)) = (s.info(), s.handlers().first()) {
                info.insert(h.name.clone(), v.to_string());
            }
        }
        if !pod_cidr.is_empty() {
            info.insert("podCIDR".to_string(), pod_cidr.to_string());
        }
    }
    StatusResponse {
        status: Some(RuntimeStatus { conditions }),
        info,
        runtime_handlers: sandboxes
            .handlers()
            .iter()
            .map(|h| RuntimeHandler {
                name: h.name.clone(),
                features: Some(RuntimeHandlerFeatures {
                    recursive_read_only_mounts: h.recursive_read_only_mounts,
                    user_namespaces: h.user_namespaces,
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

#[cfg(test)]
mod tests {
    use super::*;
    use sandbox_api::Handler;
    use sandbox_api::fake::FakeSandbox;
    use std::sync::Arc;

    fn fake(names: &[&str], network: Result<(), &str>) -> FakeSandbox {
        FakeSandbox {
            handlers: names
                .iter()
                .map(|n| Handler {
                    name: n.to_string(),
                    recursive_read_only_mounts: true,
                    user_namespaces: *n == "vm",
                })
                .collect(),
            info: Some(serde_json::json!({"driver": "fake"})),
            network: network.map_err(String::from),
        }
    }

    #[test]
    fn handlers_features_and_info_come_from_the_sandboxes() {
        let s = Sandboxes::of(vec![
            Arc::new(fake(&["", "runc"], Ok(()))),
            Arc::new(fake(&["vm"], Err("no CNI config"))),
        ]);
        let quiet = status(StatusRequest { verbose: false }, &s, "");
        assert!(quiet.info.is_empty());
        let names: Vec<_> = quiet
            .runtime_handlers
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        assert_eq!(names, ["", "runc", "vm"]);
        assert!(
            quiet.runtime_handlers[2]
                .features
                .unwrap()
                .recursive_read_only_mounts
        );
        let net = &quiet.status.unwrap().conditions[1];
        assert!(!net.status && net.message == "no CNI config");
        // The default handler ("") takes the features of the one it names.
        let mut s = s;
        assert!(!quiet.runtime_handlers[0].features.unwrap().user_namespaces);
        assert!(s.set_default("nope").unwrap_err().contains("nope"));
        assert!(s.set_default("").is_err());
        assert_eq!(s.resolve(""), "");
        s.set_default("vm").unwrap();
        assert_eq!((s.resolve(""), s.resolve("runc")), ("vm", "runc"));
        let hs = status(StatusRequest { verbose: false }, &s, "").runtime_handlers;
        let names: Vec<_> = hs.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["", "runc", "vm"]);
        assert!(hs[0].features.unwrap().user_namespaces, "vm's features");
        let verbose = status(StatusRequest { verbose: true }, &s, "198.18.4.0/24");
        assert_eq!(verbose.info["podCIDR"], "198.18.4.0/24");
        let vm: serde_json::Value = serde_json::from_str(&verbose.info["vm"]).unwrap();
        assert_eq!(vm["driver"], "fake");
        assert!(verbose.info.contains_key(""));
    }
}

//! Version: the runtime's name and version and the CRI version it speaks.

use crius_proto::cri::{VersionRequest, VersionResponse};

/// The Kubernetes-internal version of the RuntimeService API.
const KUBE_API_VERSION: &str = "0.1.0";
/// The CRI API version.
const CRI_API_VERSION: &str = "v1";

pub fn version(_: VersionRequest) -> VersionResponse {
    VersionResponse {
        version: KUBE_API_VERSION.to_string(),
        runtime_name: "crius".to_string(),
        runtime_version: env!("CARGO_PKG_VERSION").to_string(),
        runtime_api_version: CRI_API_VERSION.to_string(),
    }
}

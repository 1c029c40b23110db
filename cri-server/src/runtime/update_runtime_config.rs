//! UpdateRuntimeConfig: kubelet passes the node's pod CIDR(s). crius does
//! not write CNI configs from it (the network config is the node admin's,
//! as with containerd without a CNI conf template): it checks the value,
//! remembers it and reports it in verbose Status (`info["podCIDR"]`).

use std::net::IpAddr;

use crius_proto::cri::{UpdateRuntimeConfigRequest, UpdateRuntimeConfigResponse};

use super::Runtime;
use crate::error::Error;

impl Runtime {
    pub(super) fn update_runtime_config(
        &self,
        req: UpdateRuntimeConfigRequest,
    ) -> Result<UpdateRuntimeConfigResponse, Error> {
        let cidr = req
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        let cidr = cidr.trim();
        if !cidr.is_empty()
            && let Some(bad) = cidr.split(',').map(str::trim).find(|c| !valid_cidr(c))
        {
            return Err(Error::InvalidArgument(format!(
                "pod CIDR {bad:?} is not an address/prefix"
            )));
        }
        let mut current = self
            .pod_cidr
            .lock()
            .map_err(|_| Error::Internal("pod CIDR state poisoned".into()))?;
        if *current != cidr {
            tracing::info!(pod_cidr = cidr, "pod CIDR updated");
            *current = cidr.to_string();
        }
        Ok(UpdateRuntimeConfigResponse {})
    }
}

/// `address/prefix`, the prefix within the address's length.
fn valid_cidr(s: &str) -> bool {
    let Some((addr, prefix)) = s.split_once('/') else {
        return false;
    };
    let (Ok(addr), Ok(prefix)) = (addr.parse::<IpAddr>(), prefix.parse::<u8>()) else {
        return false;
    };
    prefix <= if addr.is_ipv4() { 32 } else { 128 }
}

#[cfg(test)]
mod tests {
    use super::valid_cidr;

    #[test]
    fn cidrs_are_checked() {
        assert!(valid_cidr("198.18.4.0/24"));
        assert!(valid_cidr("fd00:1::/64"));
        assert!(!valid_cidr("198.18.4.0/33"));
        assert!(!valid_cidr("198.18.4.0"));
        assert!(!valid_cidr("nope/8"));
    }
}

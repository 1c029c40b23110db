//! The result of an ADD: what the last plugin of the chain printed.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// The result of ADD (CNI 0.3.x / 0.4.0 / 1.0.0 shape), parsed, with the raw
/// JSON kept for `prevResult` and for whoever needs more fields.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
    /// The result exactly as the plugin printed it.
    pub raw: Value,
}

/// An interface the attachment created, on the host or in the pod.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: Option<String>,
    /// The netns path for interfaces in the pod; absent or empty on the host.
    #[serde(default)]
    pub sandbox: Option<String>,
}

impl Interface {
    /// Whether the interface is in the pod (has a non-empty `sandbox`).
    pub fn in_sandbox(&self) -> bool {
        self.sandbox.as_deref().is_some_and(|s| !s.is_empty())
    }
}

/// An address assigned by the attachment.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IpConfig {
    /// Address and prefix (`198.18.0.5/24`).
    pub address: IpPrefix,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Index into [`NetworkResult::interfaces`].
    #[serde(default)]
    pub interface: Option<usize>,
}

/// A route the attachment added.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Route {
    pub dst: IpPrefix,
    #[serde(default)]
    pub gw: Option<IpAddr>,
}

/// DNS settings the network suggests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

/// An address with its prefix length, as CNI writes it (`10.1.0.5/16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// Why a string is not an `address/prefix`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP address with a prefix length")]
pub struct IpPrefixError(pub String);

impl FromStr for IpPrefix {
    type Err = IpPrefixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IpPrefixError(s.to_string());
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix_len: u8 = len.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(bad());
        }
        Ok(IpPrefix { addr, prefix_len })
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl<'de> Deserialize<'de> for IpPrefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Deserialize)]
struct Shape {
    #[serde(rename = "cniVersion", default)]
    cni_version: String,
    #[serde(default)]
    interfaces: Option<Vec<Interface>>,
    #[serde(default)]
    ips: Option<Vec<IpConfig>>,
    #[serde(default)]
    routes: Option<Vec<Route>>,
    #[serde(default)]
    dns: Option<Dns>,
}

impl NetworkResult {
    /// Parses a result; unknown fields are ignored, `null` lists are empty.
    pub fn from_value(raw: Value) -> Result<NetworkResult, serde_json::Error> {
        let shape = Shape::deserialize(&raw)?;
        Ok(NetworkResult {
            cni_version: shape.cni_version,
            interfaces: shape.interfaces.unwrap_or_default(),
            ips: shape.ips.unwrap_or_default(),
            routes: shape.routes.unwrap_or_default(),
            dns: shape.dns.unwrap_or_default(),
            raw,
        })
    }

    /// The pod's IPs, without prefix, IPv4 first (otherwise in result
    /// order): the addresses on interfaces in the pod, and those that name
    /// no interface (host-side addresses are left out).
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self
            .ips
            .iter()
            .filter(|ip| match ip.interface {
                None => true,
                Some(i) => self.interfaces.get(i).is_some_and(Interface::in_sandbox),
            })
            .map(|ip| ip.address.addr)
            .collect();
        ips.sort_by_key(|ip| ip.is_ipv6());
        ips
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cni_result_parse_and_pod_ips() {
        let raw = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "00:11:22:33:44:55"},
                {"name": "veth1", "mac": "55:44:33:22:11:11", "sandbox": ""},
                {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/run/netns/x"}
            ],
            "ips": [
                {"address": "2001:db8::5/64", "gateway": "2001:db8::1", "interface": 2},
                {"address": "198.18.0.1/24", "interface": 0},
                {"version": "4", "address": "198.18.0.5/24", "gateway": "198.18.0.1", "interface": 2},
                {"address": "198.19.0.9/32"}
            ],
            "routes": [{"dst": "0.0.0.0/0", "gw": "198.18.0.1"}, {"dst": "::/0"}],
            "dns": {"nameservers": ["198.18.0.1"], "search": ["svc"]},
            "extra": true
        });
        let r = NetworkResult::from_value(raw.clone()).unwrap();
        assert_eq!(r.cni_version, "1.0.0");
        assert_eq!(r.interfaces.len(), 3);
        assert!(r.interfaces[2].in_sandbox() && !r.interfaces[1].in_sandbox());
        assert_eq!(r.ips[2].address.to_string(), "198.18.0.5/24");
        assert_eq!(r.ips[2].gateway, Some("198.18.0.1".parse().unwrap()));
        assert_eq!(r.routes[1].gw, None);
        assert_eq!(r.dns.search, ["svc"]);
        assert_eq!(r.raw, raw);
        let want: Vec<IpAddr> = ["198.18.0.5", "198.19.0.9", "2001:db8::5"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(r.pod_ips(), want);
    }

    #[test]
    fn cni_result_minimal_and_invalid() {
        let r =
            NetworkResult::from_value(json!({"cniVersion": "0.4.0", "dns": {}, "routes": null}))
                .unwrap();
        assert!(r.ips.is_empty() && r.routes.is_empty() && r.pod_ips().is_empty());
        assert!(NetworkResult::from_value(json!({"ips": [{"address": "198.18.0.5"}]})).is_err());
        assert!(NetworkResult::from_value(json!({"ips": [{"address": "1.2.3.4/33"}]})).is_err());
        assert!(NetworkResult::from_value(json!("x")).is_err());
    }
}

//! `Stats` and `Update`: a container's usage and limits in the guest, read
//! and written with the namespace sandbox's own code
//! (`sandbox_container::stats`, `cgroup_update`) on the guest's cgroup v2
//! tree; the pod's usage is its containers' parent cgroup and the guest's
//! interfaces.

use std::path::Path;

use crius_proto::agent::Usage;
use crius_proto::usage::Limits;
use sandbox_container::{cgroup_update, stats};

use crate::pod::{BUNDLES, LAYERS};

/// The cgroup the pod's containers are under in the guest (the host's
/// specs put them there).
pub const POD_CGROUP: &str = "/crius";

fn bundle(id: &str) -> Result<std::path::PathBuf, String> {
    let ok = !id.is_empty()
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+'));
    if !ok {
        return Err(format!("bad container id {id:?}"));
    }
    let b = Path::new(BUNDLES).join(id);
    if !b.join("config.json").exists() {
        return Err(format!("no container {id}"));
    }
    Ok(b)
}

/// `Stats` of container `id`, or of the pod.
pub fn stats(id: Option<&str>, processes: bool) -> Result<Usage, String> {
    Ok(match id {
        Some(id) => {
            let b = bundle(id)?;
            let upper = Path::new(LAYERS).join(id).join("upper");
            Usage::Container(stats::container_usage(
                &b,
                &upper,
                Path::new(LAYERS),
                processes,
            ))
        }
        None => Usage::Pod(stats::pod_usage(
            Some(POD_CGROUP),
            Some(Path::new("/proc/self/ns/net")),
        )),
    })
}

/// `Update` of container `id`'s limits.
pub fn update(id: &str, l: &Limits) -> Result<(), String> {
    let b = bundle(id)?;
    let cgroup = stats::bundle_cgroup(&b).ok_or_else(|| format!("container {id} has no cgroup"))?;
    cgroup_update::apply(stats::host_cgroups(), &cgroup, l)
        .map_err(|e| sandbox_api::error::chain(&e))
}

//! Per-mount propagation, which libcontainer 0.7 does not apply: it applies
//! the spec's `rootfsPropagation` to every mount of the container. When a
//! bidirectional mount makes that `shared`, a private or host-to-container
//! bind of a shared host directory would stay a peer of the host's (mounts
//! crossing both ways). [`PropagationExecutor`], libcontainer's last step
//! in the container's init, sets each such bind's own propagation
//! (`rprivate`, `rslave`) on its destination before the exec.
//!
//! That needs CAP_SYS_ADMIN in the container, which Kubernetes gives every
//! container with a bidirectional mount (it must be privileged); without
//! it the exec is refused rather than run with the wrong propagation.

use libcontainer::oci_spec::runtime::Spec;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::mount::MsFlags;

#[derive(Clone, Default)]
pub struct PropagationExecutor;

/// The propagation a bind asks for in its options, when it differs from a
/// shared rootfs's.
fn own_propagation(options: &[String]) -> Option<MsFlags> {
    options.iter().rev().find_map(|o| match o.as_str() {
        "rprivate" => Some(MsFlags::MS_PRIVATE | MsFlags::MS_REC),
        "private" => Some(MsFlags::MS_PRIVATE),
        "rslave" => Some(MsFlags::MS_SLAVE | MsFlags::MS_REC),
        "slave" => Some(MsFlags::MS_SLAVE),
        _ => None,
    })
}

/// The binds whose propagation must be set by hand: all of them that ask
/// for one, when the rootfs propagation is `shared`.
fn to_apply(spec: &Spec) -> Vec<(std::path::PathBuf, MsFlags)> {
    let shared = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_deref())
        .is_some_and(|p| p == "shared" || p == "rshared");
    if !shared {
        return Vec::new();
    }
    spec.mounts()
        .iter()
        .flatten()
        .filter(|m| m.typ().as_deref() == Some("bind"))
        .filter_map(|m| {
            let flags = own_propagation(m.options().as_deref().unwrap_or_default())?;
            Some((m.destination().clone(), flags))
        })
        .collect()
}

impl Executor for PropagationExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        for (dest, flags) in to_apply(spec) {
            nix::mount::mount(None::<&str>, &dest, None::<&str>, flags, None::<&str>).map_err(
                |e| {
                    ExecutorError::Other(format!(
                        "setting the propagation of {} (a mount beside a bidirectional one \
                         needs CAP_SYS_ADMIN): {e}",
                        dest.display()
                    ))
                },
            )?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libcontainer::oci_spec::runtime::{LinuxBuilder, MountBuilder, SpecBuilder};

    fn spec(rootfs: &str) -> Spec {
        let bind = |dest: &str, prop: &str| {
            MountBuilder::default()
                .destination(dest)
                .typ("bind")
                .source("/src")
                .options(vec![
                    "rbind".to_string(),
                    prop.to_string(),
                    "rw".to_string(),
                ])
                .build()
                .unwrap()
        };
        SpecBuilder::default()
            .mounts(vec![
                bind("/shared", "rshared"),
                bind("/private", "rprivate"),
                bind("/slave", "rslave"),
            ])
            .linux(
                LinuxBuilder::default()
                    .rootfs_propagation(rootfs)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    #[test]
    fn only_a_shared_rootfs_needs_per_mount_propagation() {
        assert!(to_apply(&spec("slave")).is_empty());
        assert_eq!(
            to_apply(&spec("shared")),
            [
                ("/private".into(), MsFlags::MS_PRIVATE | MsFlags::MS_REC),
                ("/slave".into(), MsFlags::MS_SLAVE | MsFlags::MS_REC),
            ]
        );
    }
}

//! A VM pod's mount namespace: its vm-monitor's own. The vm-monitor
//! unshares one as it starts ([`unshare_own`]); the pod's shares are
//! mounted there, and so is everything crius binds into them (image
//! layers, volumes, image volumes), from a thread that joins it
//! ([`PodMountNs::run`]). The host's mount table holds none of them: the
//! host can unmount and remove what a pod shares (a volume's submount, a
//! host path) while the pod runs, as with a namespace sandbox pod; and
//! when the vm-monitor ends, stopped or crashed, its namespace goes with
//! every mount in it.
//!
//! The namespace is a copy of the host's, its mounts slaves of the host's
//! where those are shared: mounts the host makes later under a shared
//! host path reach the pod; none of the pod's reach the host.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use sandbox_container::monitor::{MonitorClient, MonitorError};

/// Moves the calling process into a mount namespace of its own, a slave
/// copy of the current one. Call before any thread exists (a thread's
/// unshare moves only itself).
pub fn unshare_own() -> io::Result<()> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNS)?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )?;
    Ok(())
}

/// A running VM pod's mount namespace.
#[derive(Debug)]
pub struct PodMountNs(OwnedFd);

impl PodMountNs {
    /// The namespace of the vm-monitor serving `pod_dir`'s socket: its pid
    /// from a hello, its namespace opened, and a second hello on the same
    /// connection, which proves the process (so the pid) was alive all
    /// along: the namespace is the vm-monitor's, not a reused pid's.
    pub async fn of(pod_dir: &Path) -> Result<PodMountNs, MonitorError> {
        let mut client = MonitorClient::connect(pod_dir).await?;
        let (_, pid) = client.hello().await?;
        let ns = File::open(format!("/proc/{pid}/ns/mnt")).map_err(|source| MonitorError::Io {
            context: "opening the vm-monitor's mount namespace".into(),
            source,
        })?;
        let (_, again) = client.hello().await?;
        if again != pid {
            return Err(MonitorError::Protocol(format!(
                "the vm-monitor said pid {pid}, then {again}"
            )));
        }
        Ok(PodMountNs(ns.into()))
    }

    /// Runs `f` in a thread of its own that joins the namespace (and
    /// ends with `f`: it never goes back to the host's).
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        let ns = self.0.try_clone()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("crius-pod-mnt".into())
            .spawn(move || {
                let joined = nix::sched::unshare(CloneFlags::CLONE_FS)
                    .and_then(|()| nix::sched::setns(&ns, CloneFlags::CLONE_NEWNS));
                let _ = tx.send(joined.map(|()| f()));
            })?;
        rx.await
            .map_err(|_| io::Error::other("the pod's mount thread panicked"))?
            .map_err(io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mount made through `run` is in the joined namespace and not in
    /// ours (needs root: skipped, and says so, without it).
    #[tokio::test]
    async fn run_mounts_in_the_joined_namespace_only() {
        if !nix::unistd::geteuid().is_root() {
            sandbox_api::testing::skip(
                "mount_ns::run_mounts_in_the_joined_namespace_only",
                "needs root to make mount namespaces",
            );
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("t");
        std::fs::create_dir(&target).expect("mkdir");
        // A namespace of its own, held by a thread's /proc entry: the test
        // opens it as `of` would open the vm-monitor's.
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            nix::sched::unshare(CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS).expect("unshare");
            nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
                None::<&str>,
            )
            .expect("private");
            tx.send(File::open("/proc/thread-self/ns/mnt").expect("open ns"))
                .expect("send");
            let _ = done_rx.recv();
        });
        let ns = PodMountNs(rx.recv().expect("ns").into());
        let t = target.clone();
        let inside = ns
            .run(move || -> io::Result<bool> {
                nix::mount::mount(
                    Some("tmpfs"),
                    &t,
                    Some("tmpfs"),
                    MsFlags::empty(),
                    None::<&str>,
                )?;
                let table = sandbox_container::mountinfo::read()?;
                Ok(table.iter().any(|m| m.mount_point == t))
            })
            .await
            .expect("run")
            .expect("mount");
        assert!(inside, "the mount is not in the joined namespace's table");
        let here = sandbox_container::mountinfo::read().expect("mountinfo");
        assert!(
            !here.iter().any(|m| m.mount_point == target),
            "the mount leaked into the test's namespace"
        );
        drop(ns);
        let _ = done_tx.send(());
        holder.join().expect("holder");
    }
}

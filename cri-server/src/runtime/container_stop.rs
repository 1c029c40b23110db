//! StopContainer: the image's STOPSIGNAL (else SIGTERM), then SIGKILL to
//! every process once the timeout passes. Stopping an unknown or exited
//! container succeeds.

use std::time::Duration;

use crius_proto::cri::{StopContainerRequest, StopContainerResponse};

use super::Runtime;
use crate::error::Error;
use crate::store::ContainerPhase;

/// How long a SIGKILLed container may take to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(10);

fn signal_number(name: &str) -> Option<i32> {
    let n = name.trim().to_ascii_uppercase();
    if let Ok(num) = n.parse::<i32>() {
        return (1..=64).contains(&num).then_some(num);
    }
    let n = n.strip_prefix("SIG").unwrap_or(&n);
    nix::sys::signal::Signal::iterator()
        .find(|s| s.as_str().strip_prefix("SIG") == Some(n))
        .map(|s| s as i32)
}

impl Runtime {
    pub(super) async fn stop_container(
        &self,
        req: StopContainerRequest,
    ) -> Result<StopContainerResponse, Error> {
        let Some(c) = self.store.container(&req.container_id) else {
            return Ok(StopContainerResponse {});
        };
        self.stop_container_now(&c.id, req.timeout.max(0) as u64)
            .await?;
        Ok(StopContainerResponse {})
    }

    /// Stops a container by exact ID, waiting `timeout` seconds after the
    /// stop signal before SIGKILL.
    pub(super) async fn stop_container_now(&self, id: &str, timeout: u64) -> Result<(), Error> {
        let lock = self.store.lock(id);
        let _held = lock.lock().await;
        let Some(c) = self.store.container(id) else {
            return Ok(());
        };
        if c.phase != ContainerPhase::Running {
            return Ok(());
        }
        let pod = self.pod_of(&c)?;
        let controller = self.controller(&pod.runtime_handler)?.clone();
        // Watched before the signal, so no exit is missed.
        let mut exits = self.exits.subscribe();
        if timeout > 0 {
            let signal = self
                .images
                .get(&c.image_id)
                .ok()
                .flatten()
                .and_then(|i| {
                    i.config
                        .config()
                        .as_ref()
                        .and_then(|cfg| cfg.stop_signal().clone())
                })
                .and_then(|s| signal_number(&s))
                .unwrap_or(libc_sigterm());
            controller.signal_container(&pod, &c, signal, false).await?;
            if self
                .wait_exit(&c.id, &mut exits, Duration::from_secs(timeout))
                .await
            {
                return Ok(());
            }
        }
        controller.signal_container(&pod, &c, 9, true).await?;
        if !self.wait_exit(&c.id, &mut exits, KILL_WAIT).await {
            return Err(Error::Internal(format!(
                "container {} did not exit {} s after SIGKILL",
                c.id,
                KILL_WAIT.as_secs()
            )));
        }
        Ok(())
    }

    /// Waits until the container's exit is recorded (or its record gone);
    /// false on timeout.
    async fn wait_exit(
        &self,
        id: &str,
        exits: &mut tokio::sync::watch::Receiver<u64>,
        timeout: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self
                .store
                .container(id)
                .is_none_or(|c| c.phase == ContainerPhase::Exited)
            {
                return true;
            }
            match tokio::time::timeout_at(deadline, exits.changed()).await {
                Ok(Ok(())) => {}
                // Timed out, or no more exits can come: a last look.
                _ => {
                    return self
                        .store
                        .container(id)
                        .is_none_or(|c| c.phase == ContainerPhase::Exited);
                }
            }
        }
    }
}

fn libc_sigterm() -> i32 {
    nix::sys::signal::Signal::SIGTERM as i32
}

#[cfg(test)]
mod tests {
    use super::signal_number;

    #[test]
    fn stop_signals_parse() {
        assert_eq!(signal_number("SIGQUIT"), Some(3));
        assert_eq!(signal_number("quit"), Some(3));
        assert_eq!(signal_number("15"), Some(15));
        assert_eq!(signal_number("SIGRTMAX+1"), None);
        assert_eq!(signal_number("99"), None);
    }
}

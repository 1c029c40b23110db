//! `crius-vmm`: runs one microVM (see the `vmm` library) until its guest
//! shuts down. Logs go to stderr; the exit code is 0 for a guest that shut
//! down, 1 for a VM that could not be built, 2 for one that failed.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    vmm::seccomp::close_inherited_fds();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CRIUS_VMM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = vmm::config::VmmConfig::parse();
    tracing::info!(
        monotonic_ns = vmm::vcpu::monotonic_ns(),
        "crius-vmm starting"
    );
    match vmm::vmm::run(&config) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(1)
        }
    }
}

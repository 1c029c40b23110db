//! `crius-agent`: the guest agent of the VM sandbox, PID 1 of the guest's
//! initramfs.
//!
//! As PID 1 it first sets the guest up ([`init`]: the API file systems,
//! `PATH`), says on the console (its stdout) that it is up, then serves
//! the host <-> guest agent protocol (`crius_proto::agent`) on vsock port
//! `AGENT_PORT`, one thread per connection ([`serve`]). A reaper thread
//! ([`reaper`]) collects every child, the agent's own and the orphans the
//! kernel hands to PID 1. PID 1 never returns or panics out of `main` (the
//! kernel would panic): a fatal error, a panic of the main thread and
//! SIGTERM/SIGINT/SIGPWR all end in a clean power-off, and a `Shutdown`
//! request in a reboot (which the hypervisor, run with `-no-reboot`, turns
//! into its exit).
//!
//! Started as any other process (on the host, for a try-out), it sets
//! nothing up and simply exits where PID 1 would power off.

use std::convert::Infallible;
use std::fmt;
use std::io::{self, Write as _};
use std::time::Duration;

use crius_proto::agent::{AGENT_PORT, AGENT_PROTOCOL_VERSION, CONSOLE_PREFIX, UP};
use nix::errno::Errno;

/// Writes one line to the console (stdout), ignoring failures: there is
/// nowhere else to report them, and a failed write must not panic PID 1.
macro_rules! console {
    ($($arg:tt)*) => {
        $crate::console_line(format_args!($($arg)*))
    };
}

mod connect;
mod health;
mod init;
mod mount;
mod net;
mod pod;
mod reaper;
mod run;
mod serve;
mod stream;
mod switch_root;
mod usage;
mod vsock;

/// The agent's own version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

fn console_line(args: fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{CONSOLE_PREFIX}{args}");
    let _ = out.flush();
}

/// What stops the agent from serving.
#[derive(Debug, thiserror::Error)]
enum FatalError {
    #[error("handling the termination signals: {0}")]
    Signals(#[from] init::SignalError),
    #[error("starting the reaper: {0}")]
    Reaper(io::Error),
    #[error("listening on vsock port {AGENT_PORT}: {0}")]
    Listen(#[from] vsock::VsockError),
    #[error("accepting a connection: {0}")]
    Accept(Errno),
}

fn main() {
    // The pod's container monitor (the namespace sandbox's, run in the
    // guest): the agent starts it as `/init monitor <pod dir>`, before any
    // thread exists in that process.
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() == Some(std::ffi::OsStr::new("monitor"))
        && let (Some(dir), None) = (args.next(), args.next())
    {
        std::process::exit(
            match sandbox_container::monitor::main(std::path::Path::new(&dir)) {
                std::process::ExitCode::SUCCESS => 0,
                _ => 1,
            },
        );
    }
    let pid1 = init::is_pid1();
    if pid1 {
        pid1_setup();
    }
    let outcome = std::panic::catch_unwind(|| serve_forever(pid1));
    match outcome {
        Ok(Err(e)) => console!("fatal: {e}"),
        Err(_) => console!("fatal: the main thread panicked"),
        Ok(Ok(never)) => match never {},
    }
    if pid1 {
        init::poweroff()
    }
    std::process::exit(1);
}

/// Sets the guest up. `main` calls it first, while the process has one
/// thread.
fn pid1_setup() {
    // SAFETY: called at the very start of `main`, before any thread is
    // started: the process has no other thread.
    if !unsafe { switch_root::switched() } {
        let e = switch_root::switch();
        console!("staying in the initramfs (containers cannot pivot_root): {e}");
    }
    // SAFETY: as above, still no other thread.
    unsafe { init::set_path() };
    init::mount_api_filesystems();
    init::load_modules();
}

/// Serves connections until something fatal happens.
fn serve_forever(pid1: bool) -> Result<Infallible, FatalError> {
    // First: every thread started later inherits the blocked mask.
    init::handle_termination(pid1)?;
    let reaper = reaper::global().map_err(FatalError::Reaper)?;
    let listener = vsock::Listener::bind(AGENT_PORT)?;
    // The host waits for this line before it connects.
    console!("{UP}: version {VERSION}, protocol {AGENT_PROTOCOL_VERSION}, vsock port {AGENT_PORT}");
    loop {
        let conn = match listener.accept() {
            Ok(conn) => conn,
            Err(Errno::EINTR | Errno::ECONNABORTED | Errno::EPROTO | Errno::EAGAIN) => continue,
            // Out of something: wait for it to come back.
            Err(e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)) => {
                console!("accepting a connection: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Err(e) => return Err(FatalError::Accept(e)),
        };
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .spawn(move || {
                if let Err(e) = serve::serve(conn, reaper) {
                    console!("connection: {e}");
                }
            });
        if let Err(e) = spawned {
            // The connection is dropped (closed) with the closure.
            console!("starting a connection thread: {e}");
        }
    }
}

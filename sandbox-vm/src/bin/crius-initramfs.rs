//! `crius-initramfs --agent PATH --out PATH`: writes the guest's initramfs
//! (see `sandbox_vm::initramfs`) with the given agent binary as `/init`,
//! for the scripts (`scripts/guest-agent`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Writes the VM sandbox guest's initramfs.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The guest agent binary (static), installed as /init.
    #[arg(long)]
    agent: PathBuf,
    /// A kernel module for the agent to load at start (repeat, in load
    /// order; only for kernels without the guest drivers built in).
    #[arg(long)]
    module: Vec<PathBuf>,
    /// The image to write (replaced atomically).
    #[arg(long)]
    out: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match sandbox_vm::initramfs::write_initramfs(&args.agent, &args.module, &args.out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crius-initramfs: {e}");
            ExitCode::FAILURE
        }
    }
}

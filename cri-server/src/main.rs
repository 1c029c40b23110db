//! `crius`: the CRI v1 server. `crius` serves; `crius config` prints the
//! effective configuration.

mod config;
mod cri_ext;
mod error;
mod image;
mod runtime;
mod sandboxes;
mod server;
mod store;
mod streaming;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "crius",
    version,
    about = "A Kubernetes container runtime (CRI v1)"
)]
struct Cli {
    /// Config file (default /etc/crius/config.toml, if it exists).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve CRI on the socket (the default).
    Serve,
    /// Print the effective configuration.
    Config,
}

fn main() -> ExitCode {
    // The pods' host processes fork: they must start before any thread
    // does, so they are dispatched before argument parsing, config,
    // tracing or tokio.
    let mut args = std::env::args_os().skip(1);
    if let Some(kind @ ("monitor" | "vm-monitor")) = args.next().as_ref().and_then(|a| a.to_str()) {
        let kind = kind.to_string();
        return match args.next() {
            Some(dir) if args.next().is_none() => {
                sandboxes::monitor_main(&kind, std::path::Path::new(&dir))
            }
            _ => {
                eprintln!("usage: crius {kind} POD_DIR");
                ExitCode::from(2)
            }
        };
    }
    let cli = Cli::parse();
    let config = match config::Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("crius: {}", error::chain(&e));
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config => {
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Command::Serve => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
            match sandboxes::raise_nofile() {
                Ok((before, now)) => tracing::debug!(before, now, "open files limit raised"),
                Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
            }
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("crius: start tokio: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(server::serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{}", error::chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

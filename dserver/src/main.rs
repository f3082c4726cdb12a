//! `dserver --config FILE --id N`: runs one MeshFS data-server until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use meshfs_group::NodeId;

/// MeshFS data-server.
#[derive(Debug, Parser)]
#[command(name = "dserver", version, about = "MeshFS data-server")]
struct Args {
    /// The cluster config (default: $MESHFS_CONFIG, else ./config.conf).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// This server's id in the config.
    #[arg(long, value_name = "N")]
    id: u32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = meshfs_group::config::resolve_path(args.config);
    match meshfs_dserver::run(&config, NodeId(args.id)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log::error!("dserver {}: {err}", args.id);
            eprintln!("dserver: {err}");
            ExitCode::FAILURE
        }
    }
}

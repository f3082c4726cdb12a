//! `meshfs`: the MeshFS command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use meshfs_client::launcher::{self, UpOptions};
use meshfs_client::status::cluster_status;
use meshfs_client::{ClientError, Credentials};
use meshfs_group::{ClientId, Config};

/// The MeshFS command line.
#[derive(Debug, Parser)]
#[command(name = "meshfs", version, about = "MeshFS: run, watch and use a MeshFS cluster")]
struct Cli {
    /// The cluster config (default: $MESHFS_CONFIG, else ./config.conf).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Which [[client]] of the config to act as (default: the first).
    #[arg(long, global = true, value_name = "ID")]
    client: Option<u32>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start every server of the config here; Ctrl-C stops them all.
    Up {
        /// Seconds to wait for the full mesh before reporting who is missing.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Show every server, its links and the RTT matrix. Exit status 1 if any server is down.
    Status {
        /// Print one JSON object instead of tables.
        #[arg(long)]
        json: bool,
        /// Milliseconds to wait for each server.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}

fn run(cli: Cli) -> Result<u8, ClientError> {
    let config = Config::load(&meshfs_group::config::resolve_path(cli.config))?;
    let credentials = Credentials::from_config(&config, cli.client.map(ClientId))?;
    match cli.command {
        Command::Up { timeout } => {
            let options =
                UpOptions { mesh_timeout: Duration::from_secs(timeout), ..UpOptions::default() };
            let code = launcher::up(&config, &credentials, &options)?;
            Ok(u8::try_from(code).unwrap_or(1))
        }
        Command::Status { json, timeout_ms } => {
            let status = cluster_status(&config, &credentials, Duration::from_millis(timeout_ms));
            if json {
                println!("{}", status.to_json());
            } else {
                print!("{}", status.render());
            }
            Ok(if status.servers_up() == status.servers.len() { 0 } else { 1 })
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("meshfs: {err}");
            ExitCode::from(2)
        }
    }
}

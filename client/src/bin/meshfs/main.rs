//! `meshfs`: the MeshFS command line.
//!
//! - `args`: the command line, as clap parses it.
//! - `commands`: the namespace, files, locks, fsck, drain, status and `up`.
//! - `bench`: `meshfs bench` and its workloads.
//! - `render`: text and JSON output, and the progress line.

mod args;
mod bench;
mod commands;
mod render;

use std::process::ExitCode;

use clap::Parser;
use meshfs_client::{Access, ClientError};
use meshfs_group::ClientId;

use crate::args::{Cli, Command};

fn run(cli: Cli) -> Result<u8, ClientError> {
    let path = meshfs_group::config::resolve_path(cli.config);
    let client = cli.client.map(ClientId);
    match cli.command {
        // Operator commands: the cluster config, checked whole (every layer's settings).
        command @ (Command::Up { .. } | Command::Bench { .. } | Command::Client { .. }) => {
            commands::run_operator(&path, client, command)
        }
        // Needs no cluster: the mount table says what to unmount.
        Command::Umount { mountpoint } => {
            meshfs_client::mount::unmount(&mountpoint)?;
            Ok(0)
        }
        // The rest: a client config, or the cluster config on a server host.
        command => commands::run(&Access::load(&path, client)?, command),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("meshfs: {err}");
            // A refusal of the operation itself is 1, as for cp or mkdir; trouble reaching or
            // configuring the cluster is 2.
            ExitCode::from(if matches!(err, ClientError::Namespace(_)) { 1 } else { 2 })
        }
    }
}

//! `dserver --config FILE --id N`: runs one MeshFS data-server until SIGTERM or SIGINT.

fn main() -> std::process::ExitCode {
    meshfs_group::process::server_main(
        meshfs_group::Role::DServer,
        "MeshFS data-server",
        meshfs_dserver::run,
    )
}

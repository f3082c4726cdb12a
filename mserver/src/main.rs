//! `mserver --config FILE --id N`: runs one MeshFS meta-server until SIGTERM or SIGINT.

fn main() -> std::process::ExitCode {
    meshfs_group::process::server_main(
        meshfs_group::Role::MServer,
        "MeshFS meta-server",
        meshfs_mserver::run,
    )
}

//! The `dserver` program from the outside: its role is checked and SIGINT stops it cleanly.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use meshfs_test_kit::process::Proc;
use meshfs_test_kit::{DEADLINE, TempDir, wait_until};
use nix::sys::signal::Signal;

#[test]
fn a_data_server_starts_refuses_the_wrong_role_and_stops_on_sigint() {
    let dir = TempDir::new("dserver-it");
    let config = dir.join("config.conf");
    let ports = meshfs_test_kit::net::free_ports(2);
    let text = format!(
        "[cluster]\nname = \"it\"\nsecret = \"dserver-it-secret-0123456789\"\nreplication = 1\n\
         [[mserver]]\nid = 1\naddr = \"127.0.0.1:{}\"\ndata_dir = \"m1\"\n\n\
         [[dserver]]\nid = 2\naddr = \"127.0.0.1:{}\"\ndata_dir = \"d2\"\ncapacity = \"1GiB\"\n",
        ports[0], ports[1]
    );
    meshfs_test_kit::write_private(&config, &text);
    let bin = env!("CARGO_BIN_EXE_dserver");

    let wrong =
        Command::new(bin).arg("--config").arg(&config).args(["--id", "1"]).output().unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("node 1 is a mserver"));

    let mut command = Command::new(bin);
    command.arg("--config").arg(&config).args(["--id", "2"]).env("RUST_LOG", "info");
    let mut server = Proc::spawn(command, &dir.join("d2.log"));
    wait_until("dserver to listen", || server.log().contains("listening on"));
    assert!(dir.join("d2/LOCK").is_file(), "the data directory is created relative to the config");
    server.signal(Signal::SIGINT);
    let status = server.wait_exit(DEADLINE);
    assert!(status.success(), "{status}");
}

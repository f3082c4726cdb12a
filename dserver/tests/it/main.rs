//! The `dserver` program from the outside: its role is checked and SIGINT stops it cleanly.

#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn a_data_server_starts_refuses_the_wrong_role_and_stops_on_sigint() {
    let dir = std::env::temp_dir().join(format!("meshfs-dserver-it-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.conf");
    let text = format!(
        "[cluster]\nname = \"it\"\nsecret = \"dserver-it-secret-0123456789\"\nreplication = 1\n\
         [[mserver]]\nid = 1\naddr = \"127.0.0.1:{}\"\ndata_dir = \"m1\"\n\n\
         [[dserver]]\nid = 2\naddr = \"127.0.0.1:{}\"\ndata_dir = \"d2\"\ncapacity = \"1GiB\"\n",
        free_port(),
        free_port()
    );
    std::fs::write(&config, text).unwrap();
    let bin = env!("CARGO_BIN_EXE_dserver");

    let wrong =
        Command::new(bin).arg("--config").arg(&config).args(["--id", "1"]).output().unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("node 1 is a mserver"));

    let log = dir.join("d2.log");
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .args(["--id", "2"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log).unwrap().contains("listening on") {
        assert!(Instant::now() < deadline, "dserver never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(dir.join("d2/LOCK").is_file(), "the data directory is created relative to the config");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("dserver ignored SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    std::fs::remove_dir_all(dir).unwrap();
}

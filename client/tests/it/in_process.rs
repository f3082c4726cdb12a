//! Servers run in this test process, each on a listener the test bound before anything
//! started: no port can be taken between choosing it and using it. The same `serve` a
//! program embedding a server would call, stopped through its [`Stop`] handle.

use std::thread::JoinHandle;
use std::time::Duration;

use meshfs_client::Access;
use meshfs_client::status::cluster_status;
use meshfs_group::driver::Stop;
use meshfs_group::{NodeId, Role};
use meshfs_test_kit::{TempDir, net, wait_until};

use crate::cluster::{CLIENT_KEY, DOWN_TIMEOUT_MS, PING_INTERVAL_MS, SECRET};

/// A server's thread: its loop's result, the error as text.
type ServerThread = JoinHandle<Result<(), String>>;

/// A cluster of in-process servers; stopping and joining every one when dropped.
struct InProcessCluster {
    _dir: TempDir,
    access: Access,
    servers: Vec<(NodeId, Stop, Option<ServerThread>)>,
}

impl InProcessCluster {
    /// `m` meta-servers and `d` data-servers, each started on its thread as soon as its
    /// listener is bound and the config written.
    fn start(name: &str, m: usize, d: usize) -> InProcessCluster {
        let dir = TempDir::new(name);
        let listeners = net::listeners(m + d);
        let mut text = format!(
            "[cluster]\nname = \"it\"\nsecret = \"{SECRET}\"\nreplication = 1\nblock_size = \"1MiB\"\n\
             ping_interval_ms = {PING_INTERVAL_MS}\ndown_timeout_ms = {DOWN_TIMEOUT_MS}\n\n"
        );
        for (i, addr) in net::addrs(&listeners).into_iter().enumerate() {
            let (role, id) = if i < m { ("mserver", i + 1) } else { ("dserver", i + 1) };
            text +=
                &format!("[[{role}]]\nid = {id}\naddr = \"{addr}\"\ndata_dir = \"{role}-{id}\"\n");
            if role == "dserver" {
                text += "capacity = \"1GiB\"\n";
            }
            text += "\n";
        }
        text +=
            &format!("[[client]]\nid = 1\nname = \"test\"\nkey = \"{CLIENT_KEY}\"\nadmin = true\n");
        let path = dir.join("config.conf");
        meshfs_test_kit::write_private(&path, &text);
        let (config, settings) = meshfs_core::settings::load(&path).unwrap();
        let access = Access::of_cluster(&config, &settings, None).unwrap();
        let servers = listeners
            .into_iter()
            .zip(config.servers.clone())
            .map(|(listener, server)| {
                let (stop, config) = (Stop::new(), config.clone());
                let handle = {
                    let stop = stop.clone();
                    std::thread::spawn(move || match server.role {
                        Role::MServer => meshfs_mserver::serve(&config, server.id, listener, &stop)
                            .map_err(|e| e.to_string()),
                        Role::DServer => meshfs_dserver::serve(&config, server.id, listener, &stop)
                            .map_err(|e| e.to_string()),
                    })
                };
                (server.id, stop, Some(handle))
            })
            .collect();
        InProcessCluster { _dir: dir, access, servers }
    }

    /// Stops server `id` and waits for its loop to end; its result.
    fn stop(&mut self, id: NodeId) -> Result<(), String> {
        let (_, stop, handle) =
            self.servers.iter_mut().find(|(n, _, _)| *n == id).expect("a server of the cluster");
        stop.stop();
        handle.take().expect("running").join().expect("the server thread does not panic")
    }
}

impl Drop for InProcessCluster {
    fn drop(&mut self) {
        for (_, stop, handle) in &mut self.servers {
            stop.stop();
            if let Some(handle) = handle.take() {
                let _ = handle.join();
            }
        }
    }
}

#[test]
fn in_process_servers_on_pre_bound_listeners_serve_files_and_stop_on_request() {
    let mut cluster = InProcessCluster::start("in-process", 1, 2);
    wait_until("the in-process servers to form a full mesh with a leader", || {
        let status = cluster_status(&cluster.access, Duration::from_secs(1));
        status.fully_connected() && status.rtts_measured() && status.agreed_leader().is_some()
    });
    let bytes = meshfs_test_kit::rng::bytes(3 * 1024 * 1024 + 17, 5);
    let mut meta = meshfs_client::MetaClient::new(&cluster.access).unwrap();
    let mut data = meshfs_client::data::DataClient::new(&cluster.access);
    let put =
        meshfs_client::data::put(&mut meta, &mut data, &mut &bytes[..], "/f", 1, None, &mut ());
    assert_eq!(put.unwrap(), bytes.len() as u64);
    let mut back = Vec::new();
    meshfs_client::data::get(&mut meta, &mut data, "/f", &mut back, &mut ()).unwrap();
    assert!(back == bytes, "the file reads back byte-identical");

    // Each server ends when asked, cleanly; the others notice it leave.
    assert_eq!(cluster.stop(NodeId(3)), Ok(()));
    wait_until("the others to see data-server 3 down", || {
        let status = cluster_status(&cluster.access, Duration::from_secs(1));
        !status.fully_connected()
    });
    assert_eq!(cluster.stop(NodeId(2)), Ok(()));
    assert_eq!(cluster.stop(NodeId(1)), Ok(()));
}

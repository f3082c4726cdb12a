//! Integration tests with real server processes on loopback. Each test makes its own cluster
//! on free ports and kills what it started by PID; every wait polls for a status or a log
//! line with a generous deadline.

#![allow(clippy::unwrap_used)]

mod cluster;
mod faults;
mod heal;
mod in_process;
mod locks;
mod mount;
mod robust;
mod trust;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster::{CLIENT_KEY, DEADLINE, DOWN_TIMEOUT_MS, TestCluster, bin_dir};
use meshfs_client::{ClientError, Connection, Credentials};
use meshfs_group::ClientId;
use meshfs_group::message::GroupMessage;
use meshfs_net::frame::{self, Decoder};

#[test]
fn the_full_mesh_forms_and_status_shows_every_link_with_rtt() {
    let mut cluster = TestCluster::new("mesh", 3, 3);
    cluster.start_all();
    let started = Instant::now();
    let status = cluster.wait_full_mesh();
    assert!(started.elapsed() < Duration::from_secs(10), "mesh took {:?}", started.elapsed());
    assert_eq!(status.servers.len(), 6);

    // The command line prints the same as JSON, in the documented shape.
    let output = Command::new(env!("CARGO_BIN_EXE_meshfs"))
        .args(["status", "--json", "--config"])
        .arg(&cluster.config_path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let servers = json["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 6);
    for server in servers {
        assert_eq!(server["up"], true);
        assert!(server["id"].as_u64().is_some());
        assert!(["mserver", "dserver"].contains(&server["role"].as_str().unwrap()));
        assert!(server["addr"].as_str().unwrap().starts_with("127.0.0.1:"));
        let peers = server["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 5);
        for peer in peers {
            assert_eq!(peer["up"], true);
            let rtt = peer["rtt_us"].as_u64().expect("every link has an RTT");
            assert!(rtt < 1_000_000, "loopback RTT of {rtt} us");
        }
    }

    // And as tables with the RTT matrix.
    let output = Command::new(env!("CARGO_BIN_EXE_meshfs"))
        .arg("status")
        .env("MESHFS_CONFIG", &cluster.config_path)
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("6 of 6 servers up"), "{text}");
    assert!(text.contains("RTT in microseconds"), "{text}");
}

#[test]
fn a_killed_server_is_seen_down_by_all_and_comes_back_after_restart() {
    let mut cluster = TestCluster::new("kill", 3, 3);
    cluster.start_all();
    cluster.wait_full_mesh();
    let victim = 5;
    let killed = Instant::now();
    cluster.kill9(victim);
    let status = cluster.wait_for("everyone to see server 5 down", |s| {
        s.servers
            .iter()
            .filter(|v| v.id != victim)
            .all(|v| v.up && v.peers.iter().any(|p| p.id == victim && !p.up))
    });
    let took = killed.elapsed();
    // Within the configured timeout (plus polling slack): the kernel resets the sockets of a
    // killed process, so it is usually seen at once.
    assert!(
        took < Duration::from_millis(DOWN_TIMEOUT_MS) + Duration::from_secs(1),
        "took {took:?}"
    );
    let victim_view = status.server(victim).unwrap();
    assert!(!victim_view.up);
    assert!(victim_view.error.as_ref().unwrap().contains("cannot connect"), "{victim_view:?}");
    // The others still see each other.
    for s in status.servers.iter().filter(|s| s.id != victim) {
        assert!(s.peers.iter().filter(|p| p.id != victim).all(|p| p.up), "{s:?}");
    }

    let old_incarnation = cluster.status().server(1).unwrap().incarnation;
    cluster.start(victim);
    let status = cluster.wait_full_mesh();
    assert!(
        status.server(victim).unwrap().uptime_ms.unwrap()
            < status.server(1).unwrap().uptime_ms.unwrap()
    );
    assert_eq!(status.server(1).unwrap().incarnation, old_incarnation, "server 1 did not restart");
}

#[test]
fn a_server_with_the_wrong_secret_is_refused_and_the_group_stays_healthy() {
    let mut cluster = TestCluster::new("secret", 2, 3);
    let impostor = 5;
    for id in 1..impostor {
        cluster.start(id);
    }
    // Same ids, ports and client keys, another cluster secret.
    let bad_config = cluster.dir.join("wrong-secret.conf");
    let text = std::fs::read_to_string(&cluster.config_path).unwrap();
    meshfs_test_kit::write_private(
        &bad_config,
        &text.replace(cluster::SECRET, "a-wrong-secret-for-the-test-999"),
    );
    cluster.start_with(impostor, &bad_config);

    // Both directions are refused, each acceptor logging why, each dialer told no more.
    cluster.wait_log(impostor, "wrong cluster secret");
    cluster.wait_log(1, "dserver 5: wrong cluster secret");
    cluster.wait_log(1, "peer 5 refused the handshake: authentication failed");

    let status = cluster.wait_for("servers 1-4 meshed", |s| {
        s.servers
            .iter()
            .filter(|v| v.id != impostor)
            .all(|v| v.up && v.peers.iter().all(|p| p.up == (p.id != impostor)))
    });
    // The impostor answers its own status (the client key is right) but sees nobody.
    let impostor_view = status.server(impostor).unwrap();
    assert!(impostor_view.up);
    assert!(impostor_view.peers.iter().all(|p| !p.up), "{impostor_view:?}");
    assert!(cluster.alive(impostor));
    for id in 1..impostor {
        assert!(!cluster.log(id).contains("peer dserver 5 up"), "server {id} let the impostor in");
    }
}

#[test]
fn random_bytes_close_only_that_connection() {
    let mut cluster = TestCluster::new("garbage", 2, 1);
    cluster.start_all();
    let before = cluster.wait_full_mesh();
    let addr = cluster.config.servers[0].addr;

    // Bytes that are not a frame.
    let garbage: Vec<u8> =
        (0..65_536u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let _ = stream.write_all(&garbage); // the server may close before it has read it all
    let mut sink = Vec::new();
    let closed = stream.read_to_end(&mut sink);
    assert!(closed.is_ok() || closed.unwrap_err().kind() == std::io::ErrorKind::ConnectionReset);
    cluster.wait_log(1, "bad frame");

    // A well-formed frame that skips the handshake is refused with a reason.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut bytes = Vec::new();
    frame::encode(40, 1, b"let me in", &mut bytes);
    stream.write_all(&bytes).unwrap();
    let mut decoder = Decoder::new(frame::DEFAULT_MAX_BODY_LEN);
    let mut refusal = None;
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        decoder.extend_from_slice(&buf[..n]);
        while let Ok(Some(frame)) = decoder.decode() {
            refusal = Some(GroupMessage::decode(frame.kind, &frame.body).unwrap());
        }
    }
    let Some(GroupMessage::Refuse { reason }) = refusal else { panic!("no refusal: {refusal:?}") };
    assert!(reason.contains("before authentication"), "{reason}");

    // Before authentication a stranger cannot make the server buffer a large frame: the
    // header alone gets the connection closed.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let header = frame::encode_header(1, 0, &vec![0u8; 100_000]);
    stream.write_all(&header).unwrap();
    let mut sink = Vec::new();
    let _ = stream.read_to_end(&mut sink);
    cluster.wait_log(1, "body length 100000 exceeds the maximum 4096");

    // The server lives on, unrestarted, and the group is intact.
    assert!(cluster.alive(1));
    let after = cluster.wait_full_mesh();
    assert_eq!(after.server(1).unwrap().incarnation, before.server(1).unwrap().incarnation);
}

#[test]
fn clients_with_a_wrong_key_or_unknown_id_are_refused_with_clear_errors() {
    let mut cluster = TestCluster::new("clientauth", 1, 1);
    cluster.start_all();
    cluster.wait_full_mesh();
    let addr = cluster.config.servers[0].addr;
    let timeout = Duration::from_secs(5);

    let good = Credentials { id: ClientId(1), key: CLIENT_KEY.as_bytes().to_vec() };
    let conn = Connection::open(addr, "it", &good, timeout).unwrap();
    assert_eq!(conn.server().to_string(), "mserver 1");

    // A wrong key, an unknown id and another cluster's name all get the same answer: the
    // server says neither which ids exist nor its cluster's name. Its log says why.
    let wrong_key = Credentials { id: ClientId(1), key: b"not-the-client-key-00000".to_vec() };
    let unknown = Credentials { id: ClientId(99), key: CLIENT_KEY.as_bytes().to_vec() };
    let answers: Vec<String> = [(&wrong_key, "it"), (&unknown, "it"), (&good, "another-cluster")]
        .into_iter()
        .map(|(credentials, name)| {
            let err = Connection::open(addr, name, credentials, timeout).unwrap_err();
            assert!(matches!(err, ClientError::AuthFailed { .. }), "{err}");
            err.to_string()
        })
        .collect();
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert!(answers[0].contains("did not accept this client's credentials"), "{answers:?}");
    assert!(!answers[0].contains("\"it\""), "the cluster's name is not told: {answers:?}");
    cluster.wait_log(1, "client 1: wrong client key");
    cluster.wait_log(1, "unknown client id 99");
    cluster.wait_log(1, "cluster name mismatch");
    assert!(cluster.alive(1));
}

#[test]
fn status_lists_an_unreachable_server_as_down_and_exits_non_zero() {
    let mut cluster = TestCluster::new("partial", 1, 1);
    cluster.start(1);
    let output = Command::new(env!("CARGO_BIN_EXE_meshfs"))
        .args(["status", "--json", "--timeout-ms", "500"])
        .arg("--config")
        .arg(&cluster.config_path)
        .output()
        .unwrap();
    // Server 1 may still be starting; poll until it answers, then check the JSON.
    let deadline = Instant::now() + DEADLINE;
    let mut output = output;
    loop {
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        if json["servers"][0]["up"] == true {
            assert_eq!(json["servers"][1]["up"], false);
            assert!(json["servers"][1]["error"].as_str().unwrap().contains("cannot connect"));
            assert_eq!(json["servers"][0]["peers"][0]["up"], false);
            assert!(json["servers"][0]["peers"][0]["rtt_us"].is_null());
            assert_eq!(output.status.code(), Some(1));
            break;
        }
        assert!(Instant::now() < deadline, "server 1 never answered");
        std::thread::sleep(Duration::from_millis(50));
        output = Command::new(env!("CARGO_BIN_EXE_meshfs"))
            .args(["status", "--json", "--timeout-ms", "500", "--config"])
            .arg(&cluster.config_path)
            .output()
            .unwrap();
    }
}

#[test]
fn meshfs_up_starts_the_cluster_and_ctrl_c_stops_every_server() {
    let cluster = TestCluster::new("up", 2, 2);
    let (mut up, rx) = cluster::spawn_up(&cluster.config_path);
    let _ = bin_dir(); // the launcher finds the servers next to meshfs
    let up_pid = nix::unistd::Pid::from_raw(up.id() as i32);
    let mut pids = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("meshfs up never reported the full mesh");
        if let Some(rest) = line.split("(pid ").nth(1) {
            pids.push(rest.split(')').next().unwrap().parse::<i32>().unwrap());
        }
        if line.contains("full mesh") {
            break;
        }
    }
    assert_eq!(pids.len(), 4, "one pid per server");
    assert!(cluster.status().fully_connected());

    nix::sys::signal::kill(up_pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = meshfs_test_kit::wait::wait_for("meshfs up to stop", || up.try_wait().unwrap());
    assert!(status.success(), "meshfs up exited with {status}");
    // Its last lines may still be on their way through the reader thread: read until the
    // pipe closes (or the deadline).
    let mut rest = Vec::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        rest.push(line);
    }
    assert!(rest.iter().any(|l| l.contains("stopped (4 cleanly)")), "{rest:?}");
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "server pid {pid} still exists"
        );
    }
}

// ---- Raft among the meta-servers ----

fn term_of(status: &meshfs_client::status::ClusterStatus, id: u32) -> u64 {
    status.server(id).and_then(|s| s.term).unwrap()
}

#[test]
fn meta_servers_elect_one_leader_and_another_when_it_is_killed() {
    let mut cluster = TestCluster::new("raft-elect", 3, 1);
    cluster.start_all();
    // The leader's first entry reaches every follower's commit index a heartbeat after the
    // election: wait for both rather than catch a follower in between.
    let status = cluster.wait_for("one agreed leader, its first entry committed everywhere", |s| {
        s.agreed_leader().is_some()
            && s.servers
                .iter()
                .filter(|s| s.role == "mserver")
                .all(|s| s.commit_index.is_some_and(|c| c >= 1))
    });
    let leader = status.agreed_leader().unwrap();
    let term = term_of(&status, leader);
    for s in status.servers.iter().filter(|s| s.role == "mserver") {
        assert_eq!(s.term, Some(term), "{s:?}");
        let expected = if s.id == leader { "leader" } else { "follower" };
        assert_eq!(s.raft_role, Some(expected));
        assert!(s.commit_index.unwrap() >= 1, "the leader's first entry commits");
    }
    assert!(status.server(4).unwrap().raft_role.is_none(), "data-servers take no part in Raft");

    let killed = Instant::now();
    cluster.kill9(leader);
    let status =
        cluster.wait_for("a new leader", |s| s.agreed_leader().is_some_and(|l| l != leader));
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(10), "a new leader took {took:?}");
    let new_leader = status.agreed_leader().unwrap();
    assert!(term_of(&status, new_leader) > term, "a new leader has a new term");

    // The old leader comes back as a follower of the new one.
    cluster.start(leader);
    let status = cluster.wait_for("the old leader to follow", |s| {
        s.server(leader)
            .is_some_and(|v| v.raft_role == Some("follower") && v.leader == Some(new_leader))
    });
    assert_eq!(status.agreed_leader(), Some(new_leader));
}

#[test]
fn raft_state_survives_a_full_restart() {
    let mut cluster = TestCluster::new("raft-restart", 3, 1);
    cluster.start_all();
    let before = cluster.wait_for("one agreed leader", |s| {
        s.agreed_leader().is_some() && s.servers.iter().all(|v| v.applied_index == v.commit_index)
    });
    let leader = before.agreed_leader().unwrap();
    let (term, commit) =
        (term_of(&before, leader), before.server(leader).unwrap().commit_index.unwrap());
    for id in 1..=3 {
        cluster.kill9(id);
    }
    for id in 1..=3 {
        cluster.start(id);
    }
    let after = cluster.wait_for("a leader after the restart", |s| {
        s.agreed_leader().is_some_and(|l| s.server(l).unwrap().commit_index > Some(commit))
    });
    let leader = after.agreed_leader().unwrap();
    assert!(term_of(&after, leader) > term, "terms are durable: they never go back");
    for id in 1..=3 {
        assert!(cluster.log(id).contains("raft log"), "server {id} replayed its log");
    }
}

// ---- the replicated namespace ----

fn meshfs(cluster: &TestCluster, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meshfs"))
        .args(args)
        .arg("--config")
        .arg(&cluster.config_path)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn namespace_commands_work_through_raft_with_clear_errors() {
    let mut cluster = TestCluster::new("ns-cli", 3, 1);
    cluster.start_all();
    // No waiting for an election: the first command rides it out.
    let ok = |out: std::process::Output| {
        assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    };
    ok(meshfs(&cluster, &["mkdir", "-p", "/lab/run-1"]));
    let created = ok(meshfs(&cluster, &["create", "/lab/run-1/a.dat"]));
    assert!(created.contains("file") && created.contains("version 1"), "{created}");
    ok(meshfs(&cluster, &["create", "/lab/run-1/b.dat"]));
    let listing = ok(meshfs(&cluster, &["ls", "/lab/run-1"]));
    assert_eq!(listing, "a.dat\nb.dat\n");
    let stat = ok(meshfs(&cluster, &["stat", "/lab/run-1/a.dat"]));
    assert!(stat.contains("replication 1") && stat.contains("blocks      0"), "{stat}");
    ok(meshfs(&cluster, &["mv", "/lab/run-1", "/lab/run-2"]));
    assert_eq!(ok(meshfs(&cluster, &["ls", "/lab"])), "run-2/\n");

    let refused = |args: &[&str], message: &str| {
        let out = meshfs(&cluster, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one clear line: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
    };
    refused(&["create", "/lab/run-2/a.dat"], "already exists");
    refused(&["rm", "/lab"], "not empty");
    refused(&["stat", "/nope"], "no such file or directory");
    refused(&["mkdir", "relative"], "not absolute");
    refused(&["mv", "/lab", "/lab/run-2/inside"], "into itself");
    refused(&["create", "/lab/run-2/a.dat/x"], "not a directory");

    ok(meshfs(&cluster, &["rm", "-r", "/lab"]));
    assert_eq!(ok(meshfs(&cluster, &["ls", "/"])), "");
}

#[test]
fn of_twenty_concurrent_creates_of_one_path_exactly_one_succeeds() {
    let mut cluster = TestCluster::new("ns-race", 3, 1);
    cluster.start_all();
    cluster.wait_for("a leader", |s| s.agreed_leader().is_some());
    let children: Vec<_> = (0..20)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_meshfs"))
                .args(["create", "/contended", "--config"])
                .arg(&cluster.config_path)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let winners = outputs.iter().filter(|o| o.status.success()).count();
    let losers = outputs
        .iter()
        .filter(|o| o.status.code() == Some(1) && text(&o.stderr).contains("already exists"))
        .count();
    assert_eq!(
        (winners, losers),
        (1, 19),
        "{:?}",
        outputs.iter().map(|o| text(&o.stderr)).collect::<Vec<_>>()
    );
}

#[test]
fn killing_the_leader_while_clients_create_loses_no_acknowledged_file() {
    let mut cluster = TestCluster::new("ns-failover", 3, 1);
    cluster.start_all();
    let status = cluster.wait_for("a leader", |s| s.agreed_leader().is_some());
    let leader = status.agreed_leader().unwrap();
    let access = cluster.access.clone();
    let (acked_tx, acked_rx) = std::sync::mpsc::channel::<String>();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (access, acked_tx, stop) = (access.clone(), acked_tx.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut client = meshfs_client::MetaClient::new(&access).unwrap();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let path = format!("/w{w}-{i}");
                    // Every create is acknowledged or the call fails; a failure is not a loss.
                    if client.create(&path, 0).is_ok() {
                        acked_tx.send(path).unwrap();
                    }
                    i += 1;
                }
            })
        })
        .collect();
    drop(acked_tx);
    let mut acked = Vec::new();
    while acked.len() < 40 {
        acked.push(acked_rx.recv_timeout(DEADLINE).expect("creates are acknowledged"));
    }
    let killed = Instant::now();
    cluster.kill9(leader);
    // Creates resume under a new leader within a few seconds.
    let before = acked.len();
    while acked.len() < before + 40 {
        acked.push(acked_rx.recv_timeout(DEADLINE).expect("creates resume after the leader died"));
    }
    let resumed = killed.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.join().unwrap();
    }
    acked.extend(acked_rx.try_iter());
    assert!(resumed < Duration::from_secs(10), "creates resumed after {resumed:?}");

    let mut client = meshfs_client::MetaClient::new(&cluster.access).unwrap();
    let listed: std::collections::HashSet<String> =
        client.list("/").unwrap().into_iter().map(|e| format!("/{}", e.name)).collect();
    for path in &acked {
        assert!(listed.contains(path), "{path} was acknowledged and is gone");
    }
}

#[test]
fn the_namespace_survives_killing_and_restarting_every_meta_server() {
    let mut cluster = TestCluster::new("ns-restart", 3, 1);
    cluster.start_all();
    let mut client = meshfs_client::MetaClient::new(&cluster.access).unwrap();
    client.mkdir("/keep/sub", true).unwrap();
    let mut made = Vec::new();
    for i in 0..50 {
        let fd = client.create(&format!("/keep/sub/f{i:02}"), 0).unwrap();
        made.push((format!("f{i:02}"), fd.id.0));
    }
    for id in 1..=3 {
        cluster.kill9(id);
    }
    for id in 1..=3 {
        cluster.start(id);
    }
    let mut client = meshfs_client::MetaClient::new(&cluster.access).unwrap();
    let listed: Vec<(String, u32)> =
        client.list("/keep/sub").unwrap().into_iter().map(|e| (e.name, e.id)).collect();
    assert_eq!(listed, made, "names and file ids survive");
    // And the cluster goes on: a new file gets a new id.
    let fd = client.create("/keep/after", 0).unwrap();
    assert!(made.iter().all(|(_, id)| *id != fd.id.0));
}

#[test]
fn a_meta_server_that_missed_many_creates_catches_up_by_a_streamed_snapshot() {
    // Compact every 50 entries, so what the follower misses is gone from the leader's log and
    // it must catch up from a snapshot; long names make that snapshot larger than a frame
    // (1 MiB), so it has to travel in pieces.
    let mut cluster = TestCluster::new_with("ns-catchup", 3, 1, "snapshot_entries = 50\n");
    cluster.start_all();
    let status = cluster.wait_for("a leader", |s| s.agreed_leader().is_some());
    let leader = status.agreed_leader().unwrap();
    let lagging = (1..=3).find(|&id| id != leader).unwrap();
    cluster.kill9(lagging);
    // A snapshot is taken once the log since the last one is half the namespace, so the
    // last one covers at least half the files: 9,000 files of about 300 snapshot bytes each
    // make it at least 1.3 MB.
    let (files, writers) = (9000, 8);
    let long = "n".repeat(240);
    std::thread::scope(|scope| {
        for w in 0..writers {
            let (access, long) = (&cluster.access, &long);
            scope.spawn(move || {
                let mut client = meshfs_client::MetaClient::new(access).unwrap();
                for i in (w..files).step_by(writers) {
                    client.create(&format!("/{long}{i:05}"), 0).unwrap();
                }
            });
        }
    });
    cluster.start(lagging);
    let status = cluster.wait_for("the lagging server to catch up", |s| {
        let inodes = |id| s.server(id).and_then(|v| v.inodes);
        s.agreed_leader().is_some()
            && inodes(lagging).is_some()
            && inodes(lagging) == inodes(leader)
    });
    assert_eq!(status.server(lagging).unwrap().inodes, Some(files as u64 + 1));
    cluster.wait_log(lagging, "installed the leader's snapshot");
    let log = cluster.log(status.agreed_leader().unwrap());
    let streamed =
        log.lines().find(|l| l.contains("streaming a")).expect("the leader streamed a snapshot");
    let bytes: u64 =
        streamed.split("streaming a ").nth(1).unwrap().split('-').next().unwrap().parse().unwrap();
    assert!(bytes > 1024 * 1024, "the snapshot ({bytes} bytes) should outgrow one frame");
}

#[test]
fn expand_file_size_places_blocks_on_distinct_live_data_servers() {
    let mut cluster = TestCluster::new("ns-expand", 3, 3);
    cluster.start_all();
    cluster.wait_full_mesh();
    let mut client = meshfs_client::MetaClient::new(&cluster.access).unwrap();
    client.create("/data.bin", 2).unwrap();
    let mib = 1024 * 1024;
    let (file, added) = client.expand_file_size("/data.bin", 2 * mib + mib / 2).unwrap();
    assert_eq!((file.version, added), (2, 3));
    let meta = client.get_file_meta_data("/data.bin").unwrap();
    assert_eq!(meta.size, 2 * mib + mib / 2);
    assert_eq!(meta.blocks.len(), 3);
    let dservers = [4, 5, 6];
    for block in &meta.blocks {
        assert_eq!(block.replicas.len(), 2);
        assert_ne!(block.replicas[0], block.replicas[1], "never two replicas on one server");
        assert!(block.replicas.iter().all(|r| dservers.contains(&r.0)));
        assert_eq!(block.descriptor.file, file);
    }
    // The CLI shows each block's data-servers.
    let stat = text(&meshfs(&cluster, &["stat", "/data.bin"]).stdout);
    assert!(stat.contains("blocks      3") && stat.contains("on dservers"), "{stat}");

    // With one data-server left, two copies cannot be placed: a clear error, nothing changes.
    cluster.kill9(5);
    cluster.kill9(6);
    cluster.wait_for("the meta-servers to see 5 and 6 down", |s| {
        s.servers
            .iter()
            .filter(|v| v.role == "mserver")
            .all(|v| v.peers.iter().filter(|p| p.id == 5 || p.id == 6).all(|p| !p.up))
    });
    let err = client.expand_file_size("/data.bin", 4 * mib).unwrap_err().to_string();
    assert!(
        err.contains("cannot place blocks") && err.contains("2 live data-servers, 1 are up"),
        "{err}"
    );
    assert_eq!(client.get_file_meta_data("/data.bin").unwrap().blocks.len(), 3);

    // With 5 back, new blocks go to the live ones only.
    cluster.start(5);
    cluster.wait_for("data-server 5 back", |s| {
        s.servers
            .iter()
            .filter(|v| v.role == "mserver")
            .all(|v| v.peers.iter().any(|p| p.id == 5 && p.up))
    });
    let (_, added) = client.expand_file_size("/data.bin", 4 * mib).unwrap();
    assert_eq!(added, 1);
    let meta = client.get_file_meta_data("/data.bin").unwrap();
    let mut last = meta.blocks[3].replicas.iter().map(|r| r.0).collect::<Vec<_>>();
    last.sort();
    assert_eq!(last, [4, 5]);
}

#[test]
fn a_write_lease_is_exclusive_signs_its_chain_and_takes_effect_on_commit() {
    use meshfs_core::token::{TokenError, TokenOp};
    let mut cluster = TestCluster::new("lease", 3, 3);
    cluster.start_all();
    cluster.wait_full_mesh();
    let mut client = meshfs_client::MetaClient::new(&cluster.access).unwrap();
    client.create("/f", 2).unwrap();
    client.expand_file_size("/f", 1024 * 1024 + 1).unwrap();
    let before = client.get_file_meta_data("/f").unwrap();
    assert_eq!(before.blocks[1].descriptor.version.0, 1);

    let token = client.write_lease("/f", 1).unwrap();
    assert_eq!((token.block.index, token.block.version.0, token.base.0), (1, 2, 1));
    assert_eq!(token.replicas, before.blocks[1].replicas);
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
            as u64;
    assert!(token.expires_ms > now, "the token is still good");
    let secret = &cluster.config.secret;
    for replica in &token.replicas {
        token.verify_for(secret, TokenOp::Write, ClientId(1), now, *replica).unwrap();
    }
    let outsider = [4, 5, 6]
        .into_iter()
        .map(meshfs_group::NodeId)
        .find(|d| !token.replicas.contains(d))
        .unwrap();
    assert_eq!(
        token.verify_for(secret, TokenOp::Write, ClientId(1), now, outsider),
        Err(TokenError::NotAssigned(outsider))
    );
    assert_eq!(
        token.verify(secret, TokenOp::Write, ClientId(2), now),
        Err(TokenError::WrongClient { issued: ClientId(1), presented_by: ClientId(2) })
    );

    // Another writer waits for the lease; readers keep the committed version meanwhile.
    let mut other = meshfs_client::MetaClient::new(&cluster.access).unwrap();
    let err = other.write_lease("/f", 1).unwrap_err().to_string();
    assert!(err.contains("being written by client 1"), "{err}");
    assert_eq!(other.get_file_meta_data("/f").unwrap().blocks[1].descriptor.version.0, 1);
    // The commit carries the replicas' proofs of the write: write the block's one byte.
    let receipt = meshfs_client::data::DataClient::new(&cluster.access)
        .write_block(&token, 1024 * 1024, 0, b"x", false)
        .unwrap();
    assert_eq!(receipt.proofs.len(), 2, "both replicas prove the write");
    client.commit_write("/f", &receipt).unwrap();
    let after = client.get_file_meta_data("/f").unwrap();
    assert_eq!(after.blocks[1].descriptor.version.0, 2, "the new version is committed");
    assert_eq!(after.blocks[0].descriptor.version.0, 1);
    assert!(after.descriptor.version > before.descriptor.version);
    let err = client.write_lease("/f", 5).unwrap_err().to_string();
    assert!(err.contains("block 5") && err.contains("2 blocks"), "{err}");
}

// ---- the data path ----

/// `len` pseudo-random bytes (never zeros: some filesystems skip them).
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    meshfs_test_kit::rng::bytes(len, seed)
}

fn data_clients(
    cluster: &TestCluster,
) -> (meshfs_client::MetaClient, meshfs_client::data::DataClient) {
    (
        meshfs_client::MetaClient::new(&cluster.access).unwrap(),
        meshfs_client::data::DataClient::new(&cluster.access),
    )
}

fn put_bytes(
    cluster: &TestCluster,
    remote: &str,
    bytes: &[u8],
    replication: u8,
) -> Result<u64, meshfs_client::ClientError> {
    let (mut meta, mut data) = data_clients(cluster);
    meshfs_client::data::put(
        &mut meta,
        &mut data,
        &mut &bytes[..],
        remote,
        replication,
        None,
        &mut (),
    )
}

fn get_bytes(cluster: &TestCluster, remote: &str) -> Result<Vec<u8>, meshfs_client::ClientError> {
    let (mut meta, mut data) = data_clients(cluster);
    let mut out = Vec::new();
    meshfs_client::data::get(&mut meta, &mut data, remote, &mut out, &mut ())?;
    Ok(out)
}

#[test]
fn a_300_mb_file_round_trips_byte_identical_at_replication_1_2_and_3() {
    let mut cluster = TestCluster::new("put-get", 3, 3);
    cluster.start_all();
    cluster.wait_full_mesh();
    let local = cluster.dir.join("random.bin");
    std::fs::write(&local, random_bytes(300 * 1000 * 1000, 42)).unwrap();
    for r in 1..=3u8 {
        let remote = format!("/big-r{r}");
        let out = meshfs(
            &cluster,
            &["put", "--replication", &r.to_string(), local.to_str().unwrap(), &remote],
        );
        assert!(out.status.success(), "put r{r}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("300000000 bytes"),
            "summary line: {}",
            text(&out.stderr)
        );
        let back = cluster.dir.join(format!("back-r{r}.bin"));
        let out = meshfs(&cluster, &["get", &remote, back.to_str().unwrap()]);
        assert!(out.status.success(), "get r{r}: {}", text(&out.stderr));
        assert!(
            std::fs::read(&back).unwrap() == std::fs::read(&local).unwrap(),
            "r{r}: bytes differ"
        );
        std::fs::remove_file(&back).unwrap();
        // Every block has r replicas on distinct data-servers.
        let (mut meta, _) = data_clients(&cluster);
        for block in meta.get_file_meta_data(&remote).unwrap().blocks {
            let mut servers = block.replicas.clone();
            servers.dedup();
            assert_eq!(servers.len(), r as usize);
        }
    }
}

#[test]
fn puts_on_either_side_of_the_one_round_small_file_path_round_trip() {
    // Block size 1 MiB here: inputs under one block take CreateWrite, the rest the
    // block-by-block path, which must still see the bytes read to decide.
    let mut cluster = TestCluster::new("put-sizes", 3, 3);
    cluster.start_all();
    cluster.wait_full_mesh();
    let mib = 1024 * 1024;
    for (i, (len, blocks)) in
        [(0, 0), (1, 1), (mib - 1, 1), (mib, 1), (mib + 1, 2)].into_iter().enumerate()
    {
        let bytes = random_bytes(len, 40 + i as u64);
        let path = format!("/size-{len}");
        assert_eq!(put_bytes(&cluster, &path, &bytes, 2).unwrap(), len as u64);
        assert_eq!(get_bytes(&cluster, &path).unwrap(), bytes, "{len} bytes");
        let (mut meta, _) = data_clients(&cluster);
        let file = meta.get_file_meta_data(&path).unwrap();
        assert_eq!((file.size, file.blocks.len()), (len as u64, blocks), "{len} bytes");
    }
}

#[test]
fn small_files_and_concurrent_writers_round_trip() {
    let mut cluster = TestCluster::new("small", 3, 3);
    cluster.start_all();
    cluster.wait_full_mesh();
    std::thread::scope(|scope| {
        for w in 0..8u64 {
            let cluster = &cluster;
            scope.spawn(move || {
                let (mut meta, mut data) = data_clients(cluster);
                // Each writer: one larger file (several blocks) and many small ones.
                let big = random_bytes(3 * 1024 * 1024 + 123, w);
                let path = format!("/w{w}-big");
                meshfs_client::data::put(
                    &mut meta,
                    &mut data,
                    &mut &big[..],
                    &path,
                    2,
                    None,
                    &mut (),
                )
                .unwrap();
                for i in 0..125u64 {
                    let small = random_bytes(4096, w * 1000 + i);
                    let path = format!("/w{w}-{i}");
                    meshfs_client::data::put(
                        &mut meta,
                        &mut data,
                        &mut &small[..],
                        &path,
                        2,
                        None,
                        &mut (),
                    )
                    .unwrap();
                }
            });
        }
    });
    for w in 0..8u64 {
        assert_eq!(
            get_bytes(&cluster, &format!("/w{w}-big")).unwrap(),
            random_bytes(3 * 1024 * 1024 + 123, w)
        );
        for i in [0u64, 61, 124] {
            assert_eq!(
                get_bytes(&cluster, &format!("/w{w}-{i}")).unwrap(),
                random_bytes(4096, w * 1000 + i)
            );
        }
    }
    let (mut meta, _) = data_clients(&cluster);
    assert_eq!(meta.list("/").unwrap().len(), 8 * 126, "1,000 small files and 8 larger ones");
}

#[test]
fn reads_survive_a_dead_data_server_and_a_damaged_replica() {
    // The scrubber is off: this is about reads finding the damage (had the scrubber set the
    // replica aside first, the read would report "not held" rather than the checksum).
    let mut cluster = TestCluster::new_with("read-faults", 3, 3, "[heal]\nscrub_mbps = 0\n");
    cluster.start_all();
    cluster.wait_full_mesh();
    let bytes = random_bytes(5 * 1024 * 1024, 7);
    put_bytes(&cluster, "/f", &bytes, 2).unwrap();
    let (mut meta, _) = data_clients(&cluster);
    let file = meta.get_file_meta_data("/f").unwrap();

    // Flip a byte inside one replica file of block 0 on disk: the read still returns the
    // right bytes, from the other replica.
    let victim = file.blocks[0].replicas[0];
    let path = cluster.dir.join(format!(
        "data/dserver-{}/blocks/{:02x}/{:08x}-0000.blk",
        victim.0,
        file.descriptor.id.0 & 0xff,
        file.descriptor.id.0
    ));
    let mut disk = std::fs::read(&path).unwrap();
    let at = disk.len() - 1000;
    disk[at] ^= 0x5a;
    std::fs::write(&path, disk).unwrap();
    assert_eq!(get_bytes(&cluster, "/f").unwrap(), bytes, "the damaged replica is skipped");
    // ... and reported to the meta-servers.
    let leader =
        cluster.wait_for("a leader", |s| s.agreed_leader().is_some()).agreed_leader().unwrap();
    cluster.wait_log(leader, &format!("reports data-server {} failed block", victim.0));
    let log = cluster.log(leader);
    assert!(log.contains("checksum"), "the report says what was wrong; the leader's log:\n{log}");

    // Kill a data-server holding replicas: every block is still readable from another.
    let dead = file.blocks[1].replicas[0];
    cluster.kill9(dead.0);
    assert_eq!(get_bytes(&cluster, "/f").unwrap(), bytes, "reads go to the surviving replicas");
}

#[test]
fn forged_and_expired_tokens_are_refused_and_a_full_disk_is_a_clear_error() {
    use meshfs_core::token::{Token, TokenOp};
    let mut cluster = TestCluster::new("tokens", 3, 3);
    cluster.start_all();
    cluster.wait_full_mesh();
    let (mut meta, mut data) = data_clients(&cluster);
    meta.create("/t", 1).unwrap();
    meta.expand_file_size("/t", 1000).unwrap();
    let token = meta.write_lease("/t", 0).unwrap();
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
            as u64;
    let forged = Token::sign(
        b"a-guessed-secret-0000000",
        token.block,
        token.base,
        TokenOp::Write,
        token.replicas.clone(),
        ClientId(1),
        now + 60_000,
    );
    let err = data.write_block(&forged, 1024 * 1024, 0, b"sneaky", false).unwrap_err().to_string();
    assert!(err.contains("forged"), "{err}");
    let expired = Token::sign(
        &cluster.config.secret,
        token.block,
        token.base,
        TokenOp::Write,
        token.replicas.clone(),
        ClientId(1),
        now - 1,
    );
    let err = data.write_block(&expired, 1024 * 1024, 0, b"late", false).unwrap_err().to_string();
    assert!(err.contains("expired"), "{err}");
    // The real token works, and nothing of the refused writes is there.
    let receipt = data.write_block(&token, 1024 * 1024, 0, &[7u8; 1000], false).unwrap();
    // Durable on the replicas, but readers see the new bytes only once the write commits.
    assert_eq!(get_bytes(&cluster, "/t").unwrap(), vec![0u8; 1000]);
    meta.commit_write("/t", &receipt).unwrap();
    assert_eq!(get_bytes(&cluster, "/t").unwrap(), vec![7u8; 1000]);

    // Data-servers here hold 1 GiB each: a file of more than three of them at replication 3
    // does not fit, and says so.
    let err = put_bytes(&cluster, "/huge", &random_bytes(8 * 1024 * 1024, 1), 3);
    assert!(err.is_ok(), "8 MiB fits");
    let capacity = cluster.config.servers.iter().filter_map(|s| s.capacity).max().unwrap();
    let blocks_that_fit = capacity / (1024 * 1024);
    let (mut meta, _) = data_clients(&cluster);
    meta.create("/too-big", 3).unwrap();
    let err = meta
        .expand_file_size("/too-big", (blocks_that_fit + 1) * 1024 * 1024)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot place blocks") && err.contains("no room"), "{err}");
}

/// Puts `bytes` as `/big` at `replication` and kill -9s server `victim` once `after` bytes
/// are acknowledged (durable on every replica and committed). Returns the put's result and
/// the bytes acknowledged in all.
fn put_killing(
    cluster: &mut TestCluster,
    bytes: &[u8],
    replication: u8,
    after: u64,
    victim: u32,
) -> (Result<u64, meshfs_client::ClientError>, u64) {
    /// Keeps the bytes acknowledged; says once when they pass `after`.
    struct Acked {
        done: u64,
        after: u64,
        passed: Option<std::sync::mpsc::Sender<()>>,
    }
    impl meshfs_client::data::Progress for Acked {
        fn update(&mut self, done: u64, _total: Option<u64>) {
            self.done = done;
            if done >= self.after
                && let Some(tx) = self.passed.take()
            {
                let _ = tx.send(());
            }
        }
    }
    let (tx, passed) = std::sync::mpsc::channel();
    let (mut meta, mut data) = data_clients(cluster);
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || {
            let mut progress = Acked { done: 0, after, passed: Some(tx) };
            let result = meshfs_client::data::put(
                &mut meta,
                &mut data,
                &mut &bytes[..],
                "/big",
                replication,
                None,
                &mut progress,
            );
            (result, progress.done)
        });
        passed.recv_timeout(DEADLINE).expect("the put got going");
        cluster.kill9(victim);
        writer.join().unwrap()
    })
}

#[test]
fn killing_a_data_server_mid_put_loses_no_acknowledged_block() {
    let mut cluster = TestCluster::new("kill-mid-put", 3, 3);
    cluster.start_all();
    cluster.wait_full_mesh();
    let bytes = random_bytes(200 * 1024 * 1024, 11);
    let (result, done) = put_killing(&mut cluster, &bytes, 3, 20 * 1024 * 1024, 5);
    match &result {
        Ok(n) => assert_eq!(*n, bytes.len() as u64, "a put that succeeded wrote everything"),
        Err(err) => assert!(err.to_string().contains("data-server"), "a clear error: {err}"),
    }
    // Every acknowledged block reads back intact, from the replicas that are left.
    let (mut meta, mut data) = data_clients(&cluster);
    let file = meta.get_file_meta_data("/big").unwrap();
    let block_size = u64::from(file.block_size);
    let whole_blocks = done / block_size;
    assert!(whole_blocks >= 20, "{whole_blocks} blocks were acknowledged");
    for block in file.blocks.iter().take(whole_blocks as usize) {
        let mut out = Vec::new();
        data.read_block(block, 0, block_size, &mut out).unwrap();
        let start = (u64::from(block.descriptor.index) * block_size) as usize;
        assert!(
            out == bytes[start..start + block_size as usize],
            "block {} differs",
            block.descriptor.index
        );
    }
}

#[test]
fn data_servers_report_their_replicas_to_every_meta_server() {
    let mut cluster = TestCluster::new("reports", 3, 3);
    cluster.start_all();
    cluster.wait_full_mesh();
    put_bytes(&cluster, "/f", &random_bytes(6 * 1024 * 1024, 3), 2).unwrap();
    let reported = |s: &meshfs_client::status::ClusterStatus,
                    mserver: u32|
     -> Option<(u64, bool)> {
        let view = s.server(mserver)?;
        let blocks = view.data_servers.iter().map(|d| d.blocks).sum();
        let complete = view.data_servers.len() == 3 && view.data_servers.iter().all(|d| d.complete);
        Some((blocks, complete))
    };
    let status = cluster.wait_for("every meta-server to hear of 12 replicas", |s| {
        (1..=3).all(|m| reported(s, m) == Some((12, true)))
    });
    let view = status.server(1).unwrap();
    assert!(view.data_servers.iter().all(|d| d.capacity == 1 << 30 && d.used > 0 || d.blocks == 0));

    // A data-server that restarts reports what it holds again, in full.
    let before: u64 =
        status.server(1).unwrap().data_servers.iter().find(|d| d.id == 4).unwrap().blocks;
    cluster.kill9(4);
    cluster.wait_for("its report to be marked stale", |s| {
        s.server(1).is_some_and(|v| v.data_servers.iter().any(|d| d.id == 4 && !d.complete))
    });
    cluster.start(4);
    cluster.wait_for("a fresh full report", |s| {
        s.server(1).is_some_and(|v| {
            v.data_servers.iter().any(|d| d.id == 4 && d.complete && d.blocks == before)
        })
    });
}

#[test]
fn random_reads_and_writes_agree_with_a_local_model() {
    use meshfs_client::file::RemoteFile;
    let mut cluster = TestCluster::new("file-model", 3, 3);
    cluster.start_all();
    cluster.wait_full_mesh();
    let mib = 1024 * 1024u64;
    let mut file = RemoteFile::create(&cluster.access, "/model", 2).unwrap();
    let mut model: Vec<u8> = Vec::new();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n.max(1)
    };
    for step in 0..30 {
        // Writes may start past the end (a hole), cross blocks, or overwrite part of one.
        let offset = next(6 * mib);
        let len = 1 + next(2 * mib + mib / 2);
        let bytes = random_bytes(len as usize, step);
        file.write_at(offset, &bytes).unwrap();
        let end = (offset + len) as usize;
        if model.len() < end {
            model.resize(end, 0);
        }
        model[offset as usize..end].copy_from_slice(&bytes);
        assert_eq!(file.len(), model.len() as u64, "step {step}");
        // A read anywhere, possibly past the end.
        let at = next(model.len() as u64 + mib);
        let mut buf = vec![0xAAu8; 1 + next(3 * mib) as usize];
        let n = file.read_at(at, &mut buf).unwrap();
        let expect =
            &model[(at as usize).min(model.len())..(at as usize + buf.len()).min(model.len())];
        assert_eq!(&buf[..n], expect, "step {step}: read {at}+{}", buf.len());
    }
    // The whole file, through a fresh handle and through the CLI.
    let mut fresh = RemoteFile::open(&cluster.access, "/model").unwrap();
    let mut all = vec![0u8; model.len()];
    assert_eq!(fresh.read_at(0, &mut all).unwrap(), model.len());
    assert!(all == model);
    assert!(get_bytes(&cluster, "/model").unwrap() == model);
    fresh.close().unwrap();

    // The block calls: several blocks in flight at once.
    let blocks: Vec<Vec<u8>> = (0..6).map(|i| random_bytes(mib as usize, 100 + i)).collect();
    let refs: Vec<&[u8]> = blocks.iter().map(|b| b.as_slice()).collect();
    let mut arr = RemoteFile::create(&cluster.access, "/blocks", 3).unwrap();
    arr.write_blocks(0, &refs).unwrap();
    assert_eq!(arr.read_blocks(0, 6).unwrap(), blocks);
    assert_eq!(arr.read_block_array(&[5, 1]).unwrap(), vec![blocks[5].clone(), blocks[1].clone()]);
    arr.write_block_array(&[(2, &blocks[0]), (4, &blocks[0])]).unwrap();
    assert_eq!(arr.read_block(4).unwrap(), blocks[0]);
    assert_eq!(arr.read_block(3).unwrap(), blocks[3]);
}

#[test]
fn a_full_data_server_gives_the_client_a_clear_error() {
    let mut cluster = TestCluster::new("full", 3, 3);
    // Data-servers of 2 MiB: the meta-servers place two 1 MiB blocks on each, but a replica
    // file also holds its header and checksums, so the second does not fit on the disk.
    let text = std::fs::read_to_string(&cluster.config_path)
        .unwrap()
        .replace("capacity = \"1GiB\"", "capacity = \"2MiB\"");
    meshfs_test_kit::write_private(&cluster.config_path, &text);
    cluster.config = meshfs_group::Config::load(&cluster.config_path).unwrap();
    cluster.start_all();
    cluster.wait_full_mesh();
    put_bytes(&cluster, "/small", b"acknowledged before the disks filled", 1)
        .unwrap_or_else(|e| panic!("{e}"));
    let err =
        put_bytes(&cluster, "/f", &random_bytes(5 * 1024 * 1024, 9), 1).unwrap_err().to_string();
    assert!(
        err.contains("no space") || err.contains("no room"),
        "the client is told the cluster is out of space: {err}"
    );
    // Nothing else is harmed: what was acknowledged reads back, and the namespace still works.
    assert_eq!(get_bytes(&cluster, "/small").unwrap(), b"acknowledged before the disks filled");
    put_bytes(&cluster, "/empty", b"", 1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(get_bytes(&cluster, "/empty").unwrap(), b"");
}

#[test]
fn a_write_that_is_never_committed_is_never_read_and_the_retry_starts_from_the_committed_bytes() {
    let mut cluster = TestCluster::new("uncommitted", 3, 3);
    cluster.start_all();
    cluster.wait_full_mesh();
    let original = random_bytes(1024 * 1024 + 5000, 21);
    put_bytes(&cluster, "/f", &original, 2).unwrap();
    let (mut meta, mut data) = data_clients(&cluster);
    let block_size = 1024 * 1024;
    // A writer streams a patch to both replicas of block 0, durably, and dies before it
    // commits: the replicas hold that version, but nobody reads it.
    let lost = meta.write_lease("/f", 0).unwrap();
    let lost = data.write_block(&lost, block_size, 0, b"NEVER-COMMITTED", true).unwrap();
    assert_eq!(get_bytes(&cluster, "/f").unwrap(), original, "readers see the committed bytes");
    // Its retry (a new lease, a newer version) starts again from the committed bytes.
    let retry = meta.write_lease("/f", 0).unwrap();
    assert!(retry.block.version.is_newer_than(lost.token.block.version));
    assert_eq!(retry.base, lost.token.base);
    let retry = data.write_block(&retry, block_size, 100, b"patched", true).unwrap();
    meta.commit_write("/f", &retry).unwrap();
    let mut expected = original.clone();
    expected[100..107].copy_from_slice(b"patched");
    assert_eq!(get_bytes(&cluster, "/f").unwrap(), expected, "no byte of the lost write");
    // The lost lease cannot commit any more.
    let err = meta.commit_write("/f", &lost).unwrap_err().to_string();
    assert!(err.contains("lease") && err.contains("lost"), "{err}");
    // The leader tells the replicas the new version is committed; they drop the copy it was
    // written from.
    let id = lost.token.block.file.id.0;
    let older: Vec<_> = retry
        .token
        .replicas
        .iter()
        .map(|r| {
            cluster.dir.join(format!(
                "data/dserver-{}/blocks/{:02x}/{id:08x}-0000.prev",
                r.0,
                id & 0xff
            ))
        })
        .collect();
    meshfs_test_kit::wait_until(&format!("the older copies {older:?} to go"), || {
        older.iter().all(|p| !p.exists())
    });
    assert_eq!(get_bytes(&cluster, "/f").unwrap(), expected);
}

#[test]
fn a_put_goes_on_when_a_data_server_of_its_chain_dies() {
    // Four data-servers at replication 2: when one dies mid-put, the leader puts another in
    // its place for the blocks on their way, and the put completes.
    let mut cluster = TestCluster::new("swap-mid-put", 3, 4);
    cluster.start_all();
    cluster.wait_full_mesh();
    let bytes = random_bytes(120 * 1024 * 1024, 12);
    let (result, _) = put_killing(&mut cluster, &bytes, 2, 10 * 1024 * 1024, 5);
    assert_eq!(result.unwrap_or_else(|e| panic!("{e}")), bytes.len() as u64);
    assert_eq!(get_bytes(&cluster, "/big").unwrap(), bytes, "every block reads back");
    // Blocks placed after the death avoid the dead data-server.
    let (mut meta, _) = data_clients(&cluster);
    let file = meta.get_file_meta_data("/big").unwrap();
    let last = file.blocks.last().unwrap();
    assert!(!last.replicas.contains(&meshfs_group::NodeId(5)), "{:?}", last.replicas);
    let swapped = (1..=3).any(|m| cluster.log(m).contains("replaces 5, where the writer's chain"));
    assert!(swapped, "the leader swapped the dead data-server out of a chain");
}

#[test]
fn many_chains_over_one_link_all_complete() {
    // Two data-servers at replication 2: every chain crosses the one link between them. With
    // 16 MiB blocks, eight writers keep more in flight than the link's 8 MiB bulk queue holds,
    // so the first data-server must hold chunks back rather than overflow it.
    let mut cluster = TestCluster::new("one-link", 3, 2);
    cluster.set_block_size("16MiB");
    cluster.start_all();
    cluster.wait_full_mesh();
    std::thread::scope(|scope| {
        for w in 0..8u64 {
            let cluster = &cluster;
            scope.spawn(move || {
                let bytes = random_bytes(24 * 1024 * 1024, 100 + w);
                let path = format!("/c{w}");
                put_bytes(cluster, &path, &bytes, 2).unwrap_or_else(|e| panic!("{path}: {e}"));
                assert!(get_bytes(cluster, &path).unwrap() == bytes, "{path} differs");
            });
        }
    });
}

#[test]
fn bench_seqread_and_seqwrite_report_json_with_limits_and_clean_up() {
    let mut cluster = TestCluster::new("bench-seq", 3, 3);
    cluster.start_all();
    cluster.wait_full_mesh();
    for workload in ["seqwrite", "seqread"] {
        let out = meshfs(
            &cluster,
            &["bench", workload, "--size", "3MiB", "--files", "2", "--replication", "2", "--json"],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["workload"], workload);
        assert_eq!(json["params"]["files"], 2);
        assert!(json["results"]["mb_s"].as_f64().unwrap() > 0.0, "{json}");
        assert!(
            json["results"]["p99_us"].as_u64().unwrap()
                >= json["results"]["p50_us"].as_u64().unwrap()
        );
        assert!(json.get("ratios").is_none(), "no limits were measured");
        if workload == "seqread" {
            // The data-servers' disks are here: the read is cold, every replica dropped.
            let stderr = text(&out.stderr);
            let dropped: usize = stderr
                .lines()
                .find_map(|l| l.strip_prefix("bench: dropped "))
                .and_then(|l| l.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no cache drop reported in {stderr}"));
            assert!(dropped >= 4, "2 files of one block at R=2 are 4 replicas: {stderr}");
            assert_eq!(json["params"]["cold"], true, "{json}");
        }
    }
    // With the limits measured beside it: the ratio is the result over its limit.
    let out = meshfs(&cluster, &["bench", "seqwrite", "--size", "2MiB", "--with-limits", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ratio = json["ratios"]["mb_s"].as_f64().unwrap();
    let expected = json["results"]["mb_s"].as_f64().unwrap()
        / json["limits"]["disk_write_fsync_mb_s"].as_f64().unwrap();
    assert!((ratio - expected).abs() < 0.01, "{json}");
    // Every run removed its files.
    let (mut meta, _) = data_clients(&cluster);
    let left = meta.list("/").unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn bench_smallfile_writes_reads_and_checks_every_file() {
    let mut cluster = TestCluster::new("bench-small", 3, 3);
    cluster.start_all();
    cluster.wait_full_mesh();
    let out = meshfs(
        &cluster,
        &["bench", "smallfile", "--files", "60", "--size", "4KiB", "--clients", "4", "--json"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["workload"], "smallfile");
    assert_eq!(json["params"]["files"], 60);
    for op in ["write", "read"] {
        let rate = json["results"][format!("{op}_files_per_s")].as_f64().unwrap();
        assert!(rate > 0.0, "{json}");
        let (p50, max) = (
            json["results"][format!("{op}_p50_us")].as_u64().unwrap(),
            json["results"][format!("{op}_max_us")].as_u64().unwrap(),
        );
        assert!(p50 > 0 && p50 <= max, "{json}");
    }
    let (mut meta, _) = data_clients(&cluster);
    assert!(meta.list("/").unwrap().is_empty(), "the run removed its files");
}

#[test]
fn bench_meta_times_every_namespace_operation_and_renames_for_real() {
    let mut cluster = TestCluster::new("bench-meta", 3, 3);
    cluster.start_all();
    cluster.wait_full_mesh();
    let out = meshfs(&cluster, &["bench", "meta", "--clients", "1,2", "--files", "10", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["workload"], "meta");
    for c in [1, 2] {
        for op in ["create", "stat", "rename", "remove"] {
            assert_eq!(json["results"][format!("{op}_c{c}_ops")], 10, "{op}, {c}: {json}");
            assert!(json["results"][format!("{op}_c{c}_ops_per_s")].as_f64().unwrap() > 0.0);
        }
        assert!(json["results"][format!("list_c{c}_ops")].as_u64().unwrap() > 0, "{json}");
    }
    let (mut meta, _) = data_clients(&cluster);
    assert!(meta.list("/").unwrap().is_empty(), "the run removed its files");

    // Kept files show the rename took effect: every name is the renamed one.
    let out = meshfs(
        &cluster,
        &["bench", "meta", "--clients", "1", "--files", "5", "--phases", "rename", "--keep"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let root = meta.list("/").unwrap();
    assert_eq!(root.len(), 1, "{root:?}");
    let dir = format!("/{}/c1/w0", root[0].name);
    let names: Vec<String> = meta.list(&dir).unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["r0000000", "r0000001", "r0000002", "r0000003", "r0000004"]);

    let out = meshfs(&cluster, &["bench", "meta", "--phases", "stat,chmod"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown phase \"chmod\""), "{}", text(&out.stderr));
}

#[test]
fn bench_randread_reports_iops_per_queue_depth() {
    let mut cluster = TestCluster::new("bench-rand", 3, 3);
    cluster.start_all();
    cluster.wait_full_mesh();
    let out = meshfs(
        &cluster,
        &["bench", "randread", "--size", "3MiB", "--reads", "200", "--depth", "1,4", "--json"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["workload"], "randread");
    for qd in ["qd1", "qd4"] {
        assert!(json["results"][format!("{qd}_iops")].as_f64().unwrap() > 0.0, "{json}");
        let p50 = json["results"][format!("{qd}_p50_us")].as_u64().unwrap();
        assert!(p50 <= json["results"][format!("{qd}_max_us")].as_u64().unwrap(), "{json}");
    }
    let (mut meta, _) = data_clients(&cluster);
    assert!(meta.list("/").unwrap().is_empty(), "the run removed its file");
}

#[test]
fn bench_local_runs_against_a_throw_away_cluster_and_removes_it() {
    // The config's servers are never started here: --local starts its own on free ports.
    let cluster = TestCluster::new("bench-local", 3, 3);
    let out = meshfs(
        &cluster,
        &[
            "bench", "--local", "randread", "--size", "1MiB", "--reads", "50", "--depth", "1",
            "--json",
        ],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["results"]["qd1_iops"].as_f64().unwrap() > 0.0, "{json}");
    let dir = stderr
        .lines()
        .find_map(|l| l.strip_prefix("bench: starting a local cluster in "))
        .unwrap_or_else(|| panic!("no start line in {stderr}"));
    assert!(!std::path::Path::new(dir).exists(), "{dir} was removed");
    assert!(!cluster.dir.join("data").exists(), "the configured data dirs were not touched");
    // meta with its limits: creates/s over appends+fdatasync/s.
    let out = meshfs(
        &cluster,
        &[
            "bench",
            "--local",
            "meta",
            "--clients",
            "2",
            "--files",
            "20",
            "--phases",
            "",
            "--with-limits",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ratio = json["ratios"]["create_c2_ops_per_s"].as_f64().unwrap();
    let expected = json["results"]["create_c2_ops_per_s"].as_f64().unwrap()
        / json["limits"]["append_fdatasync_per_s"].as_f64().unwrap();
    assert!((ratio - expected).abs() < 0.01, "{json}");
}

#[test]
fn put_refuses_an_existing_file_and_put_force_replaces_it_atomically() {
    let mut cluster = TestCluster::new("put-force", 3, 3);
    cluster.start_all();
    cluster.wait_full_mesh();
    let old = random_bytes((2 << 20) + 5, 1);
    let new = random_bytes((3 << 20) + 9, 2);
    let (old_file, new_file) = (cluster.dir.join("old"), cluster.dir.join("new"));
    std::fs::write(&old_file, &old).unwrap();
    std::fs::write(&new_file, &new).unwrap();
    let put = |args: &[&str]| meshfs(&cluster, &[&["put"], args].concat());
    assert!(put(&[old_file.to_str().unwrap(), "/f"]).status.success());
    let refused = put(&[new_file.to_str().unwrap(), "/f"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("meshfs put --force replaces it"),
        "{}",
        text(&refused.stderr)
    );
    assert!(get_bytes(&cluster, "/f").unwrap() == old, "the refused put changed nothing");
    // Readers meanwhile see the old file or the new one, whole.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let seen = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut seen = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match get_bytes(&cluster, "/f") {
                    Ok(bytes) if bytes == old => seen.0 += 1,
                    Ok(bytes) if bytes == new => seen.1 += 1,
                    Ok(bytes) => panic!("a reader saw {} bytes, neither file", bytes.len()),
                    // Between its stat and its reads the file was replaced: a fresh get.
                    Err(_) => {}
                }
            }
            seen
        });
        let forced = put(&["--force", new_file.to_str().unwrap(), "/f"]);
        assert!(forced.status.success(), "{}", text(&forced.stderr));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap()
    });
    assert!(seen.0 + seen.1 > 0, "the reader read");
    assert!(get_bytes(&cluster, "/f").unwrap() == new);
    let listed = text(&meshfs(&cluster, &["ls", "/"]).stdout);
    assert!(!listed.contains(".put-"), "no temporary name is left: {listed}");
}

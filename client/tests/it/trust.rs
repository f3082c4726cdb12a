//! Credentials: client configs from `meshfs client add` and `meshfs up`, keys derived from
//! the secret, private files, and removing or re-keying a client while the cluster runs.
//! Real processes on loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use meshfs_client::session::{LockMode, Session};
use meshfs_client::{Access, ClientError, Connection, MetaClient};
use meshfs_group::message::{GroupMessage, Identity};
use meshfs_group::{ClientId, NodeId, Role};
use meshfs_net::frame::{self, Decoder};
use meshfs_test_kit::{DEADLINE, TempDir, wait_until, write_private};

use crate::cluster::{CLIENT_KEY, SECRET, TestCluster, bin_dir};

/// `meshfs --config CONFIG ARGS` under umask 022, whatever the test runner's is.
fn meshfs(config: &Path, args: &[&str]) -> Output {
    meshfs_umask(config, "022", args)
}

/// `meshfs --config CONFIG ARGS` run with the process umask `umask` (octal).
fn meshfs_umask(config: &Path, umask: &str, args: &[&str]) -> Output {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_meshfs"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}: {}{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// `meshfs client add NAME`; the client config it wrote.
fn add_client(cluster: &TestCluster, name: &str) -> std::path::PathBuf {
    let out = ok(&meshfs(&cluster.config_path, &["client", "add", name]));
    assert!(out.contains(&format!("added client {name:?}")), "{out}");
    let path = cluster.dir.join(format!("client-{name}.conf"));
    assert!(out.contains(&path.display().to_string()), "{out}");
    path
}

#[test]
fn a_client_config_from_client_add_does_what_readme_shows_and_holds_no_secret() {
    let mut cluster = TestCluster::new("trust-add", 1, 2);
    let alice = add_client(&cluster, "alice");
    assert_eq!(mode(&alice), 0o600, "a client config is private");
    let text = std::fs::read_to_string(&alice).unwrap();
    assert!(!text.contains(SECRET), "the cluster secret is not in a client config");
    assert!(!text.contains(CLIENT_KEY), "nor another client's key");
    assert!(text.contains("[client]") && text.contains("[[mserver]]"), "{text}");
    // The cluster config got an entry with a salt and no key.
    let config = std::fs::read_to_string(&cluster.config_path).unwrap();
    let entry = config.split("name = \"alice\"").nth(1).unwrap();
    assert!(entry.contains("salt = ") && !entry.contains("key = "), "{config}");
    assert!(ok(&meshfs(&cluster.config_path, &["client", "list"])).contains("alice"));

    cluster.start_all();
    cluster.wait_full_mesh();
    let local = cluster.dir.join("in.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&local, &data).unwrap();
    ok(&meshfs(&alice, &["mkdir", "-p", "/lab/run-1"]));
    ok(&meshfs(&alice, &["put", local.to_str().unwrap(), "/lab/run-1/data.bin"]));
    let back = cluster.dir.join("out.bin");
    ok(&meshfs(&alice, &["get", "/lab/run-1/data.bin", back.to_str().unwrap()]));
    assert_eq!(std::fs::read(&back).unwrap(), data);
    assert!(ok(&meshfs(&alice, &["ls", "/lab/run-1"])).contains("data.bin"));
    // The servers' data is private: data directories 0700, Raft logs, snapshots, block files
    // and locks 0600.
    let mut files = 0;
    for server in &cluster.config.servers {
        assert_eq!(mode(&server.data_dir), 0o700, "{}", server.data_dir.display());
        let mut stack = vec![server.data_dir.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    files += 1;
                    assert_eq!(mode(&path) & 0o077, 0, "{} is readable by others", path.display());
                }
            }
        }
    }
    assert!(files > 6, "the servers wrote logs and blocks ({files} files)");
    assert!(ok(&meshfs(&alice, &["stat", "/lab/run-1/data.bin"])).contains("3000000"));
    let status = ok(&meshfs(&alice, &["status"]));
    assert!(status.contains("3 of 3 servers up"), "{status}");
    // Operator commands want the cluster config.
    let refused = meshfs(&alice, &["client", "list"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cluster config"));
}

/// Runs the group handshake as `identity` proving with `key`; whether the server welcomed it.
fn dial_as(addr: SocketAddr, cluster: &str, identity: Identity, key: &[u8]) -> bool {
    use meshfs_group::auth::{Side, Transcript, prove};
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let send = |stream: &mut TcpStream, message: &GroupMessage| {
        let mut bytes = Vec::new();
        frame::encode(message.kind(), 0, &message.encode(), &mut bytes);
        stream.write_all(&bytes)
    };
    let nonce = [7u8; 32];
    let hello = GroupMessage::Hello { cluster: cluster.into(), identity, incarnation: 1, nonce };
    send(&mut stream, &hello).unwrap();
    let mut decoder = Decoder::new(frame::DEFAULT_MAX_BODY_LEN);
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        decoder.extend_from_slice(&buf[..n]);
        while let Ok(Some(frame)) = decoder.decode() {
            match GroupMessage::decode(frame.kind, &frame.body).unwrap() {
                GroupMessage::Challenge { identity: server, nonce: theirs, .. } => {
                    let transcript = Transcript {
                        cluster,
                        dialer: identity,
                        acceptor: server,
                        dialer_nonce: &nonce,
                        acceptor_nonce: &theirs,
                    };
                    let proof = prove(key, Side::Dialer, &transcript);
                    if send(&mut stream, &GroupMessage::Proof { proof }).is_err() {
                        return false;
                    }
                }
                GroupMessage::Welcome { .. } => return true,
                _ => return false,
            }
        }
    }
}

#[test]
fn a_client_key_cannot_dial_as_a_server() {
    let mut cluster = TestCluster::new("trust-dial", 1, 1);
    let alice = add_client(&cluster, "alice");
    cluster.start_all();
    cluster.wait_full_mesh();
    let access = Access::load(&alice, None).unwrap();
    let addr = cluster.config.servers[0].addr;
    let me = Identity::Client { id: access.credentials.id };
    assert!(dial_as(addr, "it", me, &access.credentials.key), "as itself it is welcome");
    let as_dserver = Identity::Server { id: NodeId(2), role: Role::DServer };
    assert!(!dial_as(addr, "it", as_dserver, &access.credentials.key));
    let as_mserver = Identity::Server { id: NodeId(9), role: Role::MServer };
    assert!(!dial_as(addr, "it", as_mserver, &access.credentials.key));
    cluster.wait_log(1, "dserver 2: wrong cluster secret");
    let other = Identity::Client { id: ClientId(1) };
    assert!(!dial_as(addr, "it", other, &access.credentials.key), "nor as another client");
    assert!(cluster.alive(1));
}

#[test]
fn files_holding_a_secret_or_key_that_others_may_read_are_refused() {
    let dir = TempDir::new("trust-perms");
    let text = crate::cluster::config_text_with(1, 1, SECRET, "");
    let config = dir.join("config.conf");
    write_private(&config, &text);
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = Command::new(bin_dir().join("mserver"))
        .args(["--config", config.to_str().unwrap(), "--id", "1"])
        .output()
        .unwrap();
    assert_eq!(server.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&server.stderr);
    assert!(
        stderr.contains("holds the cluster secret") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    let client = meshfs(&config, &["ls", "/"]);
    assert_eq!(client.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&client.stderr).contains("chmod 600"));

    // The secret in a file of its own: that file must be private; the config need not be.
    let in_file =
        text.replace(&format!("secret = \"{SECRET}\""), "secret_file = \"cluster.secret\"");
    let in_file = in_file.replace(&format!("key = \"{CLIENT_KEY}\""), "salt = \"s\"");
    std::fs::write(&config, &in_file).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let secret = dir.join("cluster.secret");
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
    let client = meshfs(&config, &["client", "list"]);
    assert_eq!(client.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&client.stderr);
    assert!(stderr.contains("cluster.secret") && stderr.contains("chmod 600"), "{stderr}");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(ok(&meshfs(&config, &["client", "list"])).contains("test"));

    // A client config that others may read.
    let added = ok(&meshfs(&config, &["client", "add", "bob"]));
    assert!(added.contains("client-bob.conf"), "{added}");
    let bob = dir.join("client-bob.conf");
    std::fs::set_permissions(&bob, std::fs::Permissions::from_mode(0o604)).unwrap();
    let client = meshfs(&bob, &["ls", "/"]);
    assert_eq!(client.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&client.stderr);
    assert!(stderr.contains("a client key") && stderr.contains("chmod 600"), "{stderr}");
}

#[test]
fn meshfs_up_makes_the_secret_and_a_client_config_that_works() {
    let dir = TempDir::new("trust-up");
    let text = crate::cluster::config_text_with(1, 1, SECRET, "")
        .replace(&format!("secret = \"{SECRET}\""), "secret_file = \"cluster.secret\"")
        .replace(&format!("key = \"{CLIENT_KEY}\""), "salt = \"first\"");
    let config = dir.join("config.conf");
    std::fs::write(&config, text).unwrap();
    let (mut up, rx) = crate::cluster::spawn_up(&config);
    let up_pid = nix::unistd::Pid::from_raw(up.id() as i32);
    let deadline = Instant::now() + DEADLINE;
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("full mesh")) {
        let left = deadline.saturating_duration_since(Instant::now());
        lines.push(rx.recv_timeout(left).expect("meshfs up never reported the full mesh"));
    }
    let secret = dir.join("cluster.secret");
    let client = dir.join("client.conf");
    assert!(lines.iter().any(|l| l.contains("made the cluster secret")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains(&client.display().to_string())), "{lines:?}");
    assert_eq!((mode(&secret), mode(&client)), (0o600, 0o600));
    let secret_text = std::fs::read_to_string(&secret).unwrap();
    assert!(secret_text.trim().len() >= 32);
    assert!(!std::fs::read_to_string(&client).unwrap().contains(secret_text.trim()));
    ok(&meshfs(&client, &["mkdir", "/up"]));
    let local = dir.join("small.txt");
    std::fs::write(&local, b"through the client config").unwrap();
    ok(&meshfs(&client, &["put", local.to_str().unwrap(), "/up/small.txt"]));
    assert_eq!(ok(&meshfs(&client, &["cat", "/up/small.txt"])), "through the client config");
    nix::sys::signal::kill(up_pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = meshfs_test_kit::wait::wait_for("meshfs up to stop", || up.try_wait().unwrap());
    assert!(status.success(), "{status}");
}

#[test]
fn removing_a_client_refuses_it_and_ends_its_sessions_and_rotating_changes_its_key() {
    let mut cluster = TestCluster::new("trust-remove", 1, 1);
    // Leases far longer than the test waits: a session that ends was ended, not expired.
    let text = std::fs::read_to_string(&cluster.config_path).unwrap();
    write_private(&cluster.config_path, &format!("{text}\n[locks]\nsession_lease_ms = 600000\n"));
    cluster.start_all();
    cluster.wait_full_mesh();
    // Added while the cluster runs: the servers re-read the config.
    let bob = add_client(&cluster, "bob");
    let access = Access::load(&bob, None).unwrap();
    let addr = cluster.config.servers[0].addr;
    let open = |access: &Access| {
        Connection::open(addr, "it", &access.credentials, Duration::from_secs(2)).map(|_| ())
    };
    wait_until("the servers to take bob in", || open(&access).is_ok());
    let session = Session::open(&access).unwrap();
    let lock = session.lock("/bob-lock", LockMode::Exclusive, None).unwrap();
    let mut admin = MetaClient::new(&cluster.access).unwrap();
    let holders = |admin: &mut MetaClient| {
        let (locks, _) = meshfs_client::session::list_locks(admin, "/").unwrap();
        locks.iter().flat_map(|l| l.holders.iter().map(|h| h.session.client)).collect::<Vec<_>>()
    };
    assert_eq!(holders(&mut admin), vec![access.credentials.id]);

    let out = ok(&meshfs(&cluster.config_path, &["client", "remove", "bob"]));
    assert!(out.contains("removed client \"bob\""), "{out}");
    wait_until("bob to be refused", || {
        matches!(open(&access), Err(ClientError::AuthFailed { .. }))
    });
    cluster.wait_log(1, "removed [ClientId(");
    wait_until("bob's lock session to end", || holders(&mut admin).is_empty());
    cluster.wait_log(1, "was removed from the config: ending its lock sessions");
    drop(lock);
    drop(session);

    // Rotation: the old key stops working, the new one works.
    let carol = add_client(&cluster, "carol");
    let before = Access::load(&carol, None).unwrap();
    wait_until("the servers to take carol in", || open(&before).is_ok());
    let out = ok(&meshfs(&cluster.config_path, &["client", "rotate", "carol"]));
    assert!(out.contains("new key"), "{out}");
    let after = Access::load(&carol, None).unwrap();
    assert_ne!(before.credentials.key, after.credentials.key);
    wait_until("carol's new key to work", || open(&after).is_ok());
    assert!(open(&before).is_err(), "the old key is refused");
    assert!(cluster.alive(1));
}

#[test]
fn block_reads_need_the_leaders_read_token_for_that_block_client_and_time() {
    use meshfs_client::data::DataClient;
    use meshfs_core::token::ReadToken;
    use meshfs_core::wire::{ErrorCode, Message, ReadBlock};
    let mut cluster = TestCluster::new("trust-read", 1, 1);
    let bob = add_client(&cluster, "bob");
    cluster.start_all();
    cluster.wait_full_mesh();
    let data: Vec<u8> = (0..1_500_000u32).map(|i| (i % 253) as u8).collect();
    let mut meta = MetaClient::new(&cluster.access).unwrap();
    let mut writer = DataClient::new(&cluster.access);
    meshfs_client::data::put(&mut meta, &mut writer, &mut &data[..], "/two", 1, None, &mut ())
        .unwrap();
    let file = meta.get_file_meta_data("/two").unwrap();
    assert_eq!(file.blocks.len(), 2, "1 MiB blocks");
    assert!(file.blocks.iter().all(|b| b.read.is_some()), "each block comes with a token");
    let read = |access: &Access, block: &meshfs_core::namespace::BlockMeta| {
        let mut out = Vec::new();
        DataClient::new(access).read_block(block, 0, 1000, &mut out).map(|()| out)
    };
    assert_eq!(read(&cluster.access, &file.blocks[0]).unwrap(), data[..1000]);

    let refused = |result: Result<Vec<u8>, ClientError>, what: &str| match result {
        Err(ClientError::Forbidden { message, .. }) => {
            assert!(message.contains(what), "{message} lacks {what:?}")
        }
        other => panic!("expected a refusal ({what}), got {other:?}"),
    };
    // Another block's token, a forged one, one signed for this block but expired.
    let mut other_block = file.blocks[0].clone();
    other_block.read = file.blocks[1].read;
    refused(read(&cluster.access, &other_block), "forged");
    let mut forged = file.blocks[0].clone();
    let mut token = forged.read.unwrap();
    token.mac[0] ^= 1;
    forged.read = Some(token);
    refused(read(&cluster.access, &forged), "forged");
    let mut stretched = file.blocks[0].clone();
    stretched.read = Some(ReadToken { expires_ms: u64::MAX, ..file.blocks[0].read.unwrap() });
    refused(read(&cluster.access, &stretched), "forged");
    let mut expired = file.blocks[0].clone();
    let id = cluster.access.credentials.id;
    expired.read = Some(ReadToken::sign(SECRET.as_bytes(), &expired.descriptor, id, 1_000));
    refused(read(&cluster.access, &expired), "expired");
    // Another client's token.
    let bob = Access::load(&bob, None).unwrap();
    wait_until("the servers to take bob in", || MetaClient::new(&bob).unwrap().list("/").is_ok());
    refused(read(&bob, &file.blocks[0]), "forged");
    // With bob's own token it reads.
    let bobs = MetaClient::new(&bob).unwrap().get_file_meta_data("/two").unwrap();
    assert_eq!(read(&bob, &bobs.blocks[1]).unwrap(), data[1 << 20..(1 << 20) + 1000]);
    // No token at all: the old read message is refused from a client.
    let dserver = cluster.config.servers[1].addr;
    let mut conn =
        Connection::open(dserver, "it", &cluster.access.credentials, Duration::from_secs(5))
            .unwrap();
    let plain = ReadBlock { block: file.blocks[0].descriptor, offset: 0, len: 1000 };
    match conn.call(&Message::ReadBlock(plain)) {
        Err(ClientError::Server { code: ErrorCode::Forbidden, message, .. }) => {
            assert!(message.contains("a read token is required"), "{message}")
        }
        other => panic!("a read without a token was answered: {other:?}"),
    }
    // Refused reads are not reported as damaged replicas.
    assert!(cluster.alive(2));
    let status = cluster.status();
    assert!(status.health.is_none_or(|h| h.missing == 0), "{status:?}");
}

#[test]
fn a_write_token_serves_one_write_down_its_chain_only() {
    use meshfs_client::data::DataClient;
    use meshfs_core::wire::{Message, WriteAck, WriteChunk};
    let mut cluster = TestCluster::new("trust-write", 1, 2);
    cluster.start_all();
    cluster.wait_full_mesh();
    let mut meta = MetaClient::new(&cluster.access).unwrap();
    let mut data = DataClient::new(&cluster.access);
    let first = b"the committed bytes".to_vec();
    let token = meta.create_write("/once", 2, first.len() as u64).unwrap();
    assert_eq!(token.replicas.len(), 2);
    // Straight to the second replica of the chain: refused, whoever sends it.
    let second = token.replicas[1];
    let addr = cluster.config.servers.iter().find(|s| s.id == second).unwrap().addr;
    let mut conn =
        Connection::open(addr, "it", &cluster.access.credentials, Duration::from_secs(5)).unwrap();
    let chunk = WriteChunk {
        token: token.clone(),
        block_size: 1 << 20,
        keep_existing: false,
        offset: 0,
        last: true,
        data: b"around the chain".to_vec(),
    };
    match conn.call(&Message::WriteChunk(chunk)).unwrap() {
        Message::WriteAck(WriteAck::Failed { message, .. }) => {
            assert!(message.contains("down the chain"), "{message}")
        }
        other => panic!("a chunk around the chain was taken: {other:?}"),
    }
    let receipt = data.write_block(&token, 1 << 20, 0, &first, false).unwrap();
    meta.commit_write("/once", &receipt).unwrap();
    // The same token again, after its commit: spent; the replicas keep the committed bytes.
    let err = data.write_block(&token, 1 << 20, 0, b"a replayed write!!!", false).unwrap_err();
    assert!(err.to_string().contains("a write token serves one write"), "{err}");
    let file = meta.get_file_meta_data("/once").unwrap();
    for replica in &token.replicas {
        let mut block = file.blocks[0].clone();
        block.replicas = vec![*replica];
        let mut out = Vec::new();
        DataClient::new(&cluster.access)
            .read_block(&block, 0, first.len() as u64, &mut out)
            .unwrap();
        assert_eq!(out, first, "data-server {replica} kept the committed bytes");
    }
}

#[test]
fn another_client_cannot_close_a_session_or_release_its_lock() {
    let mut cluster = TestCluster::new("trust-sessions", 1, 1);
    let bob = add_client(&cluster, "bob");
    cluster.start_all();
    cluster.wait_full_mesh();
    let alice = Session::open(&cluster.access).unwrap();
    let lock = alice.lock("/shared-lock", LockMode::Exclusive, None).unwrap();
    let mut admin = MetaClient::new(&cluster.access).unwrap();
    let (locks, _) = meshfs_client::session::list_locks(&mut admin, "/").unwrap();
    let holder = locks[0].holders[0].session;
    // Bob uses Alice's published session number: his requests are his own session's, as
    // the servers take the client from the authenticated connection.
    let bob = Access::load(&bob, None).unwrap();
    wait_until("the servers to take bob in", || MetaClient::new(&bob).unwrap().list("/").is_ok());
    let mut as_alice = MetaClient::with_session(&bob, holder.nonce, 1).unwrap();
    let unlock = as_alice.call(meshfs_core::wire::MetaOp::Unlock {
        path: meshfs_core::path::MeshPath::parse("/shared-lock").unwrap(),
    });
    assert!(!matches!(unlock, Ok(meshfs_core::wire::MetaReply::Done)), "{unlock:?}");
    let _ = as_alice.call(meshfs_core::wire::MetaOp::CloseSession);
    let (locks, _) = meshfs_client::session::list_locks(&mut admin, "/").unwrap();
    assert_eq!(locks.len(), 1, "Alice's lock is still held");
    assert_eq!(locks[0].holders[0].session, holder, "by Alice's session");
    assert_eq!(holder.client, cluster.access.credentials.id);
    lock.unlock().unwrap();
    drop(alice);
}

#[test]
fn only_an_admin_client_may_drain_or_fsck() {
    let mut cluster = TestCluster::new("trust-admin", 1, 2);
    let alice = add_client(&cluster, "alice");
    let out = ok(&meshfs(&cluster.config_path, &["client", "add", "ops", "--admin"]));
    assert!(out.contains("added client \"ops\""), "{out}");
    let ops = cluster.dir.join("client-ops.conf");
    let list = ok(&meshfs(&cluster.config_path, &["client", "list"]));
    assert!(list.contains("ops (admin)") && !list.contains("alice (admin)"), "{list}");
    cluster.start_all();
    cluster.wait_full_mesh();
    for args in [&["dserver", "drain", "2"][..], &["dserver", "undrain", "2"], &["fsck", "/"]] {
        let refused = meshfs(&alice, args);
        assert_eq!(refused.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("permission denied") && stderr.contains("admin = true"),
            "{stderr}"
        );
    }
    let status = cluster.status();
    assert!(status.data_servers.iter().all(|d| !d.state.contains("draining")), "{status:?}");
    assert!(ok(&meshfs(&ops, &["dserver", "drain", "2"])).contains("draining"));
    cluster.wait_for("data-server 2 draining", |s| {
        s.data_servers.iter().any(|d| d.id == 2 && d.state.contains("draining"))
    });
    ok(&meshfs(&ops, &["dserver", "undrain", "2"]));
    ok(&meshfs(&ops, &["fsck", "/"]));
    // Plain clients still use files.
    ok(&meshfs(&alice, &["mkdir", "/mine"]));
    // Cluster-wide details are for operators: a plain client sees each server up, its role
    // and the leader, not its links, the data-servers' use or the blocks' health.
    let json = |config: &Path| -> serde_json::Value {
        serde_json::from_str(&ok(&meshfs(config, &["status", "--json"]))).unwrap()
    };
    let text = ok(&meshfs(&alice, &["status"]));
    assert!(text.contains("3 of 3 servers up") && text.contains("operators' clients"), "{text}");
    let plain = json(&alice);
    let admin = json(&ops);
    for server in plain["servers"].as_array().unwrap() {
        assert_eq!(server["up"], true);
        assert!(server["peers"].as_array().unwrap().is_empty(), "{server}");
    }
    assert!(plain["data_servers"].as_array().is_none_or(|d| d.is_empty()), "{plain}");
    assert!(plain["servers"][0]["raft_role"].is_string(), "the leader is still found: {plain}");
    assert!(
        admin["servers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| !s["peers"].as_array().unwrap().is_empty())
    );
    assert_eq!(admin["data_servers"].as_array().unwrap().len(), 2, "{admin}");
}

#[test]
fn the_leader_commits_only_when_every_replica_proves_the_bytes_sent() {
    use meshfs_client::data::DataClient;
    use meshfs_core::wire::{MetaOp, MetaReply};
    let mut cluster = TestCluster::new("trust-proofs", 1, 2);
    cluster.start_all();
    cluster.wait_full_mesh();
    let mut meta = MetaClient::new(&cluster.access).unwrap();
    let mut data = DataClient::new(&cluster.access);
    let bytes = b"bytes every replica must prove".to_vec();
    let token = meta.create_write("/proven", 2, bytes.len() as u64).unwrap();
    let receipt = data.write_block(&token, 1 << 20, 0, &bytes, false).unwrap();
    assert_eq!(receipt.proofs.len(), 2);
    assert!(receipt.proofs.iter().all(|p| p.digest == receipt.digest));
    let unproven = |receipt: &meshfs_client::data::WriteReceipt, what: &str| {
        let err = MetaClient::new(&cluster.access)
            .unwrap()
            .commit_write("/proven", receipt)
            .unwrap_err()
            .to_string();
        assert!(err.contains(what) && err.contains("not committed"), "{err}");
    };
    // Other bytes than the replicas wrote (as if one had been sent something else).
    let mut other = receipt.clone();
    other.digest[0] ^= 1;
    unproven(&other, "proves other bytes than the client sent");
    let mut missing = receipt.clone();
    missing.proofs.pop();
    unproven(&missing, "gave no proof of the write");
    let mut forged = receipt.clone();
    forged.proofs[1].mac[0] ^= 1;
    unproven(&forged, "forged or altered proof");
    let mut lied = receipt.clone();
    lied.proofs[1].digest[0] ^= 1;
    lied.digest = lied.proofs[1].digest;
    unproven(&lied, "data-server");
    // The old commit, without proofs, is refused.
    let old = MetaOp::CommitWrite {
        path: meshfs_core::path::MeshPath::parse("/proven").unwrap(),
        index: 0,
        version: token.block.version,
    };
    match meta.call(old).unwrap() {
        MetaReply::Failed(err) => assert!(err.to_string().contains("proofs"), "{err}"),
        other => panic!("an unproven commit was taken: {other:?}"),
    }
    let file = meta.get_file_meta_data("/proven").unwrap();
    assert_ne!(file.blocks[0].descriptor.version, token.block.version, "nothing committed");
    // The true receipt commits, and readers see the bytes.
    meta.commit_write("/proven", &receipt).unwrap();
    let mut out = Vec::new();
    meshfs_client::data::get(&mut meta, &mut data, "/proven", &mut out, &mut ()).unwrap();
    assert_eq!(out, bytes);
}

fn fails_with(output: &Output, what: &str) {
    assert!(!output.status.success(), "expected a refusal ({what})");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(what), "{stderr} lacks {what:?}");
}

#[test]
fn owners_and_modes_decide_who_reads_writes_and_removes_and_survive_leader_changes_and_snapshots() {
    let mut cluster = TestCluster::new_with("trust-modes", 3, 1, "snapshot_entries = 16");
    let add = |name: &str, uid: &str| {
        let args = ["client", "add", name, "--uid", uid, "--gids", uid];
        ok(&meshfs(&cluster.config_path, &args));
        cluster.dir.join(format!("client-{name}.conf"))
    };
    let (alice, bob) = (add("alice", "1001"), add("bob", "1002"));
    let admin = cluster.config_path.clone();
    cluster.start_all();
    cluster.wait_for("a leader", |s| s.agreed_leader().is_some());
    let local = cluster.dir.join("secret.txt");
    std::fs::write(&local, b"alice's secret").unwrap();
    ok(&meshfs(&alice, &["mkdir", "/alice"]));
    ok(&meshfs(&alice, &["put", local.to_str().unwrap(), "/alice/secret"]));
    ok(&meshfs(&alice, &["chmod", "600", "/alice/secret"]));
    let listing = ok(&meshfs(&alice, &["ls", "-l", "/alice"]));
    assert!(listing.contains("-rw-------   1001   1001"), "{listing}");
    // Bob may list Alice's 0755 directory but not read her 0600 file, nor change the
    // directory.
    assert!(ok(&meshfs(&bob, &["ls", "/alice"])).contains("secret"));
    fails_with(&meshfs(&bob, &["cat", "/alice/secret"]), "may not read it");
    fails_with(&meshfs(&bob, &["rm", "/alice/secret"]), "permission denied");
    fails_with(&meshfs(&bob, &["mkdir", "/alice/bobs"]), "permission denied");
    fails_with(&meshfs(&bob, &["mv", "/alice/secret", "/stolen"]), "permission denied");
    fails_with(&meshfs(&bob, &["chmod", "644", "/alice/secret"]), "permission denied");
    fails_with(&meshfs(&alice, &["chown", "1002", "/alice/secret"]), "permission denied");
    // The root is sticky: Bob's directory is his to remove, not Alice's.
    ok(&meshfs(&bob, &["mkdir", "/bobs"]));
    fails_with(&meshfs(&alice, &["rm", "-r", "/bobs"]), "sticky");
    // An operator reads and changes anything.
    assert_eq!(ok(&meshfs(&admin, &["cat", "/alice/secret"])), "alice's secret");
    ok(&meshfs(&admin, &["chown", "1002:1002", "/alice/secret"]));
    assert_eq!(ok(&meshfs(&bob, &["cat", "/alice/secret"])), "alice's secret", "now Bob's");
    fails_with(&meshfs(&alice, &["cat", "/alice/secret"]), "may not read it");
    ok(&meshfs(&bob, &["chmod", "640", "/alice/secret"]));
    let expect = "-rw-r-----   1002   1002";
    // A leader change: the new leader has the same owners and modes.
    let leader = cluster.status().agreed_leader().unwrap();
    cluster.kill9(leader);
    cluster.wait_for("a new leader", |s| s.agreed_leader().is_some_and(|l| l != leader));
    assert!(ok(&meshfs(&alice, &["ls", "-l", "/alice"])).contains(expect));
    cluster.start(leader);
    // More than snapshot_entries changes, then every server restarts from its snapshot.
    for i in 0..20 {
        ok(&meshfs(&bob, &["mkdir", &format!("/bobs/d{i}")]));
    }
    for id in cluster.ids() {
        cluster.kill9(id);
    }
    cluster.start_all();
    cluster.wait_for("a leader after the restart", |s| s.agreed_leader().is_some());
    let listing = ok(&meshfs(&alice, &["ls", "-l", "/alice"]));
    assert!(listing.contains(expect), "{listing}");
    let root = ok(&meshfs(&bob, &["ls", "-l", "/"]));
    assert!(root.contains("drwxr-xr-x   1001   1001") && root.contains("alice"), "{root}");
    assert!(root.contains("drwxr-xr-x   1002   1002") && root.contains("bobs"), "{root}");
    let snapshots = (1..=3)
        .filter(|id| cluster.dir.join(format!("data/mserver-{id}/raft/snapshot")).exists())
        .count();
    assert!(snapshots > 0, "the meta-servers took snapshots");
}

#[test]
fn only_a_trusted_client_acts_for_other_users() {
    let mut cluster = TestCluster::new("trust-trusted", 1, 1);
    ok(&meshfs(&cluster.config_path, &["client", "add", "mount", "--uid", "500", "--trusted"]));
    let plain = add_client(&cluster, "plain");
    let mount = cluster.dir.join("client-mount.conf");
    assert!(ok(&meshfs(&cluster.config_path, &["client", "list"])).contains("mount (trusted)"));
    cluster.start_all();
    cluster.wait_full_mesh();
    // The mount acts for local user 1001: what it makes is 1001's, checked as 1001.
    let mut as_user = MetaClient::new(&Access::load(&mount, None).unwrap()).unwrap();
    as_user.set_umask(0o022);
    as_user.act_for(1001, vec![1001]);
    as_user.mkdir("/home-1001", false).unwrap();
    as_user.create("/home-1001/f", 1).unwrap();
    let mut as_other = MetaClient::new(&Access::load(&mount, None).unwrap()).unwrap();
    as_other.act_for(1002, vec![1002]);
    let err = as_other.create("/home-1001/g", 1).unwrap_err().to_string();
    assert!(err.contains("permission denied"), "{err}");
    let listing = ok(&meshfs(&cluster.config_path, &["ls", "-l", "/"]));
    assert!(
        listing.contains("drwxr-xr-x   1001   1001") && listing.contains("home-1001"),
        "{listing}"
    );
    // Acting for another user never carries an operator's powers.
    let mut as_root = MetaClient::new(&Access::load(&mount, None).unwrap()).unwrap();
    as_root.act_for(0, vec![0]);
    let err = as_root.remove("/home-1001", true).unwrap_err().to_string();
    assert!(err.contains("permission denied"), "{err}");
    // A client that is not trusted may not act for anyone.
    let mut impostor = MetaClient::new(&Access::load(&plain, None).unwrap()).unwrap();
    impostor.act_for(1001, vec![1001]);
    let err = impostor.remove("/home-1001", true).unwrap_err().to_string();
    assert!(err.contains("may not act for other users"), "{err}");
    assert!(ok(&meshfs(&cluster.config_path, &["ls", "/home-1001"])).contains("f"));
}

#[test]
fn new_inodes_take_the_mode_asked_for_less_the_umask_and_stat_shows_owners() {
    let mut cluster = TestCluster::new("trust-umask", 1, 1);
    let add = |name: &str, uid: &str| {
        ok(&meshfs(&cluster.config_path, &["client", "add", name, "--uid", uid, "--gids", uid]));
        cluster.dir.join(format!("client-{name}.conf"))
    };
    let (alice, bob) = (add("alice", "1001"), add("bob", "1002"));
    cluster.start_all();
    cluster.wait_full_mesh();
    // The process umask is applied by the client, as open(2) and mkdir(2) have it.
    ok(&meshfs_umask(&alice, "077", &["mkdir", "/private"]));
    let local = cluster.dir.join("data.txt");
    std::fs::write(&local, b"numbers").unwrap();
    ok(&meshfs_umask(&alice, "027", &["put", local.to_str().unwrap(), "/group-file"]));
    // -m names the mode exactly, umask or not.
    ok(&meshfs_umask(&alice, "077", &["mkdir", "-m", "1770", "/shared"]));
    ok(&meshfs_umask(&alice, "000", &["create", "-m", "4750", "/tool"]));
    ok(&meshfs_umask(&alice, "077", &["mkdir", "-p", "-m", "500", "/deep/er"]));
    let root = ok(&meshfs(&alice, &["ls", "-l", "/"]));
    for (mode, name) in [
        ("drwx------   1001   1001", "private"),
        ("-rw-r-----   1001   1001", "group-file"),
        ("drwxrwx--T   1001   1001", "shared"),
        ("-rwsr-x---   1001   1001", "tool"),
        ("drwx------   1001   1001", "deep"),
    ] {
        assert!(root.lines().any(|l| l.starts_with(mode) && l.ends_with(name)), "{name}: {root}");
    }
    let stat = ok(&meshfs(&alice, &["stat", "/deep/er"]));
    assert!(stat.contains("access      dr-x------ (0500)  uid 1001  gid 1001"), "{stat}");
    let stat = ok(&meshfs(&bob, &["stat", "/group-file"]));
    assert!(stat.contains("access      -rw-r----- (0640)  uid 1001  gid 1001"), "{stat}");
    // The modes are enforced: Bob may neither list the private directory nor read the file.
    fails_with(&meshfs(&bob, &["ls", "/private"]), "permission denied");
    fails_with(&meshfs(&bob, &["cat", "/group-file"]), "may not read it");
    // Modes beyond 7777 or not octal are usage errors, before anything is sent.
    for bad in ["8", "17777", "rw"] {
        let out = meshfs(&alice, &["mkdir", "-m", bad, "/bad"]);
        assert_eq!(out.status.code(), Some(2), "-m {bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("not an octal mode"), "-m {bad}");
    }
    assert!(!ok(&meshfs(&alice, &["ls", "/"])).contains("bad"));
    // The library: its umask, or exactly the mode given.
    let mut meta = MetaClient::new(&Access::load(&alice, None).unwrap()).unwrap();
    meta.set_umask(0o002);
    meta.mkdir("/lib-dir", false).unwrap();
    meta.create_mode("/lib-dir/f", 1, 0o604).unwrap();
    let owner = |meta: &mut MetaClient, path: &str| meta.stat(path).unwrap().owner();
    assert_eq!(owner(&mut meta, "/lib-dir").mode, 0o775);
    assert_eq!(owner(&mut meta, "/lib-dir/f").mode, 0o604);
    assert!(matches!(meta.mkdir_mode("/x", false, 0o10000), Err(ClientError::BadMode(0o10000))));
}

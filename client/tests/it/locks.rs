//! The lock service with real processes: mutual exclusion, writer preference, a killed
//! holder, a killed leader, sequencers, and `meshfs lock` / `meshfs locks`.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use meshfs_client::file::{OpenMode, RemoteFile};
use meshfs_client::session::{LockMode, Session, SessionState, list_locks};
use meshfs_client::{ClientError, MetaClient};
use meshfs_core::error::NsError;
use meshfs_test_kit::wait_until;

use super::cluster::{DEADLINE, TestCluster};
use super::text;

/// Runs `meshfs --config CONFIG ARGS...` (the config first: `lock` ends with a command).
fn meshfs(cluster: &TestCluster, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meshfs"))
        .arg("--config")
        .arg(&cluster.config_path)
        .args(args)
        .output()
        .unwrap()
}

/// A `[locks]` table for tests.
fn locks_table(lease_ms: u64, delay_ms: u64) -> String {
    format!("\n[locks]\nsession_lease_ms = {lease_ms}\nlock_delay_ms = {delay_ms}\n")
}

fn session(cluster: &TestCluster) -> Session {
    Session::open(&cluster.access).unwrap()
}

/// The holders' sequencers and the number of waiters of `path`'s lock, as the leader lists.
fn lock_state(cluster: &TestCluster, path: &str) -> (Vec<u64>, usize) {
    let mut meta = MetaClient::new(&cluster.access).unwrap();
    let (locks, _) = list_locks(&mut meta, path).unwrap();
    match locks.iter().find(|l| l.path.as_str() == path) {
        Some(l) => (l.holders.iter().map(|h| h.sequencer).collect(), l.waiters.len()),
        None => (Vec::new(), 0),
    }
}

fn busy(result: Result<meshfs_client::Lock, ClientError>) -> String {
    match result {
        Err(ClientError::Namespace(err @ NsError::LockBusy { .. })) => err.to_string(),
        other => panic!("expected the lock to be busy, got {other:?}"),
    }
}

#[test]
fn eight_clients_incrementing_a_counter_under_an_exclusive_lock_end_with_400() {
    let mut cluster = TestCluster::new("locks-counter", 3, 1);
    cluster.start_all();
    let mut file = RemoteFile::create(&cluster.access, "/counter", 1).unwrap();
    file.write_at(0, format!("{:020}", 0).as_bytes()).unwrap();
    // The sequencers in the order the lock was held: each appended while holding it.
    let grants = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let access = cluster.access.clone();
            let grants = Arc::clone(&grants);
            std::thread::spawn(move || {
                let session = Session::open(&access).unwrap();
                let mut file = RemoteFile::open(&access, "/counter").unwrap();
                for _ in 0..50 {
                    let lock = session
                        .lock("/counter", LockMode::Exclusive, Some(Duration::from_secs(120)))
                        .unwrap();
                    grants.lock().unwrap().push(lock.sequencer());
                    let mut bytes = [0u8; 20];
                    file.refresh().unwrap();
                    assert_eq!(file.read_at(0, &mut bytes).unwrap(), 20);
                    let n: u64 = std::str::from_utf8(&bytes).unwrap().parse().unwrap();
                    file.write_at(0, format!("{:020}", n + 1).as_bytes()).unwrap();
                    lock.unlock().unwrap();
                }
                session.close().unwrap();
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let mut bytes = [0u8; 20];
    file.refresh().unwrap();
    file.read_at(0, &mut bytes).unwrap();
    assert_eq!(std::str::from_utf8(&bytes).unwrap(), format!("{:020}", 400));
    let grants = grants.lock().unwrap();
    assert_eq!(grants.len(), 400);
    assert!(grants.windows(2).all(|w| w[0] < w[1]), "sequencers only increase: {grants:?}");
    assert_eq!(lock_state(&cluster, "/counter"), (vec![], 0), "nothing left held");
}

#[test]
fn a_writer_waiting_behind_a_stream_of_readers_gets_the_lock() {
    let mut cluster = TestCluster::new("locks-writer", 3, 1);
    cluster.start_all();
    // Readers hand the lock on: the next reader takes it before the last lets go, so it is
    // never free. Without writer preference the writer would wait for ever.
    let readers: Vec<Session> = (0..4).map(|_| session(&cluster)).collect();
    let writer = session(&cluster);
    let (queued_tx, queued_rx) = mpsc::channel();
    let writing = std::thread::spawn(move || {
        queued_rx.recv().unwrap();
        writer.lock("/shared-doc", LockMode::Exclusive, Some(Duration::from_secs(60)))
    });
    let mut held = readers[0].lock("/shared-doc", LockMode::Shared, None).unwrap();
    let mut refused = None;
    for i in 1..=500 {
        if i == 5 {
            queued_tx.send(()).unwrap();
            wait_until("the writer to queue", || lock_state(&cluster, "/shared-doc").1 == 1);
        }
        match readers[i % readers.len()].lock("/shared-doc", LockMode::Shared, None) {
            Ok(next) => {
                held.unlock().unwrap();
                held = next;
            }
            Err(err) => {
                refused = Some((i, err));
                break;
            }
        }
    }
    let (at, err) = refused.expect("the readers' stream went on past a waiting writer");
    assert_eq!(at, 5, "the first reader after the writer queued is refused");
    let message = busy(Err(err));
    assert!(message.contains("1 waiting"), "{message}");
    let reader_sequencer = held.sequencer();
    held.unlock().unwrap();
    let lock = writing.join().unwrap().expect("the writer gets the lock");
    assert_eq!(lock.mode(), LockMode::Exclusive);
    assert!(lock.sequencer() > reader_sequencer);
}

#[test]
fn a_killed_holder_s_lock_goes_to_the_next_waiter_after_lease_and_lock_delay() {
    const LEASE_MS: u64 = 2000;
    const DELAY_MS: u64 = 1500;
    let mut cluster =
        TestCluster::new_with("locks-kill-holder", 3, 1, &locks_table(LEASE_MS, DELAY_MS));
    cluster.start_all();
    // The holder: a real `meshfs lock` process running a command that would hold it long.
    let pid_file = cluster.dir.join("holder.pid");
    let mut holder = Command::new(env!("CARGO_BIN_EXE_meshfs"))
        .arg("--config")
        .arg(&cluster.config_path)
        .args(["lock", "/job", "--", "sh", "-c"])
        .arg(format!("echo $$ > {}; exec sleep 120", pid_file.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the holder to take the lock", || lock_state(&cluster, "/job").0.len() == 1);
    let first = lock_state(&cluster, "/job").0[0];
    let waiter = session(&cluster);
    let (granted_tx, granted_rx) = mpsc::channel();
    let waiting = std::thread::spawn(move || {
        let lock = waiter.lock("/job", LockMode::Exclusive, Some(Duration::from_secs(60)));
        granted_tx.send(Instant::now()).unwrap();
        (lock, waiter)
    });
    wait_until("the waiter to queue", || lock_state(&cluster, "/job").1 == 1);
    holder.kill().unwrap();
    let killed = Instant::now();
    holder.wait().unwrap();
    wait_until("the holder's command to write its pid", || pid_file.exists());
    let sleeper = std::fs::read_to_string(&pid_file).unwrap();
    let _ = Command::new("kill").args(["-9", sleeper.trim()]).status();

    let granted = granted_rx.recv_timeout(DEADLINE).expect("the waiter is granted the lock");
    let (lock, _waiter) = waiting.join().unwrap();
    let lock = lock.unwrap();
    // The holder's last KeepAlive went at most a third of a lease before the kill.
    let earliest = Duration::from_millis(LEASE_MS * 2 / 3 + DELAY_MS);
    let after = granted - killed;
    assert!(after >= earliest, "granted {after:?} after the kill, before lease and lock-delay");
    assert!(lock.sequencer() > first);
}

#[test]
fn holders_keep_their_locks_when_the_leader_is_killed() {
    const LEASE_MS: u64 = 3000;
    let mut cluster = TestCluster::new_with("locks-kill-leader", 3, 1, &locks_table(LEASE_MS, 0));
    cluster.start_all();
    let writer = session(&cluster);
    let readers = [session(&cluster), session(&cluster)];
    let exclusive = writer.lock("/db/primary", LockMode::Exclusive, None).unwrap();
    let shared: Vec<_> =
        readers.iter().map(|r| r.lock("/db/replica", LockMode::Shared, None).unwrap()).collect();
    let before = (lock_state(&cluster, "/db/primary"), lock_state(&cluster, "/db/replica"));

    let leader =
        cluster.wait_for("a leader", |s| s.agreed_leader().is_some()).agreed_leader().unwrap();
    cluster.kill9(leader);
    let killed = Instant::now();
    cluster.wait_for("a new leader", |s| s.agreed_leader().is_some_and(|l| l != leader));
    // Two leases past the kill: without the sessions in the replicated state (or with the
    // new leader expiring them at once) the locks would be gone by now.
    wait_until("two leases to pass", || killed.elapsed() >= Duration::from_millis(2 * LEASE_MS));
    wait_until("the sessions to be safe", || {
        [&writer, &readers[0], &readers[1]].iter().all(|s| s.state() == SessionState::Safe)
    });
    let after = (lock_state(&cluster, "/db/primary"), lock_state(&cluster, "/db/replica"));
    assert_eq!(after, before, "the same holders, with the same sequencers");
    let other = session(&cluster);
    busy(other.lock("/db/primary", LockMode::Shared, None));
    drop(shared);
    exclusive.unlock().unwrap();
    let next = other.lock("/db/primary", LockMode::Exclusive, None).unwrap();
    assert!(next.sequencer() > before.0.0[0], "sequencers only increase across leaders");
}

#[test]
fn meshfs_lock_runs_the_command_under_the_lock_and_meshfs_locks_lists_it() {
    let mut cluster = TestCluster::new("locks-cli", 3, 1);
    cluster.start_all();
    let out = meshfs(
        &cluster,
        &["lock", "/tool", "--", "sh", "-c", "echo seq=$MESHFS_LOCK_SEQUENCER; exit 7"],
    );
    assert_eq!(out.status.code(), Some(7), "the command's status: {}", text(&out.stderr));
    let seq: u64 = text(&out.stdout).trim().strip_prefix("seq=").unwrap().parse().unwrap();
    assert!(seq >= 1);

    let holder = session(&cluster);
    let held = holder.lock("/tool", LockMode::Shared, None).unwrap();
    assert!(held.sequencer() > seq);
    // Shared with a shared holder: runs at once.
    let out = meshfs(&cluster, &["lock", "--shared", "--timeout", "0", "/tool", "--", "true"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Exclusive: tried once, or waited for half a second; exit status 75 and why.
    let out = meshfs(&cluster, &["lock", "--timeout", "0", "/tool", "--", "true"]);
    assert_eq!(out.status.code(), Some(75), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("held shared by 1 session"), "{}", text(&out.stderr));
    let started = Instant::now();
    let out = meshfs(&cluster, &["lock", "--timeout", "0.5", "/tool", "--", "true"]);
    assert_eq!(out.status.code(), Some(75), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("not granted within the timeout"), "{}", text(&out.stderr));
    assert!(started.elapsed() >= Duration::from_millis(500));

    // A waiter, listed behind the holder.
    let mut waiting = Command::new(env!("CARGO_BIN_EXE_meshfs"))
        .arg("--config")
        .arg(&cluster.config_path)
        .args(["lock", "/tool", "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the waiter to queue", || lock_state(&cluster, "/tool").1 == 1);
    let listed = meshfs(&cluster, &["locks"]);
    let listing = text(&listed.stdout);
    assert!(listing.starts_with("/tool\n"), "{listing}");
    assert!(listing.contains(&format!("held shared by client 1 session {:016x}", holder.id().1)));
    assert!(listing.contains(&format!("sequencer {}", held.sequencer())), "{listing}");
    assert!(listing.contains("waiting exclusive: client 1"), "{listing}");
    let json = text(&meshfs(&cluster, &["locks", "/tool", "--json"]).stdout);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["locks"][0]["holders"][0]["sequencer"], held.sequencer());
    assert_eq!(value["locks"][0]["waiters"][0]["mode"], "exclusive");
    // Released: the waiter runs and exits 0.
    held.unlock().unwrap();
    let status = waiting.wait().unwrap();
    assert!(status.success());
    assert_eq!(text(&meshfs(&cluster, &["locks"]).stdout), "no locks at or under /\n");
    let out = meshfs(&cluster, &["lock", "relative", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not absolute"), "{}", text(&out.stderr));
}

#[test]
fn open_modes_take_the_file_s_lock_and_conflicting_opens_fail_or_wait() {
    let mut cluster = TestCluster::new("locks-open", 3, 1);
    cluster.start_all();
    let access = cluster.access.clone();
    let mut file = RemoteFile::create(&access, "/doc", 1).unwrap();
    file.write_at(0, b"v1").unwrap();
    file.close().unwrap();
    let open = |session: &Session, mode: &str, wait: Option<Duration>| {
        let mode: OpenMode = mode.parse().unwrap();
        RemoteFile::open_mode(&access, session, "/doc", mode, wait)
    };
    let (a, b) = (session(&cluster), session(&cluster));

    let mut writer = open(&a, "wm", None).unwrap();
    for mode in ["rs", "ws", "wm"] {
        let err = open(&b, mode, None).unwrap_err().to_string();
        assert!(err.contains("/doc is locked: held exclusive by client 1"), "{mode}: {err}");
    }
    // A reader that asks to wait gets in when the writer closes.
    let waiting = {
        let (access, b) = (access.clone(), b.clone());
        std::thread::spawn(move || {
            let wait = Some(Duration::from_secs(60));
            let mut file =
                RemoteFile::open_mode(&access, &b, "/doc", OpenMode::SharedRead, wait).unwrap();
            let mut bytes = [0u8; 2];
            file.read_at(0, &mut bytes).unwrap();
            let refused = file.write_at(0, b"no").unwrap_err();
            (bytes, refused.to_string(), file)
        })
    };
    wait_until("the reader to queue", || lock_state(&cluster, "/doc").1 == 1);
    writer.write_at(0, b"v2").unwrap();
    writer.close().unwrap();
    let (bytes, refused, reader) = waiting.join().unwrap();
    assert_eq!(&bytes, b"v2", "the reader sees what the writer wrote before closing");
    assert!(refused.contains("/doc is open read-only (mode rs)"), "{refused}");
    // rs and ws go together; wm waits for both to close.
    let mut shared_writer = open(&a, "ws", None).unwrap();
    shared_writer.write_at(2, b"+ws").unwrap();
    let err = open(&session(&cluster), "wm", Some(Duration::from_millis(300))).unwrap_err();
    assert!(err.to_string().contains("not granted within the timeout"), "{err}");
    reader.close().unwrap();
    shared_writer.close().unwrap();
    let mut last = open(&b, "wm", None).unwrap();
    assert!(last.sequencer().is_some());
    let mut bytes = [0u8; 5];
    last.read_at(0, &mut bytes).unwrap();
    assert_eq!(&bytes, b"v2+ws");
    assert!("xx".parse::<OpenMode>().unwrap_err().contains("expected wm"));
}

#[test]
fn bench_locks_measures_uncontended_and_contended_pairs() {
    let cluster = TestCluster::new("locks-bench", 3, 1);
    let out = meshfs(
        &cluster,
        &[
            "bench",
            "--local",
            "locks",
            "--pairs",
            "40",
            "--clients",
            "1,4",
            "--contended",
            "4",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for case in ["uncontended_1", "uncontended_4", "contended_4"] {
        let rate = json["results"][format!("{case}_pairs_per_s")].as_f64().unwrap();
        let p99 = json["results"][format!("{case}_p99_us")].as_u64().unwrap();
        assert!(rate > 0.0 && p99 > 0, "{case}: {json}");
    }
}

#[test]
fn a_session_cut_off_from_the_meta_servers_is_in_jeopardy_then_safe_or_expired() {
    const LEASE_MS: u64 = 1500;
    let mut cluster = TestCluster::new_with("locks-events", 3, 1, &locks_table(LEASE_MS, 0));
    cluster.start_all();
    let session = session(&cluster);
    let lock = session.lock("/leader", LockMode::Exclusive, None).unwrap();
    let events = session.events();
    let next =
        |what: &str| events.recv_timeout(DEADLINE).unwrap_or_else(|_| panic!("no {what} event"));
    // No majority: KeepAlives go unanswered and the lease lapses.
    cluster.kill9(1);
    cluster.kill9(2);
    assert_eq!(next("jeopardy"), meshfs_client::SessionEvent::Jeopardy);
    assert_eq!(session.state(), SessionState::Jeopardy);
    // The majority is back within the grace period: the session and its lock are intact.
    cluster.start(1);
    cluster.start(2);
    assert_eq!(next("safe"), meshfs_client::SessionEvent::Safe);
    let (holders, _) = lock_state(&cluster, "/leader");
    assert_eq!(holders, vec![lock.sequencer()], "still held, by the same grant");
    // Cut off for good: after one more lease without an answer the session is expired.
    cluster.kill9(1);
    cluster.kill9(2);
    assert_eq!(next("jeopardy"), meshfs_client::SessionEvent::Jeopardy);
    assert_eq!(next("expired"), meshfs_client::SessionEvent::Expired);
    let err = session.lock("/other", LockMode::Shared, None).unwrap_err();
    assert!(matches!(err, ClientError::Namespace(NsError::SessionExpired { .. })), "{err}");
    drop(lock);
}

#[test]
fn a_waiter_whose_leader_dies_is_granted_by_the_next_leader() {
    let mut cluster = TestCluster::new_with("locks-wait-leader", 3, 1, &locks_table(3000, 0));
    cluster.start_all();
    let holder = session(&cluster);
    let held = holder.lock("/w", LockMode::Exclusive, None).unwrap();
    let waiter = session(&cluster);
    let waiting = std::thread::spawn(move || {
        let lock = waiter.lock("/w", LockMode::Exclusive, Some(Duration::from_secs(60)));
        (lock, waiter)
    });
    wait_until("the waiter to queue", || lock_state(&cluster, "/w").1 == 1);
    let leader =
        cluster.wait_for("a leader", |s| s.agreed_leader().is_some()).agreed_leader().unwrap();
    cluster.kill9(leader);
    cluster.wait_for("a new leader", |s| s.agreed_leader().is_some_and(|l| l != leader));
    assert_eq!(lock_state(&cluster, "/w").1, 1, "still queued under the new leader");
    let first = held.sequencer();
    held.unlock().unwrap();
    let (lock, _waiter) = waiting.join().unwrap();
    let lock = lock.expect("the waiter retried at the new leader and was granted");
    assert!(lock.sequencer() > first);
}

//! Faults against real processes: servers at addresses of their own (127.0.0.11, ...) and
//! partitions between them made with the kernel's packet filter (nftables). Every rule a
//! test adds is removed when its `Partition` is dropped, also when the test fails.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use meshfs_client::MetaClient;
use meshfs_client::data::DataClient;
use meshfs_client::status::ClusterStatus;
use meshfs_test_kit::partition::Partition;

use crate::cluster::TestCluster;

/// The leader the meta-servers other than `except` agree on, if they all see one.
fn leader_without(status: &ClusterStatus, except: u32) -> Option<u32> {
    let views: Vec<Option<u32>> = status
        .servers
        .iter()
        .filter(|s| s.role == "mserver" && s.id != except)
        .map(|s| s.leader)
        .collect();
    let first = (*views.first()?)?;
    (views.iter().all(|l| *l == Some(first)) && first != except).then_some(first)
}

fn put(meta: &mut MetaClient, access: &meshfs_client::Access, path: &str, bytes: &[u8]) {
    let mut data = DataClient::new(access);
    let put = meshfs_client::data::put(meta, &mut data, &mut &bytes[..], path, 1, None, &mut ());
    put.unwrap_or_else(|e| panic!("put {path}: {e}"));
}

fn get(meta: &mut MetaClient, access: &meshfs_client::Access, path: &str) -> Vec<u8> {
    let mut data = DataClient::new(access);
    let mut out = Vec::new();
    meshfs_client::data::get(meta, &mut data, path, &mut out, &mut ()).unwrap();
    out
}

/// Whether the leader sees every data-server up and reporting (so writes can be placed).
fn data_servers_up(status: &ClusterStatus) -> bool {
    let Some(leader) = status.agreed_leader() else { return false };
    let dservers = status.servers.iter().filter(|s| s.role == "dserver").count();
    status.servers.iter().find(|s| s.id == leader).is_some_and(|l| {
        l.data_servers.len() == dservers
            && l.data_servers.iter().all(|d| d.state == "up" && d.complete)
    })
}

/// The leader cut off from every other server: the other two elect one of themselves and
/// serve writes; the partition healed, the old leader follows the new one, every server
/// sees every other, and what was written before and during the partition reads back.
#[test]
fn a_leader_partitioned_away_is_replaced_and_after_the_heal_nothing_is_lost() {
    let mut cluster = TestCluster::new_spread("faults-leader", 3, 1);
    cluster.start_all();
    let status = cluster.wait_for("a leader that sees the data-server", |s| {
        s.fully_connected() && data_servers_up(s)
    });
    let old = status.agreed_leader().unwrap();
    let mut meta = MetaClient::new(&cluster.access).unwrap();
    let before: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    put(&mut meta, &cluster.access, "/before", &before);

    let servers = addresses(&cluster);
    let cut = Partition::isolate(cluster.ip(old), &servers).unwrap();
    let started = Instant::now();
    let status = cluster
        .wait_for("the majority to elect another leader", |s| leader_without(s, old).is_some());
    let new = leader_without(&status, old).unwrap();
    let elected_in = started.elapsed();
    assert_ne!(new, old);
    // The majority serves: a write through the new leader, to the data-server it still sees.
    let during: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    put(&mut meta, &cluster.access, "/during", &during);

    cut.heal().unwrap();
    let healed = Instant::now();
    cluster.wait_for("one leader seen by all, every link up", |s| {
        s.fully_connected() && s.agreed_leader().is_some()
    });
    let rejoined_in = healed.elapsed();
    assert_eq!(get(&mut meta, &cluster.access, "/before"), before);
    assert_eq!(get(&mut meta, &cluster.access, "/during"), during);
    assert!(cluster.alive(old), "the old leader stays up through it");
    eprintln!("new leader in {elected_in:?}; rejoined {rejoined_in:?} after the heal");
    assert!(elected_in < Duration::from_secs(20));
    assert!(rejoined_in < Duration::from_secs(20));
}

/// Register operations on small files, recorded for the linearizability checker.
mod registers {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    use meshfs_client::Access;
    use meshfs_client::file::RemoteFile;
    use meshfs_test_kit::linearizable::{Call, RegisterOp, RegisterRet};

    pub type History = Vec<Call<RegisterOp<u64>, RegisterRet<u64>>>;

    fn now(base: Instant) -> u64 {
        base.elapsed().as_nanos() as u64
    }

    pub fn write(access: &Access, path: &str, value: u64) -> Result<(), String> {
        let mut file = RemoteFile::open(access, path).map_err(|e| e.to_string())?;
        file.write_at(0, &value.to_le_bytes()).map_err(|e| e.to_string())
    }

    /// Creates `path` holding the value 0, in `replication` copies.
    pub fn write_new(access: &Access, path: &str, replication: u8) {
        let mut file = RemoteFile::create(access, path, replication).unwrap();
        file.write_at(0, &0u64.to_le_bytes()).unwrap();
    }

    pub fn read(access: &Access, path: &str) -> Result<u64, String> {
        let mut file = RemoteFile::open(access, path).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 8];
        let n = file.read_at(0, &mut buf).map_err(|e| e.to_string())?;
        if n != 8 {
            return Err(format!("read {n} bytes"));
        }
        Ok(u64::from_le_bytes(buf))
    }

    /// Writes unique values to `path` until `stop`: a write that failed may still have
    /// taken effect (a commit whose answer was lost), so it is recorded as never returned.
    pub fn writer(
        access: Access,
        path: String,
        id: u64,
        base: Instant,
        stop: Arc<AtomicBool>,
        acked: Arc<std::sync::atomic::AtomicU64>,
    ) -> History {
        let mut history = History::new();
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let value = (id << 32) | n;
            let invoked = now(base);
            let returned =
                write(&access, &path, value).ok().map(|()| (now(base), RegisterRet::Written));
            if returned.is_some() {
                acked.fetch_add(1, Ordering::Relaxed);
            }
            history.push(Call { op: RegisterOp::Write(value), invoked, returned });
        }
        history
    }

    /// Reads each of `paths` in turn until `stop`: failed reads changed nothing and are left
    /// out.
    pub fn reader(
        access: Access,
        paths: Vec<String>,
        base: Instant,
        stop: Arc<AtomicBool>,
    ) -> Vec<History> {
        let mut histories = vec![History::new(); paths.len()];
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let k = i % paths.len();
            i += 1;
            let invoked = now(base);
            if let Ok(value) = read(&access, &paths[k]) {
                let call = Call {
                    op: RegisterOp::Read,
                    invoked,
                    returned: Some((now(base), RegisterRet::Read(Some(value)))),
                };
                histories[k].push(call);
            }
        }
        histories
    }
}

/// Runs 3 writers and 2 readers of three small files (registers) on `cluster` while
/// `nemesis` does its work; `nemesis` gets the cluster and `progress(what)`, which returns
/// once thirty more writes were acknowledged (bounded by the deadline, never a fixed time),
/// and is called once before it and once after it. Then checks every file's history (with
/// the first value and a read at the end) for linearizability, and that `fsck` finds
/// nothing wrong within the deadline; returns the operations checked.
fn registers_under(
    cluster: &mut TestCluster,
    kind: &str,
    replication: u8,
    nemesis: impl FnOnce(&mut TestCluster, &dyn Fn(&str)),
) -> usize {
    use meshfs_test_kit::linearizable::{Call, Register, RegisterOp, RegisterRet, check};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    cluster.wait_for("a leader that sees the data-server", |s| {
        s.fully_connected() && data_servers_up(s)
    });
    let paths: Vec<String> = (0..3).map(|k| format!("/r{k}")).collect();
    for path in &paths {
        registers::write_new(&cluster.access, path, replication);
    }
    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = paths
        .iter()
        .enumerate()
        .map(|(k, path)| {
            let (access, path, stop) = (cluster.access.clone(), path.clone(), Arc::clone(&stop));
            let acked = Arc::clone(&acked);
            let id = k as u64 + 1;
            std::thread::spawn(move || registers::writer(access, path, id, base, stop, acked))
        })
        .collect();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (access, paths, stop) = (cluster.access.clone(), paths.clone(), Arc::clone(&stop));
            std::thread::spawn(move || registers::reader(access, paths, base, stop))
        })
        .collect();
    let progress = |what: &str| {
        let from = acked.load(Ordering::Relaxed);
        meshfs_test_kit::wait::wait_until(what, || acked.load(Ordering::Relaxed) >= from + 30);
    };
    progress("work before the fault");
    nemesis(cluster, &progress);
    // How long, once the fault is over, the writers take to have thirty more writes in.
    let over = Instant::now();
    progress("work after the fault");
    eprintln!("writes recovered in {:?} after the fault: {kind}", over.elapsed());
    stop.store(true, Ordering::Relaxed);
    let mut histories: Vec<registers::History> =
        writers.into_iter().map(|w| w.join().unwrap()).collect();
    for (k, history) in readers
        .into_iter()
        .flat_map(|r| r.join().unwrap().into_iter().enumerate())
        .collect::<Vec<_>>()
    {
        histories[k].extend(history);
    }
    let mut checked = 0;
    for (k, mut history) in histories.into_iter().enumerate() {
        let first = Call {
            op: RegisterOp::Write(0),
            invoked: 0,
            returned: Some((0, RegisterRet::Written)),
        };
        history.insert(0, first);
        let invoked = base.elapsed().as_nanos() as u64;
        let last = registers::read(&cluster.access, &paths[k]).unwrap();
        let returned = Some((base.elapsed().as_nanos() as u64, RegisterRet::Read(Some(last))));
        history.push(Call { op: RegisterOp::Read, invoked, returned });
        let acknowledged = history
            .iter()
            .filter(|c| matches!(c.op, RegisterOp::Write(_)) && c.returned.is_some())
            .count();
        assert!(acknowledged > 1, "{}: no write got through", paths[k]);
        checked += history.len();
        let history = meshfs_test_kit::linearizable::without_unseen_writes(&history);
        if let Err(violation) = check(&Register::default(), &history) {
            panic!("{}: not linearizable: {violation:?}\n{history:#?}", paths[k]);
        }
    }
    // And the blocks: every replica whole again within the deadline.
    let mut meta = MetaClient::new(&cluster.access).unwrap();
    let fsck_from = Instant::now();
    meshfs_test_kit::wait::wait_until("fsck to find nothing wrong", || {
        meta.fsck("/").is_ok_and(|r| {
            r.problems.is_empty() && !r.more && r.unknown_servers.is_empty() && r.files >= 3
        })
    });
    eprintln!("fsck clean {:?} after the last read", fsck_from.elapsed());
    checked
}

fn leader_of(cluster: &TestCluster) -> u32 {
    cluster.wait_for("a leader", |s| s.agreed_leader().is_some()).agreed_leader().unwrap()
}

fn addresses(cluster: &TestCluster) -> Vec<Ipv4Addr> {
    cluster.ids().into_iter().map(|id| cluster.ip(id)).collect()
}

fn healed(cluster: &TestCluster) {
    cluster.wait_for("one leader, every link up", |s| {
        s.fully_connected() && s.agreed_leader().is_some()
    });
}

/// The leader cut off from every other server until the majority elects another and
/// `progress(during)` returns; then the cut healed and the cluster whole again.
fn cut_the_leader_off(cluster: &TestCluster, progress: &dyn Fn(&str), during: &str) {
    let leader = leader_of(cluster);
    let cut = Partition::isolate(cluster.ip(leader), &addresses(cluster)).unwrap();
    cluster.wait_for("another leader", |s| leader_without(s, leader).is_some());
    // What is acknowledged now went through the new leader (the old has no majority).
    progress(during);
    cut.heal().unwrap();
    healed(cluster);
}

/// The leader cut off from every other server, then the cut healed: the majority elects
/// another and serves; the files' histories are linearizable.
#[test]
fn file_registers_stay_linearizable_through_a_leader_partition() {
    let mut cluster = TestCluster::new_spread("faults-registers", 3, 1);
    cluster.start_all();
    let checked = registers_under(&mut cluster, "faults-registers", 1, |cluster, progress| {
        cut_the_leader_off(cluster, progress, "work during the cut");
    });
    eprintln!("{checked} operations checked");
}

/// A follower cut off: the leader keeps its majority and serves on; healed, the follower
/// catches up (it applies as far as the leader).
#[test]
fn file_registers_stay_linearizable_through_a_follower_partition() {
    let mut cluster = TestCluster::new_spread("faults-follower", 3, 1);
    cluster.start_all();
    let checked = registers_under(&mut cluster, "faults-follower", 1, |cluster, progress| {
        let leader = leader_of(cluster);
        let follower = (1..=3).find(|&id| id != leader).unwrap();
        let cut = Partition::isolate(cluster.ip(follower), &addresses(cluster)).unwrap();
        progress("work during the cut");
        cut.heal().unwrap();
        healed(cluster);
        cluster.wait_for("the follower to catch up", |s| {
            let applied =
                |id: u32| s.servers.iter().find(|v| v.id == id).and_then(|v| v.applied_index);
            applied(follower).is_some() && applied(follower) >= applied(leader)
        });
    });
    eprintln!("{checked} operations checked");
}

/// A bridge: meta-server A sees B and C, B and C do not see each other. Whoever leads, a
/// majority can still be formed through A; the histories stay linearizable.
#[test]
fn file_registers_stay_linearizable_through_a_bridge() {
    let mut cluster = TestCluster::new_spread("faults-bridge", 3, 1);
    cluster.start_all();
    let checked = registers_under(&mut cluster, "faults-bridge", 1, |cluster, progress| {
        let leader = leader_of(cluster);
        let others: Vec<u32> = (1..=3).filter(|&id| id != leader).collect();
        // The leader is the bridge's middle half the time; the other half, one end.
        let (b, c) =
            if leader.is_multiple_of(2) { (others[0], others[1]) } else { (leader, others[0]) };
        let cut = Partition::cut(&[cluster.ip(b)], &[cluster.ip(c)]).unwrap();
        progress("work across the bridge");
        cut.heal().unwrap();
        healed(cluster);
    });
    eprintln!("{checked} operations checked");
}

/// The leader killed with SIGKILL mid-workload and started again: another leads meanwhile;
/// the restarted one rejoins; the histories stay linearizable.
#[test]
fn file_registers_stay_linearizable_through_kill_9_of_the_leader() {
    let mut cluster = TestCluster::new_spread("faults-kill", 3, 1);
    cluster.start_all();
    let checked = registers_under(&mut cluster, "faults-kill", 1, |cluster, progress| {
        let leader = leader_of(cluster);
        cluster.kill9(leader);
        cluster.wait_for("another leader", |s| leader_without(s, leader).is_some());
        progress("work while it is down");
        cluster.start(leader);
        healed(cluster);
    });
    eprintln!("{checked} operations checked");
}

/// The leader paused (SIGSTOP) past its followers' election timeout, then resumed: the
/// others elect a new leader while it sleeps; woken, it must not serve what it believed
/// before (reads go through ReadIndex, writes through the log); histories stay
/// linearizable.
#[test]
fn file_registers_stay_linearizable_through_a_paused_leader() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let mut cluster = TestCluster::new_spread("faults-pause", 3, 1);
    cluster.start_all();
    let checked = registers_under(&mut cluster, "faults-pause", 1, |cluster, progress| {
        let leader = leader_of(cluster);
        let pid = Pid::from_raw(cluster.pid(leader) as i32);
        kill(pid, Signal::SIGSTOP).unwrap();
        let resumed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cluster.wait_for("another leader", |s| leader_without(s, leader).is_some());
            progress("work while it sleeps");
        }));
        // Resumed whatever happened, so the cluster's drop can stop it.
        kill(pid, Signal::SIGCONT).unwrap();
        if let Err(panic) = resumed {
            std::panic::resume_unwind(panic);
        }
        healed(cluster);
    });
    eprintln!("{checked} operations checked");
}

/// Three clients create, rename and remove four names of one directory at random while the
/// leader is cut off and after the heal; the directory's history is linearizable (a
/// request retried across the leader change is applied once), and it ends as listed.
#[test]
fn names_stay_linearizable_through_a_leader_partition() {
    use meshfs_core::error::NsError;
    use meshfs_test_kit::linearizable::{Call, NameOp, NameRet, Names, check};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let mut cluster = TestCluster::new_spread("faults-names", 3, 1);
    cluster.start_all();
    let mut meta = MetaClient::new(&cluster.access).unwrap();
    meta.mkdir("/n", false).unwrap();
    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let names = ["a", "b", "c", "d"];
    let clients: Vec<_> = (0..3u64)
        .map(|seed| {
            let (access, stop, answered) =
                (cluster.access.clone(), Arc::clone(&stop), Arc::clone(&answered));
            std::thread::spawn(move || {
                let mut rng = meshfs_test_kit::Rng::new(seed + 1);
                let mut meta = MetaClient::new(&access).unwrap();
                let mut history = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let pick =
                        |rng: &mut meshfs_test_kit::Rng| names[rng.below(4) as usize].to_string();
                    let op = match rng.below(3) {
                        0 => NameOp::Create(pick(&mut rng)),
                        1 => NameOp::Remove(pick(&mut rng)),
                        _ => NameOp::Rename(pick(&mut rng), pick(&mut rng)),
                    };
                    let invoked = base.elapsed().as_nanos() as u64;
                    let result = match &op {
                        NameOp::Create(n) => meta.create(&format!("/n/{n}"), 1).map(|_| ()),
                        NameOp::Remove(n) => meta.remove(&format!("/n/{n}"), false).map(|_| ()),
                        NameOp::Rename(a, b) => meta.rename(&format!("/n/{a}"), &format!("/n/{b}")),
                    };
                    let ret = match result {
                        Ok(()) => Some(NameRet::Done),
                        Err(meshfs_client::ClientError::Namespace(NsError::AlreadyExists(_))) => {
                            Some(NameRet::Exists)
                        }
                        Err(meshfs_client::ClientError::Namespace(NsError::NotFound(_))) => {
                            Some(NameRet::Missing)
                        }
                        // Timed out or unavailable: it may have been applied, or not.
                        Err(_) => None,
                    };
                    if ret.is_some() {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    let returned = ret.map(|r| (base.elapsed().as_nanos() as u64, r));
                    history.push(Call { op, invoked, returned });
                }
                history
            })
        })
        .collect();
    let progress = |what: &str| {
        let from = answered.load(Ordering::Relaxed);
        meshfs_test_kit::wait::wait_until(what, || answered.load(Ordering::Relaxed) >= from + 40);
    };
    progress("work before the cut");
    cut_the_leader_off(&cluster, &progress, "work during the cut");
    progress("work after the heal");
    stop.store(true, Ordering::Relaxed);
    let mut history: Vec<_> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    history.sort_by_key(|c| c.invoked);
    // The end state is the listing: a check that it is a state the history can reach.
    let listed: std::collections::BTreeSet<String> =
        meta.list("/n").unwrap().into_iter().map(|e| e.name).collect();
    for name in names {
        let invoked = base.elapsed().as_nanos() as u64;
        let ret = if listed.contains(name) { NameRet::Exists } else { NameRet::Done };
        // A create that would succeed iff the name is absent: then it is undone.
        history.push(Call {
            op: NameOp::Create(name.into()),
            invoked,
            returned: Some((invoked + 1, ret)),
        });
        if ret == NameRet::Done {
            history.push(Call {
                op: NameOp::Remove(name.into()),
                invoked: invoked + 2,
                returned: Some((invoked + 3, NameRet::Done)),
            });
        }
    }
    let checked = history.len();
    if let Err(violation) = check(&Names::default(), &history) {
        panic!("names not linearizable: {violation:?}");
    }
    eprintln!("{checked} namespace operations checked");
}

/// A data-server killed with SIGKILL under writes of files in two copies (of three
/// data-servers), then started again: writes go on (the chain swaps the dead replica out),
/// the histories stay linearizable, and after the restart fsck finds every block whole.
#[test]
fn file_registers_stay_linearizable_through_kill_9_of_a_data_server() {
    let mut cluster = TestCluster::new_spread("faults-dserver", 3, 3);
    cluster.start_all();
    let checked = registers_under(&mut cluster, "faults-dserver", 2, |cluster, progress| {
        cluster.kill9(5);
        progress("work while data-server 5 is down");
        cluster.start(5);
        healed(cluster);
    });
    eprintln!("{checked} operations checked");
}

/// The link between the leader and one follower cut and healed five times over, each
/// state lasting until the workload made progress in it: no election storm stops the
/// writes, and the histories stay linearizable.
#[test]
fn file_registers_stay_linearizable_through_a_flapping_link() {
    let mut cluster = TestCluster::new_spread("faults-flap", 3, 1);
    cluster.start_all();
    let checked = registers_under(&mut cluster, "faults-flap", 1, |cluster, progress| {
        let leader = leader_of(cluster);
        let follower = (1..=3).find(|&id| id != leader).unwrap();
        for round in 0..5 {
            let cut = Partition::cut(&[cluster.ip(leader)], &[cluster.ip(follower)]).unwrap();
            progress(&format!("work with the link cut ({round})"));
            cut.heal().unwrap();
            progress(&format!("work with the link up ({round})"));
        }
        healed(cluster);
    });
    eprintln!("{checked} operations checked");
}

/// Three clients take an exclusive lock in turn, each holding it for a moment, while the
/// leader is cut off and after the heal. Every hold (from the grant's answer to the
/// unlock's call) is disjoint from every other, and sequencers grow with the grants.
#[test]
fn an_exclusive_lock_has_one_holder_at_a_time_through_a_leader_partition() {
    use meshfs_client::session::{LockMode, Session};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let mut cluster = TestCluster::new_spread("faults-locks", 3, 1);
    cluster.start_all();
    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let grants = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (access, stop, grants) =
                (cluster.access.clone(), Arc::clone(&stop), Arc::clone(&grants));
            std::thread::spawn(move || {
                let session = Session::open(&access).unwrap();
                let mut holds = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let wait = Some(Duration::from_secs(5));
                    let Ok(lock) = session.lock("/lk", LockMode::Exclusive, wait) else {
                        continue;
                    };
                    let granted = base.elapsed().as_nanos() as u64;
                    grants.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(2));
                    let sequencer = lock.sequencer();
                    let released = base.elapsed().as_nanos() as u64;
                    let _ = lock.unlock();
                    holds.push((granted, released, sequencer));
                }
                holds
            })
        })
        .collect();
    let progress = |what: &str| {
        let from = grants.load(Ordering::Relaxed);
        meshfs_test_kit::wait::wait_until(what, || grants.load(Ordering::Relaxed) >= from + 20);
    };
    progress("grants before the cut");
    cut_the_leader_off(&cluster, &progress, "grants during the cut");
    progress("grants after the heal");
    stop.store(true, Ordering::Relaxed);
    let mut holds: Vec<(u64, u64, u64)> =
        clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    holds.sort_unstable();
    for pair in holds.windows(2) {
        let ((_, released, seq), (granted, _, next_seq)) = (pair[0], pair[1]);
        assert!(released <= granted, "two holders at once: {:?} and {:?}", pair[0], pair[1]);
        assert!(seq < next_seq, "sequencers went back: {:?} then {:?}", pair[0], pair[1]);
    }
    eprintln!("{} holds checked", holds.len());
}

/// A data-server whose disk fills (its data directory a 6 MiB tmpfs): a put larger than
/// the room fails with an error that says so, the data-server stays up and serves what it
/// holds, and once the failed file is removed (its blocks deleted as orphans) puts work
/// again.
#[test]
fn a_full_disk_fails_the_write_that_fills_it_and_the_data_server_goes_on() {
    use meshfs_test_kit::mount::Tmpfs;
    let mut cluster =
        TestCluster::new_with("faults-disk", 1, 1, "\n[heal]\norphan_delay_secs = 1\n");
    let disk = Tmpfs::mount(&cluster.dir.join("data/dserver-2"), 6 << 20).unwrap();
    cluster.start_all();
    cluster.wait_for("the data-server up", data_servers_up);
    let mut meta = MetaClient::new(&cluster.access).unwrap();
    let small: Vec<u8> = (0..100_000u32).map(|i| (i % 249) as u8).collect();
    put(&mut meta, &cluster.access, "/small", &small);
    let big: Vec<u8> = (0..16_000_000u32).map(|i| (i % 233) as u8).collect();
    let mut data = DataClient::new(&cluster.access);
    let err =
        meshfs_client::data::put(&mut meta, &mut data, &mut &big[..], "/big", 1, None, &mut ())
            .expect_err("16 MB do not fit in 6 MiB");
    let text = err.to_string();
    assert!(text.to_lowercase().contains("no space"), "{text}");
    assert!(cluster.alive(2), "the data-server is up");
    assert_eq!(get(&mut meta, &cluster.access, "/small"), small, "and serves what it holds");
    // Free the room: the failed file (if its name was made) goes, and its blocks with it.
    let _ = meta.remove("/big", false);
    let again: Vec<u8> = (0..3_000_000u32).map(|i| (i % 227) as u8).collect();
    let mut n = 0;
    meshfs_test_kit::wait::wait_until("a put to fit again", || {
        n += 1;
        let path = format!("/again-{n}");
        let mut data = DataClient::new(&cluster.access);
        let put = meshfs_client::data::put(
            &mut meta,
            &mut data,
            &mut &again[..],
            &path,
            1,
            None,
            &mut (),
        );
        if put.is_err() {
            let _ = meta.remove(&path, false);
        }
        put.is_ok()
    });
    assert_eq!(get(&mut meta, &cluster.access, &format!("/again-{n}")), again);
    drop(cluster);
    drop(disk);
}

/// Two of five meta-servers killed with SIGKILL at once (a minority, the leader among
/// them), then both started again: the other three elect a leader and serve; the
/// histories stay linearizable.
#[test]
fn file_registers_stay_linearizable_through_kill_9_of_two_of_five_meta_servers() {
    let mut cluster = TestCluster::new_spread("faults-minority", 5, 1);
    cluster.start_all();
    let checked = registers_under(&mut cluster, "faults-minority", 1, |cluster, progress| {
        let leader = leader_of(cluster);
        let other = (1..=5).find(|&id| id != leader).unwrap();
        cluster.kill9(leader);
        cluster.kill9(other);
        cluster.wait_for("the three to elect a leader", |s| {
            let up: Vec<_> = s.servers.iter().filter(|v| v.role == "mserver" && v.up).collect();
            up.len() == 3 && up.iter().all(|v| v.leader.is_some() && v.leader == up[0].leader)
        });
        progress("work with two meta-servers down");
        cluster.start(leader);
        cluster.start(other);
        healed(cluster);
    });
    eprintln!("{checked} operations checked");
}

/// Clients made from one access share where the leader was last found: a fresh client
/// asks it first (so it does not first wait out a paused or dead meta-server it would
/// otherwise try), and a client that found it gone forgets it for the others.
#[test]
fn fresh_clients_of_an_access_ask_the_leader_others_found() {
    let mut cluster = TestCluster::new_spread("faults-hint", 3, 1);
    cluster.start_all();
    let leader = leader_of(&cluster);
    assert_eq!(cluster.access.leader_hint(), None);
    let mut first = MetaClient::new(&cluster.access).unwrap();
    first.list("/").unwrap();
    assert_eq!(first.leader().map(|l| l.0), Some(leader));
    assert_eq!(cluster.access.leader_hint().map(|l| l.0), Some(leader));
    let fresh = MetaClient::new(&cluster.access).unwrap();
    assert_eq!(fresh.leader().map(|l| l.0), Some(leader), "asks the leader first");
    // The leader dies: the next call finds it gone, and a new one.
    cluster.kill9(leader);
    first.list("/").unwrap();
    let new = first.leader().unwrap();
    assert_ne!(new.0, leader);
    assert_eq!(cluster.access.leader_hint(), Some(new));
}

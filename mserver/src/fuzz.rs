//! Checks for the fuzz targets (`fuzz/`, nightly) and their stable property-test twins: each
//! takes arbitrary bytes and panics only if the code under test breaks a promise.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use meshfs_core::settings::Settings;
use meshfs_core::wire::Kind;
use meshfs_group::driver::{Node, Service, Stop};
use meshfs_group::{ClientId, Config, GroupEvent, NodeId, Now, Role};
use meshfs_net::{ConnId, Frame};

use crate::consensus::Replica;
use crate::log_store::LogStore;
use crate::{HEAL_TIMER, MetaServer, TICK_TIMER};

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// `data` as the only segment of a Raft log directory: opening it never panics; a log that
/// opens (a torn tail cut) opens again to the same entries.
pub fn segment_replay(data: &[u8]) {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("meshfs-fuzz-log-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    std::fs::write(dir.join("seg-00000000000000000001.log"), data).expect("the segment");
    if let Ok(store) = LogStore::open(&dir, &[1]) {
        let first = store.entries_summary();
        drop(store);
        let again = LogStore::open(&dir, &[1]).expect("a log that opened opens again");
        assert_eq!(again.entries_summary(), first);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The config the handler check serves in: this meta-server alone (so it leads and
/// commits), two data-servers, an operator's client and a plain one.
fn handler_config(dir: &Path) -> (Config, Settings) {
    let text = "[cluster]\nname = \"fuzz\"\nsecret = \"fuzz-secret-0123456789\"\nreplication = 1\n\
         block_size = \"1MiB\"\n\
         [limits]\nrequests_in_flight_per_client = 64\nlock_waits_per_client = 8\n\
         lock_sessions_per_client = 4\ninodes_per_request = 16\n\
         [[mserver]]\nid = 1\naddr = \"127.0.0.1:1\"\ndata_dir = \"m1\"\n\
         [[dserver]]\nid = 2\naddr = \"127.0.0.1:2\"\ndata_dir = \"d2\"\ncapacity = \"1GiB\"\n\
         [[dserver]]\nid = 3\naddr = \"127.0.0.1:3\"\ndata_dir = \"d3\"\ncapacity = \"1GiB\"\n\
         [[client]]\nid = 1\nkey = \"fuzz-client-key-0123456789\"\nadmin = true\n\
         [[client]]\nid = 2\nkey = \"fuzz-client-key-9876543210\"\n";
    let path = dir.join("config.conf");
    meshfs_core::settings::parse(text, &path).expect("the fuzz config parses")
}

/// A meta-server, the real service on a real replica (its log in a temporary directory),
/// fed `data` as a sequence of events: messages of any kind from either client on either
/// of two connections and from every peer (data-servers, and roles that may not send the
/// kind), connections closing, peers going down and up, timers and wake-ups. The service
/// never panics; after every event the namespace keeps its invariants and the requests it
/// holds are counted right and within the client's limit.
///
/// Each event: `u8 what`, `u8 kind` (an index into [`Kind::ALL`]), `u16 length`, the body.
pub fn meta_handlers(data: &[u8]) {
    drive_meta(data);
}

/// [`meta_handlers`], saying whether the server led and how many entries it applied.
fn drive_meta(data: &[u8]) -> (bool, u64) {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("meshfs-fuzz-meta-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let (config, settings) = handler_config(&dir);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
    let mut node =
        Node::on_listener(&config, NodeId(1), listener, [7; 32], &Stop::new()).expect("the node");
    let replica =
        Replica::open(&dir.join("raft"), 1, &[1], settings.snapshot_entries, node.notifier())
            .expect("the replica");
    let mut server = MetaServer::new(replica, &settings, config.secret.clone(), 1);
    server.start(&mut node, Now::read());
    // Alone, it elects itself within an election timeout's ticks once its vote is durable
    // (the log writer's thread, however slow the disk: bounded by a deadline).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut ticks = 0;
    while !server.replica.is_leader() && std::time::Instant::now() < deadline {
        if server.replica.is_synced() && ticks < 50 {
            server.handle_timer(&mut node, Now::read(), TICK_TIMER);
            ticks += 1;
        } else {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        server.handle_wake(&mut node, Now::read());
    }
    let conns = [ConnId::from_raw(9001), ConnId::from_raw(9002), ConnId::from_raw(9003)];
    let mut rest = data;
    let mut request_id = 0;
    let mut checked = server.replica.namespace().applied();
    while let [what, kind, a, b, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*a, *b])).min(tail.len());
        let (body, after) = tail.split_at(len);
        rest = after;
        request_id += 1;
        let kind = Kind::ALL[usize::from(*kind) % Kind::ALL.len()].code();
        let frame = Frame::new(kind, request_id, body.to_vec());
        let now = Now::read();
        let event = match what % 16 {
            // Client 1 (an operator) on two connections, client 2 on a third.
            0..=3 => GroupEvent::ClientMessage { conn: conns[0], client: ClientId(1), frame },
            4..=5 => GroupEvent::ClientMessage { conn: conns[1], client: ClientId(1), frame },
            6..=7 => GroupEvent::ClientMessage { conn: conns[2], client: ClientId(2), frame },
            // A data-server, and a peer of the wrong role for most kinds.
            8 => GroupEvent::Message { from: NodeId(2), frame },
            9 => GroupEvent::Message { from: NodeId(3), frame },
            10 => GroupEvent::ClientGone { conn: conns[usize::from(*a) % 3], client: ClientId(1) },
            11 => {
                GroupEvent::PeerDown { peer: NodeId(2), role: Role::DServer, reason: "fuzz".into() }
            }
            12 => GroupEvent::PeerUp { peer: NodeId(2), role: Role::DServer },
            13 => {
                server.handle_timer(&mut node, now, TICK_TIMER);
                continue;
            }
            14 => {
                server.handle_timer(&mut node, now, HEAL_TIMER);
                continue;
            }
            _ => {
                server.handle_wake(&mut node, now);
                continue;
            }
        };
        server.handle_event(&mut node, now, event);
        server.handle_wake(&mut node, Now::read());
        // The namespace changes only by applying entries: check it when it did.
        let applied = server.replica.namespace().applied();
        if applied != checked {
            checked = applied;
            if let Some(violation) = server.replica.namespace().violation() {
                panic!("namespace invariant broken at {applied}: {violation}");
            }
        }
        assert_eq!(server.in_flight, server.count_in_flight(), "requests held miscounted");
        let limit = settings.limits.requests_in_flight_per_client;
        assert!(server.in_flight.values().all(|held| held.requests <= limit));
    }
    // The log writer syncs on its own thread: wait (bounded) for what it holds, so what
    // was proposed is applied and checked too, however slow the disk.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !server.replica.is_synced() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_micros(200));
        server.handle_wake(&mut node, Now::read());
    }
    if let Some(violation) = server.replica.namespace().violation() {
        panic!("namespace invariant broken: {violation}");
    }
    let led = (server.replica.is_leader(), server.replica.namespace().applied());
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    led
}

#[cfg(test)]
mod tests {
    //! The stable twin of the fuzz target: arbitrary bytes, and mutations of the golden
    //! segment (valid records, so cases reach past the first header), with a CI budget.

    use super::*;
    use proptest::prelude::*;

    fn golden() -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/raft-log/seg-00000000000000000201.log");
        std::fs::read(path).unwrap()
    }

    /// Golden messages of the wire tests as handler events from each sender.
    fn golden_events() -> Vec<Vec<u8>> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../core-layer/testdata");
        let text = std::fs::read_to_string(root.join("wire.txt")).unwrap();
        let mut events = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let Some((kind, hex)) = line.split_once(' ') else { continue };
            let kind: u16 = kind.parse().unwrap();
            let Some(pick) = Kind::ALL.iter().position(|k| k.code() == kind) else { continue };
            let body = meshfs_test_kit::golden::unhex(hex);
            let mut event = vec![(i % 10) as u8, pick as u8];
            event.extend_from_slice(&(body.len() as u16).to_be_bytes());
            event.extend(body);
            events.push(event);
        }
        events
    }

    #[test]
    fn every_golden_message_from_every_sender_is_handled() {
        let events = golden_events();
        assert!(events.len() > 20);
        let (leader, applied) = drive_meta(&events.concat());
        assert!(leader, "the lone meta-server leads");
        assert!(applied > 0, "and applied what it was asked");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn handler_events(picks in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), proptest::collection::vec((any::<u16>(), any::<u8>()), 0..4)), 1..24)) {
            let events = golden_events();
            let mut data = Vec::new();
            for (pick, what, edits) in picks {
                let mut event = events[pick.index(events.len())].clone();
                event[0] = what;
                for (at, byte) in edits {
                    let at = 4 + usize::from(at) % (event.len() - 3);
                    if at < event.len() {
                        event[at] = byte;
                    }
                }
                data.extend(event);
            }
            meta_handlers(&data);
        }

        #[test]
        fn segments(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            segment_replay(&data);
        }

        #[test]
        fn mutated_segments(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
            let mut data = golden();
            for (at, byte) in edits {
                let at = at.index(data.len());
                data[at] = byte;
            }
            data.truncate(cut.index(data.len()) + 1);
            segment_replay(&data);
        }
    }
}

//! Checks for the fuzz targets (`fuzz/`, nightly) and their stable property-test twins: each
//! takes arbitrary bytes and panics only if the code under test breaks a promise.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use meshfs_core::token::{ReadToken, Token};
use meshfs_core::wire::{Kind, Message};
use meshfs_group::driver::{Node, Service, Stop};
use meshfs_group::{ClientId, Config, GroupEvent, NodeId, Now, Role};
use meshfs_net::{ConnId, Frame};

use crate::block_store::BlockStore;
use crate::chain::MAX_OPEN_WRITES;
use crate::disk::DiskPool;
use crate::forwarder::MAX_HELD_BYTES;
use crate::{DataServer, MAX_READS_IN_FLIGHT, MAX_READS_PER_CLIENT};

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// `data` as a replica file of a data-server's store: opening the store never panics, a
/// file it takes is read whole (every segment checked) without panicking, and one it sets
/// aside is not served. Input starting `PAIR` and a `u32` length (big-endian) is two files:
/// that many bytes of the replica (a delta, say), then its base copy (`.prev`).
pub fn block_file(data: &[u8]) {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("meshfs-fuzz-blocks-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let shard = dir.join("blocks/07");
    std::fs::create_dir_all(&shard).expect("a temporary directory");
    let replica = shard.join("00000007-0003.blk");
    match data.strip_prefix(b"PAIR") {
        Some(rest) if rest.len() >= 4 => {
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let (blk, prev) = rest[4..].split_at(len.min(rest.len() - 4));
            std::fs::write(&replica, blk).expect("the replica file");
            std::fs::write(replica.with_extension("prev"), prev).expect("the base file");
        }
        _ => std::fs::write(&replica, data).expect("the replica file"),
    }
    if let Ok(store) = BlockStore::open(&dir, 1 << 40) {
        for info in store.list() {
            assert!(info.len <= u64::from(info.block_size), "{info:?}");
            let _ = store.read(info.descriptor, 0, info.len);
            let _ = store.read(info.descriptor, info.len / 2, info.len);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Data-server 2 of a small cluster: meta-server 1, data-servers 2 and 3, two clients.
fn handler_config(dir: &Path) -> Config {
    let text = "[cluster]\nname = \"fuzz\"\nsecret = \"fuzz-secret-0123456789\"\nreplication = 1\n\
         [[mserver]]\nid = 1\naddr = \"127.0.0.1:1\"\ndata_dir = \"m1\"\n\
         [[dserver]]\nid = 2\naddr = \"127.0.0.1:2\"\ndata_dir = \"d2\"\ncapacity = \"64MiB\"\n\
         [[dserver]]\nid = 3\naddr = \"127.0.0.1:3\"\ndata_dir = \"d3\"\ncapacity = \"64MiB\"\n\
         [[client]]\nid = 1\nkey = \"fuzz-client-key-0123456789\"\n\
         [[client]]\nid = 2\nkey = \"fuzz-client-key-9876543210\"\n";
    Config::parse(text, &dir.join("config.conf")).expect("the fuzz config parses")
}

/// A frame whose message carries a token, with the token signed by the cluster for
/// `client` and not yet expired: a client that holds real tokens is hostile too, and the
/// checks past the token are the ones worth reaching.
fn signed(frame: Frame, secret: &[u8], client: ClientId, now: Now) -> Frame {
    let Ok(message) = Message::decode(&frame) else { return frame };
    let expires_ms = now.wall_ms + 60_000;
    let message = match message {
        Message::WriteChunk(mut chunk) => {
            let t = chunk.token;
            chunk.token =
                Token::sign(secret, t.block, t.base, t.op, t.replicas, client, expires_ms);
            Message::WriteChunk(chunk)
        }
        Message::TokenRead { read, .. } => {
            let token = ReadToken::sign(secret, &read.block, client, expires_ms);
            Message::TokenRead { read, token }
        }
        other => other,
    };
    message.to_frame(frame.request_id)
}

/// A data-server, the real service on a real block store (in a temporary directory) with
/// its disk workers, fed `data` as a sequence of events: messages of any kind from either
/// client on either of two connections (tokens signed when the event asks, so writes and
/// reads get past them), from the next data-server of a chain and from the meta-server,
/// connections closing, peers going down and up, timers and disk completions. It never
/// panics, and after every event its books hold: reads on the disk queue counted right and
/// within their limit, writes open and bytes held for a link within theirs.
///
/// Each event: `u8 what` (its top bit: sign the token), `u8 kind` (an index into
/// [`Kind::ALL`]), `u16 length`, the body.
pub fn data_handlers(data: &[u8]) {
    drive_data(data);
}

/// [`data_handlers`], saying how many writes it began.
fn drive_data(data: &[u8]) -> u64 {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("meshfs-fuzz-data-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let config = handler_config(&dir);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
    let mut node =
        Node::on_listener(&config, NodeId(2), listener, [7; 32], &Stop::new()).expect("the node");
    let store = Arc::new(BlockStore::open(&dir, 64 << 20).expect("the store"));
    let disk = DiskPool::start(Arc::clone(&store), node.notifier());
    let mut server = DataServer::new(NodeId(2), config.secret.clone(), store, disk, 100_000_000);
    server.start(&mut node, Now::read());
    let conns = [ConnId::from_raw(9001), ConnId::from_raw(9002), ConnId::from_raw(9003)];
    let mut rest = data;
    let mut request_id = 0;
    while let [what, kind, a, b, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*a, *b])).min(tail.len());
        let (body, after) = tail.split_at(len);
        rest = after;
        request_id += 1;
        let kind = Kind::ALL[usize::from(*kind) % Kind::ALL.len()].code();
        let frame = Frame::new(kind, request_id, body.to_vec());
        let now = Now::read();
        let sign = |frame, client| {
            if what & 0x80 != 0 { signed(frame, &config.secret, client, now) } else { frame }
        };
        let event = match what % 16 {
            0..=3 => GroupEvent::ClientMessage {
                conn: conns[0],
                client: ClientId(1),
                frame: sign(frame, ClientId(1)),
            },
            4..=5 => GroupEvent::ClientMessage {
                conn: conns[1],
                client: ClientId(1),
                frame: sign(frame, ClientId(1)),
            },
            6 => GroupEvent::ClientMessage {
                conn: conns[2],
                client: ClientId(2),
                frame: sign(frame, ClientId(2)),
            },
            7 | 8 => GroupEvent::Message { from: NodeId(3), frame: sign(frame, ClientId(1)) },
            9 => GroupEvent::Message { from: NodeId(1), frame },
            10 => GroupEvent::ClientGone { conn: conns[usize::from(*a) % 3], client: ClientId(1) },
            11 => {
                GroupEvent::PeerDown { peer: NodeId(3), role: Role::DServer, reason: "fuzz".into() }
            }
            12 => GroupEvent::PeerUp { peer: NodeId(1), role: Role::MServer },
            13 => {
                server.handle_timer(&mut node, now, u64::from(*a % 4));
                continue;
            }
            _ => {
                server.handle_wake(&mut node, now);
                continue;
            }
        };
        server.handle_event(&mut node, now, event);
        server.handle_wake(&mut node, Now::read());
        let counted: usize = server.reads_in_flight.values().sum();
        assert_eq!(counted, server.reads_total, "reads on the disk queue miscounted");
        assert!(server.reads_total <= MAX_READS_IN_FLIGHT);
        assert!(server.reads_in_flight.values().all(|&n| n <= MAX_READS_PER_CLIENT));
        assert!(server.writes.len() <= MAX_OPEN_WRITES);
        assert!(server.forwarder.held_bytes.values().all(|&b| b <= MAX_HELD_BYTES));
    }
    let begun = server.next_write - 1;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    begun
}

#[cfg(test)]
mod tests {
    //! The stable twin of the fuzz target: mutations of the golden replica file (a valid
    //! header, so cases reach the segment table and data), with a CI budget.

    use super::*;
    use proptest::prelude::*;

    fn golden() -> Vec<u8> {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/block-format1.blk");
        std::fs::read(path).unwrap()
    }

    /// The golden delta (format 2) and the base it is written over.
    fn golden_pair() -> (Vec<u8>, Vec<u8>) {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/block-format2.blk");
        (std::fs::read(path).unwrap(), golden())
    }

    #[test]
    fn the_golden_pair_is_read_whole() {
        let (delta, base) = golden_pair();
        let mut data = b"PAIR".to_vec();
        data.extend((delta.len() as u32).to_be_bytes());
        data.extend(&delta);
        data.extend(&base);
        let dir = std::env::temp_dir().join(format!("meshfs-fuzz-pair-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let shard = dir.join("blocks/07");
        std::fs::create_dir_all(&shard).unwrap();
        std::fs::write(shard.join("00000007-0003.blk"), &delta).unwrap();
        std::fs::write(shard.join("00000007-0003.prev"), &base).unwrap();
        let store = BlockStore::open(&dir, 1 << 40).unwrap();
        let info = store.list()[0];
        assert!(info.base.is_some(), "a delta, over the base beside it");
        assert_eq!(store.read(info.descriptor, 0, info.len).unwrap().data.len(), 70_000);
        let _ = std::fs::remove_dir_all(&dir);
        block_file(&data);
    }

    fn event(what: u8, message: &Message) -> Vec<u8> {
        let frame = message.to_frame(0);
        let pick = Kind::ALL.iter().position(|k| k.code() == frame.kind).unwrap() as u8;
        let mut event = vec![what, pick];
        event.extend_from_slice(&(frame.body.len() as u16).to_be_bytes());
        event.extend(frame.body);
        event
    }

    /// A write of block 7#0 held by this data-server alone, then a read of it, each with
    /// a token to be signed; then the golden messages of the wire tests from each sender.
    fn seed_events() -> Vec<Vec<u8>> {
        use meshfs_core::descriptor::{BlockDescriptor, BlockVersion, FileDescriptor, FileId};
        use meshfs_core::token::TokenOp;
        use meshfs_core::wire::{ReadBlock, WriteChunk};
        let block = BlockDescriptor {
            file: FileDescriptor { id: FileId(7), version: 1 },
            index: 0,
            version: BlockVersion(2),
        };
        let token = Token::sign(
            b"unsigned",
            block,
            BlockVersion::UNWRITTEN,
            TokenOp::Write,
            vec![NodeId(2)],
            ClientId(1),
            0,
        );
        let chunk = |offset: u64, last| {
            Message::WriteChunk(WriteChunk {
                token: token.clone(),
                block_size: 1 << 20,
                keep_existing: false,
                offset,
                last,
                data: vec![5; 4096],
            })
        };
        let read = ReadBlock { block, offset: 0, len: 8192 };
        let read = Message::TokenRead {
            read,
            token: ReadToken::sign(b"unsigned", &block, ClientId(1), 0),
        };
        let mut events = vec![
            event(0x80, &chunk(0, false)),
            event(0x80, &chunk(4096, true)),
            event(0x8e, &read),
            event(0x80, &read),
        ];
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../core-layer/testdata");
        let text = std::fs::read_to_string(root.join("wire.txt")).unwrap();
        for (i, line) in text.lines().enumerate() {
            let Some((kind, hex)) = line.split_once(' ') else { continue };
            let kind: u16 = kind.parse().unwrap();
            let Some(pick) = Kind::ALL.iter().position(|k| k.code() == kind) else { continue };
            let body = meshfs_test_kit::golden::unhex(hex);
            let mut event = vec![(i % 13) as u8 | if i % 2 == 0 { 0x80 } else { 0 }, pick as u8];
            event.extend_from_slice(&(body.len() as u16).to_be_bytes());
            event.extend(body);
            events.push(event);
        }
        events
    }

    /// A write whose chunks pile up on a disk that does not keep up (its workers held)
    /// fails once 16 MiB of it wait, and gives its bytes back at once.
    #[test]
    fn a_write_piling_up_on_a_held_disk_fails_past_its_pending_bytes_and_gives_them_back() {
        use crate::chain::MAX_PENDING_PER_WRITE;
        use crate::disk::{DISK_WORKERS, DiskJob};
        use meshfs_core::descriptor::{BlockDescriptor, BlockVersion, FileDescriptor, FileId};
        use meshfs_core::token::TokenOp;
        use meshfs_core::wire::{MAX_CHUNK_BYTES, WriteChunk};
        let dir = meshfs_test_kit::TempDir::new("pending-bytes");
        let config = handler_config(dir.path());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut node =
            Node::on_listener(&config, NodeId(2), listener, [7; 32], &Stop::new()).unwrap();
        let store = Arc::new(BlockStore::open(dir.path(), 1 << 30).unwrap());
        let disk = DiskPool::start(Arc::clone(&store), node.notifier());
        let mut server = DataServer::new(NodeId(2), config.secret.clone(), store, disk, 1);
        let gate = Arc::new(std::sync::RwLock::new(()));
        let held = gate.write().unwrap();
        for write in 0..DISK_WORKERS as u64 {
            server.disk.submit(DiskJob::Hold { write, gate: Arc::clone(&gate) });
        }
        let block = BlockDescriptor {
            file: FileDescriptor { id: FileId(7), version: 1 },
            index: 0,
            version: BlockVersion(2),
        };
        let now = Now::read();
        let token = Token::sign(
            &config.secret,
            block,
            BlockVersion::UNWRITTEN,
            TokenOp::Write,
            vec![NodeId(2)],
            ClientId(1),
            now.wall_ms + 60_000,
        );
        let chunk_len = u64::from(MAX_CHUNK_BYTES);
        let fits = MAX_PENDING_PER_WRITE / chunk_len;
        for i in 0..=fits {
            let chunk = WriteChunk {
                token: token.clone(),
                block_size: 64 << 20,
                keep_existing: false,
                offset: i * chunk_len,
                last: false,
                data: vec![3; MAX_CHUNK_BYTES as usize],
            };
            let frame = Message::WriteChunk(chunk).to_frame(1);
            let conn = ConnId::from_raw(9001);
            server.handle_event(
                &mut node,
                now,
                GroupEvent::ClientMessage { conn, client: ClientId(1), frame },
            );
            if i < fits {
                assert_eq!(server.writes.len(), 1, "chunk {i} is taken");
                assert_eq!(server.pending_bytes, (i + 1) * chunk_len);
            }
        }
        assert!(server.writes.is_empty(), "the chunk past 16 MiB failed the write");
        assert_eq!(server.pending_bytes, 0, "and its bytes are given back at once");
        // The disk goes on (before the pool is dropped: it waits for its workers).
        drop(held);
    }

    #[test]
    fn a_signed_write_gets_past_its_token_and_every_golden_message_is_handled() {
        let events = seed_events();
        assert!(drive_data(&events.concat()) >= 1, "the write was begun");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn handler_events(picks in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), proptest::collection::vec((any::<u16>(), any::<u8>()), 0..4)), 1..24)) {
            let events = seed_events();
            let mut data = Vec::new();
            for (pick, what, edits) in picks {
                let mut event = events[pick.index(events.len())].clone();
                event[0] ^= what & 0x0f;
                for (at, byte) in edits {
                    let at = 4 + usize::from(at) % (event.len() - 3);
                    if at < event.len() {
                        event[at] = byte;
                    }
                }
                data.extend(event);
            }
            data_handlers(&data);
        }

        #[test]
        fn block_files(data in proptest::collection::vec(any::<u8>(), 0..8192)) {
            block_file(&data);
        }

        #[test]
        fn mutated_deltas_and_their_bases(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            in_base in any::<bool>(),
        ) {
            let (mut delta, mut base) = golden_pair();
            for (at, byte) in edits {
                let file = if in_base { &mut base } else { &mut delta };
                let at = at.index(4096.min(file.len()));
                file[at] = byte;
            }
            let mut data = b"PAIR".to_vec();
            data.extend((delta.len() as u32).to_be_bytes());
            data.extend(delta);
            data.extend(base);
            block_file(&data);
        }

        #[test]
        fn mutated_block_files(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            header_only in any::<bool>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut data = golden();
            for (at, byte) in edits {
                // Mostly in the header and segment table, where the lengths are.
                let span = if header_only { 4096.min(data.len()) } else { data.len() };
                let at = at.index(span);
                data[at] = byte;
            }
            let keep = data.len() - cut.index(data.len() / 4 + 1);
            data.truncate(keep);
            block_file(&data);
        }
    }
}

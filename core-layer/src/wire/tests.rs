//! Round trips, golden bytes, hostile bodies and range verification of every message.

use super::*;
use crate::descriptor::{BlockVersion, FileDescriptor};
use crate::error::NsError;
use crate::locks::{Holder, LockInfo, LockMode, Waiting};
use crate::namespace::{BlockMeta, DirEntry, FileMeta, NodeType, SetTime, Stat, Times};
use crate::path::MeshPath;
use crate::session::SessionId;
use crate::token::Token;
use meshfs_group::ClientId;
use meshfs_group::{NodeId, Role};
use proptest::prelude::*;

fn samples() -> Vec<Message> {
    vec![
        Message::StatusRequest,
        Message::StatusReply(StatusReply {
            id: NodeId(1),
            role: Role::MServer,
            cluster: "meshfs-local".into(),
            addr: "127.0.0.1:7101".into(),
            incarnation: 42,
            uptime_ms: 1234,
            version: "0.1.0".into(),
            peers: vec![
                PeerLink {
                    id: NodeId(2),
                    role: Role::DServer,
                    up: true,
                    since_ms: 10,
                    rtt_samples: 3,
                    rtt_last_us: 80,
                    rtt_smoothed_us: 85,
                    rtt_max_us: 120,
                },
                PeerLink {
                    id: NodeId(3),
                    role: Role::MServer,
                    up: false,
                    since_ms: 0,
                    rtt_samples: 0,
                    rtt_last_us: 0,
                    rtt_smoothed_us: 0,
                    rtt_max_us: 0,
                },
            ],
            raft: Some(RaftInfo {
                role: 3,
                term: 7,
                commit_index: 99,
                applied_index: 98,
                leader: 1,
                inodes: 5,
            }),
            data_servers: vec![ReportedDataServer {
                id: NodeId(4),
                capacity: 10,
                used: 3,
                blocks: 1,
                complete: true,
                up: true,
                draining: true,
            }],
            health: Some(HealthCounts {
                healthy: 9,
                under_replicated: 2,
                missing: 1,
                repairing: 2,
            }),
        }),
        Message::Repair(RepairTask {
            task: 7,
            block: BlockDescriptor {
                file: FileDescriptor { id: crate::descriptor::FileId(5), version: 2 },
                index: 1,
                version: crate::descriptor::BlockVersion(3),
            },
            block_size: 1 << 20,
            len: 1000,
            source: NodeId(4),
        }),
        Message::RepairDone {
            task: 7,
            block: BlockDescriptor {
                file: FileDescriptor { id: crate::descriptor::FileId(5), version: 2 },
                index: 1,
                version: crate::descriptor::BlockVersion(3),
            },
            error: "source down".into(),
        },
        Message::DeleteReplica(BlockDescriptor {
            file: FileDescriptor { id: crate::descriptor::FileId(5), version: 0 },
            index: 1,
            version: crate::descriptor::BlockVersion(3),
        }),
        Message::ReplicaDamaged {
            block: BlockDescriptor {
                file: FileDescriptor { id: crate::descriptor::FileId(5), version: 0 },
                index: 1,
                version: crate::descriptor::BlockVersion(3),
            },
            reason: "segment 2 checksum".into(),
        },
        Message::MetaRequest(MetaRequest {
            session: 9,
            request_id: 8,
            op: MetaOp::Drain { server: NodeId(4), draining: true },
        }),
        Message::MetaRequest(MetaRequest {
            session: 9,
            request_id: 9,
            op: MetaOp::Fsck { path: MeshPath::parse("/a").unwrap() },
        }),
        Message::MetaRequest(MetaRequest { session: 9, request_id: 10, op: MetaOp::OpenSession }),
        Message::MetaRequest(MetaRequest { session: 9, request_id: 11, op: MetaOp::KeepAlive }),
        Message::MetaRequest(MetaRequest { session: 9, request_id: 12, op: MetaOp::CloseSession }),
        Message::MetaRequest(MetaRequest {
            session: 9,
            request_id: 13,
            op: MetaOp::Lock {
                path: MeshPath::parse("/l").unwrap(),
                mode: LockMode::Shared,
                wait_ms: Some(3),
            },
        }),
        Message::MetaRequest(MetaRequest {
            session: 9,
            request_id: 14,
            op: MetaOp::Unlock { path: MeshPath::parse("/l").unwrap() },
        }),
        Message::MetaRequest(MetaRequest {
            session: 9,
            request_id: 15,
            op: MetaOp::Locks { path: MeshPath::root() },
        }),
        Message::MetaReply(MetaReply::Session { lease_ms: 12_000, lock_delay_ms: 5_000 }),
        Message::MetaReply(MetaReply::Locked { sequencer: 77 }),
        Message::MetaReply(MetaReply::Locks {
            locks: vec![LockInfo {
                path: MeshPath::parse("/l").unwrap(),
                holders: vec![Holder {
                    session: SessionId { client: ClientId(2), nonce: 3 },
                    mode: LockMode::Shared,
                    count: 2,
                    sequencer: 9,
                }],
                waiters: vec![Waiting {
                    session: SessionId { client: ClientId(3), nonce: 4 },
                    request_id: 8,
                    mode: LockMode::Exclusive,
                    deadline_ms: 1_000,
                }],
                delayed_until_ms: 0,
            }],
            more: true,
        }),
        Message::MetaReply(MetaReply::Fsck(FsckReport {
            files: 3,
            blocks: 4,
            health: HealthCounts { healthy: 2, under_replicated: 1, missing: 1, repairing: 1 },
            problems: vec![FsckProblem {
                path: "/a/f".into(),
                block: BlockDescriptor {
                    file: FileDescriptor { id: crate::descriptor::FileId(5), version: 2 },
                    index: 0,
                    version: crate::descriptor::BlockVersion(2),
                },
                wanted: 2,
                replicas: vec![NodeId(4), NodeId(5)],
                good: vec![NodeId(5)],
                missing: false,
                repairing: true,
            }],
            more: false,
            unknown_servers: vec![NodeId(4)],
        })),
        Message::Raft(vec![8, 1, 16, 2]),
        Message::SnapshotChunk(SnapshotChunk {
            index: 9,
            term: 2,
            total: 5,
            offset: 2,
            data: vec![1, 2, 3],
        }),
        Message::MetaRequest(MetaRequest {
            session: 9,
            request_id: 3,
            op: MetaOp::Create {
                path: MeshPath::parse("/a/b").unwrap(),
                replication: 2,
                mode: None,
            },
        }),
        Message::MetaRequest(MetaRequest {
            session: 9,
            request_id: 5,
            op: MetaOp::CreateWrite {
                path: MeshPath::parse("/a/c").unwrap(),
                replication: 0,
                size: 4096,
                mode: None,
            },
        }),
        Message::MetaRequest(MetaRequest {
            session: 9,
            request_id: 4,
            op: MetaOp::List { path: MeshPath::root(), after: "x".into(), limit: 10 },
        }),
        Message::MetaRequest(MetaRequest {
            session: 1,
            request_id: 1,
            op: MetaOp::Rename {
                from: MeshPath::parse("/a").unwrap(),
                to: MeshPath::parse("/b").unwrap(),
                replace: false,
            },
        }),
        Message::MetaReply(MetaReply::Created(FileDescriptor {
            id: crate::descriptor::FileId(5),
            version: 1,
        })),
        Message::MetaReply(MetaReply::NotLeader { leader: Some(NodeId(2)) }),
        Message::MetaReply(MetaReply::NotLeader { leader: None }),
        Message::MetaReply(MetaReply::Failed(NsError::AlreadyExists("/a".into()))),
        Message::MetaReply(MetaReply::List {
            entries: vec![DirEntry {
                name: "f".into(),
                is_dir: false,
                id: 7,
                size: 10,
                owner: crate::namespace::Owner { uid: 1001, gid: 50, mode: 0o640 },
            }],
            more: true,
        }),
        Message::MetaReply(MetaReply::Stat {
            stat: Stat::File(FileMeta {
                descriptor: FileDescriptor { id: crate::descriptor::FileId(5), version: 2 },
                size: 10,
                block_size: 65536,
                replication: 2,
                created_ms: 1,
                links: 3,
                times: Times { atime_us: 2_000_001, mtime_us: 2_000_002, ctime_us: 2_000_003 },
                owner: crate::namespace::Owner { uid: 1001, gid: 50, mode: 0o640 },
                blocks: vec![BlockMeta {
                    descriptor: BlockDescriptor {
                        file: FileDescriptor { id: crate::descriptor::FileId(5), version: 2 },
                        index: 0,
                        version: crate::descriptor::BlockVersion(1),
                    },
                    replicas: vec![NodeId(4), NodeId(5)],
                    read: None,
                }],
            }),
            total_blocks: 1,
            first_block: 0,
        }),
        Message::MetaReply(MetaReply::Stat {
            stat: Stat::Dir {
                id: 1,
                entries: 3,
                subdirs: 2,
                times: Times { atime_us: 4_000_001, mtime_us: 4_000_002, ctime_us: 4_000_003 },
                owner: crate::namespace::Owner { uid: 0, gid: 0, mode: 0o1777 },
            },
            total_blocks: 0,
            first_block: 0,
        }),
        Message::MetaReply(MetaReply::Removed { files: 1, dirs: 2 }),
        Message::MetaReply(MetaReply::Unavailable("election".into())),
        Message::MetaReply(MetaReply::Done),
        Message::WriteChunk(WriteChunk {
            token: Token::sign(
                b"secret-0123456789abcdef",
                BlockDescriptor {
                    file: FileDescriptor { id: crate::descriptor::FileId(3), version: 5 },
                    index: 2,
                    version: crate::descriptor::BlockVersion(9),
                },
                crate::descriptor::BlockVersion(8),
                crate::token::TokenOp::Write,
                vec![NodeId(4)],
                meshfs_group::ClientId(1),
                77,
            ),
            block_size: 1 << 20,
            keep_existing: false,
            offset: 4096,
            last: true,
            data: vec![1, 2, 3],
        }),
        Message::WriteAck(WriteAck::Written { through: 99, committed: true }),
        Message::WriteAck(WriteAck::Failed { at: NodeId(5), message: "disk full".into() }),
        Message::ReadBlock(ReadBlock {
            block: BlockDescriptor {
                file: FileDescriptor { id: crate::descriptor::FileId(3), version: 5 },
                index: 2,
                version: crate::descriptor::BlockVersion(9),
            },
            offset: 65536,
            len: 100,
        }),
        Message::BlockData(BlockData::Range(RangeRead {
            first_segment: 1,
            block_len: 70_000,
            offset: 65_600,
            crcs: vec![7],
            head_crc: 8,
            tail_crc: 9,
            data: vec![0; 10],
        })),
        Message::BlockData(BlockData::Failed { message: "no replica".into() }),
        Message::MetaRequest(MetaRequest {
            session: 3,
            request_id: 1,
            op: MetaOp::ReportBadReplica {
                block: BlockDescriptor {
                    file: FileDescriptor { id: crate::descriptor::FileId(3), version: 5 },
                    index: 2,
                    version: crate::descriptor::BlockVersion(9),
                },
                server: NodeId(5),
                reason: "segment 3 failed its checksum".into(),
            },
        }),
        Message::BlockCommitted(BlockDescriptor {
            file: FileDescriptor { id: crate::descriptor::FileId(3), version: 6 },
            index: 2,
            version: BlockVersion(10),
        }),
        Message::DataReport(DataReport {
            capacity: 1 << 30,
            used: 12345,
            full: true,
            last: false,
            blocks: vec![(
                BlockDescriptor {
                    file: FileDescriptor { id: crate::descriptor::FileId(3), version: 5 },
                    index: 2,
                    version: crate::descriptor::BlockVersion(9),
                },
                4096,
            )],
            removed: vec![(7, 1)],
        }),
        Message::MetaReply(MetaReply::Lease(Token::sign(
            b"secret-0123456789abcdef",
            BlockDescriptor {
                file: FileDescriptor { id: crate::descriptor::FileId(3), version: 5 },
                index: 2,
                version: crate::descriptor::BlockVersion(9),
            },
            crate::descriptor::BlockVersion(8),
            crate::token::TokenOp::Write,
            vec![NodeId(4), NodeId(5)],
            meshfs_group::ClientId(1),
            77,
        ))),
        Message::MetaRequest(MetaRequest {
            session: 2,
            request_id: 9,
            op: MetaOp::WriteLease { path: MeshPath::parse("/f").unwrap(), index: 7 },
        }),
        Message::MetaRequest(MetaRequest {
            session: 2,
            request_id: 11,
            op: MetaOp::SwapReplica {
                path: MeshPath::parse("/f").unwrap(),
                index: 7,
                failed: NodeId(5),
            },
        }),
        Message::MetaRequest(MetaRequest {
            session: 2,
            request_id: 10,
            op: MetaOp::CommitWrite {
                path: MeshPath::parse("/f").unwrap(),
                index: 7,
                version: BlockVersion(12),
            },
        }),
        Message::MetaReply(MetaReply::Expanded {
            file: FileDescriptor { id: crate::descriptor::FileId(3), version: 4 },
            new_blocks: 2,
        }),
        Message::MetaRequest(MetaRequest {
            session: 2,
            request_id: 8,
            op: MetaOp::Expand { path: MeshPath::parse("/f").unwrap(), size: 1 << 40 },
        }),
        Message::Error { code: ErrorCode::Unsupported, message: "no such request".into() },
        // Added after the first golden file: new samples go last, so its lines stay put.
        Message::MetaRequest(MetaRequest {
            session: 3,
            request_id: 4,
            op: MetaOp::Mkdir { path: MeshPath::parse("/a/b").unwrap(), parents: true, mode: None },
        }),
        Message::MetaRequest(MetaRequest {
            session: 3,
            request_id: 5,
            op: MetaOp::Remove { path: MeshPath::parse("/a").unwrap(), recursive: true },
        }),
        Message::MetaRequest(MetaRequest {
            session: 3,
            request_id: 6,
            op: MetaOp::Stat { path: MeshPath::parse("/a/f").unwrap(), first_block: 8192 },
        }),
        Message::MetaRequest(MetaRequest { session: 9, request_id: 16, op: MetaOp::ClusterMap }),
        Message::MetaReply(MetaReply::ClusterMap(ClusterMap {
            block_size: 65536,
            replication: 2,
            servers: vec![
                (Role::MServer, NodeId(1), "127.0.0.1:7101".into()),
                (Role::DServer, NodeId(4), "127.0.0.1:7201".into()),
            ],
        })),
        Message::MetaReply(MetaReply::Stat {
            stat: Stat::File(FileMeta {
                descriptor: FileDescriptor { id: crate::descriptor::FileId(5), version: 3 },
                size: 10,
                block_size: 65536,
                replication: 1,
                created_ms: 1,
                links: 3,
                times: Times { atime_us: 2_000_001, mtime_us: 2_000_002, ctime_us: 2_000_003 },
                owner: crate::namespace::Owner { uid: 1001, gid: 50, mode: 0o640 },
                blocks: vec![BlockMeta {
                    descriptor: BlockDescriptor {
                        file: FileDescriptor { id: crate::descriptor::FileId(5), version: 3 },
                        index: 0,
                        version: crate::descriptor::BlockVersion(2),
                    },
                    replicas: vec![NodeId(4)],
                    read: Some(crate::token::ReadToken { expires_ms: 77, mac: [0x42; 32] }),
                }],
            }),
            total_blocks: 1,
            first_block: 0,
        }),
        Message::TokenRead {
            read: ReadBlock {
                block: BlockDescriptor {
                    file: FileDescriptor { id: crate::descriptor::FileId(5), version: 3 },
                    index: 0,
                    version: crate::descriptor::BlockVersion(2),
                },
                offset: 4096,
                len: 8192,
            },
            token: crate::token::ReadToken { expires_ms: 77, mac: [0x42; 32] },
        },
        Message::MetaRequest(MetaRequest {
            session: 9,
            request_id: 17,
            op: MetaOp::CommitProven {
                path: MeshPath::parse("/f").unwrap(),
                index: 0,
                version: crate::descriptor::BlockVersion(2),
                digest: [0x11; 32],
                proofs: vec![crate::token::ReplicaProof {
                    replica: NodeId(4),
                    digest: [0x11; 32],
                    mac: [0x22; 32],
                }],
            },
        }),
        Message::WriteAck(WriteAck::Committed {
            through: 65536,
            proofs: vec![crate::token::ReplicaProof {
                replica: NodeId(5),
                digest: [0x33; 32],
                mac: [0x44; 32],
            }],
        }),
        Message::MetaRequest(MetaRequest {
            session: 9,
            request_id: 18,
            op: MetaOp::Chmod { path: MeshPath::parse("/f").unwrap(), mode: 0o1750 },
        }),
        Message::MetaRequest(MetaRequest {
            session: 9,
            request_id: 19,
            op: MetaOp::Chown { path: MeshPath::parse("/f").unwrap(), uid: 1001, gid: 50 },
        }),
        Message::MetaRequest(MetaRequest {
            session: 9,
            request_id: 20,
            op: MetaOp::ActAs {
                uid: 1001,
                gids: vec![1001, 50],
                op: Box::new(MetaOp::Mkdir {
                    path: MeshPath::parse("/u").unwrap(),
                    parents: false,
                    mode: None,
                }),
            },
        }),
        Message::MetaRequest(MetaRequest {
            session: 9,
            request_id: 21,
            op: MetaOp::CreateWrite {
                path: MeshPath::parse("/a/d").unwrap(),
                replication: 2,
                size: 100,
                mode: Some(0o600),
            },
        }),
        Message::MetaRequest(MetaRequest {
            session: 9,
            request_id: 22,
            op: MetaOp::Create {
                path: MeshPath::parse("/a/e").unwrap(),
                replication: 0,
                mode: Some(0o4750),
            },
        }),
        Message::MetaRequest(MetaRequest {
            session: 9,
            request_id: 23,
            op: MetaOp::Mkdir {
                path: MeshPath::parse("/a/f/g").unwrap(),
                parents: true,
                mode: Some(0o1700),
            },
        }),
        Message::MetaRequest(MetaRequest {
            session: 9,
            request_id: 24,
            op: MetaOp::Rename {
                from: MeshPath::parse("/a/new").unwrap(),
                to: MeshPath::parse("/a/old").unwrap(),
                replace: true,
            },
        }),
        Message::MetaRequest(MetaRequest {
            session: 9,
            request_id: 25,
            op: MetaOp::SetTimes {
                path: MeshPath::parse("/a/old").unwrap(),
                atime: SetTime::Now,
                mtime: SetTime::At(1_700_000_000_123_456),
            },
        }),
        Message::MetaRequest(MetaRequest {
            session: 9,
            request_id: 26,
            op: MetaOp::Truncate { path: MeshPath::parse("/a/old").unwrap(), size: 1 << 33 },
        }),
        Message::MetaRequest(MetaRequest {
            session: 9,
            request_id: 27,
            op: MetaOp::MakeNode {
                path: MeshPath::parse("/a/l").unwrap(),
                kind: NodeType::Symlink,
                target: "/a/old".into(),
                rdev: 0,
                mode: 0o777,
            },
        }),
        Message::MetaReply(MetaReply::Stat {
            stat: Stat::Other {
                id: 77,
                kind: NodeType::Block,
                target: String::new(),
                rdev: 0x0801,
                links: 2,
                times: Times { atime_us: 1, mtime_us: 2, ctime_us: 3 },
                owner: crate::namespace::Owner { uid: 0, gid: 6, mode: 0o660 },
            },
            total_blocks: 0,
            first_block: 0,
        }),
        Message::MetaRequest(MetaRequest {
            session: 9,
            request_id: 28,
            op: MetaOp::Link {
                from: MeshPath::parse("/a/old").unwrap(),
                to: MeshPath::parse("/b/second").unwrap(),
            },
        }),
        Message::MetaRequest(MetaRequest {
            session: 9,
            request_id: 29,
            op: MetaOp::SetXattr {
                path: MeshPath::parse("/a/old").unwrap(),
                name: "user.origin".into(),
                value: vec![0, 1, 2, 255],
                how: crate::namespace::XattrSet::Replace,
            },
        }),
        Message::MetaRequest(MetaRequest {
            session: 9,
            request_id: 30,
            op: MetaOp::RemoveXattr {
                path: MeshPath::parse("/a/old").unwrap(),
                name: "user.origin".into(),
            },
        }),
        Message::MetaRequest(MetaRequest {
            session: 9,
            request_id: 31,
            op: MetaOp::GetXattr {
                path: MeshPath::parse("/a/old").unwrap(),
                name: "user.origin".into(),
            },
        }),
        Message::MetaRequest(MetaRequest {
            session: 9,
            request_id: 32,
            op: MetaOp::ListXattr { path: MeshPath::parse("/a/old").unwrap() },
        }),
        Message::MetaReply(MetaReply::Xattr(b"lab 3".to_vec())),
        Message::MetaReply(MetaReply::XattrNames(vec!["user.a".into(), "user.origin".into()])),
        Message::MetaRequest(MetaRequest {
            session: 9,
            request_id: 33,
            op: MetaOp::ListPlus {
                path: MeshPath::parse("/a").unwrap(),
                after: "f".into(),
                limit: 100,
            },
        }),
        Message::MetaReply(MetaReply::ListPlus {
            entries: vec![
                (
                    "d".into(),
                    Stat::Dir {
                        id: 3,
                        entries: 4,
                        subdirs: 1,
                        times: Times { atime_us: 1, mtime_us: 2, ctime_us: 3 },
                        owner: crate::namespace::Owner { uid: 0, gid: 0, mode: 0o755 },
                    },
                ),
                (
                    "l".into(),
                    Stat::Other {
                        id: 4,
                        kind: NodeType::Symlink,
                        target: "d".into(),
                        rdev: 0,
                        links: 1,
                        times: Times { atime_us: 4, mtime_us: 5, ctime_us: 6 },
                        owner: crate::namespace::Owner { uid: 7, gid: 8, mode: 0o777 },
                    },
                ),
            ],
            more: true,
        }),
    ]
}

#[test]
fn every_message_round_trips() {
    for message in samples() {
        let frame = message.to_frame(7);
        assert_eq!(frame.request_id, 7);
        assert_eq!(Message::decode(&frame), Ok(message));
    }
}

/// Every sample's kind and body bytes, frozen: a layout change shows here first.
#[test]
fn golden_bytes_of_every_message() {
    let text: String = samples()
        .iter()
        .map(|m| format!("{} {}\n", m.kind().code(), meshfs_test_kit::golden::hex(&m.encode())))
        .collect();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/wire.txt");
    meshfs_test_kit::golden::check_text(path, &text);
}

/// The lines of `testdata/wire-old.txt`: messages in layouts an older build wrote.
fn old_wire_lines() -> Vec<(u16, Vec<u8>)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/wire-old.txt");
    let text = String::from_utf8(meshfs_test_kit::golden::read(path)).unwrap();
    text.lines()
        .map(|line| {
            let (kind, hex) = line.split_once(' ').unwrap();
            (kind.parse().unwrap(), meshfs_test_kit::golden::unhex(hex))
        })
        .collect()
}

#[test]
fn messages_in_layouts_older_builds_wrote_are_still_read() {
    for (kind, body) in old_wire_lines() {
        let message = Message::decode(&Frame::new(kind, 1, body.clone()))
            .unwrap_or_else(|e| panic!("kind {kind} {body:02x?}: {e}"));
        // The list entries and stats of a build before owners read as root's, open to all
        // (stat kinds 0 and 1); those of a build before times (kinds 0 to 3) have all three
        // times at their one time.
        use crate::namespace::Owner;
        if let Message::MetaReply(MetaReply::Stat { stat, .. }) = &message {
            // Every layout before kinds 7 and 8 gives a file or special file one name.
            if !matches!(stat, Stat::Dir { .. }) {
                assert_eq!(stat.links(), 1, "stat kind {}", body[1]);
            }
            // Kinds 5 and 6: a file's and a special file's before hard links.
            if body[1] == 5 || body[1] == 6 {
                continue;
            }
            let times = stat.times();
            assert!(body[1] <= 3, "only layouts before times are old");
            assert!(times.atime_us == times.mtime_us && times.ctime_us == times.mtime_us);
            if body[1] >= 2 {
                continue;
            }
        }
        match &message {
            Message::MetaReply(MetaReply::List { entries, .. }) => {
                assert!(entries.iter().all(|e| e.owner == Owner::legacy(e.is_dir)));
            }
            Message::MetaReply(MetaReply::Stat { stat: Stat::Dir { owner, .. }, .. }) => {
                assert_eq!(*owner, Owner::legacy(true));
            }
            Message::MetaReply(MetaReply::Stat { stat: Stat::File(meta), .. }) => {
                assert_eq!(meta.owner, Owner::legacy(false));
            }
            _ => {}
        }
    }
}

#[test]
fn lying_counts_in_a_cluster_map_and_an_act_as_are_refused() {
    // A cluster map claiming more servers than MAX_MAP_SERVERS.
    // Every entry is there, so only the count check can refuse it; one fewer decodes.
    let map = |count: u32| {
        let mut w = BodyWriter::new();
        w.u8(ReplyTag::ClusterMap as u8).u32(65536).u8(1).u32(count);
        for id in 0..count {
            w.u8(1).u32(id + 1).str("");
        }
        Frame::new(Kind::MetaReply.code(), 1, w.finish())
    };
    assert!(Message::decode(&map(MAX_MAP_SERVERS)).is_ok());
    assert!(Message::decode(&map(MAX_MAP_SERVERS + 1)).is_err());
    // An act-as naming more groups than MAX_ACT_AS_GIDS.
    let mut w = BodyWriter::new();
    w.u64(1).u64(1).u8(OpCode::ActAs as u8).u32(1001).u8(17);
    for gid in 0..17u32 {
        w.u32(gid);
    }
    w.u8(OpCode::KeepAlive as u8);
    assert!(Message::decode(&Frame::new(Kind::MetaRequest.code(), 1, w.finish())).is_err());
    let mut w = BodyWriter::new();
    w.u64(1).u64(1).u8(OpCode::ActAs as u8).u32(1001).u8(16);
    for gid in 0..16u32 {
        w.u32(gid);
    }
    w.u8(OpCode::KeepAlive as u8);
    assert!(Message::decode(&Frame::new(Kind::MetaRequest.code(), 1, w.finish())).is_ok());
}

#[test]
fn an_act_as_never_wraps_another() {
    let inner = MetaOp::ActAs { uid: 2, gids: vec![], op: Box::new(MetaOp::KeepAlive) };
    let nested = Message::MetaRequest(MetaRequest {
        session: 1,
        request_id: 1,
        op: MetaOp::ActAs { uid: 1, gids: vec![1], op: Box::new(inner) },
    });
    assert!(Message::decode(&nested.to_frame(1)).is_err(), "one level only");
}

#[test]
fn golden_error_and_request() {
    let error = Message::Error { code: ErrorCode::BadRequest, message: "no".into() };
    assert_eq!(error.encode(), [2, 0, 2, b'n', b'o']);
    assert!(Message::StatusRequest.encode().is_empty());
}

#[test]
fn cuts_extra_bytes_and_unknown_kinds_are_errors() {
    for message in samples() {
        if matches!(message, Message::Raft(_)) {
            continue; // opaque bytes: any length is a body; raft-rs checks them
        }
        let frame = message.to_frame(1);
        for cut in 0..frame.body.len() {
            let cut_frame = Frame::new(frame.kind, 1, frame.body[..cut].to_vec());
            assert!(Message::decode(&cut_frame).is_err());
        }
        let mut long = frame.clone();
        long.body.push(0);
        assert!(Message::decode(&long).is_err());
    }
    assert_eq!(Message::decode(&Frame::new(999, 0, vec![])), Err(WireError::UnknownKind(999)));
}

#[test]
fn a_lying_peer_count_is_refused_before_allocating() {
    let mut frame = samples()[1].to_frame(0);
    // The peer count sits after the fixed fields and three strings; find it by re-encoding
    // with zero peers and patching the count.
    let Message::StatusReply(mut s) = samples()[1].clone() else { unreachable!() };
    s.peers.clear();
    s.raft = None;
    s.data_servers.clear();
    s.health = None;
    let short = Message::StatusReply(s).encode();
    // The count, the has_raft byte, the data-server count, the has_health byte.
    let count_at = short.len() - 10;
    frame.body = short;
    frame.body[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        Message::decode(&frame),
        Err(WireError::Body { source: BodyError::Invalid { field: "peer count", .. }, .. })
    ));
}

/// The range `offset..offset + len` of `block` as a data-server cuts it from whole
/// segments with their stored checksums.
fn range_of(block: &[u8], offset: u64, len: u64) -> RangeRead {
    let seg = SEGMENT_BYTES as usize;
    let crcs: Vec<u32> = block.chunks(seg).map(crc32fast::hash).collect();
    let first = offset as usize / seg;
    let end = (offset + len).min(block.len() as u64) as usize;
    let last = if end <= offset as usize { first } else { (end - 1) / seg };
    let bytes = block[first * seg..((last + 1) * seg).min(block.len())].to_vec();
    RangeRead::from_segments(
        first as u32,
        block.len() as u64,
        crcs[first..=last].to_vec(),
        bytes,
        offset,
        len,
    )
}

#[test]
fn a_range_checks_its_segments_without_carrying_them() {
    let block: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let read = range_of(&block, 70_000, 4096);
    assert_eq!(read.data, &block[70_000..74_096]);
    assert_eq!(read.verify(), Ok(()));
    let mut bad = read.clone();
    bad.data[100] ^= 1;
    assert_eq!(bad.verify(), Err(RangeError::Damaged(1)));
    let mut bad = read.clone();
    bad.head_crc ^= 1;
    assert_eq!(bad.verify(), Err(RangeError::Damaged(1)), "a damaged head");
    let mut bad = read.clone();
    bad.tail_crc ^= 1;
    assert_eq!(bad.verify(), Err(RangeError::Damaged(1)), "a damaged tail");
    let mut bad = read.clone();
    bad.offset += 1;
    assert_eq!(bad.verify(), Err(RangeError::Damaged(1)), "bytes claimed at the wrong place");
    let mut bad = read;
    bad.offset = 0;
    assert!(matches!(bad.verify(), Err(RangeError::Malformed(_))));
    // Across three segments to the block's end (the last segment is short).
    let read = range_of(&block, 100_000, 200_000);
    assert_eq!(read.data, &block[100_000..]);
    assert_eq!(read.crcs.len(), 3);
    assert_eq!(read.verify(), Ok(()));
    let mut bad = read;
    bad.data[200_000 - 100_000 - 1] ^= 0x80;
    assert_eq!(bad.verify(), Err(RangeError::Damaged(3)));
}

proptest! {
    #[test]
    fn any_range_of_any_block_verifies_and_any_flipped_bit_is_caught(
        len in 1usize..300_000,
        at in any::<prop::sample::Index>(),
        want in 0u64..200_000,
        flip in any::<prop::sample::Index>(),
    ) {
        let block: Vec<u8> = (0..len).map(|i| (i * 131 % 251) as u8).collect();
        let offset = at.index(len) as u64;
        let read = range_of(&block, offset, want);
        let end = (offset + want).min(len as u64) as usize;
        prop_assert_eq!(&read.data[..], &block[offset as usize..end]);
        prop_assert_eq!(read.verify(), Ok(()));
        if !read.data.is_empty() {
            let mut bad = read.clone();
            let bit = flip.index(bad.data.len() * 8);
            bad.data[bit / 8] ^= 1 << (bit % 8);
            let segment = (offset as usize + bit / 8) / SEGMENT_BYTES as usize;
            prop_assert_eq!(bad.verify(), Err(RangeError::Damaged(segment as u32)));
        }
    }

    #[test]
    fn arbitrary_bodies_never_panic(
        kind in proptest::sample::select(Kind::ALL),
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let _ = Message::decode(&Frame::new(kind.code(), 0, body));
    }
}

/// The rows `| number | name ...` of the first markdown table in `doc` (a module's `//!`
/// lines) whose header starts with `heading`; the name is the first word in backticks.
fn doc_table(source: &str, heading: &str) -> Vec<(u64, String)> {
    let lines: Vec<&str> =
        source.lines().filter_map(|l| l.strip_prefix("//!")).map(str::trim).collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with(&format!("| {heading} |")))
        .unwrap_or_else(|| panic!("no table headed {heading:?}"));
    lines[start + 2..]
        .iter()
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let number = cells[1].parse().unwrap_or_else(|_| panic!("bad number in {row}"));
            let name = cells[2].split('`').nth(1).unwrap_or_else(|| panic!("no name in {row}"));
            let name = name.rsplit("::").next().unwrap_or(name);
            (number, name.to_string())
        })
        .collect()
}

#[test]
fn the_documented_tables_match_the_code() {
    let kinds: Vec<(u64, String)> =
        Kind::ALL.iter().map(|k| (u64::from(k.code()), k.name().to_string())).collect();
    assert_eq!(doc_table(include_str!("mod.rs"), "kind"), kinds, "the kinds table in wire/mod.rs");
    let ops: Vec<(u64, String)> =
        OpCode::ALL.iter().map(|o| (u64::from(*o as u8), o.name().to_string())).collect();
    assert_eq!(doc_table(include_str!("meta.rs"), "op"), ops, "the op table in wire/meta.rs");
    let tags: Vec<(u64, String)> =
        ReplyTag::ALL.iter().map(|t| (u64::from(*t as u8), t.name().to_string())).collect();
    assert_eq!(doc_table(include_str!("meta.rs"), "tag"), tags, "the reply table in wire/meta.rs");
    for kind in Kind::ALL {
        assert_eq!(Kind::from_repr(kind.code()), Some(*kind));
    }
}

/// Every op and reply tag has a sample, so the golden file covers each one.
#[test]
fn every_op_and_reply_tag_has_a_golden_sample() {
    let mut ops = std::collections::BTreeSet::new();
    let mut tags = std::collections::BTreeSet::new();
    let mut kinds = std::collections::BTreeSet::new();
    for message in samples() {
        kinds.insert(message.kind().code());
        let body = message.encode();
        match message {
            Message::MetaRequest(_) => {
                ops.insert(body[16]);
            }
            Message::MetaReply(_) => {
                tags.insert(body[0]);
            }
            _ => {}
        }
    }
    // Layouts today's build no longer writes but still reads have their golden bytes in
    // testdata/wire-old.txt.
    for (kind, body) in old_wire_lines() {
        kinds.insert(kind);
        if kind == Kind::MetaReply.code() {
            tags.insert(body[0]);
        }
    }
    assert_eq!(kinds.len(), Kind::ALL.len(), "a sample of every kind");
    assert_eq!(ops.len(), OpCode::ALL.len(), "a sample of every op");
    assert_eq!(tags.len(), ReplyTag::ALL.len(), "a sample of every reply");
}

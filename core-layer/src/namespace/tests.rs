//! Tests of the namespace: operations, retries, snapshots, golden bytes, and a model test.

use super::snapshot::SNAPSHOT_FORMAT;
use super::*;
use crate::descriptor::{BlockDescriptor, MAX_BLOCKS_PER_FILE};
use crate::locks::LockMode;
use crate::path::PathError;
use meshfs_group::ClientId;
use proptest::prelude::*;
use std::collections::BTreeMap as Model;

const BS: u32 = 1024;

fn p(text: &str) -> MeshPath {
    MeshPath::parse(text).unwrap()
}

/// Applies commands as one session with increasing request ids.
struct Driver {
    ns: Namespace,
    session: SessionId,
    next_request: u64,
    time: u64,
}

impl Driver {
    fn new() -> Driver {
        Driver {
            ns: Namespace::new(),
            session: SessionId { client: ClientId(1), nonce: 42 },
            next_request: 1,
            time: 1_000,
        }
    }

    fn entry(&mut self, command: Command) -> Entry {
        let entry = Entry {
            session: self.session,
            request_id: self.next_request,
            time_ms: self.time,
            caller: crate::namespace::Caller::system(),
            command,
        };
        self.next_request += 1;
        self.time += 1;
        entry
    }

    fn run(&mut self, command: Command) -> Outcome {
        let entry = self.entry(command);
        self.ns.apply(&entry)
    }

    fn mkdir(&mut self, path: &str, parents: bool) -> Outcome {
        self.run(Command::Mkdir { path: p(path), parents, mode: None })
    }

    fn create(&mut self, path: &str) -> Outcome {
        self.run(Command::CreateFile { path: p(path), replication: 2, block_size: BS, mode: None })
    }

    fn expand(&mut self, path: &str, size: u64, new_blocks: usize) -> Outcome {
        let placement =
            (0..new_blocks).map(|i| vec![NodeId(4 + (i as u32 % 3)), NodeId(7)]).collect();
        let first_block = self.ns.get_file_meta_data(&p(path)).map_or(0, |m| m.blocks.len() as u32);
        self.run(Command::ExpandFile { path: p(path), size, first_block, placement })
    }

    fn rename(&mut self, from: &str, to: &str) -> Outcome {
        self.run(Command::Rename { from: p(from), to: p(to), replace: false })
    }

    fn rename_over(&mut self, from: &str, to: &str) -> Outcome {
        self.run(Command::Rename { from: p(from), to: p(to), replace: true })
    }

    fn remove(&mut self, path: &str, recursive: bool) -> Outcome {
        self.run(Command::Remove { path: p(path), recursive })
    }
}

fn failed(outcome: Outcome) -> NsError {
    match outcome {
        Outcome::Failed(err) => err,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn mkdir_with_and_without_parents() {
    let mut d = Driver::new();
    assert_eq!(d.mkdir("/a", false), Outcome::Mkdir);
    assert_eq!(failed(d.mkdir("/a", false)), NsError::AlreadyExists("/a".into()));
    assert_eq!(d.mkdir("/a", true), Outcome::Mkdir, "-p accepts an existing directory");
    assert_eq!(failed(d.mkdir("/x/y", false)), NsError::NotFound("/x".into()));
    assert_eq!(d.mkdir("/x/y/z", true), Outcome::Mkdir);
    assert!(matches!(d.ns.stat(&p("/x/y/z")), Ok(Stat::Dir { entries: 0, .. })));
    assert!(matches!(d.ns.stat(&p("/x")), Ok(Stat::Dir { entries: 1, .. })));
    d.create("/a/f");
    assert_eq!(failed(d.mkdir("/a/f/g", true)), NsError::NotADirectory("/a/f".into()));
    assert_eq!(failed(d.mkdir("/a/f/g", false)), NsError::NotADirectory("/a/f".into()));
    assert_eq!(failed(d.mkdir("/", false)), NsError::AlreadyExists("/".into()));
    assert_eq!(d.mkdir("/", true), Outcome::Mkdir);
}

#[test]
fn create_file_meta_data_and_get_it_back() {
    let mut d = Driver::new();
    let Outcome::Created(fd) = d.create("/f") else { panic!() };
    assert_eq!(fd.version, 1);
    assert_eq!(failed(d.create("/f")), NsError::AlreadyExists("/f".into()));
    assert_eq!(failed(d.create("/nodir/f")), NsError::NotFound("/nodir".into()));
    assert_eq!(failed(d.create("/f/g")), NsError::NotADirectory("/f".into()));
    assert_eq!(
        failed(d.run(Command::CreateFile {
            path: p("/g"),
            replication: 0,
            block_size: BS,
            mode: None
        })),
        NsError::BadReplication(0)
    );
    let meta = d.ns.get_file_meta_data(&p("/f")).unwrap();
    assert_eq!(meta.descriptor, fd);
    assert_eq!((meta.size, meta.block_size, meta.replication), (0, BS, 2));
    assert!(meta.blocks.is_empty());
    assert_eq!(
        failed(Outcome::Failed(d.ns.get_file_meta_data(&p("/")).unwrap_err())),
        NsError::IsADirectory("/".into())
    );
    assert_eq!(d.ns.get_file_meta_data(&p("/nope")), Err(NsError::NotFound("/nope".into())));
}

#[test]
fn expand_file_size_allocates_placed_blocks_and_bumps_the_version() {
    let mut d = Driver::new();
    d.create("/f");
    let Outcome::Expanded { file, blocks } = d.expand("/f", 2500, 3) else { panic!() };
    assert_eq!(file.version, 2);
    assert_eq!(blocks.iter().map(|b| b.index).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(blocks.iter().all(|b| b.version == BlockVersion(1) && b.file == file));
    // Growing inside the last block adds no block but still changes the metadata.
    let Outcome::Expanded { file, blocks } = d.expand("/f", 3072, 0) else { panic!() };
    assert_eq!((file.version, blocks.len()), (3, 0));
    let block = d.ns.get_block_metadata(&p("/f"), 1).unwrap();
    assert_eq!(block.replicas, [NodeId(5), NodeId(7)]);
    assert_eq!(block.descriptor.file.version, 3);
    assert!(matches!(d.ns.get_block_metadata(&p("/f"), 3), Err(NsError::NotFound(_))));

    assert!(matches!(
        failed(d.expand("/f", 100, 0)),
        NsError::Shrink { size: 3072, requested: 100, .. }
    ));
    assert!(matches!(
        failed(d.expand("/f", 5000, 1)),
        NsError::BadPlacement { given: 1, needed: 2, .. }
    ));
    let twice = vec![vec![NodeId(4), NodeId(4)]];
    let bad =
        d.run(Command::ExpandFile { path: p("/f"), size: 4000, first_block: 3, placement: twice });
    assert!(matches!(failed(bad), NsError::BadPlacement { .. }), "two replicas on one server");
    d.mkdir("/dir", false);
    assert_eq!(failed(d.expand("/dir", 1, 1)), NsError::IsADirectory("/dir".into()));
    // Nothing changed by the failures.
    assert_eq!(d.ns.get_file_meta_data(&p("/f")).unwrap().descriptor.version, 3);
}

fn lease(d: &mut Driver, index: u16) -> (BlockDescriptor, BlockVersion) {
    match d.run(Command::WriteLease { path: p("/f"), index }) {
        Outcome::Leased { block, base, .. } => (block, base),
        other => panic!("no lease: {other:?}"),
    }
}

fn commit(d: &mut Driver, index: u16, version: BlockVersion) -> Outcome {
    d.run(Command::CommitWrite { path: p("/f"), index, version })
}

#[test]
fn a_leased_version_becomes_the_block_version_only_when_committed() {
    let mut d = Driver::new();
    d.create("/f");
    d.expand("/f", 3000, 3);
    let now = d.time;
    let Outcome::Leased { block, base, replicas, expires_ms } =
        d.run(Command::WriteLease { path: p("/f"), index: 1 })
    else {
        panic!("a lease")
    };
    assert_eq!((block.index, block.version, base), (1, BlockVersion(2), BlockVersion(1)));
    assert_eq!(expires_ms, now + LEASE_MS);
    assert_eq!(replicas, [NodeId(5), NodeId(7)]);
    // Readers still see the committed version: the write may never happen.
    let meta = d.ns.get_file_meta_data(&p("/f")).unwrap();
    assert_eq!(meta.blocks[1].descriptor.version, BlockVersion::UNWRITTEN);
    assert_eq!(meta.descriptor.version, 2);
    let Outcome::Committed { block: done, .. } = commit(&mut d, 1, block.version) else {
        panic!("committed")
    };
    assert_eq!(done.version, BlockVersion(2));
    let meta = d.ns.get_file_meta_data(&p("/f")).unwrap();
    assert_eq!(meta.blocks[1].descriptor.version, BlockVersion(2));
    assert_eq!(meta.blocks[0].descriptor.version, BlockVersion(1), "other blocks keep theirs");
    assert_eq!(meta.descriptor.version, 3, "the file's metadata changed");
    // A second commit of the same lease (a new request) finds no lease.
    assert!(matches!(failed(commit(&mut d, 1, block.version)), NsError::LeaseLost { .. }));
    assert!(matches!(
        failed(d.run(Command::WriteLease { path: p("/f"), index: 3 })),
        NsError::NotFound(_)
    ));
    // 65,535 more leases wrap the 16-bit version (65,535 values: 1 is skipped), and each
    // still compares as newer than the last.
    let mut last = BlockVersion(2);
    for _ in 0..u16::MAX {
        let (block, base) = lease(&mut d, 1);
        assert_eq!(base, last);
        assert!(block.version.is_newer_than(last));
        assert!(matches!(commit(&mut d, 1, block.version), Outcome::Committed { .. }));
        last = block.version;
    }
    assert_eq!(last, BlockVersion(2), "wrapped around, skipping version 1 (unwritten)");
}

#[test]
fn a_lease_is_exclusive_until_it_runs_out_and_a_lost_lease_cannot_commit() {
    let mut d = Driver::new();
    d.create("/f");
    d.expand("/f", 3000, 3);
    let first = d.session;
    let other = SessionId { client: ClientId(2), nonce: 7 };
    let (a, _) = lease(&mut d, 0);
    // The holder may ask again (a retry after a failed chain): a newer version, same base.
    let (a2, base) = lease(&mut d, 0);
    assert!(a2.version.is_newer_than(a.version));
    assert_eq!(base, BlockVersion::UNWRITTEN);
    d.session = other;
    let held = failed(d.run(Command::WriteLease { path: p("/f"), index: 0 }));
    assert!(matches!(held, NsError::LeaseHeld { client: 1, index: 0, .. }), "{held:?}");
    assert!(held.to_string().contains("being written by client 1"), "{held}");
    // Another block of the file is free, and the lease survives a snapshot.
    lease(&mut d, 2);
    let restored = Namespace::restore(&d.ns.snapshot()).unwrap();
    assert_eq!(restored.snapshot(), d.ns.snapshot());
    d.ns = restored;
    assert!(matches!(
        failed(d.run(Command::WriteLease { path: p("/f"), index: 0 })),
        NsError::LeaseHeld { .. }
    ));
    // Past its end, another writer takes the block, with a version never leased before;
    // the first writer's late commit is refused.
    d.time += LEASE_MS;
    let (b, base) = lease(&mut d, 0);
    assert!(b.version.is_newer_than(a2.version));
    assert_eq!(base, BlockVersion::UNWRITTEN);
    d.session = first;
    assert!(matches!(failed(commit(&mut d, 0, a2.version)), NsError::LeaseLost { .. }));
    d.session = other;
    assert!(matches!(commit(&mut d, 0, b.version), Outcome::Committed { .. }));
    assert_eq!(d.ns.get_file_meta_data(&p("/f")).unwrap().blocks[0].descriptor.version, b.version);
    // Removing the file drops its leases (the invariant check would catch one left).
    d.run(Command::Remove { path: p("/f"), recursive: false });
    assert!(d.ns.leases.is_empty());
}

#[test]
fn the_lease_holder_may_swap_a_failed_replica_of_a_block_never_written() {
    let mut d = Driver::new();
    d.create("/f");
    d.expand("/f", 3000, 3);
    let swap = |d: &mut Driver, failed: u32, replacement: u32| {
        d.run(Command::SwapReplica {
            path: p("/f"),
            index: 0,
            failed: NodeId(failed),
            replacement: NodeId(replacement),
        })
    };
    let err = failed(swap(&mut d, 4, 6)).to_string();
    assert!(err.contains("only the writer holding its lease"), "{err}");
    lease(&mut d, 0);
    assert_eq!(swap(&mut d, 4, 6), Outcome::Swapped { replicas: vec![NodeId(6), NodeId(7)] });
    assert_eq!(d.ns.allocated().get(&NodeId(4)), None);
    // Block 0 (1,024 bytes) and the last block, which holds the file's last 952 bytes:
    // a block counts the bytes of the file it covers.
    assert_eq!(d.ns.allocated().get(&NodeId(6)), Some(&(1024 + 952)));
    assert!(failed(swap(&mut d, 9, 5)).to_string().contains("not one of its replicas"));
    assert!(failed(swap(&mut d, 6, 7)).to_string().contains("already holds it"));
    // The new lease names the new chain.
    let Outcome::Leased { block, replicas, .. } =
        d.run(Command::WriteLease { path: p("/f"), index: 0 })
    else {
        panic!("a lease")
    };
    assert_eq!(replicas, [NodeId(6), NodeId(7)]);
    commit(&mut d, 0, block.version);
    lease(&mut d, 0);
    let err = failed(swap(&mut d, 6, 4)).to_string();
    assert!(err.contains("holds written data"), "{err}");
}

#[test]
fn repair_replaces_a_replica_only_at_the_version_copied_and_never_under_a_lease() {
    let mut d = Driver::new();
    d.create("/f");
    d.expand("/f", 3000, 3);
    let (block, _) = lease(&mut d, 0);
    let id = block.file.id.0;
    let replace = |d: &mut Driver, version: BlockVersion, remove: u32, add: u32| {
        d.run(Command::ReplaceReplica {
            file: id,
            index: 0,
            version,
            remove: NodeId(remove),
            add: NodeId(add),
        })
    };
    let err = failed(replace(&mut d, BlockVersion(1), 4, 6)).to_string();
    assert!(err.contains("write lease is in force"), "{err}");
    commit(&mut d, 0, block.version);
    let err = failed(replace(&mut d, BlockVersion(1), 4, 6)).to_string();
    assert!(err.contains("at version 2 now, not 1"), "{err}");
    assert!(failed(replace(&mut d, block.version, 9, 6)).to_string().contains("not one of"));
    assert!(failed(replace(&mut d, block.version, 4, 7)).to_string().contains("already"));
    assert_eq!(
        replace(&mut d, block.version, 4, 6),
        Outcome::Swapped { replicas: vec![NodeId(6), NodeId(7)] }
    );
    let view = d.ns.block(id, 0).unwrap();
    assert_eq!(
        (view.replicas, view.descriptor.version),
        (&[NodeId(6), NodeId(7)][..], block.version)
    );
    assert_eq!(d.ns.allocated().get(&NodeId(4)), None, "block 0 was all node 4 held");
    assert_eq!(d.ns.blocks().count(), 3);
    assert_eq!(d.ns.files_under(&p("/")).unwrap(), vec![("/f".to_string(), id)]);
    assert_eq!(
        d.run(Command::SetDraining { server: NodeId(6), draining: true }),
        Outcome::Draining { server: NodeId(6), draining: true }
    );
    assert!(d.ns.draining().contains(&NodeId(6)));
    let restored = Namespace::restore(&d.ns.snapshot()).unwrap();
    assert_eq!(restored, d.ns, "draining marks survive a snapshot");
    d.run(Command::SetDraining { server: NodeId(6), draining: false });
    assert!(d.ns.draining().is_empty());
}

#[test]
fn a_create_write_makes_leases_and_commits_a_small_file_in_one_entry_or_nothing() {
    let mut d = Driver::new();
    let create_write = |d: &mut Driver, path: &str, size: u64, placement: Vec<NodeId>| {
        d.run(Command::CreateWrite {
            path: p(path),
            replication: 2,
            block_size: BS,
            size,
            placement,
            mode: None,
        })
    };
    let Outcome::Leased { block, base, replicas, .. } =
        create_write(&mut d, "/f", 100, vec![NodeId(4), NodeId(5)])
    else {
        panic!("a lease")
    };
    assert_eq!(block.index, 0);
    assert_eq!(base, BlockVersion(1), "the write starts from the empty first version");
    assert_eq!(replicas, [NodeId(4), NodeId(5)]);
    assert_eq!(d.ns.allocated().get(&NodeId(4)), Some(&100), "a small file takes little");
    // Readers see it only once committed, as any leased write.
    let Ok(Stat::File(meta)) = d.ns.stat(&p("/f")) else { panic!("a file") };
    assert_eq!((meta.size, meta.blocks[0].descriptor.version), (100, BlockVersion(1)));
    commit(&mut d, 0, block.version);
    let Ok(Stat::File(meta)) = d.ns.stat(&p("/f")) else { panic!("a file") };
    assert_eq!(meta.blocks[0].descriptor.version, block.version);

    // Every failure leaves nothing behind.
    let before = d.ns.list(&p("/")).unwrap();
    let exists = failed(create_write(&mut d, "/f", 10, vec![NodeId(4), NodeId(5)]));
    assert!(matches!(exists, NsError::AlreadyExists(_)), "{exists}");
    let bad = failed(create_write(&mut d, "/g", 10, vec![NodeId(4), NodeId(4)]));
    assert!(matches!(bad, NsError::BadPlacement { .. }), "{bad}");
    let big = failed(create_write(&mut d, "/g", u64::from(BS) + 1, vec![NodeId(4)]));
    assert!(big.to_string().contains("does not fit one block"), "{big}");
    assert!(matches!(failed(create_write(&mut d, "/g", 0, vec![])), NsError::BadSize { .. }));
    assert_eq!(d.ns.list(&p("/")).unwrap(), before);
    assert_eq!(d.ns.allocated().get(&NodeId(4)), Some(&100));
}

#[test]
fn racing_expands_placed_from_one_view_both_apply() {
    let mut d = Driver::new();
    d.create("/f");
    // Both were placed by the leader while the file had no blocks.
    let sets =
        |n: usize| (0..n).map(|i| vec![NodeId(4 + i as u32 % 2), NodeId(9)]).collect::<Vec<_>>();
    let first = d.run(Command::ExpandFile {
        path: p("/f"),
        size: 2048,
        first_block: 0,
        placement: sets(2),
    });
    assert!(matches!(first, Outcome::Expanded { ref blocks, .. } if blocks.len() == 2));
    let second = d.run(Command::ExpandFile {
        path: p("/f"),
        size: 4096,
        first_block: 0,
        placement: sets(4),
    });
    let Outcome::Expanded { blocks, .. } = second else { panic!("{second:?}") };
    assert_eq!(
        blocks.iter().map(|b| b.index).collect::<Vec<_>>(),
        [2, 3],
        "only the missing blocks"
    );
    // A placement that starts after the blocks the file has cannot be used.
    let gap = d.run(Command::ExpandFile {
        path: p("/f"),
        size: 8192,
        first_block: 6,
        placement: sets(2),
    });
    assert!(matches!(failed(gap), NsError::BadPlacement { .. }));
    // Allocation per data-server follows the block lists, and removal gives it back.
    assert_eq!(d.ns.allocated().get(&NodeId(9)), Some(&(4 * u64::from(BS))));
    assert_eq!(d.ns.allocated().get(&NodeId(4)), Some(&(2 * u64::from(BS))));
    d.remove("/f", false);
    assert!(d.ns.allocated().is_empty());
}

#[test]
fn a_file_past_65536_blocks_is_a_clear_error() {
    let mut d = Driver::new();
    d.create("/big");
    let max = u64::from(MAX_BLOCKS_PER_FILE) * u64::from(BS);
    let err = failed(d.expand("/big", max + 1, 65_537));
    assert!(matches!(err, NsError::FileTooLarge { blocks: 65_537, .. }), "{err}");
    assert!(err.to_string().contains("at most 65536"), "{err}");
    assert!(matches!(d.expand("/big", max, 65_536), Outcome::Expanded { .. }));
    let last = d.ns.get_block_metadata(&p("/big"), u16::MAX).unwrap();
    assert_eq!(last.descriptor.index, 65_535);
}

#[test]
fn rename_is_atomic_and_never_moves_a_directory_into_itself() {
    let mut d = Driver::new();
    d.mkdir("/a/b", true);
    d.create("/a/b/f");
    assert_eq!(d.rename("/a/b/f", "/g"), Outcome::Renamed);
    assert!(d.ns.stat(&p("/g")).is_ok());
    assert!(d.ns.stat(&p("/a/b/f")).is_err());
    assert_eq!(d.rename("/a", "/z"), Outcome::Renamed);
    assert!(d.ns.stat(&p("/z/b")).is_ok());
    assert_eq!(
        failed(d.rename("/z", "/z/b/c")),
        NsError::MoveIntoItself { from: "/z".into(), to: "/z/b/c".into() }
    );
    assert_eq!(d.rename("/z", "/z"), Outcome::Renamed, "onto itself is a no-op, as in POSIX");
    assert_eq!(d.rename("/g", "/g"), Outcome::Renamed);
    assert_eq!(failed(d.rename("/g", "/z/b")), NsError::AlreadyExists("/z/b".into()));
    assert_eq!(failed(d.rename("/none", "/x")), NsError::NotFound("/none".into()));
    assert_eq!(failed(d.rename("/g", "/none/x")), NsError::NotFound("/none".into()));
    assert_eq!(failed(d.rename("/", "/x")), NsError::Root);
    // A sibling whose name merely starts the same is not "inside".
    d.mkdir("/ab", false);
    assert_eq!(d.rename("/z", "/ab/z"), Outcome::Renamed);
}

#[test]
fn remove_files_empty_dirs_and_trees() {
    let mut d = Driver::new();
    d.mkdir("/t/u/v", true);
    d.create("/t/f1");
    d.create("/t/u/f2");
    d.create("/top");
    assert_eq!(d.remove("/top", false), Outcome::Removed { files: 1, dirs: 0 });
    assert_eq!(failed(d.remove("/t", false)), NsError::NotEmpty("/t".into()));
    assert_eq!(d.remove("/t/u/v", false), Outcome::Removed { files: 0, dirs: 1 });
    assert_eq!(d.remove("/t", true), Outcome::Removed { files: 2, dirs: 2 });
    assert_eq!(d.ns.inode_count(), 1, "only the root is left");
    assert_eq!(failed(d.remove("/", true)), NsError::Root);
    assert_eq!(failed(d.remove("/t", true)), NsError::NotFound("/t".into()));
}

#[test]
fn list_and_stat() {
    let mut d = Driver::new();
    d.mkdir("/d/sub", true);
    d.create("/d/b");
    d.create("/d/a");
    d.expand("/d/a", 10, 1);
    let names: Vec<(String, bool, u64)> =
        d.ns.list(&p("/d")).unwrap().into_iter().map(|e| (e.name, e.is_dir, e.size)).collect();
    assert_eq!(names, [("a".into(), false, 10), ("b".into(), false, 0), ("sub".into(), true, 0)]);
    assert_eq!(d.ns.list(&p("/d/a")).unwrap()[0].name, "a");
    assert_eq!(d.ns.list(&p("/x")), Err(NsError::NotFound("/x".into())));
    assert_eq!(d.ns.list(&p("/d/a/x")), Err(NsError::NotADirectory("/d/a".into())));
}

#[test]
fn listing_pages_by_name() {
    let mut d = Driver::new();
    for name in ["c", "a", "e", "b", "d"] {
        d.create(&format!("/{name}"));
    }
    let names = |v: Vec<DirEntry>| v.into_iter().map(|e| e.name).collect::<Vec<_>>();
    let (page, more) = d.ns.list_page(&p("/"), "", 2).unwrap();
    assert_eq!((names(page), more), (vec!["a".to_string(), "b".into()], true));
    let (page, more) = d.ns.list_page(&p("/"), "b", 2).unwrap();
    assert_eq!((names(page), more), (vec!["c".to_string(), "d".into()], true));
    let (page, more) = d.ns.list_page(&p("/"), "d", 2).unwrap();
    assert_eq!((names(page), more), (vec!["e".to_string()], false));
    let (page, more) = d.ns.list_page(&p("/"), "zzz", 2).unwrap();
    assert!(page.is_empty() && !more);
}

#[test]
fn a_retried_request_gets_its_own_answer_not_already_exists() {
    let mut d = Driver::new();
    let entry = d.entry(Command::CreateFile {
        path: p("/once"),
        replication: 1,
        block_size: BS,
        mode: None,
    });
    let first = d.ns.apply(&entry);
    assert!(matches!(first, Outcome::Created(_)));
    // The same request committed again (a retry across a leader change).
    assert_eq!(d.ns.apply(&entry), first);
    assert_eq!(d.ns.list(&p("/")).unwrap().len(), 1);
    // Another session asking for the name gets "already exists".
    let other = Entry {
        session: SessionId { client: ClientId(1), nonce: 7 },
        request_id: 1,
        ..entry.clone()
    };
    assert_eq!(failed(d.ns.apply(&other)), NsError::AlreadyExists("/once".into()));
    // An older request of a session after a newer one is refused, not applied.
    d.create("/next");
    let stale = Entry {
        request_id: entry.request_id,
        ..d.entry(Command::Remove { path: p("/once"), recursive: false })
    };
    assert!(matches!(failed(d.ns.apply(&stale)), NsError::Superseded { .. }));
    assert!(d.ns.stat(&p("/once")).is_ok());
}

#[test]
fn a_lock_wait_retried_after_it_ended_gets_how_it_ended() {
    let mut d = Driver::new();
    let holder = SessionId { client: ClientId(2), nonce: 5 };
    let open = Command::OpenSession { lease_ms: 10_000, lock_delay_ms: 1_000 };
    assert!(matches!(d.run(open.clone()), Outcome::SessionOpened { .. }));
    let as_holder = |request_id, time_ms, command| Entry {
        session: holder,
        request_id,
        time_ms,
        caller: crate::namespace::Caller::system(),
        command,
    };
    d.ns.apply(&as_holder(1, d.time, open));
    let take = Command::Lock { path: p("/m"), mode: LockMode::Exclusive, wait_ms: None };
    let first = d.ns.apply(&as_holder(2, d.time, take));
    assert_eq!(first, Outcome::LockGranted { sequencer: 1 });
    let wait =
        d.entry(Command::Lock { path: p("/m"), mode: LockMode::Shared, wait_ms: Some(60_000) });
    assert_eq!(d.ns.apply(&wait), Outcome::LockQueued);
    let released = d.ns.apply(&as_holder(3, d.time, Command::Unlock { path: p("/m") }));
    let Outcome::Woke { wakes } = released else { panic!("{released:?}") };
    assert_eq!(wakes.len(), 1);
    assert_eq!((wakes[0].session, wakes[0].request_id), (d.session, wait.request_id));
    // The waiter's retry (at a new leader) learns it holds the lock.
    assert_eq!(d.ns.apply(&wait), Outcome::LockGranted { sequencer: 2 });
    // A retried unlock does not wake anyone twice.
    let again = d.ns.apply(&as_holder(3, d.time, Command::Unlock { path: p("/m") }));
    assert_eq!(again, Outcome::Woke { wakes: Vec::new() });
    // KeepAlives are not deduplicated; a closed session's are refused.
    for _ in 0..2 {
        let kept = d.ns.apply(&as_holder(0, d.time + 5_000, Command::KeepAlive));
        assert_eq!(kept, Outcome::KeptAlive { expires_ms: d.time + 15_000 });
    }
    d.ns.apply(&as_holder(4, d.time, Command::CloseSession));
    let kept = d.ns.apply(&as_holder(0, d.time, Command::KeepAlive));
    assert!(matches!(failed(kept), NsError::SessionExpired { client: 2 }));
    // Locks survive a snapshot.
    let back = Namespace::restore(&d.ns.snapshot()).unwrap();
    let all = |ns: &Namespace| ns.lock_table().list(&p("/"), 10, 10, usize::MAX);
    assert_eq!(all(&back), all(&d.ns));
    assert_eq!(back.lock_table().list(&p("/m"), 10, 10, usize::MAX).0.len(), 1);
}

#[test]
fn revoking_a_client_ends_its_sessions_and_frees_its_locks_after_its_lease_and_delay() {
    let mut d = Driver::new();
    let removed = SessionId { client: ClientId(2), nonce: 5 };
    let as_removed = |request_id, time_ms, command| Entry {
        session: removed,
        request_id,
        time_ms,
        caller: crate::namespace::Caller::system(),
        command,
    };
    let open = Command::OpenSession { lease_ms: 10_000, lock_delay_ms: 1_000 };
    let t0 = d.time;
    d.ns.apply(&as_removed(1, t0, open.clone()));
    let take = Command::Lock { path: p("/m"), mode: LockMode::Exclusive, wait_ms: None };
    assert_eq!(d.ns.apply(&as_removed(2, t0, take)), Outcome::LockGranted { sequencer: 1 });
    assert!(matches!(d.run(open), Outcome::SessionOpened { .. }));
    // Revoked at t0 + 100: the removed client may believe in its lock until its lease ends
    // (t0 + 10 s), then the lock-delay runs: nobody gets it before t0 + 11 s.
    let revoke = |time_ms| Entry {
        session: SessionId { client: ClientId(0), nonce: 9 },
        request_id: 0,
        time_ms,
        caller: crate::namespace::Caller::system(),
        command: Command::RevokeClient { client: ClientId(2) },
    };
    assert!(matches!(d.ns.apply(&revoke(t0 + 100)), Outcome::Woke { .. }));
    assert!(d.ns.lock_table().session(removed).is_none(), "its session ended");
    assert!(!d.ns.lock_table().clients().contains(&ClientId(2)));
    let kept = d.ns.apply(&as_removed(0, t0 + 200, Command::KeepAlive));
    assert!(matches!(failed(kept), NsError::SessionExpired { client: 2 }));
    d.time = t0 + 10_500;
    let early = d.run(Command::Lock { path: p("/m"), mode: LockMode::Exclusive, wait_ms: None });
    assert!(matches!(failed(early), NsError::LockBusy { .. }), "within the lease and delay");
    d.time = t0 + 11_001;
    let later = d.run(Command::Lock { path: p("/m"), mode: LockMode::Exclusive, wait_ms: None });
    assert!(matches!(later, Outcome::LockGranted { .. }), "{later:?}");
    // Not deduplicated: applying it again changes nothing and answers alike.
    assert_eq!(d.ns.apply(&revoke(t0 + 12_000)), Outcome::Woke { wakes: Vec::new() });
}

#[test]
fn sessions_idle_past_the_ttl_are_forgotten() {
    let mut d = Driver::new();
    d.create("/x");
    assert_eq!(d.ns.sessions.len(), 1);
    d.time += SESSION_TTL_MS + 1;
    let busy = SessionId { client: ClientId(2), nonce: 1 };
    for i in 0..SESSION_SWEEP_EVERY {
        let entry = Entry {
            session: busy,
            request_id: i + 1,
            time_ms: d.time,
            caller: crate::namespace::Caller::system(),
            command: Command::Mkdir { path: p("/"), parents: true, mode: None },
        };
        d.ns.apply(&entry);
    }
    assert_eq!(d.ns.sessions.len(), 1, "the idle session was swept");
    assert!(d.ns.sessions.contains_key(&busy));
}

/// How many of [`sample_entries`] the golden snapshot applies.
const SNAPSHOT_SAMPLES: usize = 17;

fn sample_entries() -> Vec<Entry> {
    let mut d = Driver::new();
    vec![
        d.entry(Command::Mkdir { path: p("/a/b"), parents: true, mode: None }),
        d.entry(Command::CreateFile {
            path: p("/a/b/f"),
            replication: 2,
            block_size: BS,
            mode: None,
        }),
        d.entry(Command::ExpandFile {
            path: p("/a/b/f"),
            size: 3000,
            first_block: 0,
            placement: vec![vec![NodeId(4), NodeId(5)]; 3],
        }),
        d.entry(Command::Rename { from: p("/a/b/f"), to: p("/a/g"), replace: false }),
        d.entry(Command::CreateFile {
            path: p("/a/g"),
            replication: 2,
            block_size: BS,
            mode: None,
        }),
        d.entry(Command::Remove { path: p("/a/b"), recursive: true }),
        d.entry(Command::Mkdir { path: p("/a/g/h"), parents: false, mode: None }),
        d.entry(Command::CreateWrite {
            path: p("/a/s"),
            replication: 2,
            block_size: BS,
            size: 100,
            placement: vec![NodeId(4), NodeId(5)],
            mode: None,
        }),
        d.entry(Command::ReplaceReplica {
            file: 4,
            index: 1,
            version: BlockVersion::UNWRITTEN,
            remove: NodeId(5),
            add: NodeId(6),
        }),
        d.entry(Command::SetDraining { server: NodeId(4), draining: true }),
        d.entry(Command::OpenSession { lease_ms: 10_000, lock_delay_ms: 2_000 }),
        d.entry(Command::Lock { path: p("/l"), mode: LockMode::Exclusive, wait_ms: None }),
        d.entry(Command::Lock { path: p("/l"), mode: LockMode::Shared, wait_ms: Some(5_000) }),
        d.entry(Command::KeepAlive),
        d.entry(Command::Unlock { path: p("/l") }),
        d.entry(Command::Clock { expire: vec![SessionId { client: ClientId(9), nonce: 3 }] }),
        d.entry(Command::CloseSession),
        d.entry(Command::RevokeClient { client: ClientId(9) }),
        d.entry(Command::Chmod { path: p("/a"), mode: 0o1750 }),
        d.entry(Command::Chown { path: p("/a"), uid: 1001, gid: 50 }),
        Entry {
            caller: user(1001, &[50]),
            ..d.entry(Command::Mkdir { path: p("/a/u"), parents: false, mode: None })
        },
        Entry {
            caller: user(1001, &[50]),
            ..d.entry(Command::Mkdir { path: p("/a/u/v/w"), parents: true, mode: Some(0o700) })
        },
        Entry {
            caller: user(1001, &[50]),
            ..d.entry(Command::CreateFile {
                path: p("/a/u/v/w/f"),
                replication: 2,
                block_size: BS,
                mode: Some(0o600),
            })
        },
        Entry {
            caller: user(1001, &[50]),
            ..d.entry(Command::CreateWrite {
                path: p("/a/u/s"),
                replication: 2,
                block_size: BS,
                size: 10,
                placement: vec![NodeId(4), NodeId(5)],
                mode: Some(0o2640),
            })
        },
        d.entry(Command::Rename { from: p("/a/u/s"), to: p("/a/g"), replace: true }),
        d.entry(Command::SetTimes {
            path: p("/a/g"),
            atime: SetTime::Now,
            mtime: SetTime::At(1_700_000_000_123_456),
        }),
        d.entry(Command::SetTimes { path: p("/a"), atime: SetTime::At(7), mtime: SetTime::Keep }),
        d.entry(Command::Truncate { path: p("/a/g"), size: 3 }),
        d.entry(Command::MakeNode {
            path: p("/a/link"),
            kind: NodeType::Symlink,
            target: "../a/g".into(),
            rdev: 0,
            mode: 0o777,
        }),
        d.entry(Command::MakeNode {
            path: p("/a/tty"),
            kind: NodeType::Char,
            target: String::new(),
            rdev: 0x0504,
            mode: 0o620,
        }),
        d.entry(Command::Link { from: p("/a/g"), to: p("/a/u/g2") }),
        d.entry(Command::Link { from: p("/a/link"), to: p("/l2") }),
        d.entry(Command::SetXattr {
            path: p("/a/g"),
            name: "user.origin".into(),
            value: b"lab 3".to_vec(),
            how: XattrSet::Create,
        }),
        d.entry(Command::RemoveXattr { path: p("/a/g"), name: "user.origin".into() }),
    ]
}

#[test]
fn new_inodes_take_the_mode_the_request_names_and_the_defaults_without_one() {
    let mut d = Driver::new();
    let alice = user(1001, &[1001, 50]);
    let mode_of = |d: &Driver, path: &str| d.ns.stat(&p(path)).unwrap().owner();
    let mkdir = |path: &str, parents, mode| Command::Mkdir { path: p(path), parents, mode };
    assert_eq!(run_as(&mut d, &alice, mkdir("/old", false, None)), Outcome::Mkdir);
    assert_eq!(mode_of(&d, "/old"), Owner { uid: 1001, gid: 1001, mode: 0o755 });
    assert_eq!(run_as(&mut d, &alice, mkdir("/x/y/z", true, Some(0o700))), Outcome::Mkdir);
    assert_eq!(mode_of(&d, "/x/y/z").mode, 0o700);
    assert_eq!(mode_of(&d, "/x/y").mode, 0o700, "parents keep what the owner needs");
    let narrow = run_as(&mut d, &alice, mkdir("/n/m", true, Some(0o050)));
    assert_eq!(narrow, Outcome::Mkdir);
    assert_eq!(mode_of(&d, "/n").mode, 0o350, "a parent gets the owner's write and search");
    assert_eq!(mode_of(&d, "/n/m").mode, 0o050, "the last one exactly as asked");
    let create = |path: &str, mode| Command::CreateFile {
        path: p(path),
        replication: 1,
        block_size: BS,
        mode,
    };
    assert!(matches!(run_as(&mut d, &alice, create("/x/f", Some(0o4600))), Outcome::Created(_)));
    assert_eq!(mode_of(&d, "/x/f"), Owner { uid: 1001, gid: 1001, mode: 0o4600 });
    assert!(matches!(run_as(&mut d, &alice, create("/x/g", None)), Outcome::Created(_)));
    assert_eq!(mode_of(&d, "/x/g").mode, 0o644);
    let small = Command::CreateWrite {
        path: p("/x/s"),
        replication: 1,
        block_size: BS,
        size: 5,
        placement: vec![NodeId(4)],
        mode: Some(0o640),
    };
    assert!(matches!(run_as(&mut d, &alice, small), Outcome::Leased { .. }));
    assert_eq!(mode_of(&d, "/x/s").mode, 0o640);
    // The mode asked for is what is kept: a 0o000 directory stays closed even to its maker.
    assert_eq!(run_as(&mut d, &alice, mkdir("/shut", false, Some(0))), Outcome::Mkdir);
    let inside = run_as(&mut d, &alice, create("/shut/f", None));
    assert!(matches!(failed(inside), NsError::PermissionDenied(_)), "no search, no write");
}

#[test]
fn a_mode_above_the_mode_bits_does_not_decode() {
    let entry = Entry {
        caller: user(1001, &[50]),
        ..Driver::new().entry(Command::Mkdir { path: p("/m"), parents: false, mode: Some(0o7777) })
    };
    let mut bytes = entry.encode();
    assert_eq!(Entry::decode(&bytes), Ok(entry));
    let n = bytes.len();
    bytes[n - 2..].copy_from_slice(&0o10000u16.to_be_bytes());
    assert!(Entry::decode(&bytes).is_err());
}

fn user(uid: u32, gids: &[u32]) -> Caller {
    Caller { uid, gids: gids.to_vec(), admin: false }
}

/// Runs `command` as `caller`.
fn run_as(d: &mut Driver, caller: &Caller, command: Command) -> Outcome {
    let entry = Entry { caller: caller.clone(), ..d.entry(command) };
    d.ns.apply(&entry)
}

#[test]
fn every_change_is_checked_against_the_callers_owner_group_and_mode() {
    let mut d = Driver::new();
    let (alice, bob, admin) = (user(1001, &[1001]), user(1002, &[1002, 50]), Caller::system());
    // The root is open to all, sticky: each makes their own directory.
    assert_eq!(
        run_as(&mut d, &alice, Command::Mkdir { path: p("/alice"), parents: false, mode: None }),
        Outcome::Mkdir
    );
    assert_eq!(
        run_as(&mut d, &bob, Command::Mkdir { path: p("/bob"), parents: false, mode: None }),
        Outcome::Mkdir
    );
    let create = |path: &str| Command::CreateFile {
        path: p(path),
        replication: 1,
        block_size: BS,
        mode: None,
    };
    assert!(matches!(run_as(&mut d, &alice, create("/alice/notes")), Outcome::Created(_)));
    let id = d.ns.lookup(&p("/alice/notes")).unwrap();
    assert_eq!(d.ns.nodes[&id].owner, Owner { uid: 1001, gid: 1001, mode: 0o644 });
    // Bob may not make, remove or rename entries in Alice's 0755 directory.
    let denied =
        |outcome: Outcome| matches!(outcome, Outcome::Failed(NsError::PermissionDenied(_)));
    assert!(denied(run_as(&mut d, &bob, create("/alice/bobs"))));
    assert!(denied(run_as(
        &mut d,
        &bob,
        Command::Remove { path: p("/alice/notes"), recursive: false }
    )));
    assert!(denied(run_as(
        &mut d,
        &bob,
        Command::Rename { from: p("/alice/notes"), to: p("/bob/x"), replace: false }
    )));
    assert!(denied(run_as(&mut d, &bob, Command::Remove { path: p("/alice"), recursive: true })));
    // Nor write Alice's file, nor change its mode or owner.
    let expand = Command::ExpandFile {
        path: p("/alice/notes"),
        size: 1,
        first_block: 0,
        placement: vec![vec![NodeId(4)]],
    };
    assert!(denied(run_as(&mut d, &bob, expand.clone())));
    assert!(denied(run_as(&mut d, &bob, Command::Chmod { path: p("/alice/notes"), mode: 0o666 })));
    assert!(denied(run_as(
        &mut d,
        &alice,
        Command::Chown { path: p("/alice/notes"), uid: 1002, gid: 1001 }
    )));
    // The sticky root: Bob may not remove Alice's directory from it, though he may write it.
    assert!(denied(run_as(&mut d, &bob, Command::Remove { path: p("/alice"), recursive: true })));
    // Alice opens her file to her group, and gives it to group 50: Bob (in 50) may write it.
    assert_eq!(
        run_as(&mut d, &alice, Command::Chmod { path: p("/alice/notes"), mode: 0o664 }),
        Outcome::Changed
    );
    assert!(
        denied(run_as(
            &mut d,
            &alice,
            Command::Chown { path: p("/alice/notes"), uid: 1001, gid: 50 }
        )),
        "Alice is not in group 50"
    );
    assert_eq!(
        run_as(&mut d, &admin, Command::Chown { path: p("/alice/notes"), uid: 1001, gid: 50 }),
        Outcome::Changed
    );
    assert!(matches!(run_as(&mut d, &bob, expand), Outcome::Expanded { .. }));
    // A directory Bob cannot search hides what is in it.
    assert_eq!(
        run_as(&mut d, &alice, Command::Chmod { path: p("/alice"), mode: 0o700 }),
        Outcome::Changed
    );
    assert!(d.ns.may_search(&p("/alice/notes"), &bob).is_err());
    assert!(d.ns.may_read(&p("/alice/notes"), &alice).is_ok());
    assert!(d.ns.may_read(&p("/bob"), &alice).is_ok(), "0755: others may list");
    // The owner removes her tree; an operator may do anything.
    assert!(matches!(
        run_as(&mut d, &alice, Command::Remove { path: p("/alice"), recursive: true }),
        Outcome::Removed { .. }
    ));
    assert!(matches!(
        run_as(&mut d, &admin, Command::Remove { path: p("/bob"), recursive: true }),
        Outcome::Removed { .. }
    ));
    // Modes and owners survive a snapshot.
    assert_eq!(
        run_as(&mut d, &bob, Command::Mkdir { path: p("/kept"), parents: false, mode: None }),
        Outcome::Mkdir
    );
    assert_eq!(
        run_as(&mut d, &bob, Command::Chmod { path: p("/kept"), mode: 0o1700 }),
        Outcome::Changed
    );
    let back = Namespace::restore(&d.ns.snapshot()).unwrap();
    let kept = back.lookup(&p("/kept")).unwrap();
    assert_eq!(back.nodes[&kept].owner, Owner { uid: 1002, gid: 1002, mode: 0o1700 });
    assert_eq!(back, d.ns);
}

#[test]
fn entries_round_trip_and_bad_bytes_are_refused() {
    for entry in sample_entries() {
        let bytes = entry.encode();
        assert_eq!(Entry::decode(&bytes).unwrap(), entry);
        for cut in 0..bytes.len() {
            assert!(Entry::decode(&bytes[..cut]).is_err());
        }
    }
    let mut bad_path = sample_entries()[0].encode();
    let end = bad_path.len() - 1; // the path "/a/b", then the parents flag
    bad_path[end - 4..end].copy_from_slice(b"/./b");
    assert!(Entry::decode(&bad_path).is_err(), "an invalid path never reaches apply");
}

#[test]
fn replicas_applying_one_log_agree_byte_for_byte_and_snapshots_restore() {
    let mut a = Namespace::new();
    let mut b = Namespace::new();
    let mut outcomes = Vec::new();
    for entry in sample_entries() {
        outcomes.push(a.apply(&entry));
        // b applies the encoded form, as a follower reading the log would.
        b.apply(&Entry::decode(&entry.encode()).unwrap());
    }
    assert!(matches!(outcomes[4], Outcome::Failed(NsError::AlreadyExists(_))));
    assert!(matches!(outcomes[6], Outcome::Failed(NsError::NotADirectory(_))));
    assert_eq!(a.snapshot(), b.snapshot());
    let restored = Namespace::restore(&a.snapshot()).unwrap();
    assert_eq!(restored, a);
    assert_eq!(restored.snapshot(), a.snapshot());
}

fn testdata(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name)
}

/// The state of the golden files: the sample entries, then a write lease on /a/g block 1
/// (formats 2 and up keep leases) and a lock held on /l (format 4 keeps locks), applied
/// by a fresh namespace.
fn golden_state(entries: &[Entry]) -> Namespace {
    let mut d = Driver::new();
    for entry in entries {
        d.ns.apply(entry);
    }
    d.next_request = 1000;
    d.time = 5000;
    d.run(Command::WriteLease { path: p("/a/g"), index: 1 });
    d.run(Command::OpenSession { lease_ms: 10_000, lock_delay_ms: 2_000 });
    d.run(Command::Lock { path: p("/l"), mode: LockMode::Exclusive, wait_ms: None });
    d.ns
}

fn entries_of(hex: &str) -> Vec<Entry> {
    hex.lines()
        .map(|line| {
            let bytes = meshfs_test_kit::golden::unhex(line);
            let entry = Entry::decode(&bytes).unwrap();
            assert_eq!(entry.encode(), bytes, "an old entry re-encodes to its own bytes");
            entry
        })
        .collect()
}

#[test]
fn golden_entries_and_snapshot() {
    let entries = sample_entries();
    let hex: String =
        entries.iter().map(|e| meshfs_test_kit::golden::hex(&e.encode()) + "\n").collect();
    meshfs_test_kit::golden::check_text(testdata("entries.hex"), &hex);
    // The snapshot's state is that of the entries it was frozen with; entries added to the
    // samples later (RevokeClient) are pinned above and stay out of it.
    let ns = golden_state(&entries[..SNAPSHOT_SAMPLES]);
    assert_eq!(ns.leases.len(), 2, "the create-write's lease and the golden one");
    assert_ne!(ns.locks, LockTable::new(), "the lock table has something to write");
    meshfs_test_kit::golden::check_bytes(testdata("snapshot.bin"), &ns.snapshot());
}

/// Logs and snapshots written by older builds, kept as they wrote them: every entry still
/// decodes (to the same bytes), and each snapshot restores to the very state that
/// replaying its build's entries gives today, minus what its format did not keep.
#[test]
fn old_logs_and_snapshots_are_still_read() {
    for format in 1..SNAPSHOT_FORMAT {
        let dir = format!("format{format}");
        let text = String::from_utf8(meshfs_test_kit::golden::read(testdata(&format!(
            "{dir}/entries.hex"
        ))))
        .unwrap();
        let entries = entries_of(&text);
        let bytes = meshfs_test_kit::golden::read(testdata(&format!("{dir}/snapshot.bin")));
        assert_eq!(u16::from_be_bytes([bytes[4], bytes[5]]), format, "{dir}");
        let restored = Namespace::restore(&bytes).unwrap_or_else(|e| panic!("{dir}: {e}"));
        let mut replayed = golden_state(&entries);
        if format < 2 {
            // Format 1's build had no leases, so the golden lease was never taken.
            replayed = Namespace::new();
            for entry in &entries {
                replayed.apply(entry);
            }
        }
        if format < 4 {
            replayed.locks = LockTable::new();
        }
        if format < 5 {
            // Owners came with format 5: the older ones restore everything as root's,
            // open to all.
            let ids: Vec<u32> = replayed.nodes.iter().map(|(id, _)| id).collect();
            for id in ids {
                let node = replayed.nodes.get_mut(&id).expect("listed");
                node.owner = Owner::legacy(matches!(node.kind, Kind::Dir(_)));
            }
        }
        if format < 6 {
            // Marks came with format 6: the older ones know of no removed files.
            replayed.nodes.marks.clear();
        }
        if format < 7 {
            // Three times in microseconds came with format 7: the older ones kept one, the
            // last modification in milliseconds, and restore it as all three.
            let ids: Vec<u32> = replayed.nodes.iter().map(|(id, _)| id).collect();
            for id in ids {
                let node = replayed.nodes.get_mut(&id).expect("listed");
                node.times = Times::at_ms(node.times.mtime_us / 1000);
            }
        }
        assert_eq!(restored.nodes, replayed.nodes, "{dir}: inodes");
        assert_eq!(restored.leases, replayed.leases, "{dir}: leases");
        assert_eq!(restored.draining, replayed.draining, "{dir}: draining");
        assert_eq!(restored.next_id, replayed.next_id, "{dir}: next id");
        assert_eq!(restored.allocated, replayed.allocated, "{dir}: allocation");
        assert_eq!(restored.locks, replayed.locks, "{dir}: locks");
        // Written again, it is today's format and restores to itself.
        let again = Namespace::restore(&restored.snapshot()).unwrap();
        assert_eq!(again, restored, "{dir}");
    }
}

#[test]
fn damaged_snapshots_are_refused() {
    let mut d = Driver::new();
    for entry in sample_entries() {
        d.ns.apply(&entry);
    }
    let good = d.ns.snapshot();
    assert_eq!(Namespace::restore(&good[..good.len() - 1]), Err(SnapshotError::Checksum));
    let mut flipped = good.clone();
    flipped[10] ^= 1;
    assert_eq!(Namespace::restore(&flipped), Err(SnapshotError::Checksum));
    assert_eq!(Namespace::restore(&[]), Err(SnapshotError::Truncated));
    // Well-formed and checksummed, but inconsistent: a file's size disagrees with its
    // block list. Restore checks every invariant and refuses it.
    let Stat::File(meta) = d.ns.stat(&p("/a/g")).unwrap() else { panic!("a file") };
    if let Kind::File(file) = &mut d.ns.nodes.get_mut(&meta.descriptor.id.0).unwrap().kind {
        file.size += 10 * u64::from(file.block_size);
    }
    let err = Namespace::restore(&d.ns.snapshot()).unwrap_err();
    assert!(matches!(&err, SnapshotError::Invalid(why) if why.contains("blocks for")), "{err}");
}

proptest! {
    #[test]
    fn random_bytes_never_panic_entry_or_snapshot_decoding(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Entry::decode(&bytes);
        let _ = Namespace::restore(&bytes);
        let mut with_crc = bytes.clone();
        with_crc.extend_from_slice(&crc32fast::hash(&bytes).to_be_bytes());
        let _ = Namespace::restore(&with_crc);
    }
}

// ---- model test: random operations against a map of paths ----

#[derive(Debug, Clone)]
enum Op {
    Mkdir(usize, bool),
    Create(usize),
    Rename(usize, usize),
    Remove(usize, bool),
    Snapshot,
}

const NAMES: [&str; 9] = ["/a", "/b", "/a/c", "/a/d", "/b/c", "/a/c/e", "/b/c/e", "/a/d/f", "/e"];

fn op() -> impl Strategy<Value = Op> {
    let i = 0..NAMES.len();
    prop_oneof![
        (i.clone(), any::<bool>()).prop_map(|(a, b)| Op::Mkdir(a, b)),
        i.clone().prop_map(Op::Create),
        (i.clone(), i.clone()).prop_map(|(a, b)| Op::Rename(a, b)),
        (i, any::<bool>()).prop_map(|(a, b)| Op::Remove(a, b)),
        Just(Op::Snapshot),
    ]
}

/// The model: path -> is_dir. Simple rules, written independently of the namespace.
fn model_apply(model: &mut Model<String, bool>, op: &Op) -> bool {
    let parent = |path: &str| path.rsplit_once('/').map(|(p, _)| p.to_string()).unwrap_or_default();
    let is_dir =
        |m: &Model<String, bool>, path: &str| path.is_empty() || m.get(path) == Some(&true);
    match *op {
        Op::Mkdir(i, parents) => {
            let path = NAMES[i];
            if parents {
                let mut prefix = String::new();
                let parts: Vec<&str> = path.split('/').skip(1).collect();
                for part in &parts {
                    prefix = format!("{prefix}/{part}");
                    if model.get(&prefix) == Some(&false) {
                        return false;
                    }
                }
                prefix.clear();
                for part in parts {
                    prefix = format!("{prefix}/{part}");
                    model.entry(prefix.clone()).or_insert(true);
                }
                true
            } else if model.contains_key(path) || !is_dir(model, &parent(path)) {
                false
            } else {
                model.insert(path.to_string(), true);
                true
            }
        }
        Op::Create(i) => {
            let path = NAMES[i];
            if model.contains_key(path) || !is_dir(model, &parent(path)) {
                return false;
            }
            model.insert(path.to_string(), false);
            true
        }
        Op::Rename(i, j) => {
            let (from, to) = (NAMES[i], NAMES[j]);
            let Some(&from_dir) = model.get(from) else { return false };
            if from == to {
                return true;
            }
            let inside = to.starts_with(&format!("{from}/"));
            if (from_dir && inside) || model.contains_key(to) || !is_dir(model, &parent(to)) {
                return false;
            }
            let moved: Vec<(String, bool)> = model
                .iter()
                .filter(|(k, _)| *k == from || k.starts_with(&format!("{from}/")))
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            for (k, v) in moved {
                model.remove(&k);
                model.insert(format!("{to}{}", &k[from.len()..]), v);
            }
            true
        }
        Op::Remove(i, recursive) => {
            let path = NAMES[i];
            if !model.contains_key(path) {
                return false;
            }
            let below: Vec<String> =
                model.keys().filter(|k| k.starts_with(&format!("{path}/"))).cloned().collect();
            if !below.is_empty() && !recursive {
                return false;
            }
            for k in below {
                model.remove(&k);
            }
            model.remove(path);
            true
        }
        Op::Snapshot => true,
    }
}

fn walk(ns: &Namespace, dir: &str, out: &mut Model<String, bool>) {
    let path = if dir.is_empty() { MeshPath::root() } else { p(dir) };
    for e in ns.list(&path).unwrap() {
        let child = format!("{dir}/{}", e.name);
        out.insert(child.clone(), e.is_dir);
        if e.is_dir {
            walk(ns, &child, out);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn the_namespace_agrees_with_a_model(ops in proptest::collection::vec(op(), 1..60)) {
        let mut d = Driver::new();
        let mut model = Model::new();
        for op in &ops {
            let expect_ok = model_apply(&mut model, op);
            let outcome = match *op {
                Op::Mkdir(i, parents) => d.mkdir(NAMES[i], parents),
                Op::Create(i) => d.create(NAMES[i]),
                Op::Rename(i, j) => d.rename(NAMES[i], NAMES[j]),
                Op::Remove(i, r) => d.remove(NAMES[i], r),
                Op::Snapshot => {
                    d.ns = Namespace::restore(&d.ns.snapshot()).unwrap();
                    Outcome::Mkdir
                }
            };
            prop_assert_eq!(!matches!(outcome, Outcome::Failed(_)), expect_ok, "{:?} gave {:?}", op, outcome);
            let mut seen = Model::new();
            walk(&d.ns, "", &mut seen);
            prop_assert_eq!(&seen, &model, "after {:?}", op);
        }
    }
}

#[test]
fn a_rename_never_makes_a_path_longer_than_the_limit() {
    let mut d = Driver::new();
    let name = "n".repeat(200);
    // /t/<200>/<200>/... : 20 levels, 4,022 bytes, then a file at the bottom.
    let mut deep = String::from("/t");
    for _ in 0..20 {
        deep.push('/');
        deep.push_str(&name);
    }
    assert_eq!(d.mkdir(&deep, true), Outcome::Mkdir);
    assert!(matches!(d.create(&format!("{deep}/f")), Outcome::Created(_)));
    let longest = deep.len() + 2;
    assert_eq!(d.mkdir(&format!("/p/{name}"), true), Outcome::Mkdir);
    // Under /p/<200> the file's path would be 4,227 bytes: refused.
    let to = format!("/p/{name}/t");
    let refused = d.run(Command::Rename { from: p("/t"), to: p(&to), replace: false });
    let NsError::Path(PathError::TooLong { len }) = failed(refused) else { panic!() };
    assert!(
        len > crate::path::MAX_PATH_LEN && len <= to.len() + longest - 2,
        "{len}: a path it would make"
    );
    assert!(d.ns.stat(&p(&deep)).is_ok(), "nothing moved");
    // Moving it where it fits works, and so does moving something short anywhere.
    assert_eq!(
        d.run(Command::Rename { from: p("/t"), to: p("/u"), replace: false }),
        Outcome::Renamed
    );
    assert!(d.ns.stat(&p(&format!("{}/f", deep.replacen("/t", "/u", 1)))).is_ok());
    assert_eq!(d.mkdir("/s/x", true), Outcome::Mkdir);
    let to = p(&format!("/p/{name}/s"));
    assert_eq!(d.run(Command::Rename { from: p("/s"), to, replace: false }), Outcome::Renamed);
    // Renaming a directory again and again into itself-deep places is bounded the same way:
    // every full path in the tree stays within MAX_PATH_LEN.
    let mut at = String::from("/c");
    assert_eq!(d.mkdir(&format!("{at}/{name}"), true), Outcome::Mkdir);
    for i in 0..40 {
        let next = format!("/c{i}/{name}");
        assert_eq!(d.mkdir(&next, true), Outcome::Mkdir);
        let outcome =
            d.run(Command::Rename { from: p(&at), to: p(&format!("{next}/c")), replace: false });
        if outcome != Outcome::Renamed {
            assert!(matches!(failed(outcome), NsError::Path(PathError::TooLong { .. })));
            break;
        }
        at = format!("{next}/c");
    }
    let all = d.ns.files_under(&MeshPath::root()).unwrap();
    assert!(all.iter().all(|(path, _)| path.len() <= crate::path::MAX_PATH_LEN));
    let mut dirs = vec![(ROOT_ID, 0usize)];
    while let Some((id, len)) = dirs.pop() {
        assert!(len <= crate::path::MAX_PATH_LEN);
        if let inode::Kind::Dir(dir) = &d.ns.nodes[&id].kind {
            dirs.extend(dir.children.iter().map(|(n, &c)| (c, len + 1 + n.len())));
        }
    }
}

fn set_file_version(d: &mut Driver, path: &str, version: u32) {
    let id = d.ns.lookup(&p(path)).unwrap();
    let Some(inode::Node { kind: inode::Kind::File(file), .. }) = d.ns.nodes.get_mut(&id) else {
        panic!("{path} is a file")
    };
    file.version = version;
}

#[test]
fn a_file_out_of_versions_fails_its_expands_and_commits_and_changes_nothing() {
    let mut d = Driver::new();
    d.create("/f");
    set_file_version(&mut d, "/f", u32::MAX - 1);
    let Outcome::Expanded { file, .. } = d.expand("/f", 100, 1) else { panic!() };
    assert_eq!(file.version, u32::MAX, "the last version");
    let before = d.ns.get_file_meta_data(&p("/f")).unwrap();
    assert!(matches!(failed(d.expand("/f", 5000, 1)), NsError::VersionsExhausted(_)));
    assert!(matches!(failed(d.expand("/f", 100, 0)), NsError::VersionsExhausted(_)));
    let Outcome::Leased { block, .. } = d.run(Command::WriteLease { path: p("/f"), index: 0 })
    else {
        panic!()
    };
    let commit = Command::CommitWrite { path: p("/f"), index: 0, version: block.version };
    assert!(matches!(failed(d.run(commit)), NsError::VersionsExhausted(_)));
    assert_eq!(d.ns.get_file_meta_data(&p("/f")).unwrap(), before, "nothing changed");
    assert!(d.ns.leased(before.descriptor.id.0, 0, d.time), "the lease is still there");
}

#[test]
fn an_entry_that_hits_a_bug_fails_alike_everywhere_and_the_namespace_goes_on() {
    let mut d = Driver::new();
    // Past the size up to which every entry's apply checks the invariants (the broken
    // state below would fail them), with nodes put in directly.
    for i in 0..INVARIANT_CHECK_EVERY_ENTRY_MAX as u32 {
        let (id, _) = d.ns.new_id().unwrap();
        let kind = inode::Kind::Dir(inode::Dir::empty(ROOT_ID));
        let node = inode::Node { kind, owner: ROOT_OWNER, times: Times::default() };
        d.ns.insert_child(ROOT_ID, &format!("d{i}"), id, node, 0);
    }
    // A directory entry naming an inode that is not there: a bug's state.
    d.ns.dir_mut(ROOT_ID).children.insert("ghost".into(), 999_999);
    let mut twin = d.ns.clone();
    let entry = d.entry(Command::Remove { path: p("/ghost"), recursive: true });
    let outcome = d.ns.apply(&entry);
    assert!(
        matches!(&outcome, Outcome::Failed(NsError::Internal(what)) if what.contains("999999"))
    );
    assert_eq!(twin.apply(&entry), outcome, "every replica answers it alike");
    assert_eq!(d.mkdir("/after", false), Outcome::Mkdir, "and goes on");
}

#[test]
fn a_client_naming_ever_new_sessions_forgets_its_own_oldest_and_nobody_elses() {
    let mut d = Driver::new();
    let other = SessionId { client: ClientId(8), nonce: 1 };
    let mkdir = |path: &str| Command::Mkdir { path: p(path), parents: false, mode: None };
    let entry = |session, request_id, time_ms, command| Entry {
        session,
        request_id,
        time_ms,
        caller: Caller::system(),
        command,
    };
    assert_eq!(d.ns.apply(&entry(other, 1, 1, mkdir("/other"))), Outcome::Mkdir);
    let flood = u64::from(MAX_SESSIONS_PER_CLIENT) + 10;
    for nonce in 0..flood {
        let session = SessionId { client: ClientId(7), nonce };
        let outcome = d.ns.apply(&entry(session, 1, 2 + nonce, mkdir(&format!("/d{nonce}"))));
        assert_eq!(outcome, Outcome::Mkdir);
    }
    let of = |client| d.ns.sessions.keys().filter(|s| s.client == ClientId(client)).count();
    assert_eq!(of(7), MAX_SESSIONS_PER_CLIENT as usize, "client 7 holds the most it may");
    assert_eq!(of(8), 1, "another client's session stays");
    assert!(d.ns.violation().is_none());
    // A retry in a forgotten session is applied again (here: the directory exists now);
    // a retry in a remembered one gets its first answer.
    let first = SessionId { client: ClientId(7), nonce: 0 };
    let again = d.ns.apply(&entry(first, 1, flood + 5, mkdir("/d0")));
    assert!(matches!(failed(again), NsError::AlreadyExists(_)));
    let last = SessionId { client: ClientId(7), nonce: flood - 1 };
    let retried = d.ns.apply(&entry(last, 1, flood + 6, mkdir(&format!("/d{}", flood - 1))));
    assert_eq!(retried, Outcome::Mkdir, "remembered: the same answer");
    assert_eq!(d.ns.apply(&entry(other, 1, flood + 7, mkdir("/other"))), Outcome::Mkdir);
    // Restored from a snapshot, the counts are rebuilt.
    let restored = Namespace::restore(&d.ns.snapshot()).unwrap();
    assert_eq!(restored, d.ns);
}

#[test]
fn lock_sessions_and_locks_are_bounded_per_client_and_session() {
    use crate::locks::{MAX_LOCK_SESSIONS_PER_CLIENT, MAX_LOCKS_PER_SESSION};
    let mut d = Driver::new();
    let mut request = 0;
    let mut run = |d: &mut Driver, client: u32, nonce: u64, command: Command| {
        request += 1;
        let session = SessionId { client: ClientId(client), nonce };
        let entry =
            Entry { session, request_id: request, time_ms: 10, caller: Caller::system(), command };
        d.ns.apply(&entry)
    };
    let open = Command::OpenSession { lease_ms: 60_000, lock_delay_ms: 0 };
    for nonce in 0..MAX_LOCK_SESSIONS_PER_CLIENT as u64 {
        assert!(matches!(run(&mut d, 7, nonce, open.clone()), Outcome::SessionOpened { .. }));
    }
    let refused = run(&mut d, 7, 9999, open.clone());
    let NsError::TooMany(why) = failed(refused) else { panic!() };
    assert!(why.contains("lock sessions open"), "{why}");
    assert!(matches!(run(&mut d, 7, 0, open.clone()), Outcome::SessionOpened { .. }), "a renewal");
    assert!(
        matches!(run(&mut d, 8, 0, open.clone()), Outcome::SessionOpened { .. }),
        "another client"
    );
    // One session holds at most MAX_LOCKS_PER_SESSION locks.
    let lock =
        |path: String| Command::Lock { path: p(&path), mode: LockMode::Shared, wait_ms: None };
    for i in 0..MAX_LOCKS_PER_SESSION {
        assert!(matches!(run(&mut d, 8, 0, lock(format!("/l{i}"))), Outcome::LockGranted { .. }));
    }
    let NsError::TooMany(why) = failed(run(&mut d, 8, 0, lock("/one-more".into()))) else {
        panic!()
    };
    assert!(why.contains("holds or waits for 1024 locks"), "{why}");
    assert!(matches!(run(&mut d, 8, 0, lock("/l0".into())), Outcome::LockGranted { .. }), "again");
    assert!(d.ns.violation().is_none());
}

fn created(outcome: Outcome) -> (u32, u32) {
    match outcome {
        Outcome::Created(file) => (file.id.0, file.version),
        other => panic!("expected a new file, got {other:?}"),
    }
}

#[test]
fn once_every_id_is_given_freed_ones_return_in_turn_and_their_versions_continue() {
    let mut d = Driver::new();
    let mut given = BTreeSet::new();
    let mut note = |(id, version): (u32, u32)| {
        assert!(given.insert((id, version)), "file {id} version {version} named two files");
        (id, version)
    };
    assert_eq!(note(created(d.create("/a"))), (2, 1));
    d.expand("/a", 100, 1);
    d.expand("/a", 2000, 1);
    assert_eq!(d.ns.get_file_meta_data(&p("/a")).unwrap().descriptor.version, 3);
    assert_eq!(note(created(d.create("/b"))), (3, 1));
    assert!(matches!(d.remove("/a", false), Outcome::Removed { files: 1, .. }));
    // Ids never given come first, whatever was freed: the last two of them.
    d.ns.next_id = LAST_ID - 1;
    assert_eq!(note(created(d.create("/c"))), (LAST_ID - 1, 1));
    assert_eq!(note(created(d.create("/d"))), (LAST_ID, 1));
    assert_eq!(d.ns.next_id, LAST_ID + 1, "every id has been given");
    // Now freed ones, each file above the highest version its page's removed files had.
    assert_eq!(note(created(d.create("/e"))), (2, 4), "/a's id, past /a's version 3");
    assert_eq!(note(created(d.create("/f"))), (4, 4), "the next free one, not /e's again");
    d.expand("/e", 100, 1);
    assert!(matches!(d.remove("/e", false), Outcome::Removed { files: 1, .. }));
    assert_eq!(note(created(d.create("/g"))), (5, 6), "in turn: id 2 waits its round");
    // Past the last id the search starts again from the first.
    assert!(matches!(d.remove("/c", false), Outcome::Removed { files: 1, .. }));
    d.ns.reuse_from = LAST_ID - 1;
    assert_eq!(note(created(d.create("/h"))), (LAST_ID - 1, 2), "its own page's mark");
    assert_eq!(d.ns.reuse_from, LAST_ID);
    assert_eq!(note(created(d.create("/i"))), (2, 6), "round the end, to the first free one");
    // Directories and mkdir -p take freed ids too, all or none.
    assert_eq!(d.mkdir("/x/y/z", true), Outcome::Mkdir);
    let ids: Vec<u32> =
        ["/x", "/x/y", "/x/y/z"].iter().map(|q| d.ns.lookup(&p(q)).unwrap()).collect();
    assert_eq!(ids, [6, 7, 8]);
    // A restored snapshot goes on exactly as the namespace it froze.
    let mut restored = Namespace::restore(&d.ns.snapshot()).unwrap();
    assert!(restored == d.ns);
    let entry =
        d.entry(Command::CreateFile { path: p("/j"), replication: 2, block_size: BS, mode: None });
    assert_eq!(restored.apply(&entry), d.ns.apply(&entry));
    assert!(restored.snapshot() == d.ns.snapshot());
}

#[test]
fn a_page_whose_files_used_every_version_gives_no_id_back_and_then_ids_run_out() {
    let mut d = Driver::new();
    assert_eq!(created(d.create("/a")), (2, 1));
    assert!(matches!(d.remove("/a", false), Outcome::Removed { files: 1, .. }));
    // Every page but the first has had files at every version; the first's removed files
    // reached the last version but one.
    let pages = LAST_ID as usize / inode::PAGE_SLOTS + 1;
    for page in 1..pages {
        d.ns.nodes.set_mark(page, u32::MAX);
    }
    d.ns.nodes.set_mark(0, u32::MAX - 1);
    d.ns.next_id = LAST_ID;
    assert_eq!(created(d.create("/last")), (LAST_ID, 1), "never given: version 1");
    // The next file takes page 0's last version, and cannot change again.
    assert_eq!(created(d.create("/b")), (2, u32::MAX));
    assert!(matches!(failed(d.expand("/b", 100, 1)), NsError::VersionsExhausted(_)));
    assert!(matches!(d.remove("/b", false), Outcome::Removed { files: 1, .. }));
    assert_eq!(d.ns.nodes.mark(0), u32::MAX);
    assert!(matches!(d.remove("/last", false), Outcome::Removed { files: 1, .. }));
    // Every page is spent: no id comes back, and mkdir -p makes nothing and moves nothing.
    let before = d.ns.clone();
    assert!(matches!(failed(d.create("/c")), NsError::OutOfIds));
    assert!(matches!(failed(d.mkdir("/p/q", true)), NsError::OutOfIds));
    assert!(d.ns.nodes == before.nodes);
    assert_eq!((d.ns.next_id, d.ns.reuse_from), (before.next_id, before.reuse_from));
    assert!(d.ns.violation().is_none());
    // Spent pages and their marks survive a snapshot.
    assert!(Namespace::restore(&d.ns.snapshot()).unwrap() == d.ns);
}

#[test]
fn mkdir_p_with_fewer_free_ids_than_it_needs_makes_nothing() {
    let mut d = Driver::new();
    d.ns.next_id = LAST_ID + 1;
    let pages = LAST_ID as usize / inode::PAGE_SLOTS + 1;
    for page in 1..pages {
        d.ns.nodes.set_mark(page, u32::MAX);
    }
    // Page 0 has ids 2 to 1023 free: 1,022 of them.
    let deep = (0..1023).map(|i| format!("/{}", i % 10)).collect::<String>();
    let before = d.ns.clone();
    assert!(matches!(failed(d.mkdir(&deep, true)), NsError::OutOfIds));
    assert!(d.ns.nodes == before.nodes);
    assert_eq!(d.ns.reuse_from, before.reuse_from);
    let fits = (0..1022).map(|i| format!("/{}", i % 10)).collect::<String>();
    assert_eq!(d.mkdir(&fits, true), Outcome::Mkdir);
    assert_eq!(d.ns.inode_count(), 1023);
}

#[test]
fn a_rename_that_replaces_follows_rename_2() {
    let mut d = Driver::new();
    d.mkdir("/d/full/x", true);
    d.mkdir("/d/empty", false);
    d.mkdir("/d/other", false);
    for f in ["/f", "/g"] {
        assert!(matches!(d.create(f), Outcome::Created(_)));
    }
    assert!(matches!(d.expand("/g", 3 * u64::from(BS), 3), Outcome::Expanded { .. }));
    let held: u64 = d.ns.allocated.values().sum();
    assert_eq!(held, 6 * u64::from(BS), "three blocks of /g, two replicas each");
    let g = d.ns.lookup(&p("/g")).unwrap();
    let f = d.ns.lookup(&p("/f")).unwrap();
    // Without replace, the target must not exist; with it, the file goes in the same step.
    assert!(matches!(failed(d.rename("/f", "/g")), NsError::AlreadyExists(_)));
    assert_eq!(d.rename_over("/f", "/g"), Outcome::Renamed);
    assert_eq!(d.ns.lookup(&p("/g")).unwrap(), f);
    assert!(d.ns.lookup(&p("/f")).is_err());
    assert!(d.ns.nodes.get(&g).is_none(), "the replaced file is gone");
    assert!(d.ns.allocated.is_empty(), "and its blocks no longer count");
    // Kinds must agree, and a directory replaces only an empty one.
    assert!(matches!(failed(d.rename_over("/g", "/d/empty")), NsError::IsADirectory(_)));
    assert!(matches!(failed(d.rename_over("/d/other", "/g")), NsError::NotADirectory(_)));
    assert!(matches!(failed(d.rename_over("/d/other", "/d/full")), NsError::NotEmpty(_)));
    assert!(matches!(failed(d.rename_over("/d/full/x", "/d")), NsError::NotEmpty(_)));
    assert!(matches!(failed(d.rename_over("/d", "/d/full/x")), NsError::MoveIntoItself { .. }));
    assert_eq!(d.rename_over("/d/other", "/d/empty"), Outcome::Renamed);
    assert!(d.ns.lookup(&p("/d/other")).is_err());
    // Onto itself and a missing target are as a plain rename.
    assert_eq!(d.rename_over("/g", "/g"), Outcome::Renamed);
    assert_eq!(d.rename_over("/g", "/h"), Outcome::Renamed);
    assert!(d.ns.violation().is_none());
    assert_eq!(Namespace::restore(&d.ns.snapshot()).unwrap(), d.ns);
}

#[test]
fn replacing_needs_the_right_to_remove_the_target() {
    let mut d = Driver::new();
    let alice = user(1001, &[1001]);
    let bob = user(1002, &[1002]);
    let mkdir = |path: &str, mode| Command::Mkdir { path: p(path), parents: false, mode };
    assert_eq!(d.run(mkdir("/tmp", Some(0o1777))), Outcome::Mkdir);
    let create = |path: &str| Command::CreateFile {
        path: p(path),
        replication: 1,
        block_size: BS,
        mode: Some(0o666),
    };
    assert!(matches!(run_as(&mut d, &alice, create("/tmp/alices")), Outcome::Created(_)));
    assert!(matches!(run_as(&mut d, &bob, create("/tmp/bobs")), Outcome::Created(_)));
    // The sticky directory keeps bob from replacing alice's file, as it keeps him from
    // removing it.
    let over = |from: &str, to: &str| Command::Rename { from: p(from), to: p(to), replace: true };
    let refused = run_as(&mut d, &bob, over("/tmp/bobs", "/tmp/alices"));
    assert!(matches!(failed(refused), NsError::PermissionDenied(_)));
    let refused = run_as(&mut d, &alice, over("/tmp/alices", "/tmp/bobs"));
    assert!(matches!(failed(refused), NsError::PermissionDenied(_)));
    // Her own file she may replace.
    assert!(matches!(run_as(&mut d, &alice, create("/tmp/new")), Outcome::Created(_)));
    assert_eq!(run_as(&mut d, &alice, over("/tmp/new", "/tmp/alices")), Outcome::Renamed);
}

#[test]
fn times_change_as_posix_says_and_utimens_sets_them() {
    let mut d = Driver::new();
    let times = |d: &Driver, path: &str| d.ns.stat(&p(path)).unwrap().times();
    d.time = 1_000;
    d.mkdir("/d", false);
    assert!(matches!(d.create("/d/f"), Outcome::Created(_)));
    assert_eq!(times(&d, "/d/f"), Times::at_ms(1_001), "a new inode: all three now");
    assert_eq!(times(&d, "/d").mtime_us, 1_001_000, "its directory's entries changed");
    // A mode change is a change of the inode, not of its contents.
    d.time = 2_000;
    assert_eq!(d.run(Command::Chmod { path: p("/d/f"), mode: 0o600 }), Outcome::Changed);
    let t = times(&d, "/d/f");
    assert_eq!((t.mtime_us, t.ctime_us), (1_001_000, 2_000_000));
    // Growing it changes its contents.
    d.time = 3_000;
    assert!(matches!(d.expand("/d/f", 10, 1), Outcome::Expanded { .. }));
    let t = times(&d, "/d/f");
    assert_eq!((t.mtime_us, t.ctime_us, t.atime_us), (3_000_000, 3_000_000, 1_001_000));
    // A rename changes the inode and both directories.
    d.time = 4_000;
    d.mkdir("/e", false);
    assert_eq!(d.rename("/d/f", "/e/f"), Outcome::Renamed);
    assert_eq!(times(&d, "/e/f").ctime_us, 4_001_000);
    assert_eq!(times(&d, "/e/f").mtime_us, 3_000_000);
    assert_eq!(times(&d, "/d").mtime_us, 4_001_000);
    assert_eq!(times(&d, "/e").mtime_us, 4_001_000);
    // utimens: microseconds exactly, now, or kept.
    d.time = 5_000;
    let set = |atime, mtime| Command::SetTimes { path: p("/e/f"), atime, mtime };
    assert_eq!(d.run(set(SetTime::At(123_456_789), SetTime::Keep)), Outcome::Changed);
    let t = times(&d, "/e/f");
    assert_eq!((t.atime_us, t.mtime_us, t.ctime_us), (123_456_789, 3_000_000, 5_000_000));
    assert_eq!(d.run(set(SetTime::Keep, SetTime::Now)), Outcome::Changed);
    assert_eq!(times(&d, "/e/f").mtime_us, 5_001_000);
    // They survive a snapshot to the microsecond.
    let back = Namespace::restore(&d.ns.snapshot()).unwrap();
    assert_eq!(back, d.ns);
    assert_eq!(back.stat(&p("/e/f")), d.ns.stat(&p("/e/f")));
}

#[test]
fn only_an_owner_sets_times_and_a_writer_may_set_them_to_now() {
    let mut d = Driver::new();
    let alice = user(1001, &[1001]);
    let bob = user(1002, &[1002]);
    let create = |path: &str, mode| Command::CreateFile {
        path: p(path),
        replication: 1,
        block_size: BS,
        mode: Some(mode),
    };
    assert!(matches!(run_as(&mut d, &alice, create("/open", 0o666)), Outcome::Created(_)));
    assert!(matches!(run_as(&mut d, &alice, create("/closed", 0o644)), Outcome::Created(_)));
    let set = |path: &str, atime, mtime| Command::SetTimes { path: p(path), atime, mtime };
    let now = SetTime::Now;
    assert_eq!(run_as(&mut d, &bob, set("/open", now, now)), Outcome::Changed);
    let refused = run_as(&mut d, &bob, set("/open", SetTime::At(1), now));
    assert!(matches!(failed(refused), NsError::PermissionDenied(_)));
    let refused = run_as(&mut d, &bob, set("/closed", now, now));
    assert!(matches!(failed(refused), NsError::PermissionDenied(_)));
    let mine = run_as(&mut d, &alice, set("/closed", SetTime::At(1), SetTime::At(2)));
    assert_eq!(mine, Outcome::Changed);
}

#[test]
fn truncate_drops_the_blocks_past_the_end_and_never_grows() {
    let mut d = Driver::new();
    assert!(matches!(d.create("/f"), Outcome::Created(_)));
    let bs = u64::from(BS);
    assert!(matches!(d.expand("/f", 3 * bs, 3), Outcome::Expanded { .. }));
    d.run(Command::WriteLease { path: p("/f"), index: 2 });
    d.run(Command::WriteLease { path: p("/f"), index: 0 });
    assert_eq!(d.ns.leases.len(), 2);
    let id = d.ns.lookup(&p("/f")).unwrap();
    let version = d.ns.get_file_meta_data(&p("/f")).unwrap().descriptor.version;
    d.time = 9_000;
    // To a block and a half: the third block goes, with its lease; the second counts half.
    assert_eq!(d.run(Command::Truncate { path: p("/f"), size: bs + bs / 2 }), Outcome::Changed);
    let meta = d.ns.get_file_meta_data(&p("/f")).unwrap();
    assert_eq!((meta.size, meta.blocks.len()), (bs + bs / 2, 2));
    assert_eq!(meta.descriptor.version, version + 1);
    assert_eq!(meta.times.mtime_us, 9_000_000);
    assert!(d.ns.block(id, 2).is_none(), "its replicas are orphans now");
    assert_eq!(d.ns.leases.len(), 1, "the lease on the dropped block ended");
    assert_eq!(d.ns.allocated, d.ns.compute_allocated());
    assert_eq!(d.ns.allocated.values().sum::<u64>(), 2 * (bs + bs / 2));
    // Never past its size; to nothing, nothing is left.
    let grows = d.run(Command::Truncate { path: p("/f"), size: 2 * bs });
    assert!(
        matches!(failed(grows), NsError::TruncateGrows { size, requested, .. } if size == bs + bs / 2 && requested == 2 * bs)
    );
    assert_eq!(d.run(Command::Truncate { path: p("/f"), size: 0 }), Outcome::Changed);
    assert!(d.ns.get_file_meta_data(&p("/f")).unwrap().blocks.is_empty());
    assert!(d.ns.allocated.is_empty() && d.ns.leases.is_empty());
    assert!(matches!(
        failed(d.run(Command::Truncate { path: p("/"), size: 0 })),
        NsError::IsADirectory(_)
    ));
    assert!(d.ns.violation().is_none());
    assert_eq!(Namespace::restore(&d.ns.snapshot()).unwrap(), d.ns);
}

#[test]
fn symlinks_and_special_files_are_inodes_of_their_own() {
    let mut d = Driver::new();
    let node = |path: &str, kind, target: &str, rdev| Command::MakeNode {
        path: p(path),
        kind,
        target: target.into(),
        rdev,
        mode: 0o640,
    };
    assert_eq!(d.run(node("/l", NodeType::Symlink, "some/where", 0)), Outcome::Changed);
    assert_eq!(d.run(node("/p", NodeType::Fifo, "", 0)), Outcome::Changed);
    assert_eq!(d.run(node("/b", NodeType::Block, "", 0x0801)), Outcome::Changed);
    assert!(matches!(
        failed(d.run(node("/p", NodeType::Socket, "", 0))),
        NsError::AlreadyExists(_)
    ));
    match d.ns.stat(&p("/l")).unwrap() {
        Stat::Other { kind: NodeType::Symlink, target, owner, .. } => {
            assert_eq!(target, "some/where");
            assert_eq!(owner.mode, 0o777, "a symlink's mode is always 0777");
        }
        other => panic!("{other:?}"),
    }
    let Stat::Other { rdev, owner, .. } = d.ns.stat(&p("/b")).unwrap() else { panic!() };
    assert_eq!((rdev, owner.mode), (0x0801, 0o640));
    // Listed by name, a symlink's size is its target's length; none is a directory.
    let list = d.ns.list(&p("/")).unwrap();
    let l = list.iter().find(|e| e.name == "l").unwrap();
    assert_eq!((l.is_dir, l.size), (false, 10));
    // Not a directory on the way, not a file for data, renamed and removed as files are.
    assert!(matches!(failed(d.mkdir("/p/x", false)), NsError::NotADirectory(_)));
    assert!(d.ns.get_file_meta_data(&p("/p")).is_err());
    assert_eq!(d.rename_over("/p", "/b"), Outcome::Renamed);
    assert!(matches!(d.ns.stat(&p("/b")).unwrap(), Stat::Other { kind: NodeType::Fifo, .. }));
    assert!(d.ns.violation().is_none());
    assert_eq!(Namespace::restore(&d.ns.snapshot()).unwrap(), d.ns);
    assert!(matches!(d.remove("/l", false), Outcome::Removed { files: 1, dirs: 0 }));
    // A symlink names a target, nothing else does; only devices have numbers.
    for (kind, target, rdev) in
        [(NodeType::Symlink, "", 0), (NodeType::Fifo, "x", 0), (NodeType::Socket, "", 5)]
    {
        let entry = d.entry(node("/bad", kind, target, rdev));
        assert!(Entry::decode(&entry.encode()).is_err(), "{kind:?} {target:?} {rdev}");
    }
    let long = "t".repeat(crate::path::MAX_PATH_LEN + 1);
    assert!(Entry::decode(&d.entry(node("/bad", NodeType::Symlink, &long, 0)).encode()).is_err());
}

/// Format 8's section pinned: the golden snapshot's state holds no symlink or special file.
#[test]
fn golden_snapshot_of_symlinks_and_special_files() {
    let mut d = Driver::new();
    d.mkdir("/d", false);
    let node = |path: &str, kind, target: &str, rdev| Command::MakeNode {
        path: p(path),
        kind,
        target: target.into(),
        rdev,
        mode: 0o600,
    };
    assert_eq!(d.run(node("/d/l", NodeType::Symlink, "../x", 0)), Outcome::Changed);
    assert_eq!(d.run(node("/d/c", NodeType::Char, "", 0x0504)), Outcome::Changed);
    assert_eq!(d.run(node("/s", NodeType::Socket, "", 0)), Outcome::Changed);
    let bytes = d.ns.snapshot();
    meshfs_test_kit::golden::check_bytes(testdata("snapshot-nodes.bin"), &bytes);
    assert_eq!(Namespace::restore(&bytes).unwrap(), d.ns);
    // As format 8 wrote the same state (the first with this section).
    let old = meshfs_test_kit::golden::read(testdata("format8/snapshot-nodes.bin"));
    assert_eq!(u16::from_be_bytes([old[4], old[5]]), 8);
    assert_eq!(Namespace::restore(&old).unwrap(), d.ns);
}

#[test]
fn a_directory_counts_its_subdirectories_for_its_link_count() {
    let mut d = Driver::new();
    d.mkdir("/a/b", true);
    d.mkdir("/a/c", false);
    assert!(matches!(d.create("/a/f"), Outcome::Created(_)));
    let Stat::Dir { entries, subdirs, .. } = d.ns.stat(&p("/a")).unwrap() else { panic!() };
    assert_eq!((entries, subdirs), (3, 2));
    assert_eq!(d.rename("/a/c", "/c"), Outcome::Renamed);
    let Stat::Dir { subdirs, .. } = d.ns.stat(&p("/a")).unwrap() else { panic!() };
    assert_eq!(subdirs, 1, "a directory moved out is no longer counted");
}

fn link(d: &mut Driver, from: &str, to: &str) -> Outcome {
    d.run(Command::Link { from: p(from), to: p(to) })
}

fn links(d: &Driver, path: &str) -> u32 {
    d.ns.stat(&p(path)).unwrap().links()
}

#[test]
fn a_hard_link_is_one_more_name_of_the_same_inode() {
    let mut d = Driver::new();
    d.mkdir("/a", false);
    d.mkdir("/b", false);
    assert!(matches!(d.create("/a/f"), Outcome::Created(_)));
    assert!(matches!(d.expand("/a/f", 2000, 2), Outcome::Expanded { .. }));
    let written = d.ns.stat(&p("/a/f")).unwrap().times().mtime_us;
    d.time = 5_000;
    assert_eq!(link(&mut d, "/a/f", "/b/g"), Outcome::Changed);
    let (f, g) = (d.ns.stat(&p("/a/f")).unwrap(), d.ns.stat(&p("/b/g")).unwrap());
    assert_eq!(f, g, "one inode: the same id, blocks, owner and times");
    assert_eq!(f.links(), 2);
    assert_eq!(f.times().ctime_us, 5_000_000, "a new name changes the inode");
    assert_eq!(f.times().mtime_us, written, "but not its contents");
    assert_eq!(d.ns.stat(&p("/b")).unwrap().times().mtime_us, 5_000_000);
    // A write lease through one name is a lease on the inode.
    let lease = d.run(Command::WriteLease { path: p("/b/g"), index: 0 });
    assert!(matches!(lease, Outcome::Leased { .. }), "{lease:?}");
    assert_eq!(d.ns.leases.keys().next().map(|(id, _)| *id), Some(f.id()));
    // Removing one name leaves the other, with one link, its lease and its blocks.
    d.time = 6_000;
    assert_eq!(d.remove("/a/f", false), Outcome::Removed { files: 1, dirs: 0 });
    assert_eq!(d.ns.stat(&p("/a/f")), Err(NsError::NotFound("/a/f".into())));
    let g = d.ns.stat(&p("/b/g")).unwrap();
    assert_eq!((g.id(), g.links(), g.times().ctime_us), (f.id(), 1, 6_000_000));
    assert_eq!(d.ns.leases.len(), 1);
    assert!(!d.ns.allocated.is_empty());
    // The last name takes the inode, its lease and its blocks with it.
    assert_eq!(d.remove("/b/g", false), Outcome::Removed { files: 1, dirs: 0 });
    assert!(d.ns.leases.is_empty());
    assert!(d.ns.allocated.is_empty());
    assert_eq!(d.ns.nodes.len(), 3);
}

#[test]
fn links_are_refused_as_link_2_refuses_them() {
    let mut d = Driver::new();
    d.mkdir("/d", false);
    assert!(matches!(d.create("/f"), Outcome::Created(_)));
    assert_eq!(failed(link(&mut d, "/d", "/e")), NsError::LinkDir("/d".into()));
    assert_eq!(failed(link(&mut d, "/f", "/d")), NsError::AlreadyExists("/d".into()));
    assert_eq!(failed(link(&mut d, "/nope", "/g")), NsError::NotFound("/nope".into()));
    assert_eq!(failed(link(&mut d, "/f", "/x/g")), NsError::NotFound("/x".into()));
    assert_eq!(failed(link(&mut d, "/f", "/f/g")), NsError::NotADirectory("/f".into()));
    // A symlink and a special file take links as a file does.
    let node = |path: &str, kind, target: &str| Command::MakeNode {
        path: p(path),
        kind,
        target: target.into(),
        rdev: 0,
        mode: 0o600,
    };
    assert_eq!(d.run(node("/l", NodeType::Symlink, "f")), Outcome::Changed);
    assert_eq!(d.run(node("/p", NodeType::Fifo, "")), Outcome::Changed);
    assert_eq!(link(&mut d, "/l", "/d/l"), Outcome::Changed);
    assert_eq!(link(&mut d, "/p", "/d/p"), Outcome::Changed);
    assert_eq!((links(&d, "/d/l"), links(&d, "/p")), (2, 2));
    // At the limit (names put in directly: 65,000 entries would each check the
    // invariants), one more fails and changes nothing.
    let id = d.ns.stat(&p("/f")).unwrap().id();
    d.mkdir("/many", false);
    let many = d.ns.stat(&p("/many")).unwrap().id();
    for i in 1..MAX_LINKS {
        d.ns.dir_mut(many).children.insert(format!("{i}").into(), id);
    }
    *d.ns.nodes.get_mut(&id).unwrap().links_mut().unwrap() = MAX_LINKS;
    d.ns.check_invariants();
    let too_many = NsError::TooManyLinks { path: "/f".into(), max: MAX_LINKS };
    let before = d.ns.clone();
    let entry = d.entry(Command::Link { from: p("/f"), to: p("/g") });
    assert_eq!(failed(d.ns.apply(&entry)), too_many);
    assert_eq!(d.ns.nodes, before.nodes);
}

#[test]
fn renames_and_removes_count_names() {
    let mut d = Driver::new();
    d.mkdir("/d", false);
    assert!(matches!(d.create("/f"), Outcome::Created(_)));
    assert_eq!(link(&mut d, "/f", "/g"), Outcome::Changed);
    // Two names of one inode: rename(2) does nothing and succeeds.
    assert_eq!(d.rename_over("/f", "/g"), Outcome::Renamed);
    assert_eq!((links(&d, "/f"), links(&d, "/g")), (2, 2));
    // Moving one name keeps the count.
    assert_eq!(d.rename("/g", "/d/g"), Outcome::Renamed);
    assert_eq!(links(&d, "/f"), 2);
    // Replacing one name of a linked file leaves the other.
    assert!(matches!(d.create("/h"), Outcome::Created(_)));
    assert_eq!(d.rename_over("/h", "/d/g"), Outcome::Renamed);
    assert_eq!(links(&d, "/f"), 1);
    assert_ne!(d.ns.stat(&p("/d/g")).unwrap().id(), d.ns.stat(&p("/f")).unwrap().id());
    // A tree removed holding one name of a file: the file lives on under the other.
    assert_eq!(link(&mut d, "/f", "/d/f2"), Outcome::Changed);
    assert_eq!(d.remove("/d", true), Outcome::Removed { files: 2, dirs: 1 });
    assert_eq!(links(&d, "/f"), 1);
    // Holding both: it goes.
    d.mkdir("/e", false);
    assert_eq!(d.rename("/f", "/e/f"), Outcome::Renamed);
    assert_eq!(link(&mut d, "/e/f", "/e/f2"), Outcome::Changed);
    assert!(matches!(d.expand("/e/f", 10, 1), Outcome::Expanded { .. }));
    assert_eq!(d.remove("/e", true), Outcome::Removed { files: 2, dirs: 1 });
    assert_eq!(d.ns.nodes.len(), 1, "only the root");
    assert!(d.ns.allocated.is_empty());
}

#[test]
fn linking_needs_write_on_the_new_names_directory() {
    let mut d = Driver::new();
    let alice = user(1001, &[1001]);
    let mkdir = |path: &str, mode| Command::Mkdir { path: p(path), parents: false, mode };
    assert_eq!(d.run(mkdir("/ro", Some(0o755))), Outcome::Mkdir);
    assert_eq!(d.run(mkdir("/tmp", Some(0o1777))), Outcome::Mkdir);
    assert!(matches!(d.create("/tmp/f"), Outcome::Created(_)));
    let to = |to: &str| Command::Link { from: p("/tmp/f"), to: p(to) };
    assert!(matches!(failed(run_as(&mut d, &alice, to("/ro/g"))), NsError::PermissionDenied(_)));
    assert_eq!(run_as(&mut d, &alice, to("/tmp/g")), Outcome::Changed);
}

/// Format 9's section pinned, with names in several directories and a name that sorts
/// before the inode's first.
#[test]
fn golden_snapshot_of_hard_links() {
    let mut d = Driver::new();
    d.mkdir("/a", false);
    d.mkdir("/z", false);
    assert!(matches!(d.create("/z/f"), Outcome::Created(_)));
    assert!(matches!(d.expand("/z/f", 1500, 2), Outcome::Expanded { .. }));
    assert_eq!(link(&mut d, "/z/f", "/a/f1"), Outcome::Changed);
    assert_eq!(link(&mut d, "/z/f", "/z/f2"), Outcome::Changed);
    assert_eq!(link(&mut d, "/z/f", "/top"), Outcome::Changed);
    assert!(matches!(d.create("/one"), Outcome::Created(_)));
    let bytes = d.ns.snapshot();
    meshfs_test_kit::golden::check_bytes(testdata("snapshot-links.bin"), &bytes);
    let back = Namespace::restore(&bytes).unwrap();
    assert_eq!(back, d.ns);
    assert_eq!(back.snapshot(), bytes);
    assert_eq!(links(&d, "/top"), 4);
}

#[test]
fn a_snapshot_names_only_files_in_directories_again() {
    let mut d = Driver::new();
    d.mkdir("/d", false);
    assert!(matches!(d.create("/f"), Outcome::Created(_)));
    let (dir, file) = (d.ns.stat(&p("/d")).unwrap().id(), d.ns.stat(&p("/f")).unwrap().id());
    let bytes = d.ns.snapshot();
    // The links section, then the attributes: two empty counts, then the checksum.
    let body = &bytes[..bytes.len() - 12];
    assert_eq!(&bytes[body.len()..bytes.len() - 4], &[0; 8]);
    let with = |names: &[(u32, &str, u32)]| {
        let mut w = meshfs_net::body::BodyWriter::new();
        w.u32(names.len() as u32);
        for (dir, name, id) in names {
            w.u32(*dir).str(name).u32(*id);
        }
        w.u32(0);
        let mut out = body.to_vec();
        out.extend_from_slice(&w.finish());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        Namespace::restore(&out)
    };
    let back = with(&[(ROOT_ID, "g", file), (dir, "h", file)]).unwrap();
    assert_eq!(back.stat(&p("/d/h")).unwrap().links(), 3);
    assert_eq!(back.stat(&p("/g")).unwrap().id(), file);
    for bad in [
        vec![(ROOT_ID, "g", dir)],
        vec![(ROOT_ID, "g", 999)],
        vec![(ROOT_ID, "f", file)],
        vec![(file, "g", file)],
        vec![(ROOT_ID, "a/b", file)],
        vec![(ROOT_ID, "g", file), (ROOT_ID, "g", file)],
    ] {
        assert!(matches!(with(&bad), Err(SnapshotError::Invalid(_))), "{bad:?}");
    }
}

fn setx(d: &mut Driver, path: &str, name: &str, value: &[u8], how: XattrSet) -> Outcome {
    d.run(Command::SetXattr { path: p(path), name: name.into(), value: value.to_vec(), how })
}

#[test]
fn user_attributes_are_set_read_listed_and_removed_as_setxattr_says() {
    let mut d = Driver::new();
    d.mkdir("/d", false);
    assert!(matches!(d.create("/d/f"), Outcome::Created(_)));
    d.time = 7_000;
    assert_eq!(setx(&mut d, "/d/f", "user.b", b"2", XattrSet::Either), Outcome::Changed);
    assert_eq!(d.ns.stat(&p("/d/f")).unwrap().times().ctime_us, 7_000_000, "a change of the inode");
    assert_eq!(setx(&mut d, "/d/f", "user.a", b"", XattrSet::Create), Outcome::Changed);
    assert_eq!(d.ns.get_xattr(&p("/d/f"), "user.b").unwrap(), b"2");
    assert_eq!(d.ns.get_xattr(&p("/d/f"), "user.a").unwrap(), b"", "an empty value is a value");
    assert_eq!(d.ns.list_xattr(&p("/d/f")).unwrap(), ["user.a", "user.b"]);
    // XATTR_CREATE on a name there, XATTR_REPLACE on one not there.
    let exists = failed(setx(&mut d, "/d/f", "user.a", b"x", XattrSet::Create));
    assert!(matches!(exists, NsError::AlreadyExists(_)), "{exists}");
    let missing = failed(setx(&mut d, "/d/f", "user.c", b"x", XattrSet::Replace));
    assert!(matches!(missing, NsError::NoAttr(_)), "{missing}");
    assert_eq!(setx(&mut d, "/d/f", "user.a", b"new", XattrSet::Replace), Outcome::Changed);
    assert_eq!(d.ns.get_xattr(&p("/d/f"), "user.a").unwrap(), b"new");
    // Only user.*, of a bounded size; files and directories only.
    for name in ["trusted.x", "security.selinux", "user.", "x"] {
        let refused = failed(setx(&mut d, "/d/f", name, b"v", XattrSet::Either));
        assert!(matches!(refused, NsError::AttrNotSupported(_)), "{name}: {refused}");
    }
    let big = vec![7u8; MAX_XATTR_VALUE + 1];
    assert!(matches!(
        failed(setx(&mut d, "/d/f", "user.big", &big, XattrSet::Either)),
        NsError::AttrTooLarge { .. }
    ));
    // 16 bytes are taken (user.a=new, user.b=2): this fills the inode's room exactly.
    let fill = MAX_XATTR_BYTES - 16 - "user.big".len();
    assert_eq!(setx(&mut d, "/d/f", "user.big", &big[..fill], XattrSet::Either), Outcome::Changed);
    let full = failed(setx(&mut d, "/d/f", "user.more", b"x", XattrSet::Either));
    assert!(matches!(full, NsError::AttrTooLarge { max, .. } if max as usize == MAX_XATTR_BYTES));
    assert_eq!(setx(&mut d, "/d", "user.dir", b"ok", XattrSet::Either), Outcome::Changed);
    let node = Command::MakeNode {
        path: p("/l"),
        kind: NodeType::Symlink,
        target: "d".into(),
        rdev: 0,
        mode: 0o777,
    };
    assert_eq!(d.run(node), Outcome::Changed);
    let on_link = failed(setx(&mut d, "/l", "user.x", b"v", XattrSet::Either));
    assert!(matches!(on_link, NsError::PermissionDenied(_)), "{on_link}");
    // A hard link is the same inode, attributes and all.
    assert_eq!(link(&mut d, "/d/f", "/g"), Outcome::Changed);
    assert_eq!(d.ns.get_xattr(&p("/g"), "user.a").unwrap(), b"new");
    // They survive a snapshot; removed, they are gone; they go with their inode.
    let back = Namespace::restore(&d.ns.snapshot()).unwrap();
    assert_eq!(back, d.ns);
    let remove = |name: &str| Command::RemoveXattr { path: p("/d/f"), name: name.into() };
    assert_eq!(d.run(remove("user.big")), Outcome::Changed);
    assert!(matches!(failed(d.run(remove("user.big"))), NsError::NoAttr(_)));
    assert_eq!(d.ns.list_xattr(&p("/g")).unwrap(), ["user.a", "user.b"]);
    assert_eq!(d.remove("/g", false), Outcome::Removed { files: 1, dirs: 0 });
    assert_eq!(d.ns.xattrs.len(), 2, "the file lives on under /d/f, and so do they");
    assert_eq!(d.remove("/d", true), Outcome::Removed { files: 1, dirs: 1 });
    assert!(d.ns.xattrs.is_empty());
}

#[test]
fn attributes_need_write_or_ownership_to_change_and_read_to_read() {
    let mut d = Driver::new();
    let alice = user(1001, &[1001]);
    let bob = user(1002, &[1002]);
    let create = |path: &str, mode| Command::CreateFile {
        path: p(path),
        replication: 1,
        block_size: BS,
        mode: Some(mode),
    };
    assert!(matches!(run_as(&mut d, &alice, create("/mine", 0o444)), Outcome::Created(_)));
    let set = |name: &str| Command::SetXattr {
        path: p("/mine"),
        name: name.into(),
        value: b"v".to_vec(),
        how: XattrSet::Either,
    };
    assert_eq!(run_as(&mut d, &alice, set("user.owner")), Outcome::Changed, "its owner may");
    assert!(matches!(failed(run_as(&mut d, &bob, set("user.bob"))), NsError::PermissionDenied(_)));
    assert!(d.ns.may_read(&p("/mine"), &bob).is_ok(), "read is open to all here");
}

/// Format 10's section pinned.
#[test]
fn golden_snapshot_of_attributes() {
    let mut d = Driver::new();
    d.mkdir("/d", false);
    assert!(matches!(d.create("/d/f"), Outcome::Created(_)));
    assert_eq!(
        setx(&mut d, "/d/f", "user.checksum", b"sha256:abc", XattrSet::Either),
        Outcome::Changed
    );
    assert_eq!(setx(&mut d, "/d/f", "user.a", &[0, 255, 1], XattrSet::Either), Outcome::Changed);
    assert_eq!(setx(&mut d, "/d", "user.project", b"mesh", XattrSet::Either), Outcome::Changed);
    let bytes = d.ns.snapshot();
    meshfs_test_kit::golden::check_bytes(testdata("snapshot-xattrs.bin"), &bytes);
    assert_eq!(Namespace::restore(&bytes).unwrap(), d.ns);
    // As format 9 wrote the state of hard links (the first with that section).
    let mut d = Driver::new();
    d.mkdir("/a", false);
    d.mkdir("/z", false);
    assert!(matches!(d.create("/z/f"), Outcome::Created(_)));
    assert!(matches!(d.expand("/z/f", 1500, 2), Outcome::Expanded { .. }));
    assert_eq!(link(&mut d, "/z/f", "/a/f1"), Outcome::Changed);
    assert_eq!(link(&mut d, "/z/f", "/z/f2"), Outcome::Changed);
    assert_eq!(link(&mut d, "/z/f", "/top"), Outcome::Changed);
    assert!(matches!(d.create("/one"), Outcome::Created(_)));
    let old = meshfs_test_kit::golden::read(testdata("format9/snapshot-links.bin"));
    assert_eq!(u16::from_be_bytes([old[4], old[5]]), 9);
    assert_eq!(Namespace::restore(&old).unwrap(), d.ns);
}

#[test]
fn a_listing_with_stats_pages_by_count_and_by_bytes_and_counts_subdirectories() {
    let mut d = Driver::new();
    d.mkdir("/d/sub/deeper", true);
    d.mkdir("/d/other", false);
    assert!(matches!(d.create("/d/f"), Outcome::Created(_)));
    assert!(matches!(d.expand("/d/f", 3000, 3), Outcome::Expanded { .. }));
    let long = "t".repeat(4000);
    let node = |path: &str, target: &str| Command::MakeNode {
        path: p(path),
        kind: NodeType::Symlink,
        target: target.into(),
        rdev: 0,
        mode: 0o777,
    };
    for i in 0..5 {
        assert_eq!(d.run(node(&format!("/d/l{i}"), &long)), Outcome::Changed);
    }
    let (all, more) = d.ns.list_plus_page(&p("/d"), "", 100, 1 << 20).unwrap();
    assert!(!more);
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["f", "l0", "l1", "l2", "l3", "l4", "other", "sub"]);
    // Each stat is the inode's, a file's without blocks, a directory's link count right.
    let (_, f) = &all[0];
    let Stat::File(meta) = f else { panic!("{f:?}") };
    assert_eq!((meta.size, meta.blocks.len()), (3000, 0));
    assert_eq!(all[7].1, d.ns.stat(&p("/d/sub")).unwrap());
    assert_eq!(all[7].1.links(), 3, "its name, its ., deeper's ..");
    assert_eq!(d.ns.stat(&p("/d")).unwrap().links(), 4);
    // By count, then by bytes: five 4,000-byte targets do not fit a 10,000-byte page.
    let (page, more) = d.ns.list_plus_page(&p("/d"), "f", 2, 1 << 20).unwrap();
    assert_eq!((page.len(), more, page[0].0.as_str()), (2, true, "l0"));
    let (page, more) = d.ns.list_plus_page(&p("/d"), "f", 100, 10_000).unwrap();
    assert_eq!((page.len(), more), (2, true));
    // At least one entry, however small the budget: a page always moves on.
    let (page, _) = d.ns.list_plus_page(&p("/d"), "f", 100, 1).unwrap();
    assert_eq!(page.len(), 1);
    // Directory counts follow renames and removes, and survive a snapshot.
    assert_eq!(d.rename("/d/sub", "/sub"), Outcome::Renamed);
    assert_eq!(d.ns.stat(&p("/d")).unwrap().links(), 3);
    assert_eq!(
        d.rename_over("/d/other", "/sub"),
        Outcome::Failed(NsError::NotEmpty("/sub".into()))
    );
    assert_eq!(d.remove("/sub/deeper", false), Outcome::Removed { files: 0, dirs: 1 });
    assert_eq!(d.rename_over("/d/other", "/sub"), Outcome::Renamed);
    assert_eq!(d.ns.stat(&p("/d")).unwrap().links(), 2);
    assert_eq!(d.ns.stat(&p("/")).unwrap().links(), 4, "/, d and sub");
    assert_eq!(Namespace::restore(&d.ns.snapshot()).unwrap(), d.ns);
    assert!(matches!(
        d.ns.list_plus_page(&p("/d/f"), "", 10, 1000),
        Err(NsError::NotADirectory(_))
    ));
}

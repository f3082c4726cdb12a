//! Resident memory per file of the metadata state machine:
//! `cargo bench -p meshfs-core --bench namespace_memory` (MESHFS_FILES, default 1,000,000).
//!
//! Applies real `CreateFile` entries (1,000 directories, names like `file-000123.dat`)
//! through `Namespace::apply`, and reads resident memory from /proc/self/statm before and
//! after. Sessions are included: one client session, as a bulk loader would have.

#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Instant;

use meshfs_core::namespace::{Command, Entry, Namespace};
use meshfs_core::path::MeshPath;
use meshfs_core::session::SessionId;
use meshfs_group::ClientId;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn main() {
    let files: u64 =
        std::env::var("MESHFS_FILES").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let dirs = 1000u64;
    let session = SessionId { client: ClientId(1), nonce: 1 };
    let mut ns = Namespace::new();
    let mut request_id = 0;
    let mut entry = |command| {
        request_id += 1;
        Entry {
            session,
            request_id,
            time_ms: 1_700_000_000_000 + request_id,
            caller: meshfs_core::namespace::Caller::system(),
            command,
        }
    };
    for d in 0..dirs {
        let path = MeshPath::parse(&format!("/data/dir-{d:04}")).unwrap();
        ns.apply(&entry(Command::Mkdir { path, parents: true, mode: None }));
    }
    let before = resident_bytes();
    let start = Instant::now();
    for f in 0..files {
        let path = MeshPath::parse(&format!("/data/dir-{:04}/file-{f:06}.dat", f % dirs)).unwrap();
        ns.apply(&entry(Command::CreateFile {
            path,
            replication: 2,
            block_size: 64 << 20,
            mode: None,
        }));
    }
    let elapsed = start.elapsed();
    let after = resident_bytes();
    assert_eq!(ns.inode_count() as u64, files + dirs + 2);
    let start = Instant::now();
    let snapshot = ns.snapshot();
    let encode = start.elapsed();
    let start = Instant::now();
    let restored = Namespace::restore(&snapshot).unwrap();
    let decode = start.elapsed();
    assert_eq!(restored.inode_count(), ns.inode_count());
    println!(
        "snapshot: {} bytes ({:.1} per inode), encoded in {} ms, restored in {} ms",
        snapshot.len(),
        snapshot.len() as f64 / ns.inode_count() as f64,
        encode.as_millis(),
        decode.as_millis()
    );
    println!(
        "{files} files: {:.1} bytes resident per file; {:.0} applies/s (single thread, no I/O)",
        (after - before) as f64 / files as f64,
        files as f64 / elapsed.as_secs_f64()
    );
}

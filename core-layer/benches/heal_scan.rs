//! Time of one repair scan on the leader: `cargo bench -p meshfs-core --bench heal_scan`
//! (MESHFS_FILES, default 1,000,000 one-block files at replication 2 on 4 data-servers).
//!
//! Builds the namespace with real `CreateWrite` + `CommitWrite` entries, the data-servers'
//! reports as the leader would hold them, and times `heal::plan` with every block healthy
//! and with one data-server lost (every one of its blocks a repair candidate).

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::time::Instant;

use meshfs_core::heal::{Holdings, Limits, ServerState, ServerView, plan};
use meshfs_core::namespace::{Command, Entry, Namespace, Outcome};
use meshfs_core::path::MeshPath;
use meshfs_core::session::SessionId;
use meshfs_group::{ClientId, NodeId};

fn main() {
    let files: u32 =
        std::env::var("MESHFS_FILES").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let session = SessionId { client: ClientId(1), nonce: 1 };
    let mut ns = Namespace::new();
    let mut request_id = 0;
    let mut run = |ns: &mut Namespace, command| {
        request_id += 1;
        ns.apply(&Entry {
            session,
            request_id,
            time_ms: 1_700_000_000_000,
            caller: meshfs_core::namespace::Caller::system(),
            command,
        })
    };
    for d in 0..1000 {
        let path = MeshPath::parse(&format!("/data/dir-{d:04}")).unwrap();
        run(&mut ns, Command::Mkdir { path, parents: true, mode: None });
    }
    let mut holds: BTreeMap<NodeId, Holdings> =
        (4..8).map(|id| (NodeId(id), Holdings::new())).collect();
    let started = Instant::now();
    for f in 0..files {
        let path = MeshPath::parse(&format!("/data/dir-{:04}/file-{f:07}.dat", f % 1000)).unwrap();
        let set = vec![NodeId(4 + f % 4), NodeId(4 + (f + 1) % 4)];
        let leased = run(
            &mut ns,
            Command::CreateWrite {
                path: path.clone(),
                replication: 2,
                block_size: 64 << 20,
                size: 4096,
                placement: set.clone(),
                mode: None,
            },
        );
        let Outcome::Leased { block, .. } = leased else { panic!("{leased:?}") };
        run(&mut ns, Command::CommitWrite { path, index: 0, version: block.version });
        for id in set {
            holds.get_mut(&id).unwrap().insert((block.file.id.0, 0), (block.version.0, 4096));
        }
    }
    eprintln!("built {files} files in {:.1} s", started.elapsed().as_secs_f64());
    let limits = Limits { tasks_per_server: 2, balance_margin: 0.1 };
    for lost in [None, Some(NodeId(5))] {
        let servers: BTreeMap<NodeId, ServerView<'_>> = holds
            .iter()
            .map(|(&id, h)| {
                let state = if Some(id) == lost { ServerState::Lost } else { ServerState::Up };
                let view = ServerView {
                    id,
                    state,
                    draining: false,
                    capacity: 1 << 40,
                    used: h.len() as u64 * 4096,
                    holds: h,
                };
                (id, view)
            })
            .collect();
        let mut times = Vec::new();
        let mut copies = 0;
        for _ in 0..3 {
            let start = Instant::now();
            let p = plan(&ns, 0, &servers, &[], limits);
            times.push(start.elapsed().as_secs_f64() * 1000.0);
            copies = p.copies.len();
            assert_eq!(p.health.missing, 0);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "heal_scan files={files} lost={} copies_started={copies} scan_ms_median={:.0} min={:.0} max={:.0}",
            lost.map_or("none".into(), |l| l.to_string()),
            times[1],
            times[0],
            times[2]
        );
    }
}

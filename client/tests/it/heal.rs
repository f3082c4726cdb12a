//! Self-healing with real processes: re-replication after a lost data-server, stale replicas,
//! garbage collection, the scrubber, rebalancing and drain.

use std::collections::BTreeMap;
use std::path::PathBuf;

use meshfs_client::file::RemoteFile;
use meshfs_client::status::ClusterStatus;

use super::cluster::TestCluster;
use super::{data_clients, get_bytes, meshfs, put_bytes, random_bytes, text};

/// A `[heal]` table for tests: short grace and delays, fast repair.
fn heal(extra: &str) -> String {
    format!(
        "\n[heal]\ngrace_secs = 2\nrepair_mbps = 1000\nrepair_streams = 4\norphan_delay_secs = 1\n{extra}"
    )
}

/// Every replica file (`.blk`) under data-server `id`'s directory.
fn replica_files(cluster: &TestCluster, id: u32) -> Vec<PathBuf> {
    let blocks = cluster.dir.join(format!("data/dserver-{id}/blocks"));
    let Ok(shards) = std::fs::read_dir(blocks) else { return Vec::new() };
    let mut files: Vec<PathBuf> = shards
        .flatten()
        .filter_map(|shard| std::fs::read_dir(shard.path()).ok())
        .flat_map(|entries| entries.flatten().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "blk"))
        .collect();
    files.sort();
    files
}

fn replica_path(cluster: &TestCluster, server: u32, file: u32, index: u16) -> PathBuf {
    cluster.dir.join(format!(
        "data/dserver-{server}/blocks/{:02x}/{file:08x}-{index:04x}.blk",
        file & 0xff
    ))
}

/// All blocks healthy by the leader's count: `blocks` of them, none short or under repair.
fn all_healthy(s: &ClusterStatus, blocks: u64) -> bool {
    s.health.is_some_and(|h| {
        h.healthy == blocks && h.under_replicated == 0 && h.missing == 0 && h.repairing == 0
    })
}

/// Puts `count` files of assorted sizes (some of several blocks) at replication 2; returns
/// their contents and the number of blocks.
fn put_files(cluster: &TestCluster, count: u64) -> (BTreeMap<String, Vec<u8>>, u64) {
    let mut files = BTreeMap::new();
    let mut blocks = 0;
    for i in 0..count {
        let len = match i % 10 {
            0 => 2 * 1024 * 1024 + 12_345, // three blocks
            1 => 1024 * 1024,              // exactly one
            n => 1000 + n as usize * 7_000,
        };
        let bytes = random_bytes(len, 1000 + i);
        let path = format!("/d/f{i:03}");
        put_bytes(cluster, &path, &bytes, 2).unwrap();
        blocks += (len as u64).div_ceil(1024 * 1024);
        files.insert(path, bytes);
    }
    (files, blocks)
}

fn fsck_json(cluster: &TestCluster, path: &str) -> (Option<i32>, serde_json::Value) {
    let out = meshfs(cluster, &["fsck", path, "--json"]);
    let json = serde_json::from_str(text(&out.stdout).trim())
        .unwrap_or_else(|e| panic!("fsck --json: {e}: {}{}", text(&out.stdout), text(&out.stderr)));
    (out.status.code(), json)
}

#[test]
fn a_lost_data_server_is_re_replicated_and_its_stale_replicas_are_never_served_then_deleted() {
    // 3 meta-servers, data-servers 4..=7; no rebalancing, so the returning server ends empty.
    let mut cluster =
        TestCluster::new_with("heal-lost", 3, 4, &heal("balance_margin_percent = 100\n"));
    cluster.start_all();
    cluster.wait_full_mesh();
    let (mut meta, _) = data_clients(&cluster);
    meta.mkdir("/d", true).unwrap();
    let (files, blocks) = put_files(&cluster, 200);
    cluster.wait_for("every block healthy", |s| all_healthy(s, blocks));
    let (code, report) = fsck_json(&cluster, "/");
    assert_eq!(code, Some(0), "{report}");
    assert_eq!((report["files"].as_u64(), report["blocks"].as_u64()), (Some(200), Some(blocks)));

    // kill -9 data-server 5: after the grace period every block is back to 2 good replicas.
    let victim = 5;
    let held_before: Vec<PathBuf> = replica_files(&cluster, victim);
    assert!(!held_before.is_empty());
    cluster.kill9(victim);
    cluster.wait_for("under-replicated blocks to show", |s| {
        s.health.is_some_and(|h| h.under_replicated > 0)
    });
    let status = cluster.wait_for("re-replication", |s| all_healthy(s, blocks));
    let dead = status.data_servers.iter().find(|d| d.id == victim).unwrap();
    assert_eq!(dead.state, "down");
    let (code, report) = fsck_json(&cluster, "/");
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["under_replicated"].as_u64(), Some(0), "{report}");
    assert_eq!(report["unknown_servers"], serde_json::json!([victim]), "{report}");
    for (path, bytes) in &files {
        assert_eq!(&get_bytes(&cluster, path).unwrap(), bytes, "{path}");
    }
    // No block keeps the dead server in its set.
    for path in files.keys() {
        let meta_data = meta.get_file_meta_data(path).unwrap();
        for block in &meta_data.blocks {
            assert!(!block.replicas.iter().any(|r| r.0 == victim), "{path}: {block:?}");
        }
    }

    // Rewrite the first 20 files in place while it is away; then bring it back with its old
    // disk. Its copies are stale: never served, and deleted.
    let mut rewritten = BTreeMap::new();
    for (i, (path, bytes)) in files.iter().take(20).enumerate() {
        let mut file = RemoteFile::open(&cluster.access, path).unwrap();
        let patch = random_bytes(500, 9000 + i as u64);
        file.write_at(0, &patch).unwrap();
        let mut now = bytes.clone();
        now[..500].copy_from_slice(&patch);
        rewritten.insert(path.clone(), now);
    }
    cluster.start(victim);
    for (path, bytes) in &rewritten {
        assert_eq!(&get_bytes(&cluster, path).unwrap(), bytes, "{path}: a stale copy was read");
    }
    let leader = cluster.wait_for("a leader", |s| s.agreed_leader().is_some());
    let leader = leader.agreed_leader().unwrap();
    cluster.wait_for("the returning server's stale replicas to be deleted", |s| {
        s.data_servers.iter().any(|d| d.id == victim && d.state == "up" && d.blocks == 0)
    });
    assert!(replica_files(&cluster, victim).is_empty(), "every stale replica file is gone");
    assert!(cluster.log(leader).contains("outside the block's replica set"));
    for (path, bytes) in &rewritten {
        assert_eq!(&get_bytes(&cluster, path).unwrap(), bytes, "{path}");
    }
    let (code, report) = fsck_json(&cluster, "/d");
    assert_eq!((code, report["missing"].as_u64()), (Some(0), Some(0)), "{report}");
}

#[test]
fn rm_removes_replicas_from_the_data_servers_disks() {
    let mut cluster = TestCluster::new_with("heal-rm", 1, 3, &heal(""));
    cluster.start_all();
    cluster.wait_full_mesh();
    let (mut meta, _) = data_clients(&cluster);
    meta.mkdir("/d", true).unwrap();
    let (_, blocks) = put_files(&cluster, 20);
    put_bytes(&cluster, "/keep", &random_bytes(3000, 1), 2).unwrap();
    cluster.wait_for("every block healthy", |s| all_healthy(s, blocks + 1));
    let on_disk = |c: &TestCluster| (2..=4).map(|id| replica_files(c, id).len()).sum::<usize>();
    assert_eq!(on_disk(&cluster) as u64, 2 * (blocks + 1));
    let out = meshfs(&cluster, &["rm", "-r", "/d"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    meshfs_test_kit::wait_until("the tree's replica files to be deleted", || {
        on_disk(&cluster) == 2
    });
    assert_eq!(get_bytes(&cluster, "/keep").unwrap(), random_bytes(3000, 1));
    cluster.wait_for("the reports to agree", |s| {
        s.data_servers.iter().map(|d| d.blocks).sum::<u64>() == 2 && all_healthy(s, 1)
    });
}

#[test]
fn a_corrupted_replica_is_found_by_the_scrubber_and_replaced() {
    let mut cluster = TestCluster::new_with(
        "heal-scrub",
        1,
        3,
        &heal("scrub_mbps = 50\nscrub_interval_secs = 1\n"),
    );
    cluster.start_all();
    cluster.wait_full_mesh();
    let bytes = random_bytes(3 * 1024 * 1024 - 100, 77);
    put_bytes(&cluster, "/f", &bytes, 2).unwrap();
    cluster.wait_for("every block healthy", |s| all_healthy(s, 3));
    let (mut meta, _) = data_clients(&cluster);
    let file = meta.get_file_meta_data("/f").unwrap();
    let block = &file.blocks[1];
    let (victim, good) = (block.replicas[0].0, block.replicas[1].0);
    let id = file.descriptor.id.0;
    let path = replica_path(&cluster, victim, id, 1);
    let mut disk = std::fs::read(&path).unwrap();
    // The data starts at 4 KiB (header and segment table before it); damage segment 3.
    let at = 4096 + 3 * 65536 + 17;
    disk[at] ^= 0x5a;
    std::fs::write(&path, &disk).unwrap();

    cluster.wait_log(victim, "scrubber:");
    let leader = cluster.wait_for("a leader", |s| s.agreed_leader().is_some());
    let leader = leader.agreed_leader().unwrap();
    cluster.wait_log(leader, &format!("is whole again on data-server {victim}"));
    let repaired = std::fs::read(&path).unwrap();
    let reference = std::fs::read(replica_path(&cluster, good, id, 1)).unwrap();
    assert_eq!(repaired[4096..], reference[4096..], "the replica's data was copied back");
    assert_ne!(repaired[at], disk[at], "the damaged byte is gone");
    cluster.wait_log(victim, "deleted the damaged copy");
    assert!(!path.with_extension("bad").exists(), "set aside, then deleted once replaced");
    cluster.wait_for("every block healthy", |s| all_healthy(s, 3));
    assert_eq!(get_bytes(&cluster, "/f").unwrap(), bytes);
}

#[test]
fn a_new_empty_data_server_receives_blocks_until_balanced() {
    // Capacity 1 GiB each; balance when used fractions differ by more than 1 point (~10 MiB).
    let mut cluster =
        TestCluster::new_with("heal-balance", 1, 4, &heal("balance_margin_percent = 1\n"));
    for id in 1..=4 {
        cluster.start(id); // data-server 5 joins later
    }
    cluster.wait_for("the first servers' mesh", |s| {
        s.servers.iter().filter(|v| v.id <= 4).all(|v| v.up)
            && s.data_servers.iter().filter(|d| d.state == "up").count() == 3
    });
    let mut files = BTreeMap::new();
    for i in 0..48u64 {
        let bytes = random_bytes(1024 * 1024, 500 + i);
        put_bytes(&cluster, &format!("/b{i}"), &bytes, 2).unwrap();
        files.insert(format!("/b{i}"), bytes);
    }
    cluster.wait_for("every block healthy", |s| all_healthy(s, 48));
    cluster.start(5);
    let fraction = |s: &ClusterStatus, id: u32| {
        let d = s.data_servers.iter().find(|d| d.id == id).unwrap();
        d.used as f64 / d.capacity as f64
    };
    let status = cluster.wait_for("balance", |s| {
        let up = s.data_servers.iter().all(|d| d.state == "up");
        let fractions: Vec<f64> = (2..=5).map(|id| fraction(s, id)).collect();
        let max = fractions.iter().copied().fold(0.0, f64::max);
        let min = fractions.iter().copied().fold(1.0, f64::min);
        // Within the margin, give or take the last block moved (1 MiB is 0.1 point).
        up && all_healthy(s, 48) && max - min <= 0.012 && fraction(s, 5) > 0.0
    });
    let new = status.data_servers.iter().find(|d| d.id == 5).unwrap();
    assert!(new.blocks >= 15, "the new server holds {} blocks", new.blocks);
    for (path, bytes) in &files {
        assert_eq!(&get_bytes(&cluster, path).unwrap(), bytes, "{path}");
    }
    let (code, report) = fsck_json(&cluster, "/");
    assert_eq!((code, report["healthy"].as_u64()), (Some(0), Some(48)), "{report}");
}

#[test]
fn drain_empties_a_data_server_while_every_file_stays_readable() {
    let mut cluster = TestCluster::new_with("heal-drain", 1, 4, &heal(""));
    cluster.start_all();
    cluster.wait_full_mesh();
    let (mut meta, _) = data_clients(&cluster);
    meta.mkdir("/d", true).unwrap();
    let (files, blocks) = put_files(&cluster, 40);
    cluster.wait_for("every block healthy", |s| all_healthy(s, blocks));
    let out = meshfs(&cluster, &["dserver", "drain", "1"]);
    assert!(!out.status.success(), "1 is a meta-server, not a data-server");
    assert!(text(&out.stderr).contains("data-server 1"), "{}", text(&out.stderr));
    let out = meshfs(&cluster, &["dserver", "drain", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("draining"));
    // Read everything while the blocks move.
    loop {
        for (path, bytes) in &files {
            assert_eq!(&get_bytes(&cluster, path).unwrap(), bytes, "{path}");
        }
        let status = cluster.status();
        let drained = status.data_servers.iter().find(|d| d.id == 3).unwrap();
        assert_eq!(drained.state, "up, draining");
        if drained.blocks == 0 && all_healthy(&status, blocks) {
            break;
        }
        assert!(
            status.health.is_some_and(|h| h.missing == 0),
            "no block is ever missing:\n{}",
            status.render()
        );
    }
    assert!(replica_files(&cluster, 3).is_empty());
    let out = meshfs(&cluster, &["status"]);
    assert!(text(&out.stdout).contains("up, draining"), "{}", text(&out.stdout));
    // New files never land on it; undrain takes the mark off.
    put_bytes(&cluster, "/after", &random_bytes(4000, 5), 3).unwrap();
    let placed = meta.get_file_meta_data("/after").unwrap();
    assert!(placed.blocks[0].replicas.iter().all(|r| r.0 != 3));
    let out = meshfs(&cluster, &["dserver", "undrain", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    cluster.wait_for("the mark to be off", |s| {
        s.data_servers.iter().any(|d| d.id == 3 && d.state == "up")
    });
}

#[test]
fn bench_repair_kills_a_data_server_of_its_own_cluster_and_times_the_repair() {
    // The bench starts its own local cluster from this config (free ports, fresh disks).
    let cluster = TestCluster::new("heal-bench", 1, 3);
    let out = meshfs(&cluster, &["bench", "--local", "repair", "--size", "4MiB"]);
    assert_eq!(out.status.code(), Some(2), "the config's replication 1 cannot survive a loss");
    assert!(text(&out.stderr).contains("replication"), "{}", text(&out.stderr));
    let out = meshfs(&cluster, &["bench", "repair"]);
    assert_eq!(out.status.code(), Some(2), "without --local it refuses");
    assert!(text(&out.stderr).contains("--local"), "{}", text(&out.stderr));
    let out = meshfs(
        &cluster,
        &[
            "bench",
            "--local",
            "repair",
            "--size",
            "12MiB",
            "--files",
            "3",
            "--replication",
            "2",
            "--readers",
            "1",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    let results = &json["results"];
    assert_eq!(json["workload"], "repair");
    assert!(results["lost_blocks"].as_u64().unwrap() > 0, "{json}");
    assert!(results["lost_bytes"].as_u64().unwrap() >= 1024 * 1024, "{json}");
    assert!(results["repair_mb_s"].as_f64().unwrap() > 0.0, "{json}");
    let (repair, restore) =
        (results["repair_seconds"].as_f64().unwrap(), results["restore_seconds"].as_f64().unwrap());
    assert!(restore >= repair && restore >= 1.0, "the grace period is 1 s: {json}");
    assert!(results["client_mb_s_during"].as_f64().unwrap() > 0.0, "{json}");
}

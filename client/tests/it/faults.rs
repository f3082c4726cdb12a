//! Faults against real processes: servers at addresses of their own (127.0.0.11, ...) and
//! partitions between them made with the kernel's packet filter (nftables). Every rule a
//! test adds is removed when its `Partition` is dropped, also when the test fails.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use meshfs_client::MetaClient;
use meshfs_client::data::DataClient;
use meshfs_client::status::ClusterStatus;
use meshfs_test_kit::partition::Partition;

use crate::cluster::{TestCluster, server_ip};

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

    let servers: Vec<Ipv4Addr> = cluster.ids().into_iter().map(server_ip).collect();
    let cut = Partition::isolate(server_ip(old), &servers).unwrap();
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

//! Group-layer tests: the membership state machine under a fake clock and network.

#![allow(clippy::unwrap_used)]

mod driver;
mod sim;

use std::time::Duration;

use meshfs_group::auth::{self, Side, Transcript};
use meshfs_group::membership::AUTHENTICATION_FAILED;
use meshfs_group::message::{GroupMessage, Identity};
use meshfs_group::{Action, ClientId, Group, GroupEvent, NodeId, Role};
use meshfs_net::{ConnId, Frame, Priority};
use sim::Sim;

const SEEDS: std::ops::Range<u64> = 0..20;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn the_full_mesh_forms_with_one_connection_per_pair() {
    for seed in SEEDS {
        let config = sim::config(3, 6, "sim-secret-0123456789");
        let mut sim = Sim::new(&config, seed);
        // Connections deliver out of step with each other, as real sockets do: crossings
        // then resolve in every order.
        sim.jitter = ms(2);
        assert!(sim.run_until(Duration::from_secs(5), Sim::full_mesh), "seed {seed}: no full mesh");
        // Let crossing connections settle, then: exactly one connection per pair.
        sim.run_for(Duration::from_secs(2));
        assert!(sim.full_mesh(), "seed {seed}");
        assert_eq!(sim.open_connections(), 15, "seed {seed}: 6 nodes need 15 links");
        // Each node saw each peer come up exactly once.
        let ups =
            sim.events.iter().filter(|(_, _, e)| matches!(e, GroupEvent::PeerUp { .. })).count();
        assert_eq!(ups, 30, "seed {seed}");
        // Nobody was ever reported down: resolving a crossing is not a failure.
        let downs =
            sim.events.iter().filter(|(_, _, e)| matches!(e, GroupEvent::PeerDown { .. })).count();
        assert_eq!(downs, 0, "seed {seed}: spurious downs: {:?}", sim.events);
    }
}

#[test]
fn crossing_connections_keep_the_one_the_lower_id_dialed() {
    // Both ends dial at t=0, so every pair crosses; both ends must keep the same one.
    let config = sim::config(1, 2, "sim-secret-0123456789");
    let mut sim = Sim::new(&config, 7);
    sim.run_for(Duration::from_secs(1));
    assert!(sim.full_mesh());
    let duplicates = sim.closes.iter().filter(|(_, _, r)| r.contains("duplicate link")).count();
    assert!(duplicates >= 1, "both ends dialed at once; a crossing was expected: {:?}", sim.closes);
    assert_eq!(sim.open_connections(), 1);
    // The survivor was dialed by node 1: node 1 opened it, so node 1 asked for a connect
    // that is still the link. Check via the connect log: node 1 dialed node 2 at t=0.
    assert!(sim.connects.iter().any(|&(_, from, to)| from == NodeId(1) && to == NodeId(2)));
}

#[test]
fn an_isolated_peer_is_down_within_the_timeout() {
    for seed in SEEDS {
        let config = sim::config(3, 4, "sim-secret-0123456789");
        let mut sim = Sim::new(&config, seed);
        assert!(sim.run_until(Duration::from_secs(5), Sim::full_mesh));
        let cut_at = sim.now;
        sim.isolated.push(NodeId(4));
        let timeout = config.timing.down_timeout;
        let seen = sim.run_until(timeout * 2, |s| s.downs_of(NodeId(4)).len() == 3);
        assert!(seen, "seed {seed}: not everyone saw node 4 go down");
        for (t, by) in sim.downs_of(NodeId(4)) {
            let after = t - cut_at;
            // Silence is measured from the last frame heard, at most one ping interval before
            // the cut; detection happens at the first tick past the timeout.
            assert!(
                after <= timeout + config.timing.ping_interval,
                "seed {seed}: {by} took {after:?}"
            );
            assert!(
                after >= timeout - config.timing.ping_interval,
                "seed {seed}: {by} too early: {after:?}"
            );
        }
        // The others still see each other.
        for a in 1..=3 {
            for b in 1..=3 {
                if a != b {
                    assert!(sim.nodes[&NodeId(a)].is_up(NodeId(b)), "seed {seed}: {a} lost {b}");
                }
            }
        }
        // Healing brings it back.
        sim.isolated.clear();
        assert!(sim.run_until(Duration::from_secs(10), Sim::full_mesh), "seed {seed}: no heal");
    }
}

#[test]
fn a_killed_peer_is_down_at_once_and_redialed_with_growing_backoff() {
    let config = sim::config(2, 3, "sim-secret-0123456789");
    let mut sim = Sim::new(&config, 1);
    assert!(sim.run_until(Duration::from_secs(5), Sim::full_mesh));
    let killed_at = sim.now;
    sim.kill(NodeId(3));
    sim.run_for(Duration::from_secs(30));
    // Closed sockets are noticed after one latency, not after the ping timeout.
    let downs = sim.downs_of(NodeId(3));
    assert_eq!(downs.len(), 2);
    assert!(downs.iter().all(|(t, _)| *t - killed_at < ms(10)));

    let dials: Vec<_> = sim
        .connects
        .iter()
        .filter(|&&(t, from, to)| t >= killed_at && from == NodeId(1) && to == NodeId(3))
        .map(|&(t, _, _)| t)
        .collect();
    assert!(dials.len() >= 6, "node 1 should keep redialing: {}", dials.len());
    let gaps: Vec<Duration> = dials.windows(2).map(|w| w[1] - w[0]).collect();
    let (min, max) = (config.timing.reconnect_min, config.timing.reconnect_max);
    for (i, gap) in gaps.iter().enumerate() {
        let base = (min * 2u32.pow(i as u32)).min(max);
        assert!(
            *gap >= base / 2 - ms(1) && *gap <= base + ms(1),
            "gap {i} = {gap:?}, base {base:?}"
        );
    }
    assert!(gaps.last().unwrap() >= &(max / 2), "backoff should reach the cap: {gaps:?}");

    // Restarted, it is back in the mesh within one capped backoff.
    sim.start(&config, NodeId(3), 99);
    assert!(sim.run_until(max * 2, Sim::full_mesh));
}

#[test]
fn a_restarted_peer_replaces_its_stale_link() {
    let config = sim::config(2, 3, "sim-secret-0123456789");
    let mut sim = Sim::new(&config, 5);
    assert!(sim.run_until(Duration::from_secs(5), Sim::full_mesh));
    // Node 2 restarts as a new process while the old sockets look alive to the others
    // (no reset arrived): the new incarnation must replace the stale links at once.
    sim.isolated.push(NodeId(2));
    sim.start(&config, NodeId(2), 1234);
    sim.isolated.clear();
    let restarted_at = sim.now;
    assert!(sim.run_until(Duration::from_secs(5), Sim::full_mesh));
    assert!(sim.now - restarted_at < config.timing.down_timeout, "waited for the timeout");
    let restarts = sim
        .events
        .iter()
        .filter(|(_, _, e)| matches!(e, GroupEvent::PeerDown { peer: NodeId(2), reason, .. } if reason == "restarted"))
        .count();
    assert_eq!(restarts, 2, "nodes 1 and 3 should each see node 2 restart");
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.open_connections(), 3);
}

#[test]
fn a_node_with_the_wrong_secret_is_refused_and_the_group_stays_healthy() {
    let good = sim::config(3, 4, "sim-secret-0123456789");
    let bad = sim::config(3, 4, "not-the-secret-999999");
    let mut sim = Sim::new(&good, 3);
    sim.start(&bad, NodeId(4), 3);
    sim.run_for(Duration::from_secs(10));
    for id in 1..=3 {
        let group = &sim.nodes[&NodeId(id)];
        assert!(!group.is_up(NodeId(4)), "node {id} let the impostor in");
        for other in 1..=3 {
            if other != id {
                assert!(group.is_up(NodeId(other)));
            }
        }
    }
    assert!(sim.nodes[&NodeId(4)].status().iter().all(|p| !p.up));
    let refusals: Vec<_> = sim.closes.iter().map(|(_, _, r)| r.as_str()).collect();
    // The impostor dialing the good servers fails to prove the secret; the good servers
    // dialing it are refused by it (their proof does not check against its wrong secret).
    assert!(
        refusals.iter().any(|r| r.starts_with("dserver 4: wrong cluster secret")),
        "{refusals:?}"
    );
    assert!(
        refusals.iter().any(|r| r.starts_with("refused by peer 4: authentication failed")),
        "{refusals:?}"
    );
    assert!(
        sim.events.iter().all(|(_, _, e)| !matches!(e, GroupEvent::PeerUp { peer: NodeId(4), .. }))
    );
}

#[test]
fn rtt_statistics_follow_the_network() {
    let config = sim::config(1, 2, "sim-secret-0123456789");
    let mut sim = Sim::new(&config, 2);
    sim.latency = ms(5);
    assert!(sim.run_until(Duration::from_secs(5), Sim::full_mesh));
    sim.run_for(Duration::from_secs(3));
    let status = sim.nodes[&NodeId(1)].status();
    let peer = status.iter().find(|p| p.id == NodeId(2)).unwrap();
    assert!(peer.up);
    assert!(peer.rtt.samples >= 20, "{:?}", peer.rtt);
    assert_eq!(peer.rtt.last, ms(10));
    assert_eq!(peer.rtt.smoothed, ms(10));
    assert_eq!(peer.rtt.max, ms(10));
    // A slower network shows in the statistics.
    sim.latency = ms(20);
    sim.run_for(Duration::from_secs(1));
    let status = sim.nodes[&NodeId(1)].status();
    let peer = status.iter().find(|p| p.id == NodeId(2)).unwrap();
    assert_eq!(peer.rtt.last, ms(40));
    assert_eq!(peer.rtt.max, ms(40));
    assert!(peer.rtt.smoothed > ms(30) && peer.rtt.smoothed <= ms(40), "{:?}", peer.rtt);
}

#[test]
fn messages_reach_peers_and_sends_to_down_peers_fail() {
    let config = sim::config(1, 3, "sim-secret-0123456789");
    let mut sim = Sim::new(&config, 4);
    assert!(sim.run_until(Duration::from_secs(5), Sim::full_mesh));
    let g1 = sim.nodes.get_mut(&NodeId(1)).unwrap();
    g1.send(NodeId(2), Priority::Control, Frame::new(40, 7, b"hi".to_vec())).unwrap();
    assert_eq!(g1.broadcast(Priority::Bulk, &Frame::new(41, 0, b"all".to_vec())), 2);
    sim.run_for(ms(10));
    let got: Vec<_> = sim
        .events
        .iter()
        .filter_map(|(_, n, e)| match e {
            GroupEvent::Message { from, frame } => Some((*n, *from, frame.kind)),
            _ => None,
        })
        .collect();
    assert!(got.contains(&(NodeId(2), NodeId(1), 40)));
    assert!(got.contains(&(NodeId(2), NodeId(1), 41)));
    assert!(got.contains(&(NodeId(3), NodeId(1), 41)));
    sim.kill(NodeId(3));
    sim.run_for(ms(10));
    let g1 = sim.nodes.get_mut(&NodeId(1)).unwrap();
    assert_eq!(
        g1.send(NodeId(3), Priority::Control, Frame::new(40, 0, vec![])),
        Err(meshfs_group::GroupError::PeerDown(NodeId(3)))
    );
    assert_eq!(
        g1.send(NodeId(9), Priority::Control, Frame::new(40, 0, vec![])),
        Err(meshfs_group::GroupError::UnknownPeer(NodeId(9)))
    );
}

// ---- handshakes driven by hand: the acceptor's side of each refusal ----

fn frames_sent(group: &mut Group) -> Vec<(ConnId, Frame)> {
    let mut out = Vec::new();
    while let Some(action) = group.poll_action() {
        if let Action::Send { conn, frame, .. } = action {
            out.push((conn, frame));
        }
    }
    out
}

fn closed(group: &mut Group) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(action) = group.poll_action() {
        if let Action::Close { reason, .. } = action {
            out.push(reason);
        }
    }
    out
}

fn hello(cluster: &str, identity: Identity) -> Frame {
    let message =
        GroupMessage::Hello { cluster: cluster.into(), identity, incarnation: 1, nonce: [5; 32] };
    Frame::new(message.kind(), 0, message.encode())
}

fn refusal_for(frame: Frame) -> String {
    let sim_config = sim::config(1, 2, "sim-secret-0123456789");
    let now = std::time::Instant::now();
    let mut group = Group::new(&sim_config, NodeId(1), [1; 32], now).unwrap();
    let conn = ConnId::from_raw(1000);
    group.handle_accepted(now, conn);
    group.handle_frame(now, conn, frame);
    let sent = {
        let mut g = std::mem::replace(
            &mut group,
            Group::new(&sim_config, NodeId(1), [1; 32], now).unwrap(),
        );
        let mut actions = Vec::new();
        while let Some(a) = g.poll_action() {
            actions.push(a);
        }
        actions
    };
    let refuse = sent.iter().find_map(|a| match a {
        Action::Send { frame, .. } => match GroupMessage::decode(frame.kind, &frame.body) {
            Ok(GroupMessage::Refuse { reason }) => Some(reason),
            _ => None,
        },
        _ => None,
    });
    assert!(sent.iter().any(|a| matches!(a, Action::Close { .. })), "not closed: {sent:?}");
    refuse.expect("a refusal is sent with its reason")
}

/// Runs a handshake as the dialer of `hello`, proving with `key`: the messages the acceptor
/// sent after the proof, and the reasons it closed with.
fn authenticate(hello_frame: Frame, key: &[u8]) -> (Vec<GroupMessage>, Vec<String>) {
    let config = sim::config(1, 2, "sim-secret-0123456789");
    let now = std::time::Instant::now();
    let mut group = Group::new(&config, NodeId(1), [1; 32], now).unwrap();
    let conn = ConnId::from_raw(1000);
    let GroupMessage::Hello { cluster, identity: dialer, .. } =
        GroupMessage::decode(hello_frame.kind, &hello_frame.body).unwrap()
    else {
        panic!("not a hello")
    };
    group.handle_accepted(now, conn);
    group.handle_frame(now, conn, hello_frame);
    let sent = frames_sent(&mut group);
    assert_eq!(sent.len(), 1, "a challenge and nothing else, whoever dials: {sent:?}");
    let GroupMessage::Challenge { identity, nonce, .. } =
        GroupMessage::decode(sent[0].1.kind, &sent[0].1.body).unwrap()
    else {
        panic!("expected a challenge, to anyone")
    };
    let transcript = Transcript {
        cluster: &cluster,
        dialer,
        acceptor: identity,
        dialer_nonce: &[5; 32],
        acceptor_nonce: &nonce,
    };
    let proof = GroupMessage::Proof { proof: auth::prove(key, Side::Dialer, &transcript) };
    group.handle_frame(now, conn, Frame::new(proof.kind(), 0, proof.encode()));
    let mut messages = Vec::new();
    let mut reasons = Vec::new();
    while let Some(action) = group.poll_action() {
        match action {
            Action::Send { frame, .. } => {
                messages.push(GroupMessage::decode(frame.kind, &frame.body).unwrap());
            }
            Action::Close { reason, .. } => reasons.push(reason),
            _ => {}
        }
    }
    (messages, reasons)
}

#[test]
fn refusals_say_the_same_to_the_dialer_and_why_in_the_log() {
    let server = |id, role| Identity::Server { id: NodeId(id), role };
    let secret = b"sim-secret-0123456789";
    let cases = [
        (hello("other", server(2, Role::DServer)), &secret[..], "cluster name mismatch"),
        (hello("sim", server(9, Role::DServer)), &secret[..], "unknown node id 9"),
        (hello("sim", server(2, Role::MServer)), &secret[..], "is a dserver in the config"),
        (hello("sim", server(1, Role::MServer)), &secret[..], "own id"),
        (hello("sim", Identity::Client { id: ClientId(77) }), &secret[..], "unknown client id 77"),
        (
            hello("sim", server(2, Role::DServer)),
            &b"a-guessed-secret-000"[..],
            "wrong cluster secret",
        ),
    ];
    for (frame, key, why) in cases {
        let (sent, reasons) = authenticate(frame, key);
        assert_eq!(
            sent,
            vec![GroupMessage::Refuse { reason: AUTHENTICATION_FAILED.into() }],
            "the dialer learns nothing more ({why})"
        );
        assert!(reasons.iter().any(|r| r.contains(why)), "{why}: {reasons:?}");
    }
    // Breaking the protocol itself is refused at once, with the reason.
    assert!(
        refusal_for(Frame::new(40, 0, b"app data first".to_vec()))
            .contains("before authentication")
    );
    assert!(refusal_for(Frame::new(6, 0, vec![1, 2, 3])).contains("bad body"));
    assert!(refusal_for(Frame::new(31, 0, vec![])).contains("unknown group message kind 31"));
}

#[test]
fn a_server_proof_made_with_the_wrong_secret_is_refused() {
    let config = sim::config(1, 2, "sim-secret-0123456789");
    let now = std::time::Instant::now();
    let mut group = Group::new(&config, NodeId(1), [4; 32], now).unwrap();
    let conn = ConnId::from_raw(6);
    let dialer = Identity::Server { id: NodeId(2), role: Role::DServer };
    group.handle_accepted(now, conn);
    group.handle_frame(now, conn, hello("sim", dialer));
    let sent = frames_sent(&mut group);
    let GroupMessage::Challenge { identity, nonce, .. } =
        GroupMessage::decode(sent[0].1.kind, &sent[0].1.body).unwrap()
    else {
        panic!("expected a challenge")
    };
    let transcript = Transcript {
        cluster: "sim",
        dialer,
        acceptor: identity,
        dialer_nonce: &[5; 32],
        acceptor_nonce: &nonce,
    };
    let proof = auth::prove(b"a-guessed-secret-0000", Side::Dialer, &transcript);
    let message = GroupMessage::Proof { proof };
    group.handle_frame(now, conn, Frame::new(message.kind(), 0, message.encode()));
    let reasons = closed(&mut group);
    assert!(reasons.iter().any(|r| r.contains("dserver 2: wrong cluster secret")), "{reasons:?}");
    assert!(!group.is_up(NodeId(2)));
}

#[test]
fn a_client_authenticates_with_its_key_and_a_wrong_key_is_refused() {
    let config = sim::config(1, 2, "sim-secret-0123456789");
    let now = std::time::Instant::now();
    for (key, accepted) in
        [(&b"sim-client-key-0123456789"[..], true), (&b"wrong-client-key-0000000"[..], false)]
    {
        let mut group = Group::new(&config, NodeId(1), [2; 32], now).unwrap();
        let conn = ConnId::from_raw(5);
        let client = Identity::Client { id: ClientId(1) };
        group.handle_accepted(now, conn);
        group.handle_frame(now, conn, hello("sim", client));
        let sent = frames_sent(&mut group);
        let GroupMessage::Challenge { identity, nonce, .. } =
            GroupMessage::decode(sent[0].1.kind, &sent[0].1.body).unwrap()
        else {
            panic!("expected a challenge")
        };
        let transcript = Transcript {
            cluster: "sim",
            dialer: client,
            acceptor: identity,
            dialer_nonce: &[5; 32],
            acceptor_nonce: &nonce,
        };
        let my_proof = auth::prove(key, Side::Dialer, &transcript);
        let message = GroupMessage::Proof { proof: my_proof };
        group.handle_frame(now, conn, Frame::new(message.kind(), 0, message.encode()));
        if accepted {
            let sent = frames_sent(&mut group);
            let GroupMessage::Welcome { proof } =
                GroupMessage::decode(sent[0].1.kind, &sent[0].1.body).unwrap()
            else {
                panic!("expected a welcome")
            };
            // Only now, to a client that proved its key, does the server prove it knows it.
            assert!(auth::verify(
                b"sim-client-key-0123456789",
                Side::Acceptor,
                &transcript,
                &proof
            ));
            group.handle_frame(now, conn, Frame::new(50, 3, b"status?".to_vec()));
            assert_eq!(
                group.poll_event(),
                Some(GroupEvent::ClientMessage {
                    conn,
                    client: ClientId(1),
                    frame: Frame::new(50, 3, b"status?".to_vec())
                })
            );
        } else {
            let reasons = closed(&mut group);
            assert!(reasons.iter().any(|r| r.contains("wrong client key")), "{reasons:?}");
        }
    }
}

#[test]
fn handshakes_that_stall_time_out() {
    let config = sim::config(1, 2, "sim-secret-0123456789");
    let now = std::time::Instant::now();
    let mut group = Group::new(&config, NodeId(1), [3; 32], now).unwrap();
    let conn = ConnId::from_raw(9);
    group.handle_accepted(now, conn);
    let deadline = group.poll_timeout().unwrap();
    assert!(deadline <= now + config.timing.handshake_timeout());
    group.handle_tick(now + config.timing.handshake_timeout());
    let reasons = closed(&mut group);
    assert!(reasons.iter().any(|r| r.contains("handshake timed out")), "{reasons:?}");
}

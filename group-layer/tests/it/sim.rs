//! A deterministic cluster in one thread: real `Group` state machines, a fake clock, a fake
//! network with latency, isolation and dead nodes. Time jumps from event to event, so a
//! minute of cluster life takes milliseconds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use meshfs_group::config::Config;
use meshfs_group::membership::HANDSHAKE_MAX_BODY_LEN;
use meshfs_group::{Action, Group, GroupEvent, NodeId};
use meshfs_net::{ConnId, Frame};

/// A config text for `n` servers (first `m` are mservers), with `secret`.
pub fn config_text(m: u32, n: u32, secret: &str) -> String {
    let mut text = format!(
        "[cluster]\nname = \"sim\"\nsecret = \"{secret}\"\nreplication = 1\n\
         ping_interval_ms = 100\ndown_timeout_ms = 500\nreconnect_min_ms = 50\nreconnect_max_ms = 2000\n"
    );
    for id in 1..=n {
        let role = if id <= m { "mserver" } else { "dserver" };
        text +=
            &format!("[[{role}]]\nid = {id}\naddr = \"10.0.0.{id}:7000\"\ndata_dir = \"d{id}\"\n");
        if role == "dserver" {
            text += "capacity = \"1TiB\"\n";
        }
    }
    text += "[[client]]\nid = 1\nkey = \"sim-client-key-0123456789\"\n";
    text
}

pub fn config(m: u32, n: u32, secret: &str) -> Config {
    Config::parse(&config_text(m, n, secret), Path::new("/sim/config.conf")).unwrap()
}

/// One end of a fake connection.
#[derive(Debug, Clone, Copy)]
struct End {
    node: NodeId,
    /// Id of the other end's connection (on the other node).
    other: ConnId,
}

#[derive(Debug)]
enum Delivery {
    Frame(Frame),
    Closed,
}

pub struct Sim {
    pub now: Instant,
    pub nodes: BTreeMap<NodeId, Group>,
    addrs: HashMap<SocketAddr, NodeId>,
    /// Open connection ends, by their id (ids are unique across all nodes).
    ends: HashMap<ConnId, End>,
    /// Connection ends their node has authenticated (lifted the handshake frame limit).
    trusted: HashSet<ConnId>,
    /// In flight: (deliver at, sequence, to node, to conn, what). Sorted by time then sequence.
    in_flight: Vec<(Instant, u64, NodeId, ConnId, Delivery)>,
    next_conn: u64,
    next_seq: u64,
    pub latency: Duration,
    /// Extra random delay per message, up to this; each connection stays FIFO, but two
    /// connections no longer deliver in the order things were sent across them.
    pub jitter: Duration,
    rng: u64,
    /// Latest delivery time scheduled per receiving connection end (FIFO per connection).
    last_delivery: HashMap<ConnId, Instant>,
    /// Nodes whose traffic is silently dropped (a cut cable, not a closed socket).
    pub isolated: Vec<NodeId>,
    /// Nodes not running: connects to them are refused.
    pub dead: Vec<NodeId>,
    /// Every event each node emitted, with its time.
    pub events: Vec<(Instant, NodeId, GroupEvent)>,
    /// Every connect each node asked for: (time, from, to).
    pub connects: Vec<(Instant, NodeId, NodeId)>,
    /// Every close asked for: (time, by, reason).
    pub closes: Vec<(Instant, NodeId, String)>,
}

impl Sim {
    pub fn new(config: &Config, seed: u64) -> Sim {
        let now = Instant::now();
        let mut sim = Sim {
            now,
            nodes: BTreeMap::new(),
            addrs: HashMap::new(),
            ends: HashMap::new(),
            trusted: HashSet::new(),
            in_flight: Vec::new(),
            next_conn: 1,
            next_seq: 0,
            latency: Duration::from_micros(100),
            jitter: Duration::ZERO,
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            last_delivery: HashMap::new(),
            isolated: Vec::new(),
            dead: Vec::new(),
            events: Vec::new(),
            connects: Vec::new(),
            closes: Vec::new(),
        };
        for server in &config.servers {
            sim.addrs.insert(server.addr, server.id);
            sim.start(config, server.id, seed);
        }
        sim
    }

    /// Starts (or restarts, as a new process with a new incarnation) node `id`.
    pub fn start(&mut self, config: &Config, id: NodeId, seed: u64) {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_be_bytes());
        key[8..12].copy_from_slice(&id.0.to_be_bytes());
        key[12..20].copy_from_slice(&(self.next_conn).to_be_bytes());
        self.nodes.insert(id, Group::new(config, id, key, self.now).unwrap());
        self.dead.retain(|&d| d != id);
    }

    /// Kills node `id` like kill -9: its sockets close, peers get a reset.
    pub fn kill(&mut self, id: NodeId) {
        self.nodes.remove(&id);
        self.dead.push(id);
        let mine: Vec<ConnId> =
            self.ends.iter().filter(|(_, e)| e.node == id).map(|(&c, _)| c).collect();
        for conn in mine {
            self.close_end(conn);
        }
    }

    fn new_conn(&mut self) -> ConnId {
        let conn = ConnId::from_raw(self.next_conn);
        self.next_conn += 1;
        conn
    }

    fn cut(&self, a: NodeId, b: NodeId) -> bool {
        self.isolated.contains(&a) || self.isolated.contains(&b)
    }

    /// When a message sent now on a connection arrives: latency plus jitter, never before
    /// the previous message on that connection.
    fn arrival(&mut self, conn: ConnId) -> Instant {
        // xorshift64: the sim's own seeded randomness.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let jitter_ns = u64::try_from(self.jitter.as_nanos()).unwrap();
        let extra = if jitter_ns == 0 { 0 } else { self.rng % jitter_ns };
        let at = self.now + self.latency + Duration::from_nanos(extra);
        let at = self.last_delivery.get(&conn).map_or(at, |&last| at.max(last));
        self.last_delivery.insert(conn, at);
        at
    }

    fn push(&mut self, at: Instant, node: NodeId, conn: ConnId, what: Delivery) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight.push((at, seq, node, conn, what));
    }

    /// Removes `conn` and tells the other end (after latency) that it closed.
    fn close_end(&mut self, conn: ConnId) {
        // The other end stays in `ends` until its close is delivered.
        if let Some(end) = self.ends.remove(&conn)
            && let Some(other) = self.ends.get(&end.other).copied()
        {
            let at = self.arrival(end.other);
            self.push(at, other.node, end.other, Delivery::Closed);
        }
    }

    fn execute(&mut self, node: NodeId, action: Action) {
        match action {
            Action::Connect { peer, addr } => {
                self.connects.push((self.now, node, peer));
                let mine = self.new_conn();
                self.nodes.get_mut(&node).unwrap().handle_dialed(self.now, peer, mine);
                let target = self.addrs.get(&addr).copied();
                match target {
                    Some(t) if !self.dead.contains(&t) && !self.cut(node, t) => {
                        let theirs = self.new_conn();
                        self.ends.insert(mine, End { node, other: theirs });
                        self.ends.insert(theirs, End { node: t, other: mine });
                        self.nodes.get_mut(&t).unwrap().handle_accepted(self.now, theirs);
                    }
                    _ => {
                        // Refused (dead) or lost (isolated): the dialer learns after latency.
                        let at = self.now + self.latency;
                        self.push(at, node, mine, Delivery::Closed);
                    }
                }
            }
            Action::Send { conn, frame, .. } => {
                let Some(end) = self.ends.get(&conn).copied() else { return };
                let Some(other) = self.ends.get(&end.other).copied() else { return };
                if self.cut(end.node, other.node) {
                    return;
                }
                let at = self.arrival(end.other);
                self.push(at, other.node, end.other, Delivery::Frame(frame));
            }
            Action::Trust { conn } => {
                self.trusted.insert(conn);
            }
            Action::Close { conn, reason } => {
                self.closes.push((self.now, node, reason));
                self.close_end(conn);
            }
        }
    }

    /// Drains every node's actions and events.
    fn settle(&mut self) {
        loop {
            let mut busy = false;
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                while let Some(action) = self.nodes.get_mut(&id).and_then(|g| g.poll_action()) {
                    busy = true;
                    self.execute(id, action);
                }
                while let Some(event) = self.nodes.get_mut(&id).and_then(|g| g.poll_event()) {
                    self.events.push((self.now, id, event));
                }
            }
            if !busy {
                return;
            }
        }
    }

    /// Runs the cluster for `duration` of simulated time.
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        self.run_until_time(end, |_| false);
    }

    /// Runs until `done` holds (checked after every step) or `limit` of simulated time passes;
    /// returns whether `done` held.
    pub fn run_until(&mut self, limit: Duration, done: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.now + limit;
        self.run_until_time(end, done)
    }

    fn run_until_time(&mut self, end: Instant, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.nodes.get_mut(&id).unwrap().handle_tick(self.now);
        }
        self.settle();
        loop {
            if done(self) {
                return true;
            }
            let next_delivery = self.in_flight.iter().map(|d| (d.0, d.1)).min();
            let next_tick = self.nodes.values().filter_map(|g| g.poll_timeout()).min();
            let next = match (next_delivery.map(|d| d.0), next_tick) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => end,
            };
            if next > end {
                self.now = end;
                return done(self);
            }
            self.now = self.now.max(next);
            // Deliver everything due, in order.
            self.in_flight.sort_by_key(|d| (d.0, d.1));
            while self.in_flight.first().is_some_and(|d| d.0 <= self.now) {
                let (_, _, node, conn, what) = self.in_flight.remove(0);
                let Some(group) = self.nodes.get_mut(&node) else { continue };
                match what {
                    Delivery::Frame(frame) => {
                        let too_large = frame.body.len() > HANDSHAKE_MAX_BODY_LEN as usize;
                        if too_large && !self.trusted.contains(&conn) {
                            // What the real decoder does before authentication.
                            group.handle_closed(self.now, conn, "bad frame: too large");
                            self.close_end(conn);
                        } else if self.ends.contains_key(&conn) {
                            group.handle_frame(self.now, conn, frame);
                        }
                    }
                    Delivery::Closed => {
                        self.ends.remove(&conn);
                        group.handle_closed(self.now, conn, "closed by peer");
                    }
                }
                self.settle();
            }
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.nodes.get_mut(&id).unwrap().handle_tick(self.now);
            }
            self.settle();
        }
    }

    /// Whether every live pair sees each other up over the same, single connection.
    pub fn full_mesh(&self) -> bool {
        for (&a, ga) in &self.nodes {
            for &b in self.nodes.keys() {
                if a == b {
                    continue;
                }
                let Ok(conn) = ga.conn_of(b) else { return false };
                let Some(end) = self.ends.get(&conn) else { return false };
                let Ok(back) = self.nodes[&b].conn_of(a) else { return false };
                if end.other != back
                    || !self.trusted.contains(&conn)
                    || !self.trusted.contains(&back)
                {
                    return false;
                }
            }
        }
        true
    }

    /// Connections open in the fake network, counted once per pair of ends.
    pub fn open_connections(&self) -> usize {
        self.ends.len() / 2
    }

    pub fn downs_of(&self, peer: NodeId) -> Vec<(Instant, NodeId)> {
        self.events
            .iter()
            .filter_map(|(t, n, e)| match e {
                GroupEvent::PeerDown { peer: p, .. } if *p == peer => Some((*t, *n)),
                _ => None,
            })
            .collect()
    }
}

//! The driver on real sockets: two nodes on loopback, each running its loop in a thread.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use meshfs_group::driver::{Node, Service, Stop};
use meshfs_group::{Config, FIRST_APP_KIND, GroupEvent, NodeId, Now};
use meshfs_net::{Frame, Priority};

const BULK: u16 = FIRST_APP_KIND;
const MARK: u16 = FIRST_APP_KIND + 1;
const FLOOD_TIMER: u64 = 1;
const AFTER_TIMER: u64 = 2;

/// What each node's service saw, sent to the test.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Up(NodeId),
    Down(NodeId),
    Flooded,
    Bulk,
    Mark(Vec<u8>),
}

/// Node 1 floods node 2 in one callback once the link is up: far more than the link's
/// queue holds, then a mark behind the flood on the control queue. Node 2 acknowledges the
/// mark; until it does, node 1 floods again every second (both ends dial, and what was sent
/// on the connection the higher id dialed is lost with it). A second after the mark is
/// acknowledged, node 1 sends a last one.
struct Peer {
    flood_to: Option<NodeId>,
    acked: bool,
    seen: mpsc::Sender<Seen>,
}

impl Service for Peer {
    fn handle_event(&mut self, node: &mut Node, now: Now, event: GroupEvent) {
        let seen = match event {
            GroupEvent::PeerUp { peer, .. } => {
                if self.flood_to == Some(peer) {
                    node.set_timer(now.mono + Duration::from_millis(100), FLOOD_TIMER);
                }
                Seen::Up(peer)
            }
            GroupEvent::PeerDown { peer, .. } => Seen::Down(peer),
            GroupEvent::Message { frame, .. } if frame.kind == BULK => Seen::Bulk,
            GroupEvent::Message { from, frame } => {
                if frame.body == b"behind" {
                    let _ =
                        node.send(from, Priority::Control, Frame::new(MARK, 0, b"ack".to_vec()));
                }
                if frame.body == b"ack" && !self.acked {
                    self.acked = true;
                    node.set_timer(now.mono + Duration::from_secs(1), AFTER_TIMER);
                }
                Seen::Mark(frame.body)
            }
            _ => return,
        };
        let _ = self.seen.send(seen);
    }

    fn handle_timer(&mut self, node: &mut Node, now: Now, token: u64) {
        let Some(peer) = self.flood_to else { return };
        let mark = |body: &[u8]| Frame::new(MARK, 0, body.to_vec());
        if token == FLOOD_TIMER && !self.acked {
            for i in 0..96 {
                let frame = Frame::new(BULK, i, vec![7; 1 << 20]);
                let _ = node.send(peer, Priority::Bulk, frame);
            }
            let _ = node.send(peer, Priority::Control, mark(b"behind"));
            node.set_timer(now.mono + Duration::from_secs(1), FLOOD_TIMER);
            let _ = self.seen.send(Seen::Flooded);
        } else if token == AFTER_TIMER {
            let _ = node.send(peer, Priority::Control, mark(b"later"));
        }
    }
}

fn config(addrs: &[std::net::SocketAddr]) -> Config {
    let text = format!(
        "[cluster]\nname = \"driver\"\nsecret = \"driver-secret-0123456789\"\nreplication = 1\n\
         ping_interval_ms = 100\ndown_timeout_ms = 1000\nreconnect_min_ms = 50\n\
         reconnect_max_ms = 500\n\
         [[mserver]]\nid = 1\naddr = \"{}\"\ndata_dir = \"m1\"\n\
         [[mserver]]\nid = 2\naddr = \"{}\"\ndata_dir = \"m2\"\n",
        addrs[0], addrs[1]
    );
    Config::parse(&text, std::path::Path::new("/driver/config.conf")).unwrap()
}

/// A link between servers whose queue a handler overfills loses the frames past it, not
/// the link: no side sees the other go down or come up again, the mark behind the flood and
/// the one after it arrive, and fewer than all of the flood's frames did. (Before, the
/// driver closed the link on a full queue.)
#[test]
fn a_peer_link_whose_queue_overflows_drops_frames_and_stays_up() {
    let listeners = meshfs_test_kit::net::listeners(2);
    let config = config(&meshfs_test_kit::net::addrs(&listeners));
    let stop = Stop::new();
    let mut threads = Vec::new();
    let mut seen = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = NodeId(i as u32 + 1);
        let (tx, rx) = mpsc::channel();
        seen.push(rx);
        let (config, stop) = (config.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut node = Node::on_listener(&config, id, listener, [i as u8; 32], &stop).unwrap();
            let flood_to = (id == NodeId(1)).then_some(NodeId(2));
            node.run(&mut Peer { flood_to, acked: false, seen: tx }).unwrap();
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut at_two = Vec::new();
    while !at_two.contains(&Seen::Mark(b"later".to_vec())) {
        let left = deadline.saturating_duration_since(Instant::now());
        match seen[1].recv_timeout(left) {
            Ok(event) => at_two.push(event),
            Err(_) => {
                let downs = at_two.iter().filter(|e| matches!(e, Seen::Down(_))).count();
                let last = &at_two[at_two.len().saturating_sub(8)..];
                panic!(
                    "node 2 never got the mark sent after the flood ({downs} downs; last {last:?})"
                )
            }
        }
    }
    // What each side saw up to now, before either shuts down.
    let at_one: Vec<Seen> = seen[0].try_iter().collect();
    at_two.extend(seen[1].try_iter());
    stop.stop();
    for thread in threads {
        thread.join().unwrap();
    }
    let floods = at_one.iter().filter(|e| **e == Seen::Flooded).count();
    assert!(floods >= 1, "{at_one:?}");
    for (events, other) in [(&at_one, NodeId(2)), (&at_two, NodeId(1))] {
        let ups = events.iter().filter(|e| **e == Seen::Up(other)).count();
        let downs = events.iter().filter(|e| **e == Seen::Down(other)).count();
        assert_eq!((ups, downs), (1, 0), "the link went down and up: {events:?}");
    }
    assert!(at_two.contains(&Seen::Mark(b"behind".to_vec())), "{at_two:?}");
    let bulk = at_two.iter().filter(|e| **e == Seen::Bulk).count();
    assert!(
        (1..96 * floods).contains(&bulk),
        "{bulk} of {floods} floods of 96 frames arrived: none was dropped?"
    );
}

/// Whether the kernel holds an established TCP connection from `local_ip` (any port) to
/// `remote`, by /proc/net/tcp (addresses in hex, the IP's bytes in memory order).
fn established(local_ip: std::net::Ipv4Addr, remote: std::net::SocketAddr) -> bool {
    let hex_ip = |ip: std::net::Ipv4Addr| {
        let [a, b, c, d] = ip.octets();
        format!("{d:02X}{c:02X}{b:02X}{a:02X}")
    };
    let std::net::IpAddr::V4(remote_ip) = remote.ip() else { return false };
    let remote = format!("{}:{:04X}", hex_ip(remote_ip), remote.port());
    let local = format!("{}:", hex_ip(local_ip));
    std::fs::read_to_string("/proc/net/tcp").unwrap().lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 3
            && fields[1].starts_with(&local)
            && fields[2] == remote
            && fields[3] == "01"
    })
}

/// Servers at their own loopback addresses dial from them: the link between server 1 at
/// 127.0.0.2 and server 2 at 127.0.0.3 (the one server 1 dialed, kept as the lower id's)
/// leaves from 127.0.0.2, not from 127.0.0.1 as the kernel would pick.
#[test]
fn servers_dial_from_their_own_configured_address() {
    let listeners: Vec<std::net::TcpListener> = ["127.0.0.2:0", "127.0.0.3:0"]
        .iter()
        .map(|a| std::net::TcpListener::bind(a).unwrap())
        .collect();
    let addrs = meshfs_test_kit::net::addrs(&listeners);
    let config = config(&addrs);
    let stop = Stop::new();
    let (tx, seen) = mpsc::channel();
    let mut threads = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = NodeId(i as u32 + 1);
        let (config, stop, tx) = (config.clone(), stop.clone(), tx.clone());
        threads.push(std::thread::spawn(move || {
            let mut node = Node::on_listener(&config, id, listener, [i as u8; 32], &stop).unwrap();
            node.run(&mut Peer { flood_to: None, acked: false, seen: tx }).unwrap();
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ups = 0;
    while ups < 2 {
        match seen.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Seen::Up(_)) => ups += 1,
            Ok(_) => {}
            Err(_) => panic!("the link did not come up"),
        }
    }
    // The crossing dial is closed within a moment of the link coming up; poll for the
    // kernel's view, with the deadline.
    let from_own = loop {
        if established("127.0.0.2".parse().unwrap(), addrs[1]) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let from_default = established("127.0.0.1".parse().unwrap(), addrs[1]);
    stop.stop();
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(from_own, "no connection from 127.0.0.2 to server 2 at {}", addrs[1]);
    assert!(!from_default, "a dial left from 127.0.0.1");
}

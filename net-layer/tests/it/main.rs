//! Event-loop tests on real loopback sockets. Every server binds 127.0.0.1:0; every wait has a
//! deadline; no test sleeps to let something happen.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use meshfs_net::frame::{self, Decoder, Frame};
use meshfs_net::{CloseReason, ConnId, EventLoop, LoopConfig, NetEvent, Priority, SendError};

const DEADLINE: Duration = Duration::from_secs(20);

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// What the echo server saw, reported when it stops.
#[derive(Debug, Default)]
struct EchoReport {
    accepted: usize,
    frames: usize,
    closes: Vec<CloseReason>,
}

/// An echo server on its own thread: every frame comes back with the same kind, id and body.
/// Stops when woken; returns what it saw.
struct EchoServer {
    addr: SocketAddr,
    stop: meshfs_net::Notifier,
    thread: thread::JoinHandle<EchoReport>,
    closes: mpsc::Receiver<CloseReason>,
}

impl EchoServer {
    fn start() -> EchoServer {
        let mut net = EventLoop::new(LoopConfig::default()).unwrap();
        let (_, addr) = net.listen(localhost()).unwrap();
        let stop = net.notifier();
        let (close_tx, closes) = mpsc::channel();
        let thread = thread::spawn(move || {
            let mut report = EchoReport::default();
            let mut events = Vec::new();
            loop {
                net.poll(&mut events, Some(DEADLINE)).unwrap();
                for event in events.drain(..) {
                    match event {
                        NetEvent::Accepted { .. } => report.accepted += 1,
                        NetEvent::Frame { conn, frame } => {
                            report.frames += 1;
                            net.send(
                                conn,
                                Priority::Bulk,
                                frame.kind,
                                frame.request_id,
                                &frame.body,
                            )
                            .unwrap();
                        }
                        NetEvent::Closed { reason, .. } => {
                            let _ = close_tx.send(reason.clone());
                            report.closes.push(reason);
                        }
                        NetEvent::Woken => return report,
                        _ => {}
                    }
                }
            }
        });
        EchoServer { addr, stop, thread, closes }
    }

    fn stop(self) -> EchoReport {
        self.stop.notify().unwrap();
        self.thread.join().unwrap()
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
}

fn read_frame(stream: &mut TcpStream, decoder: &mut Decoder) -> Frame {
    loop {
        if let Some(frame) = decoder.decode().unwrap() {
            return frame;
        }
        let n = stream.read(decoder.read_buf()).unwrap();
        assert!(n > 0, "server closed the connection");
        decoder.advance(n);
    }
}

#[test]
fn echo_round_trips_small_and_large_frames() {
    let server = EchoServer::start();
    let mut stream = connect(server.addr);
    let mut decoder = Decoder::new(frame::DEFAULT_MAX_BODY_LEN);
    let sizes = [0usize, 1, 64, 4096, 65_536, 1024 * 1024];
    for (i, &size) in sizes.iter().enumerate() {
        let body: Vec<u8> = (0..size).map(|b| (b * 31 + i) as u8).collect();
        let sent = Frame::new(100 + i as u16, i as u64 * 7, body);
        let mut bytes = Vec::new();
        sent.encode(&mut bytes);
        stream.write_all(&bytes).unwrap();
        assert_eq!(read_frame(&mut stream, &mut decoder), sent);
    }
    drop(stream);
    let report = server.stop();
    assert_eq!(report.accepted, 1);
    assert_eq!(report.frames, sizes.len());
}

#[test]
fn many_connections_are_served_at_once() {
    let server = EchoServer::start();
    let count = 200;
    let mut streams: Vec<TcpStream> = (0..count).map(|_| connect(server.addr)).collect();
    // Every client writes before any reads, so the loop holds all of them open together.
    for (i, stream) in streams.iter_mut().enumerate() {
        let mut bytes = Vec::new();
        frame::encode(1, i as u64, format!("client {i}").as_bytes(), &mut bytes);
        stream.write_all(&bytes).unwrap();
    }
    for (i, stream) in streams.iter_mut().enumerate() {
        let mut decoder = Decoder::new(1024);
        let frame = read_frame(stream, &mut decoder);
        assert_eq!(frame.request_id, i as u64);
        assert_eq!(frame.body, format!("client {i}").as_bytes());
    }
    drop(streams);
    let report = server.stop();
    assert_eq!(report.accepted, count);
    assert_eq!(report.frames, count);
}

#[test]
fn garbage_closes_only_that_connection() {
    let server = EchoServer::start();
    let mut good = connect(server.addr);
    let mut bad = connect(server.addr);

    // Garbage that is not a frame: the server must close this connection.
    let garbage: Vec<u8> =
        (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    bad.write_all(&garbage).unwrap();
    let mut sink = [0u8; 64];
    match bad.read(&mut sink) {
        Ok(0) => {}
        Ok(n) => panic!("server answered garbage with {n} bytes"),
        Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset),
    }
    let reason = server.closes.recv_timeout(DEADLINE).unwrap();
    assert!(matches!(reason, CloseReason::BadFrame(_)), "closed for {reason:?}");

    // The good connection, opened before, still works.
    let mut decoder = Decoder::new(1024);
    let mut bytes = Vec::new();
    frame::encode(5, 9, b"still here", &mut bytes);
    good.write_all(&bytes).unwrap();
    assert_eq!(read_frame(&mut good, &mut decoder).body, b"still here");
    drop(good);
    drop(bad);
    server.stop();
}

/// Polls `net` until `want` matches an event, failing at the deadline.
fn poll_until(net: &mut EventLoop, mut want: impl FnMut(&NetEvent) -> bool) -> NetEvent {
    let deadline = Instant::now() + DEADLINE;
    let mut events = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "event did not arrive in {DEADLINE:?}");
        net.poll(&mut events, Some(Duration::from_millis(100))).unwrap();
        if let Some(pos) = events.iter().position(&mut want) {
            return events.swap_remove(pos);
        }
        events.clear();
    }
}

#[test]
fn a_peer_that_stops_reading_gets_backpressure_not_memory() {
    let limit = 1024 * 1024;
    let config = LoopConfig { outbound_limit_bytes: limit, ..LoopConfig::default() };
    let mut net = EventLoop::new(config).unwrap();
    let (_, addr) = net.listen(localhost()).unwrap();
    let client = connect(addr);
    let NetEvent::Accepted { conn, .. } =
        poll_until(&mut net, |e| matches!(e, NetEvent::Accepted { .. }))
    else {
        unreachable!()
    };

    // Send 64 KiB bulk frames to a client that reads nothing, until the queue refuses.
    let body = vec![7u8; 64 * 1024];
    let mut sent = 0usize;
    let mut events = Vec::new();
    let refused = loop {
        match net.send(conn, Priority::Bulk, 2, 0, &body) {
            Ok(()) => sent += 1,
            Err(err) => break err,
        }
        net.poll(&mut events, Some(Duration::ZERO)).unwrap();
        assert!(sent < 100_000, "the queue never filled: no backpressure");
    };
    assert!(
        matches!(refused, SendError::QueueFull { priority: Priority::Bulk, .. }),
        "{refused:?}"
    );
    // The bound: the queue's limit plus the one frame already partly on the wire.
    let queued = net.queued_bytes(conn).unwrap();
    let bound = limit + frame::HEADER_LEN + body.len();
    assert!(queued <= bound, "{queued} bytes queued past the {bound}-byte bound");

    // Control traffic has its own queue and is still accepted.
    net.send(conn, Priority::Control, 3, 0, b"ping").unwrap();

    // Once the client reads, the loop reports the connection writable again.
    let reader = thread::spawn(move || {
        let mut client = client;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0usize;
        while let Ok(n) = client.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    poll_until(&mut net, |e| matches!(e, NetEvent::Writable { conn: c } if *c == conn));
    net.close(conn, "test done");
    poll_until(&mut net, |e| matches!(e, NetEvent::Closed { .. }));
    let total = reader.join().unwrap();
    assert!(total >= sent * body.len(), "client read {total} bytes of {} sent", sent * body.len());
}

#[test]
fn connect_to_a_closed_port_reports_failure() {
    // Bind then drop to find a port nobody listens on.
    let port = std::net::TcpListener::bind(localhost()).unwrap().local_addr().unwrap().port();
    let mut net = EventLoop::new(LoopConfig::default()).unwrap();
    let conn = net.connect(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
    let event = poll_until(&mut net, |e| matches!(e, NetEvent::Closed { .. }));
    let NetEvent::Closed { conn: closed, reason } = event else { unreachable!() };
    assert_eq!(closed, conn);
    assert!(matches!(reason, CloseReason::ConnectFailed(_)), "{reason:?}");
    assert!(!net.is_open(conn));
    assert_eq!(net.send(conn, Priority::Control, 1, 0, b""), Err(SendError::Closed));
}

#[test]
fn a_body_past_the_frame_limit_is_refused_not_sent() {
    let config = LoopConfig { max_body_len: 1000, ..LoopConfig::default() };
    let mut server = EventLoop::new(config.clone()).unwrap();
    let (_, addr) = server.listen(localhost()).unwrap();
    let mut client = EventLoop::new(config).unwrap();
    let conn = client.connect(addr).unwrap();
    assert_eq!(
        client.send(conn, Priority::Bulk, 1, 0, &[0u8; 1001]),
        Err(SendError::TooLarge { len: 1001, max: 1000 })
    );
    assert_eq!(client.queued_bytes(conn), Some(0));
    client.send(conn, Priority::Bulk, 1, 0, &[0u8; 1000]).unwrap();
}

#[test]
fn two_loops_talk_and_stale_ids_are_refused() {
    let mut server = EventLoop::new(LoopConfig::default()).unwrap();
    let (_, addr) = server.listen(localhost()).unwrap();
    let mut client = EventLoop::new(LoopConfig::default()).unwrap();
    let conn = client.connect(addr).unwrap();
    // Queued before the connect completes: goes out once it does.
    client.send(conn, Priority::Control, 9, 1, b"early").unwrap();
    poll_until(&mut client, |e| matches!(e, NetEvent::Connected { .. }));
    let NetEvent::Frame { conn: server_conn, frame } =
        poll_until(&mut server, |e| matches!(e, NetEvent::Frame { .. }))
    else {
        unreachable!()
    };
    assert_eq!(frame.body, b"early");

    server.close(server_conn, "bye");
    poll_until(&mut server, |e| matches!(e, NetEvent::Closed { .. }));
    let NetEvent::Closed { reason, .. } =
        poll_until(&mut client, |e| matches!(e, NetEvent::Closed { .. }))
    else {
        unreachable!()
    };
    assert_eq!(reason, CloseReason::PeerClosed);

    // A new connection may reuse the slab slot; the old id must not reach it.
    let conn2 = client.connect(addr).unwrap();
    assert_ne!(conn, conn2);
    assert_eq!(client.send(conn, Priority::Control, 1, 0, b""), Err(SendError::Closed));
    client.send(conn2, Priority::Control, 1, 0, b"").unwrap();
}

#[test]
fn timers_fire_in_order_and_the_waker_wakes() {
    let mut net = EventLoop::new(LoopConfig::default()).unwrap();
    let now = Instant::now();
    let second = net.set_timer(now + Duration::from_millis(30), 2);
    let _first = net.set_timer(now + Duration::from_millis(10), 1);
    let cancelled = net.set_timer(now + Duration::from_millis(5), 99);
    assert!(net.cancel_timer(cancelled));
    let mut fired = Vec::new();
    let mut events = Vec::new();
    while fired.len() < 2 {
        assert!(now.elapsed() < DEADLINE);
        net.poll(&mut events, None).unwrap();
        for event in events.drain(..) {
            if let NetEvent::Timer { id, token } = event {
                assert!(Instant::now() >= now + Duration::from_millis(token * 10));
                fired.push((id, token));
            }
        }
    }
    assert_eq!(fired.iter().map(|f| f.1).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(fired[1].0, second);

    let notifier = net.notifier();
    let waker = thread::spawn(move || notifier.notify().unwrap());
    poll_until(&mut net, |e| matches!(e, NetEvent::Woken));
    waker.join().unwrap();
}

#[test]
fn conn_ids_print_index_and_generation() {
    assert_eq!(ConnId::from_raw((3 << 32) | 7).to_string(), "c7.3");
}

#[test]
fn connections_past_the_limit_are_closed_and_the_rest_keep_working() {
    let config = LoopConfig { max_connections: 2, ..LoopConfig::default() };
    let mut net = EventLoop::new(config).unwrap();
    let (_, addr) = net.listen(localhost()).unwrap();
    let mut first = connect(addr);
    let _second = connect(addr);
    let mut events = Vec::new();
    let mut accepted = 0;
    let deadline = Instant::now() + DEADLINE;
    while accepted < 2 {
        assert!(Instant::now() < deadline, "only {accepted} accepted");
        net.poll(&mut events, Some(Duration::from_millis(100))).unwrap();
        accepted += events.drain(..).filter(|e| matches!(e, NetEvent::Accepted { .. })).count();
    }
    // The third is accepted by the kernel, then closed by the loop without an event.
    let mut third = connect(addr);
    let mut buf = [0u8; 16];
    third.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        net.poll(&mut events, Some(Duration::from_millis(20))).unwrap();
        assert!(events.iter().all(|e| !matches!(e, NetEvent::Accepted { .. })), "{events:?}");
        events.clear();
        match third.read(&mut buf) {
            Ok(0) => break,
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => break,
            _ => assert!(Instant::now() < deadline, "the connection past the limit stayed open"),
        }
    }
    assert_eq!(net.connection_count(), 2);
    // The first connection still works.
    let mut bytes = Vec::new();
    frame::encode(1, 1, b"hi", &mut bytes);
    first.write_all(&bytes).unwrap();
    let NetEvent::Frame { frame, .. } =
        poll_until(&mut net, |e| matches!(e, NetEvent::Frame { .. }))
    else {
        unreachable!()
    };
    assert_eq!(frame.body, b"hi");
}

#[test]
fn accepted_connections_filling_their_budget_leave_dialing_to_its_own() {
    let config = LoopConfig { max_connections: 2, max_outbound: 1, ..LoopConfig::default() };
    let mut net = EventLoop::new(config).unwrap();
    let (_, addr) = net.listen(localhost()).unwrap();
    let _strangers = [connect(addr), connect(addr)];
    let mut events = Vec::new();
    let mut accepted = 0;
    let deadline = Instant::now() + DEADLINE;
    while accepted < 2 {
        assert!(Instant::now() < deadline, "only {accepted} accepted");
        net.poll(&mut events, Some(Duration::from_millis(100))).unwrap();
        accepted += events.drain(..).filter(|e| matches!(e, NetEvent::Accepted { .. })).count();
    }
    // Every accept slot is taken; a dial still goes out, on its own budget.
    let other = std::net::TcpListener::bind(localhost()).unwrap();
    let dialed = net.connect(other.local_addr().unwrap()).unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "the dial never completed");
        net.poll(&mut events, Some(Duration::from_millis(100))).unwrap();
        if events.drain(..).any(|e| matches!(e, NetEvent::Connected { conn } if conn == dialed)) {
            break;
        }
    }
    assert_eq!(net.connection_count(), 3);
    // That budget is full too now: the next dial is refused, the accepted ones stay.
    let err = net.connect(other.local_addr().unwrap()).unwrap_err();
    assert!(err.to_string().contains("outbound connection limit"), "{err}");
    assert_eq!(net.connection_count(), 3);
}

/// A connection whose body limit its owner raises on seeing a frame (a handshake that just
/// finished) gets the large frame that came right behind it in the same read; without the
/// raise, that frame closes it. Both frames are written at once, so one read holds both.
#[test]
fn a_large_frame_right_behind_the_one_that_raises_the_limit_is_taken() {
    for raise in [true, false] {
        let mut net = EventLoop::new(LoopConfig::default()).unwrap();
        let (_, addr) = net.listen(localhost()).unwrap();
        let mut client = connect(addr);
        let NetEvent::Accepted { conn, .. } =
            poll_until(&mut net, |e| matches!(e, NetEvent::Accepted { .. }))
        else {
            unreachable!()
        };
        net.set_max_body_len(conn, 4096);
        let mut bytes = Vec::new();
        frame::encode(5, 1, b"welcome", &mut bytes);
        frame::encode(6, 2, &vec![9; 1 << 20], &mut bytes);
        client.write_all(&bytes).unwrap();
        let first = poll_until(&mut net, |e| matches!(e, NetEvent::Frame { .. }));
        let NetEvent::Frame { frame, .. } = first else { unreachable!() };
        assert_eq!(frame.body, b"welcome");
        if raise {
            net.set_max_body_len(conn, u32::MAX);
            let next = poll_until(&mut net, |e| {
                matches!(e, NetEvent::Frame { .. } | NetEvent::Closed { .. })
            });
            match next {
                NetEvent::Frame { frame, .. } => assert_eq!(frame.body.len(), 1 << 20),
                other => panic!("the large frame behind the raise was refused: {other:?}"),
            }
        } else {
            let closed = poll_until(&mut net, |e| {
                matches!(e, NetEvent::Frame { .. } | NetEvent::Closed { .. })
            });
            assert!(
                matches!(&closed, NetEvent::Closed { reason: CloseReason::BadFrame(_), .. }),
                "{closed:?}"
            );
        }
    }
}

/// A dial from a chosen loopback address leaves from it: the listener, on another address
/// of 127.0.0.0/8, sees that address as the peer's (what a per-address packet filter and
/// the fault tests go by). `None` dials as before.
#[test]
fn a_dial_from_an_address_leaves_from_it() {
    let mut net = EventLoop::new(LoopConfig::default()).unwrap();
    let (_, addr) = net.listen("127.0.0.3:0".parse().unwrap()).unwrap();
    for (from, expect) in [(Some("127.0.0.2"), "127.0.0.2"), (None, "127.0.0.1")] {
        let local = from.map(|ip| ip.parse().unwrap());
        let dialed = net.connect_from(local, addr).unwrap();
        let accepted = poll_until(&mut net, |e| matches!(e, NetEvent::Accepted { .. }));
        let NetEvent::Accepted { peer, .. } = accepted else { unreachable!() };
        assert_eq!(peer.ip().to_string(), expect);
        net.close(dialed, "done");
    }
    // Nothing listens here: the dial fails as a connect does, without a panic.
    let closed = std::net::TcpListener::bind("127.0.0.4:0").unwrap();
    let nowhere = closed.local_addr().unwrap();
    drop(closed);
    let conn = net.connect_from(Some("127.0.0.2".parse().unwrap()), nowhere).unwrap();
    let failed =
        poll_until(&mut net, |e| matches!(e, NetEvent::Closed { conn: c, .. } if *c == conn));
    assert!(
        matches!(failed, NetEvent::Closed { conn: c, reason: CloseReason::ConnectFailed(_) } if c == conn),
        "{failed:?}"
    );
}

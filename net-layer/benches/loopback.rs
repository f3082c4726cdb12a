//! Net-layer throughput on loopback, beside blocking std::net baselines measured in the same
//! run: `cargo bench -p meshfs-net --bench loopback`.
//!
//! One sender streams N frames one way to one receiver, each on its own thread. Rows:
//! - `event loop`: both ends are `EventLoop`s; the sender respects backpressure (QueueFull,
//!   then waits for Writable); the receiver decodes and verifies every frame.
//! - `std::net + codec`: blocking sockets; the sender writes pre-encoded frames through a
//!   64 KiB `BufWriter`; the receiver decodes and verifies with the same `Decoder`.
//! - `std::net raw`: blocking sockets moving the same bytes with no framing at all: the
//!   ceiling of one TCP stream on this machine.
//!
//! Set `MESHFS_BENCH_SCALE` (default 1.0) to run more or fewer frames.

#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use meshfs_net::frame::{self, Decoder};
use meshfs_net::{EventLoop, LoopConfig, NetEvent, Priority, SendError};

const DONE_KIND: u16 = 2;
const DATA_KIND: u16 = 1;

struct Result {
    frames: u64,
    bytes: u64,
    elapsed: Duration,
}

impl Result {
    fn frames_per_s(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64()
    }
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Event loop to event loop.
fn event_loop(body_len: usize, frames: u64) -> Result {
    let mut server = EventLoop::new(LoopConfig::default()).unwrap();
    let (_, addr) = server.listen(localhost()).unwrap();
    let receiver = thread::spawn(move || {
        let mut events = Vec::new();
        let mut received = 0u64;
        loop {
            server.poll(&mut events, Some(Duration::from_secs(10))).unwrap();
            for event in events.drain(..) {
                if let NetEvent::Frame { conn, frame } = event {
                    assert_eq!(frame.body.len(), body_len);
                    received += 1;
                    if received == frames {
                        server.send(conn, Priority::Control, DONE_KIND, 0, b"").unwrap();
                        let mut tail = Vec::new();
                        server.poll(&mut tail, Some(Duration::ZERO)).unwrap();
                        return;
                    }
                }
            }
        }
    });

    let mut client = EventLoop::new(LoopConfig::default()).unwrap();
    let conn = client.connect(addr).unwrap();
    let body = vec![0x5a; body_len];
    let mut events = Vec::new();
    let mut sent = 0u64;
    let start = Instant::now();
    'run: loop {
        while sent < frames {
            match client.send(conn, Priority::Bulk, DATA_KIND, sent, &body) {
                Ok(()) => sent += 1,
                Err(SendError::QueueFull { .. }) => break,
                Err(err) => panic!("{err}"),
            }
        }
        client.poll(&mut events, Some(Duration::from_secs(10))).unwrap();
        for event in events.drain(..) {
            if let NetEvent::Frame { frame, .. } = event
                && frame.kind == DONE_KIND
            {
                break 'run;
            }
        }
    }
    let elapsed = start.elapsed();
    receiver.join().unwrap();
    Result { frames, bytes: frames * (body_len + frame::HEADER_LEN) as u64, elapsed }
}

/// Blocking sockets, same codec on the receiving side.
fn std_codec(body_len: usize, frames: u64) -> Result {
    let listener = TcpListener::bind(localhost()).unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut decoder = Decoder::new(frame::DEFAULT_MAX_BODY_LEN);
        let mut received = 0u64;
        while received < frames {
            let n = stream.read(decoder.read_buf()).unwrap();
            assert!(n > 0);
            decoder.advance(n);
            while let Some(frame) = decoder.decode().unwrap() {
                assert_eq!(frame.body.len(), body_len);
                received += 1;
            }
        }
        stream.write_all(&[1]).unwrap();
    });
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut reader = stream.try_clone().unwrap();
    let mut writer = BufWriter::with_capacity(64 * 1024, stream);
    let body = vec![0x5a; body_len];
    let start = Instant::now();
    let mut encoded = Vec::with_capacity(body_len + frame::HEADER_LEN);
    for id in 0..frames {
        encoded.clear();
        frame::encode(DATA_KIND, id, &body, &mut encoded);
        writer.write_all(&encoded).unwrap();
    }
    writer.flush().unwrap();
    let mut done = [0u8; 1];
    reader.read_exact(&mut done).unwrap();
    let elapsed = start.elapsed();
    receiver.join().unwrap();
    Result { frames, bytes: frames * (body_len + frame::HEADER_LEN) as u64, elapsed }
}

/// Blocking sockets moving the same number of bytes, unframed.
fn std_raw(body_len: usize, frames: u64) -> Result {
    let total = frames * (body_len + frame::HEADER_LEN) as u64;
    let listener = TcpListener::bind(localhost()).unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        while got < total {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0);
            got += n as u64;
        }
        stream.write_all(&[1]).unwrap();
    });
    let mut stream = TcpStream::connect(addr).unwrap();
    let chunk = vec![0x5a; 256 * 1024];
    let start = Instant::now();
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    let mut done = [0u8; 1];
    stream.read_exact(&mut done).unwrap();
    let elapsed = start.elapsed();
    receiver.join().unwrap();
    Result { frames, bytes: total, elapsed }
}

fn main() {
    let scale: f64 =
        std::env::var("MESHFS_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let cases: [(usize, u64, &str); 2] = [
        (64, (2_000_000.0 * scale) as u64, "64 B"),
        (1024 * 1024, (2_000.0 * scale) as u64, "1 MiB"),
    ];
    println!(
        "| frame body | path | frames | frames/s | MB/s (incl. 28 B headers) | vs std::net + codec |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    for (body_len, frames, label) in cases {
        // Warm-up, not reported.
        let _ = event_loop(body_len, frames / 10 + 1);
        let ours = event_loop(body_len, frames);
        let codec = std_codec(body_len, frames);
        let raw = std_raw(body_len, frames);
        for (name, r) in
            [("event loop", &ours), ("std::net + codec", &codec), ("std::net raw", &raw)]
        {
            println!(
                "| {label} | {name} | {} | {:.0} | {:.0} | {:.2} |",
                r.frames,
                r.frames_per_s(),
                r.mb_per_s(),
                r.mb_per_s() / codec.mb_per_s()
            );
        }
    }
}

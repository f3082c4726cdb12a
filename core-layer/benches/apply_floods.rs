//! Apply time of the entries a hostile client can send: `cargo bench -p meshfs-core --bench
//! apply_floods`. Each case prints microseconds an entry, so a cost that grows with the
//! state (a scan of every session, every waiter) shows as a number that grows.
//!
//! - `sessions`: 100 clients hold 1,000 request sessions each; one more client then names
//!   a new session with every request, past its cap of `MAX_SESSIONS_PER_CLIENT`.
//! - `lock queue`: 4,000 sessions queue for one lock held by another;
//! - `hand-over`: then each holder in turn unlocks, granting the next in the queue.

#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Instant;

use meshfs_core::locks::LockMode;
use meshfs_core::namespace::{Caller, Command, Entry, MAX_SESSIONS_PER_CLIENT, Namespace};
use meshfs_core::path::MeshPath;
use meshfs_core::session::SessionId;
use meshfs_group::ClientId;

fn entry(client: u32, nonce: u64, request_id: u64, time_ms: u64, command: Command) -> Entry {
    let session = SessionId { client: ClientId(client), nonce };
    Entry { session, request_id, time_ms, caller: Caller::system(), command }
}

fn report(case: &str, entries: u64, started: Instant) {
    let micros = started.elapsed().as_secs_f64() * 1e6 / entries as f64;
    println!("{case:<12} {entries:>8} entries  {micros:>9.2} us an entry");
}

fn main() {
    let mut ns = Namespace::new();
    let mkdir = |path: String| Command::Mkdir {
        path: MeshPath::parse(&path).unwrap(),
        parents: false,
        mode: None,
    };
    let mut time = 1_000;
    for client in 0..100 {
        for nonce in 0..1000 {
            time += 1;
            ns.apply(&entry(100 + client, nonce, 1, time, mkdir(format!("/c{client}-{nonce}"))));
        }
    }
    // The flooding client fills its cap, then every request evicts.
    let flood = u64::from(MAX_SESSIONS_PER_CLIENT) + 20_000;
    let mut started = Instant::now();
    for nonce in 0..flood {
        if nonce == u64::from(MAX_SESSIONS_PER_CLIENT) {
            started = Instant::now();
        }
        time += 1;
        ns.apply(&entry(7, nonce, 1, time, mkdir(format!("/f{nonce}"))));
    }
    report("sessions", 20_000, started);

    let lock_path = MeshPath::parse("/lock").unwrap();
    let open = Command::OpenSession { lease_ms: 3_600_000, lock_delay_ms: 0 };
    let mut request = 10;
    let mut run = |ns: &mut Namespace, client: u32, nonce: u64, command: Command| {
        request += 1;
        time += 1;
        ns.apply(&entry(client, nonce, request, time, command))
    };
    let holder = 9;
    run(&mut ns, holder, 0, open.clone());
    let lock =
        |wait_ms| Command::Lock { path: lock_path.clone(), mode: LockMode::Exclusive, wait_ms };
    run(&mut ns, holder, 0, lock(None));
    let waiters = 4000;
    for w in 0..waiters {
        run(&mut ns, 1000 + w, 0, open.clone());
    }
    let started = Instant::now();
    for w in 0..waiters {
        run(&mut ns, 1000 + w, 0, lock(Some(3_000_000)));
    }
    report("lock queue", u64::from(waiters), started);
    let started = Instant::now();
    run(&mut ns, holder, 0, Command::Unlock { path: lock_path.clone() });
    for w in 0..waiters - 1 {
        run(&mut ns, 1000 + w, 0, Command::Unlock { path: lock_path.clone() });
    }
    report("hand-over", u64::from(waiters), started);
}

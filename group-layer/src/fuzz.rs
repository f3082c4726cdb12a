//! Checks for the fuzz targets (`fuzz/`, nightly) and their stable property-test twins: each
//! takes arbitrary bytes and panics only if the code under test breaks a promise.

use std::path::Path;
use std::time::{Duration, Instant};

use meshfs_net::{ConnId, Frame};

use crate::config::Config;
use crate::message::GroupMessage;
use crate::{Group, NodeId};

/// A group message of any kind (the first two bytes) with the rest as its body: decoding
/// never panics, and what decodes encodes back to itself.
pub fn group_message(data: &[u8]) {
    let [a, b, body @ ..] = data else { return };
    let kind = u16::from_be_bytes([*a, *b]) % 40;
    let Ok(message) = GroupMessage::decode(kind, body) else { return };
    let again = GroupMessage::decode(message.kind(), &message.encode()).expect("its own encoding");
    assert_eq!(again, message);
}

/// A small cluster's config, the one the handshake check runs in.
fn config() -> Config {
    let text = "[cluster]\nname = \"fuzz\"\nsecret = \"fuzz-secret-0123456789\"\nreplication = 1\n\
                [[mserver]]\nid = 1\naddr = \"127.0.0.1:7001\"\ndata_dir = \"m1\"\n\
                [[mserver]]\nid = 2\naddr = \"127.0.0.1:7002\"\ndata_dir = \"m2\"\n\
                [[dserver]]\nid = 3\naddr = \"127.0.0.1:7003\"\ndata_dir = \"d3\"\n\
                capacity = \"1GiB\"\n\
                [[client]]\nid = 1\nkey = \"fuzz-client-key-0123456789\"\n";
    Config::parse(text, Path::new("/fuzz/config.conf")).expect("the fuzz config parses")
}

/// Strangers' frames on accepted connections, in any order, with time passing: the group
/// never panics, keeps its invariants, lets no one in (no stranger knows the secret), and
/// closes every connection by its handshake deadline.
pub fn handshake(data: &[u8]) {
    let config = config();
    let start = Instant::now();
    let mut now = start;
    let Ok(mut group) = Group::new(&config, NodeId(1), [9; 32], now) else { return };
    let conns: Vec<ConnId> = (0..3).map(|i| ConnId::from_raw(1000 + i)).collect();
    for &conn in &conns {
        group.handle_accepted(now, conn);
    }
    let mut rest = data;
    while let [pick, kind, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (body, after) = tail.split_at(len);
        rest = after;
        let conn = conns[usize::from(*pick) % conns.len()];
        match pick % 8 {
            7 => {
                now += Duration::from_millis(u64::from(*kind) * 10);
                group.handle_tick(now);
            }
            6 => group.handle_closed(now, conn, "fuzz"),
            _ => group.handle_frame(now, conn, Frame::new(u16::from(*kind % 40), 0, body.to_vec())),
        }
        group.check_invariants();
        while group.poll_action().is_some() {}
        while let Some(event) = group.poll_event() {
            assert!(
                !matches!(
                    event,
                    crate::GroupEvent::PeerUp { .. } | crate::GroupEvent::ClientMessage { .. }
                ),
                "a stranger got in: {event:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    //! The stable twins of the fuzz targets, with a budget that fits CI.

    use super::*;
    use proptest::prelude::*;

    /// A well-formed Hello from a stranger claiming to be server 2, so that cases reach
    /// past the first message.
    fn hello() -> Vec<u8> {
        let message = GroupMessage::Hello {
            cluster: "fuzz".into(),
            identity: crate::message::Identity::Server {
                role: crate::Role::MServer,
                id: NodeId(2),
            },
            incarnation: 1,
            nonce: [3; 32],
        };
        let body = message.encode();
        let mut data = vec![0, message.kind() as u8, body.len() as u8];
        data.extend(body);
        data
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn group_messages(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            group_message(&data);
        }

        #[test]
        fn handshakes(data in proptest::collection::vec(any::<u8>(), 0..1024), first in any::<bool>()) {
            let mut input = if first { hello() } else { Vec::new() };
            input.extend(data);
            handshake(&input);
        }
    }
}

//! The group layer's own messages: the handshake and ping/pong.
//!
//! Kinds 1 to 31 belong to the group layer; kinds from [`FIRST_APP_KIND`] up are carried for
//! the layers above (`core-layer/src/wire.rs` names them) and never interpreted here.
//! The handshake (dialer D, acceptor A):
//!
//! ```text
//! D -> A  Hello     { cluster, identity D, incarnation D, nonce D }
//! A -> D  Challenge { identity A, incarnation A, nonce A }              (to anyone)
//! D -> A  Proof     { proof D }                                         (or close)
//! A -> D  Welcome   { proof A }      (or Refuse "authentication failed", then close)
//! ```
//! The dialer proves itself first: the acceptor's proof goes only to a dialer that proved it
//! knows the key, so a stranger cannot collect proofs to guess a weak key offline. Every
//! failure (another cluster, an unknown id, a wrong key) gets the same refusal, so a stranger
//! learns neither the cluster's name nor which ids exist; the acceptor logs the real reason.
//!
//! Body layouts (big-endian, `str` = u16 length + UTF-8):
//! - Hello: `str cluster, u8 role, u32 id, u64 incarnation, [32] nonce`
//! - Challenge: `u8 role, u32 id, u64 incarnation, [32] nonce`
//! - Proof, Welcome: `[32] proof`; Refuse: `str reason`
//! - Ping, Pong: `u64 seq`
//!
//! Roles on the wire: 1 mserver, 2 dserver, 3 client.

use meshfs_net::body::{BodyError, BodyReader, BodyWriter};

use crate::auth::{Nonce, Proof};
use crate::config::{ClientId, NodeId, Role};

/// Kind of [`GroupMessage::Hello`].
pub const KIND_HELLO: u16 = 1;
/// Kind of [`GroupMessage::Challenge`].
pub const KIND_CHALLENGE: u16 = 2;
/// Kind of [`GroupMessage::Proof`].
pub const KIND_PROOF: u16 = 3;
/// Kind of [`GroupMessage::Welcome`].
pub const KIND_WELCOME: u16 = 4;
/// Kind of [`GroupMessage::Refuse`].
pub const KIND_REFUSE: u16 = 5;
/// Kind of [`GroupMessage::Ping`].
pub const KIND_PING: u16 = 6;
/// Kind of [`GroupMessage::Pong`].
pub const KIND_PONG: u16 = 7;
/// The first kind the group layer hands upward.
pub const FIRST_APP_KIND: u16 = 32;

/// Who is at one end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A server of the cluster.
    Server {
        /// Its id.
        id: NodeId,
        /// Its role.
        role: Role,
    },
    /// A client from the `[[client]]` list.
    Client {
        /// Its id.
        id: ClientId,
    },
}

impl Identity {
    /// Five bytes: role code, then id.
    pub fn to_bytes(self) -> [u8; 5] {
        let (code, id) = match self {
            Identity::Server { id, role: Role::MServer } => (1, id.0),
            Identity::Server { id, role: Role::DServer } => (2, id.0),
            Identity::Client { id } => (3, id.0),
        };
        let mut out = [0u8; 5];
        out[0] = code;
        out[1..].copy_from_slice(&id.to_be_bytes());
        out
    }

    fn write(self, w: &mut BodyWriter) {
        w.fixed(&self.to_bytes());
    }

    fn read(r: &mut BodyReader<'_>) -> Result<Identity, BodyError> {
        let code = r.u8("role")?;
        let id = r.u32("id")?;
        match code {
            1 => Ok(Identity::Server { id: NodeId(id), role: Role::MServer }),
            2 => Ok(Identity::Server { id: NodeId(id), role: Role::DServer }),
            3 => Ok(Identity::Client { id: ClientId(id) }),
            other => Err(BodyError::Invalid { field: "role", value: u64::from(other) }),
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Server { id, role } => write!(f, "{role} {id}"),
            Identity::Client { id } => write!(f, "client {id}"),
        }
    }
}

/// A group-layer message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupMessage {
    /// Dialer's opening: who it is and its challenge.
    Hello {
        /// The cluster the dialer belongs to.
        cluster: String,
        /// The dialer.
        identity: Identity,
        /// Random per process start: tells a restarted peer from a crossing connection.
        incarnation: u64,
        /// The dialer's challenge.
        nonce: Nonce,
    },
    /// Acceptor's answer: who it is and its challenge.
    Challenge {
        /// The acceptor (always a server).
        identity: Identity,
        /// The acceptor's incarnation.
        incarnation: u64,
        /// The acceptor's challenge.
        nonce: Nonce,
    },
    /// Dialer's proof over both nonces.
    Proof {
        /// The proof.
        proof: Proof,
    },
    /// The acceptor accepted the dialer's proof and proves itself: once the dialer checks
    /// it, the connection is established.
    Welcome {
        /// The acceptor's proof over both nonces.
        proof: Proof,
    },
    /// The handshake was refused; the sender closes the connection after this.
    Refuse {
        /// Why, for the logs of the refused end.
        reason: String,
    },
    /// Liveness probe; answered by a Pong with the same sequence number.
    Ping {
        /// Sequence number.
        seq: u64,
    },
    /// Answer to a Ping.
    Pong {
        /// The Ping's sequence number.
        seq: u64,
    },
}

/// A frame the group layer could not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// A kind in the group range that no message has.
    #[error("unknown group message kind {0}")]
    UnknownKind(u16),
    /// The body did not parse.
    #[error("bad body of group message kind {kind}: {source}")]
    Body {
        /// The kind.
        kind: u16,
        /// What was wrong.
        source: BodyError,
    },
}

impl GroupMessage {
    /// The message's kind.
    pub fn kind(&self) -> u16 {
        match self {
            GroupMessage::Hello { .. } => KIND_HELLO,
            GroupMessage::Challenge { .. } => KIND_CHALLENGE,
            GroupMessage::Proof { .. } => KIND_PROOF,
            GroupMessage::Welcome { .. } => KIND_WELCOME,
            GroupMessage::Refuse { .. } => KIND_REFUSE,
            GroupMessage::Ping { .. } => KIND_PING,
            GroupMessage::Pong { .. } => KIND_PONG,
        }
    }

    /// The message's body.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = BodyWriter::new();
        match self {
            GroupMessage::Hello { cluster, identity, incarnation, nonce } => {
                w.str(cluster);
                identity.write(&mut w);
                w.u64(*incarnation).fixed(nonce);
            }
            GroupMessage::Challenge { identity, incarnation, nonce } => {
                identity.write(&mut w);
                w.u64(*incarnation).fixed(nonce);
            }
            GroupMessage::Proof { proof } | GroupMessage::Welcome { proof } => {
                w.fixed(proof);
            }
            GroupMessage::Refuse { reason } => {
                // Reasons are ours and short; cut at a char boundary to be safe.
                let mut end = reason.len().min(1024);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                w.str(&reason[..end]);
            }
            GroupMessage::Ping { seq } | GroupMessage::Pong { seq } => {
                w.u64(*seq);
            }
        }
        w.finish()
    }

    /// Reads a group message of `kind` (which must be below [`FIRST_APP_KIND`]).
    pub fn decode(kind: u16, body: &[u8]) -> Result<GroupMessage, MessageError> {
        let mut r = BodyReader::new(body);
        let message = (|| -> Result<Option<GroupMessage>, BodyError> {
            Ok(Some(match kind {
                KIND_HELLO => GroupMessage::Hello {
                    cluster: r.str("cluster")?.to_string(),
                    identity: Identity::read(&mut r)?,
                    incarnation: r.u64("incarnation")?,
                    nonce: r.fixed("nonce")?,
                },
                KIND_CHALLENGE => GroupMessage::Challenge {
                    identity: Identity::read(&mut r)?,
                    incarnation: r.u64("incarnation")?,
                    nonce: r.fixed("nonce")?,
                },
                KIND_PROOF => GroupMessage::Proof { proof: r.fixed("proof")? },
                KIND_WELCOME => GroupMessage::Welcome { proof: r.fixed("proof")? },
                KIND_REFUSE => GroupMessage::Refuse { reason: r.str("reason")?.to_string() },
                KIND_PING => GroupMessage::Ping { seq: r.u64("seq")? },
                KIND_PONG => GroupMessage::Pong { seq: r.u64("seq")? },
                _ => return Ok(None),
            }))
        })()
        .map_err(|source| MessageError::Body { kind, source })?
        .ok_or(MessageError::UnknownKind(kind))?;
        r.finish().map_err(|source| MessageError::Body { kind, source })?;
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<GroupMessage> {
        vec![
            GroupMessage::Hello {
                cluster: "meshfs-local".into(),
                identity: Identity::Server { id: NodeId(3), role: Role::MServer },
                incarnation: 0xdead_beef,
                nonce: [7; 32],
            },
            GroupMessage::Hello {
                cluster: "c".into(),
                identity: Identity::Client { id: ClientId(9) },
                incarnation: 1,
                nonce: [0; 32],
            },
            GroupMessage::Challenge {
                identity: Identity::Server { id: NodeId(4), role: Role::DServer },
                incarnation: 5,
                nonce: [1; 32],
            },
            GroupMessage::Proof { proof: [3; 32] },
            GroupMessage::Welcome { proof: [2; 32] },
            GroupMessage::Refuse { reason: "wrong cluster secret".into() },
            GroupMessage::Ping { seq: 1 },
            GroupMessage::Pong { seq: u64::MAX },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for message in samples() {
            let body = message.encode();
            assert_eq!(GroupMessage::decode(message.kind(), &body), Ok(message.clone()));
            assert!(message.kind() < FIRST_APP_KIND);
        }
    }

    #[test]
    fn golden_hello() {
        let hello = GroupMessage::Hello {
            cluster: "ab".into(),
            identity: Identity::Server { id: NodeId(0x0102_0304), role: Role::DServer },
            incarnation: 0x1112_1314_1516_1718,
            nonce: [0xee; 32],
        };
        let mut expected =
            vec![0, 2, b'a', b'b', 2, 1, 2, 3, 4, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18];
        expected.extend_from_slice(&[0xee; 32]);
        assert_eq!(hello.encode(), expected);
        assert_eq!(GroupMessage::Ping { seq: 258 }.encode(), [0, 0, 0, 0, 0, 0, 1, 2]);
        // The handshake of v2: the challenge carries no proof, the welcome carries it.
        let challenge = GroupMessage::Challenge {
            identity: Identity::Server { id: NodeId(7), role: Role::MServer },
            incarnation: 9,
            nonce: [0xaa; 32],
        };
        let mut expected = vec![1, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 9];
        expected.extend_from_slice(&[0xaa; 32]);
        assert_eq!(challenge.encode(), expected);
        assert_eq!(GroupMessage::Welcome { proof: [0x5a; 32] }.encode(), [0x5a; 32]);
    }

    #[test]
    fn every_cut_and_every_extra_byte_is_an_error() {
        for message in samples() {
            let body = message.encode();
            for cut in 0..body.len() {
                assert!(
                    GroupMessage::decode(message.kind(), &body[..cut]).is_err(),
                    "{message:?} cut at {cut}"
                );
            }
            let mut long = body.clone();
            long.push(0);
            assert!(GroupMessage::decode(message.kind(), &long).is_err());
        }
        assert_eq!(GroupMessage::decode(20, &[]), Err(MessageError::UnknownKind(20)));
    }

    #[test]
    fn a_bad_role_is_refused() {
        let mut body = GroupMessage::Challenge {
            identity: Identity::Client { id: ClientId(1) },
            incarnation: 0,
            nonce: [0; 32],
        }
        .encode();
        body[0] = 9;
        assert!(matches!(
            GroupMessage::decode(KIND_CHALLENGE, &body),
            Err(MessageError::Body { source: BodyError::Invalid { field: "role", value: 9 }, .. })
        ));
    }
}

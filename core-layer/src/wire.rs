//! The application protocol: every message kind from 32 up, and its body layout.
//!
//! A frame's kind says which message its body holds; a response carries its request's id.
//! Integers are big-endian; `str` is a u16 length and UTF-8; `list<T>` is a u32 count then
//! the items. Bodies are read with [`BodyReader`], which checks every length before use, so a
//! hostile body gets a [`WireError`], never a panic or a large allocation.
//!
//! | kind | message | direction | body |
//! |---|---|---|---|
//! | 32 | [`Message::StatusRequest`] | client -> server | empty |
//! | 33 | [`Message::StatusReply`] | server -> client | [`StatusReply`] |
//! | 34 | [`Message::Error`] | server -> client | `u8 code, str message` |
//! | 40 | [`Message::Raft`] | mserver -> mserver | an `eraftpb::Message` (protobuf) |
//!
//! A status reply ends with `bool has_raft` and, for meta-servers, [`RaftInfo`]:
//! `u8 role (1 follower, 2 candidate, 3 leader, 4 pre-candidate), u64 term, u64 commit,
//! u64 applied, u32 leader (0: unknown)`.
//!
//! Adding a message: a new kind constant, a variant, its layout in this table, a round-trip
//! sample in the tests, and a golden-bytes test once its layout is final.

use meshfs_group::{NodeId, Role};
use meshfs_net::Frame;
use meshfs_net::body::{BodyError, BodyReader, BodyWriter};

/// Kind of [`Message::StatusRequest`].
pub const KIND_STATUS_REQUEST: u16 = 32;
/// Kind of [`Message::StatusReply`].
pub const KIND_STATUS_REPLY: u16 = 33;
/// Kind of [`Message::Error`].
pub const KIND_ERROR: u16 = 34;
/// Kind of [`Message::Raft`].
pub const KIND_RAFT: u16 = 40;

const _: () = assert!(KIND_STATUS_REQUEST >= meshfs_group::FIRST_APP_KIND);

/// Most peers a status reply may list (the config allows at most this many servers).
pub const MAX_STATUS_PEERS: u32 = meshfs_group::config::MAX_SERVERS as u32;

/// Stable error codes carried in [`Message::Error`]. Numbers never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorCode {
    /// The request kind is not served by this server.
    Unsupported = 1,
    /// The request body did not parse.
    BadRequest = 2,
    /// Something failed on the server; the message says what.
    Internal = 3,
}

impl ErrorCode {
    fn from_u8(code: u8) -> Result<ErrorCode, BodyError> {
        match code {
            1 => Ok(ErrorCode::Unsupported),
            2 => Ok(ErrorCode::BadRequest),
            3 => Ok(ErrorCode::Internal),
            other => Err(BodyError::Invalid { field: "error code", value: u64::from(other) }),
        }
    }
}

/// One peer link in a status report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLink {
    /// The peer.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Whether the reporting server's link to it is up.
    pub up: bool,
    /// Milliseconds in the current state.
    pub since_ms: u64,
    /// Pongs received on the current link.
    pub rtt_samples: u64,
    /// Last RTT, microseconds.
    pub rtt_last_us: u64,
    /// Smoothed RTT, microseconds.
    pub rtt_smoothed_us: u64,
    /// Largest RTT on the current link, microseconds.
    pub rtt_max_us: u64,
}

/// A meta-server's Raft state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftInfo {
    /// 1 follower, 2 candidate, 3 leader, 4 pre-candidate.
    pub role: u8,
    /// Current term.
    pub term: u64,
    /// Highest index known committed.
    pub commit_index: u64,
    /// Highest index applied to the namespace.
    pub applied_index: u64,
    /// The leader's id, 0 if unknown.
    pub leader: u32,
}

impl RaftInfo {
    /// The role's name: "follower", "candidate", "leader" or "pre-candidate".
    pub fn role_name(&self) -> &'static str {
        match self.role {
            1 => "follower",
            2 => "candidate",
            3 => "leader",
            4 => "pre-candidate",
            _ => "unknown",
        }
    }
}

/// A server's report of itself and its links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReply {
    /// The reporting server.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its cluster name.
    pub cluster: String,
    /// Its listening address, as text.
    pub addr: String,
    /// Its incarnation (random per start).
    pub incarnation: u64,
    /// Milliseconds since it started.
    pub uptime_ms: u64,
    /// Its build's version.
    pub version: String,
    /// Its links to every other server of the config.
    pub peers: Vec<PeerLink>,
    /// Its Raft state (meta-servers only).
    pub raft: Option<RaftInfo>,
}

/// An application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Asks a server for its [`StatusReply`].
    StatusRequest,
    /// A server's status.
    StatusReply(StatusReply),
    /// A Raft message between meta-servers.
    Raft(Vec<u8>),
    /// A request failed.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// What happened, for people.
        message: String,
    },
}

/// A body that is not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// No message has this kind.
    #[error("unknown message kind {0}")]
    UnknownKind(u16),
    /// The body of a known kind did not parse.
    #[error("bad body for message kind {kind}: {source}")]
    Body {
        /// The kind.
        kind: u16,
        /// What was wrong.
        source: BodyError,
    },
}

fn role_code(role: Role) -> u8 {
    match role {
        Role::MServer => 1,
        Role::DServer => 2,
    }
}

fn role_from(code: u8) -> Result<Role, BodyError> {
    match code {
        1 => Ok(Role::MServer),
        2 => Ok(Role::DServer),
        other => Err(BodyError::Invalid { field: "role", value: u64::from(other) }),
    }
}

impl Message {
    /// The kind of this message.
    pub fn kind(&self) -> u16 {
        match self {
            Message::StatusRequest => KIND_STATUS_REQUEST,
            Message::StatusReply(_) => KIND_STATUS_REPLY,
            Message::Error { .. } => KIND_ERROR,
            Message::Raft(_) => KIND_RAFT,
        }
    }

    /// This message as a frame answering (or starting) `request_id`.
    pub fn to_frame(&self, request_id: u64) -> Frame {
        Frame::new(self.kind(), request_id, self.encode())
    }

    /// The body bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = BodyWriter::new();
        match self {
            Message::StatusRequest => {}
            Message::StatusReply(s) => {
                w.u32(s.id.0).u8(role_code(s.role)).str(&s.cluster).str(&s.addr);
                w.u64(s.incarnation).u64(s.uptime_ms).str(&s.version);
                w.u32(u32::try_from(s.peers.len()).expect("peer count fits u32"));
                for p in &s.peers {
                    w.u32(p.id.0).u8(role_code(p.role)).bool(p.up).u64(p.since_ms);
                    w.u64(p.rtt_samples)
                        .u64(p.rtt_last_us)
                        .u64(p.rtt_smoothed_us)
                        .u64(p.rtt_max_us);
                }
                w.bool(s.raft.is_some());
                if let Some(r) = &s.raft {
                    w.u8(r.role).u64(r.term).u64(r.commit_index).u64(r.applied_index).u32(r.leader);
                }
            }
            Message::Error { code, message } => {
                w.u8(*code as u8).str(message);
            }
            Message::Raft(bytes) => {
                w.fixed(bytes);
            }
        }
        w.finish()
    }

    /// Reads the message in `frame`.
    pub fn decode(frame: &Frame) -> Result<Message, WireError> {
        let kind = frame.kind;
        let mut r = BodyReader::new(&frame.body);
        let body = |source| WireError::Body { kind, source };
        let message = match kind {
            KIND_STATUS_REQUEST => Message::StatusRequest,
            KIND_STATUS_REPLY => Message::StatusReply(read_status(&mut r).map_err(body)?),
            KIND_ERROR => {
                let code = ErrorCode::from_u8(r.u8("error code").map_err(body)?).map_err(body)?;
                Message::Error { code, message: r.str("message").map_err(body)?.to_string() }
            }
            // Opaque here: raft-rs decodes (and checks) the protobuf.
            KIND_RAFT => return Ok(Message::Raft(frame.body.clone())),
            other => return Err(WireError::UnknownKind(other)),
        };
        r.finish().map_err(body)?;
        Ok(message)
    }
}

fn read_status(r: &mut BodyReader<'_>) -> Result<StatusReply, BodyError> {
    let id = NodeId(r.u32("id")?);
    let role = role_from(r.u8("role")?)?;
    let cluster = r.str("cluster")?.to_string();
    let addr = r.str("addr")?.to_string();
    let incarnation = r.u64("incarnation")?;
    let uptime_ms = r.u64("uptime_ms")?;
    let version = r.str("version")?.to_string();
    let count = r.u32("peer count")?;
    if count > MAX_STATUS_PEERS {
        return Err(BodyError::Invalid { field: "peer count", value: u64::from(count) });
    }
    let mut peers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        peers.push(PeerLink {
            id: NodeId(r.u32("peer id")?),
            role: role_from(r.u8("peer role")?)?,
            up: r.bool("peer up")?,
            since_ms: r.u64("since_ms")?,
            rtt_samples: r.u64("rtt_samples")?,
            rtt_last_us: r.u64("rtt_last_us")?,
            rtt_smoothed_us: r.u64("rtt_smoothed_us")?,
            rtt_max_us: r.u64("rtt_max_us")?,
        });
    }
    let raft = if r.bool("has raft")? {
        Some(RaftInfo {
            role: r.u8("raft role")?,
            term: r.u64("term")?,
            commit_index: r.u64("commit index")?,
            applied_index: r.u64("applied index")?,
            leader: r.u32("leader")?,
        })
    } else {
        None
    };
    Ok(StatusReply { id, role, cluster, addr, incarnation, uptime_ms, version, peers, raft })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Message> {
        vec![
            Message::StatusRequest,
            Message::StatusReply(StatusReply {
                id: NodeId(1),
                role: Role::MServer,
                cluster: "meshfs-local".into(),
                addr: "127.0.0.1:7101".into(),
                incarnation: 42,
                uptime_ms: 1234,
                version: "0.1.0".into(),
                peers: vec![
                    PeerLink {
                        id: NodeId(2),
                        role: Role::DServer,
                        up: true,
                        since_ms: 10,
                        rtt_samples: 3,
                        rtt_last_us: 80,
                        rtt_smoothed_us: 85,
                        rtt_max_us: 120,
                    },
                    PeerLink {
                        id: NodeId(3),
                        role: Role::MServer,
                        up: false,
                        since_ms: 0,
                        rtt_samples: 0,
                        rtt_last_us: 0,
                        rtt_smoothed_us: 0,
                        rtt_max_us: 0,
                    },
                ],
                raft: Some(RaftInfo {
                    role: 3,
                    term: 7,
                    commit_index: 99,
                    applied_index: 98,
                    leader: 1,
                }),
            }),
            Message::Raft(vec![8, 1, 16, 2]),
            Message::Error { code: ErrorCode::Unsupported, message: "no such request".into() },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for message in samples() {
            let frame = message.to_frame(7);
            assert_eq!(frame.request_id, 7);
            assert_eq!(Message::decode(&frame), Ok(message));
        }
    }

    #[test]
    fn golden_error_and_request() {
        let error = Message::Error { code: ErrorCode::BadRequest, message: "no".into() };
        assert_eq!(error.encode(), [2, 0, 2, b'n', b'o']);
        assert!(Message::StatusRequest.encode().is_empty());
    }

    #[test]
    fn cuts_extra_bytes_and_unknown_kinds_are_errors() {
        for message in samples() {
            if matches!(message, Message::Raft(_)) {
                continue; // opaque bytes: any length is a body; raft-rs checks them
            }
            let frame = message.to_frame(1);
            for cut in 0..frame.body.len() {
                let cut_frame = Frame::new(frame.kind, 1, frame.body[..cut].to_vec());
                assert!(Message::decode(&cut_frame).is_err());
            }
            let mut long = frame.clone();
            long.body.push(0);
            assert!(Message::decode(&long).is_err());
        }
        assert_eq!(Message::decode(&Frame::new(999, 0, vec![])), Err(WireError::UnknownKind(999)));
    }

    #[test]
    fn a_lying_peer_count_is_refused_before_allocating() {
        let mut frame = samples()[1].to_frame(0);
        // The peer count sits after the fixed fields and three strings; find it by re-encoding
        // with zero peers and patching the count.
        let Message::StatusReply(mut s) = samples()[1].clone() else { unreachable!() };
        s.peers.clear();
        s.raft = None;
        let short = Message::StatusReply(s).encode();
        let count_at = short.len() - 5; // the count, then the has_raft byte
        frame.body = short;
        frame.body[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Message::decode(&frame),
            Err(WireError::Body { source: BodyError::Invalid { field: "peer count", .. }, .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(kind in 32u16..40, body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Message::decode(&Frame::new(kind, 0, body));
        }
    }
}

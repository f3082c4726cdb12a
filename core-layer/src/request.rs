//! What every server does alike with what arrives: client requests answered whatever the
//! role, and messages from peers checked against the role that may send them.
//!
//! A server's service hands each client frame to [`common_reply`] first: status requests
//! and undecodable bodies are answered here ([`Handled::Answered`]); anything else comes back
//! decoded ([`Handled::ForRole`]), for the role's own code (or [`unsupported`]). Each peer
//! frame goes through [`peer_message`]: a kind this server serves, from a server of the role
//! that sends it, decoded; anything else is logged once here and dropped.
//!
//! It must not know what a role does with its own requests.

use meshfs_group::{Config, NodeId, Role};
use meshfs_net::Frame;

use crate::wire::{ErrorCode, Kind, Message, StatusReply, WireError};

/// Why a peer's frame was not taken; the server logs it and goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerRefusal {
    /// This server does not take that kind from any peer.
    #[error("ignoring message kind {kind} from peer {from}: not served")]
    NotServed {
        /// The peer.
        from: NodeId,
        /// The frame's kind.
        kind: u16,
    },
    /// The kind comes from servers of another role.
    #[error("ignoring message kind {kind} from {from}, which is not a {role}")]
    WrongRole {
        /// The peer.
        from: NodeId,
        /// The kind.
        kind: Kind,
        /// The role that sends it.
        role: Role,
    },
    /// The body did not parse.
    #[error("bad message from {from}: {error}")]
    Bad {
        /// The peer.
        from: NodeId,
        /// What was wrong.
        error: WireError,
    },
}

/// The message in `frame` from peer `from`, if `sender_role` names the role that sends its
/// kind to this server and `from` has that role in `config`.
pub fn peer_message(
    config: &Config,
    from: NodeId,
    frame: Frame,
    sender_role: impl FnOnce(Kind) -> Option<Role>,
) -> Result<Message, PeerRefusal> {
    let Some((kind, role)) = Kind::from_repr(frame.kind).and_then(|k| Some((k, sender_role(k)?)))
    else {
        return Err(PeerRefusal::NotServed { from, kind: frame.kind });
    };
    if config.server(from).is_none_or(|s| s.role != role) {
        return Err(PeerRefusal::WrongRole { from, kind, role });
    }
    Message::from_frame(frame).map_err(|error| PeerRefusal::Bad { from, error })
}

/// What [`common_reply`] made of a client frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// The reply to send: every server answers this request alike.
    Answered(Message),
    /// The decoded request, for the role's own code to answer.
    ForRole(Message),
}

/// Answers `frame` if every server answers it alike; otherwise hands back the decoded
/// request. `status` builds this server's status when asked.
pub fn common_reply(frame: &Frame, status: impl FnOnce() -> StatusReply) -> Handled {
    match Message::decode(frame) {
        Ok(Message::StatusRequest) => Handled::Answered(Message::StatusReply(status())),
        Ok(request) => Handled::ForRole(request),
        Err(err) => Handled::Answered(Message::Error {
            code: ErrorCode::BadRequest,
            message: err.to_string(),
        }),
    }
}

/// The reply to a request this role does not serve.
pub fn unsupported(role: Role, request: &Message) -> Message {
    Message::Error {
        code: ErrorCode::Unsupported,
        message: format!("a {role} does not serve message kind {}", request.kind().code()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshfs_group::NodeId;

    fn status() -> StatusReply {
        StatusReply {
            id: NodeId(1),
            role: Role::MServer,
            cluster: "c".into(),
            addr: "127.0.0.1:1".into(),
            incarnation: 1,
            uptime_ms: 0,
            version: "0".into(),
            peers: vec![],
            raft: None,
            data_servers: vec![],
            health: None,
        }
    }

    #[test]
    fn status_is_answered_here_and_bad_bodies_get_bad_request() {
        assert_eq!(
            common_reply(&Message::StatusRequest.to_frame(1), status),
            Handled::Answered(Message::StatusReply(status()))
        );
        let bad = Frame::new(crate::wire::Kind::StatusReply.code(), 1, vec![1, 2]);
        assert!(matches!(
            common_reply(&bad, status),
            Handled::Answered(Message::Error { code: ErrorCode::BadRequest, .. })
        ));
        let unknown = Frame::new(999, 1, vec![]);
        assert!(matches!(
            common_reply(&unknown, status),
            Handled::Answered(Message::Error { code: ErrorCode::BadRequest, .. })
        ));
    }

    #[test]
    fn other_requests_go_back_to_the_role() {
        let reply = Message::StatusReply(status());
        assert_eq!(common_reply(&reply.to_frame(3), status), Handled::ForRole(reply.clone()));
        let answer = unsupported(Role::DServer, &reply);
        assert!(
            matches!(answer, Message::Error { code: ErrorCode::Unsupported, ref message } if message.contains("dserver"))
        );
    }
}

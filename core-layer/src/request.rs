//! Client requests every server answers alike, whatever its role.
//!
//! A server's service hands each client frame to [`common_reply`] first: status requests
//! and undecodable bodies are answered here ([`Handled::Answered`]); anything else comes back
//! decoded ([`Handled::ForRole`]), for the role's own code (or [`unsupported`]).

use meshfs_group::Role;
use meshfs_net::Frame;

use crate::wire::{ErrorCode, Message, StatusReply};

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

//! Client sessions: who made a request. A session is a client id and a random number the
//! client process picked when it started; log entries, write leases and lock sessions are
//! keyed by it. It must not know what a session does (that is the namespace's and the lock
//! table's).

use meshfs_group::ClientId;
use meshfs_net::body::{BodyError, BodyReader, BodyWriter};

/// A client session: the client id and a random number the client picked when it started,
/// so that two processes using one client id never share request numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId {
    /// The client.
    pub client: ClientId,
    /// The client process's random session number.
    pub nonce: u64,
}

impl SessionId {
    /// Writes it: u32 client, u64 nonce.
    pub fn write(&self, w: &mut BodyWriter) {
        w.u32(self.client.0).u64(self.nonce);
    }

    /// Reads what [`SessionId::write`] wrote.
    pub fn read(r: &mut BodyReader<'_>) -> Result<SessionId, BodyError> {
        Ok(SessionId { client: ClientId(r.u32("client")?), nonce: r.u64("nonce")? })
    }
}

//! The namespace's error: what went wrong applying or answering a request, and its wire
//! codec (a stable u8 code, then fields). Log entries' outcomes, snapshots and meta replies
//! carry it; the client shows it. It must not know the namespace's state.

use meshfs_net::body::{BodyError, BodyReader, BodyWriter};

use crate::descriptor::MAX_BLOCKS_PER_FILE;
use crate::path::PathError;

/// What a caught panic said (its message, if it carried text), for the error that takes
/// its place.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// What went wrong applying or answering a request. Stable: carried on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NsError {
    /// A path broke a rule.
    #[error(transparent)]
    Path(#[from] PathError),
    /// Nothing at that path.
    #[error("{0}: no such file or directory")]
    NotFound(String),
    /// Something already at that path.
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// A component that must be a directory is a file.
    #[error("{0}: not a directory")]
    NotADirectory(String),
    /// A file was expected.
    #[error("{0}: is a directory")]
    IsADirectory(String),
    /// A directory to remove is not empty.
    #[error("{0}: directory not empty (use recursive remove)")]
    NotEmpty(String),
    /// A directory cannot move below itself.
    #[error("cannot move {from} into itself ({to})")]
    MoveIntoItself {
        /// The directory.
        from: String,
        /// The target inside it.
        to: String,
    },
    /// The root cannot be removed or renamed.
    #[error("the root directory cannot be removed or renamed")]
    Root,
    /// A file may have at most 65,536 blocks.
    #[error(
        "{path}: {size} bytes would need {blocks} blocks of {block_size}; a file has at most {MAX_BLOCKS_PER_FILE}"
    )]
    FileTooLarge {
        /// The file.
        path: String,
        /// The size asked for.
        size: u64,
        /// The file's block size.
        block_size: u32,
        /// Blocks that size needs.
        blocks: u64,
    },
    /// Files only grow through `expand_file_size`.
    #[error("{path}: cannot shrink from {size} to {requested} bytes")]
    Shrink {
        /// The file.
        path: String,
        /// Its size.
        size: u64,
        /// The size asked for.
        requested: u64,
    },
    /// A truncate may only shrink a file (growth places blocks: an expand).
    #[error("{path}: truncating to {requested} bytes would grow it from {size}; expand it instead")]
    TruncateGrows {
        /// The file.
        path: String,
        /// Its size.
        size: u64,
        /// The size asked for.
        requested: u64,
    },
    /// A one-block create-and-write must be 1 byte to one block long.
    #[error("{path}: a {size}-byte create-and-write does not fit one block of {block_size} bytes")]
    BadSize {
        /// The file.
        path: String,
        /// The size asked for.
        size: u64,
        /// The file's block size.
        block_size: u32,
    },
    /// The entry's placement does not fit the file (the leader's view was stale).
    #[error(
        "{path}: placement for {given} new blocks of {replication} copies, {needed} blocks needed"
    )]
    BadPlacement {
        /// The file.
        path: String,
        /// Replica sets in the entry.
        given: usize,
        /// New blocks needed.
        needed: u64,
        /// Copies per block.
        replication: u8,
    },
    /// The leader could not place new blocks (too few live data-servers, or no room).
    #[error("cannot place blocks: {0}")]
    Placement(String),
    /// Replication must be 1 to 16.
    #[error("replication {0} is out of range (1 to 16)")]
    BadReplication(u8),
    /// The namespace ran out of ids: every one of the 2^32 - 2 is live or in a spent page.
    #[error("out of file ids")]
    OutOfIds,
    /// An older request of a session arrived after a newer one: the client has moved on.
    #[error("request {request_id} of this session was superseded by request {last}")]
    Superseded {
        /// The late request.
        request_id: u64,
        /// The session's latest request.
        last: u64,
    },
    /// Another client is writing the block.
    #[error(
        "{path} block {index} is being written by client {client}; its lease ends in {ms_left} ms"
    )]
    LeaseHeld {
        /// The file.
        path: String,
        /// The block.
        index: u16,
        /// The client holding the lease.
        client: u32,
        /// Milliseconds until the lease runs out.
        ms_left: u64,
    },
    /// The lock session is not open: its lease ran out, or it closed.
    #[error(
        "the lock session of client {client} has ended (its lease ran out, or it was closed); \
         open a new session"
    )]
    SessionExpired {
        /// The client.
        client: u32,
    },
    /// A try-lock found the lock taken.
    #[error("{path} is locked: {why}")]
    LockBusy {
        /// The lock.
        path: String,
        /// Who holds or waits for it.
        why: String,
    },
    /// The session already holds the lock (only shared locks are taken again).
    #[error("{path}: this session already holds the lock {mode}; unlock it first")]
    AlreadyLocked {
        /// The lock.
        path: String,
        /// How it holds it.
        mode: String,
    },
    /// The session already waits for the lock.
    #[error("{0}: this session already waits for the lock")]
    AlreadyWaiting(String),
    /// Unlock of a lock the session neither holds nor waits for.
    #[error("{0}: this session does not hold the lock")]
    NotLocked(String),
    /// A lock was not granted before its wait ran out.
    #[error("{0}: the lock was not granted within the timeout")]
    LockTimeout(String),
    /// The session gave up its wait (an unlock of the lock it waited for).
    #[error("{0}: the wait for the lock was cancelled")]
    LockCancelled(String),
    /// The caller may not do this.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A write's replicas did not all prove the bytes the client sent: not committed.
    #[error("{0}; the write is not committed")]
    Unproven(String),
    /// A file has used every version its 32-bit version number can count.
    #[error("{0}: the file has used all 2^32 of its versions; copy it to a new file")]
    VersionsExhausted(String),
    /// Applying the entry hit a bug; every replica answers it alike, and goes on.
    #[error("internal error applying the change: {0} (a bug: please report it)")]
    Internal(String),
    /// A limit one client may not pass (what, and the limit, in the text).
    #[error("{0}")]
    TooMany(String),
    /// A hard link to a directory was asked for (directories have one name).
    #[error("{0}: is a directory, and a directory cannot have a second name (hard link)")]
    LinkDir(String),
    /// A file has as many names as it may have.
    #[error("{path}: already has {max} names (hard links), the most a file may have")]
    TooManyLinks {
        /// The file.
        path: String,
        /// The limit.
        max: u32,
    },
    /// The inode has no attribute of that name.
    #[error("{0}: no such attribute")]
    NoAttr(String),
    /// An attribute outside the `user.` namespace, or a name too long or empty.
    #[error("{0}: only user.* attributes of 1 to 255 bytes are kept")]
    AttrNotSupported(String),
    /// An attribute value, or an inode's attributes together, past their limit.
    #[error("{path}: attributes of {bytes} bytes; at most {max}")]
    AttrTooLarge {
        /// The inode.
        path: String,
        /// What it would take.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// The answer would not fit in a frame (a bug: listings are paged by bytes).
    #[error("the answer ({0} bytes) is larger than a frame can carry; ask about less at once")]
    ReplyTooLarge(u64),
    /// A write finished after its lease was replaced: it does not take effect.
    #[error(
        "{path} block {index}: the lease for version {version} was lost (it ran out and another \
         writer took the block); the write did not take effect"
    )]
    LeaseLost {
        /// The file.
        path: String,
        /// The block.
        index: u16,
        /// The version the write was for.
        version: u16,
    },
}

impl NsError {
    /// Writes the error: a u8 code, then its fields. Codes never change meaning.
    pub fn write(&self, w: &mut BodyWriter) {
        match self {
            NsError::Path(p) => {
                w.u8(1);
                match p {
                    PathError::NotAbsolute(t) => w.u8(1).str(t),
                    PathError::Nul => w.u8(2),
                    PathError::DotComponent(t) => w.u8(3).str(t),
                    PathError::ComponentTooLong { len } => w.u8(4).u64(*len as u64),
                    PathError::TooLong { len } => w.u8(5).u64(*len as u64),
                };
            }
            NsError::NotFound(t) => {
                w.u8(2).str(t);
            }
            NsError::AlreadyExists(t) => {
                w.u8(3).str(t);
            }
            NsError::NotADirectory(t) => {
                w.u8(4).str(t);
            }
            NsError::IsADirectory(t) => {
                w.u8(5).str(t);
            }
            NsError::NotEmpty(t) => {
                w.u8(6).str(t);
            }
            NsError::MoveIntoItself { from, to } => {
                w.u8(7).str(from).str(to);
            }
            NsError::Root => {
                w.u8(8);
            }
            NsError::FileTooLarge { path, size, block_size, blocks } => {
                w.u8(9).str(path).u64(*size).u32(*block_size).u64(*blocks);
            }
            NsError::Shrink { path, size, requested } => {
                w.u8(10).str(path).u64(*size).u64(*requested);
            }
            NsError::BadPlacement { path, given, needed, replication } => {
                w.u8(11).str(path).u64(*given as u64).u64(*needed).u8(*replication);
            }
            NsError::BadReplication(r) => {
                w.u8(12).u8(*r);
            }
            NsError::OutOfIds => {
                w.u8(13);
            }
            NsError::Superseded { request_id, last } => {
                w.u8(14).u64(*request_id).u64(*last);
            }
            NsError::Placement(why) => {
                w.u8(15).str(why);
            }
            NsError::LeaseHeld { path, index, client, ms_left } => {
                w.u8(16).str(path).u16(*index).u32(*client).u64(*ms_left);
            }
            NsError::LeaseLost { path, index, version } => {
                w.u8(17).str(path).u16(*index).u16(*version);
            }
            NsError::TruncateGrows { path, size, requested } => {
                w.u8(32).str(path).u64(*size).u64(*requested);
            }
            NsError::BadSize { path, size, block_size } => {
                w.u8(18).str(path).u64(*size).u32(*block_size);
            }
            NsError::SessionExpired { client } => {
                w.u8(19).u32(*client);
            }
            NsError::LockBusy { path, why } => {
                w.u8(20).str(path).str(why);
            }
            NsError::AlreadyLocked { path, mode } => {
                w.u8(21).str(path).str(mode);
            }
            NsError::AlreadyWaiting(path) => {
                w.u8(22).str(path);
            }
            NsError::NotLocked(path) => {
                w.u8(23).str(path);
            }
            NsError::LockTimeout(path) => {
                w.u8(24).str(path);
            }
            NsError::LockCancelled(path) => {
                w.u8(25).str(path);
            }
            NsError::PermissionDenied(why) => {
                w.u8(26).str(why);
            }
            NsError::Unproven(why) => {
                w.u8(27).str(why);
            }
            NsError::ReplyTooLarge(len) => {
                w.u8(28).u64(*len);
            }
            NsError::VersionsExhausted(path) => {
                w.u8(29).str(path);
            }
            NsError::Internal(what) => {
                w.u8(30).str(what);
            }
            NsError::TooMany(what) => {
                w.u8(31).str(what);
            }
            NsError::LinkDir(path) => {
                w.u8(33).str(path);
            }
            NsError::TooManyLinks { path, max } => {
                w.u8(34).str(path).u32(*max);
            }
            NsError::NoAttr(what) => {
                w.u8(35).str(what);
            }
            NsError::AttrNotSupported(what) => {
                w.u8(36).str(what);
            }
            NsError::AttrTooLarge { path, bytes, max } => {
                w.u8(37).str(path).u64(*bytes).u64(*max);
            }
        }
    }

    /// Reads what [`NsError::write`] wrote.
    pub fn read(r: &mut BodyReader<'_>) -> Result<NsError, BodyError> {
        let text = |r: &mut BodyReader<'_>| r.str("error text").map(str::to_string);
        let len = |r: &mut BodyReader<'_>| {
            r.u64("length").map(|n| usize::try_from(n).unwrap_or(usize::MAX))
        };
        Ok(match r.u8("error code")? {
            1 => NsError::Path(match r.u8("path error")? {
                1 => PathError::NotAbsolute(text(r)?),
                2 => PathError::Nul,
                3 => PathError::DotComponent(text(r)?),
                4 => PathError::ComponentTooLong { len: len(r)? },
                5 => PathError::TooLong { len: len(r)? },
                other => {
                    return Err(BodyError::Invalid {
                        field: "path error",
                        value: u64::from(other),
                    });
                }
            }),
            2 => NsError::NotFound(text(r)?),
            3 => NsError::AlreadyExists(text(r)?),
            4 => NsError::NotADirectory(text(r)?),
            5 => NsError::IsADirectory(text(r)?),
            6 => NsError::NotEmpty(text(r)?),
            7 => NsError::MoveIntoItself { from: text(r)?, to: text(r)? },
            8 => NsError::Root,
            9 => NsError::FileTooLarge {
                path: text(r)?,
                size: r.u64("size")?,
                block_size: r.u32("block size")?,
                blocks: r.u64("blocks")?,
            },
            10 => NsError::Shrink {
                path: text(r)?,
                size: r.u64("size")?,
                requested: r.u64("requested")?,
            },
            11 => NsError::BadPlacement {
                path: text(r)?,
                given: len(r)?,
                needed: r.u64("needed")?,
                replication: r.u8("replication")?,
            },
            12 => NsError::BadReplication(r.u8("replication")?),
            13 => NsError::OutOfIds,
            14 => NsError::Superseded { request_id: r.u64("request id")?, last: r.u64("last")? },
            15 => NsError::Placement(text(r)?),
            16 => NsError::LeaseHeld {
                path: text(r)?,
                index: r.u16("block index")?,
                client: r.u32("client")?,
                ms_left: r.u64("ms left")?,
            },
            17 => NsError::LeaseLost {
                path: text(r)?,
                index: r.u16("block index")?,
                version: r.u16("version")?,
            },
            18 => NsError::BadSize {
                path: text(r)?,
                size: r.u64("size")?,
                block_size: r.u32("block size")?,
            },
            19 => NsError::SessionExpired { client: r.u32("client")? },
            20 => NsError::LockBusy { path: text(r)?, why: text(r)? },
            21 => NsError::AlreadyLocked { path: text(r)?, mode: text(r)? },
            22 => NsError::AlreadyWaiting(text(r)?),
            23 => NsError::NotLocked(text(r)?),
            24 => NsError::LockTimeout(text(r)?),
            25 => NsError::LockCancelled(text(r)?),
            26 => NsError::PermissionDenied(text(r)?),
            27 => NsError::Unproven(text(r)?),
            28 => NsError::ReplyTooLarge(r.u64("reply length")?),
            29 => NsError::VersionsExhausted(text(r)?),
            30 => NsError::Internal(text(r)?),
            31 => NsError::TooMany(text(r)?),
            32 => NsError::TruncateGrows {
                path: text(r)?,
                size: r.u64("size")?,
                requested: r.u64("requested")?,
            },
            33 => NsError::LinkDir(text(r)?),
            34 => NsError::TooManyLinks { path: text(r)?, max: r.u32("link limit")? },
            35 => NsError::NoAttr(text(r)?),
            36 => NsError::AttrNotSupported(text(r)?),
            37 => NsError::AttrTooLarge {
                path: text(r)?,
                bytes: r.u64("attribute bytes")?,
                max: r.u64("attribute limit")?,
            },
            other => {
                return Err(BodyError::Invalid { field: "error code", value: u64::from(other) });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_round_trip_with_their_codes() {
        for error in [
            NsError::PermissionDenied("draining data-servers needs an admin client".into()),
            NsError::Unproven("data-server 5 proves another digest".into()),
            NsError::ReplyTooLarge(2_000_000),
            NsError::VersionsExhausted("/f".into()),
            NsError::Internal("attempt to add with overflow".into()),
            NsError::TooMany("client 7 has 256 lock sessions open".into()),
            NsError::LockCancelled("/l".into()),
            NsError::NotFound("/x".into()),
            NsError::TruncateGrows { path: "/f".into(), size: 5, requested: 9 },
            NsError::LinkDir("/d".into()),
            NsError::TooManyLinks { path: "/f".into(), max: 65_000 },
            NsError::NoAttr("/f attribute user.x".into()),
            NsError::AttrNotSupported("/f: \"trusted.x\"".into()),
            NsError::AttrTooLarge { path: "/f".into(), bytes: 70_000, max: 65_536 },
        ] {
            let mut w = BodyWriter::new();
            error.write(&mut w);
            let bytes = w.finish();
            assert_eq!(NsError::read(&mut BodyReader::new(&bytes)), Ok(error.clone()));
        }
        let mut w = BodyWriter::new();
        NsError::PermissionDenied("x".into()).write(&mut w);
        assert_eq!(w.finish(), [26, 0, 1, b'x'], "code 26, then the reason");
    }
}

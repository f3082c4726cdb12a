//! The write chain: chunks come from a client or the previous data-server, go on to the
//! next one first, are written here on a disk worker, and are acknowledged upstream once
//! written here and acknowledged downstream; the last chunk commits. A failure anywhere is
//! reported upstream, and nothing of that write is committed there.
//!
//! It must not know the namespace: the token says what may be written where.

use log::warn;
use meshfs_core::token::{ReplicaProof, TokenOp, WriteDigest};
use meshfs_core::wire::{MAX_CHUNK_BYTES, Message, WriteAck, WriteChunk};
use meshfs_group::driver::Node;
use meshfs_group::{ClientId, NodeId, Now};
use meshfs_net::{ConnId, Priority};
use std::time::Instant;

use crate::DataServer;
use crate::disk::DiskJob;

/// Who sent a write: a client connection or the previous data-server of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Upstream {
    Client(ConnId),
    Peer(NodeId),
}

/// A write coming through this data-server.
#[derive(Debug)]
pub(crate) struct Inbound {
    pub(crate) upstream: Upstream,
    /// The request id the upstream uses for this write.
    pub(crate) upstream_id: u64,
    /// The token of the write's first chunk; later chunks must carry the same.
    pub(crate) token: meshfs_core::token::Token,
    /// The next data-server and the request id we use with it.
    pub(crate) downstream: Option<(NodeId, u64)>,
    /// Written here, up to this offset.
    pub(crate) local_through: u64,
    /// Acknowledged downstream, up to this offset.
    pub(crate) down_through: u64,
    pub(crate) local_committed: bool,
    pub(crate) down_committed: bool,
    /// The last chunk has been received (so a commit is coming).
    pub(crate) last_seen: bool,
    /// Last acknowledgement sent upstream: (through, committed).
    pub(crate) acked: (u64, bool),
    pub(crate) last_activity: Instant,
    /// The digest of the chunks received, for this replica's proof.
    pub(crate) digest: WriteDigest,
    /// The proofs of the replicas after this one, from downstream's last acknowledgement.
    pub(crate) down_proofs: Vec<ReplicaProof>,
    /// Bytes of its chunks taken but not yet written here (on the disk worker's queue).
    pub(crate) pending: u64,
}

/// Most bytes of one write taken and not yet written here: a client keeps
/// `WRITE_WINDOW` (4) chunks unacknowledged; one that sends past this ignores its window.
pub(crate) const MAX_PENDING_PER_WRITE: u64 = 16 * MAX_CHUNK_BYTES as u64;
/// Most bytes of all writes taken and not yet written here.
pub(crate) const MAX_PENDING_BYTES: u64 = 512 * 1024 * 1024;
/// Most writes open here at once, and most of them sent by one client.
pub(crate) const MAX_OPEN_WRITES: usize = 1024;
/// See [`MAX_OPEN_WRITES`].
pub(crate) const MAX_OPEN_WRITES_PER_CLIENT: usize = 64;

impl DataServer {
    pub(crate) fn send_up(node: &mut Node, upstream: Upstream, upstream_id: u64, ack: WriteAck) {
        let frame = Message::WriteAck(ack).to_frame(upstream_id);
        match upstream {
            Upstream::Client(conn) => node.reply(conn, frame),
            Upstream::Peer(peer) => {
                let _ = node.send(peer, Priority::Control, frame);
            }
        }
    }

    /// Refuses a chunk that opened nothing here.
    pub(crate) fn refuse(
        &self,
        node: &mut Node,
        upstream: Upstream,
        upstream_id: u64,
        message: String,
    ) {
        warn!("refusing a write: {message}");
        Self::send_up(node, upstream, upstream_id, WriteAck::Failed { at: self.me, message });
    }

    pub(crate) fn handle_chunk(
        &mut self,
        node: &mut Node,
        now: Now,
        upstream: Upstream,
        presenter: Option<ClientId>,
        upstream_id: u64,
        chunk: WriteChunk,
    ) {
        let token = &chunk.token;
        // A client presents its own token; a data-server forwards the client's.
        let client = presenter.unwrap_or(token.client);
        if let Err(err) =
            token.verify_for(&self.secret, TokenOp::Write, client, now.wall_ms, self.me)
        {
            return self.refuse(node, upstream, upstream_id, err.to_string());
        }
        // Chunks come down the chain: the first replica's from the lease holder, every
        // other's from the replica before it. No one else may start or feed a write here.
        let at = token.replicas.iter().position(|&r| r == self.me);
        let predecessor = at.and_then(|at| at.checked_sub(1)).map(|at| token.replicas[at]);
        let from_predecessor = match (upstream, predecessor) {
            (Upstream::Client(_), None) => true,
            (Upstream::Peer(from), Some(expected)) => from == expected,
            _ => false,
        };
        if !from_predecessor {
            let expected = predecessor.map_or_else(
                || format!("the lease holder, client {}", token.client),
                |p| format!("data-server {p}"),
            );
            let message = format!(
                "chunks of {} come to this replica from {expected} only, down the chain",
                token.block
            );
            return self.refuse(node, upstream, upstream_id, message);
        }
        let end = chunk.offset.saturating_add(chunk.data.len() as u64);
        if end > u64::from(chunk.block_size) || chunk.data.len() > MAX_CHUNK_BYTES as usize {
            return self.refuse(
                node,
                upstream,
                upstream_id,
                format!("chunk {}+{} outside the block", chunk.offset, chunk.data.len()),
            );
        }
        let write = match self.by_upstream.get(&(upstream, upstream_id)) {
            Some(&write) => {
                let inbound = self.writes.get(&write).expect("indexed writes exist");
                if inbound.token != chunk.token {
                    return self.refuse(
                        node,
                        upstream,
                        upstream_id,
                        "a chunk changed its token mid-write".into(),
                    );
                }
                write
            }
            None => {
                // A client's own writes (those it sends, not those passing down a chain).
                let from_client = matches!(upstream, Upstream::Client(_));
                let mine = |w: &&Inbound| {
                    matches!(w.upstream, Upstream::Client(_)) && w.token.client == client
                };
                if self.writes.len() >= MAX_OPEN_WRITES
                    || (from_client
                        && self.writes.values().filter(mine).count() >= MAX_OPEN_WRITES_PER_CLIENT)
                {
                    let message = format!(
                        "too many writes open here (at most {MAX_OPEN_WRITES}, and \
                         {MAX_OPEN_WRITES_PER_CLIENT} of one client's); try again"
                    );
                    return self.refuse(node, upstream, upstream_id, message);
                }
                if let Some(held) = self.store.get(token.block.file.id, token.block.index) {
                    let held = held.descriptor.version;
                    if held.is_newer_than(token.block.version) {
                        let message = format!(
                            "stale lease: this replica of {} is already at version {}",
                            token.block, held.0
                        );
                        return self.refuse(node, upstream, upstream_id, message);
                    }
                    if held == token.block.version {
                        // A lease's version is written once: its token is spent, and a
                        // replica written at a version (committed or not) never changes.
                        let message = format!(
                            "this replica of {} was already written at version {}: a write token serves one write",
                            token.block, held.0
                        );
                        return self.refuse(node, upstream, upstream_id, message);
                    }
                }
                let write = self.next_write;
                self.next_write += 1;
                let downstream = token.next_after(self.me).map(|next| (next, write));
                self.writes.insert(
                    write,
                    Inbound {
                        upstream,
                        upstream_id,
                        token: chunk.token.clone(),
                        downstream,
                        local_through: chunk.offset,
                        down_through: chunk.offset,
                        local_committed: false,
                        down_committed: downstream.is_none(),
                        last_seen: false,
                        acked: (chunk.offset, false),
                        last_activity: now.mono,
                        digest: WriteDigest::new(&chunk.token.block),
                        down_proofs: Vec::new(),
                        pending: 0,
                    },
                );
                self.by_upstream.insert((upstream, upstream_id), write);
                if downstream.is_some() {
                    self.by_downstream.insert(write, write);
                }
                self.disk.submit(DiskJob::Begin {
                    write,
                    block: chunk.token.block,
                    base: chunk.token.base,
                    block_size: chunk.block_size,
                    keep_existing: chunk.keep_existing,
                });
                write
            }
        };
        let len = chunk.data.len() as u64;
        let inbound = self.writes.get(&write).expect("just found or made");
        if inbound.pending + len > MAX_PENDING_PER_WRITE {
            let message = format!(
                "more than {MAX_PENDING_PER_WRITE} bytes of this write are waiting to be written: \
                 the sender does not wait for acknowledgements"
            );
            return self.fail(node, write, self.me, message);
        }
        if self.pending_bytes + len > MAX_PENDING_BYTES {
            let message = format!(
                "this data-server has {} bytes waiting for its disk; try again",
                self.pending_bytes
            );
            return self.fail(node, write, self.me, message);
        }
        self.pending_bytes += len;
        let inbound = self.writes.get_mut(&write).expect("just found or made");
        inbound.pending += len;
        inbound.last_activity = now.mono;
        inbound.last_seen |= chunk.last;
        inbound.digest.add(chunk.offset, &chunk.data);
        if inbound.down_committed && inbound.downstream.is_none() {
            inbound.down_through = inbound.down_through.max(end);
        }
        // Downstream first, so the next replica works while this one writes.
        if let Some((next, id)) = inbound.downstream {
            let frame = Message::WriteChunk(chunk.clone()).to_frame(id);
            if let Err(refused) = self.forwarder.send(node, now, next, Some(write), frame) {
                self.pending_bytes -= len;
                if let Some(inbound) = self.writes.get_mut(&write) {
                    inbound.pending -= len;
                }
                let message = format!("data-server {next} (next in the chain) {refused}");
                return self.fail(node, write, next, message);
            }
        }
        let last = chunk.last;
        self.disk.submit(DiskJob::Chunk { write, offset: chunk.offset, data: chunk.data });
        if last {
            self.disk.submit(DiskJob::Commit { write });
        }
    }

    /// Sends upstream what is now true of `write`, and forgets it once committed.
    pub(crate) fn progress(&mut self, node: &mut Node, write: u64) {
        let Some(inbound) = self.writes.get_mut(&write) else { return };
        let through = if inbound.downstream.is_some() {
            inbound.local_through.min(inbound.down_through)
        } else {
            inbound.local_through
        };
        let committed = inbound.local_committed && inbound.down_committed;
        if (through, committed) == inbound.acked {
            return;
        }
        inbound.acked = (through, committed);
        let (upstream, upstream_id) = (inbound.upstream, inbound.upstream_id);
        let ack = if committed {
            // Durable here and downstream: this replica's signed digest, then the others'.
            let mine = ReplicaProof::sign(
                &self.secret,
                &inbound.token.block,
                self.me,
                inbound.digest.finish(),
            );
            let mut proofs = vec![mine];
            proofs.extend(inbound.down_proofs.iter().copied());
            WriteAck::Committed { through, proofs }
        } else {
            WriteAck::Written { through, committed }
        };
        Self::send_up(node, upstream, upstream_id, ack);
        if committed {
            self.forget(write);
        }
    }

    /// Fails `write` because of data-server `at` (this one, or one after it in the chain):
    /// tells upstream, drops the local copy, forgets it.
    pub(crate) fn fail(&mut self, node: &mut Node, write: u64, at: NodeId, message: String) {
        let Some(inbound) = self.writes.get(&write) else { return };
        let (upstream, upstream_id) = (inbound.upstream, inbound.upstream_id);
        warn!("write of {} failed at data-server {at}: {message}", inbound.token.block);
        Self::send_up(node, upstream, upstream_id, WriteAck::Failed { at, message });
        self.disk.submit(DiskJob::Abort { write });
        self.forget(write);
    }

    pub(crate) fn forget(&mut self, write: u64) {
        self.forwarder.drop_write(write);
        if let Some(inbound) = self.writes.remove(&write) {
            // Its chunks still on the disk queue are dropped there (the write is gone).
            self.pending_bytes -= inbound.pending;
            self.by_upstream.remove(&(inbound.upstream, inbound.upstream_id));
            self.by_downstream.remove(&write);
        }
    }

    pub(crate) fn handle_ack(
        &mut self,
        node: &mut Node,
        now: Now,
        from: NodeId,
        id: u64,
        ack: WriteAck,
    ) {
        let Some(&write) = self.by_downstream.get(&id) else { return };
        let Some(inbound) = self.writes.get_mut(&write) else { return };
        if inbound.downstream.map(|(n, _)| n) != Some(from) {
            return;
        }
        inbound.last_activity = now.mono;
        match ack {
            WriteAck::Written { through, committed } => {
                inbound.down_through = inbound.down_through.max(through);
                inbound.down_committed |= committed;
                self.progress(node, write);
            }
            WriteAck::Committed { through, proofs } => {
                inbound.down_through = inbound.down_through.max(through);
                inbound.down_committed = true;
                inbound.down_proofs = proofs;
                self.progress(node, write);
            }
            WriteAck::Failed { at, message } => self.fail(node, write, at, message),
        }
    }
}

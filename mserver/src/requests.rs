//! Client requests at the meta-server: changes are proposed to Raft and answered once
//! applied; reads (stat, list, locks) wait for a ReadIndex round and are answered from the
//! namespace as applied; a follower answers "not leader" with the leader it knows. The leader
//! also places new blocks here, from the data-servers' reports and its group's view.
//!
//! It must not touch block bytes: clients send those to data-servers.

use std::time::Duration;

use log::{error, warn};
use meshfs_core::descriptor::{BlockDescriptor, BlockVersion, MAX_BLOCKS_PER_FILE};
use meshfs_core::error::NsError;
use meshfs_core::locks::{Wake, WakeResult};
use meshfs_core::namespace::{Caller, Command, Entry, Namespace, Outcome, Stat};
use meshfs_core::path::MeshPath;
use meshfs_core::placement::{DataServerLoad, place};
use meshfs_core::session::SessionId;
use meshfs_core::token::{ReadToken, ReplicaProof, Token, TokenOp};
use meshfs_core::wire::{
    ClusterMap, MAX_LIST_PAGE, MAX_LOCK_PARTIES, MAX_LOCKS_LISTED, MAX_STAT_BLOCKS, Message,
    MetaOp, MetaReply, MetaRequest, REPLY_ITEMS_BUDGET,
};
use meshfs_group::driver::Node;
use meshfs_group::{ClientId, NodeId, Now, Role};

use crate::consensus::ProposeError;
use crate::{MAX_WAITING_READS, MetaServer, READ_ROUND_TIMEOUT, Waiter, heal};

impl MetaServer {
    /// No longer the leader: everyone waiting here asks the new one. A retried write keeps
    /// its request id, so it is applied once however often it is proposed.
    pub(crate) fn release_all(&mut self, node: &mut Node) {
        if self.writes.is_empty()
            && self.reads.is_empty()
            && self.read_queue.is_empty()
            && self.confirmed.is_empty()
            && self.lock_waits.is_empty()
        {
            return;
        }
        let reply = MetaReply::NotLeader { leader: self.leader_id() };
        let mut waiters: Vec<Waiter> = self.writes.drain().flat_map(|(_, w)| w).collect();
        waiters.extend(self.lock_waits.drain().flat_map(|(_, w)| w));
        waiters.extend(self.reads.drain().flat_map(|(_, batch)| batch).map(|(w, _, _)| w));
        waiters.extend(self.read_queue.drain(..).map(|(w, _, _)| w));
        self.read_round = None;
        waiters.extend(self.confirmed.drain(..).map(|(_, w, _, _)| w));
        // Every request held here is answered now.
        self.in_flight.clear();
        for waiter in waiters {
            answer(node, waiter, reply.clone());
        }
    }

    /// Every server of the config and the defaults of new files.
    fn cluster_map(&self, node: &Node) -> MetaReply {
        let servers =
            node.config().servers.iter().map(|s| (s.role, s.id, s.addr.to_string())).collect();
        MetaReply::ClusterMap(ClusterMap {
            block_size: self.block_size,
            replication: self.default_replication,
            servers,
        })
    }

    pub(crate) fn leader_id(&self) -> Option<NodeId> {
        self.replica.status().leader.and_then(|l| u32::try_from(l).ok()).map(NodeId)
    }

    pub(crate) fn handle_meta(
        &mut self,
        node: &mut Node,
        now: Now,
        waiter: Waiter,
        client: ClientId,
        request: MetaRequest,
    ) {
        if request.op == MetaOp::ClusterMap {
            // From the config, which every meta-server has: any meta-server answers.
            return answer(node, waiter, self.cluster_map(node));
        }
        if !self.replica.is_leader() {
            answer(node, waiter, MetaReply::NotLeader { leader: self.leader_id() });
            return;
        }
        if !crate::has_quorum(node) {
            // Cut off from most meta-servers (a partition): what it proposes cannot commit,
            // and what it sees of the data-servers is only its side. Raft has it step down
            // within an election timeout; until then the client asks another.
            let why = "this meta-server led but sees no majority of the meta-servers (a \
                       partition?); ask another"
                .to_string();
            return answer(node, waiter, MetaReply::Unavailable(why));
        }
        let held = self.in_flight.get(&client).copied().unwrap_or_default();
        if held.requests >= self.limits.requests_in_flight_per_client {
            let why = format!(
                "client {client} has {} requests waiting here, the most one may \
                 (limits.requests_in_flight_per_client); wait for their answers",
                held.requests
            );
            return answer(node, waiter, MetaReply::Unavailable(why));
        }
        let session = SessionId { client, nonce: request.session };
        // A trusted client (a mount) may act for a user of its host; anyone else acts as
        // itself. An operator's powers pass through only to the root of a host whose mount
        // is itself an operator's (NFS's no_root_squash); every other user is just a user.
        let (caller, op) = match request.op {
            MetaOp::ActAs { uid, gids, op } => {
                let entry = node.config().client(client);
                if !entry.is_some_and(|c| c.trusted) {
                    let err = NsError::PermissionDenied(format!(
                        "client {client} may not act for other users (trusted = true in its [[client]] entry)"
                    ));
                    return answer(node, waiter, MetaReply::Failed(err));
                }
                let admin = uid == 0 && entry.is_some_and(|c| c.admin);
                (Caller { uid, gids, admin }, *op)
            }
            op => (caller_of(node, client), op),
        };
        let request = MetaRequest { op, ..request };
        let command = match request.op {
            MetaOp::ReportBadReplica { block, server, reason } => {
                // Advice only, and kept nowhere: a damaged replica is set aside and reported
                // by its data-server, a dead one is seen down by the mesh. The line is
                // escaped, cut and budgeted: a client controls every byte of it.
                if let Some(left_out) = self.report_log.allow(now.mono) {
                    let reason = meshfs_group::log_budget::escaped(&reason, 200);
                    let also = if left_out > 0 {
                        format!(" ({left_out} more reports not logged)")
                    } else {
                        String::new()
                    };
                    warn!(
                        "client {client} reports data-server {server} failed block {block}: \"{reason}\"{also}"
                    );
                }
                return answer(node, waiter, MetaReply::Done);
            }
            MetaOp::Fsck { .. } | MetaOp::Drain { .. } if !caller.admin => {
                let what = match request.op {
                    MetaOp::Drain { .. } => "draining or undraining a data-server",
                    _ => "fsck",
                };
                let err = NsError::PermissionDenied(format!(
                    "{what} needs an operator's client (admin = true in its [[client]] entry); client {client} is not one"
                ));
                return answer(node, waiter, MetaReply::Failed(err));
            }
            MetaOp::Fsck { path } => {
                let namespace = self.replica.namespace();
                let reply =
                    match heal::fsck(node, namespace, &self.reports, &self.healer, &path, now.mono)
                    {
                        Ok(report) => MetaReply::Fsck(report),
                        Err(err) => MetaReply::Failed(err),
                    };
                return answer(node, waiter, reply);
            }
            MetaOp::Drain { server, draining } => {
                if node.config().server(server).is_none_or(|s| s.role != Role::DServer) {
                    let err =
                        NsError::NotFound(format!("data-server {server} (not in the config)"));
                    return answer(node, waiter, MetaReply::Failed(err));
                }
                Command::SetDraining { server, draining }
            }
            MetaOp::OpenSession => {
                let table = self.replica.namespace().lock_table();
                let open = table.sessions_of(client);
                if table.session(session).is_none() && open >= self.limits.lock_sessions_per_client
                {
                    let err = NsError::TooMany(format!(
                        "client {client} has {open} lock sessions open, the most one may \
                         (limits.lock_sessions_per_client); close some"
                    ));
                    return answer(node, waiter, MetaReply::Failed(err));
                }
                Command::OpenSession {
                    lease_ms: millis(self.locks.session_lease),
                    lock_delay_ms: millis(self.locks.lock_delay),
                }
            }
            MetaOp::KeepAlive => Command::KeepAlive,
            MetaOp::CloseSession => Command::CloseSession,
            MetaOp::ClusterMap => return answer(node, waiter, self.cluster_map(node)),
            MetaOp::Lock { wait_ms: Some(1..), .. }
                if held.lock_waits >= self.limits.lock_waits_per_client =>
            {
                let err = NsError::TooMany(format!(
                    "client {client} has {} lock requests waiting, the most one may \
                     (limits.lock_waits_per_client)",
                    held.lock_waits
                ));
                return answer(node, waiter, MetaReply::Failed(err));
            }
            MetaOp::Lock { path, mode, wait_ms } => Command::Lock { path, mode, wait_ms },
            MetaOp::Unlock { path } => Command::Unlock { path },
            MetaOp::Stat { .. }
            | MetaOp::List { .. }
            | MetaOp::ListPlus { .. }
            | MetaOp::Locks { .. }
            | MetaOp::GetXattr { .. }
            | MetaOp::ListXattr { .. } => {
                if !self.replica.is_leader() {
                    let leader = self.leader_id();
                    return answer(node, waiter, MetaReply::NotLeader { leader });
                }
                let waiting =
                    self.read_queue.len() + self.reads.values().map(Vec::len).sum::<usize>();
                if waiting >= MAX_WAITING_READS {
                    let why = format!("{waiting} reads are waiting here; try again shortly");
                    return answer(node, waiter, MetaReply::Unavailable(why));
                }
                // Answered after the next ReadIndex round, which serves every read queued
                // when it begins: a flood of reads costs one round at a time, not one each.
                self.hold(&waiter);
                self.read_queue.push((waiter, request.op, caller));
                return self.flush(node, now);
            }
            MetaOp::Expand { path, size } => match self.place(node, path, size) {
                Ok(command) => command,
                Err(err) => return answer(node, waiter, MetaReply::Failed(err)),
            },
            MetaOp::Mkdir { path, parents: true, .. }
                if path.components().count() > self.limits.inodes_per_request =>
            {
                let err = NsError::TooMany(format!(
                    "mkdir -p of {} components may make as many directories in one request; \
                     at most {} (limits.inodes_per_request)",
                    path.components().count(),
                    self.limits.inodes_per_request
                ));
                return answer(node, waiter, MetaReply::Failed(err));
            }
            MetaOp::Mkdir { path, parents, mode } => Command::Mkdir { path, parents, mode },
            MetaOp::Create { path, replication, mode } => Command::CreateFile {
                path,
                replication: if replication == 0 { self.default_replication } else { replication },
                block_size: self.block_size,
                mode,
            },
            MetaOp::CreateWrite { path, replication, size, mode } => {
                let replication =
                    if replication == 0 { self.default_replication } else { replication };
                // One block at most (the state machine refuses more); room for what it holds.
                let largest = size.min(u64::from(self.block_size));
                match place(1, replication, largest, &self.loads(node)) {
                    Ok(mut sets) => Command::CreateWrite {
                        path,
                        replication,
                        block_size: self.block_size,
                        size,
                        placement: sets.pop().unwrap_or_default(),
                        mode,
                    },
                    Err(e) => {
                        let err = NsError::Placement(e.to_string());
                        return answer(node, waiter, MetaReply::Failed(err));
                    }
                }
            }
            MetaOp::Rename { from, to, replace } => Command::Rename { from, to, replace },
            MetaOp::Link { from, to } => Command::Link { from, to },
            MetaOp::SetXattr { path, name, value, how } => {
                Command::SetXattr { path, name, value, how }
            }
            MetaOp::RemoveXattr { path, name } => Command::RemoveXattr { path, name },
            MetaOp::ActAs { .. } => {
                // The wire never nests one (the decoder refuses it); say so if code does.
                let err = NsError::PermissionDenied("an act-as inside another".into());
                return answer(node, waiter, MetaReply::Failed(err));
            }
            MetaOp::Chmod { path, mode } if mode <= 0o7777 => Command::Chmod { path, mode },
            MetaOp::Chmod { mode, .. } => {
                let err = NsError::PermissionDenied(format!("mode {mode:o}: at most 7777"));
                return answer(node, waiter, MetaReply::Failed(err));
            }
            MetaOp::Chown { path, uid, gid } => Command::Chown { path, uid, gid },
            MetaOp::SetTimes { path, atime, mtime } => Command::SetTimes { path, atime, mtime },
            MetaOp::Truncate { path, size } => Command::Truncate { path, size },
            MetaOp::MakeNode { path, kind, target, rdev, mode } => {
                Command::MakeNode { path, kind, target, rdev, mode }
            }
            MetaOp::Remove { path, recursive } => Command::Remove { path, recursive },
            MetaOp::WriteLease { path, index } => Command::WriteLease { path, index },
            MetaOp::CommitWrite { .. } => {
                let err = NsError::PermissionDenied(
                    "a commit must carry the replicas' proofs (CommitProven); this client is older than the cluster".into(),
                );
                return answer(node, waiter, MetaReply::Failed(err));
            }
            MetaOp::CommitProven { path, index, version, digest, proofs } => {
                let namespace = self.replica.namespace();
                match proven(namespace, &self.secret, &path, index, version, &digest, &proofs) {
                    Ok(()) => Command::CommitWrite { path, index, version },
                    Err(err) => {
                        warn!("client {client}: {err}");
                        return answer(node, waiter, MetaReply::Failed(err));
                    }
                }
            }
            MetaOp::SwapReplica { path, index, failed } => {
                match self.replacement(node, &path, index, failed) {
                    Ok(replacement) => Command::SwapReplica { path, index, failed, replacement },
                    Err(err) => return answer(node, waiter, MetaReply::Failed(err)),
                }
            }
        };
        let entry = Entry {
            session,
            request_id: request.request_id,
            time_ms: now.wall_ms,
            caller,
            command,
        };
        let result = self.replica.propose(&entry).map(|()| {
            self.hold(&waiter);
            self.writes.entry((session, request.request_id)).or_default().push(waiter);
        });
        self.settle(node, now, waiter, result);
        self.check_in_flight();
    }

    /// Answers a request Raft would not take; then sends what Raft produced.
    /// Begins a ReadIndex round for the queued reads if none is out (or the one out is
    /// past [`READ_ROUND_TIMEOUT`]); whether it began one, with Raft output to send.
    pub(crate) fn begin_read_round(&mut self, node: &mut Node, now: Now) -> bool {
        if let Some((context, began)) = self.read_round {
            if now.mono.saturating_duration_since(began) < READ_ROUND_TIMEOUT {
                return false;
            }
            warn!("read round {context} did not come back in {READ_ROUND_TIMEOUT:?}: given up");
            self.read_round = None;
            let why = MetaReply::Unavailable("the read round timed out; try again".into());
            for (waiter, _, _) in self.reads.remove(&context).into_iter().flatten() {
                self.release(&waiter, false);
                answer(node, waiter, why.clone());
            }
        }
        if self.read_queue.is_empty() {
            return false;
        }
        let context = self.next_read;
        self.next_read += 1;
        let batch = std::mem::take(&mut self.read_queue);
        match self.replica.read_index(context) {
            Ok(()) => {
                self.reads.insert(context, batch);
                self.read_round = Some((context, now.mono));
                true
            }
            Err(err) => {
                let reply = match err {
                    ProposeError::NotLeader(_) => MetaReply::NotLeader { leader: self.leader_id() },
                    ProposeError::Dropped(why) => MetaReply::Unavailable(why),
                };
                for (waiter, _, _) in batch {
                    self.release(&waiter, false);
                    answer(node, waiter, reply.clone());
                }
                false
            }
        }
    }

    pub(crate) fn settle(
        &mut self,
        node: &mut Node,
        now: Now,
        waiter: Waiter,
        result: Result<(), ProposeError>,
    ) {
        match result {
            Ok(()) => {}
            Err(ProposeError::NotLeader(_)) => {
                answer(node, waiter, MetaReply::NotLeader { leader: self.leader_id() });
            }
            Err(ProposeError::Dropped(why)) => answer(node, waiter, MetaReply::Unavailable(why)),
        }
        self.flush(node, now);
    }

    /// The leader's placement of the blocks `path` needs to hold `size` bytes: distinct
    /// data-servers its group sees up, most free first, free being the configured capacity
    /// less what the namespace assigns (until data-servers report their disks). The entry
    /// carries it, so applying stays deterministic.
    /// A live data-server, not already holding block `index` of `path`, to take `failed`'s
    /// place (the applying checks the rest).
    pub(crate) fn replacement(
        &self,
        node: &Node,
        path: &MeshPath,
        index: u16,
        failed: NodeId,
    ) -> Result<NodeId, NsError> {
        let meta = self.replica.namespace().get_file_meta_data(path)?;
        let Some(block) = meta.blocks.get(usize::from(index)) else {
            return Err(NsError::NotFound(format!("{path} block {index}")));
        };
        let live: Vec<DataServerLoad> = self
            .loads(node)
            .into_iter()
            .filter(|l| l.id != failed && !block.replicas.contains(&l.id))
            .collect();
        let chosen = place(1, 1, u64::from(meta.block_size), &live)
            .map_err(|e| NsError::Placement(format!("no data-server to replace {failed}: {e}")))?;
        chosen
            .first()
            .and_then(|set| set.first())
            .copied()
            .ok_or_else(|| NsError::Placement(format!("no data-server to replace {failed}")))
    }

    /// Every live data-server with its free space as the leader sees it.
    pub(crate) fn loads(&self, node: &Node) -> Vec<DataServerLoad> {
        let namespace = self.replica.namespace();
        node.group()
            .status()
            .into_iter()
            .filter(|p| p.role == Role::DServer && p.up && !namespace.draining().contains(&p.id))
            .map(|p| {
                let configured = node.config().server(p.id).and_then(|s| s.capacity).unwrap_or(0);
                let assigned = namespace.allocated().get(&p.id).copied().unwrap_or(0);
                // What the data-server reports using, or what the namespace has assigned it,
                // whichever is more: blocks assigned are not all written yet.
                let (capacity, used) = match self.reports.get(&p.id) {
                    Some(r) if r.complete => (r.capacity, r.used.max(assigned)),
                    _ => (configured, assigned),
                };
                DataServerLoad { id: p.id, free_bytes: capacity.saturating_sub(used) }
            })
            .collect()
    }

    pub(crate) fn place(&self, node: &Node, path: MeshPath, size: u64) -> Result<Command, NsError> {
        let namespace = self.replica.namespace();
        let meta = namespace.get_file_meta_data(&path)?;
        let have = meta.blocks.len() as u64;
        let wanted = size.div_ceil(u64::from(meta.block_size));
        let needed = wanted.saturating_sub(have) as usize;
        let live = self.loads(node);
        let placement = if needed == 0 || wanted > u64::from(MAX_BLOCKS_PER_FILE) {
            Vec::new() // nothing to place, or the state machine refuses the size itself
        } else {
            // Room for the largest new block: the first (a small file's only block is small).
            let bs = u64::from(meta.block_size);
            let largest = bs.min(size.saturating_sub(have * bs));
            place(needed, meta.replication, largest, &live)
                .map_err(|e| NsError::Placement(e.to_string()))?
        };
        Ok(Command::ExpandFile { path, size, first_block: have as u32, placement })
    }
}

pub(crate) fn answer(node: &mut Node, waiter: Waiter, reply: MetaReply) {
    let mut frame = Message::MetaReply(reply).to_frame(waiter.frame_id);
    let len = frame.body.len();
    if len > meshfs_net::frame::DEFAULT_MAX_BODY_LEN as usize {
        // Dropped, it would leave the client waiting for ever: it hears why instead.
        error!("a reply of {len} bytes does not fit in a frame: answering with an error");
        let err = MetaReply::Failed(NsError::ReplyTooLarge(len as u64));
        frame = Message::MetaReply(err).to_frame(waiter.frame_id);
    }
    node.reply(waiter.conn, frame);
}

/// The reply for an applied change.
pub(crate) fn reply_of(outcome: Outcome, secret: &[u8], client: ClientId) -> MetaReply {
    match outcome {
        Outcome::Mkdir
        | Outcome::Renamed
        | Outcome::Changed
        | Outcome::Committed { .. }
        | Outcome::Swapped { .. }
        | Outcome::Draining { .. } => MetaReply::Done,
        // Signed when answered, by whoever answers: a token lives on the wire only.
        // The token ends when the lease does (the entry's time, by the leader's clock).
        Outcome::Leased { block, base, replicas, expires_ms } => MetaReply::Lease(Token::sign(
            secret,
            block,
            base,
            TokenOp::Write,
            replicas,
            client,
            expires_ms,
        )),
        Outcome::Expanded { file, blocks } => {
            MetaReply::Expanded { file, new_blocks: blocks.len() as u32 }
        }
        Outcome::Created(fd) => MetaReply::Created(fd),
        Outcome::Removed { files, dirs } => MetaReply::Removed { files, dirs },
        Outcome::Failed(err) => MetaReply::Failed(err),
        Outcome::SessionOpened { lease_ms, lock_delay_ms, .. } => {
            MetaReply::Session { lease_ms, lock_delay_ms }
        }
        Outcome::KeptAlive { .. } | Outcome::Woke { .. } => MetaReply::Done,
        Outcome::LockGranted { sequencer } => MetaReply::Locked { sequencer },
        Outcome::LockQueued => MetaReply::Unavailable("the lock request is queued".into()),
    }
}

/// The answer to a lock request whose wait ended.
pub(crate) fn wake_reply(wake: &Wake) -> MetaReply {
    let path = wake.path.to_string();
    match wake.result {
        WakeResult::Granted { sequencer } => MetaReply::Locked { sequencer },
        WakeResult::TimedOut => MetaReply::Failed(NsError::LockTimeout(path)),
        WakeResult::Cancelled => MetaReply::Failed(NsError::LockCancelled(path)),
        WakeResult::SessionEnded => {
            MetaReply::Failed(NsError::SessionExpired { client: wake.session.client.0 })
        }
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Checks that every replica of block `index` of `path` proves, signed, that it wrote what
/// the client sent (`digest`) at `version`.
fn proven(
    namespace: &Namespace,
    secret: &[u8],
    path: &MeshPath,
    index: u16,
    version: BlockVersion,
    digest: &[u8; 32],
    proofs: &[ReplicaProof],
) -> Result<(), NsError> {
    let meta = namespace.get_block_metadata(path, index)?;
    let block = BlockDescriptor { file: meta.descriptor.file, index, version };
    for replica in &meta.replicas {
        let what = match proofs.iter().find(|p| p.replica == *replica) {
            None => "gave no proof of the write",
            Some(p) if !p.verify(secret, &block) => "has a forged or altered proof",
            Some(p) if p.digest != *digest => "proves other bytes than the client sent",
            Some(_) => continue,
        };
        return Err(NsError::Unproven(format!(
            "{path} block {index} v{}: data-server {replica} {what}",
            version.0
        )));
    }
    Ok(())
}

/// Who `client` acts as by this server's config: its uid and groups, and whether it is an
/// operator. A client no longer in the config gets no permission at all.
pub(crate) fn caller_of(node: &Node, client: ClientId) -> Caller {
    match node.config().client(client) {
        Some(c) => Caller { uid: c.uid, gids: c.gids.clone(), admin: c.admin },
        None => Caller { uid: u32::MAX, gids: Vec::new(), admin: false },
    }
}

/// Who a read is answered for, to sign the read tokens of the blocks it returns.
pub(crate) struct ReadSigner<'a> {
    pub(crate) secret: &'a [u8],
    pub(crate) client: ClientId,
    pub(crate) caller: Caller,
    pub(crate) expires_ms: u64,
}

/// Answers a read from the namespace as applied. A file's blocks come with read tokens
/// signed for the client that asked.
pub(crate) fn read(namespace: &Namespace, op: &MetaOp, signer: &ReadSigner<'_>) -> MetaReply {
    let caller = &signer.caller;
    // Stat needs search on the way; a listing, read on the directory too.
    let allowed = match op {
        MetaOp::Stat { path, .. } => namespace.may_search(path, caller),
        MetaOp::List { path, .. } | MetaOp::ListPlus { path, .. } => {
            namespace.may_read(path, caller)
        }
        // As Linux: reading a user attribute needs read permission on the inode.
        MetaOp::GetXattr { path, .. } | MetaOp::ListXattr { path } => {
            namespace.may_read(path, caller)
        }
        _ => Ok(()),
    };
    if let Err(err) = allowed {
        return MetaReply::Failed(err);
    }
    match op {
        MetaOp::Stat { path, first_block } => match namespace.stat(path) {
            Ok(Stat::File(mut meta)) => {
                // Its blocks' read tokens go to a client that may read it.
                let readable = namespace.may_read(path, caller).is_ok();
                let total = meta.blocks.len() as u32;
                let first = (*first_block).min(total);
                meta.blocks.drain(..first as usize);
                meta.blocks.truncate(MAX_STAT_BLOCKS as usize);
                for block in meta.blocks.iter_mut().filter(|_| readable) {
                    let token = ReadToken::sign(
                        signer.secret,
                        &block.descriptor,
                        signer.client,
                        signer.expires_ms,
                    );
                    block.read = Some(token);
                }
                MetaReply::Stat { stat: Stat::File(meta), total_blocks: total, first_block: first }
            }
            Ok(dir) => MetaReply::Stat { stat: dir, total_blocks: 0, first_block: 0 },
            Err(err) => MetaReply::Failed(err),
        },
        MetaOp::List { path, after, limit } => {
            let limit = (*limit).clamp(1, MAX_LIST_PAGE) as usize;
            match namespace.list_page(path, after, limit) {
                Ok((entries, more)) => MetaReply::List { entries, more },
                Err(err) => MetaReply::Failed(err),
            }
        }
        MetaOp::ListPlus { path, after, limit } => {
            let limit = (*limit).clamp(1, MAX_LIST_PAGE) as usize;
            match namespace.list_plus_page(path, after, limit, REPLY_ITEMS_BUDGET) {
                Ok((entries, more)) => MetaReply::ListPlus { entries, more },
                Err(err) => MetaReply::Failed(err),
            }
        }
        MetaOp::GetXattr { path, name } => match namespace.get_xattr(path, name) {
            Ok(value) => MetaReply::Xattr(value),
            Err(err) => MetaReply::Failed(err),
        },
        MetaOp::ListXattr { path } => match namespace.list_xattr(path) {
            Ok(names) => MetaReply::XattrNames(names),
            Err(err) => MetaReply::Failed(err),
        },
        MetaOp::Locks { path } => {
            let table = namespace.lock_table();
            let (locks, more) = table.list(
                path,
                MAX_LOCKS_LISTED as usize,
                MAX_LOCK_PARTIES as usize,
                REPLY_ITEMS_BUDGET,
            );
            MetaReply::Locks { locks, more }
        }
        MetaOp::Mkdir { .. }
        | MetaOp::Create { .. }
        | MetaOp::CreateWrite { .. }
        | MetaOp::Rename { .. }
        | MetaOp::Link { .. }
        | MetaOp::SetXattr { .. }
        | MetaOp::RemoveXattr { .. }
        | MetaOp::Remove { .. }
        | MetaOp::Expand { .. }
        | MetaOp::WriteLease { .. }
        | MetaOp::CommitWrite { .. }
        | MetaOp::CommitProven { .. }
        | MetaOp::Chmod { .. }
        | MetaOp::Chown { .. }
        | MetaOp::SetTimes { .. }
        | MetaOp::Truncate { .. }
        | MetaOp::MakeNode { .. }
        | MetaOp::ActAs { .. }
        | MetaOp::SwapReplica { .. }
        | MetaOp::Drain { .. }
        | MetaOp::Fsck { .. }
        | MetaOp::OpenSession
        | MetaOp::KeepAlive
        | MetaOp::CloseSession
        | MetaOp::ClusterMap
        | MetaOp::Lock { .. }
        | MetaOp::Unlock { .. }
        | MetaOp::ReportBadReplica { .. } => {
            unreachable!("writes go through the log, not read()")
        }
    }
}

//! The MeshFS data-server: keeps block replicas on its disk and serves them.
//!
//! - [`block_store`]: replica files with a CRC-32 per 64 KiB segment, copy-on-write.
//! - [`disk`]: worker threads doing all disk work, off the event loop.
//!
//! Writes come down a chain. A client sends a write in chunks (each carrying the write
//! token the meta-servers signed) to the first data-server of the block's chain; each
//! data-server checks the token (signed with the cluster secret, for this block and version,
//! naming it in the chain, not expired, not already spent on this replica) and that the chunk
//! came from its predecessor in the chain (the first from the lease holder), forwards the
//! chunk to the next one over the group mesh, writes it on a disk worker, and acknowledges a
//! chunk upstream once it is written here and acknowledged downstream. The last chunk
//! commits (fsync) the write; its acknowledgement means the block is durable on every
//! replica after this one and here, and carries each one's signed digest of what it wrote,
//! which the client hands to the leader to commit. A failure anywhere is reported upstream,
//! and nothing of that write is committed there.
//!
//! A write's token also names its base: the block's committed version when the lease was
//! granted. A write that keeps the block's other bytes starts from the copy at that version,
//! and a replica without it refuses (it missed a write and needs repair). The new version
//! becomes the block's when the client commits it at the meta-servers; until then readers ask
//! for the base, which the block store keeps beside the new copy. The leader's
//! [`Message::BlockCommitted`] notice lets the base copy go.
//!
//! Reads return the bytes asked for with what checks their segments against the stored
//! checksums, which the client checks again. A client's read must carry the leader's read
//! token for that block, version and client; other data-servers (repair copies) need none.
//!
//! Self-healing, on the leader meta-server's word: a [`Message::Repair`] makes this
//! data-server copy a block from another one over the mesh (reads paced to the configured
//! repair rate, every segment checked against the source's stored checksums, then written
//! and committed like any write) and answer [`Message::RepairDone`]; a
//! [`Message::DeleteReplica`] deletes a replica if it is still at the version the leader saw.
//! The scrubber re-reads every replica in the background; a damaged one is set aside and
//! reported, and the leader has it copied back from a good replica.

#![deny(missing_docs, missing_debug_implementations)]

//!
//! Where things are: `lib.rs` (here) holds the server's state and dispatches events, disk
//! results and timers; `chain` the write chain, `copy` repair copies, `report` the reports
//! to meta-servers, `forwarder` the bulk frames waiting for room on a link; [`block_store`]
//! and [`disk`] the disk. Every handler takes the driver's `now`; nothing here reads a clock
//! (the scrubber thread paces its own disk reads).

pub mod block_store;
mod chain;
mod copy;
pub mod disk;
mod forwarder;
#[doc(hidden)]
pub mod fuzz;
mod report;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use log::{debug, info, warn};
use meshfs_core::pacer::Pacer;
use meshfs_core::request::{Handled, common_reply, peer_message, unsupported};
use meshfs_core::settings::{self, Settings};
use meshfs_core::status::{for_plain_client, status_reply};
use meshfs_core::wire::{BlockData, ErrorCode, Kind, MAX_CHUNK_BYTES, Message, ReadBlock};
use meshfs_group::driver::{Node, NodeError, Service, Stop};
use meshfs_group::process::{DataDir, StartError, start_in_process, start_server};
use meshfs_group::{Config, GroupEvent, NodeId, Now, Role};
use meshfs_net::Priority;

use crate::block_store::{BlockStore, StoreError};
use crate::chain::{Inbound, Upstream};
use crate::copy::Copy;
use crate::disk::{DiskDone, DiskJob, DiskPool, ReplyTo};
use crate::forwarder::Forwarder;

/// A write idle this long (no chunk, no acknowledgement) is abandoned: its upstream died or
/// gave up, and its temporary file is removed.
pub const WRITE_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most reads of one client connection waiting for the disk; a client reads a block or two
/// ahead, so only one that asks without waiting meets it.
pub const MAX_READS_PER_CLIENT: usize = 64;
/// Most client reads waiting for the disk in all.
pub const MAX_READS_IN_FLIGHT: usize = 1024;
const SWEEP_TIMER: u64 = 1;
const SWEEP_EVERY: Duration = Duration::from_secs(5);
const FORWARD_TIMER: u64 = 3;
const PACE_TIMER: u64 = 2;

/// Why a data-server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// It could not start as a server.
    #[error(transparent)]
    Start(#[from] StartError),
    /// Its block store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The data-server above the group: its block store and the writes under way.
#[derive(Debug)]
pub struct DataServer {
    me: NodeId,
    secret: Vec<u8>,
    store: Arc<BlockStore>,
    disk: DiskPool,
    /// Writes under way, by our write number.
    writes: HashMap<u64, Inbound>,
    /// Bytes of all writes' chunks on the disk queue (see [`chain::MAX_PENDING_BYTES`]).
    pending_bytes: u64,
    /// Client reads on the disk queue, per connection, and their sum.
    reads_in_flight: HashMap<meshfs_net::ConnId, usize>,
    reads_total: usize,
    /// Our write number by (upstream, upstream request id).
    by_upstream: HashMap<(Upstream, u64), u64>,
    /// Our write number by the request id we use downstream.
    by_downstream: HashMap<u64, u64>,
    next_write: u64,
    /// Repair copies coming in, by their write number.
    copies: HashMap<u64, Copy>,
    /// Reads asked of copy sources, by request id: (write number, offset, length).
    copy_reads: HashMap<u64, (u64, u64, u32)>,
    next_copy_read: u64,
    pacer: Pacer,
    pace_timer_set: bool,
    forwarder: Forwarder,
}

impl DataServer {
    /// A data-server serving `store`, checking tokens with `secret`, taking repair copies at
    /// up to `repair_bytes_per_sec`.
    pub fn new(
        me: NodeId,
        secret: Vec<u8>,
        store: Arc<BlockStore>,
        disk: DiskPool,
        repair_bytes_per_sec: u64,
    ) -> DataServer {
        DataServer {
            me,
            secret,
            store,
            disk,
            writes: HashMap::new(),
            pending_bytes: 0,
            reads_in_flight: HashMap::new(),
            reads_total: 0,
            by_upstream: HashMap::new(),
            by_downstream: HashMap::new(),
            next_write: 1,
            copies: HashMap::new(),
            copy_reads: HashMap::new(),
            next_copy_read: 1,
            pacer: Pacer::new(repair_bytes_per_sec, u64::from(MAX_CHUNK_BYTES)),
            pace_timer_set: false,
            forwarder: Forwarder::default(),
        }
    }

    fn handle_disk(&mut self, node: &mut Node, now: Now) {
        for done in self.disk.poll() {
            if self.copy_disk(node, now, &done) {
                continue;
            }
            match done {
                DiskDone::Written { write, end, len } => {
                    if let Some(inbound) = self.writes.get_mut(&write) {
                        inbound.local_through = inbound.local_through.max(end);
                        inbound.pending -= len;
                        self.pending_bytes -= len;
                    }
                    self.progress(node, write);
                }
                DiskDone::Committed { write } => {
                    if let Some(inbound) = self.writes.get_mut(&write) {
                        inbound.local_committed = true;
                        let block = inbound.token.block;
                        info!("block {block} committed here");
                        let held = self
                            .store
                            .get(block.file.id, block.index)
                            .map(|b| (b.descriptor, b.len));
                        self.report_change(node, held, None);
                    }
                    self.progress(node, write);
                }
                DiskDone::Failed { write, message } => self.fail(node, write, self.me, message),
                DiskDone::Read { to: ReplyTo::Client(conn), frame } => {
                    if self.disk.read_answered(conn) {
                        continue; // its connection closed
                    }
                    if let Some(n) = self.reads_in_flight.get_mut(&conn) {
                        *n -= 1;
                        self.reads_total -= 1;
                        if *n == 0 {
                            self.reads_in_flight.remove(&conn);
                        }
                    }
                    node.reply(conn, frame)
                }
                DiskDone::Read { to: ReplyTo::Peer(peer), frame } => {
                    if self.forwarder.send(node, now, peer, None, frame).is_err() {
                        debug!("data-server {peer} went down before its read was answered");
                    }
                }
                DiskDone::Deleted { block, removed } => {
                    if removed {
                        info!("deleted replica {block}, as the leader asked");
                        let key = (block.file.id.0, block.index);
                        self.report_change(node, None, Some(key));
                    }
                }
                DiskDone::Damaged { block, reason } => {
                    warn!("replica {block} is damaged ({reason}): set aside, reporting it");
                    let held =
                        self.store.get(block.file.id, block.index).map(|b| (b.descriptor, b.len));
                    let removed = held.is_none().then_some((block.file.id.0, block.index));
                    self.report_change(node, held, removed);
                    let message = Message::ReplicaDamaged { block, reason };
                    let mservers: Vec<NodeId> =
                        node.config().servers_of(Role::MServer).map(|s| s.id).collect();
                    for m in mservers {
                        let _ = node.send(m, Priority::Control, message.to_frame(0));
                    }
                }
            }
        }
    }

    fn handle_read(&mut self, to: ReplyTo, request: u64, read: ReadBlock, node: &mut Node) {
        let refusal = if read.len > MAX_CHUNK_BYTES {
            Some(format!("reads are at most {MAX_CHUNK_BYTES} bytes"))
        } else if let ReplyTo::Client(conn) = to {
            let total = self.reads_total;
            let mine = self.reads_in_flight.get(&conn).copied().unwrap_or(0);
            (mine >= MAX_READS_PER_CLIENT || total >= MAX_READS_IN_FLIGHT).then(|| {
                format!(
                    "too many reads waiting for this data-server's disk ({mine} from this \
                     connection, {total} in all; at most {MAX_READS_PER_CLIENT} and \
                     {MAX_READS_IN_FLIGHT}): wait for answers before asking more"
                )
            })
        } else {
            None
        };
        if let Some(message) = refusal {
            let frame = Message::BlockData(BlockData::Failed { message }).to_frame(request);
            match to {
                ReplyTo::Client(conn) => node.reply(conn, frame),
                ReplyTo::Peer(peer) => {
                    let _ = node.send(peer, Priority::Bulk, frame);
                }
            }
            return;
        }
        if let ReplyTo::Client(conn) = to {
            *self.reads_in_flight.entry(conn).or_default() += 1;
            self.reads_total += 1;
        }
        self.disk.submit(DiskJob::Read {
            to,
            request,
            block: read.block,
            offset: read.offset,
            len: read.len,
        });
    }

    /// Abandons writes whose upstream went quiet, and those tied to a gone connection or peer.
    fn sweep(
        &mut self,
        node: &mut Node,
        now: Now,
        gone: Option<Upstream>,
        down_peer: Option<NodeId>,
    ) {
        let idle = |since| now.mono.saturating_duration_since(since) > WRITE_IDLE_TIMEOUT;
        let stale: Vec<(u64, bool)> = self
            .writes
            .iter()
            .filter_map(|(&write, w)| {
                let idle = idle(w.last_activity);
                let upstream_gone = gone == Some(w.upstream);
                let downstream_gone =
                    down_peer.is_some() && w.downstream.map(|(n, _)| n) == down_peer;
                (idle || upstream_gone || downstream_gone).then_some((write, downstream_gone))
            })
            .collect();
        let stale_copies: Vec<(u64, String)> = self
            .copies
            .iter()
            .filter_map(|(&write, c)| {
                if down_peer == Some(c.task.source) {
                    Some((write, format!("source data-server {} went down", c.task.source)))
                } else if idle(c.last_activity) {
                    Some((write, "no progress for 30 s".into()))
                } else {
                    None
                }
            })
            .collect();
        for (write, why) in stale_copies {
            self.fail_copy(node, write, why);
        }
        for (write, downstream_gone) in stale {
            if downstream_gone {
                let peer = down_peer.unwrap_or(self.me);
                let message = format!("data-server {peer} (next in the chain) went down");
                self.fail(node, write, peer, message);
            } else {
                self.disk.submit(DiskJob::Abort { write });
                self.forget(write);
            }
        }
    }
}

impl Service for DataServer {
    fn start(&mut self, node: &mut Node, now: Now) {
        node.set_timer(now.mono + SWEEP_EVERY, SWEEP_TIMER);
    }

    fn handle_timer(&mut self, node: &mut Node, now: Now, token: u64) {
        if token == SWEEP_TIMER {
            self.sweep(node, now, None, None);
            node.set_timer(now.mono + SWEEP_EVERY, SWEEP_TIMER);
        } else if token == PACE_TIMER {
            self.pace_timer_set = false;
            self.pump_copies(node, now);
        } else if token == FORWARD_TIMER {
            for (write, peer) in self.forwarder.pump(node, now) {
                let message = format!("data-server {peer} (next in the chain) went down");
                self.fail(node, write, peer, message);
            }
        }
    }

    fn handle_wake(&mut self, node: &mut Node, now: Now) {
        self.handle_disk(node, now);
    }

    fn handle_event(&mut self, node: &mut Node, now: Now, event: GroupEvent) {
        match event {
            GroupEvent::PeerUp { peer, role: Role::MServer } => self.report_all(node, peer),
            GroupEvent::PeerUp { .. } => {}
            GroupEvent::PeerDown { peer, .. } => {
                self.sweep(node, now, Some(Upstream::Peer(peer)), Some(peer))
            }
            GroupEvent::ClientGone { conn, .. } => {
                // Its reads on the disk queue are answered to no one: those not begun are
                // skipped, and none counts any more.
                if let Some(n) = self.reads_in_flight.remove(&conn) {
                    self.reads_total -= n;
                    self.disk.cancel_reads(conn, n);
                }
                self.sweep(node, now, Some(Upstream::Client(conn)), None)
            }
            GroupEvent::Message { from, frame } => {
                let request_id = frame.request_id;
                match peer_message(node.config(), from, frame, sender_role) {
                    Ok(message) => self.handle_peer(node, now, from, request_id, message),
                    Err(refused) => warn!("{refused}"),
                }
            }
            GroupEvent::ClientMessage { conn, client, frame } => {
                let reply = match common_reply(&frame, || {
                    let admin = node.config().client(client).is_some_and(|c| c.admin);
                    let status = status_reply(
                        node.group(),
                        &node.config().cluster_name,
                        &node.local_addr().to_string(),
                        node.uptime(now),
                        now.mono,
                    );
                    if admin { status } else { for_plain_client(status) }
                }) {
                    Handled::Answered(reply) => reply,
                    Handled::ForRole(Message::WriteChunk(chunk)) => {
                        let upstream = Upstream::Client(conn);
                        self.handle_chunk(
                            node,
                            now,
                            upstream,
                            Some(client),
                            frame.request_id,
                            chunk,
                        );
                        return;
                    }
                    Handled::ForRole(Message::TokenRead { read, token }) => {
                        match token.verify(&self.secret, &read.block, client, now.wall_ms) {
                            Ok(()) => {
                                let to = ReplyTo::Client(conn);
                                self.handle_read(to, frame.request_id, read, node);
                                return;
                            }
                            Err(err) => {
                                warn!("client {client}: read of {} refused: {err}", read.block);
                                Message::Error {
                                    code: ErrorCode::Forbidden,
                                    message: format!("read of {} refused: {err}", read.block),
                                }
                            }
                        }
                    }
                    Handled::ForRole(Message::ReadBlock(read)) => {
                        warn!("client {client}: read of {} without a read token", read.block);
                        Message::Error {
                            code: ErrorCode::Forbidden,
                            message: format!(
                                "read of {} refused: a read token is required (the meta-servers give one with the file's blocks)",
                                read.block
                            ),
                        }
                    }
                    Handled::ForRole(request) => {
                        warn!(
                            "client {client} sent message kind {}, which a data-server does not serve",
                            request.kind()
                        );
                        unsupported(node.role(), &request)
                    }
                };
                node.reply(conn, reply.to_frame(frame.request_id));
            }
        }
    }
}

/// The role of the peers that send a data-server each kind it takes from peers.
fn sender_role(kind: Kind) -> Option<Role> {
    match kind {
        Kind::WriteChunk | Kind::WriteAck | Kind::ReadBlock | Kind::BlockData => {
            Some(Role::DServer)
        }
        Kind::Repair | Kind::DeleteReplica | Kind::BlockCommitted => Some(Role::MServer),
        _ => None,
    }
}

impl DataServer {
    /// A message from peer `from`, of a kind and role [`sender_role`] accepted.
    fn handle_peer(
        &mut self,
        node: &mut Node,
        now: Now,
        from: NodeId,
        request_id: u64,
        message: Message,
    ) {
        match message {
            Message::WriteChunk(chunk) => {
                self.handle_chunk(node, now, Upstream::Peer(from), None, request_id, chunk)
            }
            Message::WriteAck(ack) => self.handle_ack(node, now, from, request_id, ack),
            Message::ReadBlock(read) => {
                self.handle_read(ReplyTo::Peer(from), request_id, read, node)
            }
            Message::BlockData(data) => self.copy_data(node, now, from, request_id, data),
            Message::Repair(task) => self.start_copy(node, now, from, task),
            Message::DeleteReplica(block) => self.disk.submit(DiskJob::Delete { block }),
            Message::BlockCommitted(block) => self.disk.submit(DiskJob::Settle { block }),
            other => unreachable!("sender_role admits no kind {}", other.kind()),
        }
    }
}

/// Runs data-server `id` of the config at `config_path` until SIGTERM or SIGINT.
pub fn run(config_path: &Path, id: NodeId) -> Result<(), DataError> {
    let (config, settings) = settings::load(config_path).map_err(StartError::from)?;
    let (data_dir, node) = start_server(Role::DServer, &config, id)?;
    serve_node(&config, &settings, id, &data_dir, node)
}

/// Runs data-server `id` of `config` on `listener`, which the caller bound, until `stop` is
/// stopped: a server inside another program, as tests start one on a port they picked.
pub fn serve(
    config: &Config,
    id: NodeId,
    listener: TcpListener,
    stop: &Stop,
) -> Result<(), DataError> {
    let settings = Settings::of(config).map_err(StartError::from)?;
    let (data_dir, node) = start_in_process(Role::DServer, config, id, listener, stop)?;
    serve_node(config, &settings, id, &data_dir, node)
}

fn serve_node(
    config: &Config,
    settings: &Settings,
    id: NodeId,
    data_dir: &DataDir,
    mut node: Node,
) -> Result<(), DataError> {
    info!("data directory {}", data_dir.path().display());
    let capacity = config.server(id).and_then(|s| s.capacity).unwrap_or(0);
    let store = Arc::new(BlockStore::open(data_dir.path(), capacity)?);
    let disk = DiskPool::start(Arc::clone(&store), node.notifier());
    disk.start_scrubber(settings.heal.scrub_bytes_per_sec, settings.heal.scrub_interval);
    let rate = settings.heal.repair_bytes_per_sec;
    let mut server = DataServer::new(id, config.secret.clone(), store, disk, rate);
    node.run(&mut server).map_err(|e| StartError::Node(NodeError::Loop(e)))?;
    info!("stopped");
    Ok(())
}

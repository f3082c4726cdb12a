//! Block data: writes down a replica chain, verified reads, and whole files on top.
//!
//! - [`DataClient::write_block`] streams a block to the first data-server of its chain in
//!   1 MiB chunks, at most [`WRITE_WINDOW`] unacknowledged, and returns once the last
//!   acknowledgement says the block is durable on every replica.
//! - [`DataClient::read_block`] asks the replicas in order of measured latency, checks every
//!   segment's CRC-32 itself, and on any failure (down, refused, damaged) goes to the next.
//! - [`put`] and [`get`] move whole files (from any reader, to any writer) one block at a time:
//!   never the whole file in memory.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use log::warn;
use meshfs_core::descriptor::BlockDescriptor;
use meshfs_core::namespace::BlockMeta;
use meshfs_core::token::Token;
use meshfs_core::token::{ReadToken, ReplicaProof, WriteDigest};
use meshfs_core::wire::{
    BlockData, ErrorCode, MAX_CHUNK_BYTES, Message, ReadBlock, WriteAck, WriteChunk,
};
use meshfs_group::NodeId;

use crate::access::Access;
use crate::connection::Connection;
use crate::error::ClientError;
use crate::meta::MetaClient;

/// The address of data-server `replica` as this client knows it (for messages).
fn conn_addr(data: &DataClient, replica: NodeId) -> std::net::SocketAddr {
    data.conns.get(&replica).map_or(std::net::SocketAddr::from(([0, 0, 0, 0], 0)), Connection::addr)
}

/// What a block write leaves for its commit: the lease's token, the digest of what this
/// client sent, and each replica's signed digest of what it wrote (the leader commits only
/// when they all match).
#[derive(Debug, Clone)]
pub struct WriteReceipt {
    /// The lease the write was made under.
    pub token: Token,
    /// The digest of the chunks sent.
    pub digest: [u8; 32],
    /// The replicas' proofs, from the chain's last acknowledgement.
    pub proofs: Vec<ReplicaProof>,
}

/// Chunks a block write may have unacknowledged.
pub const WRITE_WINDOW: usize = 4;
/// How long a data-server may take to acknowledge a chunk or answer a read.
const DATA_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections to data-servers, opened on demand and kept.
#[derive(Debug)]
pub struct DataClient {
    access: Access,
    conns: HashMap<NodeId, Connection>,
    /// How long connecting to each data-server took: the read order.
    latency: HashMap<NodeId, Duration>,
    /// Replicas found down or damaged, to report to the meta-servers.
    bad: Vec<(BlockDescriptor, NodeId, String)>,
}

impl DataClient {
    /// A data client of the cluster `access` reaches (the data-servers' addresses come from
    /// its cluster map).
    pub fn new(access: &Access) -> DataClient {
        DataClient {
            access: access.clone(),
            conns: HashMap::new(),
            latency: HashMap::new(),
            bad: Vec::new(),
        }
    }

    fn conn(&mut self, server: NodeId) -> Result<&mut Connection, ClientError> {
        if !self.conns.contains_key(&server) {
            let addr = self.access.dserver(server)?;
            let started = Instant::now();
            let (cluster, credentials) = (&self.access.cluster, &self.access.credentials);
            let conn = Connection::open(addr, cluster, credentials, DATA_TIMEOUT)?;
            self.latency.insert(server, started.elapsed());
            self.conns.insert(server, conn);
        }
        Ok(self.conns.get_mut(&server).expect("inserted above"))
    }

    /// Writes `data` at `offset` of the block the `token` leases, down its chain; returns
    /// when every replica has it durably.
    pub fn write_block(
        &mut self,
        token: &Token,
        block_size: u32,
        offset: u64,
        data: &[u8],
        keep_existing: bool,
    ) -> Result<WriteReceipt, ClientError> {
        let first = *token.replicas.first().ok_or_else(|| ClientError::DataWrite {
            block: token.block.to_string(),
            reason: "the lease names no data-server".into(),
            failed: None,
        })?;
        let result = self.write_to(first, token, block_size, offset, data, keep_existing);
        if result.is_err() {
            // The connection may be mid-stream: start clean next time.
            self.conns.remove(&first);
        }
        result.map_err(|err| match err {
            err @ ClientError::DataWrite { .. } => err,
            // Could not reach the first replica, or it stopped answering: a failure of
            // the data-server itself (one after it in the chain is reported by it).
            other => ClientError::DataWrite {
                block: token.block.to_string(),
                reason: format!("data-server {first}: {other}"),
                failed: Some(first),
            },
        })
    }

    fn write_to(
        &mut self,
        first: NodeId,
        token: &Token,
        block_size: u32,
        offset: u64,
        data: &[u8],
        keep_existing: bool,
    ) -> Result<WriteReceipt, ClientError> {
        let block = token.block.to_string();
        let conn = self.conn(first)?;
        let id = conn.next_request_id();
        let end = offset + data.len() as u64;
        let pieces: Vec<&[u8]> = if data.is_empty() {
            vec![&[][..]]
        } else {
            data.chunks(MAX_CHUNK_BYTES as usize).collect()
        };
        let count = pieces.len();
        let mut sent = 0;
        let mut digest = WriteDigest::new(&token.block);
        let mut acked_through = offset;
        let mut at = offset;
        loop {
            // Keep the window full.
            while sent < count
                && (sent as u64)
                    < (acked_through - offset) / u64::from(MAX_CHUNK_BYTES) + WRITE_WINDOW as u64
            {
                let piece = pieces[sent];
                let chunk = WriteChunk {
                    token: token.clone(),
                    block_size,
                    keep_existing,
                    offset: at,
                    last: sent + 1 == count,
                    data: piece.to_vec(),
                };
                digest.add(at, piece);
                conn.send(&Message::WriteChunk(chunk), id)?;
                at += piece.len() as u64;
                sent += 1;
            }
            let (reply_id, message) = conn.recv(Instant::now() + DATA_TIMEOUT)?;
            if reply_id != id {
                continue;
            }
            match message {
                Message::WriteAck(WriteAck::Written { through, committed }) => {
                    acked_through = acked_through.max(through);
                    if committed && acked_through >= end {
                        // Without proofs (a data-server of an older build): the leader
                        // will not commit it, and says so.
                        let proofs = Vec::new();
                        return Ok(WriteReceipt {
                            token: token.clone(),
                            digest: digest.finish(),
                            proofs,
                        });
                    }
                }
                Message::WriteAck(WriteAck::Committed { through, proofs }) => {
                    acked_through = acked_through.max(through);
                    if acked_through >= end {
                        let digest = digest.finish();
                        return Ok(WriteReceipt { token: token.clone(), digest, proofs });
                    }
                }
                Message::WriteAck(WriteAck::Failed { at, message }) => {
                    return Err(ClientError::DataWrite {
                        block,
                        reason: format!("data-server {at}: {message}"),
                        failed: Some(at),
                    });
                }
                other => {
                    return Err(ClientError::DataWrite {
                        block,
                        reason: format!("unexpected reply kind {}", other.kind()),
                        failed: None,
                    });
                }
            }
        }
    }

    /// Takes the replicas found down or damaged since the last call.
    pub fn take_bad_replicas(&mut self) -> Vec<(BlockDescriptor, NodeId, String)> {
        std::mem::take(&mut self.bad)
    }

    /// Reads `len` bytes at `offset` of `block` from one of `replicas` (lowest latency
    /// first), checking every segment; a replica that fails or returns damaged data is
    /// skipped (and named in the log) and the next one tried.
    ///
    /// Every read shows the block's read token (`meta.read`, from the leader with the file's
    /// blocks); a refusal of it ([`ClientError::Forbidden`]) ends the read at once.
    pub fn read_block(
        &mut self,
        meta: &BlockMeta,
        offset: u64,
        len: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), ClientError> {
        let block = meta.descriptor;
        if block.version == meshfs_core::descriptor::BlockVersion::UNWRITTEN {
            // Allocated, never written: a hole.
            out.resize(out.len() + len as usize, 0);
            return Ok(());
        }
        let Some(token) = meta.read else {
            return Err(ClientError::DataRead {
                block: block.to_string(),
                reason:
                    "permission denied: this client may not read it (the leader gave no read token)"
                        .into(),
            });
        };
        let mut order: Vec<NodeId> = meta.replicas.clone();
        order.sort_by_key(|r| self.latency.get(r).copied().unwrap_or(Duration::MAX));
        let mut failures = Vec::new();
        for replica in order {
            let start = out.len();
            match self.read_from(replica, block, token, offset, len, out) {
                Ok(()) => return Ok(()),
                Err(err @ ClientError::Forbidden { .. }) => return Err(err),
                Err(err) => {
                    warn!(
                        "reading {block} from data-server {replica} failed: {err}; trying the next replica"
                    );
                    out.truncate(start);
                    self.conns.remove(&replica);
                    failures.push(format!("{replica}: {err}"));
                    self.bad.push((block, replica, err.to_string()));
                }
            }
        }
        Err(ClientError::DataRead { block: block.to_string(), reason: failures.join("; ") })
    }

    fn read_from(
        &mut self,
        replica: NodeId,
        block: BlockDescriptor,
        token: ReadToken,
        offset: u64,
        len: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), ClientError> {
        let Some(end) = offset.checked_add(len) else {
            return Err(ClientError::DataRead {
                block: block.to_string(),
                reason: format!("range {offset}+{len} is past any block"),
            });
        };
        let mut at = offset;
        while at < end {
            // At most one chunk's worth; the reply checks it against its segments' checksums.
            let span = (end - at).min(u64::from(MAX_CHUNK_BYTES));
            let conn = self.conn(replica)?;
            let id = conn.next_request_id();
            let read = ReadBlock { block, offset: at, len: span as u32 };
            conn.send(&Message::TokenRead { read, token }, id)?;
            let message = loop {
                let (reply_id, message) = conn.recv(Instant::now() + DATA_TIMEOUT)?;
                if reply_id == id {
                    break message;
                }
            };
            match message {
                Message::BlockData(BlockData::Range(range)) => {
                    let failed =
                        |reason: String| ClientError::DataRead { block: block.to_string(), reason };
                    range.verify().map_err(|e| failed(e.to_string()))?;
                    let asked = end - at;
                    if range.offset != at
                        || range.data.is_empty()
                        || range.data.len() as u64 > asked
                    {
                        return Err(failed(format!(
                            "{} bytes at {} in reply to a read at {at}",
                            range.data.len(),
                            range.offset
                        )));
                    }
                    out.extend_from_slice(&range.data);
                    at += range.data.len() as u64;
                }
                Message::BlockData(BlockData::Failed { message }) => {
                    return Err(ClientError::DataRead {
                        block: block.to_string(),
                        reason: message,
                    });
                }
                Message::Error { code: ErrorCode::Forbidden, message } => {
                    return Err(ClientError::Forbidden { addr: conn_addr(self, replica), message });
                }
                other => {
                    return Err(ClientError::DataRead {
                        block: block.to_string(),
                        reason: format!("unexpected reply kind {}", other.kind()),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Progress of a transfer, for a progress display.
pub trait Progress {
    /// `done` bytes of `total` (if known) have moved.
    fn update(&mut self, done: u64, total: Option<u64>);
}

impl Progress for () {
    fn update(&mut self, _done: u64, _total: Option<u64>) {}
}

/// Times a block write is tried again, each time without the data-server that failed.
pub const WRITE_RETRIES: u8 = 2;

/// After `err` from writing under `token`: if a known data-server failed and the block was
/// never written, has the leader put another in its place and returns a new lease for the
/// new chain. Otherwise (or if that fails) an error saying why there is no retry.
pub fn lease_without_failed(
    meta: &mut MetaClient,
    path: &str,
    token: &Token,
    err: ClientError,
) -> Result<Token, ClientError> {
    let ClientError::DataWrite { block, reason, failed: Some(bad) } = err else { return Err(err) };
    if token.base != meshfs_core::descriptor::BlockVersion::UNWRITTEN {
        // Its bytes are on the replicas: a new one needs a repair copy first (issue 6).
        return Err(ClientError::DataWrite { block, reason, failed: Some(bad) });
    }
    let index = token.block.index;
    warn!("writing {block} failed ({reason}); trying again without data-server {bad}");
    meta.swap_replica(path, index, bad).and_then(|()| meta.write_lease(path, index)).map_err(
        |again| ClientError::DataWrite {
            block,
            reason: format!("{reason}; and no retry: {again}"),
            failed: Some(bad),
        },
    )
}

/// Settles a block write: `outcome` is how the write under `token` went; while it failed
/// at a data-server, the leader swaps that server out ([`lease_without_failed`]) and `write`
/// goes again under the new lease, at most [`WRITE_RETRIES`] times. Returns the receipt of
/// the write that succeeded, to commit.
pub fn retry_write(
    meta: &mut MetaClient,
    path: &str,
    mut token: Token,
    mut outcome: Result<WriteReceipt, ClientError>,
    mut write: impl FnMut(&Token) -> Result<WriteReceipt, ClientError>,
) -> Result<WriteReceipt, ClientError> {
    let mut tries = 0;
    loop {
        let err = match outcome {
            Ok(receipt) => return Ok(receipt),
            Err(err) => err,
        };
        if tries == WRITE_RETRIES {
            return Err(err);
        }
        token = lease_without_failed(meta, path, &token, err)?;
        tries += 1;
        outcome = write(&token);
    }
}

/// Inputs up to this size are put with [`MetaClient::create_write`].
const SMALL_PUT_BYTES: u64 = 1 << 20;

/// Puts `bytes` (at most one block) as the new file `remote`: create it with a lease in one
/// round, write the block down its chain (again without a failed data-server, as [`put`]),
/// commit. Returns the bytes written.
fn put_small(
    meta: &mut MetaClient,
    data: &mut DataClient,
    remote: &str,
    replication: u8,
    bytes: &[u8],
) -> Result<u64, ClientError> {
    let len = bytes.len() as u64;
    let token = meta.create_write(remote, replication, len)?;
    // The block is the file's first and only one: any bound at or above its length holds.
    let bound = u32::try_from(meta.block_size()?).unwrap_or(u32::MAX);
    let mut write = |token: &Token| data.write_block(token, bound, 0, bytes, false);
    let first = write(&token);
    let receipt = retry_write(meta, remote, token, first, write)?;
    meta.commit_write(remote, &receipt)?;
    Ok(len)
}

/// One block of a put on its way to the data-servers.
struct PutBlock {
    token: Token,
    /// The block's bytes; the buffer is reused for a later block once this one is done
    /// (fresh 64 MiB buffers cost a page fault and a zeroed page per 4 KiB).
    bytes: Vec<u8>,
    tries: u8,
}

/// [`put`] that replaces `remote` if it exists, atomically: the bytes go to a new file
/// beside it (`.NAME.put-SESSION`, a name of this client's own), which then takes
/// `remote`'s place in one step. A reader sees the old file or the new one whole, never a
/// mix; if the put fails, the old file is untouched and the new one is removed.
pub fn put_replacing(
    meta: &mut MetaClient,
    data: &mut DataClient,
    reader: &mut impl Read,
    remote: &str,
    replication: u8,
    total: Option<u64>,
    progress: &mut impl Progress,
) -> Result<u64, ClientError> {
    let path =
        meshfs_core::path::MeshPath::parse(remote).map_err(|e| ClientError::Namespace(e.into()))?;
    let Some((dir, name)) = path.split_last() else {
        return Err(ClientError::Namespace(meshfs_core::error::NsError::Root));
    };
    let dir = dir.as_str().trim_end_matches('/');
    let temp = format!("{dir}/.{name}.put-{:016x}", meta.session());
    let written = match put(meta, data, reader, &temp, replication, total, progress) {
        Ok(n) => n,
        Err(err) => {
            let _ = meta.remove(&temp, false);
            return Err(err);
        }
    };
    if let Err(err) = meta.rename_over(&temp, remote) {
        let _ = meta.remove(&temp, false);
        return Err(err);
    }
    Ok(written)
}

/// Creates `remote` and writes everything `reader` gives into it, block by block: grow the
/// file (the leader places the block), lease the block, stream it down its chain, commit it.
/// While one block streams, the next is read and leased, so two blocks are in flight (at most
/// three in memory). When a data-server of a chain fails, the leader puts another in its
/// place and the block is sent again (at most [`WRITE_RETRIES`] times). Returns the bytes
/// written, all durable on every replica and committed. `replication` 0 is the cluster's
/// default.
pub fn put(
    meta: &mut MetaClient,
    data: &mut DataClient,
    reader: &mut impl Read,
    remote: &str,
    replication: u8,
    total: Option<u64>,
    progress: &mut impl Progress,
) -> Result<u64, ClientError> {
    // A small input goes in one consensus round for create, expand and lease, then its
    // write, then the commit (instead of four rounds and a read).
    let mut head = Vec::new();
    let probe = SMALL_PUT_BYTES.min(meta.block_size()?.saturating_sub(1));
    reader
        .by_ref()
        .take(probe + 1)
        .read_to_end(&mut head)
        .map_err(|e| ClientError::Local { what: "reading the input".into(), source: e })?;
    if !head.is_empty() && head.len() as u64 <= probe {
        let written = put_small(meta, data, remote, replication, &head)?;
        progress.update(written, total);
        return Ok(written);
    }
    let mut reader = std::io::Cursor::new(head).chain(reader);
    let reader = &mut reader;
    meta.create(remote, replication)?;
    let block_size = meta.get_file_meta_data(remote)?.block_size;
    std::thread::scope(|scope| {
        let (blocks, queue) = std::sync::mpsc::sync_channel::<PutBlock>(1);
        let (done_tx, done) =
            std::sync::mpsc::channel::<(PutBlock, Result<WriteReceipt, ClientError>)>();
        let writer = scope.spawn(move || {
            for block in queue {
                let result = data.write_block(&block.token, block_size, 0, &block.bytes, false);
                if done_tx.send((block, result)).is_err() {
                    return;
                }
            }
        });
        let mut written = 0u64;
        let mut in_flight = 0usize;
        let mut spare: Vec<Vec<u8>> = Vec::new();
        // A block counts once its write is committed: durable everywhere, and visible. A
        // block whose chain failed goes again without the failed data-server.
        let mut finish = |meta: &mut MetaClient,
                          (block, result): (PutBlock, Result<WriteReceipt, ClientError>),
                          in_flight: &mut usize,
                          spare: &mut Vec<Vec<u8>>|
         -> Result<(), ClientError> {
            *in_flight -= 1;
            match result {
                Ok(receipt) => {
                    meta.commit_write(remote, &receipt)?;
                    written += block.bytes.len() as u64;
                    progress.update(written, total);
                    spare.push(block.bytes);
                    Ok(())
                }
                Err(err) if block.tries < WRITE_RETRIES => {
                    let again = lease_without_failed(meta, remote, &block.token, err)?;
                    let retry =
                        PutBlock { token: again, bytes: block.bytes, tries: block.tries + 1 };
                    blocks.send(retry).map_err(|_| ClientError::DataWrite {
                        block: block.token.block.to_string(),
                        reason: "the block writer stopped".into(),
                        failed: None,
                    })?;
                    *in_flight += 1;
                    Ok(())
                }
                Err(err) => Err(err),
            }
        };
        let mut offered = 0u64;
        let mut index: u16 = 0;
        let mut outcome = Ok(());
        loop {
            // Read up to a block; the buffer grows with what arrives (a 4 KiB file must not
            // cost a zeroed 64 MiB buffer), and a reused one already has the room.
            let mut buf = spare.pop().unwrap_or_default();
            buf.clear();
            let n = match reader.by_ref().take(u64::from(block_size)).read_to_end(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    outcome =
                        Err(ClientError::Local { what: "reading the input".into(), source: e });
                    break;
                }
            };
            if n == 0 {
                break;
            }
            buf.truncate(n);
            let leased = meta
                .expand_file_size(remote, offered + n as u64)
                .and_then(|_| meta.write_lease(remote, index));
            let token = match leased {
                Ok(token) => token,
                Err(err) => {
                    outcome = Err(err);
                    break;
                }
            };
            offered += n as u64;
            if blocks.send(PutBlock { token, bytes: buf, tries: 0 }).is_err() {
                break; // the writer stopped; what it finished is settled below
            }
            in_flight += 1;
            while let Ok(finished) = done.try_recv() {
                if let Err(err) = finish(meta, finished, &mut in_flight, &mut spare) {
                    outcome = Err(err);
                }
            }
            if outcome.is_err() || (n as u64) < u64::from(block_size) {
                break;
            }
            index = match index.checked_add(1) {
                Some(i) => i,
                None => {
                    outcome = Err(ClientError::DataWrite {
                        block: format!("{remote} block 65536"),
                        reason: "a file has at most 65,536 blocks".into(),
                        failed: None,
                    });
                    break;
                }
            };
        }
        // Settle every block still on its way (retries included).
        while in_flight > 0 {
            let Ok(finished) = done.recv() else { break };
            if let Err(err) = finish(meta, finished, &mut in_flight, &mut spare)
                && outcome.is_ok()
            {
                outcome = Err(err);
            }
        }
        drop(blocks);
        writer.join().expect("the block writer does not panic");
        outcome.map(|()| written)
    })
}

/// Reads `remote` whole into `writer`, one piece at a time, every segment verified.
pub fn get(
    meta: &mut MetaClient,
    data: &mut DataClient,
    remote: &str,
    writer: &mut impl Write,
    progress: &mut impl Progress,
) -> Result<u64, ClientError> {
    let mut file = meta.get_file_meta_data(remote)?;
    let mut done = 0u64;
    let mut buf = Vec::with_capacity(MAX_CHUNK_BYTES as usize);
    for index in 0..file.blocks.len() {
        let block_start =
            u64::from(file.blocks[index].descriptor.index) * u64::from(file.block_size);
        let block_len = file.size.saturating_sub(block_start).min(u64::from(file.block_size));
        let mut at = 0;
        while at < block_len {
            let n = (block_len - at).min(u64::from(MAX_CHUNK_BYTES));
            buf.clear();
            let mut read = data.read_block(&file.blocks[index], at, n, &mut buf);
            if let Err(ClientError::Forbidden { .. }) = read {
                // A long read outlived its read tokens: fresh ones, for the same file.
                let fresh = meta.get_file_meta_data(remote)?;
                if fresh.descriptor.id != file.descriptor.id
                    || fresh.blocks.get(index).map(|b| b.descriptor.version)
                        != Some(file.blocks[index].descriptor.version)
                {
                    return Err(ClientError::DataRead {
                        block: file.blocks[index].descriptor.to_string(),
                        reason: format!("{remote} changed while it was read"),
                    });
                }
                file.blocks = fresh.blocks;
                buf.clear();
                read = data.read_block(&file.blocks[index], at, n, &mut buf);
            }
            // Tell the meta-servers about replicas that failed, whether or not another served.
            for (block, server, reason) in data.take_bad_replicas() {
                if let Err(err) = meta.report_bad_replica(block, server, &reason) {
                    warn!("could not report data-server {server} for block {block}: {err}");
                }
            }
            read?;
            writer
                .write_all(&buf)
                .map_err(|e| ClientError::Local { what: "writing the output".into(), source: e })?;
            at += n;
            done += n;
            progress.update(done, Some(file.size));
        }
    }
    writer
        .flush()
        .map_err(|e| ClientError::Local { what: "writing the output".into(), source: e })?;
    Ok(done)
}

//! Namespace calls: the client side of the meta-servers' protocol.
//!
//! A [`MetaClient`] finds the leader (any meta-server answers "not leader, try N"), follows
//! it across elections, and retries a request until it is answered or its deadline passes.
//! Every retry of one call carries the same session number (random per client) and request
//! id, and the meta-servers remember each session's last outcome: a create retried after a
//! leader change is applied once, and the retry gets the original answer (the file), not
//! "already exists".

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meshfs_core::descriptor::FileDescriptor;
use meshfs_core::namespace::{DirEntry, Stat, XattrSet};
use meshfs_core::path::MeshPath;
use meshfs_core::wire::{FsckReport, MAX_LIST_PAGE, Message, MetaOp, MetaReply, MetaRequest};
use meshfs_group::NodeId;

use crate::access::Access;
use crate::connection::Connection;
use crate::error::ClientError;

/// How long one call may take, retries included, before it fails.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one attempt waits for an answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

/// A namespace client. Not thread-safe: one per thread.
#[derive(Debug)]
pub struct MetaClient {
    access: Access,
    session: u64,
    next_request: u64,
    leader: Option<NodeId>,
    conns: HashMap<NodeId, Connection>,
    timeout: Duration,
    /// The local user (uid, gids) this client acts for, if it is a trusted one doing so.
    acting_for: Option<(u32, Vec<u32>)>,
    /// The bits [`MetaClient::mkdir`] and [`MetaClient::create`] clear from 0o777 and
    /// 0o666: the process's umask unless [`MetaClient::set_umask`] says otherwise.
    umask: u16,
}

/// The process's file mode creation mask, as the kernel keeps it (`Umask:` in
/// `/proc/self/status`, read without changing it); 0o022 where that cannot be read.
pub fn process_umask() -> u16 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Umask:"))
        .and_then(|bits| u16::from_str_radix(bits.trim(), 8).ok())
        .map_or(0o022, |bits| bits & 0o777)
}

impl MetaClient {
    /// From now on, every call acts for local user `uid` with groups `gids` (a trusted
    /// client only, such as a mount; the meta-servers refuse it from any other).
    pub fn act_for(&mut self, uid: u32, gids: Vec<u32>) {
        self.acting_for = Some((uid, gids));
    }

    /// A client of the cluster `access` reaches, acting as its credentials.
    pub fn new(access: &Access) -> Result<MetaClient, ClientError> {
        let mut seed = [0u8; 8];
        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed)).map_err(
            |e| ClientError::Launch { program: "/dev/urandom".into(), reason: e.to_string() },
        )?;
        MetaClient::with_session(access, u64::from_be_bytes(seed), 1)
    }

    /// A client using session number `session`, numbering its requests from
    /// `first_request`: a second client of one session (a lock session's KeepAlives) must
    /// number its requests apart from the first's.
    pub fn with_session(
        access: &Access,
        session: u64,
        first_request: u64,
    ) -> Result<MetaClient, ClientError> {
        Ok(MetaClient {
            access: access.clone(),
            session,
            next_request: first_request,
            // Where another client of this access last found the leader: a fresh client
            // does not first wait on a meta-server that is down or paused.
            leader: access.leader_hint(),
            conns: HashMap::new(),
            timeout: DEFAULT_CALL_TIMEOUT,
            acting_for: None,
            umask: process_umask(),
        })
    }

    /// The mask new directories and files get their modes through (0o777 at most).
    pub fn set_umask(&mut self, umask: u16) {
        self.umask = umask & 0o777;
    }

    /// The mask in use.
    pub fn umask(&self) -> u16 {
        self.umask
    }

    /// The session number its requests carry.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// The client it acts as.
    pub fn client_id(&self) -> meshfs_group::ClientId {
        self.access.credentials.id
    }

    /// How it reaches the cluster.
    pub fn access(&self) -> &Access {
        &self.access
    }

    /// Sets how long one call may take, retries included.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The leader last seen.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    fn mservers(&self) -> Vec<NodeId> {
        self.access.mservers.iter().map(|(id, _)| *id).collect()
    }

    fn attempt(
        &mut self,
        target: NodeId,
        request: &MetaRequest,
        left: Duration,
        attempt_timeout: Duration,
    ) -> Result<MetaReply, ClientError> {
        let timeout = left.min(attempt_timeout);
        if !self.conns.contains_key(&target) {
            let addr = self.access.mserver(target).ok_or_else(|| ClientError::Protocol {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                detail: format!("meta-server {target} is not in this client's config"),
            })?;
            let conn =
                Connection::open(addr, &self.access.cluster, &self.access.credentials, timeout)?;
            self.conns.insert(target, conn);
        }
        let conn = self.conns.get_mut(&target).expect("inserted above");
        conn.set_timeout(timeout);
        match conn.call(&Message::MetaRequest(request.clone()))? {
            Message::MetaReply(reply) => Ok(reply),
            other => Err(ClientError::Protocol {
                addr: conn.addr(),
                detail: format!("expected a namespace reply, got message kind {}", other.kind()),
            }),
        }
    }

    /// Sends `op` to the leader, following redirects and retrying until answered or the
    /// call's timeout passes. Namespace refusals come back as [`MetaReply::Failed`].
    pub fn call(&mut self, op: MetaOp) -> Result<MetaReply, ClientError> {
        self.call_waiting(op, Duration::ZERO)
    }

    /// [`MetaClient::call`] for a request the leader may hold for up to `wait` before it
    /// answers (a lock wait): each attempt, and the call, may take that much longer.
    pub fn call_waiting(&mut self, op: MetaOp, wait: Duration) -> Result<MetaReply, ClientError> {
        let op = match &self.acting_for {
            Some((uid, gids)) => MetaOp::ActAs { uid: *uid, gids: gids.clone(), op: Box::new(op) },
            None => op,
        };
        let request = MetaRequest { session: self.session, request_id: self.next_request, op };
        self.next_request += 1;
        let mservers = self.mservers();
        let attempt_timeout = ATTEMPT_TIMEOUT + wait;
        let timeout = self.timeout + wait;
        let deadline = Instant::now() + timeout;
        let mut target = self.leader.unwrap_or(mservers[0]);
        let mut last_error = String::from("no answer");
        let mut pause = Duration::from_millis(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::NoLeader { after: timeout, last: last_error });
            }
            let next = || {
                let at = mservers.iter().position(|&m| m == target).unwrap_or(0);
                mservers[(at + 1) % mservers.len()]
            };
            match self.attempt(target, &request, left, attempt_timeout) {
                Ok(MetaReply::NotLeader { leader: Some(leader) })
                    if leader != target && mservers.contains(&leader) =>
                {
                    last_error = format!("{target} is not the leader");
                    target = leader;
                    continue;
                }
                Ok(MetaReply::NotLeader { .. }) => {
                    last_error =
                        format!("{target} is not the leader and knows none (an election?)");
                    target = next();
                }
                Ok(MetaReply::Unavailable(why)) => {
                    last_error = format!("{target}: {why}");
                    target = next();
                }
                Ok(reply) => {
                    self.leader = Some(target);
                    self.access.set_leader_hint(Some(target));
                    return Ok(reply);
                }
                Err(err) => {
                    last_error = err.to_string();
                    self.conns.remove(&target);
                    if self.leader == Some(target) {
                        self.leader = None;
                        if self.access.leader_hint() == Some(target) {
                            self.access.set_leader_hint(None);
                        }
                    }
                    target = next();
                }
            }
            std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    fn path(text: &str) -> Result<MeshPath, ClientError> {
        MeshPath::parse(text).map_err(|e| ClientError::Namespace(e.into()))
    }

    fn expect(reply: MetaReply) -> Result<MetaReply, ClientError> {
        match reply {
            MetaReply::Failed(err) => Err(ClientError::Namespace(err)),
            other => Ok(other),
        }
    }

    fn unexpected(reply: &MetaReply) -> ClientError {
        ClientError::Protocol {
            addr: "0.0.0.0:0".parse().expect("literal"),
            detail: format!("unexpected reply {reply:?}"),
        }
    }

    /// `mkdir` (with `parents`, `mkdir -p`), mode 0o777 less the umask.
    pub fn mkdir(&mut self, path: &str, parents: bool) -> Result<(), ClientError> {
        self.mkdir_mode(path, parents, 0o777 & !self.umask)
    }

    /// `mkdir` with exactly the mode bits `mode` (at most 0o7777; the umask is not
    /// applied: a caller that has one, such as a mount, applied it). Parents `parents`
    /// makes get `mode` and the owner's write and search.
    pub fn mkdir_mode(&mut self, path: &str, parents: bool, mode: u16) -> Result<(), ClientError> {
        let path = Self::path(path)?;
        let mode = Some(Self::mode_bits(mode)?);
        Self::expect(self.call(MetaOp::Mkdir { path, parents, mode })?).map(|_| ())
    }

    /// `create_file_meta_data`: a new empty file, mode 0o666 less the umask; fails if the
    /// name exists. `replication` 0 means the cluster's default.
    pub fn create(&mut self, path: &str, replication: u8) -> Result<FileDescriptor, ClientError> {
        self.create_mode(path, replication, 0o666 & !self.umask)
    }

    /// [`MetaClient::create`] with exactly the mode bits `mode` (at most 0o7777).
    pub fn create_mode(
        &mut self,
        path: &str,
        replication: u8,
        mode: u16,
    ) -> Result<FileDescriptor, ClientError> {
        let path = Self::path(path)?;
        let mode = Some(Self::mode_bits(mode)?);
        match Self::expect(self.call(MetaOp::Create { path, replication, mode })?)? {
            MetaReply::Created(fd) => Ok(fd),
            other => Err(Self::unexpected(&other)),
        }
    }

    fn mode_bits(mode: u16) -> Result<u16, ClientError> {
        if mode > meshfs_core::namespace::access::MODE_BITS {
            return Err(ClientError::BadMode(mode));
        }
        Ok(mode)
    }

    /// A new file of `size` bytes (1 byte to one block, mode 0o666 less the umask) with a
    /// write lease on its only block, in one consensus round: the small file's create,
    /// expand and lease at once. Write the block under the token, then
    /// [`MetaClient::commit_write`] it.
    pub fn create_write(
        &mut self,
        path: &str,
        replication: u8,
        size: u64,
    ) -> Result<meshfs_core::token::Token, ClientError> {
        let path = Self::path(path)?;
        let mode = Some(0o666 & !self.umask);
        match Self::expect(self.call(MetaOp::CreateWrite { path, replication, size, mode })?)? {
            MetaReply::Lease(token) => Ok(token),
            other => Err(Self::unexpected(&other)),
        }
    }

    /// The cluster's block size for new files (from the cluster map).
    pub fn block_size(&self) -> Result<u64, ClientError> {
        self.access.block_size()
    }

    /// `rename`: `to` must not exist.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<(), ClientError> {
        let (from, to) = (Self::path(from)?, Self::path(to)?);
        Self::expect(self.call(MetaOp::Rename { from, to, replace: false })?).map(|_| ())
    }

    /// `rename(2)`: `from` takes `to`'s place in one step, replacing what is there (a file
    /// by a file, an empty directory by a directory).
    pub fn rename_over(&mut self, from: &str, to: &str) -> Result<(), ClientError> {
        let (from, to) = (Self::path(from)?, Self::path(to)?);
        Self::expect(self.call(MetaOp::Rename { from, to, replace: true })?).map(|_| ())
    }

    /// `link`: `to` (which must not exist) becomes a second name of the file (or symlink,
    /// or special file) at `from`: a hard link. Directories have one name.
    pub fn link(&mut self, from: &str, to: &str) -> Result<(), ClientError> {
        let (from, to) = (Self::path(from)?, Self::path(to)?);
        Self::expect(self.call(MetaOp::Link { from, to })?).map(|_| ())
    }

    /// `setxattr`: attribute `name` (`user.` and more) of the file or directory at `path`
    /// takes `value` (at most 64 KiB; an inode holds at most 64 KiB of them).
    pub fn set_xattr(
        &mut self,
        path: &str,
        name: &str,
        value: &[u8],
        how: XattrSet,
    ) -> Result<(), ClientError> {
        let path = Self::path(path)?;
        let (name, value) = (name.to_string(), value.to_vec());
        Self::expect(self.call(MetaOp::SetXattr { path, name, value, how })?).map(|_| ())
    }

    /// `removexattr`.
    pub fn remove_xattr(&mut self, path: &str, name: &str) -> Result<(), ClientError> {
        let path = Self::path(path)?;
        let name = name.to_string();
        Self::expect(self.call(MetaOp::RemoveXattr { path, name })?).map(|_| ())
    }

    /// `getxattr`: an attribute's value.
    pub fn get_xattr(&mut self, path: &str, name: &str) -> Result<Vec<u8>, ClientError> {
        let path = Self::path(path)?;
        let name = name.to_string();
        match Self::expect(self.call(MetaOp::GetXattr { path, name })?)? {
            MetaReply::Xattr(value) => Ok(value),
            other => Err(Self::unexpected(&other)),
        }
    }

    /// `listxattr`: the names of the inode's attributes, in order.
    pub fn list_xattr(&mut self, path: &str) -> Result<Vec<String>, ClientError> {
        let path = Self::path(path)?;
        match Self::expect(self.call(MetaOp::ListXattr { path })?)? {
            MetaReply::XattrNames(names) => Ok(names),
            other => Err(Self::unexpected(&other)),
        }
    }

    /// `chmod`: `mode`'s bits (at most 0o7777) on `path`; its owner or an operator.
    pub fn chmod(&mut self, path: &str, mode: u16) -> Result<(), ClientError> {
        let path = Self::path(path)?;
        let mode = Self::mode_bits(mode)?;
        Self::expect(self.call(MetaOp::Chmod { path, mode })?).map(|_| ())
    }

    /// `chown`: `path` owned by `uid` and group `gid` (another owner: an operator only).
    pub fn chown(&mut self, path: &str, uid: u32, gid: u32) -> Result<(), ClientError> {
        let path = Self::path(path)?;
        Self::expect(self.call(MetaOp::Chown { path, uid, gid })?).map(|_| ())
    }

    /// `symlink` (`kind` Symlink, `target` what it points to) or `mknod` (a fifo, device
    /// with number `rdev`, or socket) with mode bits `mode`.
    pub fn make_node(
        &mut self,
        path: &str,
        kind: meshfs_core::namespace::NodeType,
        target: &str,
        rdev: u32,
        mode: u16,
    ) -> Result<(), ClientError> {
        let path = Self::path(path)?;
        let (target, mode) = (target.to_string(), Self::mode_bits(mode)?);
        Self::expect(self.call(MetaOp::MakeNode { path, kind, target, rdev, mode })?).map(|_| ())
    }

    /// Shrinks a file to `size` (at most its size) in the namespace: blocks past it go.
    /// [`crate::file::RemoteFile::set_len`] zeroes the last block's tail first, and grows.
    pub fn truncate(&mut self, path: &str, size: u64) -> Result<(), ClientError> {
        let path = Self::path(path)?;
        Self::expect(self.call(MetaOp::Truncate { path, size })?).map(|_| ())
    }

    /// `utimens`: `path`'s access and modification times as asked.
    pub fn set_times(
        &mut self,
        path: &str,
        atime: meshfs_core::namespace::SetTime,
        mtime: meshfs_core::namespace::SetTime,
    ) -> Result<(), ClientError> {
        let path = Self::path(path)?;
        Self::expect(self.call(MetaOp::SetTimes { path, atime, mtime })?).map(|_| ())
    }

    /// `remove` (with `recursive`, a whole tree); returns (files, directories) removed.
    pub fn remove(&mut self, path: &str, recursive: bool) -> Result<(u64, u64), ClientError> {
        let path = Self::path(path)?;
        match Self::expect(self.call(MetaOp::Remove { path, recursive })?)? {
            MetaReply::Removed { files, dirs } => Ok((files, dirs)),
            other => Err(Self::unexpected(&other)),
        }
    }

    /// `fsck`: every block of the files at or under `path`, checked against the
    /// data-servers' reports by the leader.
    pub fn fsck(&mut self, path: &str) -> Result<FsckReport, ClientError> {
        let path = Self::path(path)?;
        match Self::expect(self.call(MetaOp::Fsck { path })?)? {
            MetaReply::Fsck(report) => Ok(report),
            other => Err(Self::unexpected(&other)),
        }
    }

    /// Marks data-server `server` draining (its blocks move to the others), or clears it.
    pub fn drain(&mut self, server: u32, draining: bool) -> Result<(), ClientError> {
        let op = MetaOp::Drain { server: NodeId(server), draining };
        match Self::expect(self.call(op)?)? {
            MetaReply::Done => Ok(()),
            other => Err(Self::unexpected(&other)),
        }
    }

    /// `expand_file_size`: grows a file to `size` bytes; the leader places its new blocks on
    /// live data-servers. Returns the file at its new version and how many blocks it gained.
    pub fn expand_file_size(
        &mut self,
        path: &str,
        size: u64,
    ) -> Result<(FileDescriptor, u32), ClientError> {
        let path = Self::path(path)?;
        match Self::expect(self.call(MetaOp::Expand { path, size })?)? {
            MetaReply::Expanded { file, new_blocks } => Ok((file, new_blocks)),
            other => Err(Self::unexpected(&other)),
        }
    }

    /// A write lease on block `index` of `path` (through Raft): the token names the block at
    /// a new version, the committed version it starts from, its chain of data-servers and the
    /// expiry. Readers see the new version once [`MetaClient::commit_write`] is done.
    pub fn write_lease(
        &mut self,
        path: &str,
        index: u16,
    ) -> Result<meshfs_core::token::Token, ClientError> {
        let path = Self::path(path)?;
        match Self::expect(self.call(MetaOp::WriteLease { path, index })?)? {
            MetaReply::Lease(token) => Ok(token),
            other => Err(Self::unexpected(&other)),
        }
    }

    /// Commits the write `receipt` describes (acknowledged by every replica, each proving
    /// what it wrote): its version becomes the block's, and readers see the new bytes from
    /// here on. The leader refuses it unless every replica proves the digest sent.
    pub fn commit_write(
        &mut self,
        path: &str,
        receipt: &crate::data::WriteReceipt,
    ) -> Result<(), ClientError> {
        let path = Self::path(path)?;
        let (index, version) = (receipt.token.block.index, receipt.token.block.version);
        let (digest, proofs) = (receipt.digest, receipt.proofs.clone());
        let op = MetaOp::CommitProven { path, index, version, digest, proofs };
        match Self::expect(self.call(op)?)? {
            MetaReply::Done => Ok(()),
            other => Err(Self::unexpected(&other)),
        }
    }

    /// Asks the leader to put another data-server in place of `failed` in the chain of
    /// block `index` of `path`: only for the holder of the block's lease, and only while
    /// the block was never written. Lease again for the new chain.
    pub fn swap_replica(
        &mut self,
        path: &str,
        index: u16,
        failed: meshfs_group::NodeId,
    ) -> Result<(), ClientError> {
        let path = Self::path(path)?;
        match Self::expect(self.call(MetaOp::SwapReplica { path, index, failed })?)? {
            MetaReply::Done => Ok(()),
            other => Err(Self::unexpected(&other)),
        }
    }

    /// Tells the meta-servers a replica was down or damaged when read.
    pub fn report_bad_replica(
        &mut self,
        block: meshfs_core::descriptor::BlockDescriptor,
        server: meshfs_group::NodeId,
        reason: &str,
    ) -> Result<(), ClientError> {
        Self::expect(self.call(MetaOp::ReportBadReplica {
            block,
            server,
            reason: reason.to_string(),
        })?)
        .map(|_| ())
    }

    /// `get_file_meta_data`: a file's descriptor, size and every block with its replicas.
    pub fn get_file_meta_data(
        &mut self,
        path: &str,
    ) -> Result<meshfs_core::namespace::FileMeta, ClientError> {
        match self.stat(path)? {
            Stat::File(meta) => Ok(meta),
            Stat::Dir { .. } => Err(ClientError::Namespace(
                meshfs_core::error::NsError::IsADirectory(path.to_string()),
            )),
            Stat::Other { kind, .. } => Err(ClientError::Namespace(
                meshfs_core::error::NsError::NotFound(format!("{path} ({kind:?}): a file")),
            )),
        }
    }

    /// `stat` / `get_file_meta_data`, with every block of a file (fetched in pages).
    pub fn stat(&mut self, path: &str) -> Result<Stat, ClientError> {
        let path = Self::path(path)?;
        let mut first_block = 0;
        let mut whole: Option<Stat> = None;
        loop {
            let reply = Self::expect(self.call(MetaOp::Stat { path: path.clone(), first_block })?)?;
            let MetaReply::Stat { stat, total_blocks, .. } = reply else {
                return Err(Self::unexpected(&reply));
            };
            match (&mut whole, stat) {
                (None, Stat::File(meta)) => {
                    first_block = meta.blocks.len() as u32;
                    whole = Some(Stat::File(meta));
                }
                (Some(Stat::File(all)), Stat::File(meta)) => {
                    if meta.descriptor != all.descriptor {
                        // The file changed between pages: start over for a consistent view.
                        first_block = 0;
                        whole = None;
                        continue;
                    }
                    first_block += meta.blocks.len() as u32;
                    all.blocks.extend(meta.blocks);
                }
                (_, dir) => return Ok(dir),
            }
            if first_block >= total_blocks {
                return Ok(whole.expect("set above"));
            }
        }
    }

    /// Every entry of directory `path` with its stat (a file's without blocks), in as many
    /// pages as it takes: what `ls -l` and a mount's readdirplus need, in one round a page.
    pub fn list_plus(&mut self, path: &str) -> Result<Vec<(String, Stat)>, ClientError> {
        let path = Self::path(path)?;
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let op =
                MetaOp::ListPlus { path: path.clone(), after: after.clone(), limit: MAX_LIST_PAGE };
            let reply = Self::expect(self.call(op)?)?;
            let MetaReply::ListPlus { entries, more } = reply else {
                return Err(Self::unexpected(&reply));
            };
            match entries.last() {
                Some((last, _)) => after = last.clone(),
                // More promised with nothing given: asking again would give the same.
                None if more => {
                    return Err(Self::unexpected(&MetaReply::ListPlus { entries, more }));
                }
                None => {}
            }
            all.extend(entries);
            if !more {
                return Ok(all);
            }
        }
    }

    /// `list`: every entry of a directory by name (fetched in pages), or a file's own entry.
    pub fn list(&mut self, path: &str) -> Result<Vec<DirEntry>, ClientError> {
        let path = Self::path(path)?;
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let op =
                MetaOp::List { path: path.clone(), after: after.clone(), limit: MAX_LIST_PAGE };
            let reply = Self::expect(self.call(op)?)?;
            let MetaReply::List { entries, more } = reply else {
                return Err(Self::unexpected(&reply));
            };
            if let Some(last) = entries.last() {
                after = last.name.clone();
            }
            all.extend(entries);
            if !more {
                return Ok(all);
            }
        }
    }
}

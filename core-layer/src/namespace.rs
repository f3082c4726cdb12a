//! The metadata state machine: directories, files, block lists; changed only by [`Entry`]s.
//!
//! Every meta-server applies the same committed entries in the same order with
//! [`Namespace::apply`] and so holds the same state, byte for byte ([`Namespace::snapshot`]
//! proves it). Applying is pure: the time, the placement of new blocks and the request's
//! identity all travel in the entry; nothing is read from a clock or the network here.
//!
//! Retries: every entry names the client session and request that made it. The namespace
//! remembers each session's last request and its outcome, so a request committed twice
//! (a client retrying across a leader change) is applied once and both answers agree: a
//! retried create gets its own file back, not "already exists".
//!
//! Memory, for the 1,000,000-file goal (at most 200 resident bytes per file): inode ids are
//! dense and never reused, so inodes live in an [`Inodes`] table of fixed pages indexed by id
//! (no hashing, no rehash doubling, waste at most one page); a directory keeps its children
//! as `BTreeMap<Box<str>, u32>`; a file keeps its blocks in a boxed slice. Measured with
//! `cargo bench -p meshfs-core --bench namespace_memory` (see BENCHMARKS.md).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use meshfs_group::{ClientId, NodeId};
use meshfs_net::body::{BodyError, BodyReader, BodyWriter};

use crate::descriptor::{
    BlockDescriptor, BlockVersion, FileDescriptor, FileId, MAX_BLOCKS_PER_FILE, MAX_REPLICAS,
    read_replicas, write_replicas,
};
use crate::locks::{LockMode, LockResult, LockTable, Wake, WakeResult};
use crate::path::{MeshPath, PathError, read_path, write_path};

/// The root directory's id.
pub const ROOT_ID: u32 = 1;
/// Sessions idle longer than this (by entry time) are forgotten.
pub const SESSION_TTL_MS: u64 = 60 * 60 * 1000;
/// Idle sessions are swept every this many applied entries.
const SESSION_SWEEP_EVERY: u64 = 4096;
/// How long a write lease lasts, by the leader's clock in its entry. Its token expires at the
/// same moment; until then no other session gets a lease on the block.
pub const LEASE_MS: u64 = 60_000;
/// Above this many inodes, debug builds check invariants every [`SESSION_SWEEP_EVERY`]
/// entries instead of after every one (the check is O(n)).
const INVARIANT_CHECK_EVERY_ENTRY_MAX: usize = 4096;

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
    /// The namespace ran out of ids (2^32 inodes made in the cluster's life).
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

/// A change to the namespace, as proposed by the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Make a directory; with `parents`, make missing parents and accept an existing one.
    Mkdir {
        /// The directory.
        path: MeshPath,
        /// `mkdir -p`.
        parents: bool,
    },
    /// `create_file_meta_data`: a new empty file; fails if the name exists.
    CreateFile {
        /// The file.
        path: MeshPath,
        /// Copies of each block.
        replication: u8,
        /// Block size in bytes.
        block_size: u32,
    },
    /// A new file of `size` bytes (1 byte to one block) whose block is placed on
    /// `placement` and leased to the entry's session: create, expand and lease in one
    /// entry. All or nothing: if any step fails, the file is not left behind.
    CreateWrite {
        /// The file.
        path: MeshPath,
        /// Copies of its block.
        replication: u8,
        /// Block size in bytes.
        block_size: u32,
        /// Its size.
        size: u64,
        /// The block's replica set, as the leader chose.
        placement: Vec<NodeId>,
    },
    /// `expand_file_size`: grow a file to `size`, adding blocks placed as the leader chose.
    ExpandFile {
        /// The file.
        path: MeshPath,
        /// The new size.
        size: u64,
        /// The block index the first replica set is for. Applying uses the sets for the
        /// blocks the file lacks then, so two expands racing for one file both apply.
        first_block: u32,
        /// One replica set per block from `first_block`, in index order.
        placement: Vec<Vec<NodeId>>,
    },
    /// A write lease on block `index` of a file for the entry's session: a new version to
    /// write, starting from the committed one. Readers keep reading the committed version
    /// until the writer commits.
    WriteLease {
        /// The file.
        path: MeshPath,
        /// The block.
        index: u16,
    },
    /// The write under the session's lease is durable on every replica: `version` becomes
    /// the block's committed version (and the file's version goes up).
    CommitWrite {
        /// The file.
        path: MeshPath,
        /// The block.
        index: u16,
        /// The leased version written.
        version: BlockVersion,
    },
    /// The lease holder's chain failed at data-server `failed` before the block was ever
    /// written: `replacement` (the leader's choice) takes its place. The holder leases again
    /// for the new chain.
    SwapReplica {
        /// The file.
        path: MeshPath,
        /// The block.
        index: u16,
        /// The data-server that failed.
        failed: NodeId,
        /// The one taking its place.
        replacement: NodeId,
    },
    /// Repair (the leader's): data-server `add` now holds a verified copy of block `index`
    /// of file `file` at `version` and takes `remove`'s place in its replica set. Refused if
    /// the block moved on (another version, a lease in force) or the set changed meanwhile.
    ReplaceReplica {
        /// The file's id (repair works by id: a rename meanwhile changes nothing).
        file: u32,
        /// The block.
        index: u16,
        /// The block version that was copied.
        version: BlockVersion,
        /// The data-server leaving the set.
        remove: NodeId,
        /// The data-server joining it.
        add: NodeId,
    },
    /// Mark a data-server draining (its blocks move off it and it gets no new ones), or
    /// take the mark off.
    SetDraining {
        /// The data-server.
        server: NodeId,
        /// Draining or not.
        draining: bool,
    },
    /// Move `from` to `to` atomically; `to` must not exist.
    Rename {
        /// The source.
        from: MeshPath,
        /// The destination.
        to: MeshPath,
    },
    /// Remove a file, an empty directory, or with `recursive` a whole tree.
    Remove {
        /// The path.
        path: MeshPath,
        /// `rm -r`.
        recursive: bool,
    },
    /// Open the entry's session as a lock session (a retry renews it).
    OpenSession {
        /// Its lease length.
        lease_ms: u64,
        /// How long its locks stay ungranted if it expires holding them.
        lock_delay_ms: u64,
    },
    /// Renew the entry's session's lease from the entry's time. Not deduplicated: applying
    /// it twice is the same as once.
    KeepAlive,
    /// Close the entry's session: its locks are released at once, its waits end.
    CloseSession,
    /// Take a lock for the entry's session, or wait for it.
    Lock {
        /// The lock.
        path: MeshPath,
        /// Shared or exclusive.
        mode: LockMode,
        /// `None`: try only; else wait this long at most.
        wait_ms: Option<u64>,
    },
    /// Give back one hold of a lock, or cancel a wait for it.
    Unlock {
        /// The lock.
        path: MeshPath,
    },
    /// Time passes (the leader's): the sessions named end if their lease ran out by the
    /// entry's time, waits past their deadline end, lock-delays that ended let grants go.
    /// Not deduplicated.
    Clock {
        /// Sessions the leader saw lapse.
        expire: Vec<SessionId>,
    },
}

/// One log entry: who asked, when (the leader's clock), and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The client session.
    pub session: SessionId,
    /// The request's number in its session; increasing.
    pub request_id: u64,
    /// Milliseconds since the Unix epoch, by the leader's clock when it proposed.
    pub time_ms: u64,
    /// The change.
    pub command: Command,
}

/// What applying an entry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A directory was made (or, with parents, already was).
    Mkdir,
    /// A file was made.
    Created(FileDescriptor),
    /// A file grew; these blocks were added.
    Expanded {
        /// The file at its new version.
        file: FileDescriptor,
        /// The new blocks.
        blocks: Vec<BlockDescriptor>,
    },
    /// A write lease was granted: the block at its new version, and its chain.
    Leased {
        /// The block at the lease's version.
        block: BlockDescriptor,
        /// The committed version the write starts from.
        base: BlockVersion,
        /// Its data-servers, in chain order.
        replicas: Vec<NodeId>,
        /// When the lease ends (the leader's clock, ms since the epoch).
        expires_ms: u64,
    },
    /// A block's replica was swapped: its new chain.
    Swapped {
        /// The block's data-servers now.
        replicas: Vec<NodeId>,
    },
    /// A leased write was committed: the block at its new committed version.
    Committed {
        /// The block.
        block: BlockDescriptor,
        /// Its data-servers.
        replicas: Vec<NodeId>,
    },
    /// Moved.
    Renamed,
    /// A data-server's draining mark was set or cleared.
    Draining {
        /// The data-server.
        server: NodeId,
        /// Draining now or not.
        draining: bool,
    },
    /// A lock session was opened (or renewed).
    SessionOpened {
        /// Its lease length.
        lease_ms: u64,
        /// Its lock-delay.
        lock_delay_ms: u64,
        /// When its lease ends.
        expires_ms: u64,
    },
    /// A lock session's lease was renewed.
    KeptAlive {
        /// When it ends now.
        expires_ms: u64,
    },
    /// A lock was granted at once.
    LockGranted {
        /// Its sequencer.
        sequencer: u64,
    },
    /// A lock request waits in the lock's queue; a [`Wake`] in a later entry's outcome
    /// ends the wait.
    LockQueued,
    /// Locks were released or time passed: these waits ended.
    Woke {
        /// The waits that ended.
        wakes: Vec<Wake>,
    },
    /// Removed this many files and directories.
    Removed {
        /// Files removed.
        files: u64,
        /// Directories removed.
        dirs: u64,
    },
    /// Nothing changed, for this reason.
    Failed(NsError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Block {
    version: BlockVersion,
    replicas: Box<[NodeId]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct File {
    version: u32,
    block_size: u32,
    replication: u8,
    size: u64,
    ctime_ms: u64,
    mtime_ms: u64,
    /// Replaced whole when the file grows: growth is rare, and a boxed slice is 8 bytes
    /// smaller than a Vec on every file.
    blocks: Box<[Block]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Dir {
    children: BTreeMap<Box<str>, u32>,
    mtime_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir(Dir),
    File(File),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    parent: u32,
    kind: Kind,
}

/// Inodes per page of [`Inodes`].
const PAGE_SLOTS: usize = 1024;

/// Inodes by id: a vector of pages of [`PAGE_SLOTS`] slots. Ids are dense and never reused,
/// so lookups are two index operations and memory is the live pages only; a page is freed
/// when its last inode goes. Iterates in id order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Inodes {
    pages: Vec<Option<Page>>,
    len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Page {
    slots: Box<[Option<Node>]>,
    live: usize,
}

impl Inodes {
    fn locate(id: u32) -> (usize, usize) {
        (id as usize / PAGE_SLOTS, id as usize % PAGE_SLOTS)
    }

    fn get(&self, id: &u32) -> Option<&Node> {
        let (page, slot) = Inodes::locate(*id);
        self.pages.get(page)?.as_ref()?.slots[slot].as_ref()
    }

    fn get_mut(&mut self, id: &u32) -> Option<&mut Node> {
        let (page, slot) = Inodes::locate(*id);
        self.pages.get_mut(page)?.as_mut()?.slots[slot].as_mut()
    }

    fn insert(&mut self, id: u32, node: Node) -> Option<Node> {
        let (page, slot) = Inodes::locate(id);
        if self.pages.len() <= page {
            self.pages.resize_with(page + 1, || None);
        }
        let page = self.pages[page].get_or_insert_with(|| Page {
            slots: (0..PAGE_SLOTS).map(|_| None).collect(),
            live: 0,
        });
        let previous = page.slots[slot].replace(node);
        if previous.is_none() {
            page.live += 1;
            self.len += 1;
        }
        previous
    }

    fn remove(&mut self, id: &u32) -> Option<Node> {
        let (index, slot) = Inodes::locate(*id);
        let page = self.pages.get_mut(index)?.as_mut()?;
        let node = page.slots[slot].take()?;
        page.live -= 1;
        self.len -= 1;
        if page.live == 0 {
            self.pages[index] = None;
        }
        Some(node)
    }

    fn len(&self) -> usize {
        self.len
    }

    /// (id, node) in increasing id order.
    fn iter(&self) -> impl Iterator<Item = (u32, &Node)> {
        self.pages
            .iter()
            .enumerate()
            .filter_map(|(p, page)| page.as_ref().map(|page| (p, page)))
            .flat_map(|(p, page)| {
                page.slots.iter().enumerate().filter_map(move |(s, node)| {
                    node.as_ref().map(|node| ((p * PAGE_SLOTS + s) as u32, node))
                })
            })
    }
}

impl std::ops::Index<&u32> for Inodes {
    type Output = Node;

    fn index(&self, id: &u32) -> &Node {
        self.get(id).unwrap_or_else(|| panic!("inode {id} is not live"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Session {
    last_request: u64,
    last_time_ms: u64,
    outcome: Outcome,
}

/// What `stat` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stat {
    /// A directory.
    Dir {
        /// Its id.
        id: u32,
        /// Entries in it.
        entries: usize,
        /// Last change of its entries, ms since the epoch.
        mtime_ms: u64,
    },
    /// A file.
    File(FileMeta),
}

/// `get_file_meta_data`: a file's descriptor, size and blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// Its descriptor.
    pub descriptor: FileDescriptor,
    /// Size in bytes.
    pub size: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Copies of each block.
    pub replication: u8,
    /// Created, ms since the epoch.
    pub ctime_ms: u64,
    /// Last metadata change, ms since the epoch.
    pub mtime_ms: u64,
    /// Every block.
    pub blocks: Vec<BlockMeta>,
}

/// `get_block_metadata`: one block's descriptor and replica set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMeta {
    /// Its descriptor.
    pub descriptor: BlockDescriptor,
    /// The data-servers assigned to hold it.
    pub replicas: Vec<NodeId>,
}

/// One block as repair sees it, borrowed from the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockView<'a> {
    /// The block at its committed version (and its file at its version).
    pub descriptor: BlockDescriptor,
    /// The data-servers assigned to hold it.
    pub replicas: &'a [NodeId],
    /// Copies the file wants.
    pub replication: u8,
    /// The file's block size.
    pub block_size: u32,
}

impl<'a> BlockView<'a> {
    fn of(id: u32, file: &File, index: u16, block: &'a Block) -> BlockView<'a> {
        BlockView {
            descriptor: BlockDescriptor {
                file: FileDescriptor { id: FileId(id), version: file.version },
                index,
                version: block.version,
            },
            replicas: &block.replicas,
            replication: file.replication,
            block_size: file.block_size,
        }
    }

    /// Whether it was ever written (an unwritten block is zeros, held nowhere).
    pub fn written(&self) -> bool {
        self.descriptor.version != BlockVersion::UNWRITTEN
    }
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Its name.
    pub name: String,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// Its id.
    pub id: u32,
    /// Its size (0 for directories).
    pub size: u64,
}

/// The namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    nodes: Inodes,
    /// Bytes of blocks assigned to each data-server (derived from the block lists; not in
    /// snapshots, rebuilt on restore). The leader places new blocks by it.
    allocated: BTreeMap<NodeId, u64>,
    next_id: u32,
    sessions: HashMap<SessionId, Session>,
    /// Write leases in force (or run out but not yet replaced), by (file id, block index).
    leases: BTreeMap<(u32, u16), Lease>,
    /// Data-servers being drained: blocks move off them, none are placed on them.
    draining: BTreeSet<NodeId>,
    /// Lock sessions and locks.
    locks: LockTable,
    applied: u64,
}

/// A write lease on one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    holder: SessionId,
    /// The version the holder writes.
    version: BlockVersion,
    expires_ms: u64,
}

impl Default for Namespace {
    fn default() -> Namespace {
        Namespace::new()
    }
}

fn path_str(path: &MeshPath) -> String {
    path.as_str().to_string()
}

impl Namespace {
    /// An empty namespace: just `/`.
    pub fn new() -> Namespace {
        let mut nodes = Inodes::default();
        nodes.insert(
            ROOT_ID,
            Node {
                parent: ROOT_ID,
                kind: Kind::Dir(Dir { children: BTreeMap::new(), mtime_ms: 0 }),
            },
        );
        Namespace {
            nodes,
            allocated: BTreeMap::new(),
            next_id: ROOT_ID + 1,
            sessions: HashMap::new(),
            leases: BTreeMap::new(),
            draining: BTreeSet::new(),
            locks: LockTable::new(),
            applied: 0,
        }
    }

    /// Bytes of blocks the namespace assigns to each data-server.
    pub fn allocated(&self) -> &BTreeMap<NodeId, u64> {
        &self.allocated
    }

    /// Data-servers marked draining.
    pub fn draining(&self) -> &BTreeSet<NodeId> {
        &self.draining
    }

    /// Lock sessions and locks.
    pub fn lock_table(&self) -> &LockTable {
        &self.locks
    }

    /// Whether block `index` of file `file` has a write lease in force at `now_ms`.
    pub fn leased(&self, file: u32, index: u16, now_ms: u64) -> bool {
        self.leases.get(&(file, index)).is_some_and(|l| now_ms < l.expires_ms)
    }

    /// Block `index` of the file with id `file`, if both exist.
    pub fn block(&self, file: u32, index: u16) -> Option<BlockView<'_>> {
        let Kind::File(f) = &self.nodes.get(&file)?.kind else { return None };
        let block = f.blocks.get(usize::from(index))?;
        Some(BlockView::of(file, f, index, block))
    }

    /// Every block of every file, by file id and index.
    pub fn blocks(&self) -> impl Iterator<Item = BlockView<'_>> {
        self.nodes.iter().flat_map(|(id, node)| {
            let blocks: &[Block] = match &node.kind {
                Kind::File(f) => &f.blocks,
                Kind::Dir(_) => &[],
            };
            blocks.iter().enumerate().map(move |(i, block)| {
                let Kind::File(f) = &node.kind else { unreachable!("only files have blocks") };
                BlockView::of(id, f, i as u16, block)
            })
        })
    }

    /// Every file at or under `path`, with its full path and id, in name order.
    pub fn files_under(&self, path: &MeshPath) -> Result<Vec<(String, u32)>, NsError> {
        let id = self.lookup(path)?;
        let mut files = Vec::new();
        let start = if path.is_root() { String::new() } else { path_str(path) };
        let mut stack = vec![(id, start)];
        while let Some((id, name)) = stack.pop() {
            match &self.nodes[&id].kind {
                Kind::File(_) => files.push((if name.is_empty() { "/".into() } else { name }, id)),
                Kind::Dir(dir) => stack.extend(
                    dir.children.iter().rev().map(|(child, &cid)| (cid, format!("{name}/{child}"))),
                ),
            }
        }
        Ok(files)
    }

    fn compute_allocated(&self) -> BTreeMap<NodeId, u64> {
        let mut allocated = BTreeMap::new();
        for (_, node) in self.nodes.iter() {
            if let Kind::File(file) = &node.kind {
                for (i, block) in file.blocks.iter().enumerate() {
                    let bytes = block_span(file.size, file.block_size, i as u64);
                    for server in block.replicas.iter() {
                        *allocated.entry(*server).or_default() += bytes;
                    }
                }
            }
        }
        allocated
    }

    /// Entries applied so far.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Files and directories, the root included.
    pub fn inode_count(&self) -> usize {
        self.nodes.len()
    }

    // ---- lookups ----

    fn lookup(&self, path: &MeshPath) -> Result<u32, NsError> {
        let mut id = ROOT_ID;
        let mut walked = String::new();
        for component in path.components() {
            walked.push('/');
            walked.push_str(component);
            match &self.nodes[&id].kind {
                Kind::Dir(dir) => {
                    id = *dir
                        .children
                        .get(component)
                        .ok_or_else(|| NsError::NotFound(walked.clone()))?;
                }
                Kind::File(_) => return Err(NsError::NotADirectory(parent_text(&walked))),
            }
        }
        Ok(id)
    }

    /// The directory `path`'s parent must be, and `path`'s last name.
    fn parent_dir<'p>(&self, path: &'p MeshPath) -> Result<(u32, &'p str), NsError> {
        let (parent, name) = path.split_last().ok_or(NsError::Root)?;
        let id = self.lookup(&parent)?;
        match self.nodes[&id].kind {
            Kind::Dir(_) => Ok((id, name)),
            Kind::File(_) => Err(NsError::NotADirectory(path_str(&parent))),
        }
    }

    fn dir_mut(&mut self, id: u32) -> &mut Dir {
        match &mut self.nodes.get_mut(&id).expect("directory id is live").kind {
            Kind::Dir(dir) => dir,
            Kind::File(_) => panic!("inode {id} is not a directory"),
        }
    }

    fn file_meta(&self, id: u32) -> Option<FileMeta> {
        let Kind::File(file) = &self.nodes.get(&id)?.kind else { return None };
        let descriptor = FileDescriptor { id: FileId(id), version: file.version };
        let blocks = file
            .blocks
            .iter()
            .enumerate()
            .map(|(index, b)| BlockMeta {
                descriptor: BlockDescriptor {
                    file: descriptor,
                    index: index as u16,
                    version: b.version,
                },
                replicas: b.replicas.to_vec(),
            })
            .collect();
        Some(FileMeta {
            descriptor,
            size: file.size,
            block_size: file.block_size,
            replication: file.replication,
            ctime_ms: file.ctime_ms,
            mtime_ms: file.mtime_ms,
            blocks,
        })
    }

    /// `stat`.
    pub fn stat(&self, path: &MeshPath) -> Result<Stat, NsError> {
        let id = self.lookup(path)?;
        match &self.nodes[&id].kind {
            Kind::Dir(dir) => {
                Ok(Stat::Dir { id, entries: dir.children.len(), mtime_ms: dir.mtime_ms })
            }
            Kind::File(_) => Ok(Stat::File(self.file_meta(id).expect("id is a file"))),
        }
    }

    /// `get_file_meta_data`.
    pub fn get_file_meta_data(&self, path: &MeshPath) -> Result<FileMeta, NsError> {
        let id = self.lookup(path)?;
        self.file_meta(id).ok_or_else(|| NsError::IsADirectory(path_str(path)))
    }

    /// `get_block_metadata`: block `index` of the file at `path`.
    pub fn get_block_metadata(&self, path: &MeshPath, index: u16) -> Result<BlockMeta, NsError> {
        let meta = self.get_file_meta_data(path)?;
        meta.blocks.into_iter().nth(usize::from(index)).ok_or_else(|| {
            NsError::NotFound(format!("{path} block {index} (the file has fewer blocks)"))
        })
    }

    /// `list`: a directory's entries by name, or a file as its own single entry.
    pub fn list(&self, path: &MeshPath) -> Result<Vec<DirEntry>, NsError> {
        let id = self.lookup(path)?;
        let entry = |name: &str, id: u32| {
            let (is_dir, size) = match &self.nodes[&id].kind {
                Kind::Dir(_) => (true, 0),
                Kind::File(f) => (false, f.size),
            };
            DirEntry { name: name.to_string(), is_dir, id, size }
        };
        match &self.nodes[&id].kind {
            Kind::Dir(dir) => {
                Ok(dir.children.iter().map(|(name, &child)| entry(name, child)).collect())
            }
            Kind::File(_) => Ok(vec![entry(path.split_last().map_or("/", |(_, n)| n), id)]),
        }
    }

    /// A page of `list`: at most `limit` entries named after `after` (by byte order), and
    /// whether more follow.
    pub fn list_page(
        &self,
        path: &MeshPath,
        after: &str,
        limit: usize,
    ) -> Result<(Vec<DirEntry>, bool), NsError> {
        let id = self.lookup(path)?;
        let Kind::Dir(dir) = &self.nodes[&id].kind else {
            return Ok((self.list(path)?, false));
        };
        use std::ops::Bound::{Excluded, Unbounded};
        let start = if after.is_empty() { Unbounded } else { Excluded(after) };
        let mut entries = Vec::new();
        let mut names = dir.children.range::<str, _>((start, Unbounded));
        for (name, &child) in names.by_ref().take(limit) {
            let (is_dir, size) = match &self.nodes[&child].kind {
                Kind::Dir(_) => (true, 0),
                Kind::File(f) => (false, f.size),
            };
            entries.push(DirEntry { name: name.to_string(), is_dir, id: child, size });
        }
        Ok((entries, names.next().is_some()))
    }

    // ---- applying entries ----

    /// Applies one committed entry. Deterministic: same state and entry, same result.
    pub fn apply(&mut self, entry: &Entry) -> Outcome {
        self.applied += 1;
        let outcome = self.apply_once(entry);
        if self.applied.is_multiple_of(SESSION_SWEEP_EVERY) {
            self.sweep_sessions(entry.time_ms);
        }
        if cfg!(debug_assertions)
            && (self.nodes.len() <= INVARIANT_CHECK_EVERY_ENTRY_MAX
                || self.applied.is_multiple_of(SESSION_SWEEP_EVERY))
        {
            self.check_invariants();
        }
        outcome
    }

    fn apply_once(&mut self, entry: &Entry) -> Outcome {
        // Idempotent by nature, and sent beside the session's other requests: no dedupe.
        match &entry.command {
            Command::KeepAlive => {
                return match self.locks.keep_alive(entry.session, entry.time_ms) {
                    Ok(expires_ms) => Outcome::KeptAlive { expires_ms },
                    Err(err) => Outcome::Failed(err),
                };
            }
            Command::Clock { expire } => {
                let wakes = self.locks.clock(expire, entry.time_ms);
                self.settle_waits(&wakes);
                return Outcome::Woke { wakes };
            }
            _ => {}
        }
        if let Some(session) = self.sessions.get(&entry.session) {
            if entry.request_id == session.last_request {
                return session.outcome.clone();
            }
            if entry.request_id < session.last_request {
                return Outcome::Failed(NsError::Superseded {
                    request_id: entry.request_id,
                    last: session.last_request,
                });
            }
        }
        let outcome =
            match self.execute(&entry.command, entry.session, entry.request_id, entry.time_ms) {
                Ok(outcome) => outcome,
                Err(err) => Outcome::Failed(err),
            };
        let remembered = match &outcome {
            // The wakes were for other requests, answered once.
            Outcome::Woke { .. } => Outcome::Woke { wakes: Vec::new() },
            other => other.clone(),
        };
        let session = Session {
            last_request: entry.request_id,
            last_time_ms: entry.time_ms,
            outcome: remembered,
        };
        self.sessions.insert(entry.session, session);
        if let Outcome::Woke { wakes } = &outcome {
            self.settle_waits(wakes);
        }
        outcome
    }

    /// A wait that ended is its request's outcome now: a retry of the request (a client
    /// that reached a new leader) gets how it ended, not "queued".
    fn settle_waits(&mut self, wakes: &[Wake]) {
        for wake in wakes {
            let Some(session) = self.sessions.get_mut(&wake.session) else { continue };
            if session.last_request != wake.request_id {
                continue;
            }
            let path = path_str(&wake.path);
            session.outcome = match wake.result {
                WakeResult::Granted { sequencer } => Outcome::LockGranted { sequencer },
                WakeResult::TimedOut => Outcome::Failed(NsError::LockTimeout(path)),
                WakeResult::Cancelled => Outcome::Failed(NsError::LockCancelled(path)),
                WakeResult::SessionEnded => {
                    Outcome::Failed(NsError::SessionExpired { client: wake.session.client.0 })
                }
            };
        }
    }

    fn sweep_sessions(&mut self, now_ms: u64) {
        self.sessions.retain(|_, s| now_ms.saturating_sub(s.last_time_ms) <= SESSION_TTL_MS);
    }

    fn new_id(&mut self) -> Result<u32, NsError> {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).ok_or(NsError::OutOfIds)?;
        Ok(id)
    }

    fn execute(
        &mut self,
        command: &Command,
        session: SessionId,
        request_id: u64,
        now: u64,
    ) -> Result<Outcome, NsError> {
        match command {
            Command::Mkdir { path, parents } => self.mkdir(path, *parents, now),
            Command::CreateFile { path, replication, block_size } => {
                self.create_file(path, *replication, *block_size, now)
            }
            Command::ExpandFile { path, size, first_block, placement } => {
                self.expand(path, *size, *first_block, placement, now)
            }
            Command::CreateWrite { path, replication, block_size, size, placement } => {
                if *size == 0 || *size > u64::from(*block_size) {
                    return Err(NsError::BadSize {
                        path: path_str(path),
                        size: *size,
                        block_size: *block_size,
                    });
                }
                self.create_file(path, *replication, *block_size, now)?;
                let placement = std::slice::from_ref(placement);
                let leased = self
                    .expand(path, *size, 0, placement, now)
                    .and_then(|_| self.lease(path, 0, session, now));
                if leased.is_err() {
                    // Deterministic on every replica: the new file goes again.
                    self.remove(path, false, now).expect("the file was just made");
                }
                leased
            }
            Command::WriteLease { path, index } => self.lease(path, *index, session, now),
            Command::CommitWrite { path, index, version } => {
                self.commit_write(path, *index, *version, session, now)
            }
            Command::SwapReplica { path, index, failed, replacement } => {
                self.swap_replica(path, *index, *failed, *replacement, session, now)
            }
            Command::ReplaceReplica { file, index, version, remove, add } => {
                self.replace_replica(*file, *index, *version, *remove, *add, now)
            }
            Command::SetDraining { server, draining } => {
                if *draining {
                    self.draining.insert(*server);
                } else {
                    self.draining.remove(server);
                }
                Ok(Outcome::Draining { server: *server, draining: *draining })
            }
            Command::Rename { from, to } => self.rename(from, to, now),
            Command::Remove { path, recursive } => self.remove(path, *recursive, now),
            Command::OpenSession { lease_ms, lock_delay_ms } => {
                let expires_ms = self.locks.open(session, *lease_ms, *lock_delay_ms, now);
                let lock_delay_ms = *lock_delay_ms;
                Ok(Outcome::SessionOpened { lease_ms: *lease_ms, lock_delay_ms, expires_ms })
            }
            Command::CloseSession => {
                if self.locks.session(session).is_none() {
                    return Err(NsError::SessionExpired { client: session.client.0 });
                }
                Ok(Outcome::Woke { wakes: self.locks.end_session(session, false, now) })
            }
            Command::Lock { path, mode, wait_ms } => {
                match self.locks.lock(session, request_id, path, *mode, *wait_ms, now)? {
                    LockResult::Granted(sequencer) => Ok(Outcome::LockGranted { sequencer }),
                    LockResult::Queued => Ok(Outcome::LockQueued),
                }
            }
            Command::Unlock { path } => {
                Ok(Outcome::Woke { wakes: self.locks.unlock(session, path, now)? })
            }
            Command::KeepAlive | Command::Clock { .. } => {
                unreachable!("applied before deduplication")
            }
        }
    }

    fn insert_child(&mut self, parent: u32, name: &str, id: u32, node: Node, now: u64) {
        self.nodes.insert(id, node);
        let dir = self.dir_mut(parent);
        let previous = dir.children.insert(name.into(), id);
        assert!(previous.is_none(), "inserting {name:?} over an existing entry");
        dir.mtime_ms = now;
    }

    fn mkdir(&mut self, path: &MeshPath, parents: bool, now: u64) -> Result<Outcome, NsError> {
        if path.is_root() {
            return if parents {
                Ok(Outcome::Mkdir)
            } else {
                Err(NsError::AlreadyExists("/".into()))
            };
        }
        if !parents {
            let (parent, name) = self.parent_dir(path)?;
            if self.dir_child(parent, name).is_some() {
                return Err(NsError::AlreadyExists(path_str(path)));
            }
            let id = self.new_id()?;
            let node =
                Node { parent, kind: Kind::Dir(Dir { children: BTreeMap::new(), mtime_ms: now }) };
            self.insert_child(parent, name, id, node, now);
            return Ok(Outcome::Mkdir);
        }
        // Check the whole path before changing anything, so a failure leaves nothing behind.
        let mut id = ROOT_ID;
        let mut walked = String::new();
        let mut missing_from = None;
        for (depth, component) in path.components().enumerate() {
            walked.push('/');
            walked.push_str(component);
            match self.dir_child(id, component) {
                Some(child) => match self.nodes[&child].kind {
                    Kind::Dir(_) => id = child,
                    Kind::File(_) => return Err(NsError::NotADirectory(walked)),
                },
                None => {
                    missing_from = Some(depth);
                    break;
                }
            }
        }
        let Some(start) = missing_from else { return Ok(Outcome::Mkdir) };
        let missing: Vec<&str> = path.components().skip(start).collect();
        if self.next_id.checked_add(missing.len() as u32).is_none() {
            return Err(NsError::OutOfIds);
        }
        for name in missing {
            let child = self.new_id()?;
            let node = Node {
                parent: id,
                kind: Kind::Dir(Dir { children: BTreeMap::new(), mtime_ms: now }),
            };
            self.insert_child(id, name, child, node, now);
            id = child;
        }
        Ok(Outcome::Mkdir)
    }

    fn dir_child(&self, dir: u32, name: &str) -> Option<u32> {
        match &self.nodes[&dir].kind {
            Kind::Dir(d) => d.children.get(name).copied(),
            Kind::File(_) => None,
        }
    }

    fn create_file(
        &mut self,
        path: &MeshPath,
        replication: u8,
        block_size: u32,
        now: u64,
    ) -> Result<Outcome, NsError> {
        if !(1..=MAX_REPLICAS).contains(&replication) {
            return Err(NsError::BadReplication(replication));
        }
        assert!(block_size > 0, "block size 0 reached the state machine");
        let (parent, name) = self.parent_dir(path)?;
        if self.dir_child(parent, name).is_some() {
            return Err(NsError::AlreadyExists(path_str(path)));
        }
        let id = self.new_id()?;
        let file = File {
            version: 1,
            size: 0,
            block_size,
            replication,
            ctime_ms: now,
            mtime_ms: now,
            blocks: Box::new([]),
        };
        self.insert_child(parent, name, id, Node { parent, kind: Kind::File(file) }, now);
        Ok(Outcome::Created(FileDescriptor { id: FileId(id), version: 1 }))
    }

    fn expand(
        &mut self,
        path: &MeshPath,
        size: u64,
        first_block: u32,
        placement: &[Vec<NodeId>],
        now: u64,
    ) -> Result<Outcome, NsError> {
        let id = self.lookup(path)?;
        let Kind::File(file) = &mut self.nodes.get_mut(&id).expect("looked up").kind else {
            return Err(NsError::IsADirectory(path_str(path)));
        };
        if size < file.size {
            return Err(NsError::Shrink { path: path_str(path), size: file.size, requested: size });
        }
        let blocks = blocks_for(size, file.block_size);
        if blocks > u64::from(MAX_BLOCKS_PER_FILE) {
            return Err(NsError::FileTooLarge {
                path: path_str(path),
                size,
                block_size: file.block_size,
                blocks,
            });
        }
        let have = file.blocks.len() as u64;
        let first = u64::from(first_block);
        let needed = blocks.saturating_sub(have);
        // The sets for blocks have..blocks, out of those given from `first` on.
        let fresh: &[Vec<NodeId>] = if needed == 0 {
            &[]
        } else if first <= have && first + placement.len() as u64 >= blocks {
            &placement[(have - first) as usize..(blocks - first) as usize]
        } else {
            &placement[..0]
        };
        let well_formed = fresh.len() as u64 == needed
            && fresh.iter().all(|set| set.len() == usize::from(file.replication) && distinct(set));
        if !well_formed {
            return Err(NsError::BadPlacement {
                path: path_str(path),
                given: placement.len(),
                needed,
                replication: file.replication,
            });
        }
        let placement = fresh;
        // Each block counts the bytes of the file it covers: the old last block grows with
        // the file, and new blocks count what they hold (a small file takes little room).
        if let Some(last) = file.blocks.last() {
            let i = have - 1;
            let grow =
                block_span(size, file.block_size, i) - block_span(file.size, file.block_size, i);
            for server in last.replicas.iter().filter(|_| grow > 0) {
                *self.allocated.entry(*server).or_default() += grow;
            }
        }
        for (k, set) in placement.iter().enumerate() {
            let bytes = block_span(size, file.block_size, have + k as u64);
            for server in set {
                *self.allocated.entry(*server).or_default() += bytes;
            }
        }
        let Kind::File(file) = &mut self.nodes.get_mut(&id).expect("looked up").kind else {
            unreachable!("checked above")
        };
        let old_version = file.version;
        file.version = file.version.wrapping_add(1);
        assert!(file.version > old_version, "file {id} version wrapped past u32::MAX");
        file.size = size;
        file.mtime_ms = now;
        let first_new = file.blocks.len();
        let mut blocks = std::mem::take(&mut file.blocks).into_vec();
        blocks.extend(placement.iter().map(|set| Block {
            version: BlockVersion(1),
            replicas: set.clone().into_boxed_slice(),
        }));
        file.blocks = blocks.into_boxed_slice();
        let descriptor = FileDescriptor { id: FileId(id), version: file.version };
        let new_blocks = (first_new..file.blocks.len())
            .map(|index| BlockDescriptor {
                file: descriptor,
                index: index as u16,
                version: BlockVersion(1),
            })
            .collect();
        Ok(Outcome::Expanded { file: descriptor, blocks: new_blocks })
    }

    fn lease(
        &mut self,
        path: &MeshPath,
        index: u16,
        session: SessionId,
        now: u64,
    ) -> Result<Outcome, NsError> {
        let id = self.lookup(path)?;
        let Kind::File(file) = &self.nodes[&id].kind else {
            return Err(NsError::IsADirectory(path_str(path)));
        };
        let Some(block) = file.blocks.get(usize::from(index)) else {
            return Err(NsError::NotFound(format!(
                "{path} block {index} (the file has {} blocks)",
                file.blocks.len()
            )));
        };
        let base = block.version;
        let mut last = base;
        if let Some(lease) = self.leases.get(&(id, index)) {
            if lease.holder != session && now < lease.expires_ms {
                return Err(NsError::LeaseHeld {
                    path: path_str(path),
                    index,
                    client: lease.holder.client.0,
                    ms_left: lease.expires_ms - now,
                });
            }
            // A version once leased is never leased again: its bytes may be on a replica.
            if lease.version.is_newer_than(last) {
                last = lease.version;
            }
        }
        // Version 1 means "never written" (readers return zeros for it without asking a
        // data-server), so a lease never lands on it, even when the version wraps.
        let mut version = last.next();
        if version == BlockVersion::UNWRITTEN {
            version = version.next();
        }
        let expires_ms = now + LEASE_MS;
        let replicas = block.replicas.to_vec();
        let descriptor = FileDescriptor { id: FileId(id), version: file.version };
        self.leases.insert((id, index), Lease { holder: session, version, expires_ms });
        Ok(Outcome::Leased {
            block: BlockDescriptor { file: descriptor, index, version },
            base,
            replicas,
            expires_ms,
        })
    }

    fn commit_write(
        &mut self,
        path: &MeshPath,
        index: u16,
        version: BlockVersion,
        session: SessionId,
        now: u64,
    ) -> Result<Outcome, NsError> {
        let id = self.lookup(path)?;
        let Kind::File(file) = &mut self.nodes.get_mut(&id).expect("looked up").kind else {
            return Err(NsError::IsADirectory(path_str(path)));
        };
        let blocks = file.blocks.len();
        let Some(block) = file.blocks.get_mut(usize::from(index)) else {
            return Err(NsError::NotFound(format!(
                "{path} block {index} (the file has {blocks} blocks)"
            )));
        };
        match self.leases.get(&(id, index)) {
            // Even past its end: nobody else has leased the block since, so nothing newer
            // than this write can be on its replicas.
            Some(lease) if lease.holder == session && lease.version == version => {}
            _ => {
                return Err(NsError::LeaseLost { path: path_str(path), index, version: version.0 });
            }
        }
        self.leases.remove(&(id, index));
        block.version = version;
        let replicas = block.replicas.to_vec();
        let old_version = file.version;
        file.version = file.version.wrapping_add(1);
        assert!(file.version > old_version, "file {id} version wrapped past u32::MAX");
        file.mtime_ms = now;
        let descriptor = FileDescriptor { id: FileId(id), version: file.version };
        Ok(Outcome::Committed {
            block: BlockDescriptor { file: descriptor, index, version },
            replicas,
        })
    }

    fn swap_replica(
        &mut self,
        path: &MeshPath,
        index: u16,
        failed: NodeId,
        replacement: NodeId,
        session: SessionId,
        now: u64,
    ) -> Result<Outcome, NsError> {
        let id = self.lookup(path)?;
        let holds_lease = self
            .leases
            .get(&(id, index))
            .is_some_and(|l| l.holder == session && now < l.expires_ms);
        let Kind::File(file) = &mut self.nodes.get_mut(&id).expect("looked up").kind else {
            return Err(NsError::IsADirectory(path_str(path)));
        };
        let blocks = file.blocks.len();
        let Some(block) = file.blocks.get_mut(usize::from(index)) else {
            return Err(NsError::NotFound(format!(
                "{path} block {index} (the file has {blocks} blocks)"
            )));
        };
        let refuse = |why: String| Err(NsError::Placement(format!("{path} block {index}: {why}")));
        if !holds_lease {
            return refuse("only the writer holding its lease may change its replicas".into());
        }
        if block.version != BlockVersion::UNWRITTEN {
            // Its bytes live on the replicas: a new one must be copied first (repair).
            return refuse("it holds written data; its replicas change only by repair".into());
        }
        let Some(slot) = block.replicas.iter().position(|&r| r == failed) else {
            return refuse(format!("data-server {failed} is not one of its replicas"));
        };
        if block.replicas.contains(&replacement) {
            return refuse(format!("data-server {replacement} already holds it"));
        }
        block.replicas[slot] = replacement;
        let replicas = block.replicas.to_vec();
        let bytes = block_span(file.size, file.block_size, u64::from(index));
        self.move_allocation(failed, replacement, bytes);
        Ok(Outcome::Swapped { replicas })
    }

    /// `bytes` of assigned blocks move from data-server `from` to `to`.
    fn move_allocation(&mut self, from: NodeId, to: NodeId, bytes: u64) {
        if let Some(assigned) = self.allocated.get_mut(&from) {
            *assigned -= bytes;
            if *assigned == 0 {
                self.allocated.remove(&from);
            }
        }
        *self.allocated.entry(to).or_default() += bytes;
    }

    fn replace_replica(
        &mut self,
        file: u32,
        index: u16,
        version: BlockVersion,
        remove: NodeId,
        add: NodeId,
        now: u64,
    ) -> Result<Outcome, NsError> {
        let leased = self.leased(file, index, now);
        let refuse =
            |why: String| Err(NsError::Placement(format!("file {file} block {index}: {why}")));
        let Some(Kind::File(f)) = self.nodes.get_mut(&file).map(|n| &mut n.kind) else {
            return Err(NsError::NotFound(format!("file {file}")));
        };
        let Some(block) = f.blocks.get_mut(usize::from(index)) else {
            return Err(NsError::NotFound(format!("file {file} block {index}")));
        };
        if block.version != version {
            return refuse(format!("it is at version {} now, not {}", block.version.0, version.0));
        }
        if leased {
            return refuse("a write lease is in force".into());
        }
        let Some(slot) = block.replicas.iter().position(|&r| r == remove) else {
            return refuse(format!("data-server {remove} is not one of its replicas"));
        };
        if block.replicas.contains(&add) {
            return refuse(format!("data-server {add} already holds it"));
        }
        block.replicas[slot] = add;
        let replicas = block.replicas.to_vec();
        let bytes = block_span(f.size, f.block_size, u64::from(index));
        self.move_allocation(remove, add, bytes);
        Ok(Outcome::Swapped { replicas })
    }

    fn rename(&mut self, from: &MeshPath, to: &MeshPath, now: u64) -> Result<Outcome, NsError> {
        if from.is_root() || to.is_root() {
            return Err(NsError::Root);
        }
        let id = self.lookup(from)?;
        if from == to {
            return Ok(Outcome::Renamed);
        }
        if matches!(self.nodes[&id].kind, Kind::Dir(_)) && to.starts_with(from) {
            return Err(NsError::MoveIntoItself { from: path_str(from), to: path_str(to) });
        }
        let (new_parent, new_name) = self.parent_dir(to)?;
        if self.dir_child(new_parent, new_name).is_some() {
            return Err(NsError::AlreadyExists(path_str(to)));
        }
        let (_, old_name) = from.split_last().expect("not root");
        let old_parent = self.nodes[&id].parent;
        let old_dir = self.dir_mut(old_parent);
        old_dir.children.remove(old_name);
        old_dir.mtime_ms = now;
        let new_dir = self.dir_mut(new_parent);
        new_dir.children.insert(new_name.into(), id);
        new_dir.mtime_ms = now;
        self.nodes.get_mut(&id).expect("live").parent = new_parent;
        Ok(Outcome::Renamed)
    }

    fn remove(&mut self, path: &MeshPath, recursive: bool, now: u64) -> Result<Outcome, NsError> {
        if path.is_root() {
            return Err(NsError::Root);
        }
        let id = self.lookup(path)?;
        if let Kind::Dir(dir) = &self.nodes[&id].kind
            && !dir.children.is_empty()
            && !recursive
        {
            return Err(NsError::NotEmpty(path_str(path)));
        }
        let (_, name) = path.split_last().expect("not root");
        let parent = self.nodes[&id].parent;
        let dir = self.dir_mut(parent);
        dir.children.remove(name);
        dir.mtime_ms = now;
        let (mut files, mut dirs) = (0, 0);
        let mut stack = vec![id];
        while let Some(next) = stack.pop() {
            match self.nodes.remove(&next).expect("tree nodes are live").kind {
                Kind::Dir(dir) => {
                    dirs += 1;
                    stack.extend(dir.children.values());
                }
                Kind::File(file) => {
                    files += 1;
                    if !self.leases.is_empty() {
                        self.leases.retain(|&(file_id, _), _| file_id != next);
                    }
                    for (i, block) in file.blocks.iter().enumerate() {
                        let span = block_span(file.size, file.block_size, i as u64);
                        for server in block.replicas.iter() {
                            if let Some(bytes) = self.allocated.get_mut(server) {
                                *bytes -= span;
                                if *bytes == 0 {
                                    self.allocated.remove(server);
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(Outcome::Removed { files, dirs })
    }

    // ---- invariants ----

    /// Panics if the books disagree (see [`Namespace::violation`]).
    pub fn check_invariants(&self) {
        if let Some(violation) = self.violation() {
            panic!("namespace invariant broken: {violation}");
        }
    }

    /// The first broken invariant, if any: every inode but the root is the child of exactly
    /// one directory, which is its parent; no orphans; ids below `next_id`; file sizes agree
    /// with block lists; replica sets are distinct and of the file's replication.
    pub fn violation(&self) -> Option<String> {
        if let Some(violation) = self.locks.violation() {
            return Some(violation);
        }
        let Some(root) = self.nodes.get(&ROOT_ID) else {
            return Some("the root is missing".into());
        };
        if root.parent != ROOT_ID || !matches!(root.kind, Kind::Dir(_)) {
            return Some("the root must be a directory that is its own parent".into());
        }
        let mut linked = 1usize;
        for (id, node) in self.nodes.iter() {
            if id >= self.next_id {
                return Some(format!("inode {id} is not below next_id {}", self.next_id));
            }
            match &node.kind {
                Kind::Dir(dir) => {
                    for (name, child) in &dir.children {
                        if name.is_empty()
                            || name.contains('/')
                            || name.len() > crate::path::MAX_COMPONENT_LEN
                        {
                            return Some(format!("bad name {name:?} in directory {id}"));
                        }
                        match self.nodes.get(child) {
                            _ if *child == ROOT_ID => {
                                return Some(format!("the root is listed in {id}"));
                            }
                            None => {
                                return Some(format!("{id}/{name} names missing inode {child}"));
                            }
                            Some(c) if c.parent != id => {
                                return Some(format!(
                                    "{child}'s parent is {}, but {id} lists it",
                                    c.parent
                                ));
                            }
                            Some(_) => linked += 1,
                        }
                    }
                }
                Kind::File(file) => {
                    if file.version == 0 || file.block_size == 0 {
                        return Some(format!("file {id} has version or block size 0"));
                    }
                    if file.blocks.len() as u64 != blocks_for(file.size, file.block_size) {
                        return Some(format!(
                            "file {id}: {} blocks for {} bytes",
                            file.blocks.len(),
                            file.size
                        ));
                    }
                    for block in &file.blocks {
                        if block.replicas.len() != usize::from(file.replication)
                            || !distinct(&block.replicas)
                        {
                            return Some(format!("file {id}: replica set {:?}", block.replicas));
                        }
                    }
                }
            }
        }
        if linked != self.nodes.len() {
            return Some(format!("{} orphan inodes", self.nodes.len() - linked));
        }
        for (&(id, index), lease) in &self.leases {
            match self.nodes.get(&id).map(|n| &n.kind) {
                Some(Kind::File(file)) if usize::from(index) < file.blocks.len() => {
                    if lease.version == BlockVersion::UNWRITTEN {
                        return Some(format!("lease on {id}/{index} at the unwritten version"));
                    }
                }
                _ => return Some(format!("lease on {id}/{index}, which is not a block")),
            }
        }
        if self.allocated != self.compute_allocated() {
            return Some("per-data-server allocation disagrees with the block lists".into());
        }
        None
    }

    // ---- snapshots ----

    /// The whole state as bytes: the same state gives the same bytes on every replica.
    /// Layout (format 4): magic "MSNS", u16 format, u32 next_id, u64 applied, the inodes
    /// depth first from the root (children by name), sessions by id, write leases by block
    /// (format 1 has none), draining data-servers (formats 1 and 2 have none), the lock table
    /// (formats 1 to 3 have none), u32 CRC-32 of all before.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut w = BodyWriter::with_capacity(64 * self.nodes.len() + 64);
        w.fixed(SNAPSHOT_MAGIC).u16(SNAPSHOT_FORMAT).u32(self.next_id).u64(self.applied);
        w.u32(self.nodes.len() as u32);
        // Depth first from the root, so each inode is written with the name its parent
        // lists; children come in name order, so the bytes are the same on every replica.
        let mut stack: Vec<(u32, &str)> = vec![(ROOT_ID, "")];
        while let Some((id, name)) = stack.pop() {
            let node = &self.nodes[&id];
            w.u32(id).u32(node.parent).str(name);
            match &node.kind {
                Kind::Dir(dir) => {
                    w.u8(0).u64(dir.mtime_ms);
                    stack.extend(dir.children.iter().rev().map(|(name, &child)| (child, &**name)));
                }
                Kind::File(f) => {
                    w.u8(1).u32(f.version).u64(f.size).u32(f.block_size).u8(f.replication);
                    w.u64(f.ctime_ms).u64(f.mtime_ms).u32(f.blocks.len() as u32);
                    for block in &f.blocks {
                        w.u16(block.version.0);
                        write_replicas(&mut w, &block.replicas);
                    }
                }
            }
        }
        let mut sessions: Vec<(&SessionId, &Session)> = self.sessions.iter().collect();
        sessions.sort_unstable_by_key(|(id, _)| **id);
        w.u32(sessions.len() as u32);
        for (id, session) in sessions {
            id.write(&mut w);
            w.u64(session.last_request).u64(session.last_time_ms);
            write_outcome(&mut w, &session.outcome);
        }
        w.u32(self.leases.len() as u32);
        for (&(id, index), lease) in &self.leases {
            w.u32(id).u16(index).u32(lease.holder.client.0).u64(lease.holder.nonce);
            w.u16(lease.version.0).u64(lease.expires_ms);
        }
        w.u32(self.draining.len() as u32);
        for server in &self.draining {
            w.u32(server.0);
        }
        self.locks.write(&mut w);
        let mut bytes = w.finish();
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_be_bytes());
        bytes
    }

    /// Rebuilds a namespace from [`Namespace::snapshot`] bytes, checking everything.
    pub fn restore(bytes: &[u8]) -> Result<Namespace, SnapshotError> {
        if bytes.len() < 4 {
            return Err(SnapshotError::Truncated);
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_be_bytes(crc.try_into().expect("4 bytes"));
        if crc32fast::hash(body) != stored {
            return Err(SnapshotError::Checksum);
        }
        let mut r = BodyReader::new(body);
        if &r.fixed::<4>("magic")? != SNAPSHOT_MAGIC {
            return Err(SnapshotError::Magic);
        }
        let format = r.u16("format")?;
        if !(1..=SNAPSHOT_FORMAT).contains(&format) {
            return Err(SnapshotError::Format(format));
        }
        let next_id = r.u32("next_id")?;
        let applied = r.u64("applied")?;
        let count = r.u32("inode count")?;
        let mut nodes = Inodes::default();
        let mut links = Vec::new();
        for _ in 0..count {
            let id = r.u32("inode id")?;
            let parent = r.u32("parent")?;
            let name = r.str("name")?;
            let kind = match r.u8("kind")? {
                0 => Kind::Dir(Dir { children: BTreeMap::new(), mtime_ms: r.u64("mtime")? }),
                1 => {
                    let version = r.u32("file version")?;
                    let size = r.u64("size")?;
                    let block_size = r.u32("block size")?;
                    let replication = r.u8("replication")?;
                    let ctime_ms = r.u64("ctime")?;
                    let mtime_ms = r.u64("mtime")?;
                    let block_count = r.u32("block count")?;
                    if block_count > MAX_BLOCKS_PER_FILE || block_size == 0 {
                        return Err(SnapshotError::Invalid(format!(
                            "inode {id}: {block_count} blocks of {block_size}"
                        )));
                    }
                    let mut blocks =
                        Vec::with_capacity((block_count as usize).min(r.remaining() / 3));
                    for _ in 0..block_count {
                        let version = BlockVersion(r.u16("block version")?);
                        let replicas = read_replicas(&mut r)?;
                        blocks.push(Block { version, replicas: replicas.into_boxed_slice() });
                    }
                    let blocks = blocks.into_boxed_slice();
                    Kind::File(File {
                        version,
                        size,
                        block_size,
                        replication,
                        ctime_ms,
                        mtime_ms,
                        blocks,
                    })
                }
                other => {
                    return Err(SnapshotError::Invalid(format!("inode {id} has kind {other}")));
                }
            };
            if id != ROOT_ID {
                links.push((parent, name.to_string(), id));
            }
            if id == 0 || id >= next_id {
                return Err(SnapshotError::Invalid(format!(
                    "inode {id} is not below next_id {next_id}"
                )));
            }
            if nodes.insert(id, Node { parent, kind }).is_some() {
                return Err(SnapshotError::Invalid(format!("inode {id} appears twice")));
            }
        }
        for (parent, name, id) in links {
            match nodes.get_mut(&parent).map(|n| &mut n.kind) {
                Some(Kind::Dir(dir)) => {
                    if dir.children.insert(name.clone().into(), id).is_some() {
                        return Err(SnapshotError::Invalid(format!(
                            "two entries named {name:?} in {parent}"
                        )));
                    }
                }
                _ => {
                    return Err(SnapshotError::Invalid(format!(
                        "inode {id}'s parent {parent} is not a directory"
                    )));
                }
            }
        }
        let session_count = r.u32("session count")?;
        let mut sessions = HashMap::with_capacity((session_count as usize).min(r.remaining() / 28));
        for _ in 0..session_count {
            let id = SessionId::read(&mut r)?;
            let last_request = r.u64("last request")?;
            let last_time_ms = r.u64("last time")?;
            let outcome = read_outcome(&mut r)?;
            sessions.insert(id, Session { last_request, last_time_ms, outcome });
        }
        let mut leases = BTreeMap::new();
        if format >= 2 {
            for _ in 0..r.u32("lease count")? {
                let key = (r.u32("lease file")?, r.u16("lease block")?);
                let holder =
                    SessionId { client: ClientId(r.u32("lease client")?), nonce: r.u64("nonce")? };
                let version = BlockVersion(r.u16("lease version")?);
                let expires_ms = r.u64("lease expiry")?;
                leases.insert(key, Lease { holder, version, expires_ms });
            }
        }
        let mut draining = BTreeSet::new();
        if format >= 3 {
            for _ in 0..r.u32("draining count")? {
                draining.insert(NodeId(r.u32("draining server")?));
            }
        }
        let locks = if format >= 4 { LockTable::read(&mut r)? } else { LockTable::new() };
        r.finish()?;
        let mut ns = Namespace {
            nodes,
            allocated: BTreeMap::new(),
            next_id,
            sessions,
            leases,
            draining,
            locks,
            applied,
        };
        ns.allocated = ns.compute_allocated();
        // A snapshot that passed its checksum but breaks an invariant is a bug somewhere:
        // refuse it rather than serve it.
        match ns.violation() {
            Some(violation) => Err(SnapshotError::Invalid(violation)),
            None => Ok(ns),
        }
    }
}

const SNAPSHOT_MAGIC: &[u8; 4] = b"MSNS";
const SNAPSHOT_FORMAT: u16 = 4;

/// Why snapshot bytes could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Shorter than a checksum.
    #[error("snapshot truncated")]
    Truncated,
    /// The checksum does not match.
    #[error("snapshot checksum mismatch: the snapshot is damaged")]
    Checksum,
    /// Not a namespace snapshot.
    #[error("not a namespace snapshot (bad magic)")]
    Magic,
    /// A format this build cannot read.
    #[error("snapshot format {0} is not known to this build")]
    Format(u16),
    /// A field did not parse.
    #[error("snapshot field: {0}")]
    Body(#[from] BodyError),
    /// The content is inconsistent.
    #[error("snapshot content: {0}")]
    Invalid(String),
}

/// Bytes of a file of `size` that block `index` covers.
fn block_span(size: u64, block_size: u32, index: u64) -> u64 {
    let block_size = u64::from(block_size);
    block_size.min(size.saturating_sub(index * block_size))
}

fn blocks_for(size: u64, block_size: u32) -> u64 {
    size.div_ceil(u64::from(block_size))
}

fn distinct(set: &[NodeId]) -> bool {
    set.iter().enumerate().all(|(i, a)| set[i + 1..].iter().all(|b| a != b))
}

fn parent_text(walked: &str) -> String {
    walked.rsplit_once('/').map_or("/", |(p, _)| if p.is_empty() { "/" } else { p }).to_string()
}

// ---- encodings of entries and outcomes (log records and snapshots) ----

impl Entry {
    /// The entry as bytes (for the log). Layout: u8 format (1), u32 client, u64 nonce,
    /// u64 request id, u64 time, u8 command, then the command's fields.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = BodyWriter::new();
        w.u8(1)
            .u32(self.session.client.0)
            .u64(self.session.nonce)
            .u64(self.request_id)
            .u64(self.time_ms);
        match &self.command {
            Command::Mkdir { path, parents } => {
                w.u8(1);
                write_path(&mut w, path);
                w.bool(*parents);
            }
            Command::CreateFile { path, replication, block_size } => {
                w.u8(2);
                write_path(&mut w, path);
                w.u8(*replication).u32(*block_size);
            }
            Command::ExpandFile { path, size, first_block, placement } => {
                w.u8(3);
                write_path(&mut w, path);
                w.u64(*size).u32(*first_block).u32(placement.len() as u32);
                for set in placement {
                    write_replicas(&mut w, set);
                }
            }
            Command::WriteLease { path, index } => {
                w.u8(6);
                write_path(&mut w, path);
                w.u16(*index);
            }
            Command::CreateWrite { path, replication, block_size, size, placement } => {
                w.u8(9);
                write_path(&mut w, path);
                w.u8(*replication).u32(*block_size).u64(*size);
                write_replicas(&mut w, placement);
            }
            Command::CommitWrite { path, index, version } => {
                w.u8(7);
                write_path(&mut w, path);
                w.u16(*index).u16(version.0);
            }
            Command::SwapReplica { path, index, failed, replacement } => {
                w.u8(8);
                write_path(&mut w, path);
                w.u16(*index).u32(failed.0).u32(replacement.0);
            }
            Command::ReplaceReplica { file, index, version, remove, add } => {
                w.u8(10).u32(*file).u16(*index).u16(version.0).u32(remove.0).u32(add.0);
            }
            Command::SetDraining { server, draining } => {
                w.u8(11).u32(server.0).bool(*draining);
            }
            Command::Rename { from, to } => {
                w.u8(4);
                write_path(&mut w, from);
                write_path(&mut w, to);
            }
            Command::Remove { path, recursive } => {
                w.u8(5);
                write_path(&mut w, path);
                w.bool(*recursive);
            }
            Command::OpenSession { lease_ms, lock_delay_ms } => {
                w.u8(12).u64(*lease_ms).u64(*lock_delay_ms);
            }
            Command::KeepAlive => {
                w.u8(13);
            }
            Command::CloseSession => {
                w.u8(14);
            }
            Command::Lock { path, mode, wait_ms } => {
                w.u8(15);
                write_path(&mut w, path);
                w.u8(mode.byte()).bool(wait_ms.is_some()).u64(wait_ms.unwrap_or(0));
            }
            Command::Unlock { path } => {
                w.u8(16);
                write_path(&mut w, path);
            }
            Command::Clock { expire } => {
                w.u8(17).u32(expire.len() as u32);
                for session in expire {
                    session.write(&mut w);
                }
            }
        }
        w.finish()
    }

    /// Reads what [`Entry::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Entry, BodyError> {
        let mut r = BodyReader::new(bytes);
        let format = r.u8("entry format")?;
        if format != 1 {
            return Err(BodyError::Invalid { field: "entry format", value: u64::from(format) });
        }
        let session = SessionId::read(&mut r)?;
        let request_id = r.u64("request id")?;
        let time_ms = r.u64("time")?;
        let command = match r.u8("command")? {
            1 => Command::Mkdir { path: read_path(&mut r)?, parents: r.bool("parents")? },
            2 => Command::CreateFile {
                path: read_path(&mut r)?,
                replication: r.u8("replication")?,
                block_size: match r.u32("block size")? {
                    0 => return Err(BodyError::Invalid { field: "block size", value: 0 }),
                    n => n,
                },
            },
            3 => {
                let path = read_path(&mut r)?;
                let size = r.u64("size")?;
                let first_block = r.u32("first block")?;
                let count = r.u32("placement count")?;
                if count > MAX_BLOCKS_PER_FILE {
                    return Err(BodyError::Invalid {
                        field: "placement count",
                        value: u64::from(count),
                    });
                }
                let mut placement = Vec::with_capacity((count as usize).min(r.remaining()));
                for _ in 0..count {
                    placement.push(read_replicas(&mut r)?);
                }
                Command::ExpandFile { path, size, first_block, placement }
            }
            4 => Command::Rename { from: read_path(&mut r)?, to: read_path(&mut r)? },
            6 => Command::WriteLease { path: read_path(&mut r)?, index: r.u16("block index")? },
            9 => {
                let path = read_path(&mut r)?;
                let replication = r.u8("replication")?;
                let block_size = match r.u32("block size")? {
                    0 => return Err(BodyError::Invalid { field: "block size", value: 0 }),
                    n => n,
                };
                let size = r.u64("size")?;
                let placement = read_replicas(&mut r)?;
                Command::CreateWrite { path, replication, block_size, size, placement }
            }
            8 => Command::SwapReplica {
                path: read_path(&mut r)?,
                index: r.u16("block index")?,
                failed: NodeId(r.u32("failed")?),
                replacement: NodeId(r.u32("replacement")?),
            },
            7 => Command::CommitWrite {
                path: read_path(&mut r)?,
                index: r.u16("block index")?,
                version: BlockVersion(r.u16("block version")?),
            },
            5 => Command::Remove { path: read_path(&mut r)?, recursive: r.bool("recursive")? },
            10 => Command::ReplaceReplica {
                file: r.u32("file id")?,
                index: r.u16("block index")?,
                version: BlockVersion(r.u16("block version")?),
                remove: NodeId(r.u32("removed server")?),
                add: NodeId(r.u32("added server")?),
            },
            11 => Command::SetDraining {
                server: NodeId(r.u32("server")?),
                draining: r.bool("draining")?,
            },
            12 => Command::OpenSession {
                lease_ms: r.u64("lease")?,
                lock_delay_ms: r.u64("lock delay")?,
            },
            13 => Command::KeepAlive,
            14 => Command::CloseSession,
            15 => {
                let path = read_path(&mut r)?;
                let mode = LockMode::from_byte(r.u8("lock mode")?)?;
                let waits = r.bool("waits")?;
                let wait_ms = r.u64("wait")?;
                Command::Lock { path, mode, wait_ms: waits.then_some(wait_ms) }
            }
            16 => Command::Unlock { path: read_path(&mut r)? },
            17 => {
                let count = r.u32("session count")?;
                if count as usize > r.remaining() / 12 {
                    return Err(BodyError::Invalid {
                        field: "session count",
                        value: u64::from(count),
                    });
                }
                let expire = (0..count)
                    .map(|_| SessionId::read(&mut r))
                    .collect::<Result<Vec<_>, BodyError>>()?;
                Command::Clock { expire }
            }
            other => return Err(BodyError::Invalid { field: "command", value: u64::from(other) }),
        };
        r.finish()?;
        Ok(Entry { session, request_id, time_ms, command })
    }
}

fn write_outcome(w: &mut BodyWriter, outcome: &Outcome) {
    match outcome {
        Outcome::Mkdir => {
            w.u8(1);
        }
        Outcome::Created(fd) => {
            w.u8(2);
            fd.write(w);
        }
        Outcome::Expanded { file, blocks } => {
            w.u8(3);
            file.write(w);
            w.u32(blocks.len() as u32);
            for block in blocks {
                block.write(w);
            }
        }
        Outcome::Renamed => {
            w.u8(4);
        }
        Outcome::Leased { block, base, replicas, expires_ms } => {
            w.u8(8);
            block.write(w);
            w.u16(base.0).u64(*expires_ms);
            write_replicas(w, replicas);
        }
        Outcome::Swapped { replicas } => {
            w.u8(10);
            write_replicas(w, replicas);
        }
        Outcome::Committed { block, replicas } => {
            w.u8(9);
            block.write(w);
            write_replicas(w, replicas);
        }
        Outcome::Removed { files, dirs } => {
            w.u8(5).u64(*files).u64(*dirs);
        }
        Outcome::Draining { server, draining } => {
            w.u8(11).u32(server.0).bool(*draining);
        }
        Outcome::SessionOpened { lease_ms, lock_delay_ms, expires_ms } => {
            w.u8(12).u64(*lease_ms).u64(*lock_delay_ms).u64(*expires_ms);
        }
        Outcome::KeptAlive { expires_ms } => {
            w.u8(13).u64(*expires_ms);
        }
        Outcome::LockGranted { sequencer } => {
            w.u8(14).u64(*sequencer);
        }
        Outcome::LockQueued => {
            w.u8(15);
        }
        Outcome::Woke { wakes } => {
            w.u8(16).u32(wakes.len() as u32);
            for wake in wakes {
                wake.session.write(w);
                w.u64(wake.request_id);
                write_path(w, &wake.path);
                w.u8(wake.mode.byte());
                match wake.result {
                    WakeResult::Granted { sequencer } => w.u8(1).u64(sequencer),
                    WakeResult::TimedOut => w.u8(2),
                    WakeResult::SessionEnded => w.u8(3),
                    WakeResult::Cancelled => w.u8(4),
                };
            }
        }
        Outcome::Failed(err) => {
            w.u8(6);
            err.write(w);
        }
    }
}

fn read_outcome(r: &mut BodyReader<'_>) -> Result<Outcome, BodyError> {
    Ok(match r.u8("outcome")? {
        1 => Outcome::Mkdir,
        2 => Outcome::Created(FileDescriptor::read(r)?),
        3 => {
            let file = FileDescriptor::read(r)?;
            let count = r.u32("block count")?;
            if count > MAX_BLOCKS_PER_FILE {
                return Err(BodyError::Invalid { field: "block count", value: u64::from(count) });
            }
            let blocks =
                (0..count).map(|_| BlockDescriptor::read(r)).collect::<Result<Vec<_>, _>>()?;
            Outcome::Expanded { file, blocks }
        }
        4 => Outcome::Renamed,
        // A lease as snapshot format 1 wrote it: no base or expiry (a retry of it gets a
        // token that has run out, and asks again).
        7 => {
            let block = BlockDescriptor::read(r)?;
            let replicas = read_replicas(r)?;
            let base = BlockVersion(block.version.0.wrapping_sub(1));
            Outcome::Leased { block, base, replicas, expires_ms: 0 }
        }
        8 => {
            let block = BlockDescriptor::read(r)?;
            let base = BlockVersion(r.u16("base version")?);
            let expires_ms = r.u64("lease expiry")?;
            Outcome::Leased { block, base, replicas: read_replicas(r)?, expires_ms }
        }
        10 => Outcome::Swapped { replicas: read_replicas(r)? },
        9 => Outcome::Committed { block: BlockDescriptor::read(r)?, replicas: read_replicas(r)? },
        5 => Outcome::Removed { files: r.u64("files")?, dirs: r.u64("dirs")? },
        11 => Outcome::Draining { server: NodeId(r.u32("server")?), draining: r.bool("draining")? },
        12 => Outcome::SessionOpened {
            lease_ms: r.u64("lease")?,
            lock_delay_ms: r.u64("lock delay")?,
            expires_ms: r.u64("lease end")?,
        },
        13 => Outcome::KeptAlive { expires_ms: r.u64("lease end")? },
        14 => Outcome::LockGranted { sequencer: r.u64("sequencer")? },
        15 => Outcome::LockQueued,
        16 => {
            let count = r.u32("wake count")?;
            let mut wakes = Vec::with_capacity((count as usize).min(r.remaining() / 24));
            for _ in 0..count {
                let session = SessionId::read(r)?;
                let request_id = r.u64("request id")?;
                let path = read_path(r)?;
                let mode = LockMode::from_byte(r.u8("lock mode")?)?;
                let result = match r.u8("wake")? {
                    1 => WakeResult::Granted { sequencer: r.u64("sequencer")? },
                    2 => WakeResult::TimedOut,
                    3 => WakeResult::SessionEnded,
                    4 => WakeResult::Cancelled,
                    other => {
                        return Err(BodyError::Invalid { field: "wake", value: u64::from(other) });
                    }
                };
                wakes.push(Wake { session, request_id, path, mode, result });
            }
            Outcome::Woke { wakes }
        }
        6 => Outcome::Failed(NsError::read(r)?),
        other => return Err(BodyError::Invalid { field: "outcome", value: u64::from(other) }),
    })
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
            other => {
                return Err(BodyError::Invalid { field: "error code", value: u64::from(other) });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap as Model;

    const BS: u32 = 1024;

    fn p(text: &str) -> MeshPath {
        MeshPath::parse(text).unwrap()
    }

    /// Applies commands as one session with increasing request ids.
    struct Driver {
        ns: Namespace,
        session: SessionId,
        next_request: u64,
        time: u64,
    }

    impl Driver {
        fn new() -> Driver {
            Driver {
                ns: Namespace::new(),
                session: SessionId { client: ClientId(1), nonce: 42 },
                next_request: 1,
                time: 1_000,
            }
        }

        fn entry(&mut self, command: Command) -> Entry {
            let entry = Entry {
                session: self.session,
                request_id: self.next_request,
                time_ms: self.time,
                command,
            };
            self.next_request += 1;
            self.time += 1;
            entry
        }

        fn run(&mut self, command: Command) -> Outcome {
            let entry = self.entry(command);
            self.ns.apply(&entry)
        }

        fn mkdir(&mut self, path: &str, parents: bool) -> Outcome {
            self.run(Command::Mkdir { path: p(path), parents })
        }

        fn create(&mut self, path: &str) -> Outcome {
            self.run(Command::CreateFile { path: p(path), replication: 2, block_size: BS })
        }

        fn expand(&mut self, path: &str, size: u64, new_blocks: usize) -> Outcome {
            let placement =
                (0..new_blocks).map(|i| vec![NodeId(4 + (i as u32 % 3)), NodeId(7)]).collect();
            let first_block =
                self.ns.get_file_meta_data(&p(path)).map_or(0, |m| m.blocks.len() as u32);
            self.run(Command::ExpandFile { path: p(path), size, first_block, placement })
        }

        fn rename(&mut self, from: &str, to: &str) -> Outcome {
            self.run(Command::Rename { from: p(from), to: p(to) })
        }

        fn remove(&mut self, path: &str, recursive: bool) -> Outcome {
            self.run(Command::Remove { path: p(path), recursive })
        }
    }

    fn failed(outcome: Outcome) -> NsError {
        match outcome {
            Outcome::Failed(err) => err,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn mkdir_with_and_without_parents() {
        let mut d = Driver::new();
        assert_eq!(d.mkdir("/a", false), Outcome::Mkdir);
        assert_eq!(failed(d.mkdir("/a", false)), NsError::AlreadyExists("/a".into()));
        assert_eq!(d.mkdir("/a", true), Outcome::Mkdir, "-p accepts an existing directory");
        assert_eq!(failed(d.mkdir("/x/y", false)), NsError::NotFound("/x".into()));
        assert_eq!(d.mkdir("/x/y/z", true), Outcome::Mkdir);
        assert!(matches!(d.ns.stat(&p("/x/y/z")), Ok(Stat::Dir { entries: 0, .. })));
        assert!(matches!(d.ns.stat(&p("/x")), Ok(Stat::Dir { entries: 1, .. })));
        d.create("/a/f");
        assert_eq!(failed(d.mkdir("/a/f/g", true)), NsError::NotADirectory("/a/f".into()));
        assert_eq!(failed(d.mkdir("/a/f/g", false)), NsError::NotADirectory("/a/f".into()));
        assert_eq!(failed(d.mkdir("/", false)), NsError::AlreadyExists("/".into()));
        assert_eq!(d.mkdir("/", true), Outcome::Mkdir);
    }

    #[test]
    fn create_file_meta_data_and_get_it_back() {
        let mut d = Driver::new();
        let Outcome::Created(fd) = d.create("/f") else { panic!() };
        assert_eq!(fd.version, 1);
        assert_eq!(failed(d.create("/f")), NsError::AlreadyExists("/f".into()));
        assert_eq!(failed(d.create("/nodir/f")), NsError::NotFound("/nodir".into()));
        assert_eq!(failed(d.create("/f/g")), NsError::NotADirectory("/f".into()));
        assert_eq!(
            failed(d.run(Command::CreateFile { path: p("/g"), replication: 0, block_size: BS })),
            NsError::BadReplication(0)
        );
        let meta = d.ns.get_file_meta_data(&p("/f")).unwrap();
        assert_eq!(meta.descriptor, fd);
        assert_eq!((meta.size, meta.block_size, meta.replication), (0, BS, 2));
        assert!(meta.blocks.is_empty());
        assert_eq!(
            failed(Outcome::Failed(d.ns.get_file_meta_data(&p("/")).unwrap_err())),
            NsError::IsADirectory("/".into())
        );
        assert_eq!(d.ns.get_file_meta_data(&p("/nope")), Err(NsError::NotFound("/nope".into())));
    }

    #[test]
    fn expand_file_size_allocates_placed_blocks_and_bumps_the_version() {
        let mut d = Driver::new();
        d.create("/f");
        let Outcome::Expanded { file, blocks } = d.expand("/f", 2500, 3) else { panic!() };
        assert_eq!(file.version, 2);
        assert_eq!(blocks.iter().map(|b| b.index).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(blocks.iter().all(|b| b.version == BlockVersion(1) && b.file == file));
        // Growing inside the last block adds no block but still changes the metadata.
        let Outcome::Expanded { file, blocks } = d.expand("/f", 3072, 0) else { panic!() };
        assert_eq!((file.version, blocks.len()), (3, 0));
        let block = d.ns.get_block_metadata(&p("/f"), 1).unwrap();
        assert_eq!(block.replicas, [NodeId(5), NodeId(7)]);
        assert_eq!(block.descriptor.file.version, 3);
        assert!(matches!(d.ns.get_block_metadata(&p("/f"), 3), Err(NsError::NotFound(_))));

        assert!(matches!(
            failed(d.expand("/f", 100, 0)),
            NsError::Shrink { size: 3072, requested: 100, .. }
        ));
        assert!(matches!(
            failed(d.expand("/f", 5000, 1)),
            NsError::BadPlacement { given: 1, needed: 2, .. }
        ));
        let twice = vec![vec![NodeId(4), NodeId(4)]];
        let bad = d.run(Command::ExpandFile {
            path: p("/f"),
            size: 4000,
            first_block: 3,
            placement: twice,
        });
        assert!(matches!(failed(bad), NsError::BadPlacement { .. }), "two replicas on one server");
        d.mkdir("/dir", false);
        assert_eq!(failed(d.expand("/dir", 1, 1)), NsError::IsADirectory("/dir".into()));
        // Nothing changed by the failures.
        assert_eq!(d.ns.get_file_meta_data(&p("/f")).unwrap().descriptor.version, 3);
    }

    fn lease(d: &mut Driver, index: u16) -> (BlockDescriptor, BlockVersion) {
        match d.run(Command::WriteLease { path: p("/f"), index }) {
            Outcome::Leased { block, base, .. } => (block, base),
            other => panic!("no lease: {other:?}"),
        }
    }

    fn commit(d: &mut Driver, index: u16, version: BlockVersion) -> Outcome {
        d.run(Command::CommitWrite { path: p("/f"), index, version })
    }

    #[test]
    fn a_leased_version_becomes_the_block_version_only_when_committed() {
        let mut d = Driver::new();
        d.create("/f");
        d.expand("/f", 3000, 3);
        let now = d.time;
        let Outcome::Leased { block, base, replicas, expires_ms } =
            d.run(Command::WriteLease { path: p("/f"), index: 1 })
        else {
            panic!("a lease")
        };
        assert_eq!((block.index, block.version, base), (1, BlockVersion(2), BlockVersion(1)));
        assert_eq!(expires_ms, now + LEASE_MS);
        assert_eq!(replicas, [NodeId(5), NodeId(7)]);
        // Readers still see the committed version: the write may never happen.
        let meta = d.ns.get_file_meta_data(&p("/f")).unwrap();
        assert_eq!(meta.blocks[1].descriptor.version, BlockVersion::UNWRITTEN);
        assert_eq!(meta.descriptor.version, 2);
        let Outcome::Committed { block: done, .. } = commit(&mut d, 1, block.version) else {
            panic!("committed")
        };
        assert_eq!(done.version, BlockVersion(2));
        let meta = d.ns.get_file_meta_data(&p("/f")).unwrap();
        assert_eq!(meta.blocks[1].descriptor.version, BlockVersion(2));
        assert_eq!(meta.blocks[0].descriptor.version, BlockVersion(1), "other blocks keep theirs");
        assert_eq!(meta.descriptor.version, 3, "the file's metadata changed");
        // A second commit of the same lease (a new request) finds no lease.
        assert!(matches!(failed(commit(&mut d, 1, block.version)), NsError::LeaseLost { .. }));
        assert!(matches!(
            failed(d.run(Command::WriteLease { path: p("/f"), index: 3 })),
            NsError::NotFound(_)
        ));
        // 65,535 more leases wrap the 16-bit version (65,535 values: 1 is skipped), and each
        // still compares as newer than the last.
        let mut last = BlockVersion(2);
        for _ in 0..u16::MAX {
            let (block, base) = lease(&mut d, 1);
            assert_eq!(base, last);
            assert!(block.version.is_newer_than(last));
            assert!(matches!(commit(&mut d, 1, block.version), Outcome::Committed { .. }));
            last = block.version;
        }
        assert_eq!(last, BlockVersion(2), "wrapped around, skipping version 1 (unwritten)");
    }

    #[test]
    fn a_lease_is_exclusive_until_it_runs_out_and_a_lost_lease_cannot_commit() {
        let mut d = Driver::new();
        d.create("/f");
        d.expand("/f", 3000, 3);
        let first = d.session;
        let other = SessionId { client: ClientId(2), nonce: 7 };
        let (a, _) = lease(&mut d, 0);
        // The holder may ask again (a retry after a failed chain): a newer version, same base.
        let (a2, base) = lease(&mut d, 0);
        assert!(a2.version.is_newer_than(a.version));
        assert_eq!(base, BlockVersion::UNWRITTEN);
        d.session = other;
        let held = failed(d.run(Command::WriteLease { path: p("/f"), index: 0 }));
        assert!(matches!(held, NsError::LeaseHeld { client: 1, index: 0, .. }), "{held:?}");
        assert!(held.to_string().contains("being written by client 1"), "{held}");
        // Another block of the file is free, and the lease survives a snapshot.
        lease(&mut d, 2);
        let restored = Namespace::restore(&d.ns.snapshot()).unwrap();
        assert_eq!(restored.snapshot(), d.ns.snapshot());
        d.ns = restored;
        assert!(matches!(
            failed(d.run(Command::WriteLease { path: p("/f"), index: 0 })),
            NsError::LeaseHeld { .. }
        ));
        // Past its end, another writer takes the block, with a version never leased before;
        // the first writer's late commit is refused.
        d.time += LEASE_MS;
        let (b, base) = lease(&mut d, 0);
        assert!(b.version.is_newer_than(a2.version));
        assert_eq!(base, BlockVersion::UNWRITTEN);
        d.session = first;
        assert!(matches!(failed(commit(&mut d, 0, a2.version)), NsError::LeaseLost { .. }));
        d.session = other;
        assert!(matches!(commit(&mut d, 0, b.version), Outcome::Committed { .. }));
        assert_eq!(
            d.ns.get_file_meta_data(&p("/f")).unwrap().blocks[0].descriptor.version,
            b.version
        );
        // Removing the file drops its leases (the invariant check would catch one left).
        d.run(Command::Remove { path: p("/f"), recursive: false });
        assert!(d.ns.leases.is_empty());
    }

    #[test]
    fn the_lease_holder_may_swap_a_failed_replica_of_a_block_never_written() {
        let mut d = Driver::new();
        d.create("/f");
        d.expand("/f", 3000, 3);
        let swap = |d: &mut Driver, failed: u32, replacement: u32| {
            d.run(Command::SwapReplica {
                path: p("/f"),
                index: 0,
                failed: NodeId(failed),
                replacement: NodeId(replacement),
            })
        };
        let err = failed(swap(&mut d, 4, 6)).to_string();
        assert!(err.contains("only the writer holding its lease"), "{err}");
        lease(&mut d, 0);
        assert_eq!(swap(&mut d, 4, 6), Outcome::Swapped { replicas: vec![NodeId(6), NodeId(7)] });
        assert_eq!(d.ns.allocated().get(&NodeId(4)), None);
        // Block 0 (1,024 bytes) and the last block, which holds the file's last 952 bytes:
        // a block counts the bytes of the file it covers.
        assert_eq!(d.ns.allocated().get(&NodeId(6)), Some(&(1024 + 952)));
        assert!(failed(swap(&mut d, 9, 5)).to_string().contains("not one of its replicas"));
        assert!(failed(swap(&mut d, 6, 7)).to_string().contains("already holds it"));
        // The new lease names the new chain.
        let Outcome::Leased { block, replicas, .. } =
            d.run(Command::WriteLease { path: p("/f"), index: 0 })
        else {
            panic!("a lease")
        };
        assert_eq!(replicas, [NodeId(6), NodeId(7)]);
        commit(&mut d, 0, block.version);
        lease(&mut d, 0);
        let err = failed(swap(&mut d, 6, 4)).to_string();
        assert!(err.contains("holds written data"), "{err}");
    }

    #[test]
    fn repair_replaces_a_replica_only_at_the_version_copied_and_never_under_a_lease() {
        let mut d = Driver::new();
        d.create("/f");
        d.expand("/f", 3000, 3);
        let (block, _) = lease(&mut d, 0);
        let id = block.file.id.0;
        let replace = |d: &mut Driver, version: BlockVersion, remove: u32, add: u32| {
            d.run(Command::ReplaceReplica {
                file: id,
                index: 0,
                version,
                remove: NodeId(remove),
                add: NodeId(add),
            })
        };
        let err = failed(replace(&mut d, BlockVersion(1), 4, 6)).to_string();
        assert!(err.contains("write lease is in force"), "{err}");
        commit(&mut d, 0, block.version);
        let err = failed(replace(&mut d, BlockVersion(1), 4, 6)).to_string();
        assert!(err.contains("at version 2 now, not 1"), "{err}");
        assert!(failed(replace(&mut d, block.version, 9, 6)).to_string().contains("not one of"));
        assert!(failed(replace(&mut d, block.version, 4, 7)).to_string().contains("already"));
        assert_eq!(
            replace(&mut d, block.version, 4, 6),
            Outcome::Swapped { replicas: vec![NodeId(6), NodeId(7)] }
        );
        let view = d.ns.block(id, 0).unwrap();
        assert_eq!(
            (view.replicas, view.descriptor.version),
            (&[NodeId(6), NodeId(7)][..], block.version)
        );
        assert_eq!(d.ns.allocated().get(&NodeId(4)), None, "block 0 was all node 4 held");
        assert_eq!(d.ns.blocks().count(), 3);
        assert_eq!(d.ns.files_under(&p("/")).unwrap(), vec![("/f".to_string(), id)]);
        assert_eq!(
            d.run(Command::SetDraining { server: NodeId(6), draining: true }),
            Outcome::Draining { server: NodeId(6), draining: true }
        );
        assert!(d.ns.draining().contains(&NodeId(6)));
        let restored = Namespace::restore(&d.ns.snapshot()).unwrap();
        assert_eq!(restored, d.ns, "draining marks survive a snapshot");
        d.run(Command::SetDraining { server: NodeId(6), draining: false });
        assert!(d.ns.draining().is_empty());
    }

    #[test]
    fn a_create_write_makes_leases_and_commits_a_small_file_in_one_entry_or_nothing() {
        let mut d = Driver::new();
        let create_write = |d: &mut Driver, path: &str, size: u64, placement: Vec<NodeId>| {
            d.run(Command::CreateWrite {
                path: p(path),
                replication: 2,
                block_size: BS,
                size,
                placement,
            })
        };
        let Outcome::Leased { block, base, replicas, .. } =
            create_write(&mut d, "/f", 100, vec![NodeId(4), NodeId(5)])
        else {
            panic!("a lease")
        };
        assert_eq!(block.index, 0);
        assert_eq!(base, BlockVersion(1), "the write starts from the empty first version");
        assert_eq!(replicas, [NodeId(4), NodeId(5)]);
        assert_eq!(d.ns.allocated().get(&NodeId(4)), Some(&100), "a small file takes little");
        // Readers see it only once committed, as any leased write.
        let Ok(Stat::File(meta)) = d.ns.stat(&p("/f")) else { panic!("a file") };
        assert_eq!((meta.size, meta.blocks[0].descriptor.version), (100, BlockVersion(1)));
        commit(&mut d, 0, block.version);
        let Ok(Stat::File(meta)) = d.ns.stat(&p("/f")) else { panic!("a file") };
        assert_eq!(meta.blocks[0].descriptor.version, block.version);

        // Every failure leaves nothing behind.
        let before = d.ns.list(&p("/")).unwrap();
        let exists = failed(create_write(&mut d, "/f", 10, vec![NodeId(4), NodeId(5)]));
        assert!(matches!(exists, NsError::AlreadyExists(_)), "{exists}");
        let bad = failed(create_write(&mut d, "/g", 10, vec![NodeId(4), NodeId(4)]));
        assert!(matches!(bad, NsError::BadPlacement { .. }), "{bad}");
        let big = failed(create_write(&mut d, "/g", u64::from(BS) + 1, vec![NodeId(4)]));
        assert!(big.to_string().contains("does not fit one block"), "{big}");
        assert!(matches!(failed(create_write(&mut d, "/g", 0, vec![])), NsError::BadSize { .. }));
        assert_eq!(d.ns.list(&p("/")).unwrap(), before);
        assert_eq!(d.ns.allocated().get(&NodeId(4)), Some(&100));
    }

    #[test]
    fn racing_expands_placed_from_one_view_both_apply() {
        let mut d = Driver::new();
        d.create("/f");
        // Both were placed by the leader while the file had no blocks.
        let sets = |n: usize| {
            (0..n).map(|i| vec![NodeId(4 + i as u32 % 2), NodeId(9)]).collect::<Vec<_>>()
        };
        let first = d.run(Command::ExpandFile {
            path: p("/f"),
            size: 2048,
            first_block: 0,
            placement: sets(2),
        });
        assert!(matches!(first, Outcome::Expanded { ref blocks, .. } if blocks.len() == 2));
        let second = d.run(Command::ExpandFile {
            path: p("/f"),
            size: 4096,
            first_block: 0,
            placement: sets(4),
        });
        let Outcome::Expanded { blocks, .. } = second else { panic!("{second:?}") };
        assert_eq!(
            blocks.iter().map(|b| b.index).collect::<Vec<_>>(),
            [2, 3],
            "only the missing blocks"
        );
        // A placement that starts after the blocks the file has cannot be used.
        let gap = d.run(Command::ExpandFile {
            path: p("/f"),
            size: 8192,
            first_block: 6,
            placement: sets(2),
        });
        assert!(matches!(failed(gap), NsError::BadPlacement { .. }));
        // Allocation per data-server follows the block lists, and removal gives it back.
        assert_eq!(d.ns.allocated().get(&NodeId(9)), Some(&(4 * u64::from(BS))));
        assert_eq!(d.ns.allocated().get(&NodeId(4)), Some(&(2 * u64::from(BS))));
        d.remove("/f", false);
        assert!(d.ns.allocated().is_empty());
    }

    #[test]
    fn a_file_past_65536_blocks_is_a_clear_error() {
        let mut d = Driver::new();
        d.create("/big");
        let max = u64::from(MAX_BLOCKS_PER_FILE) * u64::from(BS);
        let err = failed(d.expand("/big", max + 1, 65_537));
        assert!(matches!(err, NsError::FileTooLarge { blocks: 65_537, .. }), "{err}");
        assert!(err.to_string().contains("at most 65536"), "{err}");
        assert!(matches!(d.expand("/big", max, 65_536), Outcome::Expanded { .. }));
        let last = d.ns.get_block_metadata(&p("/big"), u16::MAX).unwrap();
        assert_eq!(last.descriptor.index, 65_535);
    }

    #[test]
    fn rename_is_atomic_and_never_moves_a_directory_into_itself() {
        let mut d = Driver::new();
        d.mkdir("/a/b", true);
        d.create("/a/b/f");
        assert_eq!(d.rename("/a/b/f", "/g"), Outcome::Renamed);
        assert!(d.ns.stat(&p("/g")).is_ok());
        assert!(d.ns.stat(&p("/a/b/f")).is_err());
        assert_eq!(d.rename("/a", "/z"), Outcome::Renamed);
        assert!(d.ns.stat(&p("/z/b")).is_ok());
        assert_eq!(
            failed(d.rename("/z", "/z/b/c")),
            NsError::MoveIntoItself { from: "/z".into(), to: "/z/b/c".into() }
        );
        assert_eq!(d.rename("/z", "/z"), Outcome::Renamed, "onto itself is a no-op, as in POSIX");
        assert_eq!(d.rename("/g", "/g"), Outcome::Renamed);
        assert_eq!(failed(d.rename("/g", "/z/b")), NsError::AlreadyExists("/z/b".into()));
        assert_eq!(failed(d.rename("/none", "/x")), NsError::NotFound("/none".into()));
        assert_eq!(failed(d.rename("/g", "/none/x")), NsError::NotFound("/none".into()));
        assert_eq!(failed(d.rename("/", "/x")), NsError::Root);
        // A sibling whose name merely starts the same is not "inside".
        d.mkdir("/ab", false);
        assert_eq!(d.rename("/z", "/ab/z"), Outcome::Renamed);
    }

    #[test]
    fn remove_files_empty_dirs_and_trees() {
        let mut d = Driver::new();
        d.mkdir("/t/u/v", true);
        d.create("/t/f1");
        d.create("/t/u/f2");
        d.create("/top");
        assert_eq!(d.remove("/top", false), Outcome::Removed { files: 1, dirs: 0 });
        assert_eq!(failed(d.remove("/t", false)), NsError::NotEmpty("/t".into()));
        assert_eq!(d.remove("/t/u/v", false), Outcome::Removed { files: 0, dirs: 1 });
        assert_eq!(d.remove("/t", true), Outcome::Removed { files: 2, dirs: 2 });
        assert_eq!(d.ns.inode_count(), 1, "only the root is left");
        assert_eq!(failed(d.remove("/", true)), NsError::Root);
        assert_eq!(failed(d.remove("/t", true)), NsError::NotFound("/t".into()));
    }

    #[test]
    fn list_and_stat() {
        let mut d = Driver::new();
        d.mkdir("/d/sub", true);
        d.create("/d/b");
        d.create("/d/a");
        d.expand("/d/a", 10, 1);
        let names: Vec<(String, bool, u64)> =
            d.ns.list(&p("/d")).unwrap().into_iter().map(|e| (e.name, e.is_dir, e.size)).collect();
        assert_eq!(
            names,
            [("a".into(), false, 10), ("b".into(), false, 0), ("sub".into(), true, 0)]
        );
        assert_eq!(d.ns.list(&p("/d/a")).unwrap()[0].name, "a");
        assert_eq!(d.ns.list(&p("/x")), Err(NsError::NotFound("/x".into())));
        assert_eq!(d.ns.list(&p("/d/a/x")), Err(NsError::NotADirectory("/d/a".into())));
    }

    #[test]
    fn listing_pages_by_name() {
        let mut d = Driver::new();
        for name in ["c", "a", "e", "b", "d"] {
            d.create(&format!("/{name}"));
        }
        let names = |v: Vec<DirEntry>| v.into_iter().map(|e| e.name).collect::<Vec<_>>();
        let (page, more) = d.ns.list_page(&p("/"), "", 2).unwrap();
        assert_eq!((names(page), more), (vec!["a".to_string(), "b".into()], true));
        let (page, more) = d.ns.list_page(&p("/"), "b", 2).unwrap();
        assert_eq!((names(page), more), (vec!["c".to_string(), "d".into()], true));
        let (page, more) = d.ns.list_page(&p("/"), "d", 2).unwrap();
        assert_eq!((names(page), more), (vec!["e".to_string()], false));
        let (page, more) = d.ns.list_page(&p("/"), "zzz", 2).unwrap();
        assert!(page.is_empty() && !more);
    }

    #[test]
    fn a_retried_request_gets_its_own_answer_not_already_exists() {
        let mut d = Driver::new();
        let entry =
            d.entry(Command::CreateFile { path: p("/once"), replication: 1, block_size: BS });
        let first = d.ns.apply(&entry);
        assert!(matches!(first, Outcome::Created(_)));
        // The same request committed again (a retry across a leader change).
        assert_eq!(d.ns.apply(&entry), first);
        assert_eq!(d.ns.list(&p("/")).unwrap().len(), 1);
        // Another session asking for the name gets "already exists".
        let other = Entry {
            session: SessionId { client: ClientId(1), nonce: 7 },
            request_id: 1,
            ..entry.clone()
        };
        assert_eq!(failed(d.ns.apply(&other)), NsError::AlreadyExists("/once".into()));
        // An older request of a session after a newer one is refused, not applied.
        d.create("/next");
        let stale = Entry {
            request_id: entry.request_id,
            ..d.entry(Command::Remove { path: p("/once"), recursive: false })
        };
        assert!(matches!(failed(d.ns.apply(&stale)), NsError::Superseded { .. }));
        assert!(d.ns.stat(&p("/once")).is_ok());
    }

    #[test]
    fn a_lock_wait_retried_after_it_ended_gets_how_it_ended() {
        let mut d = Driver::new();
        let holder = SessionId { client: ClientId(2), nonce: 5 };
        let open = Command::OpenSession { lease_ms: 10_000, lock_delay_ms: 1_000 };
        assert!(matches!(d.run(open.clone()), Outcome::SessionOpened { .. }));
        let as_holder =
            |request_id, time_ms, command| Entry { session: holder, request_id, time_ms, command };
        d.ns.apply(&as_holder(1, d.time, open));
        let take = Command::Lock { path: p("/m"), mode: LockMode::Exclusive, wait_ms: None };
        let first = d.ns.apply(&as_holder(2, d.time, take));
        assert_eq!(first, Outcome::LockGranted { sequencer: 1 });
        let wait =
            d.entry(Command::Lock { path: p("/m"), mode: LockMode::Shared, wait_ms: Some(60_000) });
        assert_eq!(d.ns.apply(&wait), Outcome::LockQueued);
        let released = d.ns.apply(&as_holder(3, d.time, Command::Unlock { path: p("/m") }));
        let Outcome::Woke { wakes } = released else { panic!("{released:?}") };
        assert_eq!(wakes.len(), 1);
        assert_eq!((wakes[0].session, wakes[0].request_id), (d.session, wait.request_id));
        // The waiter's retry (at a new leader) learns it holds the lock.
        assert_eq!(d.ns.apply(&wait), Outcome::LockGranted { sequencer: 2 });
        // A retried unlock does not wake anyone twice.
        let again = d.ns.apply(&as_holder(3, d.time, Command::Unlock { path: p("/m") }));
        assert_eq!(again, Outcome::Woke { wakes: Vec::new() });
        // KeepAlives are not deduplicated; a closed session's are refused.
        for _ in 0..2 {
            let kept = d.ns.apply(&as_holder(0, d.time + 5_000, Command::KeepAlive));
            assert_eq!(kept, Outcome::KeptAlive { expires_ms: d.time + 15_000 });
        }
        d.ns.apply(&as_holder(4, d.time, Command::CloseSession));
        let kept = d.ns.apply(&as_holder(0, d.time, Command::KeepAlive));
        assert!(matches!(failed(kept), NsError::SessionExpired { client: 2 }));
        // Locks survive a snapshot.
        let back = Namespace::restore(&d.ns.snapshot()).unwrap();
        let all = |ns: &Namespace| ns.lock_table().list(&p("/"), 10, 10);
        assert_eq!(all(&back), all(&d.ns));
        assert_eq!(back.lock_table().list(&p("/m"), 10, 10).0.len(), 1);
    }

    #[test]
    fn sessions_idle_past_the_ttl_are_forgotten() {
        let mut d = Driver::new();
        d.create("/x");
        assert_eq!(d.ns.sessions.len(), 1);
        d.time += SESSION_TTL_MS + 1;
        let busy = SessionId { client: ClientId(2), nonce: 1 };
        for i in 0..SESSION_SWEEP_EVERY {
            let entry = Entry {
                session: busy,
                request_id: i + 1,
                time_ms: d.time,
                command: Command::Mkdir { path: p("/"), parents: true },
            };
            d.ns.apply(&entry);
        }
        assert_eq!(d.ns.sessions.len(), 1, "the idle session was swept");
        assert!(d.ns.sessions.contains_key(&busy));
    }

    fn sample_entries() -> Vec<Entry> {
        let mut d = Driver::new();
        vec![
            d.entry(Command::Mkdir { path: p("/a/b"), parents: true }),
            d.entry(Command::CreateFile { path: p("/a/b/f"), replication: 2, block_size: BS }),
            d.entry(Command::ExpandFile {
                path: p("/a/b/f"),
                size: 3000,
                first_block: 0,
                placement: vec![vec![NodeId(4), NodeId(5)]; 3],
            }),
            d.entry(Command::Rename { from: p("/a/b/f"), to: p("/a/g") }),
            d.entry(Command::CreateFile { path: p("/a/g"), replication: 2, block_size: BS }),
            d.entry(Command::Remove { path: p("/a/b"), recursive: true }),
            d.entry(Command::Mkdir { path: p("/a/g/h"), parents: false }),
            d.entry(Command::CreateWrite {
                path: p("/a/s"),
                replication: 2,
                block_size: BS,
                size: 100,
                placement: vec![NodeId(4), NodeId(5)],
            }),
            d.entry(Command::ReplaceReplica {
                file: 4,
                index: 1,
                version: BlockVersion::UNWRITTEN,
                remove: NodeId(5),
                add: NodeId(6),
            }),
            d.entry(Command::SetDraining { server: NodeId(4), draining: true }),
            d.entry(Command::OpenSession { lease_ms: 10_000, lock_delay_ms: 2_000 }),
            d.entry(Command::Lock { path: p("/l"), mode: LockMode::Exclusive, wait_ms: None }),
            d.entry(Command::Lock { path: p("/l"), mode: LockMode::Shared, wait_ms: Some(5_000) }),
            d.entry(Command::KeepAlive),
            d.entry(Command::Unlock { path: p("/l") }),
            d.entry(Command::Clock { expire: vec![SessionId { client: ClientId(9), nonce: 3 }] }),
            d.entry(Command::CloseSession),
        ]
    }

    #[test]
    fn entries_round_trip_and_bad_bytes_are_refused() {
        for entry in sample_entries() {
            let bytes = entry.encode();
            assert_eq!(Entry::decode(&bytes).unwrap(), entry);
            for cut in 0..bytes.len() {
                assert!(Entry::decode(&bytes[..cut]).is_err());
            }
        }
        let mut bad_path = sample_entries()[0].encode();
        let end = bad_path.len() - 1; // the path "/a/b", then the parents flag
        bad_path[end - 4..end].copy_from_slice(b"/./b");
        assert!(Entry::decode(&bad_path).is_err(), "an invalid path never reaches apply");
    }

    #[test]
    fn replicas_applying_one_log_agree_byte_for_byte_and_snapshots_restore() {
        let mut a = Namespace::new();
        let mut b = Namespace::new();
        let mut outcomes = Vec::new();
        for entry in sample_entries() {
            outcomes.push(a.apply(&entry));
            // b applies the encoded form, as a follower reading the log would.
            b.apply(&Entry::decode(&entry.encode()).unwrap());
        }
        assert!(matches!(outcomes[4], Outcome::Failed(NsError::AlreadyExists(_))));
        assert!(matches!(outcomes[6], Outcome::Failed(NsError::NotADirectory(_))));
        assert_eq!(a.snapshot(), b.snapshot());
        let restored = Namespace::restore(&a.snapshot()).unwrap();
        assert_eq!(restored, a);
        assert_eq!(restored.snapshot(), a.snapshot());
    }

    fn testdata(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name)
    }

    /// The state of the golden files: the sample entries, then a write lease on /a/g block 1
    /// (formats 2 and up keep leases) and a lock held on /l (format 4 keeps locks), applied
    /// by a fresh namespace.
    fn golden_state(entries: &[Entry]) -> Namespace {
        let mut d = Driver::new();
        for entry in entries {
            d.ns.apply(entry);
        }
        d.next_request = 1000;
        d.time = 5000;
        d.run(Command::WriteLease { path: p("/a/g"), index: 1 });
        d.run(Command::OpenSession { lease_ms: 10_000, lock_delay_ms: 2_000 });
        d.run(Command::Lock { path: p("/l"), mode: LockMode::Exclusive, wait_ms: None });
        d.ns
    }

    fn entries_of(hex: &str) -> Vec<Entry> {
        hex.lines()
            .map(|line| {
                let bytes = meshfs_test_kit::golden::unhex(line);
                let entry = Entry::decode(&bytes).unwrap();
                assert_eq!(entry.encode(), bytes, "an old entry re-encodes to its own bytes");
                entry
            })
            .collect()
    }

    #[test]
    fn golden_entries_and_snapshot() {
        let entries = sample_entries();
        let hex: String =
            entries.iter().map(|e| meshfs_test_kit::golden::hex(&e.encode()) + "\n").collect();
        meshfs_test_kit::golden::check_text(testdata("entries.hex"), &hex);
        let ns = golden_state(&entries);
        assert_eq!(ns.leases.len(), 2, "the create-write's lease and the golden one");
        assert_ne!(ns.locks, LockTable::new(), "the lock table has something to write");
        meshfs_test_kit::golden::check_bytes(testdata("snapshot.bin"), &ns.snapshot());
    }

    /// Logs and snapshots written by older builds, kept as they wrote them: every entry still
    /// decodes (to the same bytes), and each snapshot restores to the very state that
    /// replaying its build's entries gives today, minus what its format did not keep.
    #[test]
    fn old_logs_and_snapshots_are_still_read() {
        for format in 1..SNAPSHOT_FORMAT {
            let dir = format!("format{format}");
            let text = String::from_utf8(meshfs_test_kit::golden::read(testdata(&format!(
                "{dir}/entries.hex"
            ))))
            .unwrap();
            let entries = entries_of(&text);
            let bytes = meshfs_test_kit::golden::read(testdata(&format!("{dir}/snapshot.bin")));
            assert_eq!(u16::from_be_bytes([bytes[4], bytes[5]]), format, "{dir}");
            let restored = Namespace::restore(&bytes).unwrap_or_else(|e| panic!("{dir}: {e}"));
            let mut replayed = golden_state(&entries);
            if format < 2 {
                // Format 1's build had no leases, so the golden lease was never taken.
                replayed = Namespace::new();
                for entry in &entries {
                    replayed.apply(entry);
                }
            }
            if format < 4 {
                replayed.locks = LockTable::new();
            }
            assert_eq!(restored.nodes, replayed.nodes, "{dir}: inodes");
            assert_eq!(restored.leases, replayed.leases, "{dir}: leases");
            assert_eq!(restored.draining, replayed.draining, "{dir}: draining");
            assert_eq!(restored.next_id, replayed.next_id, "{dir}: next id");
            assert_eq!(restored.allocated, replayed.allocated, "{dir}: allocation");
            assert_eq!(restored.locks, replayed.locks, "{dir}: locks");
            // Written again, it is today's format and restores to itself.
            let again = Namespace::restore(&restored.snapshot()).unwrap();
            assert_eq!(again, restored, "{dir}");
        }
    }

    #[test]
    fn damaged_snapshots_are_refused() {
        let mut d = Driver::new();
        for entry in sample_entries() {
            d.ns.apply(&entry);
        }
        let good = d.ns.snapshot();
        assert_eq!(Namespace::restore(&good[..good.len() - 1]), Err(SnapshotError::Checksum));
        let mut flipped = good.clone();
        flipped[10] ^= 1;
        assert_eq!(Namespace::restore(&flipped), Err(SnapshotError::Checksum));
        assert_eq!(Namespace::restore(&[]), Err(SnapshotError::Truncated));
        // Well-formed and checksummed, but inconsistent: a file's size disagrees with its
        // block list. Restore checks every invariant and refuses it.
        let Stat::File(meta) = d.ns.stat(&p("/a/g")).unwrap() else { panic!("a file") };
        if let Kind::File(file) = &mut d.ns.nodes.get_mut(&meta.descriptor.id.0).unwrap().kind {
            file.size += 10 * u64::from(file.block_size);
        }
        let err = Namespace::restore(&d.ns.snapshot()).unwrap_err();
        assert!(matches!(&err, SnapshotError::Invalid(why) if why.contains("blocks for")), "{err}");
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_entry_or_snapshot_decoding(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Entry::decode(&bytes);
            let _ = Namespace::restore(&bytes);
            let mut with_crc = bytes.clone();
            with_crc.extend_from_slice(&crc32fast::hash(&bytes).to_be_bytes());
            let _ = Namespace::restore(&with_crc);
        }
    }

    // ---- model test: random operations against a map of paths ----

    #[derive(Debug, Clone)]
    enum Op {
        Mkdir(usize, bool),
        Create(usize),
        Rename(usize, usize),
        Remove(usize, bool),
        Snapshot,
    }

    const NAMES: [&str; 9] =
        ["/a", "/b", "/a/c", "/a/d", "/b/c", "/a/c/e", "/b/c/e", "/a/d/f", "/e"];

    fn op() -> impl Strategy<Value = Op> {
        let i = 0..NAMES.len();
        prop_oneof![
            (i.clone(), any::<bool>()).prop_map(|(a, b)| Op::Mkdir(a, b)),
            i.clone().prop_map(Op::Create),
            (i.clone(), i.clone()).prop_map(|(a, b)| Op::Rename(a, b)),
            (i, any::<bool>()).prop_map(|(a, b)| Op::Remove(a, b)),
            Just(Op::Snapshot),
        ]
    }

    /// The model: path -> is_dir. Simple rules, written independently of the namespace.
    fn model_apply(model: &mut Model<String, bool>, op: &Op) -> bool {
        let parent =
            |path: &str| path.rsplit_once('/').map(|(p, _)| p.to_string()).unwrap_or_default();
        let is_dir =
            |m: &Model<String, bool>, path: &str| path.is_empty() || m.get(path) == Some(&true);
        match *op {
            Op::Mkdir(i, parents) => {
                let path = NAMES[i];
                if parents {
                    let mut prefix = String::new();
                    let parts: Vec<&str> = path.split('/').skip(1).collect();
                    for part in &parts {
                        prefix = format!("{prefix}/{part}");
                        if model.get(&prefix) == Some(&false) {
                            return false;
                        }
                    }
                    prefix.clear();
                    for part in parts {
                        prefix = format!("{prefix}/{part}");
                        model.entry(prefix.clone()).or_insert(true);
                    }
                    true
                } else if model.contains_key(path) || !is_dir(model, &parent(path)) {
                    false
                } else {
                    model.insert(path.to_string(), true);
                    true
                }
            }
            Op::Create(i) => {
                let path = NAMES[i];
                if model.contains_key(path) || !is_dir(model, &parent(path)) {
                    return false;
                }
                model.insert(path.to_string(), false);
                true
            }
            Op::Rename(i, j) => {
                let (from, to) = (NAMES[i], NAMES[j]);
                let Some(&from_dir) = model.get(from) else { return false };
                if from == to {
                    return true;
                }
                let inside = to.starts_with(&format!("{from}/"));
                if (from_dir && inside) || model.contains_key(to) || !is_dir(model, &parent(to)) {
                    return false;
                }
                let moved: Vec<(String, bool)> = model
                    .iter()
                    .filter(|(k, _)| *k == from || k.starts_with(&format!("{from}/")))
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                for (k, v) in moved {
                    model.remove(&k);
                    model.insert(format!("{to}{}", &k[from.len()..]), v);
                }
                true
            }
            Op::Remove(i, recursive) => {
                let path = NAMES[i];
                if !model.contains_key(path) {
                    return false;
                }
                let below: Vec<String> =
                    model.keys().filter(|k| k.starts_with(&format!("{path}/"))).cloned().collect();
                if !below.is_empty() && !recursive {
                    return false;
                }
                for k in below {
                    model.remove(&k);
                }
                model.remove(path);
                true
            }
            Op::Snapshot => true,
        }
    }

    fn walk(ns: &Namespace, dir: &str, out: &mut Model<String, bool>) {
        let path = if dir.is_empty() { MeshPath::root() } else { p(dir) };
        for e in ns.list(&path).unwrap() {
            let child = format!("{dir}/{}", e.name);
            out.insert(child.clone(), e.is_dir);
            if e.is_dir {
                walk(ns, &child, out);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn the_namespace_agrees_with_a_model(ops in proptest::collection::vec(op(), 1..60)) {
            let mut d = Driver::new();
            let mut model = Model::new();
            for op in &ops {
                let expect_ok = model_apply(&mut model, op);
                let outcome = match *op {
                    Op::Mkdir(i, parents) => d.mkdir(NAMES[i], parents),
                    Op::Create(i) => d.create(NAMES[i]),
                    Op::Rename(i, j) => d.rename(NAMES[i], NAMES[j]),
                    Op::Remove(i, r) => d.remove(NAMES[i], r),
                    Op::Snapshot => {
                        d.ns = Namespace::restore(&d.ns.snapshot()).unwrap();
                        Outcome::Mkdir
                    }
                };
                prop_assert_eq!(!matches!(outcome, Outcome::Failed(_)), expect_ok, "{:?} gave {:?}", op, outcome);
                let mut seen = Model::new();
                walk(&d.ns, "", &mut seen);
                prop_assert_eq!(&seen, &model, "after {:?}", op);
            }
        }
    }
}

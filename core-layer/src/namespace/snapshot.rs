//! Snapshots: the whole namespace as bytes, the same on every replica, and one reader per
//! format ever written. Format N is format N-1 with one more section, so each reader is the
//! previous one and its section; every old format has a golden old-bytes test
//! (`testdata/formatN/`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use meshfs_group::{ClientId, NodeId};
use meshfs_net::body::{BodyError, BodyReader, BodyWriter};

use super::access::{MODE_BITS, Owner};
use super::entry::{read_outcome, write_outcome};
use super::inode::{Block, Dir, File, Inodes, Kind, MAX_LINKS, Node, NodeType, Special, Times};
use super::{Lease, Namespace, ROOT_ID, Session};
use crate::descriptor::{BlockVersion, MAX_BLOCKS_PER_FILE, read_replicas, write_replicas};
use crate::locks::LockTable;
use crate::session::SessionId;

impl Namespace {
    /// The whole state as bytes: the same state gives the same bytes on every replica.
    /// Layout (format 10): magic "MSNS", u16 format, u32 next_id, u64 applied, the inodes
    /// depth first from the root (children by name), sessions by id, write leases by block
    /// (format 1 has none), draining data-servers (formats 1 and 2 have none), the lock table
    /// (formats 1 to 3 have none), every inode's owner by id (formats 1 to 4 have none),
    /// where id reuse goes on and the inode pages' version marks (formats 1 to 5 have
    /// none), every inode's times in microseconds (formats 1 to 6 have one in ms), the
    /// symbolic links and special files (formats 1 to 7 have none), the further names of
    /// inodes with hard links (formats 1 to 8 have none), the extended attributes (formats 1
    /// to 9 have none), u32 CRC-32 of all before.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut w = BodyWriter::with_capacity(64 * self.nodes.len() + 64);
        w.fixed(SNAPSHOT_MAGIC).u16(SNAPSHOT_FORMAT).u32(self.next_id).u64(self.applied);
        w.u32(self.nodes.len() as u32);
        // Depth first from the root, so each inode is written with the name its parent
        // lists; children come in name order, so the bytes are the same on every replica.
        // An inode with more names is written at the first; the others go in the links
        // section.
        let mut stack: Vec<(u32, u32, &str)> = vec![(ROOT_ID, ROOT_ID, "")];
        let mut named_once = HashSet::new();
        let mut more_names = Vec::new();
        while let Some((id, parent, name)) = stack.pop() {
            let node = &self.nodes[&id];
            if node.links().is_some_and(|n| n > 1) && !named_once.insert(id) {
                more_names.push((parent, name, id));
                continue;
            }
            w.u32(id).u32(parent).str(name);
            match &node.kind {
                // Formats before 7 knew one time of a directory and two of a file, in ms.
                Kind::Dir(dir) => {
                    w.u8(0).u64(node.times.mtime_us / 1000);
                    let children = dir.children.iter().rev();
                    stack.extend(children.map(|(name, &child)| (child, id, &**name)));
                }
                // Format 8's: what it is follows in its own section.
                Kind::Other(_) => {
                    w.u8(2);
                }
                Kind::File(f) => {
                    w.u8(1).u32(f.version).u64(f.size).u32(f.block_size).u8(f.replication);
                    w.u64(f.created_ms).u64(node.times.mtime_us / 1000);
                    w.u32(f.blocks.len() as u32);
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
        w.u32(self.nodes.len() as u32);
        for (id, node) in self.nodes.iter() {
            w.u32(id).u32(node.owner.uid).u32(node.owner.gid).u16(node.owner.mode);
        }
        w.u32(self.reuse_from);
        w.u32(self.nodes.marks().count() as u32);
        for (page, mark) in self.nodes.marks() {
            w.u32(page as u32).u32(mark);
        }
        w.u32(self.nodes.len() as u32);
        for (id, node) in self.nodes.iter() {
            let t = node.times;
            w.u32(id).u64(t.atime_us).u64(t.mtime_us).u64(t.ctime_us);
        }
        let others: Vec<(u32, &Special)> = self
            .nodes
            .iter()
            .filter_map(|(id, n)| match &n.kind {
                Kind::Other(s) => Some((id, s)),
                _ => None,
            })
            .collect();
        w.u32(others.len() as u32);
        for (id, special) in others {
            w.u32(id).u8(special.kind.byte()).str(&special.target).u32(special.rdev);
        }
        w.u32(more_names.len() as u32);
        for (dir, name, id) in more_names {
            w.u32(dir).str(name).u32(id);
        }
        w.u32(self.xattrs.len() as u32);
        for (id, attrs) in &self.xattrs {
            w.u32(*id).u32(attrs.len() as u32);
            for (name, value) in attrs {
                w.str(name).bytes(value);
            }
        }
        let mut bytes = w.finish();
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_be_bytes());
        bytes
    }

    /// Rebuilds a namespace from [`Namespace::snapshot`] bytes of any format this build
    /// knows, checking everything.
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
        let mut ns = match format {
            1 => v1::read(&mut r)?,
            2 => v2::read(&mut r)?,
            3 => v3::read(&mut r)?,
            4 => v4::read(&mut r)?,
            5 => v5::read(&mut r)?,
            6 => v6::read(&mut r)?,
            7 => v7::read(&mut r)?,
            8 => v8::read(&mut r)?,
            9 => v9::read(&mut r)?,
            10 => v10::read(&mut r)?,
            other => return Err(SnapshotError::Format(other)),
        };
        // Only format 8 says what an inode of kind 2 is.
        let unnamed =
            ns.nodes.iter().find(|(_, n)| matches!(&n.kind, Kind::Other(s) if s.rdev == UNNAMED));
        if let Some((id, _)) = unnamed {
            return Err(SnapshotError::Invalid(format!("inode {id} has kind 2 but no type")));
        }
        r.finish()?;
        ns.allocated = ns.compute_allocated();
        ns.count_subdirs();
        ns.session_ages = super::session_ages(&ns.sessions);
        // A snapshot that passed its checksum but breaks an invariant is a bug somewhere:
        // refuse it rather than serve it.
        match ns.violation() {
            Some(violation) => Err(SnapshotError::Invalid(violation)),
            None => Ok(ns),
        }
    }
}

impl Namespace {
    /// Counts every directory's subdirectories again (not in snapshots: derived).
    fn count_subdirs(&mut self) {
        let counts: Vec<(u32, u32)> = self
            .nodes
            .iter()
            .filter_map(|(id, n)| match &n.kind {
                Kind::Dir(dir) => {
                    let subdirs = dir
                        .children
                        .values()
                        .filter(|c| {
                            matches!(self.nodes.get(c).map(|n| &n.kind), Some(Kind::Dir(_)))
                        })
                        .count();
                    Some((id, subdirs as u32))
                }
                _ => None,
            })
            .collect();
        for (id, subdirs) in counts {
            if let Some(Kind::Dir(dir)) = self.nodes.get_mut(&id).map(|n| &mut n.kind) {
                dir.subdirs = subdirs;
            }
        }
    }
}

/// The format [`Namespace::snapshot`] writes.
pub(super) const SNAPSHOT_FORMAT: u16 = 10;
const SNAPSHOT_MAGIC: &[u8; 4] = b"MSNS";
const _: () = assert!(SNAPSHOT_FORMAT == 10, "a new format needs its reader in restore");

/// The device number an inode of kind 2 has until format 8's section names it.
const UNNAMED: u32 = u32::MAX;

/// Format 1 (commit 26030ca): `u32 next_id, u64 applied`, the inodes, the request sessions.
mod v1 {
    use super::*;

    pub(super) fn read(r: &mut BodyReader<'_>) -> Result<Namespace, SnapshotError> {
        let next_id = r.u32("next_id")?;
        let applied = r.u64("applied")?;
        let nodes = read_inodes(r, next_id)?;
        let sessions = read_sessions(r)?;
        Ok(Namespace {
            nodes,
            allocated: BTreeMap::new(),
            next_id,
            reuse_from: ROOT_ID + 1,
            sessions,
            session_ages: HashMap::new(),
            leases: BTreeMap::new(),
            draining: BTreeSet::new(),
            locks: LockTable::new(),
            xattrs: BTreeMap::new(),
            applied,
        })
    }

    fn read_inodes(r: &mut BodyReader<'_>, next_id: u32) -> Result<Inodes, SnapshotError> {
        let count = r.u32("inode count")?;
        let mut nodes = Inodes::default();
        let mut links = Vec::new();
        for _ in 0..count {
            let id = r.u32("inode id")?;
            let parent = r.u32("parent")?;
            let name = r.str("name")?;
            let times;
            let kind = match r.u8("kind")? {
                0 => {
                    times = Times::at_ms(r.u64("mtime")?);
                    Kind::Dir(Dir::empty(parent))
                }
                2 => {
                    times = Times::default();
                    let unnamed = UNNAMED;
                    Kind::Other(Special {
                        kind: NodeType::Fifo,
                        target: "".into(),
                        rdev: unnamed,
                        links: 1,
                    })
                }
                1 => {
                    let version = r.u32("file version")?;
                    let size = r.u64("size")?;
                    let block_size = r.u32("block size")?;
                    let replication = r.u8("replication")?;
                    let created_ms = r.u64("ctime")?;
                    // Formats before 7 kept one change time: it stands for all three.
                    times = Times::at_ms(r.u64("mtime")?);
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
                        let replicas = read_replicas(r)?;
                        blocks.push(Block { version, replicas: replicas.into_boxed_slice() });
                    }
                    let blocks = blocks.into_boxed_slice();
                    let links = 1;
                    Kind::File(File {
                        version,
                        size,
                        block_size,
                        replication,
                        created_ms,
                        links,
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
            // Formats before 5 kept no owners: root's, open to all, as it all was then.
            let owner = Owner::legacy(matches!(kind, Kind::Dir(_)));
            if nodes.insert(id, Node { kind, owner, times }).is_some() {
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
        Ok(nodes)
    }

    fn read_sessions(r: &mut BodyReader<'_>) -> Result<HashMap<SessionId, Session>, SnapshotError> {
        let session_count = r.u32("session count")?;
        let mut sessions = HashMap::with_capacity((session_count as usize).min(r.remaining() / 28));
        for _ in 0..session_count {
            let id = SessionId::read(r)?;
            let last_request = r.u64("last request")?;
            let last_time_ms = r.u64("last time")?;
            let outcome = read_outcome(r)?;
            sessions.insert(id, Session { last_request, last_time_ms, outcome });
        }
        Ok(sessions)
    }
}

/// Format 2 (commit 567ad8b): format 1, then the write leases by block.
mod v2 {
    use super::*;

    pub(super) fn read(r: &mut BodyReader<'_>) -> Result<Namespace, SnapshotError> {
        let mut ns = v1::read(r)?;
        for _ in 0..r.u32("lease count")? {
            let key = (r.u32("lease file")?, r.u16("lease block")?);
            let holder =
                SessionId { client: ClientId(r.u32("lease client")?), nonce: r.u64("nonce")? };
            let version = BlockVersion(r.u16("lease version")?);
            let expires_ms = r.u64("lease expiry")?;
            ns.leases.insert(key, Lease { holder, version, expires_ms });
        }
        Ok(ns)
    }
}

/// Format 3 (commit 60a7469): format 2, then the draining data-servers.
mod v3 {
    use super::*;

    pub(super) fn read(r: &mut BodyReader<'_>) -> Result<Namespace, SnapshotError> {
        let mut ns = v2::read(r)?;
        for _ in 0..r.u32("draining count")? {
            ns.draining.insert(NodeId(r.u32("draining server")?));
        }
        Ok(ns)
    }
}

/// Format 4 (commit 1d8937f): format 3, then the lock table.
mod v4 {
    use super::*;

    pub(super) fn read(r: &mut BodyReader<'_>) -> Result<Namespace, SnapshotError> {
        let mut ns = v3::read(r)?;
        ns.locks = LockTable::read(r)?;
        Ok(ns)
    }
}

/// Format 5 (commit 804cb77): format 4, then every inode's owner, group and mode by id: `u32 count`, then
/// `u32 id, u32 uid, u32 gid, u16 mode` each.
mod v5 {
    use super::*;

    pub(super) fn read(r: &mut BodyReader<'_>) -> Result<Namespace, SnapshotError> {
        let mut ns = v4::read(r)?;
        let count = r.u32("owner count")?;
        if count as usize != ns.nodes.len() {
            return Err(SnapshotError::Invalid(format!(
                "{count} owners for {} inodes",
                ns.nodes.len()
            )));
        }
        for _ in 0..count {
            let id = r.u32("owner inode")?;
            let owner = Owner { uid: r.u32("uid")?, gid: r.u32("gid")?, mode: r.u16("mode")? };
            if owner.mode > MODE_BITS {
                return Err(SnapshotError::Invalid(format!(
                    "inode {id} has mode {:o}",
                    owner.mode
                )));
            }
            match ns.nodes.get_mut(&id) {
                Some(node) => node.owner = owner,
                None => return Err(SnapshotError::Invalid(format!("an owner for no inode {id}"))),
            }
        }
        Ok(ns)
    }
}

/// Format 6: format 5, then `u32 reuse_from` (where the search for a freed id starts once
/// every id has been given), `u32 count`, then `u32 page, u32 mark` each: the highest
/// version of a file removed from each inode page that had one, by page. Formats before it
/// restore with no marks: files removed before then are not known, and a file reusing one
/// of their ids (after all 2^32 have been given) starts at version 1.
mod v6 {
    use super::*;
    use crate::namespace::LAST_ID;
    use crate::namespace::inode::PAGE_SLOTS;

    pub(super) fn read(r: &mut BodyReader<'_>) -> Result<Namespace, SnapshotError> {
        let mut ns = v5::read(r)?;
        ns.reuse_from = r.u32("reuse from")?;
        if !(ROOT_ID + 1..=LAST_ID).contains(&ns.reuse_from) {
            return Err(SnapshotError::Invalid(format!("id reuse starts at {}", ns.reuse_from)));
        }
        let pages = LAST_ID as usize / PAGE_SLOTS + 1;
        let mut previous = None;
        for _ in 0..r.u32("mark count")? {
            let page = r.u32("mark page")? as usize;
            let mark = r.u32("mark")?;
            if page >= pages || mark == 0 || previous.is_some_and(|p| p >= page) {
                return Err(SnapshotError::Invalid(format!("page {page} has mark {mark}")));
            }
            previous = Some(page);
            ns.nodes.set_mark(page, mark);
        }
        Ok(ns)
    }
}

/// Format 7: format 6, then every inode's times by id: `u32 count`, then `u32 id, u64
/// atime, u64 mtime, u64 ctime` each, in microseconds since the epoch. Formats before it
/// restore each inode's one time (in ms) as all three.
mod v7 {
    use super::*;

    pub(super) fn read(r: &mut BodyReader<'_>) -> Result<Namespace, SnapshotError> {
        let mut ns = v6::read(r)?;
        let count = r.u32("times count")?;
        if count as usize != ns.nodes.len() {
            return Err(SnapshotError::Invalid(format!(
                "{count} times for {} inodes",
                ns.nodes.len()
            )));
        }
        let mut previous = None;
        for _ in 0..count {
            let id = r.u32("times inode")?;
            let times = Times {
                atime_us: r.u64("atime")?,
                mtime_us: r.u64("mtime")?,
                ctime_us: r.u64("ctime")?,
            };
            if previous.is_some_and(|p| p >= id) {
                return Err(SnapshotError::Invalid(format!("times of inode {id} out of order")));
            }
            previous = Some(id);
            match ns.nodes.get_mut(&id) {
                Some(node) => node.times = times,
                None => return Err(SnapshotError::Invalid(format!("times for no inode {id}"))),
            }
        }
        Ok(ns)
    }
}

/// Format 8: format 7, then every inode of kind 2 (a symbolic link or a special file) by
/// id: `u32 count`, then `u32 id, u8 type, str target, u32 device` each.
mod v8 {
    use super::*;

    pub(super) fn read(r: &mut BodyReader<'_>) -> Result<Namespace, SnapshotError> {
        let mut ns = v7::read(r)?;
        let mut previous = None;
        for _ in 0..r.u32("special count")? {
            let id = r.u32("special inode")?;
            let (kind, target, rdev) = crate::namespace::entry::read_node(r)?;
            if previous.is_some_and(|p| p >= id) {
                return Err(SnapshotError::Invalid(format!("special inode {id} out of order")));
            }
            previous = Some(id);
            match ns.nodes.get_mut(&id).map(|n| &mut n.kind) {
                Some(Kind::Other(special)) if special.rdev == UNNAMED => {
                    *special = Special { kind, target: target.into(), rdev, links: 1 };
                }
                _ => return Err(SnapshotError::Invalid(format!("inode {id} is not of kind 2"))),
            }
        }
        Ok(ns)
    }
}

/// Format 9: format 8, then the further names of inodes with hard links (the tree section
/// writes each inode once, at its first name depth first): `u32 count`, then `u32
/// directory, str name, u32 inode` each, in the order depth first from the root meets them.
mod v9 {
    use super::*;
    use crate::path::MAX_COMPONENT_LEN;

    pub(super) fn read(r: &mut BodyReader<'_>) -> Result<Namespace, SnapshotError> {
        let mut ns = v8::read(r)?;
        for _ in 0..r.u32("link count")? {
            let dir = r.u32("link directory")?;
            let name = r.str("link name")?;
            let id = r.u32("link inode")?;
            if name.is_empty() || name.contains('/') || name.len() > MAX_COMPONENT_LEN {
                return Err(SnapshotError::Invalid(format!("a link named {name:?}")));
            }
            match ns.nodes.get_mut(&id).and_then(Node::links_mut) {
                Some(links) if *links < MAX_LINKS => *links += 1,
                _ => {
                    return Err(SnapshotError::Invalid(format!(
                        "a link to inode {id}, which is no file or has all its names"
                    )));
                }
            }
            match ns.nodes.get_mut(&dir).map(|n| &mut n.kind) {
                Some(Kind::Dir(d)) if !d.children.contains_key(name) => {
                    d.children.insert(name.into(), id);
                }
                _ => {
                    return Err(SnapshotError::Invalid(format!(
                        "link {name:?} in {dir}: no such directory, or the name is taken"
                    )));
                }
            }
        }
        Ok(ns)
    }
}

/// Format 10: format 9, then the extended attributes of every inode that has some, by id:
/// `u32 count`, then `u32 inode, u32 n` and `n` times `str name, bytes value`, names in
/// order.
mod v10 {
    use super::*;
    use crate::namespace::xattr::{MAX_XATTR_BYTES, MAX_XATTR_VALUE, Xattrs, bytes_of, valid_name};

    pub(super) fn read(r: &mut BodyReader<'_>) -> Result<Namespace, SnapshotError> {
        let mut ns = v9::read(r)?;
        let mut previous = None;
        for _ in 0..r.u32("attribute inode count")? {
            let id = r.u32("attribute inode")?;
            if previous.is_some_and(|p| p >= id) {
                return Err(SnapshotError::Invalid(format!("attributes of {id} out of order")));
            }
            previous = Some(id);
            if !matches!(ns.nodes.get(&id).map(|n| &n.kind), Some(Kind::File(_) | Kind::Dir(_))) {
                return Err(SnapshotError::Invalid(format!("attributes for inode {id}")));
            }
            let mut attrs = Xattrs::new();
            let mut last: Option<String> = None;
            for _ in 0..r.u32("attribute count")? {
                let name = r.str("attribute name")?;
                let value = r.bytes("attribute value")?;
                if !valid_name(name)
                    || value.len() > MAX_XATTR_VALUE
                    || last.as_deref().is_some_and(|l| l >= name)
                {
                    return Err(SnapshotError::Invalid(format!("inode {id}: attribute {name:?}")));
                }
                last = Some(name.to_string());
                attrs.insert(name.into(), value.into());
                if bytes_of(&attrs) > MAX_XATTR_BYTES {
                    return Err(SnapshotError::Invalid(format!(
                        "inode {id}: attributes too large"
                    )));
                }
            }
            if attrs.is_empty() {
                return Err(SnapshotError::Invalid(format!("inode {id}: an empty attribute set")));
            }
            ns.xattrs.insert(id, attrs);
        }
        Ok(ns)
    }
}

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

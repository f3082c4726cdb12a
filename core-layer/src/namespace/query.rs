//! Reading the namespace: path lookups, `stat`, listings, file and block metadata, and the
//! views repair reads. Nothing here changes state.

use meshfs_group::NodeId;

use super::access::Owner;
use super::inode::{Block, Dir, File, Kind, NodeType, Times};
use super::{Namespace, ROOT_ID, parent_text, path_str};
use crate::descriptor::{BlockDescriptor, BlockVersion, FileDescriptor, FileId};
use crate::error::NsError;
use crate::path::MeshPath;
use crate::token::ReadToken;

/// What `stat` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stat {
    /// A directory.
    Dir {
        /// Its id.
        id: u32,
        /// Entries in it.
        entries: usize,
        /// How many of them are directories (its link count is 2 more: its name, its `.`
        /// and each child's `..`).
        subdirs: u64,
        /// Its access, modification and change times.
        times: Times,
        /// Its owner, group and mode.
        owner: Owner,
    },
    /// A file.
    File(FileMeta),
    /// A symbolic link or a special file.
    Other {
        /// Its id.
        id: u32,
        /// What it is.
        kind: NodeType,
        /// A symlink's target (empty for the others).
        target: String,
        /// A device's number (0 for the others).
        rdev: u32,
        /// How many names it has (hard links).
        links: u32,
        /// Its access, modification and change times.
        times: Times,
        /// Its owner, group and mode.
        owner: Owner,
    },
}

impl Stat {
    /// The inode's id.
    pub fn id(&self) -> u32 {
        match self {
            Stat::Dir { id, .. } | Stat::Other { id, .. } => *id,
            Stat::File(meta) => meta.descriptor.id.0,
        }
    }

    /// Its owner, group and mode.
    pub fn owner(&self) -> Owner {
        match self {
            Stat::Dir { owner, .. } | Stat::Other { owner, .. } => *owner,
            Stat::File(meta) => meta.owner,
        }
    }

    /// How many names it has: a file's or special inode's hard links; a directory's link
    /// count (its name, its `.`, each subdirectory's `..`).
    pub fn links(&self) -> u32 {
        match self {
            Stat::Dir { subdirs, .. } => {
                u32::try_from(subdirs.saturating_add(2)).unwrap_or(u32::MAX)
            }
            Stat::Other { links, .. } => *links,
            Stat::File(meta) => meta.links,
        }
    }

    /// Its times.
    pub fn times(&self) -> Times {
        match self {
            Stat::Dir { times, .. } | Stat::Other { times, .. } => *times,
            Stat::File(meta) => meta.times,
        }
    }
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
    pub created_ms: u64,
    /// How many names it has (hard links).
    pub links: u32,
    /// Its access, modification and change times.
    pub times: Times,
    /// Its owner, group and mode.
    pub owner: Owner,
    /// Every block.
    pub blocks: Vec<BlockMeta>,
}

/// `get_block_metadata`: one block's descriptor and replica set, and the leader's read
/// token for it when a client is given the block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMeta {
    /// Its descriptor.
    pub descriptor: BlockDescriptor,
    /// The data-servers assigned to hold it.
    pub replicas: Vec<NodeId>,
    /// What lets the client read it from the data-servers (the leader signs it when it
    /// answers; the namespace itself leaves it empty).
    pub read: Option<ReadToken>,
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
    /// Its owner, group and mode.
    pub owner: Owner,
}

impl Namespace {
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
                Kind::Dir(_) | Kind::Other(_) => &[],
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
                Kind::Other(_) => {}
            }
        }
        Ok(files)
    }

    pub(super) fn lookup(&self, path: &MeshPath) -> Result<u32, NsError> {
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
                Kind::File(_) | Kind::Other(_) => {
                    return Err(NsError::NotADirectory(parent_text(&walked)));
                }
            }
        }
        Ok(id)
    }

    /// The directory `path`'s parent must be, and `path`'s last name.
    pub(super) fn parent_dir<'p>(&self, path: &'p MeshPath) -> Result<(u32, &'p str), NsError> {
        let (parent, name) = path.split_last().ok_or(NsError::Root)?;
        let id = self.lookup(&parent)?;
        match self.nodes[&id].kind {
            Kind::Dir(_) => Ok((id, name)),
            Kind::File(_) | Kind::Other(_) => Err(NsError::NotADirectory(path_str(&parent))),
        }
    }

    pub(super) fn dir_mut(&mut self, id: u32) -> &mut Dir {
        match &mut self.nodes.get_mut(&id).expect("directory id is live").kind {
            Kind::Dir(dir) => dir,
            Kind::File(_) | Kind::Other(_) => panic!("inode {id} is not a directory"),
        }
    }

    pub(super) fn file_meta(&self, id: u32) -> Option<FileMeta> {
        let node = self.nodes.get(&id)?;
        let Kind::File(file) = &node.kind else { return None };
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
                read: None,
            })
            .collect();
        Some(FileMeta {
            descriptor,
            size: file.size,
            block_size: file.block_size,
            replication: file.replication,
            created_ms: file.created_ms,
            links: file.links,
            times: node.times,
            owner: node.owner,
            blocks,
        })
    }

    /// `stat`.
    pub fn stat(&self, path: &MeshPath) -> Result<Stat, NsError> {
        let id = self.lookup(path)?;
        let node = &self.nodes[&id];
        match &node.kind {
            Kind::Dir(dir) => Ok(Stat::Dir {
                id,
                entries: dir.children.len(),
                subdirs: u64::from(dir.subdirs),
                times: node.times,
                owner: node.owner,
            }),
            Kind::File(_) => Ok(Stat::File(self.file_meta(id).expect("id is a file"))),
            Kind::Other(special) => Ok(Stat::Other {
                id,
                kind: special.kind,
                target: special.target.to_string(),
                rdev: special.rdev,
                links: special.links,
                times: node.times,
                owner: node.owner,
            }),
        }
    }

    /// `get_file_meta_data`.
    pub fn get_file_meta_data(&self, path: &MeshPath) -> Result<FileMeta, NsError> {
        let id = self.lookup(path)?;
        self.file_meta(id).ok_or_else(|| NsError::IsADirectory(path_str(path)))
    }

    /// `get_block_metadata`: block `index` of the file at `path`.
    pub fn get_block_metadata(&self, path: &MeshPath, index: u16) -> Result<BlockMeta, NsError> {
        // One block, not the file's whole list: commits ask this for every block written.
        let id = self.lookup(path)?;
        if let Kind::Dir(_) = self.nodes[&id].kind {
            return Err(NsError::IsADirectory(path_str(path)));
        }
        let block = self.block(id, index).ok_or_else(|| {
            NsError::NotFound(format!("{path} block {index} (the file has fewer blocks)"))
        })?;
        Ok(BlockMeta {
            descriptor: block.descriptor,
            replicas: block.replicas.to_vec(),
            read: None,
        })
    }

    /// `list`: a directory's entries by name, or a file as its own single entry.
    pub fn list(&self, path: &MeshPath) -> Result<Vec<DirEntry>, NsError> {
        let id = self.lookup(path)?;
        let entry = |name: &str, id: u32| {
            let (is_dir, size) = entry_kind(&self.nodes[&id].kind);
            DirEntry { name: name.to_string(), is_dir, id, size, owner: self.nodes[&id].owner }
        };
        match &self.nodes[&id].kind {
            Kind::Dir(dir) => {
                Ok(dir.children.iter().map(|(name, &child)| entry(name, child)).collect())
            }
            Kind::File(_) | Kind::Other(_) => {
                Ok(vec![entry(path.split_last().map_or("/", |(_, n)| n), id)])
            }
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
            let (is_dir, size) = entry_kind(&self.nodes[&child].kind);
            let owner = self.nodes[&child].owner;
            entries.push(DirEntry { name: name.to_string(), is_dir, id: child, size, owner });
        }
        Ok((entries, names.next().is_some()))
    }

    /// A page of directory `path` with each entry's full stat (a file's without its blocks):
    /// what a mount's readdirplus answers with, in one round instead of one per entry. At
    /// most `limit` entries, and entries of about `budget` bytes on the wire (a symlink's
    /// target counts): the page ends there, with more to come.
    pub fn list_plus_page(
        &self,
        path: &MeshPath,
        after: &str,
        limit: usize,
        budget: usize,
    ) -> Result<(Vec<(String, Stat)>, bool), NsError> {
        let id = self.lookup(path)?;
        let Kind::Dir(dir) = &self.nodes[&id].kind else {
            return Err(NsError::NotADirectory(path_str(path)));
        };
        use std::ops::Bound::{Excluded, Unbounded};
        let start = if after.is_empty() { Unbounded } else { Excluded(after) };
        let mut entries = Vec::new();
        let mut names = dir.children.range::<str, _>((start, Unbounded)).peekable();
        let mut bytes = 0;
        while let Some(&(name, &child)) = names.peek() {
            let stat = self.stat_without_blocks(child);
            let size = name.len()
                + 128
                + if let Stat::Other { target, .. } = &stat { target.len() } else { 0 };
            if entries.len() >= limit || (!entries.is_empty() && bytes + size > budget) {
                break;
            }
            bytes += size;
            entries.push((name.to_string(), stat));
            names.next();
        }
        Ok((entries, names.peek().is_some()))
    }

    /// Inode `id`'s stat, a file's without its block list.
    fn stat_without_blocks(&self, id: u32) -> Stat {
        let node = &self.nodes[&id];
        match &node.kind {
            Kind::Dir(dir) => Stat::Dir {
                id,
                entries: dir.children.len(),
                subdirs: u64::from(dir.subdirs),
                times: node.times,
                owner: node.owner,
            },
            Kind::File(file) => Stat::File(FileMeta {
                descriptor: FileDescriptor { id: FileId(id), version: file.version },
                size: file.size,
                block_size: file.block_size,
                replication: file.replication,
                created_ms: file.created_ms,
                links: file.links,
                times: node.times,
                owner: node.owner,
                blocks: Vec::new(),
            }),
            Kind::Other(special) => Stat::Other {
                id,
                kind: special.kind,
                target: special.target.to_string(),
                rdev: special.rdev,
                links: special.links,
                times: node.times,
                owner: node.owner,
            },
        }
    }
}

/// Whether a listed inode is a directory, and its size (a symlink's is its target's
/// length, as lstat says).
fn entry_kind(kind: &Kind) -> (bool, u64) {
    match kind {
        Kind::Dir(_) => (true, 0),
        Kind::File(f) => (false, f.size),
        Kind::Other(s) => (false, s.target.len() as u64),
    }
}

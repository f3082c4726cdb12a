//! Inodes: directories and files with their block lists, in a paged table by id. Plain
//! storage: it knows nothing of paths, entries or snapshots.

use std::collections::BTreeMap;

use meshfs_group::NodeId;

use super::access::Owner;
use crate::descriptor::BlockVersion;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Block {
    pub(super) version: BlockVersion,
    pub(super) replicas: Box<[NodeId]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct File {
    pub(super) version: u32,
    pub(super) block_size: u32,
    pub(super) replication: u8,
    pub(super) size: u64,
    /// When it was made, ms since the epoch (its birth time).
    pub(super) created_ms: u64,
    /// How many directory entries name it (its hard links): 1 to [`MAX_LINKS`].
    pub(super) links: u32,
    /// Replaced whole when the file grows: growth is rare, and a boxed slice is 8 bytes
    /// smaller than a Vec on every file.
    pub(super) blocks: Box<[Block]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Dir {
    /// The directory that lists it (a directory has one name; the root is its own parent).
    pub(super) parent: u32,
    pub(super) children: BTreeMap<Box<str>, u32>,
    /// How many of the children are directories (derived: kept with every change, counted
    /// again on restore), so that a directory's link count costs nothing to give.
    pub(super) subdirs: u32,
}

impl Dir {
    /// An empty directory in `parent`.
    pub(super) fn empty(parent: u32) -> Dir {
        Dir { parent, children: BTreeMap::new(), subdirs: 0 }
    }
}

/// Most names one file or special inode may have (ext4's limit): a link past it fails.
pub const MAX_LINKS: u32 = 65_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Kind {
    Dir(Dir),
    File(File),
    /// A symbolic link or a special file: no blocks, no children.
    Other(Special),
}

/// What an inode that is neither a file nor a directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeType {
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A character device.
    Char,
    /// A block device.
    Block,
    /// A Unix socket.
    Socket,
}

impl NodeType {
    /// Its byte on the wire, in entries and in snapshots (1 to 5).
    pub fn byte(self) -> u8 {
        match self {
            NodeType::Symlink => 1,
            NodeType::Fifo => 2,
            NodeType::Char => 3,
            NodeType::Block => 4,
            NodeType::Socket => 5,
        }
    }

    /// The type of byte `b`, if it is one.
    pub fn from_byte(b: u8) -> Option<NodeType> {
        Some(match b {
            1 => NodeType::Symlink,
            2 => NodeType::Fifo,
            3 => NodeType::Char,
            4 => NodeType::Block,
            5 => NodeType::Socket,
            _ => return None,
        })
    }
}

/// A symbolic link's target, or a device's number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Special {
    pub(super) kind: NodeType,
    /// What a symlink points to (empty for the others).
    pub(super) target: Box<str>,
    /// A device's number (0 for the others).
    pub(super) rdev: u32,
    /// How many directory entries name it (its hard links): 1 to [`MAX_LINKS`].
    pub(super) links: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Node {
    pub(super) kind: Kind,
    pub(super) owner: Owner,
    pub(super) times: Times,
}

impl Node {
    /// A file's or special inode's count of names; `None` for a directory (its one name is
    /// in its parent).
    pub(super) fn links(&self) -> Option<u32> {
        match &self.kind {
            Kind::Dir(_) => None,
            Kind::File(f) => Some(f.links),
            Kind::Other(s) => Some(s.links),
        }
    }

    /// The count of names of a file or special inode, to change (`None` for a directory).
    pub(super) fn links_mut(&mut self) -> Option<&mut u32> {
        match &mut self.kind {
            Kind::Dir(_) => None,
            Kind::File(f) => Some(&mut f.links),
            Kind::Other(s) => Some(&mut s.links),
        }
    }
}

/// An inode's times, in microseconds since the Unix epoch: last access (as set: reads do
/// not reach the namespace), last change of its contents (a file's bytes, a directory's
/// entries), and last change of its inode (contents, owner, mode, name).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Times {
    /// Last access, as set by `utimens` (or at creation).
    pub atime_us: u64,
    /// Last modification of the contents.
    pub mtime_us: u64,
    /// Last change of the inode.
    pub ctime_us: u64,
}

impl Times {
    /// All three at `ms` (an entry's time, in milliseconds).
    pub fn at_ms(ms: u64) -> Times {
        let us = ms.saturating_mul(1000);
        Times { atime_us: us, mtime_us: us, ctime_us: us }
    }

    /// The contents changed at `ms` (so did the inode).
    pub(super) fn modified(&mut self, ms: u64) {
        self.mtime_us = ms.saturating_mul(1000);
        self.ctime_us = self.mtime_us;
    }

    /// The inode changed at `ms` (owner, mode, name).
    pub(super) fn changed(&mut self, ms: u64) {
        self.ctime_us = ms.saturating_mul(1000);
    }
}

/// Inodes per page of [`Inodes`].
pub(super) const PAGE_SLOTS: usize = 1024;

/// Inodes by id: a vector of pages of [`PAGE_SLOTS`] slots. Ids are dense (new ones are
/// taken in order, and freed ones only once those run out), so lookups are two index
/// operations and memory is the live pages only; a page is freed when its last inode goes.
/// Iterates in id order.
///
/// Each page also keeps a mark: the highest version of any file removed from it. A file
/// that reuses an id of the page starts above the mark, so a file descriptor (id, version)
/// never names two files. Four bytes a page, kept when the page is freed.
#[derive(Debug, Clone, Default)]
pub(super) struct Inodes {
    pub(super) pages: Vec<Option<Page>>,
    pub(super) marks: Vec<u32>,
    pub(super) len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Page {
    pub(super) slots: Box<[Option<Node>]>,
    pub(super) live: usize,
}

impl Inodes {
    pub(super) fn locate(id: u32) -> (usize, usize) {
        (id as usize / PAGE_SLOTS, id as usize % PAGE_SLOTS)
    }

    pub(super) fn get(&self, id: &u32) -> Option<&Node> {
        let (page, slot) = Inodes::locate(*id);
        self.pages.get(page)?.as_ref()?.slots[slot].as_ref()
    }

    pub(super) fn get_mut(&mut self, id: &u32) -> Option<&mut Node> {
        let (page, slot) = Inodes::locate(*id);
        self.pages.get_mut(page)?.as_mut()?.slots[slot].as_mut()
    }

    pub(super) fn insert(&mut self, id: u32, node: Node) -> Option<Node> {
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

    pub(super) fn remove(&mut self, id: &u32) -> Option<Node> {
        let (index, slot) = Inodes::locate(*id);
        let page = self.pages.get_mut(index)?.as_mut()?;
        let node = page.slots[slot].take()?;
        page.live -= 1;
        self.len -= 1;
        if page.live == 0 {
            self.pages[index] = None;
        }
        if let Kind::File(file) = &node.kind
            && file.version > self.mark(index)
        {
            if self.marks.len() <= index {
                self.marks.resize(index + 1, 0);
            }
            self.marks[index] = file.version;
        }
        Some(node)
    }

    /// The highest version of a file removed from page `page`; 0 if none was.
    pub(super) fn mark(&self, page: usize) -> u32 {
        self.marks.get(page).copied().unwrap_or(0)
    }

    /// Sets a page's mark (restoring a snapshot).
    pub(super) fn set_mark(&mut self, page: usize, mark: u32) {
        if self.marks.len() <= page {
            self.marks.resize(page + 1, 0);
        }
        self.marks[page] = mark;
    }

    /// (page, mark) for every page with a mark, in page order.
    pub(super) fn marks(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        self.marks.iter().enumerate().filter(|(_, m)| **m > 0).map(|(p, m)| (p, *m))
    }

    /// The first id in `from..end` (within one page's range or across many) that is free and
    /// may be reused: its page's mark leaves a version to continue with. Whole free pages
    /// and full pages are passed in one step each.
    pub(super) fn free_in(&self, from: u32, end: u32) -> Option<u32> {
        let mut id = from;
        while id < end {
            let (page, slot) = Inodes::locate(id);
            let page_end = (((page + 1) * PAGE_SLOTS) as u64).min(u64::from(end)) as u32;
            if self.mark(page) == u32::MAX {
                // Every version was used by some file of this page: none of its ids returns.
                id = page_end;
                continue;
            }
            match self.pages.get(page).and_then(Option::as_ref) {
                None => return Some(id),
                Some(p) if p.live == PAGE_SLOTS => {}
                Some(p) => {
                    let last = slot + (page_end - id) as usize;
                    if let Some(free) = p.slots[slot..last].iter().position(Option::is_none) {
                        return Some(id + free as u32);
                    }
                }
            }
            id = page_end;
        }
        None
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// (id, node) in increasing id order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &Node)> {
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

/// The same inodes and marks, however many empty pages either table has kept.
impl PartialEq for Inodes {
    fn eq(&self, other: &Inodes) -> bool {
        self.len == other.len && self.iter().eq(other.iter()) && self.marks().eq(other.marks())
    }
}

impl Eq for Inodes {}

impl std::ops::Index<&u32> for Inodes {
    type Output = Node;

    fn index(&self, id: &u32) -> &Node {
        self.get(id).unwrap_or_else(|| panic!("inode {id} is not live"))
    }
}

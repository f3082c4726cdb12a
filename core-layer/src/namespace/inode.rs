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
    pub(super) ctime_ms: u64,
    pub(super) mtime_ms: u64,
    /// Replaced whole when the file grows: growth is rare, and a boxed slice is 8 bytes
    /// smaller than a Vec on every file.
    pub(super) blocks: Box<[Block]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Dir {
    pub(super) children: BTreeMap<Box<str>, u32>,
    pub(super) mtime_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Kind {
    Dir(Dir),
    File(File),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Node {
    pub(super) parent: u32,
    pub(super) kind: Kind,
    pub(super) owner: Owner,
}

/// Inodes per page of [`Inodes`].
pub(super) const PAGE_SLOTS: usize = 1024;

/// Inodes by id: a vector of pages of [`PAGE_SLOTS`] slots. Ids are dense and never reused,
/// so lookups are two index operations and memory is the live pages only; a page is freed
/// when its last inode goes. Iterates in id order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Inodes {
    pub(super) pages: Vec<Option<Page>>,
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
        Some(node)
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

impl std::ops::Index<&u32> for Inodes {
    type Output = Node;

    fn index(&self, id: &u32) -> &Node {
        self.get(id).unwrap_or_else(|| panic!("inode {id} is not live"))
    }
}

//! The namespace's invariants: what must hold after every entry. Debug builds and the
//! simulation check them after each one; a restored snapshot that breaks one is refused.

use super::Namespace;
use super::ROOT_ID;
use super::blocks::{blocks_for, distinct};
use std::collections::{HashMap, HashSet};

use super::inode::{Kind, MAX_LINKS, Node};
use crate::descriptor::BlockVersion;

impl Namespace {
    /// Panics if the books disagree (see [`Namespace::violation`]).
    pub fn check_invariants(&self) {
        if let Some(violation) = self.violation() {
            panic!("namespace invariant broken: {violation}");
        }
    }

    /// The first broken invariant, if any: every directory but the root is the child of
    /// exactly one directory, which is its parent; every file or special inode is named by
    /// as many entries as its link count; no orphans; ids below `next_id`; file sizes agree
    /// with block lists; replica sets are distinct and of the file's replication.
    pub fn violation(&self) -> Option<String> {
        if let Some(violation) = self.locks.violation() {
            return Some(violation);
        }
        let mut ages = super::session_ages(&self.sessions);
        let mut kept = self.session_ages.clone();
        kept.retain(|_, client| !client.is_empty());
        ages.retain(|_, client| !client.is_empty());
        if ages != kept {
            return Some("the per-client session order disagrees with the sessions".into());
        }
        if let Some((client, ages)) =
            ages.iter().find(|(_, a)| a.len() > super::MAX_SESSIONS_PER_CLIENT as usize)
        {
            return Some(format!("client {client} has {} sessions remembered", ages.len()));
        }
        let Some(root) = self.nodes.get(&ROOT_ID) else {
            return Some("the root is missing".into());
        };
        if !matches!(&root.kind, Kind::Dir(dir) if dir.parent == ROOT_ID) {
            return Some("the root must be a directory that is its own parent".into());
        }
        if !(ROOT_ID + 1..=super::LAST_ID).contains(&self.reuse_from) {
            return Some(format!("id reuse starts at {}", self.reuse_from));
        }
        // Entries naming each inode.
        let mut names: HashMap<u32, u32> = HashMap::with_capacity(self.nodes.len());
        for (id, node) in self.nodes.iter() {
            if id >= self.next_id {
                return Some(format!("inode {id} is not below next_id {}", self.next_id));
            }
            match &node.kind {
                Kind::Dir(dir) => {
                    let subdirs = dir
                        .children
                        .values()
                        .filter(|c| {
                            matches!(self.nodes.get(c).map(|n| &n.kind), Some(Kind::Dir(_)))
                        })
                        .count();
                    if subdirs != dir.subdirs as usize {
                        return Some(format!(
                            "directory {id} counts {} subdirectories, has {subdirs}",
                            dir.subdirs
                        ));
                    }
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
                            Some(Node { kind: Kind::Dir(c), .. }) if c.parent != id => {
                                return Some(format!(
                                    "{child}'s parent is {}, but {id} lists it",
                                    c.parent
                                ));
                            }
                            Some(_) => *names.entry(*child).or_default() += 1,
                        }
                    }
                }
                Kind::Other(special) => {
                    let symlink = special.kind == super::NodeType::Symlink;
                    if symlink == special.target.is_empty()
                        || special.target.len() > crate::path::MAX_PATH_LEN
                    {
                        return Some(format!(
                            "inode {id}: a {:?} with target {:?}",
                            special.kind, special.target
                        ));
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
        for (id, node) in self.nodes.iter().filter(|(id, _)| *id != ROOT_ID) {
            let named = names.get(&id).copied().unwrap_or(0);
            match node.links() {
                _ if named == 0 => return Some(format!("inode {id} is an orphan")),
                None if named > 1 => return Some(format!("directory {id} has {named} names")),
                Some(links) if links != named || links > MAX_LINKS => {
                    return Some(format!("inode {id} has {named} names and link count {links}"));
                }
                _ => {}
            }
        }
        // Counts agree even with a loop cut off from the root (a directory that is its own
        // parent) or a directory listed twice: every inode is reached from the root, and a
        // directory once.
        let mut seen = HashSet::with_capacity(self.nodes.len());
        let mut stack = vec![ROOT_ID];
        while let Some(id) = stack.pop() {
            let dir = match self.nodes.get(&id).map(|n| &n.kind) {
                Some(Kind::Dir(dir)) => Some(dir),
                _ => None,
            };
            if !seen.insert(id) && dir.is_some() {
                return Some(format!("directory {id} is reached from the root twice"));
            }
            if let Some(dir) = dir {
                stack.extend(dir.children.values());
            }
        }
        if seen.len() != self.nodes.len() {
            return Some(format!(
                "{} inodes are not reached from the root",
                self.nodes.len() - seen.len()
            ));
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
        for (id, attrs) in &self.xattrs {
            let holder = self.nodes.get(id).map(|n| &n.kind);
            if !matches!(holder, Some(Kind::File(_) | Kind::Dir(_)))
                || attrs.is_empty()
                || super::xattr::bytes_of(attrs) > super::MAX_XATTR_BYTES
                || !attrs.keys().all(|n| super::valid_name(n))
            {
                return Some(format!("inode {id}: attributes {:?}", attrs.keys()));
            }
        }
        if self.allocated != self.compute_allocated() {
            return Some("per-data-server allocation disagrees with the block lists".into());
        }
        None
    }
}

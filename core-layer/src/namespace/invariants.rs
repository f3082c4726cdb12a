//! The namespace's invariants: what must hold after every entry. Debug builds and the
//! simulation check them after each one; a restored snapshot that breaks one is refused.

use super::Namespace;
use super::ROOT_ID;
use super::blocks::{blocks_for, distinct};
use super::inode::Kind;
use crate::descriptor::BlockVersion;

impl Namespace {
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
        if root.parent != ROOT_ID || !matches!(root.kind, Kind::Dir(_)) {
            return Some("the root must be a directory that is its own parent".into());
        }
        if !(ROOT_ID + 1..=super::LAST_ID).contains(&self.reuse_from) {
            return Some(format!("id reuse starts at {}", self.reuse_from));
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
        if linked != self.nodes.len() {
            return Some(format!("{} orphan inodes", self.nodes.len() - linked));
        }
        // Counts agree even with a loop cut off from the root (a directory that is its own
        // parent) or an inode listed twice: every inode is reached from the root, once.
        let mut seen = std::collections::HashSet::with_capacity(self.nodes.len());
        let mut stack = vec![ROOT_ID];
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                return Some(format!("inode {id} is reached from the root twice"));
            }
            if let Some(Kind::Dir(dir)) = self.nodes.get(&id).map(|n| &n.kind) {
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
        if self.allocated != self.compute_allocated() {
            return Some("per-data-server allocation disagrees with the block lists".into());
        }
        None
    }
}

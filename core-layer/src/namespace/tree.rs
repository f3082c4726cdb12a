//! Tree operations: mkdir, create, rename and remove. Each checks everything first, then
//! changes the tree, so a failed entry changes nothing.

use super::access::MODE_BITS;
use super::access::{Caller, Owner};
use super::blocks::block_span;
use super::entry::{Outcome, SetTime};
use super::inode::{Dir, File, Kind, MAX_LINKS, Node, NodeType, Special, Times};
use super::{Namespace, ROOT_ID, path_str};
use crate::descriptor::{FileDescriptor, FileId, MAX_REPLICAS};
use crate::error::NsError;
use crate::path::{MAX_PATH_LEN, MeshPath, PathError};

/// The mode of a new directory and a new file when the request names none (`chmod`
/// changes it).
pub const NEW_DIR_MODE: u16 = 0o755;
/// What a directory `mkdir -p` makes on the way gets besides the mode asked for: its owner
/// may always write and search it, so the rest of the path can be made (as GNU mkdir does).
pub const PARENT_DIR_BITS: u16 = 0o300;
/// See [`NEW_DIR_MODE`].
pub const NEW_FILE_MODE: u16 = 0o644;

impl Namespace {
    /// `chmod` and `chown` (checked by [`Namespace::authorize`]).
    pub(super) fn set_owner(
        &mut self,
        path: &MeshPath,
        now: u64,
        change: impl FnOnce(&mut Owner),
    ) -> Result<Outcome, NsError> {
        let id = self.lookup(path)?;
        let node = self.nodes.get_mut(&id).expect("looked up");
        change(&mut node.owner);
        node.times.changed(now);
        Ok(Outcome::Changed)
    }

    /// `utimens` (checked by [`Namespace::authorize`]).
    pub(super) fn set_times(
        &mut self,
        path: &MeshPath,
        atime: SetTime,
        mtime: SetTime,
        now: u64,
    ) -> Result<Outcome, NsError> {
        let id = self.lookup(path)?;
        let times = &mut self.nodes.get_mut(&id).expect("looked up").times;
        let now_us = now.saturating_mul(1000);
        let pick = |how: SetTime, was: u64| match how {
            SetTime::Keep => was,
            SetTime::Now => now_us,
            SetTime::At(us) => us,
        };
        times.atime_us = pick(atime, times.atime_us);
        times.mtime_us = pick(mtime, times.mtime_us);
        times.ctime_us = now_us;
        Ok(Outcome::Changed)
    }

    pub(super) fn insert_child(&mut self, parent: u32, name: &str, id: u32, node: Node, now: u64) {
        let is_dir = matches!(node.kind, Kind::Dir(_));
        self.nodes.insert(id, node);
        let dir = self.dir_mut(parent);
        dir.subdirs += u32::from(is_dir);
        let previous = dir.children.insert(name.into(), id);
        assert!(previous.is_none(), "inserting {name:?} over an existing entry");
        self.modified(parent, now);
    }

    pub(super) fn mkdir(
        &mut self,
        path: &MeshPath,
        parents: bool,
        mode: u16,
        now: u64,
        caller: &Caller,
    ) -> Result<Outcome, NsError> {
        let owner = Owner::new(caller, mode);
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
            let (id, _) = self.new_id()?;
            let kind = Kind::Dir(Dir::empty(parent));
            let node = Node { kind, owner, times: Times::at_ms(now) };
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
                    Kind::File(_) | Kind::Other(_) => return Err(NsError::NotADirectory(walked)),
                },
                None => {
                    missing_from = Some(depth);
                    break;
                }
            }
        }
        let Some(start) = missing_from else { return Ok(Outcome::Mkdir) };
        let missing: Vec<&str> = path.components().skip(start).collect();
        let ids = self.new_ids(missing.len())?;
        let last = missing.len() - 1;
        for (i, (name, child)) in missing.into_iter().zip(ids).enumerate() {
            let owner = if i == last {
                owner
            } else {
                Owner { mode: owner.mode | PARENT_DIR_BITS, ..owner }
            };
            let node = Node { kind: Kind::Dir(Dir::empty(id)), owner, times: Times::at_ms(now) };
            self.insert_child(id, name, child, node, now);
            id = child;
        }
        Ok(Outcome::Mkdir)
    }

    pub(super) fn dir_child(&self, dir: u32, name: &str) -> Option<u32> {
        match &self.nodes[&dir].kind {
            Kind::Dir(d) => d.children.get(name).copied(),
            Kind::File(_) | Kind::Other(_) => None,
        }
    }

    pub(super) fn create_file(
        &mut self,
        path: &MeshPath,
        replication: u8,
        block_size: u32,
        mode: u16,
        now: u64,
        caller: &Caller,
    ) -> Result<Outcome, NsError> {
        if !(1..=MAX_REPLICAS).contains(&replication) {
            return Err(NsError::BadReplication(replication));
        }
        assert!(block_size > 0, "block size 0 reached the state machine");
        let (parent, name) = self.parent_dir(path)?;
        if self.dir_child(parent, name).is_some() {
            return Err(NsError::AlreadyExists(path_str(path)));
        }
        let (id, version) = self.new_id()?;
        let file = File {
            version,
            size: 0,
            block_size,
            replication,
            created_ms: now,
            links: 1,
            blocks: Box::new([]),
        };
        let owner = Owner::new(caller, mode);
        let node = Node { kind: Kind::File(file), owner, times: Times::at_ms(now) };
        self.insert_child(parent, name, id, node, now);
        Ok(Outcome::Created(FileDescriptor { id: FileId(id), version }))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn make_node(
        &mut self,
        path: &MeshPath,
        kind: NodeType,
        target: &str,
        rdev: u32,
        mode: u16,
        now: u64,
        caller: &Caller,
    ) -> Result<Outcome, NsError> {
        let (parent, name) = self.parent_dir(path)?;
        if self.dir_child(parent, name).is_some() {
            return Err(NsError::AlreadyExists(path_str(path)));
        }
        let (id, _) = self.new_id()?;
        let mode = if kind == NodeType::Symlink { 0o777 } else { mode & MODE_BITS };
        let special = Special { kind, target: target.into(), rdev, links: 1 };
        let node = Node {
            kind: Kind::Other(special),
            owner: Owner::new(caller, mode),
            times: Times::at_ms(now),
        };
        self.insert_child(parent, name, id, node, now);
        Ok(Outcome::Changed)
    }

    pub(super) fn rename(
        &mut self,
        from: &MeshPath,
        to: &MeshPath,
        replace: bool,
        now: u64,
    ) -> Result<Outcome, NsError> {
        if from.is_root() || to.is_root() {
            return Err(NsError::Root);
        }
        let id = self.lookup(from)?;
        if from == to {
            return Ok(Outcome::Renamed);
        }
        let moves_dir = matches!(self.nodes[&id].kind, Kind::Dir(_));
        if moves_dir && to.starts_with(from) {
            return Err(NsError::MoveIntoItself { from: path_str(from), to: path_str(to) });
        }
        let (new_parent, new_name) = self.parent_dir(to)?;
        let replaced = match self.dir_child(new_parent, new_name) {
            None => None,
            // Two names of one inode: as rename(2), nothing happens.
            Some(target) if target == id => return Ok(Outcome::Renamed),
            Some(_) if !replace => return Err(NsError::AlreadyExists(path_str(to))),
            Some(target) => {
                // As rename(2): a file only over a file, a directory only over an empty
                // directory; the target may not be an ancestor of the source (it is then
                // not empty).
                match (&self.nodes[&target].kind, moves_dir) {
                    (Kind::Dir(_), false) => return Err(NsError::IsADirectory(path_str(to))),
                    (Kind::File(_) | Kind::Other(_), true) => {
                        return Err(NsError::NotADirectory(path_str(to)));
                    }
                    (Kind::Dir(dir), true) if !dir.children.is_empty() => {
                        return Err(NsError::NotEmpty(path_str(to)));
                    }
                    _ => Some(target),
                }
            }
        };
        // Every path under the moved directory must stay within the path limit.
        let room = MAX_PATH_LEN - to.as_str().len();
        if let Some(deeper) = self.longest_below(id, room) {
            let len = to.as_str().len() + deeper;
            return Err(NsError::Path(PathError::TooLong { len }));
        }
        let (old_parent, old_name) = self.parent_dir(from)?;
        if let Some(target) = replaced {
            let dir = self.dir_mut(new_parent);
            dir.children.remove(new_name);
            // A directory replaces only a directory.
            dir.subdirs -= u32::from(moves_dir);
            self.drop_tree(target, now);
        }
        let dir = self.dir_mut(old_parent);
        dir.children.remove(old_name);
        dir.subdirs -= u32::from(moves_dir);
        self.modified(old_parent, now);
        let dir = self.dir_mut(new_parent);
        dir.children.insert(new_name.into(), id);
        dir.subdirs += u32::from(moves_dir);
        self.modified(new_parent, now);
        let node = self.nodes.get_mut(&id).expect("live");
        if let Kind::Dir(dir) = &mut node.kind {
            dir.parent = new_parent;
        }
        node.times.changed(now);
        Ok(Outcome::Renamed)
    }

    /// The length of some path below directory `id` (relative to it, with its leading `/`)
    /// longer than `room` bytes, if there is one; `None` when all of them fit. Walks the
    /// subtree until it finds one.
    fn longest_below(&self, id: u32, room: usize) -> Option<usize> {
        let mut stack = vec![(id, 0usize)];
        while let Some((id, len)) = stack.pop() {
            let Kind::Dir(dir) = &self.nodes[&id].kind else { continue };
            for (name, &child) in &dir.children {
                let below = len + 1 + name.len();
                if below > room {
                    return Some(below);
                }
                stack.push((child, below));
            }
        }
        None
    }

    pub(super) fn remove(
        &mut self,
        path: &MeshPath,
        recursive: bool,
        now: u64,
    ) -> Result<Outcome, NsError> {
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
        let (parent, name) = self.parent_dir(path)?;
        let is_dir = matches!(self.nodes[&id].kind, Kind::Dir(_));
        let dir = self.dir_mut(parent);
        dir.children.remove(name);
        dir.subdirs -= u32::from(is_dir);
        self.modified(parent, now);
        let (files, dirs) = self.drop_tree(id, now);
        Ok(Outcome::Removed { files, dirs })
    }

    /// `link`: `to` becomes one more name of the file or special inode at `from`.
    pub(super) fn link(
        &mut self,
        from: &MeshPath,
        to: &MeshPath,
        now: u64,
    ) -> Result<Outcome, NsError> {
        let id = self.lookup(from)?;
        let Some(links) = self.nodes[&id].links() else {
            return Err(NsError::LinkDir(path_str(from)));
        };
        let (parent, name) = self.parent_dir(to)?;
        if self.dir_child(parent, name).is_some() {
            return Err(NsError::AlreadyExists(path_str(to)));
        }
        if links >= MAX_LINKS {
            return Err(NsError::TooManyLinks { path: path_str(from), max: MAX_LINKS });
        }
        let node = self.nodes.get_mut(&id).expect("looked up");
        *node.links_mut().expect("not a directory") += 1;
        node.times.changed(now);
        self.dir_mut(parent).children.insert(name.into(), id);
        self.modified(parent, now);
        Ok(Outcome::Changed)
    }

    /// Inode `id`'s contents changed at `now` (ms).
    pub(super) fn modified(&mut self, id: u32, now: u64) {
        if let Some(node) = self.nodes.get_mut(&id) {
            node.times.modified(now);
        }
    }

    /// One name of inode `id` is gone (already out of its directory), and with it, for a
    /// directory, everything below. A file or special inode with other names loses one and
    /// stays; the rest go: their leases end and their blocks no longer count against their
    /// data-servers. Returns (names of files, directories) removed.
    fn drop_tree(&mut self, id: u32, now: u64) -> (u64, u64) {
        let (mut files, mut dirs) = (0, 0);
        let mut stack = vec![id];
        while let Some(next) = stack.pop() {
            let node = self.nodes.get_mut(&next).expect("tree nodes are live");
            if let Some(links) = node.links_mut()
                && *links > 1
            {
                *links -= 1;
                node.times.changed(now);
                files += 1;
                continue;
            }
            self.xattrs.remove(&next);
            match self.nodes.remove(&next).expect("tree nodes are live").kind {
                Kind::Dir(dir) => {
                    dirs += 1;
                    stack.extend(dir.children.values());
                }
                Kind::Other(_) => files += 1,
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
        (files, dirs)
    }
}

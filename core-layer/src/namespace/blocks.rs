//! Block operations: growing a file (placed blocks), write leases, committing a write,
//! swapping a failed replica of an unwritten block, and repair's replacing of a replica;
//! with the per-data-server allocation they keep.

use std::collections::BTreeMap;

use meshfs_group::NodeId;

use super::entry::Outcome;
use super::inode::{Block, Kind};
use super::{LEASE_MS, Lease, Namespace, path_str};
use crate::descriptor::{
    BlockDescriptor, BlockVersion, FileDescriptor, FileId, MAX_BLOCKS_PER_FILE,
};
use crate::error::NsError;
use crate::path::MeshPath;
use crate::session::SessionId;

impl Namespace {
    pub(super) fn compute_allocated(&self) -> BTreeMap<NodeId, u64> {
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

    /// `truncate` to a smaller size: blocks wholly past the end go (their leases end, their
    /// replicas become orphans the healer deletes), the last one counts only what it still
    /// covers. The caller zeroed the bytes of the last block past `size` first, so a file
    /// that grows again reads zeros there. A size the file has changes nothing but takes a
    /// version, as an expand does.
    pub(super) fn truncate(
        &mut self,
        path: &MeshPath,
        size: u64,
        now: u64,
    ) -> Result<Outcome, NsError> {
        let id = self.lookup(path)?;
        let node = self.nodes.get_mut(&id).expect("looked up");
        let Kind::File(file) = &mut node.kind else {
            return Err(NsError::IsADirectory(path_str(path)));
        };
        if size > file.size {
            // Growth places blocks: that is an expand's work.
            return Err(NsError::TruncateGrows {
                path: path_str(path),
                size: file.size,
                requested: size,
            });
        }
        let Some(new_version) = file.version.checked_add(1) else {
            return Err(NsError::VersionsExhausted(path_str(path)));
        };
        let keep = blocks_for(size, file.block_size) as usize;
        for (i, block) in file.blocks.iter().enumerate() {
            let before = block_span(file.size, file.block_size, i as u64);
            let after = if i < keep { block_span(size, file.block_size, i as u64) } else { 0 };
            for server in block.replicas.iter().filter(|_| before > after) {
                if let Some(bytes) = self.allocated.get_mut(server) {
                    *bytes -= before - after;
                    if *bytes == 0 {
                        self.allocated.remove(server);
                    }
                }
            }
        }
        if keep < file.blocks.len() {
            let mut blocks = std::mem::take(&mut file.blocks).into_vec();
            blocks.truncate(keep);
            file.blocks = blocks.into_boxed_slice();
            self.leases.retain(|&(f, index), _| f != id || usize::from(index) < keep);
        }
        file.size = size;
        file.version = new_version;
        node.times.modified(now);
        Ok(Outcome::Changed)
    }

    pub(super) fn expand(
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
        // An expand that changes nothing still takes a version, as it always has: entries
        // already in logs must apply as they did when they were written.
        let Some(new_version) = file.version.checked_add(1) else {
            return Err(NsError::VersionsExhausted(path_str(path)));
        };
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
        let node = self.nodes.get_mut(&id).expect("looked up");
        node.times.modified(now);
        let Kind::File(file) = &mut node.kind else { unreachable!("checked above") };
        file.version = new_version;
        file.size = size;
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

    pub(super) fn lease(
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
        let expires_ms = now.saturating_add(LEASE_MS);
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

    pub(super) fn commit_write(
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
        let Some(new_version) = file.version.checked_add(1) else {
            return Err(NsError::VersionsExhausted(path_str(path)));
        };
        self.leases.remove(&(id, index));
        block.version = version;
        let replicas = block.replicas.to_vec();
        file.version = new_version;
        let descriptor = FileDescriptor { id: FileId(id), version: file.version };
        self.modified(id, now);
        Ok(Outcome::Committed {
            block: BlockDescriptor { file: descriptor, index, version },
            replicas,
        })
    }

    pub(super) fn swap_replica(
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
        let Kind::File(file) = &self.nodes.get(&id).expect("looked up").kind else {
            return Err(NsError::IsADirectory(path_str(path)));
        };
        let blocks = file.blocks.len();
        let Some(block) = file.blocks.get(usize::from(index)) else {
            return Err(NsError::NotFound(format!(
                "{path} block {index} (the file has {blocks} blocks)"
            )));
        };
        let refuse = |why: String| NsError::Placement(format!("{path} block {index}: {why}"));
        if !holds_lease {
            return Err(refuse("only the writer holding its lease may change its replicas".into()));
        }
        if block.version != BlockVersion::UNWRITTEN {
            // Its bytes live on the replicas: a new one must be copied first (repair).
            return Err(refuse("it holds written data; its replicas change only by repair".into()));
        }
        self.exchange_replica(id, index, failed, replacement, &refuse)
    }

    /// `bytes` of assigned blocks move from data-server `from` to `to`.
    pub(super) fn move_allocation(&mut self, from: NodeId, to: NodeId, bytes: u64) {
        if let Some(assigned) = self.allocated.get_mut(&from) {
            *assigned -= bytes;
            if *assigned == 0 {
                self.allocated.remove(&from);
            }
        }
        *self.allocated.entry(to).or_default() += bytes;
    }

    pub(super) fn replace_replica(
        &mut self,
        file: u32,
        index: u16,
        version: BlockVersion,
        remove: NodeId,
        add: NodeId,
        now: u64,
    ) -> Result<Outcome, NsError> {
        let leased = self.leased(file, index, now);
        let refuse = |why: String| NsError::Placement(format!("file {file} block {index}: {why}"));
        let Some(Kind::File(f)) = self.nodes.get(&file).map(|n| &n.kind) else {
            return Err(NsError::NotFound(format!("file {file}")));
        };
        let Some(block) = f.blocks.get(usize::from(index)) else {
            return Err(NsError::NotFound(format!("file {file} block {index}")));
        };
        if block.version != version {
            let why = format!("it is at version {} now, not {}", block.version.0, version.0);
            return Err(refuse(why));
        }
        if leased {
            return Err(refuse("a write lease is in force".into()));
        }
        self.exchange_replica(file, index, remove, add, &refuse)
    }

    /// What swapping and replacing a replica share: `out` leaves the replica set of block
    /// `index` of file `id` and `into` takes its slot, and the allocation follows. Refused
    /// (with `refuse`'s error) if `out` is not a member or `into` already is. The caller has
    /// checked that the block exists and may change.
    fn exchange_replica(
        &mut self,
        id: u32,
        index: u16,
        out: NodeId,
        into: NodeId,
        refuse: &dyn Fn(String) -> NsError,
    ) -> Result<Outcome, NsError> {
        let Some(Kind::File(file)) = self.nodes.get_mut(&id).map(|n| &mut n.kind) else {
            unreachable!("the caller found file {id}");
        };
        let (size, block_size) = (file.size, file.block_size);
        let block = file.blocks.get_mut(usize::from(index)).expect("the caller found the block");
        let Some(slot) = block.replicas.iter().position(|&r| r == out) else {
            return Err(refuse(format!("data-server {out} is not one of its replicas")));
        };
        if block.replicas.contains(&into) {
            return Err(refuse(format!("data-server {into} already holds it")));
        }
        block.replicas[slot] = into;
        let replicas = block.replicas.to_vec();
        self.move_allocation(out, into, block_span(size, block_size, u64::from(index)));
        Ok(Outcome::Swapped { replicas })
    }
}

/// Bytes of a file of `size` that block `index` covers.
pub(super) fn block_span(size: u64, block_size: u32, index: u64) -> u64 {
    let block_size = u64::from(block_size);
    block_size.min(size.saturating_sub(index * block_size))
}

pub(super) fn blocks_for(size: u64, block_size: u32) -> u64 {
    size.div_ceil(u64::from(block_size))
}

pub(super) fn distinct(set: &[NodeId]) -> bool {
    set.iter().enumerate().all(|(i, a)| set[i + 1..].iter().all(|b| a != b))
}

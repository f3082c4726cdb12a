//! Where new blocks go: distinct live data-servers, most free space first.
//!
//! The leader calls [`place`] with the data-servers the group layer sees up and their free
//! space, and puts the answer in the log entry; applying the entry then never needs the
//! live view, so every replica applies it alike.
//!
//! It must not know how the leader learns who is up or how full: it is given the loads.

use meshfs_group::NodeId;

/// A data-server as the leader sees it when placing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataServerLoad {
    /// The data-server.
    pub id: NodeId,
    /// Bytes it can still take.
    pub free_bytes: u64,
}

/// Why blocks could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// Fewer live data-servers than copies wanted.
    #[error("replication {needed} needs {needed} live data-servers, {live} are up")]
    NotEnoughDataServers {
        /// Copies wanted.
        needed: u8,
        /// Data-servers up.
        live: usize,
    },
    /// Not enough data-servers with room for another block.
    #[error("no room: fewer than {needed} live data-servers have {block_size} bytes free")]
    NoSpace {
        /// Copies wanted.
        needed: u8,
        /// The block size.
        block_size: u64,
    },
}

/// Replica sets for `blocks` new blocks of `block_size` bytes, `replication` copies each:
/// per block, the distinct servers with the most free space left (ties by lower id), counting
/// the blocks placed earlier in the same call.
pub fn place(
    blocks: usize,
    replication: u8,
    block_size: u64,
    live: &[DataServerLoad],
) -> Result<Vec<Vec<NodeId>>, PlacementError> {
    let needed = usize::from(replication);
    if live.len() < needed || needed == 0 {
        return Err(PlacementError::NotEnoughDataServers { needed: replication, live: live.len() });
    }
    let mut free: Vec<DataServerLoad> = live.to_vec();
    let mut out = Vec::with_capacity(blocks);
    for _ in 0..blocks {
        free.sort_by(|a, b| b.free_bytes.cmp(&a.free_bytes).then(a.id.cmp(&b.id)));
        if free[needed - 1].free_bytes < block_size {
            return Err(PlacementError::NoSpace { needed: replication, block_size });
        }
        let chosen: Vec<NodeId> = free[..needed].iter().map(|s| s.id).collect();
        for server in &mut free[..needed] {
            server.free_bytes -= block_size;
        }
        out.push(chosen);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(id: u32, free: u64) -> DataServerLoad {
        DataServerLoad { id: NodeId(id), free_bytes: free }
    }

    #[test]
    fn most_free_first_distinct_and_spread() {
        let live = [load(4, 100), load(5, 300), load(6, 200)];
        let placed = place(3, 2, 100, &live).unwrap();
        // 5 (300) and 6 (200); then 5 (200) and, of 4 and 6 at 100, the lower id 4;
        // then 5 and 6 (100 each) while 4 has nothing left.
        assert_eq!(placed[0], [NodeId(5), NodeId(6)]);
        assert_eq!(placed[1], [NodeId(5), NodeId(4)]);
        assert_eq!(placed[2], [NodeId(5), NodeId(6)]);
        for set in &placed {
            assert_ne!(set[0], set[1], "never two replicas on one server");
        }
    }

    #[test]
    fn too_few_servers_or_too_little_room_is_an_error() {
        let live = [load(4, 1000)];
        assert_eq!(
            place(1, 2, 10, &live),
            Err(PlacementError::NotEnoughDataServers { needed: 2, live: 1 })
        );
        let live = [load(4, 1000), load(5, 5)];
        assert_eq!(
            place(1, 2, 10, &live),
            Err(PlacementError::NoSpace { needed: 2, block_size: 10 })
        );
        let live = [load(4, 20), load(5, 20)];
        assert_eq!(
            place(3, 2, 10, &live),
            Err(PlacementError::NoSpace { needed: 2, block_size: 10 })
        );
        assert_eq!(place(2, 2, 10, &live).unwrap().len(), 2);
    }
}

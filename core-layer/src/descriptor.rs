//! File and block descriptors, with the exact widths of the original design.
//!
//! - A file descriptor is a 32-bit file id and a 32-bit version; the version increases
//!   whenever the file's metadata (size, block list) changes.
//! - A block descriptor is a file descriptor, a 16-bit block index and a 16-bit block
//!   version. A file has at most 65,536 blocks. A block's version increases when the
//!   meta-servers grant a write lease on it or change its replica set, not on every write.
//!
//! Block versions wrap at 2^16, so they are compared as serial numbers (RFC 1982): `a` is
//! newer than `b` when `a - b`, taken mod 2^16, is in `1..2^15`. Two versions exactly 2^15
//! apart are neither newer nor older: the state machine never lets versions of one block
//! drift that far apart, since a replica is either current or replaced.
//!
//! It must not know where blocks are stored or who holds them.

use std::cmp::Ordering;
use std::fmt;

use meshfs_group::NodeId;
use meshfs_net::body::{BodyError, BodyReader, BodyWriter};

/// Most blocks in one file: block indexes are 16 bits.
pub const MAX_BLOCKS_PER_FILE: u32 = 1 << 16;

/// Most copies of a block: replication is 1 to 16.
pub const MAX_REPLICAS: u8 = 16;

/// Writes a replica set (a block's data-servers, in chain order): a count, then each id.
/// The one encoding of a replica set, in messages, log entries, snapshots and tokens.
pub fn write_replicas(w: &mut BodyWriter, replicas: &[NodeId]) {
    // A replica set has at most MAX_REPLICAS members; a longer list (a bug, or a list of
    // servers that is not a replica set) is cut there rather than panic an encoder.
    let replicas = &replicas[..replicas.len().min(usize::from(MAX_REPLICAS))];
    w.u8(replicas.len() as u8);
    for id in replicas {
        w.u32(id.0);
    }
}

/// Reads what [`write_replicas`] wrote; a count over [`MAX_REPLICAS`] is refused.
pub fn read_replicas(r: &mut BodyReader<'_>) -> Result<Vec<NodeId>, BodyError> {
    let count = r.u8("replica count")?;
    if count > MAX_REPLICAS {
        return Err(BodyError::Invalid { field: "replica count", value: u64::from(count) });
    }
    (0..count).map(|_| r.u32("replica").map(NodeId)).collect()
}

/// A file's id: unique among the live inodes. Ids are given in order and reused only once
/// all 2^32 have been; a file that reuses one starts at a version above every earlier
/// holder's, so a [`FileDescriptor`] never names two files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub u32);

/// A file's id and metadata version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileDescriptor {
    /// The file.
    pub id: FileId,
    /// Its metadata version; increases on every metadata change.
    pub version: u32,
}

/// A 16-bit block version, compared with wrap-around.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockVersion(pub u16);

impl BlockVersion {
    /// The version of a block that was allocated but never written: it holds zeros, and no
    /// data-server need be asked. Write leases never grant it.
    pub const UNWRITTEN: BlockVersion = BlockVersion(1);

    /// The version after this one (wrapping).
    pub fn next(self) -> BlockVersion {
        BlockVersion(self.0.wrapping_add(1))
    }

    /// Serial-number order: `Some(Greater)` if `self` is newer than `other`. `None` when
    /// they are exactly 2^15 apart, which has no defined order.
    pub fn serial_cmp(self, other: BlockVersion) -> Option<Ordering> {
        let diff = self.0.wrapping_sub(other.0);
        match diff {
            0 => Some(Ordering::Equal),
            1..0x8000 => Some(Ordering::Greater),
            0x8000 => None,
            _ => Some(Ordering::Less),
        }
    }

    /// Whether `self` is strictly newer than `other`.
    pub fn is_newer_than(self, other: BlockVersion) -> bool {
        self.serial_cmp(other) == Some(Ordering::Greater)
    }
}

/// One block of one file at one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockDescriptor {
    /// The file and its version when the block was described.
    pub file: FileDescriptor,
    /// The block's index in the file.
    pub index: u16,
    /// The block's version.
    pub version: BlockVersion,
}

impl fmt::Display for FileDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}v{}", self.id.0, self.version)
    }
}

impl fmt::Display for BlockDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}v{}", self.file, self.index, self.version.0)
    }
}

impl FileDescriptor {
    /// Eight bytes: id, version.
    pub fn write(&self, w: &mut BodyWriter) {
        w.u32(self.id.0).u32(self.version);
    }

    /// Reads what [`FileDescriptor::write`] wrote.
    pub fn read(r: &mut BodyReader<'_>) -> Result<FileDescriptor, BodyError> {
        Ok(FileDescriptor { id: FileId(r.u32("file id")?), version: r.u32("file version")? })
    }
}

impl BlockDescriptor {
    /// Twelve bytes: file descriptor, index, version.
    pub fn write(&self, w: &mut BodyWriter) {
        self.file.write(w);
        w.u16(self.index).u16(self.version.0);
    }

    /// Reads what [`BlockDescriptor::write`] wrote.
    pub fn read(r: &mut BodyReader<'_>) -> Result<BlockDescriptor, BodyError> {
        Ok(BlockDescriptor {
            file: FileDescriptor::read(r)?,
            index: r.u16("block index")?,
            version: BlockVersion(r.u16("block version")?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn replica_sets_round_trip_and_more_than_sixteen_are_refused() {
        let set: Vec<NodeId> = (1..=16).map(NodeId).collect();
        let mut w = BodyWriter::new();
        write_replicas(&mut w, &set);
        let bytes = w.finish();
        assert_eq!(read_replicas(&mut BodyReader::new(&bytes)).unwrap(), set);
        let mut too_many = bytes;
        too_many[0] = 17;
        too_many.extend_from_slice(&17u32.to_be_bytes());
        let err = read_replicas(&mut BodyReader::new(&too_many)).unwrap_err();
        assert!(matches!(err, BodyError::Invalid { field: "replica count", value: 17 }), "{err}");
    }

    #[test]
    fn versions_compare_across_the_wrap() {
        let v = BlockVersion;
        assert!(v(1).is_newer_than(v(0)));
        assert!(v(0).is_newer_than(v(u16::MAX)), "0 follows 65535");
        assert!(v(5).is_newer_than(v(65_530)));
        assert!(!v(65_530).is_newer_than(v(5)));
        assert_eq!(v(u16::MAX).next(), v(0));
        assert_eq!(v(7).serial_cmp(v(7)), Some(Ordering::Equal));
        assert_eq!(v(0).serial_cmp(v(0x8000)), None, "half the circle apart has no order");
        assert_eq!(v(0x7fff).serial_cmp(v(0)), Some(Ordering::Greater));
        assert_eq!(v(0x8001).serial_cmp(v(0)), Some(Ordering::Less));
    }

    #[test]
    fn golden_block_descriptor() {
        let d = BlockDescriptor {
            file: FileDescriptor { id: FileId(0x0102_0304), version: 0x0506_0708 },
            index: 0x090a,
            version: BlockVersion(0x0b0c),
        };
        let mut w = BodyWriter::new();
        d.write(&mut w);
        let bytes = w.finish();
        assert_eq!(bytes, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let mut r = BodyReader::new(&bytes);
        assert_eq!(BlockDescriptor::read(&mut r).unwrap(), d);
        r.finish().unwrap();
        assert_eq!(d.to_string(), "16909060v84281096#2314v2828");
    }

    proptest! {
        #[test]
        fn next_is_always_newer_and_order_is_antisymmetric(a in any::<u16>(), b in any::<u16>()) {
            prop_assert!(BlockVersion(a).next().is_newer_than(BlockVersion(a)));
            let ab = BlockVersion(a).serial_cmp(BlockVersion(b));
            let ba = BlockVersion(b).serial_cmp(BlockVersion(a));
            prop_assert_eq!(ab.map(Ordering::reverse), ba);
        }
    }
}

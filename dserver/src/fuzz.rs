//! Checks for the fuzz targets (`fuzz/`, nightly) and their stable property-test twins: each
//! takes arbitrary bytes and panics only if the code under test breaks a promise.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::block_store::BlockStore;

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// `data` as a replica file of a data-server's store: opening the store never panics, a
/// file it takes is read whole (every segment checked) without panicking, and one it sets
/// aside is not served.
pub fn block_file(data: &[u8]) {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("meshfs-fuzz-blocks-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let shard = dir.join("blocks/07");
    std::fs::create_dir_all(&shard).expect("a temporary directory");
    std::fs::write(shard.join("00000007-0003.blk"), data).expect("the replica file");
    if let Ok(store) = BlockStore::open(&dir, 1 << 40) {
        for info in store.list() {
            assert!(info.len <= u64::from(info.block_size), "{info:?}");
            let _ = store.read(info.descriptor, 0, info.len);
            let _ = store.read(info.descriptor, info.len / 2, info.len);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(test)]
mod tests {
    //! The stable twin of the fuzz target: mutations of the golden replica file (a valid
    //! header, so cases reach the segment table and data), with a CI budget.

    use super::*;
    use proptest::prelude::*;

    fn golden() -> Vec<u8> {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/block-format1.blk");
        std::fs::read(path).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn block_files(data in proptest::collection::vec(any::<u8>(), 0..8192)) {
            block_file(&data);
        }

        #[test]
        fn mutated_block_files(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            header_only in any::<bool>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut data = golden();
            for (at, byte) in edits {
                // Mostly in the header and segment table, where the lengths are.
                let span = if header_only { 4096.min(data.len()) } else { data.len() };
                let at = at.index(span);
                data[at] = byte;
            }
            let keep = data.len() - cut.index(data.len() / 4 + 1);
            data.truncate(keep);
            block_file(&data);
        }
    }
}

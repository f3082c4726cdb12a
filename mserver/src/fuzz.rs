//! Checks for the fuzz targets (`fuzz/`, nightly) and their stable property-test twins: each
//! takes arbitrary bytes and panics only if the code under test breaks a promise.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::log_store::LogStore;

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// `data` as the only segment of a Raft log directory: opening it never panics; a log that
/// opens (a torn tail cut) opens again to the same entries.
pub fn segment_replay(data: &[u8]) {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("meshfs-fuzz-log-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    std::fs::write(dir.join("seg-00000000000000000001.log"), data).expect("the segment");
    if let Ok(store) = LogStore::open(&dir, &[1]) {
        let first = store.entries_summary();
        drop(store);
        let again = LogStore::open(&dir, &[1]).expect("a log that opened opens again");
        assert_eq!(again.entries_summary(), first);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(test)]
mod tests {
    //! The stable twin of the fuzz target: arbitrary bytes, and mutations of the golden
    //! segment (valid records, so cases reach past the first header), with a CI budget.

    use super::*;
    use proptest::prelude::*;

    fn golden() -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/raft-log/seg-00000000000000000201.log");
        std::fs::read(path).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn segments(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            segment_replay(&data);
        }

        #[test]
        fn mutated_segments(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
            let mut data = golden();
            for (at, byte) in edits {
                let at = at.index(data.len());
                data[at] = byte;
            }
            data.truncate(cut.index(data.len()) + 1);
            segment_replay(&data);
        }
    }
}

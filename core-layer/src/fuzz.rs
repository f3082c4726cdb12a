//! Checks for the fuzz targets (`fuzz/`, nightly) and their stable property-test twins: each
//! takes arbitrary bytes and panics only if the code under test breaks a promise (a decoder
//! panics, a decoded value does not encode back to itself, `apply` hits a bug or breaks an
//! invariant).

use crate::error::NsError;
use crate::namespace::{Entry, Namespace, Outcome};
use crate::wire::{Kind, Message};
use meshfs_net::frame::Frame;

/// Every message kind (the first byte picks it) with the rest as its body: decoding never
/// panics, and what decodes encodes to a message that decodes to itself.
pub fn wire_message(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else { return };
    let kind = Kind::ALL[usize::from(pick) % Kind::ALL.len()];
    let Ok(message) = Message::decode(&Frame::new(kind.code(), 7, body.to_vec())) else {
        return;
    };
    let again = Message::decode(&message.to_frame(7)).expect("a message's own encoding decodes");
    assert_eq!(again, message, "a decoded message encodes back to itself");
}

/// A log entry: decoding never panics; one that decodes re-encodes to bytes that decode to it.
pub fn log_entry(data: &[u8]) {
    let Ok(entry) = Entry::decode(data) else { return };
    let again = Entry::decode(&entry.encode()).expect("an entry's own encoding decodes");
    assert_eq!(again, entry);
}

/// Snapshot formats the restore reads (1 to this).
const SNAPSHOT_FORMATS: u16 = 10;

/// A snapshot body past the checksum and magic (the first byte picks the format, 1 to 10):
/// restoring never panics, and a namespace restored takes a snapshot that restores to it.
pub fn snapshot(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else { return };
    let mut bytes = b"MSNS".to_vec();
    bytes.extend_from_slice(&(u16::from(pick) % SNAPSHOT_FORMATS + 1).to_be_bytes());
    bytes.extend_from_slice(body);
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_be_bytes());
    let Ok(ns) = Namespace::restore(&bytes) else { return };
    let again = Namespace::restore(&ns.snapshot()).expect("a snapshot of a namespace restores");
    assert_eq!(again, ns);
}

/// Entries (each `u16 length`, then its bytes) applied in order to a fresh namespace: none
/// hits a bug ([`NsError::Internal`]), and the invariants hold after each (checked by
/// `apply` in debug builds, here in every build).
pub fn apply_entries(data: &[u8]) {
    let mut ns = Namespace::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let Some(bytes) = rest.get(2..2 + len) else { return };
        rest = &rest[2 + len..];
        let Ok(entry) = Entry::decode(bytes) else { continue };
        let outcome = ns.apply(&entry);
        assert!(
            !matches!(outcome, Outcome::Failed(NsError::Internal(_))),
            "{entry:?} hit a bug: {outcome:?}"
        );
        if let Some(violation) = ns.violation() {
            panic!("{entry:?} broke an invariant: {violation}");
        }
    }
}

#[cfg(test)]
mod tests {
    //! The stable twins of the fuzz targets: the same checks on arbitrary bytes and on
    //! mutations of the golden samples (valid encodings, so the mutations reach past the
    //! first fields), with a budget that fits CI.

    use super::*;
    use proptest::prelude::*;

    fn testdata(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name);
        String::from_utf8(meshfs_test_kit::golden::read(path)).unwrap()
    }

    /// The golden entries' bytes.
    fn entries() -> Vec<Vec<u8>> {
        testdata("entries.hex").lines().map(meshfs_test_kit::golden::unhex).collect()
    }

    /// The golden messages: the kind's index in [`Kind::ALL`], then the body.
    fn messages() -> Vec<Vec<u8>> {
        let mut all = testdata("wire.txt");
        all += &testdata("wire-old.txt");
        all.lines()
            .map(|line| {
                let (kind, hex) = line.split_once(' ').unwrap();
                let kind: u16 = kind.parse().unwrap();
                let pick = Kind::ALL.iter().position(|k| k.code() == kind).unwrap() as u8;
                let mut bytes = vec![pick];
                bytes.extend(meshfs_test_kit::golden::unhex(hex));
                bytes
            })
            .collect()
    }

    /// `seed` with a few bytes changed, inserted or cut, as `edits` says.
    fn mutate(mut seed: Vec<u8>, edits: &[(u16, u8, u8)]) -> Vec<u8> {
        for &(at, op, byte) in edits {
            let at = usize::from(at) % (seed.len() + 1);
            match op % 4 {
                0 if at < seed.len() => seed[at] = byte,
                1 => seed.insert(at, byte),
                2 if at < seed.len() => {
                    seed.remove(at);
                }
                _ => seed.truncate(at.max(1)),
            }
        }
        seed
    }

    fn edits() -> impl Strategy<Value = Vec<(u16, u8, u8)>> {
        proptest::collection::vec(any::<(u16, u8, u8)>(), 1..6)
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..1024)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn wire_messages(data in bytes()) {
            wire_message(&data);
        }

        #[test]
        fn mutated_wire_messages(seed in any::<prop::sample::Index>(), e in edits()) {
            let seeds = messages();
            wire_message(&mutate(seeds[seed.index(seeds.len())].clone(), &e));
        }

        #[test]
        fn log_entries(data in bytes()) {
            log_entry(&data);
        }

        #[test]
        fn mutated_log_entries(seed in any::<prop::sample::Index>(), e in edits()) {
            let seeds = entries();
            log_entry(&mutate(seeds[seed.index(seeds.len())].clone(), &e));
        }

        #[test]
        fn snapshots(data in bytes()) {
            snapshot(&data);
        }

        #[test]
        fn mutated_snapshots(e in edits()) {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/snapshot.bin");
            let golden = meshfs_test_kit::golden::read(path);
            // Past magic and format: the body, with the format's byte in front.
            let mut seed = vec![(SNAPSHOT_FORMATS - 1) as u8];
            seed.extend_from_slice(&golden[6..golden.len() - 4]);
            snapshot(&mutate(seed, &e));
        }

        #[test]
        fn applied_entries(picks in proptest::collection::vec((any::<prop::sample::Index>(), edits()), 1..30)) {
            let seeds = entries();
            let mut data = Vec::new();
            for (pick, e) in picks {
                let entry = mutate(seeds[pick.index(seeds.len())].clone(), &e);
                data.extend_from_slice(&(entry.len() as u16).to_be_bytes());
                data.extend_from_slice(&entry);
            }
            apply_entries(&data);
        }
    }

    /// Inputs the fuzzers found bugs with (`testdata/fuzz/<target>-<what>`), kept as
    /// regression tests.
    #[test]
    fn inputs_that_once_found_bugs_pass() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/fuzz");
        let mut ran = 0;
        for file in std::fs::read_dir(dir).unwrap() {
            let path = file.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let data = meshfs_test_kit::golden::read(&path);
            match name.split_once('-').map(|(target, _)| target) {
                Some("apply_entries") => apply_entries(&data),
                Some("wire_message") => wire_message(&data),
                Some("log_entry") => log_entry(&data),
                Some("snapshot") => snapshot(&data),
                _ => panic!("{name}: which target?"),
            }
            ran += 1;
        }
        assert!(ran > 0);
    }

    #[test]
    fn the_golden_samples_pass_the_checks_unchanged() {
        for message in messages() {
            wire_message(&message);
        }
        let mut data = Vec::new();
        for entry in entries() {
            log_entry(&entry);
            data.extend_from_slice(&(entry.len() as u16).to_be_bytes());
            data.extend_from_slice(&entry);
        }
        apply_entries(&data);
    }
}

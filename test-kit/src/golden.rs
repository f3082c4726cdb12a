//! Golden files: the bytes an encoding must keep producing, checked into `testdata/`.
//!
//! A test computes the bytes (a snapshot, a log entry, a message listing) and calls
//! [`check_bytes`] or [`check_text`] with the file that froze them. A difference fails the
//! test with the first byte or line that moved. Setting `MESHFS_BLESS=1` writes the file
//! instead: for a new golden file, or after a change of layout that is meant (and then comes
//! with a new format number and a reader for the old bytes).

use std::path::Path;

/// Whether this run rewrites golden files (`MESHFS_BLESS=1`).
pub fn blessing() -> bool {
    std::env::var_os("MESHFS_BLESS").is_some_and(|v| v == "1")
}

/// Checks `actual` against the golden file at `path` (or writes it when blessing).
pub fn check_bytes(path: impl AsRef<Path>, actual: &[u8]) {
    let path = path.as_ref();
    if blessing() {
        write(path, actual);
        return;
    }
    let expected = read(path);
    if expected == actual {
        return;
    }
    let at = expected.iter().zip(actual).position(|(a, b)| a != b);
    panic!(
        "{} changed: {} bytes frozen, {} produced; first difference at byte {}. \
         If the layout change is meant, give it a new format number, keep a reader and a \
         golden file for the old bytes, and rerun with MESHFS_BLESS=1.",
        path.display(),
        expected.len(),
        actual.len(),
        at.unwrap_or(expected.len().min(actual.len())),
    );
}

/// Checks `actual` against the golden text file at `path` (or writes it when blessing).
pub fn check_text(path: impl AsRef<Path>, actual: &str) {
    let path = path.as_ref();
    if blessing() {
        write(path, actual.as_bytes());
        return;
    }
    let expected = String::from_utf8(read(path))
        .unwrap_or_else(|e| panic!("{} is not UTF-8: {e}", path.display()));
    if expected == actual {
        return;
    }
    for (n, (want, got)) in expected.lines().zip(actual.lines()).enumerate() {
        assert_eq!(
            want,
            got,
            "{} line {} changed (rerun with MESHFS_BLESS=1 only if the change is meant)",
            path.display(),
            n + 1
        );
    }
    panic!(
        "{} has {} lines, the code produced {} (rerun with MESHFS_BLESS=1 only if meant)",
        path.display(),
        expected.lines().count(),
        actual.lines().count()
    );
}

/// Reads a golden file (a fixture that is never blessed, such as an old format's bytes).
pub fn read(path: impl AsRef<Path>) -> Vec<u8> {
    let path = path.as_ref();
    std::fs::read(path).unwrap_or_else(|e| {
        panic!("cannot read golden file {}: {e} (MESHFS_BLESS=1 writes it)", path.display())
    })
}

/// Lowercase hex of `bytes`, for golden text files.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Bytes of a hex string written by [`hex`]; panics on anything else (fixtures are ours).
pub fn unhex(text: &str) -> Vec<u8> {
    let text = text.trim();
    assert!(text.len().is_multiple_of(2), "odd hex length {}", text.len());
    (0..text.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&text[i..i + 2], 16)
                .unwrap_or_else(|e| panic!("bad hex {:?}: {e}", &text[i..i + 2]))
        })
        .collect()
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    }
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&bytes), "0001abff");
        assert_eq!(unhex("0001abff\n"), bytes);
    }
}

//! Local clusters for operators and benchmarks: [`up`] starts every server of a config as
//! its own process and stops them by PID (`meshfs up`); [`local`] makes a throw-away
//! cluster in a private temporary directory for `meshfs bench --local`.

pub mod clients;
pub mod local;
pub mod up;

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::ClientError;

fn file_error(what: &str, path: &Path, e: &std::io::Error) -> ClientError {
    ClientError::Launch {
        program: "meshfs".into(),
        reason: format!("cannot {what} {}: {e}", path.display()),
    }
}

/// Creates directory `path` (and its parents) readable by its owner only.
pub fn private_dir(path: &Path) -> Result<(), ClientError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| file_error("create", path, &e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .map_err(|e| file_error("make private", path, &e))
}

/// Writes `text` to `path`, readable by its owner only (also when it existed before).
pub fn write_private(path: &Path, text: &str) -> Result<(), ClientError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| file_error("write", path, &e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| file_error("make private", path, &e))?;
    file.write_all(text.as_bytes()).map_err(|e| file_error("write", path, &e))
}

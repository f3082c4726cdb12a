//! Small filesystems of a fixed size for a test's data directories (a disk that fills),
//! unmounted when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of a fixed size mounted on a directory of the test's.
#[derive(Debug)]
pub struct Tmpfs {
    path: PathBuf,
}

fn run(command: &mut Command) -> Result<(), String> {
    let out = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{command:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` on `path` (made if missing). Needs root.
    pub fn mount(path: &Path, bytes: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "meshfs-test"])
            .arg(path))?;
        Ok(Tmpfs { path: path.to_path_buf() })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process still using it (a server the test did not stop) does not keep
        // the mount.
        if let Err(err) = run(Command::new("umount").arg("-l").arg(&self.path)) {
            eprintln!("could not unmount {}: {err}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tmpfs_holds_its_size_and_no_more_and_goes_when_dropped() {
        let dir = crate::TempDir::new("tmpfs");
        let at = dir.path().join("disk");
        let disk = Tmpfs::mount(&at, 1 << 20).unwrap();
        std::fs::write(disk.path().join("fits"), vec![1u8; 512 << 10]).unwrap();
        let err = std::fs::write(disk.path().join("too-big"), vec![1u8; 1 << 20]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28), "ENOSPC: {err}");
        drop(disk);
        assert!(!at.join("fits").exists(), "unmounted: the file was on the tmpfs");
    }
}

//! `meshfs mount`: the cluster as a local filesystem, through FUSE.
//!
//! - `inodes`: the kernel's inode numbers and the paths they stand for.
//! - `fs`: the FUSE requests, answered by the meta-servers and data-servers.
//!
//! [`serve`] mounts and answers requests until the mount is unmounted (`meshfs umount`,
//! `umount`, `fusermount3 -u`) or the process is told to stop (SIGTERM, SIGINT, SIGHUP),
//! and then unmounts: it never leaves a mount behind it that nobody serves.
//!
//! A trusted client (`trusted = true` in its `[[client]]` entry) acts for each local user
//! that calls (its uid and groups): the meta-servers decide as for that user, the kernel
//! checks modes too (`default_permissions`), and, mounted by root, every local user may use
//! it (`allow_other`). Any other client mounts for the user who mounts it alone, acting as
//! itself.

mod fs;
mod inodes;

use std::path::{Path, PathBuf};
use std::time::Duration;

use fuser::{MountOption, SessionACL};
use log::info;
use meshfs_core::error::NsError;

use crate::access::Access;
use crate::error::ClientError;
use crate::meta::MetaClient;

pub use fs::MAX_BUFFERED;

/// How a mount behaves.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// How long the kernel may keep a name's lookup before asking again: a rename or
    /// remove elsewhere is seen here within it.
    pub entry_timeout: Duration,
    /// How long the kernel may keep an inode's attributes (size, mode, times).
    pub attr_timeout: Duration,
    /// Threads serving requests.
    pub threads: usize,
}

impl Default for MountOptions {
    fn default() -> MountOptions {
        MountOptions {
            entry_timeout: Duration::from_secs(1),
            attr_timeout: Duration::from_secs(1),
            threads: 4,
        }
    }
}

fn local(what: String) -> impl FnOnce(std::io::Error) -> ClientError {
    move |source| ClientError::Local { what, source }
}

/// Whether the client may act for local users: asks as another user and sees whether the
/// meta-servers refuse it for that reason.
fn is_trusted(access: &Access) -> Result<bool, ClientError> {
    let mut meta = MetaClient::new(access)?;
    meta.act_for(nix::unistd::getuid().as_raw(), vec![nix::unistd::getgid().as_raw()]);
    match meta.stat("/") {
        Ok(_) => Ok(true),
        Err(ClientError::Namespace(NsError::PermissionDenied(why)))
            if why.contains("may not act for other users") =>
        {
            Ok(false)
        }
        Err(err) => Err(err),
    }
}

/// Mounts the cluster `access` reaches at `mountpoint` and serves it until it is unmounted
/// or the process is signalled (then it unmounts). Errors if it cannot mount.
pub fn serve(access: &Access, mountpoint: &Path, options: MountOptions) -> Result<(), ClientError> {
    let mountpoint = std::fs::canonicalize(mountpoint)
        .map_err(local(format!("mount point {}", mountpoint.display())))?;
    let trusted = is_trusted(access)?;
    let root = nix::unistd::geteuid().is_root();
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("meshfs:{}", access.cluster)),
        MountOption::Subtype("meshfs".into()),
        MountOption::RW,
        MountOption::NoAtime,
    ];
    if trusted {
        config.mount_options.push(MountOption::DefaultPermissions);
        if root {
            config.acl = SessionACL::All;
        }
    }
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = true;
    let fs = fs::MeshFs::new(access, options, trusted);
    let mut session = fuser::Session::new(fs, &mountpoint, &config)
        .map_err(local(format!("mounting at {}", mountpoint.display())))?;
    info!(
        "mounted cluster {} at {} ({})",
        access.cluster,
        mountpoint.display(),
        if trusted { "acting for each local user" } else { "as this client, for its user only" }
    );
    // A signal unmounts; the session then ends as after any unmount.
    let mut unmounter = session.unmount_callable();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(local("watching for signals".into()))?;
    let signal_handle = signals.handle();
    let watcher = std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            info!("signal {signal}: unmounting");
            if let Err(err) = unmounter.unmount() {
                log::warn!("unmounting: {err}");
            }
        }
    });
    let served = session.run();
    signal_handle.close();
    let _ = watcher.join();
    // An unmount from outside (umount -l) may leave the point listed; a signal's did not.
    if is_mounted(&mountpoint) {
        let _ = unmount(&mountpoint);
    }
    served.map_err(local(format!("serving {}", mountpoint.display())))
}

/// Decodes a field of /proc/self/mountinfo (spaces and such are octal escapes).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(digits) = bytes.get(i + 1..i + 4)
            && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            out.push(digits.iter().fold(0u8, |n, d| n.wrapping_mul(8).wrapping_add(d - b'0')));
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The MeshFS mounts of this host's mount namespace: (mount point, source).
pub fn mounts() -> Vec<(PathBuf, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let source = right.next().unwrap_or("");
            // fuser's own mount(2) says "fuse" and the source; fusermount adds the subtype.
            let ours =
                fstype == "fuse.meshfs" || (fstype == "fuse" && source.starts_with("meshfs:"));
            ours.then(|| (PathBuf::from(unescape(point)), unescape(source)))
        })
        .collect()
}

/// Whether a MeshFS mount is at `mountpoint`.
pub fn is_mounted(mountpoint: &Path) -> bool {
    let point = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    mounts().iter().any(|(p, _)| *p == point)
}

/// Unmounts the MeshFS mount at `mountpoint`: the serving process then exits. As root by
/// umount(2); otherwise through fusermount3 (or fusermount), which lets a user unmount
/// what they mounted.
pub fn unmount(mountpoint: &Path) -> Result<(), ClientError> {
    let point = std::fs::canonicalize(mountpoint)
        .map_err(local(format!("mount point {}", mountpoint.display())))?;
    if !is_mounted(&point) {
        return Err(ClientError::Local {
            what: format!("{} is not a MeshFS mount", point.display()),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    match nix::mount::umount(&point) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => {
            let mut last = String::new();
            for program in ["fusermount3", "fusermount"] {
                match std::process::Command::new(program).arg("-u").arg(&point).output() {
                    Ok(out) if out.status.success() => return Ok(()),
                    Ok(out) => last = String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    Err(err) => last = format!("{program}: {err}"),
                }
            }
            Err(ClientError::Local {
                what: format!("unmounting {}: {last}", point.display()),
                source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            })
        }
        Err(err) => Err(ClientError::Local {
            what: format!("unmounting {}", point.display()),
            source: std::io::Error::from(err),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_fields_are_unescaped() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape(r"/mnt/tab\011x\134"), "/mnt/tab\tx\\");
        assert_eq!(unescape(r"/short\04"), r"/short\04");
        assert_eq!(unescape("/plain"), "/plain");
    }
}

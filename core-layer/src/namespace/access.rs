//! Who may do what: every inode's owner, group and POSIX mode bits ([`Owner`]), and the
//! caller every log entry carries ([`Caller`]), checked the way a POSIX filesystem does.
//!
//! The caller travels in the entry (the leader resolves it from its config when it
//! proposes), so every replica decides alike. Operators (`admin`) may do anything, as root.
//!
//! It must not know paths or the tree: the tree operations ask it about inodes.

use meshfs_net::body::{BodyError, BodyReader, BodyWriter};

use super::entry::{Command, SetTime};
use super::inode::Kind;
use crate::error::NsError;
use crate::path::MeshPath;

/// Read permission.
pub const READ: u16 = 0o4;
/// Write permission.
pub const WRITE: u16 = 0o2;
/// Search (directories) or execute permission.
pub const SEARCH: u16 = 0o1;
/// The sticky bit: in such a directory only an entry's owner, the directory's owner or an
/// operator may remove or rename it.
pub const STICKY: u16 = 0o1000;
/// Set-user-id on execution.
pub const SETUID: u16 = 0o4000;
/// Set-group-id on execution.
pub const SETGID: u16 = 0o2000;
/// The mode bits an inode keeps.
pub const MODE_BITS: u16 = 0o7777;
/// Most groups a caller names.
pub const MAX_GIDS: usize = 16;

/// Reads mode bits, refusing any above [`MODE_BITS`].
pub fn read_mode(r: &mut BodyReader<'_>) -> Result<u16, BodyError> {
    match r.u16("mode")? {
        mode if mode <= MODE_BITS => Ok(mode),
        other => Err(BodyError::Invalid { field: "mode", value: u64::from(other) }),
    }
}

/// Writes a new inode's requested mode, when there is one: the records that carry one
/// have their own tags, so the old ones keep their bytes.
pub fn write_new_mode(w: &mut BodyWriter, mode: Option<u16>) {
    if let Some(mode) = mode {
        w.u16(mode);
    }
}

/// Reads what [`write_new_mode`] wrote; `present` says whether the record's tag carries one.
pub fn read_new_mode(r: &mut BodyReader<'_>, present: bool) -> Result<Option<u16>, BodyError> {
    if present { read_mode(r).map(Some) } else { Ok(None) }
}

/// Who an entry acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Its user id.
    pub uid: u32,
    /// Its groups, the first its primary group (at most [`MAX_GIDS`]).
    pub gids: Vec<u32>,
    /// An operator: every check passes.
    pub admin: bool,
}

impl Caller {
    /// The cluster itself (the healer, the lock clock) and every entry of the logs written
    /// before entries carried a caller: an operator.
    pub fn system() -> Caller {
        Caller { uid: 0, gids: Vec::new(), admin: true }
    }

    /// Whether this is [`Caller::system`].
    pub fn is_system(&self) -> bool {
        *self == Caller::system()
    }

    /// The group new inodes of this caller get: its first, or one named as its uid.
    pub fn primary_gid(&self) -> u32 {
        self.gids.first().copied().unwrap_or(self.uid)
    }

    /// Writes `u32 uid, u8 n, n x u32 gid, bool admin`.
    pub fn write(&self, w: &mut BodyWriter) {
        let gids = &self.gids[..self.gids.len().min(MAX_GIDS)];
        w.u32(self.uid).u8(gids.len() as u8);
        for gid in gids {
            w.u32(*gid);
        }
        w.bool(self.admin);
    }

    /// Reads what [`Caller::write`] wrote.
    pub fn read(r: &mut BodyReader<'_>) -> Result<Caller, BodyError> {
        let uid = r.u32("caller uid")?;
        let count = r.u8("caller group count")?;
        if usize::from(count) > MAX_GIDS {
            return Err(BodyError::Invalid {
                field: "caller group count",
                value: u64::from(count),
            });
        }
        let gids = (0..count).map(|_| r.u32("caller gid")).collect::<Result<_, _>>()?;
        Ok(Caller { uid, gids, admin: r.bool("caller admin")? })
    }
}

/// An inode's owner, group and mode bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// The owning user.
    pub uid: u32,
    /// The owning group.
    pub gid: u32,
    /// Permission bits, with setuid, setgid and sticky (`MODE_BITS`).
    pub mode: u16,
}

impl Owner {
    /// What inodes of a namespace older than owners get: root's, open to all, as everything
    /// was before.
    pub const fn legacy(dir: bool) -> Owner {
        Owner { uid: 0, gid: 0, mode: if dir { 0o777 } else { 0o666 } }
    }

    /// A new inode of `caller`'s with `mode`.
    pub fn new(caller: &Caller, mode: u16) -> Owner {
        Owner { uid: caller.uid, gid: caller.primary_gid(), mode: mode & MODE_BITS }
    }

    /// Whether `caller` has every permission in `want` (a mix of [`READ`], [`WRITE`],
    /// [`SEARCH`]) by the owner, group or other bits, as POSIX picks them.
    pub fn allows(&self, caller: &Caller, want: u16) -> bool {
        if caller.admin {
            return true;
        }
        let bits = if caller.uid == self.uid {
            self.mode >> 6
        } else if caller.gids.contains(&self.gid) {
            self.mode >> 3
        } else {
            self.mode
        };
        bits & want == want
    }

    /// Whether `caller` may remove or rename `entry` out of this directory: write and
    /// search here, and in a sticky directory, own the entry or the directory.
    pub fn allows_unlink(&self, caller: &Caller, entry: &Owner) -> bool {
        if !self.allows(caller, WRITE | SEARCH) {
            return false;
        }
        caller.admin || self.mode & STICKY == 0 || caller.uid == self.uid || caller.uid == entry.uid
    }
}

/// `rwxr-x---` style text of `mode` (with `s`/`S` for setuid and setgid, `t`/`T` for the
/// sticky bit), as `ls -l` shows.
pub fn mode_text(mode: u16) -> String {
    // (bit of the triple's x, the special bit shown there, its letter)
    let triples = [(6, SETUID, 's'), (3, SETGID, 's'), (0, STICKY, 't')];
    let mut text = String::with_capacity(9);
    for (shift, special, letter) in triples {
        let bits = (mode >> shift) & 7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(match (mode & special != 0, bits & 1 != 0) {
            (true, true) => letter,
            (true, false) => letter.to_ascii_uppercase(),
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    text
}

/// How far a path resolves, checked for search permission on the way: the directory its
/// last name would be in, and the inode it names, where they exist.
pub(super) struct Walk {
    /// The parent directory, if every directory above it exists.
    pub(super) parent: Option<u32>,
    /// The inode at the path, if it exists.
    pub(super) target: Option<u32>,
}

impl super::Namespace {
    fn owner(&self, id: u32) -> Owner {
        self.nodes[&id].owner
    }

    fn denied(path: &MeshPath, why: &str) -> NsError {
        NsError::PermissionDenied(format!("{path}: {why}"))
    }

    /// Resolves `path` as far as it goes, needing search permission on every directory it
    /// passes through (all above the last name). Errors only for a permission.
    pub(super) fn walk(&self, path: &MeshPath, caller: &Caller) -> Result<Walk, NsError> {
        let mut id = super::ROOT_ID;
        let mut components = path.components().peekable();
        if components.peek().is_none() {
            return Ok(Walk { parent: None, target: Some(id) });
        }
        let mut walked = String::new();
        while let Some(name) = components.next() {
            let Kind::Dir(dir) = &self.nodes[&id].kind else {
                return Ok(Walk { parent: None, target: None });
            };
            if !self.owner(id).allows(caller, SEARCH) {
                let at = if walked.is_empty() { "/" } else { &walked };
                return Err(Self::denied(path, &format!("no search permission on {at}")));
            }
            walked.push('/');
            walked.push_str(name);
            let child = dir.children.get(name).copied();
            if components.peek().is_none() {
                return Ok(Walk { parent: Some(id), target: child });
            }
            match child {
                Some(child) => id = child,
                None => return Ok(Walk { parent: None, target: None }),
            }
        }
        unreachable!("the loop returns at the last name")
    }

    /// Whether `caller` may make an entry at `path` (write and search on its directory).
    fn may_create(&self, path: &MeshPath, caller: &Caller) -> Result<(), NsError> {
        let walk = self.walk(path, caller)?;
        match walk.parent {
            Some(parent) if !self.owner(parent).allows(caller, WRITE | SEARCH) => {
                Err(Self::denied(path, "no write permission on its directory"))
            }
            _ => Ok(()),
        }
    }

    /// Whether `caller` may remove or move `path` out of its directory.
    fn may_unlink(&self, path: &MeshPath, caller: &Caller) -> Result<Walk, NsError> {
        let walk = self.walk(path, caller)?;
        if let (Some(parent), Some(target)) = (walk.parent, walk.target)
            && !self.owner(parent).allows_unlink(caller, &self.owner(target))
        {
            let why = if self.owner(parent).allows(caller, WRITE | SEARCH) {
                "its directory is sticky and neither it nor the directory is the caller's"
            } else {
                "no write permission on its directory"
            };
            return Err(Self::denied(path, why));
        }
        Ok(walk)
    }

    /// Whether `caller` may change the file at `path` (write permission on it).
    fn may_write(&self, path: &MeshPath, caller: &Caller) -> Result<(), NsError> {
        match self.walk(path, caller)?.target {
            Some(id) if !self.owner(id).allows(caller, WRITE) => {
                Err(Self::denied(path, "no write permission"))
            }
            _ => Ok(()),
        }
    }

    /// Whether `caller` may read `path` (a file's bytes, a directory's names): search on the
    /// way, read on it. Reads are the leader's, so this is public.
    pub fn may_read(&self, path: &MeshPath, caller: &Caller) -> Result<(), NsError> {
        match self.walk(path, caller)?.target {
            Some(id) if !self.owner(id).allows(caller, READ) => {
                Err(Self::denied(path, "no read permission"))
            }
            _ => Ok(()),
        }
    }

    /// Whether `caller` may look at `path` at all (stat): search on the way.
    pub fn may_search(&self, path: &MeshPath, caller: &Caller) -> Result<(), NsError> {
        self.walk(path, caller).map(|_| ())
    }

    /// Checks `command` for `caller` before it changes anything, as POSIX would.
    pub(super) fn authorize(&self, command: &Command, caller: &Caller) -> Result<(), NsError> {
        if caller.admin {
            return Ok(());
        }
        match command {
            Command::Mkdir { path, .. } => {
                // The first directory made needs write on the one above it; the rest are
                // the caller's own.
                let mut prefix = MeshPath::root();
                for name in path.components() {
                    let next = MeshPath::parse(&format!("{}/{name}", prefix.as_str()))
                        .map_err(NsError::from)?;
                    let walk = self.walk(&next, caller)?;
                    match (walk.parent, walk.target) {
                        (Some(_), None) => return self.may_create(&next, caller),
                        (_, Some(_)) => prefix = next,
                        (None, None) => return Ok(()),
                    }
                }
                Ok(())
            }
            Command::CreateFile { path, .. }
            | Command::CreateWrite { path, .. }
            | Command::MakeNode { path, .. } => self.may_create(path, caller),
            Command::ExpandFile { path, .. }
            | Command::Truncate { path, .. }
            | Command::WriteLease { path, .. }
            | Command::CommitWrite { path, .. }
            | Command::SwapReplica { path, .. } => self.may_write(path, caller),
            Command::Rename { from, to, replace } => {
                self.may_unlink(from, caller)?;
                self.may_create(to, caller)?;
                // What it replaces goes as if removed (a sticky directory's rules included).
                if *replace {
                    self.may_unlink(to, caller)?;
                }
                Ok(())
            }
            Command::Link { from, to } => {
                // Reaching the file is enough (the kernel applies protected_hardlinks).
                self.walk(from, caller)?;
                self.may_create(to, caller)
            }
            // As Linux: user attributes need write permission (or ownership).
            Command::SetXattr { path, .. } | Command::RemoveXattr { path, .. } => {
                match self.walk(path, caller)?.target {
                    Some(id) if self.owner(id).uid == caller.uid => Ok(()),
                    _ => self.may_write(path, caller),
                }
            }
            Command::Remove { path, recursive } => {
                let walk = self.may_unlink(path, caller)?;
                if let (true, Some(target)) = (*recursive, walk.target) {
                    self.may_empty(path, target, caller)?;
                }
                Ok(())
            }
            Command::Chmod { path, .. } => match self.walk(path, caller)?.target {
                Some(id) if self.owner(id).uid != caller.uid => {
                    Err(Self::denied(path, "only its owner or an operator may change its mode"))
                }
                _ => Ok(()),
            },
            Command::SetTimes { path, atime, mtime } => match self.walk(path, caller)?.target {
                Some(id) if caller.admin || self.owner(id).uid == caller.uid => Ok(()),
                Some(_) if matches!(atime, SetTime::At(_)) || matches!(mtime, SetTime::At(_)) => {
                    Err(Self::denied(path, "only its owner or an operator may set its times"))
                }
                Some(id) if !self.owner(id).allows(caller, WRITE) => Err(Self::denied(
                    path,
                    "setting its times to now needs write permission or ownership",
                )),
                _ => Ok(()),
            },
            Command::Chown { path, uid, gid } => match self.walk(path, caller)?.target {
                Some(id) => {
                    let owner = self.owner(id);
                    if *uid != owner.uid {
                        Err(Self::denied(path, "only an operator may give it another owner"))
                    } else if owner.uid != caller.uid || !caller.gids.contains(gid) {
                        Err(Self::denied(
                            path,
                            "its owner may give it only a group the owner is in",
                        ))
                    } else {
                        Ok(())
                    }
                }
                None => Ok(()),
            },
            Command::SetDraining { .. } | Command::ReplaceReplica { .. } => {
                Err(NsError::PermissionDenied("an operator's command".into()))
            }
            Command::OpenSession { .. }
            | Command::KeepAlive
            | Command::CloseSession
            | Command::Lock { .. }
            | Command::Unlock { .. }
            | Command::Clock { .. }
            | Command::RevokeClient { .. } => Ok(()),
        }
    }

    /// A recursive remove empties every directory under `path`: each needs write and search,
    /// and its sticky rule holds for what is in it.
    fn may_empty(&self, path: &MeshPath, id: u32, caller: &Caller) -> Result<(), NsError> {
        let mut stack = vec![id];
        while let Some(dir_id) = stack.pop() {
            let Kind::Dir(dir) = &self.nodes[&dir_id].kind else { continue };
            let owner = self.owner(dir_id);
            for &child in dir.children.values() {
                if !owner.allows_unlink(caller, &self.owner(child)) {
                    return Err(Self::denied(
                        path,
                        "something under it may not be removed by the caller",
                    ));
                }
                stack.push(child);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(uid: u32, gids: &[u32]) -> Caller {
        Caller { uid, gids: gids.to_vec(), admin: false }
    }

    #[test]
    fn owner_group_and_other_bits_are_picked_as_posix_does() {
        let file = Owner { uid: 10, gid: 20, mode: 0o640 };
        assert!(file.allows(&user(10, &[10]), READ | WRITE));
        assert!(!file.allows(&user(10, &[10]), SEARCH));
        assert!(file.allows(&user(11, &[20]), READ));
        assert!(!file.allows(&user(11, &[20]), WRITE));
        assert!(!file.allows(&user(12, &[12]), READ), "others get nothing");
        // The owner's bits apply to the owner even when the group's are wider.
        let odd = Owner { uid: 10, gid: 20, mode: 0o070 };
        assert!(!odd.allows(&user(10, &[20]), READ));
        assert!(Owner { mode: 0, ..file }.allows(&Caller::system(), READ | WRITE | SEARCH));
    }

    #[test]
    fn a_sticky_directory_lets_only_owners_unlink() {
        let tmp = Owner { uid: 0, gid: 0, mode: 0o1777 };
        let mine = Owner { uid: 10, gid: 10, mode: 0o644 };
        assert!(tmp.allows_unlink(&user(10, &[10]), &mine));
        assert!(!tmp.allows_unlink(&user(11, &[11]), &mine));
        assert!(tmp.allows_unlink(&Caller::system(), &mine));
        let open = Owner { mode: 0o777, ..tmp };
        assert!(open.allows_unlink(&user(11, &[11]), &mine), "without the sticky bit");
        let closed = Owner { uid: 10, gid: 10, mode: 0o755 };
        assert!(!closed.allows_unlink(&user(11, &[11]), &mine), "no write on the directory");
        assert_eq!(mode_text(0o1777), "rwxrwxrwt");
        assert_eq!(mode_text(0o640), "rw-r-----");
        assert_eq!(mode_text(0o1754), "rwxr-xr-T");
    }

    #[test]
    fn callers_round_trip_and_a_long_group_list_is_refused() {
        let caller = Caller { uid: 1001, gids: vec![1001, 50], admin: false };
        let mut w = BodyWriter::new();
        caller.write(&mut w);
        let bytes = w.finish();
        assert_eq!(bytes.len(), 4 + 1 + 8 + 1);
        assert_eq!(Caller::read(&mut BodyReader::new(&bytes)), Ok(caller));
        let mut long = vec![0, 0, 0, 1, 17];
        long.extend(std::iter::repeat_n(0u8, 17 * 4 + 1));
        assert!(Caller::read(&mut BodyReader::new(&long)).is_err());
    }

    #[test]
    fn mode_text_is_what_ls_shows() {
        assert_eq!(mode_text(0o755), "rwxr-xr-x");
        assert_eq!(mode_text(0o640), "rw-r-----");
        assert_eq!(mode_text(0o1777), "rwxrwxrwt");
        assert_eq!(mode_text(0o1770), "rwxrwx--T");
        assert_eq!(mode_text(0o4755), "rwsr-xr-x");
        assert_eq!(mode_text(0o4644), "rwSr--r--");
        assert_eq!(mode_text(0o2750), "rwxr-s---");
        assert_eq!(mode_text(0o2700), "rwx--S---");
        assert_eq!(mode_text(0), "---------");
    }
}

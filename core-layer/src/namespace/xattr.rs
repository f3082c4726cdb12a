//! Extended attributes in the `user.` namespace: names and small values on files and
//! directories, kept beside the inodes (only the inodes that have some pay for them).

use std::collections::BTreeMap;

use super::inode::Kind;
use super::{Namespace, path_str};
use crate::error::NsError;
use crate::path::MeshPath;

/// The one namespace of attributes kept: others (`security.`, `trusted.`, `system.`) are
/// refused as not supported.
pub const USER_PREFIX: &str = "user.";
/// Longest attribute name, its prefix included (as Linux's XATTR_NAME_MAX).
pub const MAX_XATTR_NAME: usize = 255;
/// Largest value (as Linux's XATTR_SIZE_MAX).
pub const MAX_XATTR_VALUE: usize = 65_536;
/// Most bytes of names and values one inode holds: bounds what one client adds to the
/// replicated state per inode, and a listing's size.
pub const MAX_XATTR_BYTES: usize = 65_536;

/// One inode's attributes, by name.
pub(super) type Xattrs = BTreeMap<Box<str>, Box<[u8]>>;

/// What a set does when the name exists or does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrSet {
    /// Either way (`setxattr` with no flag).
    Either,
    /// Only a new name (`XATTR_CREATE`).
    Create,
    /// Only an existing name (`XATTR_REPLACE`).
    Replace,
}

impl XattrSet {
    /// Its byte in entries and on the wire.
    pub fn byte(self) -> u8 {
        match self {
            XattrSet::Either => 0,
            XattrSet::Create => 1,
            XattrSet::Replace => 2,
        }
    }

    /// The setting of byte `b`, if it is one.
    pub fn from_byte(b: u8) -> Option<XattrSet> {
        Some(match b {
            0 => XattrSet::Either,
            1 => XattrSet::Create,
            2 => XattrSet::Replace,
            _ => return None,
        })
    }
}

/// Whether `name` is one this namespace keeps: `user.` and more, at most
/// [`MAX_XATTR_NAME`] bytes, no NUL.
pub fn valid_name(name: &str) -> bool {
    name.len() > USER_PREFIX.len()
        && name.len() <= MAX_XATTR_NAME
        && name.starts_with(USER_PREFIX)
        && !name.contains('\0')
}

/// Bytes an inode's attributes count against [`MAX_XATTR_BYTES`].
pub(super) fn bytes_of(attrs: &Xattrs) -> usize {
    attrs.iter().map(|(n, v)| n.len() + v.len()).sum()
}

impl Namespace {
    /// The inode at `path`, if it may carry attributes (a file or a directory: Linux keeps
    /// user attributes off symlinks and special files).
    fn xattr_inode(&self, path: &MeshPath) -> Result<u32, NsError> {
        let id = self.lookup(path)?;
        match self.nodes[&id].kind {
            Kind::File(_) | Kind::Dir(_) => Ok(id),
            Kind::Other(_) => Err(NsError::PermissionDenied(format!(
                "{}: user attributes are for files and directories only",
                path_str(path)
            ))),
        }
    }

    fn check_name(path: &MeshPath, name: &str) -> Result<(), NsError> {
        if valid_name(name) {
            Ok(())
        } else {
            Err(NsError::AttrNotSupported(format!("{}: {name:?}", path_str(path))))
        }
    }

    /// `setxattr` (checked by [`Namespace::authorize`]).
    pub(super) fn set_xattr(
        &mut self,
        path: &MeshPath,
        name: &str,
        value: &[u8],
        how: XattrSet,
        now: u64,
    ) -> Result<super::Outcome, NsError> {
        Self::check_name(path, name)?;
        let id = self.xattr_inode(path)?;
        if value.len() > MAX_XATTR_VALUE {
            let path = path_str(path);
            return Err(NsError::AttrTooLarge {
                path,
                bytes: value.len() as u64,
                max: MAX_XATTR_VALUE as u64,
            });
        }
        let attrs = self.xattrs.get(&id);
        let old = attrs.and_then(|a| a.get(name));
        match (how, old) {
            (XattrSet::Create, Some(_)) => {
                return Err(NsError::AlreadyExists(format!("{} attribute {name}", path_str(path))));
            }
            (XattrSet::Replace, None) => {
                return Err(NsError::NoAttr(format!("{} attribute {name}", path_str(path))));
            }
            _ => {}
        }
        let before = attrs.map_or(0, bytes_of);
        let after = before - old.map_or(0, |v| name.len() + v.len()) + name.len() + value.len();
        if after > MAX_XATTR_BYTES {
            let path = path_str(path);
            return Err(NsError::AttrTooLarge {
                path,
                bytes: after as u64,
                max: MAX_XATTR_BYTES as u64,
            });
        }
        self.xattrs.entry(id).or_default().insert(name.into(), value.into());
        self.nodes.get_mut(&id).expect("looked up").times.changed(now);
        Ok(super::Outcome::Changed)
    }

    /// `removexattr` (checked by [`Namespace::authorize`]).
    pub(super) fn remove_xattr(
        &mut self,
        path: &MeshPath,
        name: &str,
        now: u64,
    ) -> Result<super::Outcome, NsError> {
        Self::check_name(path, name)?;
        let id = self.xattr_inode(path)?;
        let Some(attrs) = self.xattrs.get_mut(&id) else {
            return Err(NsError::NoAttr(format!("{} attribute {name}", path_str(path))));
        };
        if attrs.remove(name).is_none() {
            return Err(NsError::NoAttr(format!("{} attribute {name}", path_str(path))));
        }
        if attrs.is_empty() {
            self.xattrs.remove(&id);
        }
        self.nodes.get_mut(&id).expect("looked up").times.changed(now);
        Ok(super::Outcome::Changed)
    }

    /// `getxattr`: the value of attribute `name` of the inode at `path`.
    pub fn get_xattr(&self, path: &MeshPath, name: &str) -> Result<Vec<u8>, NsError> {
        let id = self.lookup(path)?;
        if !valid_name(name) {
            return Err(NsError::AttrNotSupported(format!("{}: {name:?}", path_str(path))));
        }
        self.xattrs
            .get(&id)
            .and_then(|a| a.get(name))
            .map(|v| v.to_vec())
            .ok_or_else(|| NsError::NoAttr(format!("{} attribute {name}", path_str(path))))
    }

    /// `listxattr`: the names of the inode's attributes, in order.
    pub fn list_xattr(&self, path: &MeshPath) -> Result<Vec<String>, NsError> {
        let id = self.lookup(path)?;
        Ok(self
            .xattrs
            .get(&id)
            .map_or_else(Vec::new, |a| a.keys().map(|k| k.to_string()).collect()))
    }
}

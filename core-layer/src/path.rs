//! Namespace paths: validated once, then trusted.
//!
//! A path is UTF-8 (guaranteed by `&str`), absolute, without NUL, without `.` or `..`
//! components, with components of at most 255 bytes and at most 4096 bytes in all. Repeated
//! and trailing slashes are tolerated and normalised away (`//a/b/` is `/a/b`), as a shell
//! user expects. The error names the rule that failed.
//!
//! It must not know the namespace: a valid path may name nothing.

use std::fmt;

use meshfs_net::body::{BodyError, BodyReader, BodyWriter};

/// Longest path, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest path component, in bytes.
pub const MAX_COMPONENT_LEN: usize = 255;

/// Which rule a path broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("path {0:?} is not absolute (it must start with /)")]
    NotAbsolute(String),
    /// The path holds a NUL byte.
    #[error("path contains a NUL byte")]
    Nul,
    /// A component is `.` or `..`.
    #[error("path {0:?} has a '.' or '..' component")]
    DotComponent(String),
    /// A component is longer than 255 bytes.
    #[error("a component of the path is {len} bytes long (at most {MAX_COMPONENT_LEN})")]
    ComponentTooLong {
        /// Its length.
        len: usize,
    },
    /// The path is longer than 4096 bytes.
    #[error("path is {len} bytes long (at most {MAX_PATH_LEN})")]
    TooLong {
        /// Its length.
        len: usize,
    },
}

/// A valid, normalised absolute path. The root is `/`, with no components.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeshPath(String);

impl MeshPath {
    /// Validates and normalises `text`.
    pub fn parse(text: &str) -> Result<MeshPath, PathError> {
        if text.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong { len: text.len() });
        }
        if text.contains('\0') {
            return Err(PathError::Nul);
        }
        if !text.starts_with('/') {
            return Err(PathError::NotAbsolute(text.to_string()));
        }
        let mut normal = String::with_capacity(text.len());
        for component in text.split('/').filter(|c| !c.is_empty()) {
            if component == "." || component == ".." {
                return Err(PathError::DotComponent(text.to_string()));
            }
            if component.len() > MAX_COMPONENT_LEN {
                return Err(PathError::ComponentTooLong { len: component.len() });
            }
            normal.push('/');
            normal.push_str(component);
        }
        if normal.is_empty() {
            normal.push('/');
        }
        Ok(MeshPath(normal))
    }

    /// The root, `/`.
    pub fn root() -> MeshPath {
        MeshPath("/".to_string())
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is `/`.
    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The components, root first (none for `/`).
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|c| !c.is_empty())
    }

    /// The parent and the last component; `None` for the root.
    pub fn split_last(&self) -> Option<(MeshPath, &str)> {
        if self.is_root() {
            return None;
        }
        let cut = self.0.rfind('/').expect("a normalised path starts with /");
        let parent = if cut == 0 { MeshPath::root() } else { MeshPath(self.0[..cut].to_string()) };
        Some((parent, &self.0[cut + 1..]))
    }

    /// Whether `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &MeshPath) -> bool {
        other.is_root()
            || self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }
}

impl fmt::Display for MeshPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Writes a path into a message body or log record (as its text).
pub(crate) fn write_path(w: &mut BodyWriter, path: &MeshPath) {
    w.str(path.as_str());
}

/// Reads what [`write_path`] wrote; an invalid path never reaches the namespace.
pub(crate) fn read_path(r: &mut BodyReader<'_>) -> Result<MeshPath, BodyError> {
    let text = r.str("path")?;
    MeshPath::parse(text)
        .map_err(|_| BodyError::Invalid { field: "path", value: text.len() as u64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_paths_normalise() {
        let cases = [
            ("/", "/"),
            ("//", "/"),
            ("/a", "/a"),
            ("/a/b/", "/a/b"),
            ("//a//b", "/a/b"),
            ("/é/ü", "/é/ü"),
        ];
        for (input, normal) in cases {
            assert_eq!(MeshPath::parse(input).unwrap().as_str(), normal, "{input}");
        }
    }

    #[test]
    fn each_rule_has_its_error() {
        assert_eq!(MeshPath::parse("a/b"), Err(PathError::NotAbsolute("a/b".into())));
        assert_eq!(MeshPath::parse(""), Err(PathError::NotAbsolute(String::new())));
        assert_eq!(MeshPath::parse("/a\0b"), Err(PathError::Nul));
        assert_eq!(MeshPath::parse("/a/./b"), Err(PathError::DotComponent("/a/./b".into())));
        assert_eq!(MeshPath::parse("/a/.."), Err(PathError::DotComponent("/a/..".into())));
        let long = format!("/{}", "x".repeat(256));
        assert_eq!(MeshPath::parse(&long), Err(PathError::ComponentTooLong { len: 256 }));
        assert!(MeshPath::parse(&format!("/{}", "x".repeat(255))).is_ok());
        let deep = "/abcdefg".repeat(513);
        assert_eq!(MeshPath::parse(&deep), Err(PathError::TooLong { len: 4104 }));
        assert!(MeshPath::parse(&"/abcdefg".repeat(512)).is_ok());
        // Names that merely contain dots are fine.
        assert!(MeshPath::parse("/.hidden/a..b/...").is_ok());
    }

    #[test]
    fn split_and_prefix() {
        let p = MeshPath::parse("/a/b/c").unwrap();
        let (parent, name) = p.split_last().unwrap();
        assert_eq!((parent.as_str(), name), ("/a/b", "c"));
        let top = MeshPath::parse("/a").unwrap();
        assert_eq!(top.split_last().unwrap().0, MeshPath::root());
        assert_eq!(MeshPath::root().split_last(), None);
        assert!(p.starts_with(&top));
        assert!(p.starts_with(&p));
        assert!(p.starts_with(&MeshPath::root()));
        assert!(!MeshPath::parse("/ab").unwrap().starts_with(&top), "a prefix must end at a /");
        assert_eq!(p.components().collect::<Vec<_>>(), ["a", "b", "c"]);
    }
}

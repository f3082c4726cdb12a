//! What the kernel knows of the namespace: every inode it was told of by a lookup (or a
//! create), with the directory and name it was found under and how many lookups it holds.
//! An inode number is the namespace's inode id (the root is 1 in both).
//!
//! The kernel addresses inodes by number, the meta-servers by path: the path of an inode is
//! its chain of names up to the root, as this mount last saw them. A lookup refreshes an
//! inode's place; a rename through this mount moves it; FORGET drops it once the kernel
//! holds no lookup of it, so the table holds what the kernel's cache holds and no more.

use std::collections::HashMap;

/// The root's inode number.
pub const ROOT: u64 = 1;

/// Most names from an inode up to the root: a chain longer than the deepest path a
/// namespace allows (4,096 bytes) is a loop of stale entries.
const MAX_DEPTH: usize = 2048;

/// Names this mount keeps for one inode at most (a file may have thousands of hard links;
/// any one of them reaches it).
const MAX_PLACES: usize = 8;

#[derive(Debug, Clone, Default)]
struct Known {
    /// Where this mount saw it, the latest first: (directory, name). A directory has one
    /// place; a file or special inode has one per name seen (its hard links). Empty: it has
    /// no path now (unlinked, or its name was taken by another).
    places: Vec<(u64, String)>,
    lookups: u64,
}

/// The inode table.
#[derive(Debug, Default)]
pub struct Inodes {
    known: HashMap<u64, Known>,
    /// (directory, name) to the inode this mount last saw there.
    names: HashMap<(u64, String), u64>,
}

impl Inodes {
    /// An empty table (the root is always known).
    pub fn new() -> Inodes {
        Inodes::default()
    }

    /// The kernel looked `ino` up as `name` in `parent` (once more). A directory has that
    /// one name now; anything else may have more (hard links).
    pub fn looked_up(&mut self, ino: u64, parent: u64, name: &str, dir: bool) {
        if ino == ROOT {
            return;
        }
        if dir {
            self.place(ino, parent, name);
        } else {
            self.also(ino, parent, name);
        }
        if let Some(known) = self.known.get_mut(&ino) {
            known.lookups += 1;
        }
    }

    /// `ino` is now `name` in `parent` and nowhere else (a lookup saw a directory there, or
    /// this mount moved it), without a lookup of its own.
    pub fn place(&mut self, ino: u64, parent: u64, name: &str) {
        if ino == ROOT {
            return;
        }
        let old = self.known.get_mut(&ino).map(|k| std::mem::take(&mut k.places));
        for place in old.into_iter().flatten() {
            if self.names.get(&place) == Some(&ino) {
                self.names.remove(&place);
            }
        }
        self.also(ino, parent, name);
    }

    /// `ino` is (also) `name` in `parent`: one more of its names, the latest seen.
    pub fn also(&mut self, ino: u64, parent: u64, name: &str) {
        if ino == ROOT {
            return;
        }
        let place = (parent, name.to_string());
        // Whatever this mount saw there before is elsewhere or gone now.
        if let Some(other) = self.names.insert(place.clone(), ino)
            && other != ino
            && let Some(known) = self.known.get_mut(&other)
        {
            known.places.retain(|p| *p != place);
        }
        let known = self.known.entry(ino).or_default();
        known.places.retain(|p| *p != place);
        known.places.insert(0, place);
        if known.places.len() > MAX_PLACES
            && let Some(oldest) = known.places.pop()
            && self.names.get(&oldest) == Some(&ino)
        {
            self.names.remove(&oldest);
        }
    }

    /// `name` in `parent` went away (unlinked or renamed over): its inode keeps its lookups
    /// and its other names, if it has any.
    pub fn unlinked(&mut self, parent: u64, name: &str) {
        let place = (parent, name.to_string());
        if let Some(ino) = self.names.remove(&place)
            && let Some(known) = self.known.get_mut(&ino)
        {
            known.places.retain(|p| *p != place);
        }
    }

    /// This mount renamed `name` in `parent` to `new_name` in `new_parent` (what was there
    /// went before, by [`Inodes::unlinked`]).
    pub fn moved(&mut self, parent: u64, name: &str, new_parent: u64, new_name: &str) {
        let Some(ino) = self.child(parent, name) else { return };
        self.unlinked(parent, name);
        self.also(ino, new_parent, new_name);
    }

    /// The inode this mount last saw as `name` in `parent`.
    pub fn child(&self, parent: u64, name: &str) -> Option<u64> {
        self.names.get(&(parent, name.to_string())).copied()
    }

    /// The kernel dropped `count` lookups of `ino`; at none the inode is forgotten.
    pub fn forget(&mut self, ino: u64, count: u64) {
        let Some(known) = self.known.get_mut(&ino) else { return };
        known.lookups = known.lookups.saturating_sub(count);
        if known.lookups == 0 {
            let known = self.known.remove(&ino).expect("present");
            for place in known.places {
                if self.names.get(&place) == Some(&ino) {
                    self.names.remove(&place);
                }
            }
        }
    }

    /// The path of `ino` as this mount knows it (by its latest name seen that still has a
    /// path), or `None` if it has none now (unlinked, forgotten, or under a directory this
    /// mount no longer knows).
    pub fn path(&self, ino: u64) -> Option<String> {
        if ino == ROOT {
            return Some("/".to_string());
        }
        let known = self.known.get(&ino)?;
        known.places.iter().find_map(|(parent, name)| {
            let dir = self.dir_path(*parent)?;
            Some(if dir == "/" { format!("/{name}") } else { format!("{dir}/{name}") })
        })
    }

    /// The path of directory `ino`: its one name, up to the root.
    fn dir_path(&self, ino: u64) -> Option<String> {
        let mut names = Vec::new();
        let mut at = ino;
        while at != ROOT {
            let (parent, name) = self.known.get(&at)?.places.first()?;
            if names.len() >= MAX_DEPTH {
                return None;
            }
            names.push(name.as_str());
            at = *parent;
        }
        if names.is_empty() {
            return Some("/".to_string());
        }
        let mut path = String::new();
        for name in names.iter().rev() {
            path.push('/');
            path.push_str(name);
        }
        Some(path)
    }

    /// The path `name` in directory `parent` has.
    pub fn child_path(&self, parent: u64, name: &str) -> Option<String> {
        let dir = self.dir_path(parent)?;
        Some(if dir == "/" { format!("/{name}") } else { format!("{dir}/{name}") })
    }

    /// Inodes known (the root not counted).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Whether only the root is known.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_lookups_renames_and_forgets() {
        let mut t = Inodes::new();
        assert_eq!(t.path(ROOT).as_deref(), Some("/"));
        t.looked_up(5, ROOT, "a", true);
        t.looked_up(9, 5, "f", false);
        assert_eq!(t.path(9).as_deref(), Some("/a/f"));
        assert_eq!(t.child_path(5, "g").as_deref(), Some("/a/g"));
        // A rename moves the directory: its children follow.
        t.place(5, ROOT, "b");
        assert_eq!(t.path(9).as_deref(), Some("/b/f"));
        assert_eq!(t.child(ROOT, "a"), None);
        assert_eq!(t.child(ROOT, "b"), Some(5));
        // Unlinked: no path, but known until forgotten.
        t.unlinked(5, "f");
        assert_eq!(t.path(9), None);
        assert_eq!(t.len(), 2);
        t.forget(9, 1);
        assert_eq!(t.len(), 1);
        // Two lookups need two forgets.
        t.looked_up(5, ROOT, "b", true);
        t.forget(5, 1);
        assert_eq!(t.path(5).as_deref(), Some("/b"));
        t.forget(5, 1);
        assert!(t.is_empty());
        assert_eq!(t.child(ROOT, "b"), None);
    }

    #[test]
    fn a_name_seen_holding_another_inode_unplaces_the_old_one() {
        let mut t = Inodes::new();
        t.looked_up(5, ROOT, "a", false);
        t.looked_up(6, ROOT, "a", false);
        assert_eq!(t.path(6).as_deref(), Some("/a"));
        assert_eq!(t.path(5), None);
        // A loop of stale entries has no path, and costs no more than the depth bound.
        t.place(7, 8, "x");
        t.place(8, 7, "y");
        assert_eq!(t.path(7), None);
    }

    #[test]
    fn a_file_is_reached_by_any_of_its_names() {
        let mut t = Inodes::new();
        t.looked_up(5, ROOT, "d", true);
        t.looked_up(9, ROOT, "a", false);
        t.looked_up(9, 5, "b", false);
        // The latest name seen first.
        assert_eq!(t.path(9).as_deref(), Some("/d/b"));
        t.unlinked(5, "b");
        assert_eq!(t.path(9).as_deref(), Some("/a"));
        t.moved(ROOT, "a", 5, "c");
        assert_eq!(t.path(9).as_deref(), Some("/d/c"));
        assert_eq!(t.child(ROOT, "a"), None);
        // A directory seen elsewhere has only that name.
        t.looked_up(5, ROOT, "e", true);
        assert_eq!(t.path(9).as_deref(), Some("/e/c"));
        assert_eq!(t.child(ROOT, "d"), None);
        // Two lookups, two forgets; then every name goes.
        t.forget(9, 1);
        assert_eq!(t.path(9).as_deref(), Some("/e/c"));
        t.forget(9, 1);
        assert_eq!(t.child(5, "c"), None);
        assert_eq!(t.path(9), None);
    }
}

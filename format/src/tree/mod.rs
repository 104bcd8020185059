//! The in-memory tree the image writer consumes.
//!
//! A tree is built from a directory, a dumpfile or OCI layers, and is written by
//! [`crate::erofs::writer`]. Hard links are one [`Leaf`] named by several
//! directory entries: entries hold a [`LeafId`] into [`Tree::leaves`], so a link
//! group survives every transformation without pointer games.

use std::collections::{BTreeMap, HashMap, btree_map};

use crate::erofs::format::{
    S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK,
};
use crate::verity::Digest;

mod from_dir;
pub use from_dir::{FromDirError, FromDirOptions, tree_from_dir};

/// Modification time with nanoseconds, as stored in an extended inode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mtime {
    pub sec: u64,
    pub nsec: u32,
}

/// Metadata every inode has. `mode` holds only the permission bits (`0o7777`):
/// the file type is implied by what the node is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Mtime,
    /// Full xattr names (`user.foo`) to values, sorted by name bytes.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The link count to store, when the source says one other than the true count:
    /// a dumpfile's NLINK (which C `mkcomposefs --from-file` stores as given for
    /// non-directories), an image's `i_nlink`. `None`, the usual case, means the true
    /// count: a leaf's number of names, a directory's 2 + subdirectories. Writers
    /// honour it for non-directories only (C recomputes a directory's count), and
    /// sources record it only when it differs, so equal trees make equal images.
    pub nlink: Option<u32>,
}

/// Content of a regular file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegularFile {
    /// Stored in the image itself, as the inode's tail.
    Inline(Vec<u8>),
    /// Stored in the object store. `payload` is the redirect (`XX/rest`, without
    /// the leading slash) and `digest` the fs-verity digest the metacopy carries.
    External {
        size: u64,
        payload: Option<Vec<u8>>,
        digest: Option<Digest>,
    },
}

impl RegularFile {
    pub fn size(&self) -> u64 {
        match self {
            RegularFile::Inline(data) => data.len() as u64,
            RegularFile::External { size, .. } => *size,
        }
    }
}

/// What a non-directory inode is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeafContent {
    Regular(RegularFile),
    Symlink(Vec<u8>),
    CharDevice(u64),
    BlockDevice(u64),
    Fifo,
    Socket,
}

impl LeafContent {
    /// The `S_IFMT` bits for this kind of inode.
    pub fn file_type_bits(&self) -> u32 {
        match self {
            LeafContent::Regular(_) => S_IFREG,
            LeafContent::Symlink(_) => S_IFLNK,
            LeafContent::CharDevice(_) => S_IFCHR,
            LeafContent::BlockDevice(_) => S_IFBLK,
            LeafContent::Fifo => S_IFIFO,
            LeafContent::Socket => S_IFSOCK,
        }
    }

    /// The device number, for devices; 0 otherwise.
    pub fn rdev(&self) -> u64 {
        match self {
            LeafContent::CharDevice(d) | LeafContent::BlockDevice(d) => *d,
            _ => 0,
        }
    }

    /// An overlayfs whiteout: a character device 0/0.
    pub fn is_whiteout(&self) -> bool {
        matches!(self, LeafContent::CharDevice(0))
    }
}

/// A non-directory inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf {
    pub stat: Stat,
    pub content: LeafContent,
}

impl Leaf {
    /// Full `st_mode`: type bits and permissions.
    pub fn st_mode(&self) -> u32 {
        self.content.file_type_bits() | (self.stat.mode & !S_IFMT)
    }
}

/// Index of a [`Leaf`] in [`Tree::leaves`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeafId(pub usize);

/// A directory entry's target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Directory(Box<Directory>),
    Leaf(LeafId),
}

/// A directory: its metadata and its entries sorted by name bytes, which is the
/// order EROFS stores them in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directory {
    pub stat: Stat,
    pub entries: BTreeMap<Vec<u8>, Node>,
}

impl Directory {
    pub fn new(stat: Stat) -> Self {
        Directory {
            stat,
            entries: BTreeMap::new(),
        }
    }

    /// Full `st_mode`: directory type bits and permissions.
    pub fn st_mode(&self) -> u32 {
        S_IFDIR | (self.stat.mode & !S_IFMT)
    }

    /// Number of subdirectories (for `nlink = 2 + subdirs`).
    pub fn subdirectory_count(&self) -> usize {
        self.entries
            .values()
            .filter(|n| matches!(n, Node::Directory(_)))
            .count()
    }

    /// The link count an image shows: the recorded one ([`Stat::nlink`], read from an
    /// image), else 2 + subdirectories.
    pub fn shown_link_count(&self) -> u64 {
        self.stat
            .nlink
            .map_or(2 + self.subdirectory_count() as u64, u64::from)
    }
}

impl Drop for Directory {
    /// Frees nested directories with an explicit stack: the derived drop would
    /// recurse once per level and overflow the stack on a hostile, very deep tree.
    fn drop(&mut self) {
        let mut stack: Vec<Box<Directory>> = Vec::new();
        let take_subdirs = |dir: &mut Directory, stack: &mut Vec<Box<Directory>>| {
            for node in std::mem::take(&mut dir.entries).into_values() {
                if let Node::Directory(sub) = node {
                    stack.push(sub);
                }
            }
        };
        take_subdirs(self, &mut stack);
        while let Some(mut dir) = stack.pop() {
            take_subdirs(&mut dir, &mut stack);
            // `dir` now has no subdirectories, so dropping it does not recurse.
        }
    }
}

/// Why a path could not be placed in or found in a tree.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("path {0:?} is not absolute")]
    NotAbsolute(String),
    #[error("path {0:?} has an empty, '.' or '..' component")]
    BadComponent(String),
    #[error("parent of {0:?} does not exist")]
    NoParent(String),
    #[error("parent of {0:?} is not a directory")]
    ParentNotDirectory(String),
    #[error("{0:?} already exists")]
    Exists(String),
    #[error("{0:?} does not exist")]
    NotFound(String),
    #[error("name in {0:?} is longer than 255 bytes")]
    NameTooLong(String),
}

/// A whole filesystem tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    pub root: Directory,
    pub leaves: Vec<Leaf>,
    /// For a hard-linked leaf whose own name is not its first name in depth-first name
    /// order: the path of its own name. A dumpfile says which name is the inode's own
    /// (the line without `@`), and C `mkcomposefs` numbers the inode where it meets that
    /// name breadth first. Every other hard-linked leaf, and one whose recorded path no
    /// longer names it, belongs with its first name (see [`Tree::primary_paths`]).
    pub primary_names: BTreeMap<LeafId, Vec<u8>>,
}

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// Splits an absolute path into its components, refusing `.`, `..` and empty
/// components (a trailing slash is tolerated).
pub fn path_components(path: &[u8]) -> Result<Vec<&[u8]>, TreeError> {
    let rest = path
        .strip_prefix(b"/")
        .ok_or_else(|| TreeError::NotAbsolute(show(path)))?;
    let rest = rest.strip_suffix(b"/").unwrap_or(rest);
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for c in rest.split(|b| *b == b'/') {
        if c.is_empty() || c == b"." || c == b".." {
            return Err(TreeError::BadComponent(show(path)));
        }
        if c.len() > 255 {
            return Err(TreeError::NameTooLong(show(path)));
        }
        out.push(c);
    }
    Ok(out)
}

impl Tree {
    pub fn new(root_stat: Stat) -> Self {
        Tree {
            root: Directory::new(root_stat),
            leaves: Vec::new(),
            primary_names: BTreeMap::new(),
        }
    }

    pub fn leaf(&self, id: LeafId) -> &Leaf {
        &self.leaves[id.0]
    }

    pub fn leaf_mut(&mut self, id: LeafId) -> &mut Leaf {
        &mut self.leaves[id.0]
    }

    /// Adds a leaf to the table (not yet linked into any directory).
    pub fn push_leaf(&mut self, leaf: Leaf) -> LeafId {
        self.leaves.push(leaf);
        LeafId(self.leaves.len() - 1)
    }

    /// The directory at `path` (`/` is the root).
    pub fn directory(&self, path: &[u8]) -> Result<&Directory, TreeError> {
        let mut dir = &self.root;
        for c in path_components(path)? {
            match dir.entries.get(c) {
                Some(Node::Directory(d)) => dir = d,
                Some(Node::Leaf(_)) => return Err(TreeError::ParentNotDirectory(show(path))),
                None => return Err(TreeError::NotFound(show(path))),
            }
        }
        Ok(dir)
    }

    /// The directory at `path`, mutably.
    pub fn directory_mut(&mut self, path: &[u8]) -> Result<&mut Directory, TreeError> {
        let mut dir = &mut self.root;
        for c in path_components(path)? {
            match dir.entries.get_mut(c) {
                Some(Node::Directory(d)) => dir = d,
                Some(Node::Leaf(_)) => return Err(TreeError::ParentNotDirectory(show(path))),
                None => return Err(TreeError::NotFound(show(path))),
            }
        }
        Ok(dir)
    }

    /// The node at `path`; `None` for the root itself.
    pub fn node(&self, path: &[u8]) -> Result<Option<&Node>, TreeError> {
        let comps = path_components(path)?;
        let Some((last, parents)) = comps.split_last() else {
            return Ok(None);
        };
        let mut dir = &self.root;
        for c in parents {
            match dir.entries.get(*c) {
                Some(Node::Directory(d)) => dir = d,
                Some(Node::Leaf(_)) => return Err(TreeError::ParentNotDirectory(show(path))),
                None => return Err(TreeError::NoParent(show(path))),
            }
        }
        dir.entries
            .get(*last)
            .map(Some)
            .ok_or_else(|| TreeError::NotFound(show(path)))
    }

    /// Inserts `node` at `path`, whose parent must exist and which must not.
    pub fn insert(&mut self, path: &[u8], node: Node) -> Result<(), TreeError> {
        let comps = path_components(path)?;
        let Some((last, parents)) = comps.split_last() else {
            return Err(TreeError::Exists(show(path)));
        };
        let mut dir = &mut self.root;
        for c in parents {
            match dir.entries.get_mut(*c) {
                Some(Node::Directory(d)) => dir = d,
                Some(Node::Leaf(_)) => return Err(TreeError::ParentNotDirectory(show(path))),
                None => return Err(TreeError::NoParent(show(path))),
            }
        }
        if dir.entries.contains_key(*last) {
            return Err(TreeError::Exists(show(path)));
        }
        dir.entries.insert(last.to_vec(), node);
        Ok(())
    }

    /// Number of directory entries naming each leaf: a leaf's `nlink`.
    pub fn link_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.leaves.len()];
        // An explicit stack: a hostile tree may be deeper than the thread's stack.
        let mut stack = vec![&self.root];
        while let Some(dir) = stack.pop() {
            for node in dir.entries.values() {
                match node {
                    Node::Directory(sub) => stack.push(sub),
                    Node::Leaf(id) => {
                        if let Some(c) = counts.get_mut(id.0) {
                            *c += 1;
                        }
                    }
                }
            }
        }
        counts
    }

    /// Each leaf's link count as stored: [`Stat::nlink`] if the source gave one, else
    /// its number of names.
    pub fn stored_link_counts(&self) -> Vec<u32> {
        let mut counts = self.link_counts();
        for (count, leaf) in counts.iter_mut().zip(&self.leaves) {
            if let Some(n) = leaf.stat.nlink {
                *count = n;
            }
        }
        counts
    }

    /// Calls `f` with the leaf and path of every name of every leaf with more than one
    /// name, in depth-first name order (the order of a dumpfile).
    pub fn for_each_hard_link(&self, mut f: impl FnMut(LeafId, &[u8])) {
        let counts = self.link_counts();
        let mut path: Vec<u8> = Vec::new();
        // An explicit stack of (length of the directory's path, its entries): a hostile
        // tree may be deeper than the thread's stack.
        let mut stack: Vec<(usize, btree_map::Iter<'_, Vec<u8>, Node>)> =
            vec![(0, self.root.entries.iter())];
        while let Some((len, entries)) = stack.last_mut() {
            path.truncate(*len);
            match entries.next() {
                None => {
                    stack.pop();
                }
                Some((name, Node::Directory(d))) => {
                    path.push(b'/');
                    path.extend_from_slice(name);
                    stack.push((path.len(), d.entries.iter()));
                }
                Some((name, Node::Leaf(id))) => {
                    if counts.get(id.0).is_some_and(|n| *n > 1) {
                        path.push(b'/');
                        path.extend_from_slice(name);
                        f(*id, &path);
                    }
                }
            }
        }
    }

    /// For every leaf with more than one name, the path of the name its inode belongs
    /// with: the one [`Tree::primary_names`] records while it still names the leaf, else
    /// the first in depth-first name order.
    pub fn primary_paths(&self) -> HashMap<LeafId, Vec<u8>> {
        let mut out: HashMap<LeafId, Vec<u8>> = HashMap::new();
        self.for_each_hard_link(|id, path| {
            if self.primary_names.get(&id).is_some_and(|p| p == path) {
                // The recorded name, wherever it comes: it replaces an earlier first name.
                out.insert(id, path.to_vec());
            } else {
                out.entry(id).or_insert_with(|| path.to_vec());
            }
        });
        out
    }

    /// Drops recorded primary names that no longer name their leaf or say what the
    /// default (the first name depth first) says, and link counts equal to the true
    /// count, so that trees describing the same image compare equal however they were
    /// read.
    pub fn normalize_link_info(&mut self) {
        let primary = self.primary_paths();
        let mut first: HashMap<LeafId, Vec<u8>> = HashMap::new();
        self.for_each_hard_link(|id, path| {
            first.entry(id).or_insert_with(|| path.to_vec());
        });
        self.primary_names
            .retain(|id, path| primary.get(id) == Some(path) && first.get(id) != Some(path));
        let counts = self.link_counts();
        for (leaf, count) in self.leaves.iter_mut().zip(counts) {
            if leaf.stat.nlink == Some(count) {
                leaf.stat.nlink = None;
            }
        }
        let mut stack = vec![&mut self.root];
        while let Some(dir) = stack.pop() {
            let count = u32::try_from(dir.subdirectory_count())
                .ok()
                .and_then(|n| n.checked_add(2));
            if dir.stat.nlink.is_some() && dir.stat.nlink == count {
                dir.stat.nlink = None;
            }
            for node in dir.entries.values_mut() {
                if let Node::Directory(sub) = node {
                    stack.push(sub);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(tree: &mut Tree, data: &[u8]) -> LeafId {
        tree.push_leaf(Leaf {
            stat: Stat::default(),
            content: LeafContent::Regular(RegularFile::Inline(data.to_vec())),
        })
    }

    #[test]
    fn insert_and_find_with_hard_links() {
        let mut t = Tree::new(Stat::default());
        t.insert(b"/d", Node::Directory(Box::default())).unwrap();
        let id = file(&mut t, b"x");
        t.insert(b"/d/a", Node::Leaf(id)).unwrap();
        t.insert(b"/b", Node::Leaf(id)).unwrap();
        assert_eq!(t.node(b"/d/a").unwrap(), Some(&Node::Leaf(id)));
        assert_eq!(t.link_counts(), vec![2]);
        assert_eq!(
            t.insert(b"/d/a", Node::Leaf(id)),
            Err(TreeError::Exists("/d/a".into()))
        );
        assert_eq!(
            t.insert(b"/x/y", Node::Leaf(id)),
            Err(TreeError::NoParent("/x/y".into()))
        );
        assert_eq!(
            t.insert(b"/b/y", Node::Leaf(id)),
            Err(TreeError::ParentNotDirectory("/b/y".into()))
        );
    }

    #[test]
    fn own_names_and_link_counts_normalize_to_the_defaults() {
        let mut t = Tree::new(Stat::default());
        t.insert(b"/d", Node::Directory(Box::default())).unwrap();
        let id = file(&mut t, b"x");
        t.insert(b"/d/a", Node::Leaf(id)).unwrap();
        t.insert(b"/b", Node::Leaf(id)).unwrap();
        let single = file(&mut t, b"y");
        t.insert(b"/c", Node::Leaf(single)).unwrap();
        // Depth first, `/b` comes before `/d/a`.
        assert_eq!(t.primary_paths()[&id], b"/b");
        t.primary_names.insert(id, b"/d/a".to_vec());
        assert_eq!(t.primary_paths()[&id], b"/d/a");
        t.leaf_mut(id).stat.nlink = Some(4);
        t.leaf_mut(single).stat.nlink = Some(5);
        t.root.stat.nlink = Some(7);
        assert_eq!(t.stored_link_counts(), vec![4, 5]);
        let before = t.clone();
        t.normalize_link_info();
        assert_eq!(t, before, "nothing here says what the default says");
        // Now each says what the default says: `/b` first, 2 names, 1 name, 2 + 1 subdir.
        t.primary_names.insert(id, b"/b".to_vec());
        t.leaf_mut(id).stat.nlink = Some(2);
        t.leaf_mut(single).stat.nlink = Some(1);
        t.root.stat.nlink = Some(3);
        t.normalize_link_info();
        assert!(t.primary_names.is_empty());
        assert_eq!(t.leaf(id).stat.nlink, None);
        assert_eq!(t.leaf(single).stat.nlink, None);
        assert_eq!(t.root.stat.nlink, None);
        assert_eq!(t.stored_link_counts(), vec![2, 1]);
        // A recorded name that no longer names the leaf is dropped.
        t.primary_names.insert(id, b"/gone".to_vec());
        assert_eq!(t.primary_paths()[&id], b"/b");
        t.normalize_link_info();
        assert!(t.primary_names.is_empty());
    }

    #[test]
    fn very_deep_trees_drop_and_count_without_recursion() {
        // Deep enough to overflow a 2 MiB test-thread stack if either recursed.
        let mut t = Tree::new(Stat::default());
        let id = file(&mut t, b"x");
        let mut dir = &mut t.root;
        for _ in 0..200_000 {
            dir.entries
                .insert(b"d".to_vec(), Node::Directory(Box::default()));
            let Some(Node::Directory(next)) = dir.entries.get_mut(&b"d"[..]) else {
                unreachable!()
            };
            dir = next;
        }
        dir.entries.insert(b"f".to_vec(), Node::Leaf(id));
        assert_eq!(t.link_counts(), vec![1]);
        drop(t);
    }

    #[test]
    fn bad_paths_are_refused() {
        assert!(matches!(
            path_components(b"rel"),
            Err(TreeError::NotAbsolute(_))
        ));
        assert!(matches!(
            path_components(b"/a/../b"),
            Err(TreeError::BadComponent(_))
        ));
        assert!(matches!(
            path_components(b"/a//b"),
            Err(TreeError::BadComponent(_))
        ));
        assert_eq!(path_components(b"/").unwrap(), Vec::<&[u8]>::new());
        assert_eq!(path_components(b"/a/b/").unwrap(), vec![&b"a"[..], b"b"]);
    }
}

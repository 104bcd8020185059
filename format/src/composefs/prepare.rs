//! The composefs transformation of a user-visible [`Tree`] into the inodes an
//! image stores, in the order C `mkcomposefs` stores them.
//!
//! What happens here is what libcomposefs does before it lays anything out
//! (`rewrite_tree_for_erofs`, `lcfs_write_update_version`, `lcfs_compute_tree`):
//!
//! - the format version is chosen: `min_version`, raised to 1 when the tree holds a
//!   whiteout and `max_version` allows it;
//! - a tree's own `trusted.overlay.X` xattrs are escaped to `trusted.overlay.overlay.X`;
//! - a regular file stored outside the image gets `trusted.overlay.metacopy` (with its
//!   digest, if known) and `trusted.overlay.redirect = "/" + payload`;
//! - a whiteout (character device 0/0) becomes an empty regular file carrying
//!   `trusted.overlay.overlay.whiteout` and `user.overlay.whiteout`, and its directory
//!   gets the `…whiteouts` markers (plus `…opaque = "x"` from version 1);
//! - the root gets the real `trusted.overlay.opaque = "y"` and the 256 char-0/0 stubs
//!   `00`…`ff` (except names a real child already has), which copy the root's owner,
//!   mtime and `security.selinux`;
//! - inodes are numbered breadth first with children in name order, as C's
//!   `lcfs_compute_tree` does; a hard-linked leaf is numbered at its own name (the
//!   dumpfile line without `@`, see [`Tree::primary_paths`]) and its other names are
//!   skipped, as C skips `@` entries. For a tree with no recorded own name that is its
//!   first name in depth-first name order, the line C `composefs-info dump` prints
//!   without `@`;
//! - a leaf's link count is the one its source recorded ([`Stat::nlink`]: C stores a
//!   dumpfile's NLINK as given), else its number of names; a directory's is always
//!   2 + subdirectories.
//!
//! The EROFS layout of the result is [`crate::erofs::writer`]'s business.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};

use crate::composefs::{
    OVERLAY_ESCAPED_PREFIX, OVERLAY_PREFIX, XATTR_ESCAPED_OPAQUE, XATTR_ESCAPED_WHITEOUT,
    XATTR_ESCAPED_WHITEOUTS, XATTR_METACOPY, XATTR_OPAQUE, XATTR_REDIRECT, XATTR_SELINUX,
    XATTR_USER_OPAQUE, XATTR_USER_WHITEOUT, XATTR_USER_WHITEOUTS, metacopy_value,
};
use crate::erofs::format::{FileType, S_IFCHR, S_IFDIR, S_IFMT, S_IFREG};
use crate::erofs::writer::WriteError;
use crate::tree::{Directory, Leaf, LeafContent, LeafId, Mtime, Node, RegularFile, Stat, Tree};

/// Highest composefs format version this writer produces.
pub const MAX_FORMAT_VERSION: u32 = 1;

/// Largest regular file C `mkcomposefs` accepts as inline content
/// (`LCFS_INLINE_CONTENT_MAX`); bigger files must live in the object store.
pub const INLINE_CONTENT_MAX: usize = 5000;

/// Longest symlink target or redirect payload: C limits both to `PATH_MAX - 1`.
pub const PAYLOAD_MAX: usize = 4095;

/// Longest xattr name (`XATTR_NAME_MAX`) and longest file name.
pub const NAME_MAX: usize = 255;

/// Version choice and payload policy for [`prepare`].
#[derive(Clone, Copy, Debug)]
pub struct PrepareOptions {
    pub min_version: u32,
    pub max_version: u32,
    /// A file with a digest but no payload gets the redirect `"/" + digest.object_path()`.
    /// This is what `mkcomposefs DIR` does (it names every object by its digest);
    /// `mkcomposefs --from-file` instead writes no redirect when the payload is `-`.
    pub derive_payload: bool,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions {
            min_version: 0,
            max_version: MAX_FORMAT_VERSION,
            derive_payload: true,
        }
    }
}

/// An xattr as stored: name and value.
pub type Xattr<'t> = (Cow<'t, [u8]>, Cow<'t, [u8]>);

/// An inode ready for layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedInode<'t> {
    /// Full `st_mode`: type bits and permissions.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Mtime,
    pub nlink: u32,
    /// Xattrs under the names the image stores (escaped, overlay metadata added),
    /// sorted by name bytes, each name once.
    pub xattrs: Vec<Xattr<'t>>,
    pub content: PreparedContent<'t>,
}

impl PreparedInode<'_> {
    /// The file type a directory entry naming this inode records.
    pub fn file_type(&self) -> FileType {
        FileType::from_mode(self.mode)
    }

    /// `st_size` as the inode stores it for everything but directories (whose size
    /// depends on the directory block layout).
    pub fn file_size(&self) -> u64 {
        match &self.content {
            PreparedContent::Inline(data) => data.len() as u64,
            PreparedContent::External { size } => *size,
            PreparedContent::Symlink(target) => target.len() as u64,
            PreparedContent::Directory(_)
            | PreparedContent::Device(_)
            | PreparedContent::Special => 0,
        }
    }
}

/// What an inode holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PreparedContent<'t> {
    /// Entries sorted by name, `.` and `..` included.
    Directory(Vec<PreparedDirent<'t>>),
    /// A regular file whose bytes the image holds (possibly none).
    Inline(&'t [u8]),
    /// A regular file of this (non-zero) size whose bytes live in the object store.
    External { size: u64 },
    /// A non-empty symlink target.
    Symlink(&'t [u8]),
    /// A character or block device (the mode says which): the 32-bit `rdev`.
    Device(u32),
    /// A fifo or a socket.
    Special,
}

/// A directory entry: a name and the index of the inode it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedDirent<'t> {
    pub name: &'t [u8],
    pub inode: usize,
    pub file_type: FileType,
}

/// The inodes of an image in storage order; `inodes[0]` is the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedImage<'t> {
    pub inodes: Vec<PreparedInode<'t>>,
    /// The composefs format version the header records.
    pub composefs_version: u32,
    /// Whether any inode has a POSIX ACL (the header's ACL flag).
    pub has_acl: bool,
    /// The smallest mtime of all inodes: the superblock's build time.
    pub min_mtime: Mtime,
}

/// Names of the 256 root stubs, `00` … `ff`.
static STUB_NAMES: [[u8; 2]; 256] = stub_names();

const fn stub_names() -> [[u8; 2]; 256] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        out[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    out
}

/// The format version C `lcfs_write_to` settles on: `min`, raised to 1 when the
/// tree has a whiteout and `max` allows it (`max` below `min` counts as `min`).
pub fn resolve_version(tree: &Tree, min_version: u32, max_version: u32) -> Result<u32, WriteError> {
    if min_version > MAX_FORMAT_VERSION || max_version > MAX_FORMAT_VERSION {
        return Err(WriteError::UnsupportedVersion {
            min: min_version,
            max: max_version,
        });
    }
    let max_version = max_version.max(min_version);
    // Only leaves that a directory names count: C walks the tree, not a leaf table.
    let counts = tree.link_counts();
    let has_whiteout = tree
        .leaves
        .iter()
        .zip(&counts)
        .any(|(leaf, n)| *n > 0 && leaf.content.is_whiteout());
    if min_version < 1 && max_version >= 1 && has_whiteout {
        Ok(1)
    } else {
        Ok(min_version)
    }
}

/// Applies the composefs transformation and numbers the inodes.
pub fn prepare<'t>(tree: &'t Tree, opts: &PrepareOptions) -> Result<PreparedImage<'t>, WriteError> {
    let version = resolve_version(tree, opts.min_version, opts.max_version)?;
    let link_counts = tree.link_counts();
    let stored_link_counts = tree.stored_link_counts();
    let primary = tree.primary_paths();
    let mut b = Builder {
        tree,
        opts,
        version,
        link_counts,
        stored_link_counts,
        primary,
        leaf_inode: vec![None; tree.leaves.len()],
        inodes: Vec::new(),
    };
    b.run()?;

    let inodes = b.inodes;
    let min_mtime = inodes.iter().map(|i| i.mtime).min().unwrap_or_default();
    // C checks these two exact names (`lcfs_node_get_xattr`), not the prefix.
    let has_acl = inodes.iter().any(|i| {
        i.xattrs.iter().any(|(k, _)| {
            k.as_ref() == b"system.posix_acl_access" || k.as_ref() == b"system.posix_acl_default"
        })
    });
    Ok(PreparedImage {
        inodes,
        composefs_version: version,
        has_acl,
        min_mtime,
    })
}

/// A child of a directory while its entries are being numbered.
enum Child<'t> {
    Dot,
    DotDot,
    Dir(&'t Directory),
    Leaf(LeafId),
    Stub,
}

struct Builder<'t, 'o> {
    tree: &'t Tree,
    opts: &'o PrepareOptions,
    version: u32,
    /// Each leaf's number of names.
    link_counts: Vec<u32>,
    /// Each leaf's link count as the image stores it.
    stored_link_counts: Vec<u32>,
    /// The path of the name each hard-linked leaf's inode belongs with.
    primary: HashMap<LeafId, Vec<u8>>,
    /// The inode number of each leaf once its own name has been met.
    leaf_inode: Vec<Option<usize>>,
    inodes: Vec<PreparedInode<'t>>,
}

impl<'t> Builder<'t, '_> {
    fn run(&mut self) -> Result<(), WriteError> {
        let root = &self.tree.root;
        let root_inode = self.push_directory(
            root,
            Loc {
                parent: b"",
                name: b"",
            },
        )?;
        // The real opaque marker: this image is a complete lower layer.
        self.inodes[root_inode].set_xattr(Cow::Borrowed(XATTR_OPAQUE), Cow::Borrowed(b"y"));

        let mut queue: VecDeque<(&'t Directory, usize, usize, Vec<u8>)> = VecDeque::new();
        queue.push_back((root, root_inode, root_inode, Vec::new()));
        // Entries naming a hard-linked leaf whose own name is met later:
        // (directory inode, entry position, leaf).
        let mut deferred: Vec<(usize, usize, LeafId)> = Vec::new();

        while let Some((dir, me, parent, path)) = queue.pop_front() {
            let mut children: Vec<(&'t [u8], Child<'t>)> =
                Vec::with_capacity(dir.entries.len() + 2);
            children.push((b".", Child::Dot));
            children.push((b"..", Child::DotDot));
            for (name, node) in &dir.entries {
                let child = match node {
                    Node::Directory(d) => Child::Dir(d),
                    Node::Leaf(id) => Child::Leaf(*id),
                };
                children.push((name.as_slice(), child));
            }
            if me == root_inode {
                for name in &STUB_NAMES {
                    if !dir.entries.contains_key(name.as_slice()) {
                        children.push((name.as_slice(), Child::Stub));
                    }
                }
            }
            // Already sorted runs; this merges `.`, `..` and the stubs in.
            children.sort_by(|a, b| a.0.cmp(b.0));

            let mut entries = Vec::with_capacity(children.len());
            let mut has_whiteout = false;
            for (name, child) in children {
                let (inode, file_type) = match child {
                    Child::Dot => (me, FileType::Directory),
                    Child::DotDot => (parent, FileType::Directory),
                    Child::Dir(d) => {
                        let child_path = join_path(&path, name)?;
                        let at = Loc {
                            parent: &path,
                            name,
                        };
                        let idx = self.push_directory(d, at)?;
                        queue.push_back((d, idx, me, child_path));
                        (idx, FileType::Directory)
                    }
                    Child::Stub => (self.push_stub()?, FileType::CharDevice),
                    Child::Leaf(id) => {
                        let count = self.link_counts.get(id.0).copied().unwrap_or(0);
                        let own_name = count <= 1
                            || self
                                .primary
                                .get(&id)
                                .is_some_and(|p| is_child_path(p, &path, name));
                        if own_name {
                            check_name(name, &path)?;
                            let at = Loc {
                                parent: &path,
                                name,
                            };
                            let (idx, whiteout) = self.push_leaf(id, at)?;
                            has_whiteout |= whiteout;
                            if let Some(slot) = self.leaf_inode.get_mut(id.0) {
                                *slot = Some(idx);
                            }
                            (idx, self.inodes[idx].file_type())
                        } else if let Some(idx) = self.leaf_inode.get(id.0).copied().flatten() {
                            check_name(name, &path)?;
                            (idx, self.inodes[idx].file_type())
                        } else {
                            check_name(name, &path)?;
                            deferred.push((me, entries.len(), id));
                            (usize::MAX, FileType::Unknown)
                        }
                    }
                };
                entries.push(PreparedDirent {
                    name,
                    inode,
                    file_type,
                });
            }
            if has_whiteout {
                self.mark_whiteout_parent(me);
            }
            self.inodes[me].content = PreparedContent::Directory(entries);
        }

        for (dir, pos, id) in deferred {
            let idx = self
                .leaf_inode
                .get(id.0)
                .copied()
                .flatten()
                .ok_or(WriteError::BadLeafId(id.0))?;
            let file_type = self.inodes[idx].file_type();
            if let PreparedContent::Directory(entries) = &mut self.inodes[dir].content
                && let Some(e) = entries.get_mut(pos)
            {
                e.inode = idx;
                e.file_type = file_type;
            }
        }
        Ok(())
    }

    fn mark_whiteout_parent(&mut self, dir: usize) {
        let version = self.version;
        let inode = &mut self.inodes[dir];
        inode.set_xattr(Cow::Borrowed(XATTR_ESCAPED_WHITEOUTS), Cow::Borrowed(b""));
        inode.set_xattr(Cow::Borrowed(XATTR_USER_WHITEOUTS), Cow::Borrowed(b""));
        // Format 1 marks such a directory with opaque "x" so overlayfs looks for the
        // whiteouts; format 0 readers would misread that marker.
        if version >= 1 {
            inode.set_xattr(Cow::Borrowed(XATTR_ESCAPED_OPAQUE), Cow::Borrowed(b"x"));
            inode.set_xattr(Cow::Borrowed(XATTR_USER_OPAQUE), Cow::Borrowed(b"x"));
        }
    }

    fn push(&mut self, inode: PreparedInode<'t>) -> usize {
        self.inodes.push(inode);
        self.inodes.len() - 1
    }

    fn push_directory(&mut self, dir: &'t Directory, at: Loc<'_>) -> Result<usize, WriteError> {
        let mode = S_IFDIR | permissions(&dir.stat, at)?;
        let nlink = 2 + dir.subdirectory_count();
        let nlink = u32::try_from(nlink).map_err(|_| WriteError::TooLarge {
            what: "directory link count",
        })?;
        let xattrs = escaped_xattrs(&dir.stat, at)?;
        Ok(self.push(PreparedInode {
            mode,
            uid: dir.stat.uid,
            gid: dir.stat.gid,
            mtime: dir.stat.mtime,
            nlink,
            xattrs,
            content: PreparedContent::Directory(Vec::new()),
        }))
    }

    /// A root stub: what C `add_overlay_whiteouts` creates.
    fn push_stub(&mut self) -> Result<usize, WriteError> {
        let root = &self.tree.root.stat;
        let xattrs = match root.xattrs.get(XATTR_SELINUX) {
            Some(v) => vec![(Cow::Borrowed(XATTR_SELINUX), Cow::Borrowed(v.as_slice()))],
            None => Vec::new(),
        };
        Ok(self.push(PreparedInode {
            mode: S_IFCHR | 0o644,
            uid: root.uid,
            gid: root.gid,
            mtime: root.mtime,
            nlink: 1,
            xattrs,
            content: PreparedContent::Device(0),
        }))
    }

    /// Adds the inode of a leaf; also says whether it was a whiteout.
    fn push_leaf(&mut self, id: LeafId, at: Loc<'_>) -> Result<(usize, bool), WriteError> {
        let tree: &'t Tree = self.tree;
        let leaf: &'t Leaf = tree.leaves.get(id.0).ok_or(WriteError::BadLeafId(id.0))?;
        let nlink = self.stored_link_counts.get(id.0).copied().unwrap_or(1);
        let perms = permissions(&leaf.stat, at)?;
        let mut xattrs = escaped_xattrs(&leaf.stat, at)?;
        let mut mode = leaf.content.file_type_bits() | perms;
        let mut whiteout = false;
        let content = match &leaf.content {
            LeafContent::Regular(RegularFile::Inline(data)) => {
                if data.len() > INLINE_CONTENT_MAX {
                    return Err(WriteError::InlineTooLarge {
                        path: at.show(),
                        size: data.len(),
                    });
                }
                PreparedContent::Inline(data)
            }
            // C keeps no reference for an empty file: it is plain and empty.
            LeafContent::Regular(RegularFile::External { size: 0, .. }) => {
                PreparedContent::Inline(&[])
            }
            LeafContent::Regular(RegularFile::External {
                size,
                payload,
                digest,
            }) => {
                set_xattr(
                    &mut xattrs,
                    Cow::Borrowed(XATTR_METACOPY),
                    Cow::Owned(metacopy_value(digest.as_ref())),
                );
                let payload: Option<Cow<'t, [u8]>> = match (payload, digest) {
                    (Some(p), _) => Some(Cow::Borrowed(p.as_slice())),
                    (None, Some(d)) if self.opts.derive_payload => {
                        Some(Cow::Owned(d.object_path().into_bytes()))
                    }
                    (None, _) => None,
                };
                if let Some(p) = payload.filter(|p| !p.is_empty()) {
                    if p.len() > PAYLOAD_MAX || p.contains(&0) {
                        return Err(WriteError::BadPayload { path: at.show() });
                    }
                    let mut redirect = Vec::with_capacity(p.len() + 1);
                    redirect.push(b'/');
                    redirect.extend_from_slice(&p);
                    set_xattr(
                        &mut xattrs,
                        Cow::Borrowed(XATTR_REDIRECT),
                        Cow::Owned(redirect),
                    );
                }
                PreparedContent::External { size: *size }
            }
            LeafContent::Symlink(target) => {
                if target.is_empty() || target.len() > PAYLOAD_MAX || target.contains(&0) {
                    return Err(WriteError::BadSymlink { path: at.show() });
                }
                PreparedContent::Symlink(target)
            }
            LeafContent::CharDevice(0) => {
                // An escaped whiteout: a plain empty file overlayfs reads as a whiteout
                // only when the xattrs say so, so the image itself mounts cleanly.
                whiteout = true;
                mode = S_IFREG | perms;
                set_xattr(
                    &mut xattrs,
                    Cow::Borrowed(XATTR_ESCAPED_WHITEOUT),
                    Cow::Borrowed(b""),
                );
                set_xattr(
                    &mut xattrs,
                    Cow::Borrowed(XATTR_USER_WHITEOUT),
                    Cow::Borrowed(b""),
                );
                PreparedContent::Inline(&[])
            }
            LeafContent::CharDevice(rdev) | LeafContent::BlockDevice(rdev) => {
                // EROFS has 32 bits for rdev (the kernel's new_encode_dev form).
                let rdev = u32::try_from(*rdev).map_err(|_| WriteError::DeviceNumberTooLarge {
                    path: at.show(),
                    rdev: *rdev,
                })?;
                PreparedContent::Device(rdev)
            }
            LeafContent::Fifo | LeafContent::Socket => PreparedContent::Special,
        };
        let idx = self.push(PreparedInode {
            mode,
            uid: leaf.stat.uid,
            gid: leaf.stat.gid,
            mtime: leaf.stat.mtime,
            nlink,
            xattrs,
            content,
        });
        Ok((idx, whiteout))
    }
}

impl<'t> PreparedInode<'t> {
    /// Sets an xattr, replacing any value under the same name, keeping the order.
    fn set_xattr(&mut self, name: Cow<'t, [u8]>, value: Cow<'t, [u8]>) {
        set_xattr(&mut self.xattrs, name, value);
    }
}

/// Sets an xattr in a sorted list, replacing any value under the same name, as C's
/// `lcfs_node_set_xattr` does.
fn set_xattr<'t>(xattrs: &mut Vec<Xattr<'t>>, name: Cow<'t, [u8]>, value: Cow<'t, [u8]>) {
    match xattrs.binary_search_by(|(k, _)| k.as_ref().cmp(name.as_ref())) {
        Ok(i) => {
            if let Some(x) = xattrs.get_mut(i) {
                x.1 = value;
            }
        }
        Err(i) => xattrs.insert(i, (name, value)),
    }
}

/// Where an inode is, for error messages: built into a string only on error.
#[derive(Clone, Copy)]
struct Loc<'a> {
    parent: &'a [u8],
    name: &'a [u8],
}

impl Loc<'_> {
    fn show(&self) -> String {
        let mut p = self.parent.to_vec();
        p.push(b'/');
        p.extend_from_slice(self.name);
        show(&p)
    }
}

/// The permission bits of a stat; anything outside `0o7777` other than file type
/// bits cannot be stored.
fn permissions(stat: &Stat, at: Loc<'_>) -> Result<u32, WriteError> {
    if stat.mode & !(S_IFMT | 0o7777) != 0 {
        return Err(WriteError::BadMode {
            path: at.show(),
            mode: stat.mode,
        });
    }
    Ok(stat.mode & 0o7777)
}

/// A stat's xattrs under the names the image stores them.
fn escaped_xattrs<'t>(stat: &'t Stat, at: Loc<'_>) -> Result<Vec<Xattr<'t>>, WriteError> {
    // Escaping keeps the order: it only lengthens names after their first 16 bytes,
    // and every other name differs from those within the first 16 bytes or is a
    // prefix of them. So the stat's sorted order is the stored order.
    let mut out = Vec::with_capacity(stat.xattrs.len() + 2);
    for (name, value) in &stat.xattrs {
        if name.is_empty() || name.len() > NAME_MAX || name.contains(&0) {
            return Err(WriteError::BadXattrName {
                path: at.show(),
                name: show(name),
            });
        }
        if value.len() > usize::from(u16::MAX) {
            return Err(WriteError::XattrTooLarge {
                path: at.show(),
                name: show(name),
            });
        }
        let stored: Cow<'t, [u8]> = match name.strip_prefix(OVERLAY_PREFIX) {
            Some(rest) => Cow::Owned([OVERLAY_ESCAPED_PREFIX, rest].concat()),
            None => Cow::Borrowed(name.as_slice()),
        };
        out.push((stored, Cow::Borrowed(value.as_slice())));
    }
    Ok(out)
}

/// Refuses names a directory entry cannot have.
fn check_name(name: &[u8], parent: &[u8]) -> Result<(), WriteError> {
    if name.is_empty()
        || name.len() > NAME_MAX
        || name == b"."
        || name == b".."
        || name.iter().any(|b| *b == b'/' || *b == 0)
    {
        let mut p = parent.to_vec();
        p.push(b'/');
        p.extend_from_slice(name);
        return Err(WriteError::BadName { path: show(&p) });
    }
    Ok(())
}

/// Whether `path` is `parent/name`.
fn is_child_path(path: &[u8], parent: &[u8], name: &[u8]) -> bool {
    path.len() == parent.len() + 1 + name.len()
        && path.starts_with(parent)
        && path.get(parent.len()) == Some(&b'/')
        && path.ends_with(name)
}

/// `parent/name`, after checking the name.
fn join_path(parent: &[u8], name: &[u8]) -> Result<Vec<u8>, WriteError> {
    check_name(name, parent)?;
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    p.extend_from_slice(parent);
    p.push(b'/');
    p.extend_from_slice(name);
    Ok(p)
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(t: &mut Tree, path: &[u8], stat: Stat, content: LeafContent) -> LeafId {
        let id = t.push_leaf(Leaf { stat, content });
        t.insert(path, Node::Leaf(id)).unwrap();
        id
    }

    fn xattr<'a>(i: &'a PreparedInode<'_>, name: &[u8]) -> Option<&'a [u8]> {
        i.xattrs
            .iter()
            .find(|(k, _)| k.as_ref() == name)
            .map(|(_, v)| v.as_ref())
    }

    fn named<'a, 't>(img: &'a PreparedImage<'t>, dir: usize, name: &[u8]) -> &'a PreparedInode<'t> {
        let PreparedContent::Directory(entries) = &img.inodes[dir].content else {
            panic!("not a directory")
        };
        let e = entries.iter().find(|e| e.name == name).unwrap();
        &img.inodes[e.inode]
    }

    #[test]
    fn whiteout_markers_replace_user_values() {
        let mut t = Tree::new(Stat::default());
        t.insert(b"/d", Node::Directory(Box::default())).unwrap();
        let mut st = Stat::default();
        st.xattrs
            .insert(b"user.overlay.whiteout".to_vec(), b"zz".to_vec());
        st.xattrs
            .insert(b"trusted.overlay.whiteout".to_vec(), b"mine".to_vec());
        leaf(&mut t, b"/d/w", st, LeafContent::CharDevice(0));
        let img = prepare(&t, &PrepareOptions::default()).unwrap();
        assert_eq!(img.composefs_version, 1);
        let PreparedContent::Directory(root) = &img.inodes[0].content else {
            panic!()
        };
        let d = root.iter().find(|e| e.name == b"d").unwrap().inode;
        assert_eq!(img.inodes[d].mode & S_IFMT, S_IFDIR);
        let w = named(&img, d, b"w");
        assert_eq!(w.mode & S_IFMT, S_IFREG);
        assert_eq!(xattr(w, XATTR_USER_WHITEOUT), Some(&b""[..]));
        assert_eq!(xattr(w, XATTR_ESCAPED_WHITEOUT), Some(&b""[..]));
        assert_eq!(w.xattrs.len(), 2, "{:?}", w.xattrs);
        assert_eq!(xattr(&img.inodes[d], XATTR_USER_OPAQUE), Some(&b"x"[..]));
        assert_eq!(
            xattr(&img.inodes[d], XATTR_ESCAPED_WHITEOUTS),
            Some(&b""[..])
        );
        // Version 0 has the whiteout markers but not the opaque ones.
        let v0 = PrepareOptions {
            max_version: 0,
            ..PrepareOptions::default()
        };
        let img = prepare(&t, &v0).unwrap();
        assert_eq!(img.composefs_version, 0);
        assert_eq!(img.inodes[d].mode & S_IFMT, S_IFDIR);
        assert_eq!(xattr(&img.inodes[d], XATTR_USER_OPAQUE), None);
        assert_eq!(xattr(&img.inodes[d], XATTR_USER_WHITEOUTS), Some(&b""[..]));
    }

    #[test]
    fn hard_links_share_the_inode_of_their_own_name() {
        let mut t = Tree::new(Stat::default());
        t.insert(b"/a", Node::Directory(Box::default())).unwrap();
        t.insert(b"/a/deep", Node::Directory(Box::default()))
            .unwrap();
        let id = leaf(
            &mut t,
            b"/a/deep/x",
            Stat::default(),
            LeafContent::Regular(RegularFile::Inline(b"1".to_vec())),
        );
        t.insert(b"/b", Node::Leaf(id)).unwrap();
        t.insert(b"/a/y", Node::Leaf(id)).unwrap();
        let img = prepare(&t, &PrepareOptions::default()).unwrap();
        // `/a/deep/x` comes first depth first, so the inode sits after `/a/deep`,
        // not among the root's children where `/b` is.
        let PreparedContent::Directory(root) = &img.inodes[0].content else {
            panic!()
        };
        let b = root.iter().find(|e| e.name == b"b").unwrap();
        let a = root.iter().find(|e| e.name == b"a").unwrap().inode;
        let deep = a + 1; // after the root's children come a's: deep, then y
        assert_eq!(img.inodes[b.inode].nlink, 3);
        assert!(b.inode > deep, "inode {} should follow /a/deep", b.inode);
        assert_eq!(b.file_type, FileType::RegularFile);
        // root, 256 stubs, a, deep, and the one linked leaf
        assert_eq!(img.inodes.len(), 1 + 256 + 3);

        // Recorded as the inode's own name (a dumpfile line without `@`), `/b` places it
        // among the root's children; a recorded link count is stored as it is.
        t.primary_names.insert(id, b"/b".to_vec());
        t.leaf_mut(id).stat.nlink = Some(9);
        let img = prepare(&t, &PrepareOptions::default()).unwrap();
        let PreparedContent::Directory(root) = &img.inodes[0].content else {
            panic!()
        };
        let b = root.iter().find(|e| e.name == b"b").unwrap();
        let a = root.iter().find(|e| e.name == b"a").unwrap().inode;
        let PreparedContent::Directory(in_a) = &img.inodes[a].content else {
            panic!()
        };
        let deep = in_a.iter().find(|e| e.name == b"deep").unwrap().inode;
        let y = in_a.iter().find(|e| e.name == b"y").unwrap().inode;
        assert!(
            b.inode < deep,
            "inode {} should come before /a/deep's {deep}",
            b.inode
        );
        assert_eq!((y, img.inodes[b.inode].nlink), (b.inode, 9));
    }

    #[test]
    fn escaping_stubs_and_acl_flag() {
        let mut root = Stat {
            uid: 7,
            ..Stat::default()
        };
        root.xattrs.insert(XATTR_SELINUX.to_vec(), b"ctx".to_vec());
        root.xattrs
            .insert(b"trusted.overlay.opaque".to_vec(), b"n".to_vec());
        let mut t = Tree::new(root);
        let mut st = Stat::default();
        st.xattrs
            .insert(b"system.posix_acl_accessX".to_vec(), b"1".to_vec());
        leaf(&mut t, b"/0a", st, LeafContent::Fifo);
        let img = prepare(&t, &PrepareOptions::default()).unwrap();
        // The root's own opaque is escaped; the real one says "y".
        assert_eq!(xattr(&img.inodes[0], XATTR_OPAQUE), Some(&b"y"[..]));
        assert_eq!(xattr(&img.inodes[0], XATTR_ESCAPED_OPAQUE), Some(&b"n"[..]));
        assert!(!img.has_acl, "only the exact ACL names count, as in C");
        // 255 stubs plus the real `0a`.
        assert_eq!(img.inodes.len(), 1 + 256);
        let stub = named(&img, 0, b"ff");
        assert_eq!((stub.mode, stub.uid), (S_IFCHR | 0o644, 7));
        assert_eq!(xattr(stub, XATTR_SELINUX), Some(&b"ctx"[..]));
        assert_eq!(named(&img, 0, b"0a").file_type(), FileType::Fifo);
    }
}

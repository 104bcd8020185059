//! Printing a [`Tree`] the way C `composefs-info dump` prints the image made from it.
//!
//! For a tree read from an image that is exactly C's dump of the image. A tree read from
//! a dumpfile may record that a hard link's own name is not its first one; printing keeps
//! that (the `@` lines point at the own name), so the printed dumpfile makes the same
//! image, where C's dump of that image would name the first one.
//!
//! The dump shows what the image stores, which differs from the tree in three ways we
//! reproduce:
//!
//! - A directory's SIZE is its EROFS `i_size`: the bytes of its dirent blocks, `.` and `..`
//!   included, and for the root also the `00`..`ff` whiteout stubs (see [`erofs_dir_size`]).
//!   NLINK is what the tree's source recorded ([`Stat::nlink`]), else the true count:
//!   `2 + subdirectories` for a directory, the number of names for a leaf.
//! - Xattrs come in the image's order: those stored in the inode first, then those in the
//!   shared table, each group sorted by stored name. An xattr is shared when the same
//!   name and value are stored by more than one inode (counting the overlay xattrs the
//!   writer adds), at most 128 per inode (EROFS_XATTR_LONG_PREFIX).
//! - A hard link's other names print the whole inode again with `@` before the mode and
//!   the path of its own name (see [`Tree::primary_paths`]) as payload; that name comes
//!   first depth first unless the tree records another (then a link may name a path
//!   printed later, which readers accept).
//!
//! A regular file with an object (External) and size 0 prints as an empty file, since the
//! writer only gives non-empty files a redirect and metacopy.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};

use super::{Escape, escape_into};
use crate::composefs::{
    XATTR_ESCAPED_OPAQUE, XATTR_ESCAPED_WHITEOUT, XATTR_ESCAPED_WHITEOUTS, XATTR_METACOPY,
    XATTR_OPAQUE, XATTR_REDIRECT, XATTR_SELINUX, XATTR_USER_OPAQUE, XATTR_USER_WHITEOUT,
    XATTR_USER_WHITEOUTS, escape_xattr_name, metacopy_value,
};
use crate::erofs::format::{BLOCK_SIZE, DIRENT_SIZE};
use crate::tree::{Directory, Leaf, LeafContent, LeafId, Node, RegularFile, Stat, Tree};

/// Most shared xattrs one inode may reference; the rest are stored inline.
const MAX_SHARED_PER_INODE: usize = 0x80;

/// Writes the dumpfile of `tree` to `out`.
pub fn write_dumpfile(tree: &Tree, out: &mut impl Write) -> io::Result<()> {
    let ctx = Context::new(tree);
    let primary = tree.primary_paths();
    let mut line = Vec::new();

    // Depth first with names in byte order, as C walks the loaded image. An explicit
    // stack keeps a very deep tree from overflowing the call stack.
    let mut stack: Vec<(Vec<u8>, &Node)> = Vec::new();
    ctx.directory_line(&mut line, b"/", &tree.root, true);
    out.write_all(&line)?;
    push_children(&mut stack, b"", &tree.root);
    while let Some((path, node)) = stack.pop() {
        line.clear();
        match node {
            Node::Directory(dir) => {
                ctx.directory_line(&mut line, &path, dir, false);
                push_children(&mut stack, &path, dir);
            }
            Node::Leaf(id) => {
                let link_target = primary
                    .get(id)
                    .map(Vec::as_slice)
                    .filter(|own| *own != path.as_slice());
                ctx.leaf_line(&mut line, &path, *id, link_target);
            }
        }
        out.write_all(&line)?;
    }
    Ok(())
}

/// The dumpfile of `tree` as a string. Escaping makes every dumpfile ASCII.
pub fn write_dumpfile_to_string(tree: &Tree) -> String {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = write_dumpfile(tree, &mut out);
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn push_children<'a>(stack: &mut Vec<(Vec<u8>, &'a Node)>, parent: &[u8], dir: &'a Directory) {
    // Reversed so the smallest name is popped first.
    for (name, node) in dir.entries.iter().rev() {
        let mut path = Vec::with_capacity(parent.len() + 1 + name.len());
        path.extend_from_slice(parent);
        path.push(b'/');
        path.extend_from_slice(name);
        stack.push((path, node));
    }
}

/// The two-character names of the root's whiteout stubs, `00` to `ff`.
fn stub_names() -> impl Iterator<Item = [u8; 2]> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    (0..256usize).map(|i| [HEX[i >> 4], HEX[i & 15]])
}

/// A directory's EROFS `i_size` as the composefs writer lays it out: dirents (12 bytes
/// plus the name) packed greedily into 4096-byte blocks in name order, `.` and `..`
/// included, plus the `00`..`ff` stubs the root gets; a last block more than half full
/// is a whole block, otherwise its used bytes count.
pub fn erofs_dir_size(dir: &Directory, is_root: bool) -> u64 {
    let mut names: Vec<&[u8]> = dir.entries.keys().map(Vec::as_slice).collect();
    names.push(b".");
    names.push(b"..");
    let stubs: Vec<[u8; 2]> = if is_root {
        stub_names()
            .filter(|n| !dir.entries.contains_key(n.as_slice()))
            .collect()
    } else {
        Vec::new()
    };
    names.extend(stubs.iter().map(|n| n.as_slice()));
    names.sort_unstable();
    let mut blocks = 0u64;
    let mut used = 0usize;
    for name in names {
        let len = DIRENT_SIZE + name.len();
        if used + len > BLOCK_SIZE {
            blocks += 1;
            used = 0;
        }
        used += len;
    }
    if used > BLOCK_SIZE / 2 {
        blocks += 1;
        used = 0;
    }
    blocks * BLOCK_SIZE as u64 + used as u64
}

/// Whole-tree facts a line needs: link counts, whether the image will be format version 1
/// and how often each stored xattr occurs.
struct Context<'a> {
    tree: &'a Tree,
    /// Each leaf's number of names.
    nlinks: Vec<u32>,
    /// Each leaf's link count as stored.
    stored_nlinks: Vec<u32>,
    version1: bool,
    xattr_uses: HashMap<(Vec<u8>, Vec<u8>), usize>,
}

impl<'a> Context<'a> {
    fn new(tree: &'a Tree) -> Self {
        let mut dirs: Vec<&Directory> = Vec::new();
        let mut stack = vec![&tree.root];
        let mut nlinks = vec![0u32; tree.leaves.len()];
        while let Some(dir) = stack.pop() {
            dirs.push(dir);
            for node in dir.entries.values() {
                match node {
                    Node::Directory(d) => stack.push(d),
                    Node::Leaf(id) => {
                        if let Some(n) = nlinks.get_mut(id.0) {
                            *n = n.saturating_add(1);
                        }
                    }
                }
            }
        }
        let version1 = tree
            .leaves
            .iter()
            .zip(&nlinks)
            .any(|(leaf, n)| *n > 0 && leaf.content.is_whiteout());
        let mut ctx = Context {
            tree,
            stored_nlinks: tree.stored_link_counts(),
            nlinks,
            version1,
            xattr_uses: HashMap::new(),
        };
        let mut uses: HashMap<(Vec<u8>, Vec<u8>), usize> = HashMap::new();
        for dir in &dirs {
            let is_root = std::ptr::eq(*dir, &tree.root);
            for kv in ctx.stored_dir_xattrs(dir, is_root) {
                *uses.entry(kv).or_default() += 1;
            }
        }
        for (index, leaf) in tree.leaves.iter().enumerate() {
            if ctx.nlinks.get(index).is_some_and(|n| *n > 0) {
                for kv in stored_leaf_xattrs(leaf) {
                    *uses.entry(kv).or_default() += 1;
                }
            }
        }
        // Each root stub carries a copy of the root's SELinux label.
        if let Some(label) = tree.root.stat.xattrs.get(XATTR_SELINUX) {
            let stubs = stub_names()
                .filter(|n| !tree.root.entries.contains_key(n.as_slice()))
                .count();
            *uses
                .entry((XATTR_SELINUX.to_vec(), label.clone()))
                .or_default() += stubs;
        }
        ctx.xattr_uses = uses;
        ctx
    }

    /// A directory's xattrs as stored: escaped, plus the whiteout markers when it holds a
    /// whiteout and the root's opaque flag.
    fn stored_dir_xattrs(&self, dir: &Directory, is_root: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut extra: Vec<(&[u8], &[u8])> = Vec::new();
        let has_whiteout = dir.entries.values().any(|n| match n {
            Node::Leaf(id) => self
                .tree
                .leaves
                .get(id.0)
                .is_some_and(|l| l.content.is_whiteout()),
            Node::Directory(_) => false,
        });
        if has_whiteout {
            extra.push((XATTR_ESCAPED_WHITEOUTS, b""));
            extra.push((XATTR_USER_WHITEOUTS, b""));
            if self.version1 {
                extra.push((XATTR_ESCAPED_OPAQUE, b"x"));
                extra.push((XATTR_USER_OPAQUE, b"x"));
            }
        }
        if is_root {
            extra.push((XATTR_OPAQUE, b"y"));
        }
        stored_xattrs(
            &dir.stat,
            extra.into_iter().map(|(k, v)| (k.to_vec(), v.to_vec())),
        )
    }

    /// The xattrs of `stat` in the order C prints them for an inode whose stored xattrs
    /// are `stored`.
    fn ordered<'s>(
        &self,
        stat: &'s Stat,
        stored: &[(Vec<u8>, Vec<u8>)],
    ) -> Vec<(&'s [u8], &'s [u8])> {
        let mut shared: HashSet<&[u8]> = HashSet::new();
        for (key, value) in stored {
            if shared.len() >= MAX_SHARED_PER_INODE {
                break;
            }
            let uses = self
                .xattr_uses
                .get(&(key.clone(), value.clone()))
                .copied()
                .unwrap_or(0);
            if uses > 1 {
                shared.insert(key);
            }
        }
        let mut out: Vec<(&[u8], &[u8])> = stat
            .xattrs
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        // Inline ones (false) before shared ones (true), each by stored name.
        out.sort_by_cached_key(|(k, _)| {
            let stored_key = escape_xattr_name(k);
            (shared.contains(stored_key.as_slice()), stored_key)
        });
        out
    }

    fn directory_line(&self, line: &mut Vec<u8>, path: &[u8], dir: &Directory, is_root: bool) {
        let stored = self.stored_dir_xattrs(dir, is_root);
        let fields = Fields {
            size: erofs_dir_size(dir, is_root),
            hard_link: false,
            mode: dir.st_mode(),
            nlink: dir.shown_link_count(),
            stat: &dir.stat,
            rdev: 0,
            payload: None,
            content: None,
            digest: None,
        };
        fields.write(line, path, &self.ordered(&dir.stat, &stored));
    }

    fn leaf_line(&self, line: &mut Vec<u8>, path: &[u8], id: LeafId, link_target: Option<&[u8]>) {
        let Some(leaf) = self.tree.leaves.get(id.0) else {
            // A dangling id cannot come from the parser; print nothing rather than panic.
            return;
        };
        let nlink = self.stored_nlinks.get(id.0).copied().unwrap_or(1);
        let mut fields = Fields {
            size: 0,
            hard_link: link_target.is_some(),
            mode: leaf.st_mode(),
            nlink: u64::from(nlink),
            stat: &leaf.stat,
            rdev: leaf.content.rdev(),
            payload: None,
            content: None,
            digest: None,
        };
        match &leaf.content {
            LeafContent::Regular(RegularFile::Inline(data)) => {
                fields.size = data.len() as u64;
                fields.content = Some(data.as_slice()).filter(|d| !d.is_empty());
            }
            LeafContent::Regular(RegularFile::External {
                size,
                payload,
                digest,
            }) => {
                fields.size = *size;
                if *size > 0 {
                    fields.payload = payload.as_deref().filter(|p| !p.is_empty());
                    fields.digest = digest.as_ref().map(|d| d.to_hex());
                }
            }
            LeafContent::Symlink(target) => {
                fields.size = target.len() as u64;
                fields.payload = Some(target.as_slice());
            }
            _ => {}
        }
        if link_target.is_some() {
            fields.payload = link_target;
        }
        let stored = stored_leaf_xattrs(leaf);
        fields.write(line, path, &self.ordered(&leaf.stat, &stored));
    }
}

/// A leaf's xattrs as stored: escaped, plus redirect and metacopy for a file with an
/// object, or the whiteout markers for a whiteout.
fn stored_leaf_xattrs(leaf: &Leaf) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut extra: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    match &leaf.content {
        LeafContent::Regular(RegularFile::External {
            size,
            payload,
            digest,
        }) if *size > 0 => {
            extra.push((XATTR_METACOPY.to_vec(), metacopy_value(digest.as_ref())));
            if let Some(p) = payload.as_deref().filter(|p| !p.is_empty()) {
                extra.push((XATTR_REDIRECT.to_vec(), [b"/", p].concat()));
            }
        }
        content if content.is_whiteout() => {
            extra.push((XATTR_ESCAPED_WHITEOUT.to_vec(), Vec::new()));
            extra.push((XATTR_USER_WHITEOUT.to_vec(), Vec::new()));
        }
        _ => {}
    }
    stored_xattrs(&leaf.stat, extra.into_iter())
}

/// Escaped xattrs of `stat` with `extra` set on top, sorted by stored name.
fn stored_xattrs(
    stat: &Stat,
    extra: impl Iterator<Item = (Vec<u8>, Vec<u8>)>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut map: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = stat
        .xattrs
        .iter()
        .map(|(k, v)| (escape_xattr_name(k), v.clone()))
        .collect();
    map.extend(extra);
    map.into_iter().collect()
}

/// One line's fields, ready to print.
struct Fields<'a> {
    size: u64,
    hard_link: bool,
    mode: u32,
    nlink: u64,
    stat: &'a Stat,
    rdev: u64,
    payload: Option<&'a [u8]>,
    content: Option<&'a [u8]>,
    digest: Option<String>,
}

impl Fields<'_> {
    fn write(&self, line: &mut Vec<u8>, path: &[u8], xattrs: &[(&[u8], &[u8])]) {
        escape_into(line, path, Escape::Standard);
        // C prints the seconds as a signed 64-bit number.
        let sec = self.stat.mtime.sec as i64;
        let _ = write!(
            line,
            " {} {}{:o} {} {} {} {} {}.{} ",
            self.size,
            if self.hard_link { "@" } else { "" },
            self.mode,
            self.nlink,
            self.stat.uid,
            self.stat.gid,
            self.rdev,
            sec,
            self.stat.mtime.nsec
        );
        optional(line, self.payload);
        line.push(b' ');
        optional(line, self.content);
        line.push(b' ');
        line.extend_from_slice(self.digest.as_deref().unwrap_or("-").as_bytes());
        for (key, value) in xattrs {
            line.push(b' ');
            escape_into(line, key, Escape::Equals);
            line.push(b'=');
            escape_into(line, value, Escape::Equals);
        }
        line.push(b'\n');
    }
}

fn optional(line: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(v) => escape_into(line, v, Escape::LoneDash),
        None => line.push(b'-'),
    }
}

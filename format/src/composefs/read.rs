//! Turning a composefs image back into the tree it was made from: the inverse of what the
//! writer adds, following C `lcfs_load_node_from_image` (what `composefs-info dump` shows).
//!
//! - The root's `00`..`ff` whiteout stubs (character devices 0/0) are hidden, and so is
//!   every unescaped `trusted.overlay.*` xattr (the root's `opaque`, redirect, metacopy).
//! - A regular file with a chunk-based layout is an external file: size from the inode,
//!   payload from the redirect without its leading `/`, digest from the metacopy.
//!   A flat file with data is inline content.
//! - A regular file carrying `trusted.overlay.overlay.whiteout` is a user whiteout: it
//!   becomes a character device 0/0 again. The writer's markers are dropped:
//!   `trusted.overlay.overlay.whiteouts` and `user.overlay.whiteout(s)` everywhere, as C
//!   does. The `trusted.overlay.opaque=x user.overlay.opaque=x` pair a format-1 writer
//!   puts next to them on the parent stays, as C's dump and the mount show it (the
//!   dumpfile printer adds it to such a directory too, so trees compare equal).
//! - `trusted.overlay.overlay.X` is shown as `trusted.overlay.X`.
//! - A nid reached by several names is one leaf (hard links); a directory reached twice is
//!   an error, so a hostile image cannot loop.
//! - Link counts are the stored `i_nlink`, kept in [`Stat::nlink`] where they differ from
//!   the true count (C `mkcomposefs --from-file` stores a dumpfile's NLINK as given).
//!
//! Unlike C, a character device 0/0 below the root is kept (as a whiteout): only the
//! root's stubs are the writer's.
//!
//! Leaves are numbered in dumpfile order (depth first, names sorted), like
//! [`crate::dumpfile::parse_dumpfile`] and [`crate::tree::tree_from_dir`] do.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{
    OVERLAY_ESCAPED_PREFIX, OVERLAY_PREFIX, XATTR_ESCAPED_WHITEOUT, XATTR_ESCAPED_WHITEOUTS,
    XATTR_METACOPY, XATTR_REDIRECT, XATTR_USER_WHITEOUT, XATTR_USER_WHITEOUTS,
};
use crate::dumpfile::INLINE_CONTENT_MAX;
use crate::erofs::format::{DataLayout, FileType, S_IFMT};
use crate::erofs::reader::{Image, ImageError, Inode};
use crate::tree::{Directory, Leaf, LeafContent, LeafId, Node, RegularFile, Stat, Tree};

/// Longest path built while reading; deeper trees are refused so that a hostile chain of
/// long names cannot make memory use quadratic.
const MAX_PATH: usize = 64 * 1024;

/// Why an image could not be turned into a tree; names the path concerned.
#[derive(Debug, thiserror::Error)]
pub enum ReadTreeError {
    #[error("{path}: {source}")]
    Image {
        path: String,
        #[source]
        source: ImageError,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: &'static str },
}

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

fn at(path: &[u8]) -> impl FnOnce(ImageError) -> ReadTreeError {
    let path = show(path);
    move |source| ReadTreeError::Image { path, source }
}

fn invalid(path: &[u8], reason: &'static str) -> ReadTreeError {
    ReadTreeError::Invalid {
        path: show(path),
        reason,
    }
}

/// Reads the tree an image was written from.
pub fn tree_from_image(image: &Image) -> Result<Tree, ReadTreeError> {
    let root = image.root().map_err(at(b"/"))?;
    if !root.is_dir() {
        return Err(invalid(b"/", "the root is not a directory"));
    }
    let (root_stat, _) = stat_of(image, &root, b"/")?;
    let mut tree = Tree::new(root_stat);
    let mut leaves: HashMap<u64, LeafId> = HashMap::new();
    let mut dirs_seen: HashSet<u64> = HashSet::from([root.nid]);
    // Every dirent takes at least 12 bytes of an honest image.
    let mut budget = image.bytes().len() / 12;

    let mut stack: Vec<(Vec<u8>, u64)> = Vec::new();
    push_children(image, &root, b"", true, &mut stack, &mut budget)?;
    while let Some((path, nid)) = stack.pop() {
        let node = if let Some(id) = leaves.get(&nid) {
            Node::Leaf(*id)
        } else {
            let inode = image.inode(nid).map_err(at(&path))?;
            if inode.is_dir() {
                if !dirs_seen.insert(nid) {
                    return Err(invalid(
                        &path,
                        "directory reached twice: a loop or a hard-linked directory",
                    ));
                }
                let (stat, _) = stat_of(image, &inode, &path)?;
                push_children(image, &inode, &path, false, &mut stack, &mut budget)?;
                Node::Directory(Box::new(Directory::new(stat)))
            } else {
                let leaf = leaf_of(image, &inode, &path)?;
                let id = tree.push_leaf(leaf);
                leaves.insert(nid, id);
                Node::Leaf(id)
            }
        };
        tree.insert(&path, node)
            .map_err(|_| invalid(&path, "name cannot be placed in the tree"))?;
    }
    tree.normalize_link_info();
    Ok(tree)
}

/// Pushes `dir`'s entries (without `.`, `..` and, at the root, the whiteout stubs) so the
/// smallest name pops first.
fn push_children(
    image: &Image,
    dir: &Inode<'_>,
    dir_path: &[u8],
    is_root: bool,
    stack: &mut Vec<(Vec<u8>, u64)>,
    budget: &mut usize,
) -> Result<(), ReadTreeError> {
    let shown = if dir_path.is_empty() {
        b"/".as_slice()
    } else {
        dir_path
    };
    let mut children = Vec::new();
    for entry in image.read_dir(dir, 0).map_err(at(shown))? {
        let entry = entry.map_err(at(shown))?;
        *budget = budget
            .checked_sub(1)
            .ok_or_else(|| invalid(shown, "more dirents than the image can hold"))?;
        if entry.name == b"." || entry.name == b".." {
            continue;
        }
        let path = [dir_path, b"/", entry.name].concat();
        if path.len() > MAX_PATH {
            return Err(invalid(&path, "path too long"));
        }
        if is_root && is_stub_name(entry.name) {
            let inode = image.inode(entry.nid).map_err(at(&path))?;
            if inode.file_type() == FileType::CharDevice && inode.rdev() == 0 {
                continue;
            }
        }
        children.push((path, entry.nid));
    }
    stack.extend(children.into_iter().rev());
    Ok(())
}

/// `00` to `ff`: the names of the writer's root whiteout stubs.
fn is_stub_name(name: &[u8]) -> bool {
    name.len() == 2 && name.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// What the overlay xattrs said about an inode.
#[derive(Default)]
struct Overlay {
    whiteout: bool,
}

/// An inode's metadata and shown xattrs, and what its overlay xattrs mark it as.
fn stat_of(
    image: &Image,
    inode: &Inode<'_>,
    path: &[u8],
) -> Result<(Stat, Overlay), ReadTreeError> {
    let is_regular = inode.file_type() == FileType::RegularFile;
    let all = image.xattrs(inode).map_err(at(path))?;
    let mut overlay = Overlay::default();
    let mut xattrs = BTreeMap::new();
    for x in &all {
        let name: &[u8] = x.name.as_ref();
        if name == XATTR_REDIRECT || name == XATTR_METACOPY {
            continue;
        }
        if name == XATTR_ESCAPED_WHITEOUT && is_regular {
            overlay.whiteout = true;
            continue;
        }
        if name == XATTR_ESCAPED_WHITEOUTS
            || name == XATTR_USER_WHITEOUT
            || name == XATTR_USER_WHITEOUTS
        {
            continue;
        }
        let shown = if let Some(rest) = name.strip_prefix(OVERLAY_ESCAPED_PREFIX) {
            [OVERLAY_PREFIX, rest].concat()
        } else if name.starts_with(OVERLAY_PREFIX) {
            // Overlay metadata the kernel hides (e.g. the root's opaque flag).
            continue;
        } else {
            name.to_vec()
        };
        xattrs.insert(shown, x.value.to_vec());
    }
    let stat = Stat {
        mode: inode.mode() & !S_IFMT,
        uid: inode.uid(),
        gid: inode.gid(),
        mtime: inode.mtime(),
        xattrs,
        // What the image stores; normalized away at the end where it is the true count.
        nlink: Some(inode.nlink()),
    };
    Ok((stat, overlay))
}

fn leaf_of(image: &Image, inode: &Inode<'_>, path: &[u8]) -> Result<Leaf, ReadTreeError> {
    let (stat, overlay) = stat_of(image, inode, path)?;
    let content = match inode.file_type() {
        FileType::RegularFile if overlay.whiteout => LeafContent::CharDevice(0),
        FileType::RegularFile => LeafContent::Regular(regular(image, inode, path)?),
        FileType::Symlink => {
            let target = image.read_link(inode).map_err(at(path))?;
            if target.is_empty() {
                return Err(invalid(path, "symlink with an empty target"));
            }
            LeafContent::Symlink(target.into_owned())
        }
        FileType::CharDevice => LeafContent::CharDevice(inode.rdev()),
        FileType::BlockDevice => LeafContent::BlockDevice(inode.rdev()),
        FileType::Fifo => LeafContent::Fifo,
        FileType::Socket => LeafContent::Socket,
        FileType::Directory | FileType::Unknown => {
            return Err(invalid(path, "unknown file type"));
        }
    };
    Ok(Leaf { stat, content })
}

fn regular(image: &Image, inode: &Inode<'_>, path: &[u8]) -> Result<RegularFile, ReadTreeError> {
    let size = inode.size();
    if size == 0 {
        return Ok(RegularFile::Inline(Vec::new()));
    }
    match inode.layout() {
        DataLayout::FlatInline | DataLayout::FlatPlain => {
            // C refuses more: a dumpfile could not carry it either.
            if size > INLINE_CONTENT_MAX as u64 {
                return Err(invalid(path, "inline content larger than 5000 bytes"));
            }
            let data = image.read_link(inode).map_err(at(path))?;
            Ok(RegularFile::Inline(data.into_owned()))
        }
        DataLayout::ChunkBased => {
            let payload = image
                .redirect(inode)
                .map_err(at(path))?
                .map(|r| r.strip_prefix(b"/").unwrap_or(r).to_vec())
                .filter(|p| !p.is_empty());
            let digest = image.metacopy(inode).map_err(at(path))?.flatten();
            Ok(RegularFile::External {
                size,
                payload,
                digest,
            })
        }
        DataLayout::CompressedFull | DataLayout::CompressedCompact => {
            Err(invalid(path, "compressed file data"))
        }
    }
}

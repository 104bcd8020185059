//! Reading a dumpfile into a [`Tree`], accepting what `mkcomposefs --from-file` accepts.
//!
//! Parents must precede their children and the first line must be the root. Hard links
//! may name a target that appears later (C resolves them after the last line, so do we);
//! they get a placeholder entry until then so that their path is taken and a later line
//! cannot reuse it. Fields the tree cannot hold and the image would not keep (a directory's
//! size, a fifo's rdev, a payload on a device) are read, checked for syntax, and dropped.

use std::collections::{BTreeMap, HashSet};

use super::{
    DumpfileError, INLINE_CONTENT_MAX, PAYLOAD_MAX, Reason, XATTR_EXTERNAL_BUDGET, XATTR_NAME_MAX,
    unescape,
};
use crate::erofs::format::{
    S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK,
};
use crate::tree::{
    Directory, Leaf, LeafContent, LeafId, Mtime, Node, RegularFile, Stat, Tree, path_components,
};
use crate::verity::{Digest, HashAlg};

const FIELDS: [&str; 11] = [
    "PATH", "SIZE", "MODE", "NLINK", "UID", "GID", "RDEV", "MTIME", "PAYLOAD", "CONTENT", "DIGEST",
];
const PATH: usize = 0;
const SIZE: usize = 1;
const MODE: usize = 2;
const NLINK: usize = 3;
const UID: usize = 4;
const GID: usize = 5;
const RDEV: usize = 6;
const MTIME: usize = 7;
const PAYLOAD: usize = 8;
const CONTENT: usize = 9;
const DIGEST: usize = 10;

/// Hard-link placeholders are `LeafId(PLACEHOLDER + index into the fixup list)`: far above
/// any real leaf index, so the two can never be confused.
const PLACEHOLDER: usize = usize::MAX / 2;

/// A hard link waiting for its target: resolved once every line has been read.
struct Fixup {
    line: usize,
    path: Vec<u8>,
    target: Vec<u8>,
}

/// Parses a dumpfile into a tree.
///
/// Every error names the 1-based line and the reason; no input makes this panic.
pub fn parse_dumpfile(input: &[u8]) -> Result<Tree, DumpfileError> {
    let mut lines: Vec<&[u8]> = input.split(|b| *b == b'\n').collect();
    // A final newline ends the last line rather than starting an empty one; a missing
    // final newline is accepted, as C does outside its strict mode.
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let mut tree: Option<Tree> = None;
    let mut fixups = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let number = index + 1;
        parse_line(&mut tree, &mut fixups, number, line).map_err(|reason| DumpfileError {
            line: number,
            reason,
        })?;
    }
    let mut tree = tree.ok_or(DumpfileError {
        line: 1,
        reason: Reason::Empty,
    })?;
    resolve_hard_links(&mut tree, &fixups)?;
    record_primary_names(&mut tree, &fixups);
    tree.normalize_link_info();
    Ok(tree)
}

/// Remembers, for each hard-linked leaf, the name its own line (the one without `@`) gave
/// it: C numbers the inode where it meets that name, whatever the other names are.
fn record_primary_names(tree: &mut Tree, fixups: &[Fixup]) {
    if fixups.is_empty() {
        return;
    }
    // The paths as the tree spells them (a line may end a path with a slash).
    let links: HashSet<Vec<u8>> = fixups
        .iter()
        .filter_map(|f| path_components(&f.path).ok())
        .map(|comps| {
            comps
                .iter()
                .flat_map(|c| [b"/".as_slice(), c])
                .flatten()
                .copied()
                .collect()
        })
        .collect();
    let mut own = Vec::new();
    tree.for_each_hard_link(|id, path| {
        if !links.contains(path) {
            own.push((id, path.to_vec()));
        }
    });
    tree.primary_names.extend(own);
}

fn parse_line(
    tree: &mut Option<Tree>,
    fixups: &mut Vec<Fixup>,
    number: usize,
    line: &[u8],
) -> Result<(), Reason> {
    // C refuses NUL early: it would silently truncate a C string later.
    if line.contains(&0) {
        return Err(Reason::Nul);
    }
    let parts: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
    let field = |i: usize| -> Result<&[u8], Reason> {
        parts
            .get(i)
            .copied()
            .ok_or(Reason::MissingField(FIELDS.get(i).copied().unwrap_or("?")))
    };

    let path = unescape_field(field(PATH)?, "PATH")?;
    let mode_text = field(MODE)?;
    let (is_hard_link, mode_digits) = match mode_text.strip_prefix(b"@") {
        Some(rest) => (true, rest),
        None => (false, mode_text),
    };
    let mode = parse_mode(mode_digits)?;
    let file_type = mode & S_IFMT;

    let Some(tree) = tree.as_mut() else {
        if path != b"/" {
            return Err(Reason::RootFirst);
        }
        if is_hard_link && file_type == S_IFDIR {
            return Err(Reason::DirectoryHardLink);
        }
        if file_type != S_IFDIR || is_hard_link {
            return Err(Reason::RootNotDirectory);
        }
        let stat = parse_stat(&parts, mode)?;
        *tree = Some(Tree::new(stat));
        return Ok(());
    };
    if path == b"/" {
        return Err(Reason::DuplicateRoot);
    }

    if is_hard_link {
        // As in C, a hard-link line carries only its path and target: every other field
        // belongs to the target's own line.
        if file_type == S_IFDIR {
            return Err(Reason::DirectoryHardLink);
        }
        let target = optional(field(PAYLOAD)?, "PAYLOAD")?
            .filter(|t| !t.is_empty())
            .ok_or(Reason::HardLinkNoTarget)?;
        let placeholder = LeafId(PLACEHOLDER + fixups.len());
        tree.insert(&path, Node::Leaf(placeholder))
            .map_err(Reason::Path)?;
        fixups.push(Fixup {
            line: number,
            path,
            target,
        });
        return Ok(());
    }

    let stat = parse_stat(&parts, mode)?;
    let size: u64 = parse_number(field(SIZE)?, "SIZE")?;
    let rdev: u64 = parse_number(field(RDEV)?, "RDEV")?;
    // An empty payload is no payload: the writer only acts on non-empty ones.
    // C reads missing trailing fields as empty; for these three that means absent.
    let trailing = |i: usize| parts.get(i).copied().unwrap_or(b"-");
    let payload = optional(trailing(PAYLOAD), "PAYLOAD")?.filter(|p| !p.is_empty());
    let content = optional(trailing(CONTENT), "CONTENT")?;
    let digest = match optional(trailing(DIGEST), "DIGEST")? {
        None => None,
        Some(text) => Some(parse_digest(&text)?),
    };
    if let Some(p) = payload.as_ref().filter(|p| p.len() > PAYLOAD_MAX) {
        return Err(Reason::PayloadTooLong(p.len()));
    }
    if let Some(c) = &content {
        if c.len() as u64 != size {
            return Err(Reason::ContentSize {
                content: c.len(),
                size,
            });
        }
        if c.len() > INLINE_CONTENT_MAX {
            return Err(Reason::ContentTooBig(c.len()));
        }
    }

    let node = if file_type == S_IFDIR {
        Node::Directory(Box::new(Directory::new(stat)))
    } else {
        let content = match file_type {
            S_IFREG => LeafContent::Regular(match (content, payload, digest) {
                (Some(data), _, _) => RegularFile::Inline(data),
                (None, None, None) if size == 0 => RegularFile::Inline(Vec::new()),
                (None, payload, digest) => RegularFile::External {
                    size,
                    payload,
                    digest,
                },
            }),
            S_IFLNK => LeafContent::Symlink(payload.ok_or(Reason::EmptySymlink)?),
            S_IFCHR => LeafContent::CharDevice(rdev),
            S_IFBLK => LeafContent::BlockDevice(rdev),
            S_IFIFO => LeafContent::Fifo,
            S_IFSOCK => LeafContent::Socket,
            // parse_mode admits only the types above.
            _ => {
                return Err(Reason::BadMode(
                    String::from_utf8_lossy(mode_text).into_owned(),
                ));
            }
        };
        Node::Leaf(tree.push_leaf(Leaf { stat, content }))
    };
    // On error the leaf pushed above stays unreferenced, but the whole parse fails anyway.
    tree.insert(&path, node).map_err(Reason::Path)
}

/// The fields every non-hard-link line has in common: NLINK, UID, GID, MTIME, permission
/// bits and the xattrs.
fn parse_stat(parts: &[&[u8]], mode: u32) -> Result<Stat, Reason> {
    let field = |i: usize| -> Result<&[u8], Reason> {
        parts
            .get(i)
            .copied()
            .ok_or(Reason::MissingField(FIELDS.get(i).copied().unwrap_or("?")))
    };
    let nlink: u64 = parse_number(field(NLINK)?, "NLINK")?;
    let uid: u32 = parse_number(field(UID)?, "UID")?;
    let gid: u32 = parse_number(field(GID)?, "GID")?;
    let mtime = parse_mtime(field(MTIME)?)?;
    let mut xattrs = BTreeMap::new();
    for raw in parts.iter().skip(FIELDS.len()) {
        let eq = raw
            .iter()
            .position(|b| *b == b'=')
            .ok_or_else(|| Reason::XattrNoEquals(String::from_utf8_lossy(raw).into_owned()))?;
        let (key, value) = raw.split_at(eq);
        let key = unescape_field(key, "xattr name")?;
        let value = unescape_field(value.get(1..).unwrap_or_default(), "xattr value")?;
        if key.is_empty() {
            return Err(Reason::XattrEmptyName);
        }
        if key.len() > XATTR_NAME_MAX {
            return Err(Reason::XattrNameTooLong(key.len()));
        }
        // Later duplicates replace earlier ones, as lcfs_node_set_xattr does.
        xattrs.insert(key, value);
    }
    let budget: usize = xattrs
        .iter()
        .map(|(k, v)| 7 + k.len() + v.len())
        .sum::<usize>()
        + if xattrs.is_empty() { 0 } else { 12 };
    if budget > XATTR_EXTERNAL_BUDGET {
        return Err(Reason::XattrsTooBig(budget));
    }
    // C stores a non-directory's NLINK as given (in a 32-bit field, so it keeps the low
    // 32 bits) and recomputes a directory's.
    let nlink = (mode & S_IFMT != S_IFDIR).then_some((nlink & u64::from(u32::MAX)) as u32);
    Ok(Stat {
        mode: mode & !S_IFMT,
        uid,
        gid,
        mtime,
        xattrs,
        nlink,
    })
}

fn unescape_field(raw: &[u8], field: &'static str) -> Result<Vec<u8>, Reason> {
    unescape(raw).map_err(|escape| Reason::BadEscape { field, escape })
}

/// `-` is "absent"; anything else is unescaped (so `\x2d` is a literal dash).
fn optional(raw: &[u8], field: &'static str) -> Result<Option<Vec<u8>>, Reason> {
    if raw == b"-" {
        Ok(None)
    } else {
        unescape_field(raw, field).map(Some)
    }
}

fn bad_number(field: &'static str, text: &[u8]) -> Reason {
    Reason::BadNumber {
        field,
        text: String::from_utf8_lossy(text).into_owned(),
    }
}

/// A plain decimal number: digits only, in range for `T`.
fn parse_number<T: std::str::FromStr>(text: &[u8], field: &'static str) -> Result<T, Reason> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return Err(bad_number(field, text));
    }
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad_number(field, text))
}

/// Octal mode with a known file type. C reads the mode as a 64-bit number and the image
/// keeps 16 bits of it, so higher bits are accepted and dropped the same way.
fn parse_mode(text: &[u8]) -> Result<u32, Reason> {
    let bad = || Reason::BadMode(String::from_utf8_lossy(text).into_owned());
    if text.is_empty() || !text.iter().all(|c| (b'0'..=b'7').contains(c)) {
        return Err(bad());
    }
    let mode = std::str::from_utf8(text)
        .ok()
        .and_then(|s| u64::from_str_radix(s, 8).ok())
        .ok_or_else(bad)?;
    // Lossless: the mask leaves 16 bits.
    let mode = (mode & 0o177777) as u32;
    match mode & S_IFMT {
        S_IFREG | S_IFDIR | S_IFLNK | S_IFBLK | S_IFCHR | S_IFSOCK | S_IFIFO => Ok(mode),
        _ => Err(bad()),
    }
}

/// `sec.nsec`. C prints the seconds as a signed 64-bit number and reads them back with
/// `strtoull`, which wraps a leading minus sign; doing the same keeps every `u64` second
/// count round-tripping through its printed form.
fn parse_mtime(text: &[u8]) -> Result<Mtime, Reason> {
    let dot = text
        .iter()
        .position(|b| *b == b'.')
        .ok_or_else(|| bad_number("MTIME", text))?;
    let (sec_text, rest) = text.split_at(dot);
    let nsec_text = rest.get(1..).unwrap_or_default();
    let sec = match sec_text.strip_prefix(b"-") {
        Some(magnitude) => parse_number::<u64>(magnitude, "MTIME")?.wrapping_neg(),
        None => parse_number::<u64>(sec_text, "MTIME")?,
    };
    let nsec = parse_number::<u32>(nsec_text, "MTIME")?;
    Ok(Mtime { sec, nsec })
}

/// Bare hex; its length picks the algorithm.
fn parse_digest(text: &[u8]) -> Result<Digest, Reason> {
    let bad = || Reason::BadDigest(String::from_utf8_lossy(text).into_owned());
    let s = std::str::from_utf8(text).map_err(|_| bad())?;
    let alg = match s.len() {
        64 => HashAlg::Sha256,
        128 => HashAlg::Sha512,
        _ => return Err(bad()),
    };
    Digest::from_hex(alg, s).map_err(|_| bad())
}

/// Points every hard-link placeholder at its target's leaf. A target may itself be a hard
/// link (C follows such chains); a chain that never reaches a real leaf is an error.
fn resolve_hard_links(tree: &mut Tree, fixups: &[Fixup]) -> Result<(), DumpfileError> {
    let mut resolved = Vec::with_capacity(fixups.len());
    for (index, fixup) in fixups.iter().enumerate() {
        let fail = |what: &'static str| DumpfileError {
            line: fixup.line,
            reason: Reason::HardLinkTarget(
                String::from_utf8_lossy(&fixup.target).into_owned(),
                what,
            ),
        };
        let mut current = fixup;
        let mut found = None;
        // Each step moves to another placeholder; more steps than there are fixups
        // means a cycle.
        for _ in 0..=fixups.len() {
            let target = absolute(&current.target);
            match tree.node(&target) {
                Ok(Some(Node::Leaf(id))) if id.0 >= PLACEHOLDER => {
                    let next = id.0 - PLACEHOLDER;
                    if next == index {
                        return Err(fail("leads back to the link itself"));
                    }
                    current = fixups.get(next).ok_or_else(|| fail("is not a file"))?;
                }
                Ok(Some(Node::Leaf(id))) => {
                    found = Some(*id);
                    break;
                }
                Ok(Some(Node::Directory(_)) | None) => return Err(fail("is a directory")),
                Err(_) => return Err(fail("does not exist")),
            }
        }
        resolved.push(found.ok_or_else(|| fail("is a cycle of hard links"))?);
    }
    for (fixup, id) in fixups.iter().zip(resolved) {
        let set = set_leaf(tree, &fixup.path, id);
        set.ok_or(DumpfileError {
            line: fixup.line,
            reason: Reason::HardLinkTarget(
                String::from_utf8_lossy(&fixup.path).into_owned(),
                "vanished",
            ),
        })?;
    }
    Ok(())
}

/// C's lookup skips leading slashes, so a relative target names the same path.
fn absolute(path: &[u8]) -> Vec<u8> {
    if path.starts_with(b"/") {
        path.to_vec()
    } else {
        [b"/", path].concat()
    }
}

/// Replaces the entry at `path` (which exists: the placeholder) with `id`.
fn set_leaf(tree: &mut Tree, path: &[u8], id: LeafId) -> Option<()> {
    let comps = path_components(path).ok()?;
    let (last, parents) = comps.split_last()?;
    let mut dir = &mut tree.root;
    for c in parents {
        match dir.entries.get_mut(*c)? {
            Node::Directory(d) => dir = d,
            Node::Leaf(_) => return None,
        }
    }
    *dir.entries.get_mut(*last)? = Node::Leaf(id);
    Some(())
}

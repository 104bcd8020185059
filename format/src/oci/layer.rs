//! Applying OCI layer tars to a [`Tree`], with OCI whiteout semantics.
//!
//! Nothing here touches the host filesystem: entries become nodes of an
//! in-memory tree, and regular-file content goes to an [`ObjectSink`] (in an
//! import, the store's staging area). So no entry, however hostile, can write
//! outside the store; what remains is to decide what each odd entry *means*:
//!
//! * A leading `/` is dropped (`/etc/x` is `etc/x`), as tar does; `.` and empty
//!   components are dropped; a `..` component is an error.
//! * A parent that is a symlink is followed *inside the tree* (an absolute
//!   target starts at the tree's root, `..` stops at the root), as `umoci` and
//!   containerd do. Forty links deep is an error (a loop).
//! * Missing parents are created as `0755 root:root` directories.
//! * A later entry for an existing path replaces it (a directory entry over a
//!   directory only updates its metadata), as extracting the tar would.
//! * A hard link must name an existing non-directory; it joins its link group.
//! * `.wh.NAME` removes the lower `NAME`; `.wh..wh..opq` hides every lower
//!   entry of its directory. Both apply to lower layers only, whatever the order
//!   of the entries in the tar: the opaque pruning runs when the layer ends,
//!   keeping everything this layer created.

use std::collections::HashMap;
use std::io::{self, Read};

use super::OciError;
use super::pax::{EntryExtensions, PaxError, PaxFramer};
use super::sparse::{SparseReader, pax_sparse};
use crate::tree::{Directory, Leaf, LeafContent, LeafId, Mtime, Node, RegularFile, Stat, Tree};
use crate::verity::Digest;

/// Files up to this size are stored in the image itself, as mkcomposefs does.
pub const INLINE_MAX: u64 = 64;
/// Symlinks followed while resolving one path before it counts as a loop.
const MAX_SYMLINK_HOPS: u32 = 40;
/// Longest entry name accepted (Linux's PATH_MAX).
const MAX_NAME_LEN: usize = 4096;
/// Deepest directory nesting accepted. Trees are walked recursively (here, by
/// the writer, and when dropped), so a hostile layer must not nest without end.
const MAX_DEPTH: usize = 1024;
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Where regular-file content goes.
pub trait ObjectSink {
    /// Stores everything `data` yields; returns its fs-verity digest and length.
    fn store(&mut self, data: &mut dyn Read) -> io::Result<(Digest, u64)>;
}

/// Bounds on what an image may make the importer do.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Uncompressed bytes over all layers (tar headers included).
    pub max_bytes: u64,
    /// Tar entries over all layers.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 64 << 30,
            max_entries: 4 << 20,
        }
    }
}

/// A canonical path in the tree: components from the root.
type TreePath = Vec<Vec<u8>>;

fn show(path: &[Vec<u8>]) -> String {
    let mut s = String::new();
    for c in path {
        s.push('/');
        s.push_str(&String::from_utf8_lossy(c));
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

/// Splits an entry name into components, dropping a leading `/`, `.` and empty
/// components; refuses `..` and over-long names.
pub fn entry_components(raw: &[u8]) -> Result<TreePath, String> {
    if raw.len() > MAX_NAME_LEN {
        return Err(format!("the name is longer than {MAX_NAME_LEN} bytes"));
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("the name has a '..' component".into()),
            c if c.len() > 255 => return Err("a component is longer than 255 bytes".into()),
            c if c.contains(&0) => return Err("the name contains a NUL byte".into()),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn dir_at<'t>(mut dir: &'t Directory, path: &[Vec<u8>]) -> Option<&'t Directory> {
    for c in path {
        match dir.entries.get(c) {
            Some(Node::Directory(d)) => dir = d,
            _ => return None,
        }
    }
    Some(dir)
}

fn dir_at_mut<'t>(mut dir: &'t mut Directory, path: &[Vec<u8>]) -> Option<&'t mut Directory> {
    for c in path {
        match dir.entries.get_mut(c) {
            Some(Node::Directory(d)) => dir = d,
            _ => return None,
        }
    }
    Some(dir)
}

/// What a name in a directory is, for path resolution.
enum Found {
    Dir,
    Symlink(Vec<u8>),
    Other,
    Missing,
}

/// Builds a tree from layers applied in order. Cloning it is how an import
/// undoes a layer it tried to apply from a record that proved bad.
#[derive(Clone)]
pub struct TreeBuilder {
    tree: Tree,
    limits: Limits,
    entries: u64,
    /// Regular-file content bytes over all layers, counted at their real (expanded) size
    /// before any is written: a sparse entry's holes cost nothing in the compressed stream.
    content_bytes: u64,
}

/// What applying a layer did, for progress reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct LayerStats {
    pub entries: u64,
    pub files: u64,
    pub content_bytes: u64,
}

/// The paths a layer created or replaced, with all their ancestors: a trie of
/// names, so each path costs one node per component not stored before (memory
/// linear in the names of the layer, however deep; a set of whole paths would
/// store every prefix again and grow with the square of the depth).
struct Touched {
    /// Node 0 is the root; each node maps a child name to its node.
    nodes: Vec<HashMap<Vec<u8>, usize>>,
}

impl Touched {
    fn new() -> Self {
        Touched {
            nodes: vec![HashMap::new()],
        }
    }

    fn insert(&mut self, path: &[Vec<u8>]) {
        let mut node = 0;
        for c in path {
            let next = self.nodes.len();
            let Some(children) = self.nodes.get_mut(node) else {
                return;
            };
            node = match children.get(c.as_slice()) {
                Some(&n) => n,
                None => {
                    children.insert(c.clone(), next);
                    self.nodes.push(HashMap::new());
                    next
                }
            };
        }
    }

    fn contains(&self, path: &[Vec<u8>]) -> bool {
        let mut node = 0;
        for c in path {
            match self.nodes.get(node).and_then(|m| m.get(c.as_slice())) {
                Some(&n) => node = n,
                None => return false,
            }
        }
        true
    }
}

/// State of the layer being applied.
struct LayerState<'s> {
    layer: &'s str,
    /// Paths this layer created or replaced, with all their ancestors.
    touched: Touched,
    /// Directories this layer marked opaque.
    opaque: Vec<TreePath>,
}

impl LayerState<'_> {
    fn touch(&mut self, path: &[Vec<u8>]) {
        self.touched.insert(path);
    }

    fn err(&self, entry: &[u8], reason: impl Into<String>) -> OciError {
        OciError::Entry {
            layer: self.layer.to_owned(),
            entry: String::from_utf8_lossy(entry).into_owned(),
            reason: reason.into(),
        }
    }
}

/// Metadata of an entry from its header and its PAX records (read by length, see
/// [`super::pax`]); path and link target are taken from the records by the caller.
struct EntryMeta {
    stat: Stat,
    pax: Vec<(Vec<u8>, Vec<u8>)>,
}

fn entry_meta<R: Read>(entry: &tar::Entry<'_, R>, ext: EntryExtensions) -> io::Result<EntryMeta> {
    let h = entry.header();
    let to_u32 = |v: u64, what: &str| {
        u32::try_from(v).map_err(|_| io::Error::other(format!("{what} {v} does not fit 32 bits")))
    };
    let old = h.as_old();
    let mut stat = Stat {
        mode: (lenient(h.mode().map(u64::from), &old.mode)? & 0o7777) as u32,
        uid: to_u32(lenient(h.uid(), &old.uid)?, "uid")?,
        gid: to_u32(lenient(h.gid(), &old.gid)?, "gid")?,
        mtime: Mtime {
            sec: lenient(h.mtime(), &old.mtime)?,
            nsec: 0,
        },
        xattrs: Default::default(),
        nlink: None,
    };
    // The tar crate applies these too, but falls back to the header's field when a
    // record is not a number; a record we cannot read is an error instead.
    let pax_err = |e: PaxError| io::Error::other(format!("PAX {e}"));
    if let Some(uid) = ext.number(b"uid").map_err(pax_err)? {
        stat.uid = to_u32(uid, "uid")?;
    }
    if let Some(gid) = ext.number(b"gid").map_err(pax_err)? {
        stat.gid = to_u32(gid, "gid")?;
    }
    let pax = ext.records;
    for (key, value) in &pax {
        if key == b"mtime" {
            stat.mtime = parse_pax_time(value)
                .ok_or_else(|| io::Error::other("PAX mtime is not a decimal time"))?;
        } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            if name.is_empty() {
                return Err(io::Error::other("PAX xattr record with an empty name"));
            }
            stat.xattrs.insert(name.to_vec(), value.clone());
        }
    }
    Ok(EntryMeta { stat, pax })
}

/// A numeric header field that is blank (all NULs or spaces) reads as 0, as
/// Go's archive/tar (which writes and reads most layers) and GNU tar take it.
fn lenient(parsed: io::Result<u64>, raw: &[u8]) -> io::Result<u64> {
    match parsed {
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        other => other,
    }
}

/// Parses a PAX time, `SECONDS[.FRACTION]`; times before 1970 become 0.
fn parse_pax_time(value: &[u8]) -> Option<Mtime> {
    let s = std::str::from_utf8(value).ok()?;
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    if sec.is_empty() || !sec.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if negative {
        return Some(Mtime::default());
    }
    let sec: u64 = sec.parse().ok()?;
    let mut nsec: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nsec += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    Some(Mtime { sec, nsec })
}

impl TreeBuilder {
    /// Starts from an empty root directory (`0755 root:root`, mtime 0), which
    /// a layer's own `./` entry then updates.
    pub fn new(limits: Limits) -> Self {
        TreeBuilder {
            tree: Tree::new(Stat {
                mode: 0o755,
                ..Stat::default()
            }),
            limits,
            entries: 0,
            content_bytes: 0,
        }
    }

    /// The finished tree, with leaves no entry names any more dropped.
    pub fn finish(self) -> Tree {
        compact(self.tree)
    }

    /// Applies one uncompressed layer tar. `progress` is told the content bytes
    /// of each regular file stored.
    pub fn apply_layer(
        &mut self,
        tar_stream: impl Read,
        layer: &str,
        sink: &mut dyn ObjectSink,
        progress: &mut dyn FnMut(u64),
    ) -> Result<LayerStats, OciError> {
        let mut state = LayerState {
            layer,
            touched: Touched::new(),
            opaque: Vec::new(),
        };
        let mut stats = LayerStats::default();
        let framer = PaxFramer::new(tar_stream);
        let extensions = framer.extensions();
        let mut archive = tar::Archive::new(framer);
        let read_err = |e: io::Error| OciError::Blob {
            blob: layer.to_owned(),
            reason: format!("cannot read the layer tar: {e}"),
        };
        for entry in archive.entries().map_err(read_err)? {
            let mut entry = entry.map_err(read_err)?;
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(OciError::TooManyEntries {
                    limit: self.limits.max_entries,
                });
            }
            stats.entries += 1;
            let kind = entry.header().entry_type();
            let ext = extensions.take(entry.raw_header_position());
            if kind.is_pax_global_extensions() {
                continue;
            }
            // The PAX records read by length, never the tar crate's view of them.
            let mut raw_path = match ext.path() {
                Some(p) => p.to_vec(),
                None => entry.path_bytes().into_owned(),
            };
            let link_path = match ext.link_path() {
                Some(p) => Some(p.to_vec()),
                None => entry.link_name_bytes().map(|t| t.into_owned()),
            };
            let meta = entry_meta(&entry, ext).map_err(|e| state.err(&raw_path, e.to_string()))?;
            // PAX sparse files carry their real name in a record of their own.
            let sparse = pax_sparse(&meta.pax).map_err(|e| state.err(&raw_path, e))?;
            if let Some(s) = &sparse {
                raw_path = s.name.clone();
            }
            let comps = entry_components(&raw_path).map_err(|e| state.err(&raw_path, e))?;
            let Some((name, parents)) = comps.split_last() else {
                if !kind.is_dir() {
                    return Err(state.err(&raw_path, "the root entry is not a directory"));
                }
                self.tree.root.stat = meta.stat;
                continue;
            };
            if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
                self.whiteout(&mut state, parents, name, target, &raw_path)?;
                continue;
            }
            let parent = self
                .resolve(&mut state, Vec::new(), parents, true, &mut 0)
                .map_err(|e| state.err(&raw_path, e))?;
            let mut path = parent.clone();
            path.push(name.clone());
            let node = if kind.is_dir() {
                let dir = dir_at_mut(&mut self.tree.root, &parent)
                    .ok_or_else(|| state.err(&raw_path, "its parent vanished"))?;
                if let Some(Node::Directory(existing)) = dir.entries.get_mut(name) {
                    existing.stat = meta.stat;
                    state.touch(&path);
                    continue;
                }
                Node::Directory(Box::new(Directory::new(meta.stat)))
            } else if kind.is_hard_link() {
                let target = link_path.unwrap_or_default();
                let id = self
                    .link_target(&mut state, &target)
                    .map_err(|e| state.err(&raw_path, e))?;
                Node::Leaf(id)
            } else {
                let content =
                    if kind.is_file() || kind == tar::EntryType::Continuous || kind.is_gnu_sparse()
                    {
                        stats.files += 1;
                        // The real size, holes included, against the limit before a
                        // byte is stored (the stream's bytes are counted as they pass).
                        let real = sparse.as_ref().map_or(entry.size(), |s| s.real_size);
                        self.content_bytes = self.content_bytes.saturating_add(real);
                        if self.content_bytes > self.limits.max_bytes {
                            return Err(OciError::TooLarge {
                                layer: layer.to_owned(),
                                limit: self.limits.max_bytes,
                            });
                        }
                        let file = match &sparse {
                            Some(s) => {
                                let mut reader = SparseReader::new(&mut entry, s)
                                    .map_err(|e| state.err(&raw_path, e.to_string()))?;
                                self.regular(&mut reader, s.real_size, sink)
                            }
                            None => {
                                let size = entry.size();
                                self.regular(&mut entry, size, sink)
                            }
                        }
                        .map_err(|e| state.err(&raw_path, e.to_string()))?;
                        stats.content_bytes += file.size();
                        progress(file.size());
                        LeafContent::Regular(file)
                    } else if kind.is_symlink() {
                        let target = link_path.unwrap_or_default();
                        if target.is_empty() {
                            return Err(state.err(&raw_path, "symlink with an empty target"));
                        }
                        LeafContent::Symlink(target)
                    } else if kind.is_character_special() || kind.is_block_special() {
                        let h = entry.header();
                        let major = h.device_major().ok().flatten().unwrap_or(0);
                        let minor = h.device_minor().ok().flatten().unwrap_or(0);
                        let rdev = libc::makedev(major, minor);
                        if kind.is_character_special() {
                            LeafContent::CharDevice(rdev)
                        } else {
                            LeafContent::BlockDevice(rdev)
                        }
                    } else if kind.is_fifo() {
                        LeafContent::Fifo
                    } else {
                        return Err(state.err(
                            &raw_path,
                            format!("unsupported tar entry type {:?}", kind.as_byte() as char),
                        ));
                    };
                Node::Leaf(self.tree.push_leaf(Leaf {
                    stat: meta.stat,
                    content,
                }))
            };
            let dir = dir_at_mut(&mut self.tree.root, &parent)
                .ok_or_else(|| state.err(&raw_path, "its parent vanished"))?;
            dir.entries.insert(name.clone(), node);
            state.touch(&path);
        }
        // Opaque directories lose what lower layers put in them, now that every
        // entry of this layer is known.
        let opaque = std::mem::take(&mut state.opaque);
        for dir in opaque {
            self.prune(&state, &dir);
        }
        Ok(stats)
    }

    /// Reads a regular file's content: inline when small, else into the sink.
    fn regular(
        &mut self,
        data: &mut dyn Read,
        size: u64,
        sink: &mut dyn ObjectSink,
    ) -> io::Result<RegularFile> {
        if size <= INLINE_MAX {
            let mut buf = Vec::new();
            data.take(INLINE_MAX + 1).read_to_end(&mut buf)?;
            if buf.len() as u64 != size {
                return Err(io::Error::other(format!(
                    "content is {} bytes, the header says {size}",
                    buf.len()
                )));
            }
            return Ok(RegularFile::Inline(buf));
        }
        let (digest, len) = sink.store(&mut data.take(size))?;
        if len != size {
            return Err(io::Error::other(format!(
                "content is {len} bytes, the header says {size} (truncated layer?)"
            )));
        }
        Ok(RegularFile::External {
            size,
            payload: Some(digest.object_path().into_bytes()),
            digest: Some(digest),
        })
    }

    /// Handles `.wh.NAME` and `.wh..wh..opq`.
    fn whiteout(
        &mut self,
        state: &mut LayerState<'_>,
        parents: &[Vec<u8>],
        name: &[u8],
        target: &[u8],
        raw_path: &[u8],
    ) -> Result<(), OciError> {
        // A whiteout in a directory that does not exist has nothing to hide.
        let parent = match self.resolve(state, Vec::new(), parents, false, &mut 0) {
            Ok(p) => p,
            Err(_) => return Ok(()),
        };
        if name == OPAQUE_MARKER {
            state.touch(&parent);
            state.opaque.push(parent);
            return Ok(());
        }
        if target.starts_with(WHITEOUT_PREFIX) {
            // Other `.wh..wh.*` names are aufs bookkeeping, meaningless here.
            return Ok(());
        }
        if target.is_empty() || target == b"." || target == b".." {
            return Err(state.err(raw_path, "whiteout of an empty, '.' or '..' name"));
        }
        let mut path = parent.clone();
        path.push(target.to_vec());
        if state.touched.contains(&path) {
            // This layer's own entry of that name wins.
            return Ok(());
        }
        if let Some(dir) = dir_at_mut(&mut self.tree.root, &parent) {
            dir.entries.remove(target);
        }
        Ok(())
    }

    /// Removes from the opaque directory `path` every entry this layer did not
    /// create, recursively (a lower directory's content is hidden below it too).
    fn prune(&mut self, state: &LayerState<'_>, path: &[Vec<u8>]) {
        let Some(dir) = dir_at_mut(&mut self.tree.root, path) else {
            return;
        };
        let mut subdirs = Vec::new();
        dir.entries.retain(|name, node| {
            let mut child = path.to_vec();
            child.push(name.clone());
            if !state.touched.contains(&child) {
                return false;
            }
            if matches!(node, Node::Directory(_)) {
                subdirs.push(child);
            }
            true
        });
        for sub in subdirs {
            self.prune(state, &sub);
        }
    }

    /// Finds the leaf a hard link names.
    fn link_target(&mut self, state: &mut LayerState<'_>, target: &[u8]) -> Result<LeafId, String> {
        let comps = entry_components(target).map_err(|e| format!("hard link target: {e}"))?;
        let shown = String::from_utf8_lossy(target);
        let Some((name, parents)) = comps.split_last() else {
            return Err("hard link to the root directory".into());
        };
        let parent = self
            .resolve(state, Vec::new(), parents, false, &mut 0)
            .map_err(|_| format!("hard link to {shown:?}, which does not exist"))?;
        let dir = dir_at(&self.tree.root, &parent)
            .ok_or_else(|| format!("hard link to {shown:?}, which does not exist"))?;
        match dir.entries.get(name) {
            Some(Node::Leaf(id)) => Ok(*id),
            Some(Node::Directory(_)) => Err(format!("hard link to {shown:?}, a directory")),
            None => Err(format!("hard link to {shown:?}, which does not exist")),
        }
    }

    fn lookup(&self, dir: &[Vec<u8>], name: &[u8]) -> Found {
        let Some(d) = dir_at(&self.tree.root, dir) else {
            return Found::Missing;
        };
        match d.entries.get(name) {
            None => Found::Missing,
            Some(Node::Directory(_)) => Found::Dir,
            Some(Node::Leaf(id)) => match self.tree.leaves.get(id.0).map(|l| &l.content) {
                Some(LeafContent::Symlink(t)) => Found::Symlink(t.clone()),
                _ => Found::Other,
            },
        }
    }

    /// Resolves `comps` from the directory `start` to a directory, following
    /// symlinks inside the tree; with `create`, makes missing directories.
    fn resolve(
        &mut self,
        state: &mut LayerState<'_>,
        start: TreePath,
        comps: &[Vec<u8>],
        create: bool,
        hops: &mut u32,
    ) -> Result<TreePath, String> {
        let mut cur = start;
        let mut rest = comps;
        // Each round walks the components that are plain directories in one descent, then
        // handles the one after them (`.`, `..`, a symlink, a missing name). Looking each
        // name up from the root instead would be quadratic in the depth.
        loop {
            if let Some(mut dir) = dir_at(&self.tree.root, &cur) {
                while let Some((c, tail)) = rest.split_first() {
                    match dir.entries.get(c) {
                        Some(Node::Directory(d)) if cur.len() < MAX_DEPTH => {
                            dir = d;
                            cur.push(c.clone());
                            rest = tail;
                        }
                        _ => break,
                    }
                }
            }
            let Some((c, tail)) = rest.split_first() else {
                return Ok(cur);
            };
            rest = tail;
            match c.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    cur.pop();
                    continue;
                }
                _ => {}
            }
            if cur.len() >= MAX_DEPTH {
                return Err(format!(
                    "its path is nested deeper than {MAX_DEPTH} directories"
                ));
            }
            match self.lookup(&cur, c) {
                Found::Dir => cur.push(c.clone()),
                Found::Symlink(target) => {
                    *hops += 1;
                    if *hops > MAX_SYMLINK_HOPS {
                        return Err("too many levels of symbolic links in its path".into());
                    }
                    let base = if target.starts_with(b"/") {
                        Vec::new()
                    } else {
                        cur.clone()
                    };
                    // Symlink targets may say `..`: split without refusing it.
                    let tcomps: Vec<Vec<u8>> =
                        target.split(|b| *b == b'/').map(<[u8]>::to_vec).collect();
                    cur = self.resolve(state, base, &tcomps, create, hops)?;
                }
                Found::Other => {
                    let mut p = cur.clone();
                    p.push(c.clone());
                    return Err(format!("its parent {} is not a directory", show(&p)));
                }
                Found::Missing if create => {
                    // `c` and the plain names after it are all missing (each new directory
                    // is empty): create the chain in one descent, touch it once.
                    let mut dir = dir_at_mut(&mut self.tree.root, &cur)
                        .ok_or_else(|| format!("{} vanished", show(&cur)))?;
                    let mut name = c;
                    loop {
                        let stat = Stat {
                            mode: 0o755,
                            ..Stat::default()
                        };
                        let node = dir
                            .entries
                            .entry(name.clone())
                            .or_insert_with(|| Node::Directory(Box::new(Directory::new(stat))));
                        let Node::Directory(sub) = node else {
                            return Err(format!("{} vanished", show(&cur)));
                        };
                        dir = sub;
                        cur.push(name.clone());
                        match rest.split_first() {
                            Some((next, tail))
                                if !matches!(next.as_slice(), b"" | b"." | b"..")
                                    && cur.len() < MAX_DEPTH =>
                            {
                                name = next;
                                rest = tail;
                            }
                            _ => break,
                        }
                    }
                    state.touch(&cur);
                }
                Found::Missing => {
                    let mut p = cur.clone();
                    p.push(c.clone());
                    return Err(format!("{} does not exist", show(&p)));
                }
            }
        }
    }
}

/// Drops leaves no directory entry names (replaced or whited out), renumbering
/// the rest in tree order so the result does not depend on history.
pub fn compact(tree: Tree) -> Tree {
    fn walk(
        dir: &mut Directory,
        old: &mut [Option<Leaf>],
        map: &mut Vec<Option<LeafId>>,
        out: &mut Vec<Leaf>,
    ) {
        for node in dir.entries.values_mut() {
            match node {
                Node::Directory(d) => walk(d, old, map, out),
                Node::Leaf(id) => {
                    let Some(slot) = map.get_mut(id.0) else {
                        continue;
                    };
                    if let Some(new) = slot {
                        *id = *new;
                        continue;
                    }
                    if let Some(leaf) = old.get_mut(id.0).and_then(Option::take) {
                        out.push(leaf);
                        let new = LeafId(out.len() - 1);
                        *slot = Some(new);
                        *id = new;
                    }
                }
            }
        }
    }
    let Tree {
        mut root,
        leaves,
        primary_names,
    } = tree;
    let mut map = vec![None; leaves.len()];
    let mut old: Vec<Option<Leaf>> = leaves.into_iter().map(Some).collect();
    let mut out = Vec::new();
    walk(&mut root, &mut old, &mut map, &mut out);
    let primary_names = primary_names
        .into_iter()
        .filter_map(|(id, path)| Some((map.get(id.0).copied().flatten()?, path)))
        .collect();
    Tree {
        root,
        leaves: out,
        primary_names,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"12"), Some(Mtime { sec: 12, nsec: 0 }));
        assert_eq!(
            parse_pax_time(b"12.5"),
            Some(Mtime {
                sec: 12,
                nsec: 500_000_000
            })
        );
        assert_eq!(
            parse_pax_time(b"1.1234567899"),
            Some(Mtime {
                sec: 1,
                nsec: 123_456_789
            })
        );
        assert_eq!(parse_pax_time(b"-3.5"), Some(Mtime::default()));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b"1.x"), None);
    }

    #[test]
    fn components() {
        assert_eq!(
            entry_components(b"./a//b/").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert_eq!(
            entry_components(b"/etc/x").unwrap(),
            vec![b"etc".to_vec(), b"x".to_vec()]
        );
        assert!(entry_components(b"a/../b").is_err());
        assert!(entry_components(b"./").unwrap().is_empty());
    }
}

//! Writes a [`Tree`] as a composefs EROFS image, byte for byte what C
//! `mkcomposefs` (composefs 1.0.x) writes for the same tree.
//!
//! [`crate::composefs::prepare`] turns the tree into numbered inodes with their
//! overlay xattrs; this module lays them out (`lcfs-writer-erofs.c`):
//!
//! ```text
//! 0      composefs header (32 bytes), zeros to 1024
//! 1024   EROFS superblock (128 bytes)
//! 1152   inodes in order, each on a 32-byte slot: header, xattrs, inline tail
//!        shared xattr table (starts on a slot, `xattr_blkaddr` is its block)
//!        zeros to a block boundary
//!        data blocks in inode order: directory blocks, file blocks, chunk indexes
//! ```
//!
//! Two passes: [`plan`] decides every size, padding, nid and block address (C's
//! `compute_erofs_inodes`), then [`emit`] writes bytes and checks it wrote exactly
//! what was planned.

use std::collections::HashMap;
use std::ops::Range;

use crate::composefs::{
    PrepareOptions, PreparedContent, PreparedDirent, PreparedImage, PreparedInode, prepare,
};
use crate::erofs::format::{
    BLOCK_BITS, BLOCK_SIZE, CHUNK_FORMAT_BLKBITS_MASK, COMPOSEFS_FLAGS_HAS_ACL,
    COMPOSEFS_HEADER_VERSION, COMPOSEFS_MAGIC, ComposefsHeader, DIRENT_SIZE, DataLayout, Dirent,
    EROFS_MAGIC, FEATURE_COMPAT_MTIME, FEATURE_COMPAT_XATTR_FILTER, INODE_SLOT, InodeHeader,
    NID_SHIFT, NULL_ADDR, SUPERBLOCK_OFFSET, Superblock, XattrBodyHeader, XattrEntryHeader,
    round_up, split_xattr_name, xattr_filter_bit,
};
use crate::tree::Tree;

/// Format version limits, as `mkcomposefs --min-version/--max-version`.
///
/// The image gets `min_version`, raised to 1 when the tree has a whiteout and
/// `max_version` is at least 1. (The `mkcomposefs` command line has a quirk this
/// type does not copy: giving only `--min-version` sets the maximum to 0.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteOptions {
    pub min_version: u32,
    pub max_version: u32,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            min_version: 0,
            max_version: 1,
        }
    }
}

/// Why a tree cannot be written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WriteError {
    #[error("format versions min {min} / max {max} are not supported: the highest is 1")]
    UnsupportedVersion { min: u32, max: u32 },
    #[error("a directory entry names leaf {0}, which the tree does not have")]
    BadLeafId(usize),
    #[error("{path:?}: name is empty, '.', '..', longer than 255 bytes, or holds '/' or NUL")]
    BadName { path: String },
    #[error("{path:?}: mode {mode:#o} has bits beyond the permission bits")]
    BadMode { path: String, mode: u32 },
    #[error("{path:?}: xattr name {name:?} is empty, longer than 255 bytes, or holds NUL")]
    BadXattrName { path: String, name: String },
    #[error("{path:?}: value of xattr {name:?} is longer than 65535 bytes")]
    XattrTooLarge { path: String, name: String },
    #[error("inode {inode}: its xattrs take more room than an inode can describe")]
    XattrAreaTooLarge { inode: usize },
    #[error("{path:?}: inline content of {size} bytes; at most 5000 can be stored in the image")]
    InlineTooLarge { path: String, size: usize },
    #[error("{path:?}: symlink target is empty, longer than 4095 bytes, or holds NUL")]
    BadSymlink { path: String },
    #[error("{path:?}: payload (redirect) is longer than 4095 bytes or holds NUL")]
    BadPayload { path: String },
    #[error("{path:?}: device number {rdev:#x} does not fit the 32 bits EROFS stores")]
    DeviceNumberTooLarge { path: String, rdev: u64 },
    #[error("too large: {what}")]
    TooLarge { what: &'static str },
    #[error("internal error: wrote {written} bytes where {planned} were planned")]
    Internal { planned: u64, written: u64 },
}

/// Writes `tree` as a composefs image.
pub fn write_image(tree: &Tree, opts: &WriteOptions) -> Result<Vec<u8>, WriteError> {
    ImageWriter::new(tree).options(opts).write()
}

/// A configurable [`write_image`].
#[derive(Clone, Debug)]
pub struct ImageWriter<'a> {
    tree: &'a Tree,
    prepare: PrepareOptions,
}

impl<'a> ImageWriter<'a> {
    pub fn new(tree: &'a Tree) -> Self {
        ImageWriter {
            tree,
            prepare: PrepareOptions::default(),
        }
    }

    pub fn options(mut self, opts: &WriteOptions) -> Self {
        self.prepare.min_version = opts.min_version;
        self.prepare.max_version = opts.max_version;
        self
    }

    pub fn min_version(mut self, v: u32) -> Self {
        self.prepare.min_version = v;
        self
    }

    pub fn max_version(mut self, v: u32) -> Self {
        self.prepare.max_version = v;
        self
    }

    /// Whether a file with a digest but no payload is redirected to
    /// `/XX/rest-of-digest` (default: yes, as `mkcomposefs DIR` does). Turn it off
    /// to match `mkcomposefs --from-file` for a dumpfile whose payload is `-`.
    pub fn derive_payload(mut self, yes: bool) -> Self {
        self.prepare.derive_payload = yes;
        self
    }

    /// The composefs transformation alone: the inodes the image will hold.
    pub fn prepare(&self) -> Result<PreparedImage<'a>, WriteError> {
        prepare(self.tree, &self.prepare)
    }

    pub fn write(&self) -> Result<Vec<u8>, WriteError> {
        let image = self.prepare()?;
        let layout = plan(&image)?;
        emit(&image, &layout)
    }
}

// --- planning ---------------------------------------------------------------------

/// C mkcomposefs never stores more than half a block of tail inline.
const MAX_INLINE_TAIL: usize = BLOCK_SIZE / 2;

/// A chunk-based file's chunk index must fit one block (`LCFS_MAX_NONINLINE_CHUNKS`).
const MAX_CHUNKS: u64 = 1024;

/// An inode can reference at most this many shared xattrs (`EROFS_XATTR_LONG_PREFIX`
/// in C's loop); any further shared ones are stored in the inode.
const MAX_SHARED_PER_INODE: usize = 0x80;

/// Bytes of the composefs header and superblock: where the first inode starts.
const INODES_START: u64 = (SUPERBLOCK_OFFSET + Superblock::SIZE) as u64;

const BLOCK: u64 = BLOCK_SIZE as u64;
const SLOT: u64 = INODE_SLOT as u64;

fn round_up_u64(v: u64, align: u64) -> u64 {
    v.div_ceil(align) * align
}

/// Where one xattr of an inode goes.
#[derive(Clone, Copy, Debug)]
enum XattrSlot {
    /// Byte offset in the shared table.
    Shared(u32),
    Local,
}

/// Everything decided about one inode before writing.
#[derive(Clone, Debug, Default)]
struct InodePlan {
    compact: bool,
    /// Blocks of data outside the inode area.
    n_blocks: u64,
    /// Bytes stored right after the xattrs.
    tail: usize,
    /// Zeros written before the inode.
    pad: u64,
    nid: u64,
    /// Byte size of the xattr area (0 without xattrs).
    xattr_size: usize,
    /// Per xattr, in the inode's order.
    xattr_slots: Vec<XattrSlot>,
    /// First data block, relative to the start of the data area.
    first_block: u64,
    /// Directories: the entries of each dirent block, the tail's last.
    dir_chunks: Vec<Range<usize>>,
    /// Chunk-based files: chunk bits minus block bits, and the number of chunks.
    chunk_format: u16,
    chunk_count: u64,
}

struct Layout<'i> {
    inodes: Vec<InodePlan>,
    /// Shared xattrs in table order.
    shared: Vec<(&'i [u8], &'i [u8])>,
    shared_size: u64,
    inodes_end: u64,
    data_start: u64,
    n_data_blocks: u64,
}

fn xattr_entry_size(name: &[u8], value: &[u8]) -> usize {
    let (_, suffix) = split_xattr_name(name);
    round_up(XattrEntryHeader::SIZE + suffix.len() + value.len(), 4)
}

/// A small fast hasher for xattr interning (FxHash): the keys are the tree's own
/// bytes, so flooding resistance buys nothing and SipHash dominated the profile.
#[derive(Default)]
struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        for b in chunks.remainder() {
            self.add(u64::from(*b));
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl FxHasher {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

type FxBuild = std::hash::BuildHasherDefault<FxHasher>;

/// An xattr's name and value, as interned.
type XattrKey<'i> = (&'i [u8], &'i [u8]);

/// Every xattr of the image, interned: which are shared and where they sit.
struct XattrTable<'i> {
    /// The id of each inode's xattrs, inode after inode, in each inode's order.
    ids: Vec<u32>,
    /// Per id: its byte offset in the shared table, if shared.
    shared_offset: Vec<Option<u32>>,
    /// Shared xattrs in table order.
    shared: Vec<(&'i [u8], &'i [u8])>,
    shared_size: u64,
}

/// Picks the xattrs more than one inode has and orders them as C does: by name,
/// then value length, then value, all descending (`xattrs_ht_sort`).
fn xattr_table<'i>(inodes: &'i [PreparedInode<'_>]) -> Result<XattrTable<'i>, WriteError> {
    let too_many = || WriteError::TooLarge {
        what: "number of xattrs",
    };
    let mut index: HashMap<XattrKey<'i>, u32, FxBuild> = HashMap::default();
    let mut distinct: Vec<(XattrKey<'i>, u32)> = Vec::new();
    let mut ids = Vec::new();
    for inode in inodes {
        for (k, v) in &inode.xattrs {
            let key = (k.as_ref(), v.as_ref());
            let id = match index.get(&key) {
                Some(id) => *id,
                None => {
                    let id = u32::try_from(distinct.len()).map_err(|_| too_many())?;
                    index.insert(key, id);
                    distinct.push((key, 0));
                    id
                }
            };
            if let Some(d) = distinct.get_mut(id as usize) {
                d.1 += 1;
            }
            ids.push(id);
        }
    }
    let mut shared_ids: Vec<u32> = (0..distinct.len() as u32)
        .filter(|id| distinct.get(*id as usize).is_some_and(|d| d.1 > 1))
        .collect();
    let key = |id: &u32| {
        distinct
            .get(*id as usize)
            .map_or((&[][..], &[][..]), |d| d.0)
    };
    shared_ids.sort_unstable_by(|a, b| {
        let (a, b) = (key(a), key(b));
        b.0.cmp(a.0)
            .then_with(|| b.1.len().cmp(&a.1.len()))
            .then_with(|| b.1.cmp(a.1))
    });
    let mut shared_offset = vec![None; distinct.len()];
    let mut shared = Vec::with_capacity(shared_ids.len());
    let mut shared_size: u64 = 0;
    for id in shared_ids {
        let (k, v) = key(&id);
        let off = u32::try_from(shared_size).map_err(|_| WriteError::TooLarge {
            what: "shared xattr table",
        })?;
        if let Some(slot) = shared_offset.get_mut(id as usize) {
            *slot = Some(off);
        }
        shared.push((k, v));
        shared_size += xattr_entry_size(k, v) as u64;
    }
    Ok(XattrTable {
        ids,
        shared_offset,
        shared,
        shared_size,
    })
}

/// Splits directory entries into dirent blocks, filling each greedily.
fn dirent_chunks(entries: &[PreparedDirent<'_>]) -> Vec<Range<usize>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut used = 0;
    for (i, e) in entries.iter().enumerate() {
        let len = DIRENT_SIZE + e.name.len();
        if used + len > BLOCK_SIZE {
            chunks.push(start..i);
            start = i;
            used = 0;
        }
        used += len;
    }
    if used > 0 {
        chunks.push(start..entries.len());
    }
    chunks
}

fn chunk_bytes(entries: &[PreparedDirent<'_>], r: &Range<usize>) -> usize {
    entries
        .get(r.clone())
        .unwrap_or_default()
        .iter()
        .map(|e| DIRENT_SIZE + e.name.len())
        .sum()
}

/// `chunkbits` for an external file: as few chunks as possible, at least a block.
fn chunk_bits(size: u64) -> u32 {
    let bits = 64 - size.saturating_sub(1).leading_zeros();
    bits.clamp(
        u32::from(BLOCK_BITS),
        u32::from(BLOCK_BITS) + u32::from(CHUNK_FORMAT_BLKBITS_MASK),
    )
}

/// Directory size as stored: full blocks plus the inline tail.
fn dir_size(p: &InodePlan) -> u64 {
    p.n_blocks * BLOCK + p.tail as u64
}

fn inode_size(p: &InodePlan, inode: &PreparedInode<'_>) -> u64 {
    match inode.content {
        PreparedContent::Directory(_) => dir_size(p),
        _ => inode.file_size(),
    }
}

/// Padding before an inode so its tail never crosses a block boundary
/// (C `compute_erofs_inode_padding_for_tail`). May move the tail out to a block.
fn tail_padding(p: &mut InodePlan, is_symlink: bool, pos: u64, non_tail: u64) -> u64 {
    let tail = p.tail as u64;
    if is_symlink {
        // Old kernels want a symlink's inode and target in one block; a target that
        // cannot share a block with its inode goes to a data block of its own.
        let total = non_tail + tail;
        if total / BLOCK > 0 {
            p.n_blocks += 1;
            p.tail = 0;
        }
        // `total` is at least 32 here, so `pos + total - 1` does not underflow.
        if pos / BLOCK != (pos + total - 1) / BLOCK {
            return round_up_u64(pos, BLOCK) - pos;
        }
        return 0;
    }
    let remainder = BLOCK - (pos + non_tail) % BLOCK;
    if remainder < tail {
        let extra = round_up_u64(remainder, SLOT);
        let remainder = BLOCK - (pos + non_tail + extra) % BLOCK;
        if tail <= remainder {
            return extra;
        }
        p.n_blocks += 1;
        p.tail = 0;
        return round_up_u64(pos, BLOCK) - pos;
    }
    0
}

fn plan<'i>(image: &'i PreparedImage<'_>) -> Result<Layout<'i>, WriteError> {
    let inodes = &image.inodes;
    let XattrTable {
        ids,
        shared_offset,
        shared,
        shared_size,
    } = xattr_table(inodes)?;
    let mut ids = ids.into_iter();

    let mut plans = Vec::with_capacity(inodes.len());
    let mut pos = INODES_START;
    let mut n_data_blocks: u64 = 0;
    for (idx, inode) in inodes.iter().enumerate() {
        let mut p = InodePlan::default();
        match &inode.content {
            PreparedContent::Directory(entries) => {
                p.dir_chunks = dirent_chunks(entries);
                let last = p.dir_chunks.last().map_or(0, |r| chunk_bytes(entries, r));
                p.n_blocks = p.dir_chunks.len().saturating_sub(1) as u64;
                p.tail = last;
                if last > MAX_INLINE_TAIL {
                    p.n_blocks += 1;
                    p.tail = 0;
                }
            }
            PreparedContent::Symlink(target) => p.tail = target.len(),
            PreparedContent::Inline(data) if !data.is_empty() => {
                p.n_blocks = (data.len() / BLOCK_SIZE) as u64;
                p.tail = data.len() % BLOCK_SIZE;
                if p.tail > MAX_INLINE_TAIL {
                    p.n_blocks += 1;
                    p.tail = 0;
                }
            }
            PreparedContent::External { size } if *size > 0 => {
                let bits = chunk_bits(*size);
                p.chunk_count = size.div_ceil(1u64 << bits);
                if p.chunk_count > MAX_CHUNKS {
                    return Err(WriteError::TooLarge {
                        what: "external file (more than 1024 chunks)",
                    });
                }
                // `bits` is clamped to 12..=43, so this fits.
                p.chunk_format = (bits - u32::from(BLOCK_BITS)) as u16;
                p.tail = p.chunk_count as usize * 4;
            }
            _ => {}
        }

        p.compact = inode.mtime == image.min_mtime
            && inode.nlink <= u32::from(u16::MAX)
            && inode.uid <= u32::from(u16::MAX)
            && inode.gid <= u32::from(u16::MAX)
            && inode_size(&p, inode) <= u64::from(u32::MAX);
        let header_size = if p.compact {
            InodeHeader::COMPACT_SIZE
        } else {
            InodeHeader::EXTENDED_SIZE
        };

        let mut n_shared = 0;
        let mut local_size = 0;
        for (k, v) in &inode.xattrs {
            let offset = ids
                .next()
                .and_then(|id| shared_offset.get(id as usize).copied().flatten());
            match offset {
                Some(off) if n_shared < MAX_SHARED_PER_INODE => {
                    n_shared += 1;
                    p.xattr_slots.push(XattrSlot::Shared(off));
                }
                _ => {
                    local_size += xattr_entry_size(k, v);
                    p.xattr_slots.push(XattrSlot::Local);
                }
            }
        }
        if !inode.xattrs.is_empty() {
            p.xattr_size = round_up(XattrBodyHeader::SIZE + n_shared * 4 + local_size, 4);
            if (p.xattr_size - XattrBodyHeader::SIZE) / 4 + 1 > usize::from(u16::MAX) {
                return Err(WriteError::XattrAreaTooLarge { inode: idx });
            }
        }

        let aligned = round_up_u64(pos, SLOT);
        let is_symlink = matches!(inode.content, PreparedContent::Symlink(_));
        let non_tail = (header_size + p.xattr_size) as u64;
        let extra = tail_padding(&mut p, is_symlink, aligned, non_tail);
        let start = aligned + extra;
        p.pad = start - pos;
        p.nid = start >> NID_SHIFT;
        p.first_block = n_data_blocks;
        n_data_blocks += p.n_blocks;
        pos = start + non_tail + p.tail as u64;
        plans.push(p);
    }

    let inodes_end = round_up_u64(pos, SLOT);
    let data_start = round_up_u64(inodes_end + shared_size, BLOCK);
    let total_blocks = data_start / BLOCK + n_data_blocks;
    if u32::try_from(total_blocks).is_err() {
        return Err(WriteError::TooLarge {
            what: "image (more than 2^32 blocks)",
        });
    }
    if plans.first().is_some_and(|p| p.nid > u64::from(u16::MAX)) {
        return Err(WriteError::TooLarge { what: "root nid" });
    }
    if u32::try_from(inodes.len()).is_err() {
        return Err(WriteError::TooLarge {
            what: "number of inodes",
        });
    }
    Ok(Layout {
        inodes: plans,
        shared,
        shared_size,
        inodes_end,
        data_start,
        n_data_blocks,
    })
}

// --- emitting ---------------------------------------------------------------------

fn pad_to(out: &mut Vec<u8>, align: usize) {
    out.resize(round_up(out.len(), align), 0);
}

fn write_xattr(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let (index, suffix) = split_xattr_name(name);
    // Lengths were checked by `prepare`: suffix <= 255, value <= 65535.
    XattrEntryHeader {
        name_len: suffix.len() as u8,
        name_index: index,
        value_size: value.len() as u16,
    }
    .write_to(out);
    out.extend_from_slice(suffix);
    out.extend_from_slice(value);
    pad_to(out, 4);
}

/// Writes the dirents of `range`, then their names, then pads to `align`.
fn write_dirents(
    out: &mut Vec<u8>,
    entries: &[PreparedDirent<'_>],
    range: &Range<usize>,
    plans: &[InodePlan],
    align: usize,
) {
    let chunk = entries.get(range.clone()).unwrap_or_default();
    let mut nameoff = chunk.len() * DIRENT_SIZE;
    for e in chunk {
        Dirent {
            nid: plans.get(e.inode).map_or(0, |p| p.nid),
            // A chunk is at most a block, so offsets fit.
            nameoff: nameoff as u16,
            file_type: e.file_type as u8,
        }
        .write_to(out);
        nameoff += e.name.len();
    }
    for e in chunk {
        out.extend_from_slice(e.name);
    }
    pad_to(out, align);
}

fn write_inode(
    out: &mut Vec<u8>,
    idx: usize,
    inode: &PreparedInode<'_>,
    p: &InodePlan,
    layout: &Layout<'_>,
) {
    out.resize(out.len() + p.pad as usize, 0);
    let blkaddr = if p.n_blocks > 0 {
        // Fits: `plan` checked the image has fewer than 2^32 blocks.
        (layout.data_start / BLOCK + p.first_block) as u32
    } else {
        0
    };
    let (layout_kind, size, i_u) = match &inode.content {
        PreparedContent::Directory(_) => (None, dir_size(p), blkaddr),
        PreparedContent::Device(rdev) => (None, 0, *rdev),
        PreparedContent::External { size } => {
            // The chunk format shares `i_u` with the block address: C sets both,
            // the format last, so it lands in the low 16 bits.
            let i_u = (blkaddr & 0xffff_0000) | u32::from(p.chunk_format);
            (Some(DataLayout::ChunkBased), *size, i_u)
        }
        PreparedContent::Inline(_) | PreparedContent::Symlink(_) => {
            (None, inode.file_size(), blkaddr)
        }
        PreparedContent::Special => (None, 0, 0),
    };
    let layout_kind = layout_kind.unwrap_or(if p.tail > 0 {
        DataLayout::FlatInline
    } else {
        DataLayout::FlatPlain
    });
    let xattr_icount = if p.xattr_size == 0 {
        0
    } else {
        // Checked against u16::MAX in `plan`.
        ((p.xattr_size - XattrBodyHeader::SIZE) / 4 + 1) as u16
    };
    InodeHeader {
        extended: !p.compact,
        layout: layout_kind as u16,
        xattr_icount,
        // The mode is type bits and permissions only.
        mode: inode.mode as u16,
        nlink: inode.nlink,
        size,
        i_u,
        ino: idx as u32,
        uid: inode.uid,
        gid: inode.gid,
        // A compact inode's time is the build time; C leaves the field zero.
        mtime: if p.compact { 0 } else { inode.mtime.sec },
        mtime_nsec: if p.compact { 0 } else { inode.mtime.nsec },
    }
    .write_to(out);

    if p.xattr_size > 0 {
        let mut filter = 0u32;
        for (k, _) in &inode.xattrs {
            let (index, suffix) = split_xattr_name(k);
            filter |= xattr_filter_bit(index, suffix);
        }
        let shared_count = p
            .xattr_slots
            .iter()
            .filter(|s| matches!(s, XattrSlot::Shared(_)))
            .count();
        XattrBodyHeader {
            // On disk a set bit means "absent".
            name_filter: !filter,
            shared_count: shared_count as u8,
        }
        .write_to(out);
        for slot in &p.xattr_slots {
            if let XattrSlot::Shared(off) = slot {
                // Shared xattrs are addressed in 4-byte units from `xattr_blkaddr`.
                let rel = layout.inodes_end % BLOCK + u64::from(*off);
                out.extend_from_slice(&((rel / 4) as u32).to_le_bytes());
            }
        }
        for ((k, v), slot) in inode.xattrs.iter().zip(&p.xattr_slots) {
            if matches!(slot, XattrSlot::Local) {
                write_xattr(out, k, v);
            }
        }
    }

    if p.tail > 0 {
        match &inode.content {
            PreparedContent::Directory(entries) => {
                if let Some(last) = p.dir_chunks.last() {
                    write_dirents(out, entries, last, &layout.inodes, 1);
                }
            }
            PreparedContent::Symlink(target) => out.extend_from_slice(target),
            PreparedContent::Inline(data) => {
                let from = data.len().saturating_sub(p.tail);
                out.extend_from_slice(data.get(from..).unwrap_or_default());
            }
            PreparedContent::External { .. } => {
                for _ in 0..p.chunk_count {
                    out.extend_from_slice(&NULL_ADDR.to_le_bytes());
                }
            }
            PreparedContent::Device(_) | PreparedContent::Special => {}
        }
    }
}

fn write_blocks(out: &mut Vec<u8>, inode: &PreparedInode<'_>, p: &InodePlan, plans: &[InodePlan]) {
    if p.n_blocks == 0 {
        return;
    }
    match &inode.content {
        PreparedContent::Directory(entries) => {
            let n = usize::try_from(p.n_blocks).unwrap_or(usize::MAX);
            for chunk in p.dir_chunks.iter().take(n) {
                write_dirents(out, entries, chunk, plans, BLOCK_SIZE);
            }
        }
        PreparedContent::Inline(data) => {
            for block in data.chunks(BLOCK_SIZE).take(p.n_blocks as usize) {
                out.extend_from_slice(block);
                pad_to(out, BLOCK_SIZE);
            }
        }
        PreparedContent::Symlink(target) => {
            out.extend_from_slice(target);
            pad_to(out, BLOCK_SIZE);
        }
        PreparedContent::External { .. } => {
            // A chunk index moved out of the inode: C writes a whole block of it.
            for _ in 0..MAX_CHUNKS {
                out.extend_from_slice(&NULL_ADDR.to_le_bytes());
            }
        }
        PreparedContent::Device(_) | PreparedContent::Special => {}
    }
}

fn emit(image: &PreparedImage<'_>, layout: &Layout<'_>) -> Result<Vec<u8>, WriteError> {
    let total = layout.data_start + layout.n_data_blocks * BLOCK;
    let capacity = usize::try_from(total).map_err(|_| WriteError::TooLarge { what: "image" })?;
    let mut out = Vec::with_capacity(capacity);

    let flags = if image.has_acl {
        COMPOSEFS_FLAGS_HAS_ACL
    } else {
        0
    };
    ComposefsHeader {
        magic: COMPOSEFS_MAGIC,
        version: COMPOSEFS_HEADER_VERSION,
        flags,
        composefs_version: image.composefs_version,
    }
    .write_to(&mut out);
    out.resize(SUPERBLOCK_OFFSET, 0);

    Superblock {
        magic: EROFS_MAGIC,
        feature_compat: FEATURE_COMPAT_MTIME | FEATURE_COMPAT_XATTR_FILTER,
        blkszbits: BLOCK_BITS,
        root_nid: layout.inodes.first().map_or(0, |p| p.nid as u16),
        inos: image.inodes.len() as u64,
        build_time: image.min_mtime.sec,
        build_time_nsec: image.min_mtime.nsec,
        blocks: (layout.data_start / BLOCK + layout.n_data_blocks) as u32,
        meta_blkaddr: 0,
        xattr_blkaddr: (layout.inodes_end / BLOCK) as u32,
        ..Default::default()
    }
    .write_to(&mut out);

    for (idx, (inode, p)) in image.inodes.iter().zip(&layout.inodes).enumerate() {
        write_inode(&mut out, idx, inode, p, layout);
    }
    pad_to(&mut out, INODE_SLOT);
    check_len(&out, layout.inodes_end)?;

    for (k, v) in &layout.shared {
        write_xattr(&mut out, k, v);
    }
    check_len(&out, layout.inodes_end + layout.shared_size)?;
    pad_to(&mut out, BLOCK_SIZE);

    for (inode, p) in image.inodes.iter().zip(&layout.inodes) {
        write_blocks(&mut out, inode, p, &layout.inodes);
    }
    check_len(&out, total)?;
    Ok(out)
}

fn check_len(out: &[u8], planned: u64) -> Result<(), WriteError> {
    let written = out.len() as u64;
    if written != planned {
        return Err(WriteError::Internal { planned, written });
    }
    Ok(())
}

#[cfg(test)]
mod tests;

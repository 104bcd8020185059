//! A zero-copy EROFS reader for composefs images and plain uncompressed `mkfs.erofs` images.
//!
//! The image is a byte slice (a read-only memory map or an owned buffer). Nothing is parsed
//! up front beyond the superblock: an [`Inode`] is decoded from its nid on demand, and
//! directory blocks, xattrs and data are read straight out of the slice. Every offset read
//! from the image is range-checked, so a hostile image yields an [`ImageError`], never a
//! panic or a read outside the buffer.
//!
//! Supported: 4096-byte blocks; FLAT_PLAIN, FLAT_INLINE and CHUNK_BASED (4-byte block map or
//! 8-byte chunk indexes) layouts; shared and inline xattrs with the standard prefixes and the
//! bloom filter. Refused with an error: other block sizes, compression, device tables,
//! long xattr prefixes and every other incompat feature.

use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::composefs::{self, MetacopyError};
use crate::erofs::format::{
    BLOCK_BITS, BLOCK_SIZE, CHUNK_FORMAT_BLKBITS_MASK, CHUNK_FORMAT_INDEXES,
    COMPOSEFS_HEADER_VERSION, COMPOSEFS_MAGIC, ComposefsHeader, DataLayout, EROFS_MAGIC,
    FEATURE_INCOMPAT_SUPPORTED, FileType, INODE_SLOT, InodeHeader, NULL_ADDR, SUPERBLOCK_OFFSET,
    Superblock, xattr_ibody_size,
};
use crate::tree::Mtime;
use crate::verity::Digest;

mod dir;
mod xattr;

pub use dir::{DirEntry, DirIter};
pub use xattr::Xattr;

const BLOCK: u64 = BLOCK_SIZE as u64;

/// Longest symlink target [`Image::read_link`] returns: Linux's `PATH_MAX`.
pub const MAX_SYMLINK_LEN: u64 = 4096;
/// Largest non-symlink content [`Image::read_link`] returns in one slice.
pub const MAX_SMALL_FILE_LEN: u64 = 1 << 20;

/// Why an image, or a part of it, could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read image {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image is {0} bytes: too small to hold an EROFS superblock")]
    TooSmall(usize),
    #[error("bad EROFS superblock magic {0:#010x} (expected {EROFS_MAGIC:#010x})")]
    BadMagic(u32),
    #[error("composefs header version {0} is not supported (expected {COMPOSEFS_HEADER_VERSION})")]
    UnsupportedComposefsVersion(u32),
    #[error("unsupported block size 2^{0} (only 4096-byte blocks are supported)")]
    UnsupportedBlockSize(u8),
    #[error("unsupported incompatible EROFS feature bits {0:#x} ({names})", names = incompat_feature_names(*.0))]
    UnsupportedFeature(u32),
    #[error("superblock: {0}")]
    BadSuperblock(String),
    #[error("nid {0} is outside the image")]
    NidOutOfRange(u64),
    #[error("inode {nid}: {what}")]
    Corrupt { nid: u64, what: String },
    #[error("inode {nid}: unsupported {what}")]
    Unsupported { nid: u64, what: String },
    #[error("inode {0} is not a directory")]
    NotADirectory(u64),
    #[error("inode {nid}: bad trusted.overlay.metacopy: {source}")]
    BadMetacopy { nid: u64, source: MetacopyError },
}

/// Names the incompat feature bits, for error messages.
pub fn incompat_feature_names(bits: u32) -> String {
    const NAMES: [(u32, &str); 9] = [
        (0x001, "zero_padding"),
        (0x002, "compr_cfgs/big_pcluster"),
        (0x004, "chunked_file"),
        (0x008, "device_table"),
        (0x010, "ztailpacking"),
        (0x020, "fragments/dedupe"),
        (0x040, "xattr_prefixes"),
        (0x080, "48bit"),
        (0x100, "metabox"),
    ];
    let mut out: Vec<String> = NAMES
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, name)| (*name).to_string())
        .collect();
    let unknown = NAMES.iter().fold(bits, |b, (bit, _)| b & !bit);
    if unknown != 0 {
        out.push(format!("unknown {unknown:#x}"));
    }
    out.join(", ")
}

fn corrupt(nid: u64, what: impl Into<String>) -> ImageError {
    ImageError::Corrupt {
        nid,
        what: what.into(),
    }
}

fn unsupported(nid: u64, what: impl Into<String>) -> ImageError {
    ImageError::Unsupported {
        nid,
        what: what.into(),
    }
}

/// The image's bytes: a private read-only map of the file, or a buffer we own.
enum Bytes {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mmap(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// An opened image. Cheap to share between threads (`&Image` is `Send + Sync`).
pub struct Image {
    bytes: Bytes,
    sb: Superblock,
    header: Option<ComposefsHeader>,
    /// Byte offset nid 0 is counted from: `meta_blkaddr * 4096`.
    meta_base: u64,
    /// Byte offset shared xattr ids are counted from: `xattr_blkaddr * 4096`.
    xattr_base: u64,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("len", &self.bytes().len())
            .field("superblock", &self.sb)
            .field("composefs_header", &self.header)
            .finish()
    }
}

impl Image {
    /// Maps the image file read-only and validates its superblock. Only a regular file is
    /// accepted (a FIFO or device is refused at once, never waited on).
    ///
    /// For long-lived readers of files others may change (a mount daemon), read the file
    /// whole and use [`Image::from_bytes`] instead: a mapping of a file truncated later
    /// faults.
    pub fn open(path: &Path) -> Result<Image, ImageError> {
        let io = |source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file: File = crate::store::fsops::open_regular(path, crate::store::fsops::Expect::Any)
            .map_err(io)?;
        // SAFETY: the file is opened read-only and mapped privately; images are immutable
        // once written (content-addressed), so nothing we hold a reference into changes.
        // The remaining risk is another process truncating the file under us, which turns
        // reads past the new end into SIGBUS; that cannot be prevented by an unprivileged
        // reader of a file it does not own, and stores never truncate images in place.
        // (The mount, extract and store paths read images whole for that reason.)
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::with_bytes(Bytes::Mmap(map))
    }

    /// Reads an image from an owned buffer and validates its superblock.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Image, ImageError> {
        Self::with_bytes(Bytes::Owned(bytes))
    }

    fn with_bytes(bytes: Bytes) -> Result<Image, ImageError> {
        let b = bytes.as_slice();
        let sb = b
            .get(SUPERBLOCK_OFFSET..)
            .and_then(Superblock::parse)
            .ok_or(ImageError::TooSmall(b.len()))?;
        if sb.magic != EROFS_MAGIC {
            return Err(ImageError::BadMagic(sb.magic));
        }
        if sb.blkszbits != BLOCK_BITS {
            return Err(ImageError::UnsupportedBlockSize(sb.blkszbits));
        }
        let unknown = sb.feature_incompat & !FEATURE_INCOMPAT_SUPPORTED;
        if unknown != 0 {
            return Err(ImageError::UnsupportedFeature(unknown));
        }
        if sb.dirblkbits != 0 {
            return Err(ImageError::BadSuperblock(format!(
                "directory block size bits {} (only 0 is supported)",
                sb.dirblkbits
            )));
        }
        // The composefs header is optional: plain EROFS images have zeros (or a boot
        // sector) there. Its magic decides whether it is present at all.
        let header = ComposefsHeader::parse(b).filter(|h| h.magic == COMPOSEFS_MAGIC);
        if let Some(h) = header
            && h.version != COMPOSEFS_HEADER_VERSION
        {
            return Err(ImageError::UnsupportedComposefsVersion(h.version));
        }
        let image = Image {
            meta_base: u64::from(sb.meta_blkaddr) * BLOCK,
            xattr_base: u64::from(sb.xattr_blkaddr) * BLOCK,
            bytes,
            sb,
            header,
        };
        // Fail early on an image whose root cannot even be read.
        let root = image.root()?;
        if !root.is_dir() {
            return Err(ImageError::NotADirectory(root.nid));
        }
        Ok(image)
    }

    /// The whole image.
    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// The composefs header, `None` for a plain EROFS image.
    pub fn composefs_header(&self) -> Option<&ComposefsHeader> {
        self.header.as_ref()
    }

    pub fn root_nid(&self) -> u64 {
        u64::from(self.sb.root_nid)
    }

    pub fn root(&self) -> Result<Inode<'_>, ImageError> {
        self.inode(self.root_nid())
    }

    /// `len` bytes at byte offset `off`, if they are all inside the image.
    fn slice(&self, off: u64, len: u64) -> Option<&[u8]> {
        let start = usize::try_from(off).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        self.bytes().get(start..end)
    }

    /// Decodes the inode `nid` (at `meta_blkaddr * 4096 + nid * 32`), checking that its
    /// header and xattr area lie inside the image and that its format is one we read.
    pub fn inode(&self, nid: u64) -> Result<Inode<'_>, ImageError> {
        let pos = nid
            .checked_mul(INODE_SLOT as u64)
            .and_then(|off| off.checked_add(self.meta_base))
            .ok_or(ImageError::NidOutOfRange(nid))?;
        let raw = usize::try_from(pos)
            .ok()
            .and_then(|p| self.bytes().get(p..))
            .filter(|r| r.len() >= InodeHeader::COMPACT_SIZE)
            .ok_or(ImageError::NidOutOfRange(nid))?;
        let i_format = u16::from_le_bytes([raw[0], raw[1]]);
        // Bit 0 is the version, bits 1..=3 the layout; the kernel refuses anything else.
        if i_format & !0x000f != 0 {
            return Err(unsupported(nid, format!("i_format {i_format:#x}")));
        }
        let header = InodeHeader::parse(raw)
            .ok_or_else(|| corrupt(nid, "extended inode runs past the end of the image"))?;
        let layout = DataLayout::from_raw(header.layout)
            .ok_or_else(|| corrupt(nid, format!("unknown data layout {}", header.layout)))?;
        if FileType::from_mode(u32::from(header.mode)) == FileType::Unknown {
            return Err(corrupt(
                nid,
                format!("bad file type in mode {:#o}", header.mode),
            ));
        }
        let header_size = header.size_on_disk() as u64;
        let xattr_size = xattr_ibody_size(header.xattr_icount) as u64;
        let xattr_pos = pos + header_size;
        if self.slice(xattr_pos, xattr_size).is_none() {
            return Err(corrupt(nid, "xattr area runs past the end of the image"));
        }
        if layout == DataLayout::ChunkBased {
            let known = CHUNK_FORMAT_BLKBITS_MASK | CHUNK_FORMAT_INDEXES;
            if header.i_u & !u32::from(known) != 0 {
                return Err(unsupported(nid, format!("chunk format {:#x}", header.i_u)));
            }
        }
        Ok(Inode {
            nid,
            header,
            image: self,
            layout,
            pos,
            xattr_pos,
            xattr_size,
        })
    }

    /// Follows `path` (absolute, `/`-separated) from the root without following symlinks.
    /// Empty components are skipped; `.` and `..` are looked up like any name (every EROFS
    /// directory has them). A non-directory in the middle is an error.
    pub fn lookup_path(&self, path: &[u8]) -> Result<Option<Inode<'_>>, ImageError> {
        let mut cur = self.root()?;
        for comp in path.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            match self.lookup(&cur, comp)? {
                Some(e) => cur = self.inode(e.nid)?,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// Logical block `blk` of an inode's data: the bytes (a whole block, or less for the
    /// last one), or `None` for a hole. `blk * 4096` must be below the inode's size.
    fn data_block<'a>(
        &'a self,
        inode: &Inode<'a>,
        blk: u64,
    ) -> Result<Option<&'a [u8]>, ImageError> {
        let nid = inode.nid;
        let size = inode.size();
        let start = blk
            .checked_mul(BLOCK)
            .filter(|s| *s < size)
            .ok_or_else(|| corrupt(nid, "read past end of data"))?;
        let len = (size - start).min(BLOCK);
        let past_end = || corrupt(nid, format!("data block {blk} lies outside the image"));
        match inode.layout {
            DataLayout::FlatPlain => {
                let phys = u64::from(inode.header.i_u)
                    .checked_add(blk)
                    .and_then(|b| b.checked_mul(BLOCK))
                    .ok_or_else(past_end)?;
                self.slice(phys, len).map(Some).ok_or_else(past_end)
            }
            DataLayout::FlatInline => {
                // All blocks but the last are plain blocks from raw_blkaddr; the last one
                // is the inline tail after the inode.
                let last = (size - 1) / BLOCK;
                if blk < last {
                    let phys = u64::from(inode.header.i_u)
                        .checked_add(blk)
                        .and_then(|b| b.checked_mul(BLOCK))
                        .ok_or_else(past_end)?;
                    self.slice(phys, len).map(Some).ok_or_else(past_end)
                } else {
                    self.inline_data(inode).map(Some)
                }
            }
            DataLayout::ChunkBased => {
                let chunk_bits = u32::from(BLOCK_BITS)
                    + u32::from(inode.header.i_u as u16 & CHUNK_FORMAT_BLKBITS_MASK);
                let chunk = start >> chunk_bits;
                let Some(first) = self.chunk_start(inode, chunk)? else {
                    return Ok(None);
                };
                let within = (start - (chunk << chunk_bits)) / BLOCK;
                let phys = first
                    .checked_add(within)
                    .and_then(|b| b.checked_mul(BLOCK))
                    .ok_or_else(past_end)?;
                self.slice(phys, len).map(Some).ok_or_else(past_end)
            }
            DataLayout::CompressedFull | DataLayout::CompressedCompact => {
                Err(unsupported(nid, "compressed data layout"))
            }
        }
    }

    /// First physical block of chunk `chunk` of a chunk-based inode, `None` if unmapped.
    /// The table follows the xattr area, aligned to its entry size (4 or 8 bytes).
    fn chunk_start(&self, inode: &Inode<'_>, chunk: u64) -> Result<Option<u64>, ImageError> {
        let nid = inode.nid;
        let indexes = inode.header.i_u as u16 & CHUNK_FORMAT_INDEXES != 0;
        let unit: u64 = if indexes { 8 } else { 4 };
        let table = inode.data_pos().next_multiple_of(unit);
        let entry = chunk
            .checked_mul(unit)
            .and_then(|o| o.checked_add(table))
            .and_then(|pos| self.slice(pos, unit))
            .ok_or_else(|| {
                corrupt(
                    nid,
                    format!("chunk table entry {chunk} lies outside the image"),
                )
            })?;
        // A block-map entry is a u32 block address; a chunk index is
        // {startblk_hi/advise u16, device_id u16, startblk_lo u32}. Without the 48bit
        // and device-table features (both refused) only the low 32 bits address anything.
        let addr = match entry {
            [a, b, c, d] => u32::from_le_bytes([*a, *b, *c, *d]),
            [_, _, _, _, a, b, c, d] => u32::from_le_bytes([*a, *b, *c, *d]),
            _ => return Err(corrupt(nid, "chunk table entry")),
        };
        Ok((addr != NULL_ADDR).then_some(u64::from(addr)))
    }

    /// The inline tail of a FLAT_INLINE inode (empty for other layouts), borrowed from the
    /// image. It sits right after the xattr area and may not cross a block boundary.
    pub fn inline_data<'a>(&'a self, inode: &Inode<'a>) -> Result<&'a [u8], ImageError> {
        if inode.layout != DataLayout::FlatInline || inode.size() == 0 {
            return Ok(&[]);
        }
        let size = inode.size();
        let tail = size - (size - 1) / BLOCK * BLOCK;
        let pos = inode.data_pos();
        if pos % BLOCK + tail > BLOCK {
            return Err(corrupt(inode.nid, "inline data crosses a block boundary"));
        }
        self.slice(pos, tail)
            .ok_or_else(|| corrupt(inode.nid, "inline data runs past the end of the image"))
    }

    /// Reads file data at `offset` into `buf`, returning the number of bytes read (short at
    /// end of file). Holes and unmapped chunks read as zeros — which is what composefs
    /// external files are: their content is in the object store, not here.
    pub fn read_at(
        &self,
        inode: &Inode<'_>,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, ImageError> {
        let size = inode.size();
        if offset >= size {
            return Ok(0);
        }
        let want = usize::try_from(size - offset).map_or(buf.len(), |left| left.min(buf.len()));
        let mut done = 0usize;
        while done < want {
            let pos = offset + done as u64;
            let blk = pos / BLOCK;
            let within = (pos % BLOCK) as usize;
            let block = self.data_block(inode, blk)?;
            let block_len = (size - blk * BLOCK).min(BLOCK) as usize;
            let take = (want - done).min(block_len.saturating_sub(within));
            if take == 0 {
                return Err(corrupt(inode.nid, "data block shorter than expected"));
            }
            let dst = &mut buf[done..done + take];
            match block {
                Some(b) => {
                    let src = b
                        .get(within..within + take)
                        .ok_or_else(|| corrupt(inode.nid, "data block shorter than expected"))?;
                    dst.copy_from_slice(src);
                }
                None => dst.fill(0),
            }
            done += take;
        }
        Ok(want)
    }

    /// The whole content of a symlink (its target) or of a small file, borrowed from the
    /// image when it is stored in one piece (a tail after the inode, or flat plain blocks)
    /// and copied together when it is not (full blocks followed by a tail, which is how
    /// composefs stores an inline file of more than one block).
    /// Symlink targets longer than [`MAX_SYMLINK_LEN`] and other contents longer than
    /// [`MAX_SMALL_FILE_LEN`] are refused, as are contents held in chunks (the object
    /// store's, not the image's).
    pub fn read_link<'a>(&'a self, inode: &Inode<'a>) -> Result<Cow<'a, [u8]>, ImageError> {
        let size = inode.size();
        let bound = if inode.file_type() == FileType::Symlink {
            MAX_SYMLINK_LEN
        } else {
            MAX_SMALL_FILE_LEN
        };
        if size > bound {
            return Err(corrupt(
                inode.nid,
                format!("content of {size} bytes is too long to read whole"),
            ));
        }
        if size == 0 {
            return Ok(Cow::Borrowed(&[]));
        }
        match inode.layout {
            DataLayout::FlatInline if size <= BLOCK => self.inline_data(inode).map(Cow::Borrowed),
            DataLayout::FlatInline => {
                // Bounded above, so this allocation is at most MAX_SMALL_FILE_LEN.
                let mut data = vec![0u8; size as usize];
                let n = self.read_at(inode, 0, &mut data)?;
                if n != data.len() {
                    return Err(corrupt(inode.nid, "data shorter than the inode's size"));
                }
                Ok(Cow::Owned(data))
            }
            DataLayout::FlatPlain => u64::from(inode.header.i_u)
                .checked_mul(BLOCK)
                .and_then(|pos| self.slice(pos, size))
                .map(Cow::Borrowed)
                .ok_or_else(|| corrupt(inode.nid, "data lies outside the image")),
            _ => Err(unsupported(
                inode.nid,
                "reading whole content that is not stored in the image",
            )),
        }
    }

    /// composefs: the `trusted.overlay.redirect` value (`/XX/rest`), if any.
    pub fn redirect<'a>(&'a self, inode: &Inode<'a>) -> Result<Option<&'a [u8]>, ImageError> {
        self.get_xattr(inode, composefs::XATTR_REDIRECT)
    }

    /// composefs: the parsed `trusted.overlay.metacopy`. `None`: no metacopy xattr;
    /// `Some(None)`: metacopy without a digest.
    pub fn metacopy(&self, inode: &Inode<'_>) -> Result<Option<Option<Digest>>, ImageError> {
        match self.get_xattr(inode, composefs::XATTR_METACOPY)? {
            None => Ok(None),
            Some(v) => {
                composefs::parse_metacopy(v)
                    .map(Some)
                    .map_err(|source| ImageError::BadMetacopy {
                        nid: inode.nid,
                        source,
                    })
            }
        }
    }
}

/// An inode, decoded from its nid. Cheap to copy; borrows the image.
#[derive(Clone, Copy)]
pub struct Inode<'a> {
    pub nid: u64,
    pub header: InodeHeader,
    image: &'a Image,
    layout: DataLayout,
    /// Byte offset of the inode header in the image.
    pos: u64,
    /// Byte offset and size of the xattr area (checked to lie inside the image).
    xattr_pos: u64,
    xattr_size: u64,
}

impl std::fmt::Debug for Inode<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inode")
            .field("nid", &self.nid)
            .field("header", &self.header)
            .field("layout", &self.layout)
            .finish()
    }
}

impl<'a> Inode<'a> {
    /// The image this inode belongs to.
    pub fn image(&self) -> &'a Image {
        self.image
    }

    /// Byte offset of the inode header in the image.
    pub fn offset(&self) -> u64 {
        self.pos
    }

    /// Where the inline tail or chunk table starts: right after the xattr area.
    fn data_pos(&self) -> u64 {
        self.xattr_pos + self.xattr_size
    }

    /// Full `st_mode`: type and permission bits.
    pub fn mode(&self) -> u32 {
        u32::from(self.header.mode)
    }

    pub fn file_type(&self) -> FileType {
        FileType::from_mode(self.mode())
    }

    pub fn is_dir(&self) -> bool {
        self.file_type() == FileType::Directory
    }

    pub fn size(&self) -> u64 {
        self.header.size
    }

    pub fn uid(&self) -> u32 {
        self.header.uid
    }

    pub fn gid(&self) -> u32 {
        self.header.gid
    }

    pub fn nlink(&self) -> u32 {
        self.header.nlink
    }

    /// The device number of a character or block device (0 for other types), as a
    /// userspace `dev_t` (glibc `makedev` encoding, what `stat` returns).
    ///
    /// EROFS stores the kernel's `new_encode_dev(dev)` in `i_u`: minor bits 0..8 in bits
    /// 0..8, major (12 bits) in bits 8..20, minor bits 8..20 in bits 20..32. The kernel
    /// reads it with `new_decode_dev` and `stat` re-encodes it the same way, so for every
    /// 32-bit value the `dev_t` userspace sees is `i_u` itself. composefs-rs writes the
    /// `st_rdev` it was given truncated to u32, i.e. the same encoding.
    pub fn rdev(&self) -> u64 {
        match self.file_type() {
            FileType::CharDevice | FileType::BlockDevice => u64::from(self.header.i_u),
            _ => 0,
        }
    }

    /// `(major, minor)` of a device, decoded the way the kernel's `new_decode_dev` does.
    pub fn rdev_major_minor(&self) -> (u32, u32) {
        let dev = self.rdev() as u32;
        let major = (dev & 0xfff00) >> 8;
        let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
        (major, minor)
    }

    /// Modification time. A compact inode stores seconds relative to the superblock's
    /// `build_time` and takes its nanoseconds from `build_time_nsec`.
    pub fn mtime(&self) -> Mtime {
        if self.header.extended {
            Mtime {
                sec: self.header.mtime,
                nsec: self.header.mtime_nsec,
            }
        } else {
            let sb = &self.image.sb;
            Mtime {
                sec: sb.build_time.saturating_add(self.header.mtime),
                nsec: sb.build_time_nsec,
            }
        }
    }

    pub fn layout(&self) -> DataLayout {
        self.layout
    }

    /// The inode number to show: the nid (unique, and shared by hard links), as the
    /// kernel does on 64-bit hosts. The on-disk `i_ino` is only a 32-bit hint.
    pub fn ino(&self) -> u64 {
        self.nid
    }
}

#[cfg(test)]
mod tests;

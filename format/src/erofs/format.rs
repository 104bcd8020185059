//! EROFS and composefs on-disk structures.
//!
//! Every structure is a plain struct of typed fields with a `parse` that reads it
//! from little-endian bytes (returning `None` when the slice is too short, never
//! panicking) and a `write_to` that appends exactly `SIZE` bytes. The reader and the
//! writer share these definitions so a field can only be laid out in one place.

/// Only 4096-byte blocks are supported: composefs images always use them.
pub const BLOCK_BITS: u8 = 12;
pub const BLOCK_SIZE: usize = 1 << BLOCK_BITS;

/// Byte offset of the EROFS superblock; the composefs header lives before it.
pub const SUPERBLOCK_OFFSET: usize = 1024;

/// Inode slots are 32 bytes: `nid * 32` is an inode's offset from `meta_blkaddr`.
pub const NID_SHIFT: u32 = 5;
pub const INODE_SLOT: usize = 1 << NID_SHIFT;

pub const COMPOSEFS_MAGIC: u32 = 0xd078_629a;
pub const COMPOSEFS_HEADER_VERSION: u32 = 1;
/// Header flag: the image carries POSIX ACLs.
pub const COMPOSEFS_FLAGS_HAS_ACL: u32 = 1 << 0;

pub const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
pub const FEATURE_COMPAT_SB_CHKSUM: u32 = 0x0000_0001;
pub const FEATURE_COMPAT_MTIME: u32 = 0x0000_0002;
pub const FEATURE_COMPAT_XATTR_FILTER: u32 = 0x0000_0004;

/// Incompat features this reader understands. Compression, device tables,
/// fragments, dedupe and shared xattr prefixes are refused with an error.
pub const FEATURE_INCOMPAT_ZERO_PADDING: u32 = 0x0000_0001;
pub const FEATURE_INCOMPAT_CHUNKED_FILE: u32 = 0x0000_0004;
pub const FEATURE_INCOMPAT_SUPPORTED: u32 =
    FEATURE_INCOMPAT_ZERO_PADDING | FEATURE_INCOMPAT_CHUNKED_FILE;

/// Seed of the per-inode xattr bloom filter (`xxh32(name, seed + prefix_index)`).
pub const XATTR_FILTER_SEED: u32 = 0x25BB_E08F;

/// Chunk-format bits stored in `i_u` of a chunk-based inode.
pub const CHUNK_FORMAT_BLKBITS_MASK: u16 = 0x001f;
pub const CHUNK_FORMAT_INDEXES: u16 = 0x0020;
/// A block-map entry that points nowhere: reads as zeros.
pub const NULL_ADDR: u32 = 0xffff_ffff;

/// Size of a directory entry record.
pub const DIRENT_SIZE: usize = 12;

/// Inode data layouts (`i_format >> 1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataLayout {
    FlatPlain = 0,
    CompressedFull = 1,
    FlatInline = 2,
    CompressedCompact = 3,
    ChunkBased = 4,
}

impl DataLayout {
    pub fn from_raw(v: u16) -> Option<Self> {
        Some(match v {
            0 => Self::FlatPlain,
            1 => Self::CompressedFull,
            2 => Self::FlatInline,
            3 => Self::CompressedCompact,
            4 => Self::ChunkBased,
            _ => return None,
        })
    }
}

/// EROFS directory entry file types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FileType {
    Unknown = 0,
    RegularFile = 1,
    Directory = 2,
    CharDevice = 3,
    BlockDevice = 4,
    Fifo = 5,
    Socket = 6,
    Symlink = 7,
}

impl FileType {
    pub fn from_raw(v: u8) -> Self {
        match v {
            1 => Self::RegularFile,
            2 => Self::Directory,
            3 => Self::CharDevice,
            4 => Self::BlockDevice,
            5 => Self::Fifo,
            6 => Self::Socket,
            7 => Self::Symlink,
            _ => Self::Unknown,
        }
    }

    /// The file type a `st_mode` names.
    pub fn from_mode(mode: u32) -> Self {
        match mode & S_IFMT {
            S_IFREG => Self::RegularFile,
            S_IFDIR => Self::Directory,
            S_IFCHR => Self::CharDevice,
            S_IFBLK => Self::BlockDevice,
            S_IFIFO => Self::Fifo,
            S_IFSOCK => Self::Socket,
            S_IFLNK => Self::Symlink,
            _ => Self::Unknown,
        }
    }
}

pub const S_IFMT: u32 = 0o170000;
pub const S_IFSOCK: u32 = 0o140000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFIFO: u32 = 0o010000;

/// EROFS xattr name prefixes, by index. Index 0 means the full name is stored.
pub const XATTR_PREFIXES: [(u8, &[u8]); 6] = [
    (1, b"user."),
    (2, b"system.posix_acl_access"),
    (3, b"system.posix_acl_default"),
    (4, b"trusted."),
    (5, b"lustre."),
    (6, b"security."),
];

/// The prefix string for an index, if it is a known one.
pub fn xattr_prefix(index: u8) -> Option<&'static [u8]> {
    if index == 0 {
        return Some(b"");
    }
    XATTR_PREFIXES
        .iter()
        .find(|(i, _)| *i == index)
        .map(|(_, p)| *p)
}

/// Splits a full xattr name into a prefix index and the rest, the way
/// `mkcomposefs` does: a plain prefix match, with `lustre.` (index 5) never used
/// because C mkcomposefs has no entry for it.
pub fn split_xattr_name(name: &[u8]) -> (u8, &[u8]) {
    for (index, prefix) in XATTR_PREFIXES.iter().rev() {
        if *index == 5 {
            continue;
        }
        if let Some(rest) = name.strip_prefix(*prefix) {
            return (*index, rest);
        }
    }
    (0, name)
}

// --- little-endian field helpers -------------------------------------------------

#[inline]
pub(crate) fn le_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

#[inline]
pub(crate) fn le_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

#[inline]
pub(crate) fn le_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// Returns the first `n` bytes of `b`, or `None` if it is shorter.
#[inline]
fn head(b: &[u8], n: usize) -> Option<&[u8]> {
    b.get(..n)
}

// --- composefs header -------------------------------------------------------------

/// The 32-byte header composefs puts at offset 0, before the EROFS superblock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ComposefsHeader {
    pub magic: u32,
    pub version: u32,
    pub flags: u32,
    pub composefs_version: u32,
}

impl ComposefsHeader {
    pub const SIZE: usize = 32;

    pub fn parse(b: &[u8]) -> Option<Self> {
        let b = head(b, Self::SIZE)?;
        Some(Self {
            magic: le_u32(b, 0),
            version: le_u32(b, 4),
            flags: le_u32(b, 8),
            composefs_version: le_u32(b, 12),
        })
    }

    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.magic.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.composefs_version.to_le_bytes());
        out.extend_from_slice(&[0u8; 16]);
    }
}

// --- superblock -------------------------------------------------------------------

/// The EROFS superblock, 128 bytes at offset 1024.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Superblock {
    pub magic: u32,
    pub checksum: u32,
    pub feature_compat: u32,
    pub blkszbits: u8,
    pub sb_extslots: u8,
    pub root_nid: u16,
    pub inos: u64,
    pub build_time: u64,
    pub build_time_nsec: u32,
    pub blocks: u32,
    pub meta_blkaddr: u32,
    pub xattr_blkaddr: u32,
    pub uuid: [u8; 16],
    pub volume_name: [u8; 16],
    pub feature_incompat: u32,
    /// `available_compr_algs` / `lz4_max_distance`.
    pub compr_u: u16,
    pub extra_devices: u16,
    pub devt_slotoff: u16,
    pub dirblkbits: u8,
    pub xattr_prefix_count: u8,
    pub xattr_prefix_start: u32,
    pub packed_nid: u64,
    pub xattr_filter_reserved: u8,
}

impl Superblock {
    pub const SIZE: usize = 128;

    pub fn parse(b: &[u8]) -> Option<Self> {
        let b = head(b, Self::SIZE)?;
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[48..64]);
        let mut volume_name = [0u8; 16];
        volume_name.copy_from_slice(&b[64..80]);
        Some(Self {
            magic: le_u32(b, 0),
            checksum: le_u32(b, 4),
            feature_compat: le_u32(b, 8),
            blkszbits: b[12],
            sb_extslots: b[13],
            root_nid: le_u16(b, 14),
            inos: le_u64(b, 16),
            build_time: le_u64(b, 24),
            build_time_nsec: le_u32(b, 32),
            blocks: le_u32(b, 36),
            meta_blkaddr: le_u32(b, 40),
            xattr_blkaddr: le_u32(b, 44),
            uuid,
            volume_name,
            feature_incompat: le_u32(b, 80),
            compr_u: le_u16(b, 84),
            extra_devices: le_u16(b, 86),
            devt_slotoff: le_u16(b, 88),
            dirblkbits: b[90],
            xattr_prefix_count: b[91],
            xattr_prefix_start: le_u32(b, 92),
            packed_nid: le_u64(b, 96),
            xattr_filter_reserved: b[104],
        })
    }

    pub fn write_to(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.magic.to_le_bytes());
        out.extend_from_slice(&self.checksum.to_le_bytes());
        out.extend_from_slice(&self.feature_compat.to_le_bytes());
        out.push(self.blkszbits);
        out.push(self.sb_extslots);
        out.extend_from_slice(&self.root_nid.to_le_bytes());
        out.extend_from_slice(&self.inos.to_le_bytes());
        out.extend_from_slice(&self.build_time.to_le_bytes());
        out.extend_from_slice(&self.build_time_nsec.to_le_bytes());
        out.extend_from_slice(&self.blocks.to_le_bytes());
        out.extend_from_slice(&self.meta_blkaddr.to_le_bytes());
        out.extend_from_slice(&self.xattr_blkaddr.to_le_bytes());
        out.extend_from_slice(&self.uuid);
        out.extend_from_slice(&self.volume_name);
        out.extend_from_slice(&self.feature_incompat.to_le_bytes());
        out.extend_from_slice(&self.compr_u.to_le_bytes());
        out.extend_from_slice(&self.extra_devices.to_le_bytes());
        out.extend_from_slice(&self.devt_slotoff.to_le_bytes());
        out.push(self.dirblkbits);
        out.push(self.xattr_prefix_count);
        out.extend_from_slice(&self.xattr_prefix_start.to_le_bytes());
        out.extend_from_slice(&self.packed_nid.to_le_bytes());
        out.push(self.xattr_filter_reserved);
        out.resize(start + Self::SIZE, 0);
    }
}

// --- inodes -----------------------------------------------------------------------

/// An inode header, compact (32 bytes) or extended (64 bytes), widened to one
/// shape. `mtime` of a compact inode is relative to the superblock `build_time`
/// (composefs writes 0 there, so it equals `build_time`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InodeHeader {
    pub extended: bool,
    pub layout: u16,
    pub xattr_icount: u16,
    pub mode: u16,
    pub nlink: u32,
    pub size: u64,
    /// `raw_blkaddr`, `rdev`, or chunk format, depending on type and layout.
    pub i_u: u32,
    pub ino: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    pub mtime_nsec: u32,
}

impl InodeHeader {
    pub const COMPACT_SIZE: usize = 32;
    pub const EXTENDED_SIZE: usize = 64;

    /// The header's size on disk.
    pub fn size_on_disk(&self) -> usize {
        if self.extended {
            Self::EXTENDED_SIZE
        } else {
            Self::COMPACT_SIZE
        }
    }

    /// Parses a header; `b` must start at the inode. `None` when the bytes run out.
    pub fn parse(b: &[u8]) -> Option<Self> {
        let c = head(b, Self::COMPACT_SIZE)?;
        let format = le_u16(c, 0);
        let extended = format & 1 != 0;
        let layout = (format >> 1) & 0x7;
        if extended {
            let e = head(b, Self::EXTENDED_SIZE)?;
            Some(Self {
                extended,
                layout,
                xattr_icount: le_u16(e, 2),
                mode: le_u16(e, 4),
                size: le_u64(e, 8),
                i_u: le_u32(e, 16),
                ino: le_u32(e, 20),
                uid: le_u32(e, 24),
                gid: le_u32(e, 28),
                mtime: le_u64(e, 32),
                mtime_nsec: le_u32(e, 40),
                nlink: le_u32(e, 44),
            })
        } else {
            Some(Self {
                extended,
                layout,
                xattr_icount: le_u16(c, 2),
                mode: le_u16(c, 4),
                nlink: u32::from(le_u16(c, 6)),
                size: u64::from(le_u32(c, 8)),
                mtime: u64::from(le_u32(c, 12)),
                i_u: le_u32(c, 16),
                ino: le_u32(c, 20),
                uid: u32::from(le_u16(c, 24)),
                gid: u32::from(le_u16(c, 26)),
                mtime_nsec: 0,
            })
        }
    }

    /// Appends the header. For a compact inode, fields must already fit their
    /// narrow widths (the writer decides compact vs extended before calling this).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let format = (self.layout << 1) | u16::from(self.extended);
        out.extend_from_slice(&format.to_le_bytes());
        out.extend_from_slice(&self.xattr_icount.to_le_bytes());
        out.extend_from_slice(&self.mode.to_le_bytes());
        if self.extended {
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(&self.size.to_le_bytes());
            out.extend_from_slice(&self.i_u.to_le_bytes());
            out.extend_from_slice(&self.ino.to_le_bytes());
            out.extend_from_slice(&self.uid.to_le_bytes());
            out.extend_from_slice(&self.gid.to_le_bytes());
            out.extend_from_slice(&self.mtime.to_le_bytes());
            out.extend_from_slice(&self.mtime_nsec.to_le_bytes());
            out.extend_from_slice(&self.nlink.to_le_bytes());
            out.extend_from_slice(&[0u8; 16]);
        } else {
            out.extend_from_slice(&(self.nlink as u16).to_le_bytes());
            out.extend_from_slice(&(self.size as u32).to_le_bytes());
            out.extend_from_slice(&(self.mtime as u32).to_le_bytes());
            out.extend_from_slice(&self.i_u.to_le_bytes());
            out.extend_from_slice(&self.ino.to_le_bytes());
            out.extend_from_slice(&(self.uid as u16).to_le_bytes());
            out.extend_from_slice(&(self.gid as u16).to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
        }
    }
}

/// Byte size of an inode's xattr area for a given `i_xattr_icount`.
pub fn xattr_ibody_size(icount: u16) -> usize {
    if icount == 0 {
        0
    } else {
        XattrBodyHeader::SIZE + (usize::from(icount) - 1) * 4
    }
}

/// The header at the start of an inode's xattr area.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XattrBodyHeader {
    /// Inverted bloom filter: bit `xxh32(name, seed + index) % 32` is CLEAR for
    /// every xattr the inode has, so a set bit proves an xattr absent (and an
    /// all-zero filter, as old writers leave it, proves nothing).
    pub name_filter: u32,
    pub shared_count: u8,
}

impl XattrBodyHeader {
    pub const SIZE: usize = 12;

    pub fn parse(b: &[u8]) -> Option<Self> {
        let b = head(b, Self::SIZE)?;
        Some(Self {
            name_filter: le_u32(b, 0),
            shared_count: b[4],
        })
    }

    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.name_filter.to_le_bytes());
        out.push(self.shared_count);
        out.extend_from_slice(&[0u8; 7]);
    }
}

/// An xattr entry header; name and value follow, then padding to 4 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XattrEntryHeader {
    pub name_len: u8,
    pub name_index: u8,
    pub value_size: u16,
}

impl XattrEntryHeader {
    pub const SIZE: usize = 4;

    pub fn parse(b: &[u8]) -> Option<Self> {
        let b = head(b, Self::SIZE)?;
        Some(Self {
            name_len: b[0],
            name_index: b[1],
            value_size: le_u16(b, 2),
        })
    }

    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.push(self.name_len);
        out.push(self.name_index);
        out.extend_from_slice(&self.value_size.to_le_bytes());
    }

    /// Size of the whole entry including name, value and padding.
    pub fn entry_size(&self) -> usize {
        round_up(
            Self::SIZE + usize::from(self.name_len) + usize::from(self.value_size),
            4,
        )
    }
}

/// A directory entry record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dirent {
    pub nid: u64,
    pub nameoff: u16,
    pub file_type: u8,
}

impl Dirent {
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b = head(b, DIRENT_SIZE)?;
        Some(Self {
            nid: le_u64(b, 0),
            nameoff: le_u16(b, 8),
            file_type: b[10],
        })
    }

    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.nid.to_le_bytes());
        out.extend_from_slice(&self.nameoff.to_le_bytes());
        out.push(self.file_type);
        out.push(0);
    }
}

/// Rounds `v` up to a multiple of `align` (a power of two).
pub const fn round_up(v: usize, align: usize) -> usize {
    (v + align - 1) & !(align - 1)
}

/// Bloom-filter bit for an xattr (prefix index, name suffix).
pub fn xattr_filter_bit(index: u8, suffix: &[u8]) -> u32 {
    let h = xxhash_rust::xxh32::xxh32(suffix, XATTR_FILTER_SEED.wrapping_add(u32::from(index)));
    1u32 << (h % 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_round_trip_is_128_bytes() {
        let sb = Superblock {
            magic: EROFS_MAGIC,
            feature_compat: FEATURE_COMPAT_MTIME | FEATURE_COMPAT_XATTR_FILTER,
            blkszbits: BLOCK_BITS,
            root_nid: 36,
            inos: 7,
            build_time: 12345,
            build_time_nsec: 6789,
            blocks: 3,
            xattr_blkaddr: 1,
            ..Default::default()
        };
        let mut out = Vec::new();
        sb.write_to(&mut out);
        assert_eq!(out.len(), Superblock::SIZE);
        assert_eq!(Superblock::parse(&out), Some(sb));
        assert_eq!(Superblock::parse(&out[..127]), None);
    }

    #[test]
    fn inode_headers_round_trip() {
        for extended in [false, true] {
            let h = InodeHeader {
                extended,
                layout: DataLayout::ChunkBased as u16,
                xattr_icount: 9,
                mode: (S_IFREG | 0o4755) as u16,
                nlink: 3,
                size: 70000,
                i_u: 5,
                ino: 42,
                uid: 1000,
                gid: 100,
                mtime: if extended { 1_700_000_000 } else { 0 },
                mtime_nsec: if extended { 999_999_999 } else { 0 },
            };
            let mut out = Vec::new();
            h.write_to(&mut out);
            assert_eq!(out.len(), h.size_on_disk());
            assert_eq!(InodeHeader::parse(&out), Some(h));
        }
    }

    #[test]
    fn xattr_names_split_on_longest_known_prefix() {
        assert_eq!(split_xattr_name(b"user.foo"), (1, &b"foo"[..]));
        assert_eq!(
            split_xattr_name(b"trusted.overlay.x"),
            (4, &b"overlay.x"[..])
        );
        assert_eq!(split_xattr_name(b"security.selinux"), (6, &b"selinux"[..]));
        assert_eq!(split_xattr_name(b"system.posix_acl_access"), (2, &b""[..]));
        assert_eq!(
            split_xattr_name(b"system.posix_acl_accessX"),
            (2, &b"X"[..])
        );
        assert_eq!(split_xattr_name(b"lustre.x"), (0, &b"lustre.x"[..]));
        assert_eq!(split_xattr_name(b"system.other"), (0, &b"system.other"[..]));
    }
}

//! Unit tests on images assembled by hand from the `format` structs, for the cases the
//! writers we can run never produce: metadata at a non-zero `meta_blkaddr`, 8-byte chunk
//! indexes, chunks larger than a block, bloom-filter hits, corrupt fields.

use super::*;
use crate::erofs::format::{
    DIRENT_SIZE, Dirent, FEATURE_COMPAT_XATTR_FILTER, S_IFBLK, S_IFDIR, S_IFLNK, S_IFREG,
    XattrBodyHeader, XattrEntryHeader, xattr_filter_bit,
};

const META_BLK: u32 = 1;
const XATTR_BLK: u32 = 3;

/// An image under construction: block 0 holds the superblock, block 1.. the inodes
/// (`meta_blkaddr = 1`), block 3 the shared xattrs, data from block 4 on.
struct Builder {
    img: Vec<u8>,
    sb: Superblock,
}

impl Builder {
    fn new() -> Self {
        let sb = Superblock {
            magic: EROFS_MAGIC,
            feature_compat: FEATURE_COMPAT_XATTR_FILTER,
            blkszbits: BLOCK_BITS,
            root_nid: 0,
            build_time: 1_000_000,
            build_time_nsec: 42,
            meta_blkaddr: META_BLK,
            xattr_blkaddr: XATTR_BLK,
            ..Default::default()
        };
        Builder {
            img: vec![0; 16 * BLOCK_SIZE],
            sb,
        }
    }

    fn put(&mut self, off: usize, bytes: &[u8]) {
        if self.img.len() < off + bytes.len() {
            self.img.resize(off + bytes.len(), 0);
        }
        self.img[off..off + bytes.len()].copy_from_slice(bytes);
    }

    fn inode_off(nid: u64) -> usize {
        META_BLK as usize * BLOCK_SIZE + nid as usize * INODE_SLOT
    }

    /// Writes an inode header, optional xattr area and inline bytes at `nid`.
    fn inode(&mut self, nid: u64, h: InodeHeader, xattrs: &[u8], inline: &[u8]) {
        let mut out = Vec::new();
        h.write_to(&mut out);
        assert_eq!(xattrs.len(), xattr_ibody_size(h.xattr_icount));
        out.extend_from_slice(xattrs);
        out.extend_from_slice(inline);
        self.put(Self::inode_off(nid), &out);
    }

    fn finish(mut self) -> Vec<u8> {
        let mut sb = Vec::new();
        self.sb.write_to(&mut sb);
        self.put(SUPERBLOCK_OFFSET, &sb);
        self.img
    }
}

fn header(mode: u32, layout: DataLayout, size: u64, i_u: u32) -> InodeHeader {
    InodeHeader {
        layout: layout as u16,
        mode: mode as u16,
        nlink: 1,
        size,
        i_u,
        ..Default::default()
    }
}

/// Packs sorted (name, nid, type) entries into dirent blocks the way EROFS writers do.
fn dir_blocks(entries: &[(&[u8], u64, FileType)], per_block: usize) -> Vec<Vec<u8>> {
    entries
        .chunks(per_block)
        .map(|chunk| {
            let mut out = Vec::new();
            let mut nameoff = chunk.len() * DIRENT_SIZE;
            for (name, nid, ft) in chunk {
                Dirent {
                    nid: *nid,
                    nameoff: nameoff as u16,
                    file_type: *ft as u8,
                }
                .write_to(&mut out);
                nameoff += name.len();
            }
            for (name, _, _) in chunk {
                out.extend_from_slice(name);
            }
            out
        })
        .collect()
}

fn xattr_entry(index: u8, suffix: &[u8], value: &[u8]) -> Vec<u8> {
    let h = XattrEntryHeader {
        name_len: suffix.len() as u8,
        name_index: index,
        value_size: value.len() as u16,
    };
    let mut out = Vec::new();
    h.write_to(&mut out);
    out.extend_from_slice(suffix);
    out.extend_from_slice(value);
    out.resize(h.entry_size(), 0);
    out
}

/// Root (nid 0) is a directory of `names` spread over FLAT_PLAIN blocks at block 4.. with
/// the last block inline; each name points at nid 100 (a file).
fn big_dir_image(names: &[Vec<u8>], per_block: usize) -> Vec<u8> {
    let mut b = Builder::new();
    let mut entries: Vec<(&[u8], u64, FileType)> = names
        .iter()
        .map(|n| (n.as_slice(), 100, FileType::RegularFile))
        .collect();
    entries.push((b".", 0, FileType::Directory));
    entries.push((b"..", 0, FileType::Directory));
    entries.sort();
    let blocks = dir_blocks(&entries, per_block);
    let (last, full) = blocks.split_last().unwrap();
    let mut size = 0u64;
    for (i, blk) in full.iter().enumerate() {
        b.put((4 + i) * BLOCK_SIZE, blk);
        size = ((i + 1) * BLOCK_SIZE) as u64;
    }
    size += last.len() as u64;
    b.inode(
        0,
        header(S_IFDIR | 0o755, DataLayout::FlatInline, size, 4),
        &[],
        last,
    );
    b.inode(
        100,
        header(S_IFREG | 0o644, DataLayout::FlatPlain, 0, 0),
        &[],
        &[],
    );
    b.finish()
}

#[test]
fn lookup_and_readdir_across_blocks_with_meta_blkaddr() {
    let names: Vec<Vec<u8>> = (0..500)
        .map(|i| format!("name-{:05}", i * 2).into_bytes())
        .collect();
    let img = Image::from_bytes(big_dir_image(&names, 60)).unwrap();
    let root = img.root().unwrap();
    assert_eq!(root.offset(), 4096, "nid 0 sits at meta_blkaddr * 4096");
    assert!(root.size() > 8 * BLOCK);
    for n in &names {
        let e = img.lookup(&root, n).unwrap().expect("present");
        assert_eq!((e.name, e.nid), (n.as_slice(), 100));
    }
    // Misses before the first name, between names (odd numbers), after the last.
    for miss in [
        &b"!"[..],
        b"-",
        b"name-00001",
        b"name-00499",
        b"name-00998x",
        b"zzz",
    ] {
        assert_eq!(img.lookup(&root, miss).unwrap(), None, "{miss:?}");
    }
    assert_eq!(img.lookup(&root, b".").unwrap().unwrap().nid, 0);
    let all: Vec<DirEntry<'_>> = img
        .read_dir(&root, 0)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(all.len(), names.len() + 2);
    assert!(all.windows(2).all(|w| w[0].name < w[1].name), "sorted");
    for (i, e) in all.iter().enumerate() {
        let rest: Vec<_> = img
            .read_dir(&root, e.next_offset)
            .unwrap()
            .map(|e| e.unwrap().name)
            .collect();
        assert_eq!(rest.len(), all.len() - i - 1);
        assert_eq!(rest.first(), all.get(i + 1).map(|e| &e.name));
    }
    // The walk sees the file (nid 100, hard-linked under every name) once.
    let walk = img.walk().unwrap();
    assert_eq!(
        walk,
        vec![(b"/".to_vec(), 0), (b"/name-00000".to_vec(), 100)]
    );
    assert_eq!(img.path_of(100).unwrap().unwrap(), b"/name-00000");
    assert_eq!(img.path_of(0).unwrap().unwrap(), b"/");
    assert_eq!(img.path_of(7).unwrap(), None);
}

#[test]
fn lookup_touches_logarithmically_many_blocks() {
    // With a hole in the middle block (zeroed dirents) lookups of names in other blocks still
    // work, which shows the search does not scan every block.
    let names: Vec<Vec<u8>> = (0..1000).map(|i| format!("n{i:04}").into_bytes()).collect();
    let mut bytes = big_dir_image(&names, 100);
    let img = Image::from_bytes(bytes.clone()).unwrap();
    let root = img.root().unwrap();
    let nblocks = root.size().div_ceil(BLOCK);
    assert!(nblocks >= 10);
    // Corrupt block 1: a lookup that only needs blocks 0, mid, etc. must still succeed,
    // while a full listing fails.
    bytes[5 * BLOCK_SIZE..6 * BLOCK_SIZE].fill(0);
    let img = Image::from_bytes(bytes).unwrap();
    let root = img.root().unwrap();
    assert!(img.lookup(&root, b"n0999").unwrap().is_some());
    assert!(img.lookup(&root, b"n0500").unwrap().is_some());
    assert!(img.read_dir(&root, 0).unwrap().any(|e| e.is_err()));
}

#[test]
fn last_name_stops_at_nul_padding_and_bad_nameoff_is_corrupt() {
    let mut b = Builder::new();
    let entries: [(&[u8], u64, FileType); 3] = [
        (b".", 0, FileType::Directory),
        (b"..", 0, FileType::Directory),
        (b"last", 10, FileType::RegularFile),
    ];
    let mut blk = dir_blocks(&entries, 10).remove(0);
    let used = blk.len();
    blk.resize(BLOCK_SIZE, 0);
    b.put(4 * BLOCK_SIZE, &blk);
    b.inode(
        0,
        header(S_IFDIR | 0o755, DataLayout::FlatPlain, BLOCK, 4),
        &[],
        &[],
    );
    b.inode(
        10,
        header(S_IFREG | 0o644, DataLayout::FlatPlain, 0, 0),
        &[],
        &[],
    );
    let mut bytes = b.finish();
    let img = Image::from_bytes(bytes.clone()).unwrap();
    let root = img.root().unwrap();
    let names: Vec<_> = img
        .read_dir(&root, 0)
        .unwrap()
        .map(|e| e.unwrap().name)
        .collect();
    assert_eq!(names, [&b"."[..], b"..", b"last"]);
    assert!(used < BLOCK_SIZE);

    // nameoff of dirent 0 not a multiple of 12 / nameoff of dirent 2 before dirent 1's.
    for (field, value) in [(8usize, 13u16), (8 + 24, 20)] {
        let mut bad = bytes.clone();
        bad[4 * BLOCK_SIZE + field..4 * BLOCK_SIZE + field + 2]
            .copy_from_slice(&value.to_le_bytes());
        let img = Image::from_bytes(bad).unwrap();
        let root = img.root().unwrap();
        let err = img
            .read_dir(&root, 0)
            .unwrap()
            .find_map(Result::err)
            .expect("an error");
        assert!(matches!(err, ImageError::Corrupt { nid: 0, .. }), "{err}");
        assert!(
            img.lookup(&root, b"last").is_err() || img.lookup(&root, b"last").unwrap().is_none()
        );
    }
    // A directory claiming to be bigger than the image.
    let off = Builder::inode_off(0) + 8;
    bytes[off..off + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let img = Image::from_bytes(bytes).unwrap();
    let root = img.root().unwrap();
    assert!(matches!(
        img.read_dir(&root, 0),
        Err(ImageError::Corrupt { .. })
    ));
}

#[test]
fn chunk_indexes_block_maps_and_holes() {
    let mut b = Builder::new();
    // Root: empty dir with just "." and "..".
    let entries: [(&[u8], u64, FileType); 2] = [
        (b".", 0, FileType::Directory),
        (b"..", 0, FileType::Directory),
    ];
    let blk = dir_blocks(&entries, 10).remove(0);
    b.inode(
        0,
        header(S_IFDIR | 0o755, DataLayout::FlatInline, blk.len() as u64, 0),
        &[],
        &blk,
    );
    // Data blocks 6..10 hold bytes = block number.
    for blkno in 6..10u8 {
        b.put(usize::from(blkno) * BLOCK_SIZE, &[blkno; BLOCK_SIZE]);
    }
    // nid 10: 8-byte chunk indexes, 8 KiB chunks (blkbits 1): chunk 0 -> blocks 6,7,
    // chunk 1 -> hole, chunk 2 -> blocks 8,9 (partially used).
    let size = 2 * 8192 + 5000;
    let fmt = u32::from(CHUNK_FORMAT_INDEXES) | 1;
    let mut table = Vec::new();
    for addr in [6u32, NULL_ADDR, 8] {
        table.extend_from_slice(&[0, 0, 0, 0]);
        table.extend_from_slice(&addr.to_le_bytes());
    }
    // The table is 8-byte aligned after the 32-byte header: no padding needed.
    b.inode(
        10,
        header(S_IFREG | 0o600, DataLayout::ChunkBased, size, fmt),
        &[],
        &table,
    );
    // nid 20: 4-byte block map, 4 KiB chunks: blocks 9, hole, 6.
    let mut map = Vec::new();
    for addr in [9u32, NULL_ADDR, 6] {
        map.extend_from_slice(&addr.to_le_bytes());
    }
    b.inode(
        20,
        header(S_IFREG | 0o600, DataLayout::ChunkBased, 3 * BLOCK, 0),
        &[],
        &map,
    );
    let img = Image::from_bytes(b.finish()).unwrap();

    let f = img.inode(10).unwrap();
    let mut buf = vec![0xaau8; size as usize + 100];
    assert_eq!(img.read_at(&f, 0, &mut buf).unwrap(), size as usize);
    assert!(buf[..4096].iter().all(|b| *b == 6));
    assert!(buf[4096..8192].iter().all(|b| *b == 7));
    assert!(
        buf[8192..16384].iter().all(|b| *b == 0),
        "hole reads as zeros"
    );
    assert!(buf[16384..20480].iter().all(|b| *b == 8));
    assert!(buf[20480..size as usize].iter().all(|b| *b == 9));
    let mut small = [0u8; 10];
    assert_eq!(img.read_at(&f, size - 3, &mut small).unwrap(), 3);
    assert_eq!(img.read_at(&f, size, &mut small).unwrap(), 0);

    let g = img.inode(20).unwrap();
    let mut buf = vec![0xaau8; 3 * BLOCK_SIZE];
    assert_eq!(img.read_at(&g, 0, &mut buf).unwrap(), buf.len());
    assert!(buf[..4096].iter().all(|b| *b == 9));
    assert!(buf[4096..8192].iter().all(|b| *b == 0));
    assert!(buf[8192..].iter().all(|b| *b == 6));
    assert!(
        img.read_link(&g).is_err(),
        "chunked content is not one slice"
    );
}

#[test]
fn xattrs_shared_inline_and_bloom_filter() {
    let mut b = Builder::new();
    let entries: [(&[u8], u64, FileType); 2] = [
        (b".", 0, FileType::Directory),
        (b"..", 0, FileType::Directory),
    ];
    let blk = dir_blocks(&entries, 10).remove(0);
    b.inode(
        0,
        header(S_IFDIR | 0o755, DataLayout::FlatInline, blk.len() as u64, 0),
        &[],
        &blk,
    );
    // Shared xattrs at xattr_blkaddr: id 0 = trusted.overlay.metacopy (empty), id 2 = user.s.
    let shared0 = xattr_entry(4, b"overlay.metacopy", b"");
    let shared1 = xattr_entry(1, b"s", b"shared value");
    let id1 = shared0.len() / 4;
    b.put(
        XATTR_BLK as usize * BLOCK_SIZE,
        &[shared0, shared1].concat(),
    );
    let inline = [
        xattr_entry(1, b"a", b"1"),
        xattr_entry(0, b"system.other", b"full name"),
        xattr_entry(2, b"", b"acl"),
    ]
    .concat();
    let present = xattr_filter_bit(4, b"overlay.metacopy")
        | xattr_filter_bit(1, b"s")
        | xattr_filter_bit(1, b"a")
        | xattr_filter_bit(2, b"");
    let mut area = Vec::new();
    XattrBodyHeader {
        name_filter: !present,
        shared_count: 2,
    }
    .write_to(&mut area);
    area.extend_from_slice(&0u32.to_le_bytes());
    area.extend_from_slice(&(id1 as u32).to_le_bytes());
    area.extend_from_slice(&inline);
    let icount = ((area.len() - XattrBodyHeader::SIZE) / 4 + 1) as u16;
    let mut h = header(S_IFLNK | 0o777, DataLayout::FlatInline, 6, 0);
    h.xattr_icount = icount;
    b.inode(10, h, &area, b"target");
    let bytes = b.finish();
    let img = Image::from_bytes(bytes.clone()).unwrap();
    let ino = img.inode(10).unwrap();
    let names: Vec<Vec<u8>> = img
        .xattrs(&ino)
        .unwrap()
        .into_iter()
        .map(|x| x.name.into_owned())
        .collect();
    assert_eq!(
        names,
        [
            &b"trusted.overlay.metacopy"[..],
            b"user.s",
            b"user.a",
            b"system.other",
            b"system.posix_acl_access"
        ]
    );
    assert_eq!(
        img.get_xattr(&ino, b"user.s").unwrap(),
        Some(&b"shared value"[..])
    );
    assert_eq!(
        img.get_xattr(&ino, b"system.other").unwrap(),
        Some(&b"full name"[..])
    );
    assert_eq!(
        img.get_xattr(&ino, b"system.posix_acl_access").unwrap(),
        Some(&b"acl"[..])
    );
    assert_eq!(img.get_xattr(&ino, b"user.b").unwrap(), None);
    assert_eq!(img.metacopy(&ino).unwrap(), Some(None));
    assert_eq!(img.redirect(&ino).unwrap(), None);
    assert_eq!(&*img.read_link(&ino).unwrap(), b"target");

    // The filter is consulted: mark "user.a" absent and the lookup says so, unless the
    // superblock's reserved byte disables filters.
    let mut filtered = bytes.clone();
    let off = Builder::inode_off(10) + InodeHeader::COMPACT_SIZE;
    let f = !present | xattr_filter_bit(1, b"a");
    filtered[off..off + 4].copy_from_slice(&f.to_le_bytes());
    let img = Image::from_bytes(filtered.clone()).unwrap();
    let ino = img.inode(10).unwrap();
    assert_eq!(img.get_xattr(&ino, b"user.a").unwrap(), None);
    filtered[SUPERBLOCK_OFFSET + 104] = 1;
    let img = Image::from_bytes(filtered).unwrap();
    let ino = img.inode(10).unwrap();
    assert_eq!(img.get_xattr(&ino, b"user.a").unwrap(), Some(&b"1"[..]));

    // A shared id pointing past the end, and an unknown name index, are errors.
    let mut bad = bytes.clone();
    bad[off + 12..off + 16].copy_from_slice(&u32::MAX.to_le_bytes());
    let img = Image::from_bytes(bad).unwrap();
    assert!(img.xattrs(&img.inode(10).unwrap()).is_err());
    let mut bad = bytes;
    bad[off + 20 + 1] = 0x85;
    let img = Image::from_bytes(bad).unwrap();
    let err = img.xattrs(&img.inode(10).unwrap()).unwrap_err();
    assert!(err.to_string().contains("name index"), "{err}");
}

#[test]
fn inode_fields_devices_and_times() {
    let mut b = Builder::new();
    let entries: [(&[u8], u64, FileType); 2] = [
        (b".", 0, FileType::Directory),
        (b"..", 0, FileType::Directory),
    ];
    let blk = dir_blocks(&entries, 10).remove(0);
    let mut root = header(S_IFDIR | 0o755, DataLayout::FlatInline, blk.len() as u64, 0);
    root.mtime = 5;
    b.inode(0, root, &[], &blk);
    // makedev(259, 70000) in the new_encode_dev layout.
    let dev: u32 = (70000 & 0xff) | (259 << 8) | ((70000 & !0xff) << 12);
    let mut h = header(S_IFBLK | 0o600, DataLayout::FlatPlain, 0, dev);
    h.extended = true;
    h.mtime = 1_700_000_000;
    h.mtime_nsec = 999;
    h.uid = 100_000;
    h.nlink = 70_000;
    b.inode(10, h, &[], &[]);
    let img = Image::from_bytes(b.finish()).unwrap();
    let root = img.root().unwrap();
    assert_eq!(
        root.mtime(),
        Mtime {
            sec: 1_000_005,
            nsec: 42
        }
    );
    let d = img.inode(10).unwrap();
    assert_eq!(d.rdev_major_minor(), (259, 70000));
    assert_eq!(d.rdev(), u64::from(dev));
    assert_eq!(d.rdev(), libc::makedev(259, 70000));
    assert_eq!(
        d.mtime(),
        Mtime {
            sec: 1_700_000_000,
            nsec: 999
        }
    );
    assert_eq!((d.uid(), d.nlink(), d.ino()), (100_000, 70_000, 10));
    assert_eq!(d.file_type(), FileType::BlockDevice);
    assert_eq!(root.rdev(), 0);
    assert!(matches!(
        img.read_dir(&d, 0),
        Err(ImageError::NotADirectory(10))
    ));
    assert!(matches!(
        img.lookup(&d, b"x"),
        Err(ImageError::NotADirectory(10))
    ));
    assert!(matches!(
        img.inode(1 << 40),
        Err(ImageError::NidOutOfRange(_))
    ));
    assert!(matches!(
        img.inode(u64::MAX),
        Err(ImageError::NidOutOfRange(_))
    ));
}

#[test]
fn bad_superblocks_and_unsupported_features() {
    let good = big_dir_image(&[b"a".to_vec()], 10);
    assert!(Image::from_bytes(good.clone()).is_ok());
    let with = |off: usize, bytes: &[u8]| {
        let mut b = good.clone();
        b[off..off + bytes.len()].copy_from_slice(bytes);
        Image::from_bytes(b)
    };
    let sb = SUPERBLOCK_OFFSET;
    assert!(matches!(
        Image::from_bytes(vec![0; 1100]),
        Err(ImageError::TooSmall(1100))
    ));
    assert!(matches!(with(sb, &[0; 4]), Err(ImageError::BadMagic(0))));
    assert!(matches!(
        with(sb + 12, &[9]),
        Err(ImageError::UnsupportedBlockSize(9))
    ));
    let err = with(sb + 80, &2u32.to_le_bytes()).unwrap_err();
    assert!(matches!(err, ImageError::UnsupportedFeature(2)));
    assert!(err.to_string().contains("compr_cfgs"), "{err}");
    let err = with(sb + 80, &0x8000_0008u32.to_le_bytes()).unwrap_err();
    assert!(err.to_string().contains("device_table") && err.to_string().contains("0x80000000"));
    // Zero padding and chunked files are fine.
    assert!(with(sb + 80, &5u32.to_le_bytes()).is_ok());
    // A composefs header with an unknown version.
    let mut h = Vec::new();
    ComposefsHeader {
        magic: COMPOSEFS_MAGIC,
        version: 2,
        flags: 0,
        composefs_version: 0,
    }
    .write_to(&mut h);
    assert!(matches!(
        with(0, &h),
        Err(ImageError::UnsupportedComposefsVersion(2))
    ));
    h[4] = 1;
    let img = with(0, &h).unwrap();
    assert_eq!(img.composefs_header().unwrap().version, 1);
    // A root that is not a directory, or out of range.
    assert!(matches!(
        with(sb + 14, &100u16.to_le_bytes()),
        Err(ImageError::NotADirectory(100))
    ));
    assert!(with(sb + 14, &0xffffu16.to_le_bytes()).is_err());
}

#[test]
fn unsupported_layouts_and_inline_overflow() {
    let mut b = Builder::new();
    let entries: [(&[u8], u64, FileType); 2] = [
        (b".", 0, FileType::Directory),
        (b"..", 0, FileType::Directory),
    ];
    let blk = dir_blocks(&entries, 10).remove(0);
    b.inode(
        0,
        header(S_IFDIR | 0o755, DataLayout::FlatInline, blk.len() as u64, 0),
        &[],
        &blk,
    );
    b.inode(
        10,
        header(S_IFREG | 0o644, DataLayout::CompressedFull, 100, 5),
        &[],
        &[],
    );
    // nid 126 is the second-to-last slot of the inode block: a 100-byte tail after its
    // 32-byte header would cross into the next block.
    b.inode(
        126,
        header(S_IFREG | 0o644, DataLayout::FlatInline, 100, 0),
        &[],
        &[],
    );
    let mut unknown = header(S_IFREG | 0o644, DataLayout::FlatPlain, 0, 0);
    unknown.layout = 7;
    b.inode(20, unknown, &[], &[]);
    let img = Image::from_bytes(b.finish()).unwrap();
    let c = img.inode(10).unwrap();
    let err = img.read_at(&c, 0, &mut [0; 10]).unwrap_err();
    assert!(
        matches!(err, ImageError::Unsupported { nid: 10, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("compressed"), "{err}");
    let t = img.inode(126).unwrap();
    let err = img.inline_data(&t).unwrap_err();
    assert!(
        err.to_string().contains("crosses a block boundary"),
        "{err}"
    );
    assert!(img.read_at(&t, 0, &mut [0; 10]).is_err());
    let err = img.inode(20).unwrap_err();
    assert!(err.to_string().contains("unknown data layout 7"), "{err}");
}

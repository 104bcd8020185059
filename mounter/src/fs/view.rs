//! The overlay view: what the kernel's composefs mount (EROFS under overlayfs) shows of an
//! image, as pure functions the FUSE layer applies.
//!
//! * Inode numbers are nids, so hard links share one; only the root is renumbered to the
//!   FUSE root number 1 (and whatever nid is 1 takes the root's nid, keeping the map a
//!   bijection even for an odd image).
//! * The root's `00` … `ff` character devices 0/0 are whiteouts composefs adds for the
//!   overlay; overlayfs hides them, so do we. Only in the root, only those exact names, only
//!   char 0/0: a real child called `ab` is shown.
//! * `trusted.overlay.*` xattrs are overlay metadata and hidden, except the escaped
//!   `trusted.overlay.overlay.X`, which is the tree's own `trusted.overlay.X`.
//! * Everything else (whiteouts of the original tree, stored as empty files with escaped
//!   xattrs, and their parents' markers) shows as stored: overlayfs does not interpret
//!   escaped names, so a user whiteout appears as an empty regular file carrying
//!   `trusted.overlay.whiteout` and `user.overlay.whiteout`.

use std::time::{Duration, UNIX_EPOCH};

use fuser::{FileAttr, FileType as Kind, INodeNo};
use imgmount_format::composefs::{escape_xattr_name, unescaped_xattr_name};
use imgmount_format::erofs::format::FileType;
use imgmount_format::erofs::reader::Inode;

/// Maps nids to FUSE inode numbers and back.
#[derive(Clone, Copy, Debug)]
pub struct InoMap {
    root_nid: u64,
}

impl InoMap {
    pub fn new(root_nid: u64) -> Self {
        InoMap { root_nid }
    }

    pub fn ino(&self, nid: u64) -> INodeNo {
        INodeNo(match nid {
            n if n == self.root_nid => INodeNo::ROOT.0,
            n if n == INodeNo::ROOT.0 => self.root_nid,
            n => n,
        })
    }

    pub fn nid(&self, ino: INodeNo) -> u64 {
        match ino.0 {
            i if i == INodeNo::ROOT.0 => self.root_nid,
            i if i == self.root_nid => INodeNo::ROOT.0,
            i => i,
        }
    }
}

/// Is this root entry one of the `00`…`ff` whiteout stubs? `rdev` is only consulted for
/// character devices (the caller may pass 0 without loading the inode otherwise).
pub fn is_root_stub(name: &[u8], file_type: FileType, rdev: u64) -> bool {
    file_type == FileType::CharDevice
        && rdev == 0
        && name.len() == 2
        && name.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// The stored name to look up for a name asked for through the mount.
pub fn stored_xattr_name(shown: &[u8]) -> Vec<u8> {
    escape_xattr_name(shown)
}

/// The name shown through the mount for a stored name, `None` if hidden.
pub fn shown_xattr_name(stored: &[u8]) -> Option<Vec<u8>> {
    unescaped_xattr_name(stored)
}

/// Whether a requester may see `trusted.*` names in a listing: the kernel lists them only
/// to holders of CAP_SYS_ADMIN, approximated here by uid 0.
pub fn may_list(shown: &[u8], uid: u32) -> bool {
    uid == 0 || !shown.starts_with(b"trusted.")
}

pub fn kind(file_type: FileType) -> Kind {
    match file_type {
        FileType::Directory => Kind::Directory,
        FileType::CharDevice => Kind::CharDevice,
        FileType::BlockDevice => Kind::BlockDevice,
        FileType::Fifo => Kind::NamedPipe,
        FileType::Socket => Kind::Socket,
        FileType::Symlink => Kind::Symlink,
        // Unknown types cannot come from a valid image; show them as regular files, which
        // is what the mode bits most likely meant and is harmless to read.
        FileType::RegularFile | FileType::Unknown => Kind::RegularFile,
    }
}

/// The attributes of an inode as the kernel's EROFS shows them: atime and ctime equal
/// mtime, 4096-byte blocks.
pub fn attr(inode: &Inode<'_>, ino: INodeNo) -> FileAttr {
    let m = inode.mtime();
    let nsec = m.nsec.min(999_999_999);
    // The kernel reads the on-disk u64 into a signed time64_t: huge values are negative.
    let sec = m.sec as i64;
    let mtime = if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec.unsigned_abs(), nsec)
    } else {
        // sec + nsec/1e9 lies before the epoch by |sec| - nsec/1e9.
        (UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()))
            + Duration::from_nanos(u64::from(nsec))
    };
    let size = inode.size();
    FileAttr {
        ino,
        size,
        blocks: size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind: kind(inode.file_type()),
        perm: (inode.mode() & 0o7777) as u16,
        nlink: inode.nlink(),
        uid: inode.uid(),
        gid: inode.gid(),
        // EROFS stores the kernel's new_encode_dev value, which is also what FUSE expects.
        rdev: inode.rdev() as u32,
        blksize: 4096,
        flags: 0,
    }
}

/// A lookup answer meaning "no such entry" that the kernel may cache (inode 0).
pub fn negative_entry() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: Kind::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ino_map_is_a_bijection() {
        let m = InoMap::new(36);
        assert_eq!(m.ino(36), INodeNo(1));
        assert_eq!(m.nid(INodeNo(1)), 36);
        assert_eq!(m.ino(1), INodeNo(36));
        assert_eq!(m.nid(INodeNo(36)), 1);
        for nid in [0u64, 2, 37, 1 << 40] {
            assert_eq!(m.nid(m.ino(nid)), nid);
        }
        let root1 = InoMap::new(1);
        assert_eq!(root1.ino(1), INodeNo(1));
        assert_eq!(root1.nid(INodeNo(5)), 5);
    }

    #[test]
    fn root_stubs() {
        assert!(is_root_stub(b"00", FileType::CharDevice, 0));
        assert!(is_root_stub(b"a7", FileType::CharDevice, 0));
        assert!(is_root_stub(b"ff", FileType::CharDevice, 0));
        assert!(!is_root_stub(b"FF", FileType::CharDevice, 0));
        assert!(!is_root_stub(b"0g", FileType::CharDevice, 0));
        assert!(!is_root_stub(b"000", FileType::CharDevice, 0));
        assert!(!is_root_stub(b"ab", FileType::CharDevice, 0x0103));
        assert!(!is_root_stub(b"ab", FileType::Directory, 0));
        assert!(!is_root_stub(b"ab", FileType::RegularFile, 0));
    }

    #[test]
    fn xattr_names() {
        assert_eq!(shown_xattr_name(b"user.x").as_deref(), Some(&b"user.x"[..]));
        assert_eq!(shown_xattr_name(b"trusted.overlay.redirect"), None);
        assert_eq!(shown_xattr_name(b"trusted.overlay.metacopy"), None);
        assert_eq!(shown_xattr_name(b"trusted.overlay.opaque"), None);
        assert_eq!(
            shown_xattr_name(b"trusted.overlay.overlay.whiteout").as_deref(),
            Some(&b"trusted.overlay.whiteout"[..])
        );
        assert_eq!(
            stored_xattr_name(b"trusted.overlay.whiteout"),
            b"trusted.overlay.overlay.whiteout"
        );
        assert_eq!(stored_xattr_name(b"user.overlay.x"), b"user.overlay.x");
        assert_eq!(stored_xattr_name(b"trusted.foo"), b"trusted.foo");
        assert!(may_list(b"user.a", 1000));
        assert!(!may_list(b"trusted.a", 1000));
        assert!(may_list(b"trusted.a", 0));
    }
}

//! The FUSE filesystem: a read-only view of one image, with external files' contents read,
//! verified, from the object store.
//!
//! Every operation is answered from the mapped image through the format crate's reader;
//! nothing here parses bytes. What is shown follows [`view`] (the kernel overlay mount's
//! view); file data comes from [`crate::read::Objects`] for external files and from the image
//! for inline ones. The image is immutable, so the kernel is told to cache everything for a
//! long time: entries and attributes, file pages (FOPEN_KEEP_CACHE), directory pages
//! (FOPEN_CACHE_DIR) and symlink targets.
//!
//! A session serves `guard::Guarded(ImgFs)`, so a panic in one handler fails only that
//! request (a handler added here must be forwarded there too). Opens and READs are counted
//! in [`stats::ServeStats`].

pub mod daemon;
pub mod daemon_log;
pub mod guard;
pub mod iomode;
pub mod readahead;
pub mod session;
pub mod stats;
pub mod view;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use imgmount_format::erofs::format::{BLOCK_SIZE, FileType};
use imgmount_format::erofs::reader::{DirEntry, Image, ImageError, Inode};

use crate::read::{Object, Objects};
use stats::ServeStats;
use view::InoMap;

/// How long the kernel may cache entries and attributes: the image never changes.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Mount-time choices the filesystem needs.
#[derive(Clone, Copy, Debug, Default)]
pub struct FsOptions {
    /// Offer FUSE passthrough for objects the kernel verifies (needs root).
    pub passthrough: bool,
    /// Files of a listed directory fetched ahead of the one opened (0: none); see
    /// [`readahead`].
    pub read_ahead_files: usize,
}

/// An open external file: its object, and the passthrough registration if the kernel
/// reads it directly (which must live as long as the handle).
struct Handle {
    obj: Arc<Object>,
    /// None: served through the page cache (the inode's cached-open count holds it).
    backing: Option<Arc<BackingId>>,
}

pub struct ImgFs {
    image: Arc<Image>,
    objects: Arc<Objects>,
    inos: InoMap,
    readahead: readahead::ReadAhead,
    handles: Mutex<HashMap<u64, Handle>>,
    /// Paths in the image of inodes whose reads failed, for the log (see `describe`).
    failed_paths: Mutex<HashMap<u64, String>>,
    io_modes: iomode::IoModes<BackingId>,
    next_fh: AtomicU64,
    opts: FsOptions,
    /// Whether the kernel agreed to passthrough at INIT.
    passthrough: bool,
    stats: Arc<ServeStats>,
}

/// The read-ahead fetch: open the object of external file `nid` and read its first bytes,
/// so that the program's open and read find them ready. Failures are left for the
/// program's own open to report.
fn warm_object(
    image: Arc<Image>,
    objects: Arc<Objects>,
    stats: Arc<ServeStats>,
) -> Box<readahead::Fetch> {
    Box::new(move |nid| {
        let Ok(inode) = image.inode(nid) else { return };
        if inode.file_type() != FileType::RegularFile {
            return;
        }
        let Ok(Some(redirect)) = image.redirect(&inode) else {
            return;
        };
        let digest = image.metacopy(&inode).ok().flatten().flatten();
        if let Ok(obj) = objects.open(redirect, digest, inode.size()) {
            objects.warm(&obj);
            stats.read_ahead();
        }
    })
}

/// Logs an image error (the image is corrupt or unsupported there) and maps it to EIO.
fn image_err(op: &str, e: ImageError) -> Errno {
    log::error!("{op}: {e}");
    Errno::EIO
}

impl ImgFs {
    pub fn new(image: Image, objects: Objects, opts: FsOptions) -> Self {
        let (image, objects) = (Arc::new(image), Arc::new(objects));
        let stats = Arc::new(ServeStats::new());
        ImgFs {
            inos: InoMap::new(image.root_nid()),
            readahead: readahead::ReadAhead::new(
                opts.read_ahead_files,
                warm_object(image.clone(), objects.clone(), stats.clone()),
            ),
            image,
            objects,
            handles: Mutex::new(HashMap::new()),
            failed_paths: Mutex::new(HashMap::new()),
            io_modes: iomode::IoModes::default(),
            next_fh: AtomicU64::new(1),
            opts,
            passthrough: false,
            stats,
        }
    }

    /// The mount's counters, shared with whoever reports them.
    pub fn stats(&self) -> Arc<ServeStats> {
        self.stats.clone()
    }

    fn inode(&self, ino: INodeNo) -> Result<Inode<'_>, Errno> {
        self.image
            .inode(self.inos.nid(ino))
            .map_err(|e| image_err("inode", e))
    }

    /// The inode's path in the image, for a message about a refused open or read: the
    /// user knows the file, not its object. Found by walking the image, so remembered.
    fn describe(&self, nid: u64) -> String {
        /// Enough for the files a damaged store fails at, small enough to bound memory.
        const REMEMBERED: usize = 1024;
        let mut known = self.failed_paths.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = known.get(&nid) {
            return path.clone();
        }
        let path = match self.image.path_of(nid) {
            Ok(Some(p)) => String::from_utf8_lossy(&p).into_owned(),
            _ => format!("inode {nid}"),
        };
        if known.len() < REMEMBERED {
            known.insert(nid, path.clone());
        }
        path
    }

    fn is_root(&self, ino: INodeNo) -> bool {
        ino == INodeNo::ROOT
    }

    /// Whether a directory entry is hidden (a root whiteout stub).
    fn hidden(&self, dir: INodeNo, e: &DirEntry<'_>) -> Result<bool, Errno> {
        if !self.is_root(dir) || !view::is_root_stub(e.name, e.file_type, 0) {
            return Ok(false);
        }
        // Name and type match; the device number decides, and the inode says.
        let inode = self
            .image
            .inode(e.nid)
            .map_err(|err| image_err("readdir", err))?;
        Ok(view::is_root_stub(e.name, inode.file_type(), inode.rdev()))
    }

    fn lock_handles(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Handle>> {
        self.handles.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The attributes of `name` in the directory `parent`, or `None` if there is no such
    /// entry: what a FUSE LOOKUP answers (public for benchmarks).
    pub fn do_lookup(&self, parent: INodeNo, name: &OsStr) -> Result<Option<FileAttr>, Errno> {
        guard::debug_panic_on_lookup(name.as_bytes());
        let dir = self.inode(parent)?;
        if !dir.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let Some(e) = self
            .image
            .lookup(&dir, name.as_bytes())
            .map_err(|e| image_err("lookup", e))?
        else {
            return Ok(None);
        };
        let inode = self
            .image
            .inode(e.nid)
            .map_err(|e| image_err("lookup", e))?;
        if self.is_root(parent) && view::is_root_stub(e.name, inode.file_type(), inode.rdev()) {
            return Ok(None);
        }
        Ok(Some(view::attr(&inode, self.inos.ino(e.nid))))
    }

    /// The attributes of inode `ino`: what a FUSE GETATTR answers (public for benchmarks).
    pub fn do_getattr(&self, ino: INodeNo) -> Result<FileAttr, Errno> {
        Ok(view::attr(&self.inode(ino)?, ino))
    }

    /// Opens a file: external files get a handle holding their object (registered for
    /// passthrough when the kernel verifies it and agreed to passthrough at INIT).
    fn do_open(
        &self,
        ino: INodeNo,
        flags: OpenFlags,
        reply: &ReplyOpen,
    ) -> Result<(FileHandle, Option<Arc<BackingId>>), Errno> {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return Err(Errno::EROFS);
        }
        let inode = self.inode(ino)?;
        let redirect = match inode.file_type() {
            FileType::RegularFile => self
                .image
                .redirect(&inode)
                .map_err(|e| image_err("open", e))?,
            _ => None,
        };
        let Some(redirect) = redirect else {
            // Inline or empty: served from the image.
            return Ok((FileHandle(0), None));
        };
        let digest = self
            .image
            .metacopy(&inode)
            .map_err(|e| image_err("open", e))?
            .flatten();
        let obj = self
            .objects
            .open(redirect, digest, inode.size())
            .map_err(|e| {
                log::error!("refused to open {}: {e}", self.describe(inode.nid));
                Errno::EIO
            })?;
        let want_passthrough = self.passthrough && obj.kernel_checked();
        let file = if want_passthrough {
            Some(self.objects.file(&obj).map_err(|e| {
                log::error!("refused to open {}: {e}", self.describe(inode.nid));
                Errno::EIO
            })?)
        } else {
            None
        };
        let (mode, err) = self.io_modes.open(ino.0, want_passthrough, || match &file {
            Some(f) => reply.open_backing(&**f),
            None => Err(std::io::Error::other("no backing file")),
        });
        if let Some(e) = err {
            log::debug!("passthrough not available ({e}); reading in user space");
        }
        let backing = match mode {
            iomode::Opened::Passthrough(b) => Some(b),
            iomode::Opened::Cached => None,
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        // Registered before the reply goes out, so a RELEASE can never come first.
        self.lock_handles().insert(
            fh,
            Handle {
                obj,
                backing: backing.clone(),
            },
        );
        Ok((FileHandle(fh), backing))
    }

    /// Appends the data of a READ to `out`.
    fn do_read(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), Errno> {
        if fh.0 != 0 {
            let obj = match self.lock_handles().get(&fh.0) {
                Some(h) => h.obj.clone(),
                None => return Err(Errno::EBADF),
            };
            // The error names the object and the offset; the log adds the file's path.
            return self.objects.read(&obj, offset, size, out).map_err(|e| {
                log::error!("refused to read {}: {e}", self.describe(self.inos.nid(ino)));
                Errno::EIO
            });
        }
        let inode = self.inode(ino)?;
        let len = inode.size().saturating_sub(offset).min(u64::from(size)) as usize;
        out.resize(len, 0);
        let n = self
            .image
            .read_at(&inode, offset, out)
            .map_err(|e| image_err("read", e))?;
        out.truncate(n);
        Ok(())
    }

    /// Walks a directory from `offset`, calling `add` for each visible entry until it
    /// reports the reply buffer full.
    fn each_entry(
        &self,
        ino: INodeNo,
        offset: u64,
        mut add: impl FnMut(&DirEntry<'_>) -> Result<bool, Errno>,
    ) -> Result<(), Errno> {
        let dir = self.inode(ino)?;
        if !dir.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let iter = self
            .image
            .read_dir(&dir, offset)
            .map_err(|e| image_err("readdir", e))?;
        // The regular files listed, in order, for reading ahead (see `readahead`).
        let mut files = Vec::new();
        let mut next = offset;
        for e in iter {
            let e = e.map_err(|e| image_err("readdir", e))?;
            if self.hidden(ino, &e)? {
                continue;
            }
            if add(&e)? {
                break;
            }
            if e.file_type == FileType::RegularFile {
                files.push(e.nid);
            }
            next = e.next_offset;
        }
        self.readahead
            .listed(self.inos.nid(ino), offset, &files, next);
        Ok(())
    }

    fn xattr_reply(value: &[u8], size: u32, reply: ReplyXattr) {
        match u32::try_from(value.len()) {
            Ok(len) if size == 0 => reply.size(len),
            Ok(len) if len <= size => reply.data(value),
            _ => reply.error(Errno::ERANGE),
        }
    }
}

impl Filesystem for ImgFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Each is an optimisation; a kernel without one simply does without.
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_MAX_PAGES,
        ] {
            let _ = config.add_capabilities(flag);
        }
        if let Err(max) = config.set_max_readahead(4 << 20) {
            let _ = config.set_max_readahead(max);
        }
        // Keep several readahead requests in flight so the FUSE threads hash in parallel.
        let _ = config.set_max_background(64);
        if self.opts.passthrough
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough = true;
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.do_lookup(parent, name) {
            Ok(Some(attr)) => reply.entry(&TTL, &attr, Generation(0)),
            // The image never changes: let the kernel cache the miss too (inode 0 is a
            // negative entry).
            Ok(None) => reply.entry(&TTL, &view::negative_entry(), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.do_getattr(ino) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let inode = match self.inode(ino) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        if inode.file_type() != FileType::Symlink {
            return reply.error(Errno::EINVAL);
        }
        match self.image.read_link(&inode) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(image_err("readlink", e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let opened = self.do_open(ino, flags, &reply);
        if let Ok((_, backing)) = &opened {
            self.stats.opened(ino.0, backing.is_some());
            self.readahead.opened(self.inos.nid(ino));
        }
        match opened {
            Ok((fh, None)) => reply.opened(fh, FopenFlags::FOPEN_KEEP_CACHE),
            // Passthrough opens must not ask to keep the page cache: the kernel answers EIO
            // to that combination.
            Ok((fh, Some(id))) => reply.opened_passthrough(fh, FopenFlags::empty(), &id),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // One buffer per FUSE thread, reused: a fresh 1 MiB allocation per request costs
        // page faults that show in throughput.
        thread_local!(static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) });
        BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.clear();
            match self.do_read(ino, fh, offset, size, &mut buf) {
                Ok(()) => {
                    self.stats.read(ino.0, buf.len());
                    reply.data(&buf)
                }
                Err(e) => reply.error(e),
            }
            // Do not keep an unusually large buffer around.
            if buf.capacity() > 4 << 20 {
                *buf = Vec::new();
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is ever written, so nothing to flush; ENOSYS tells the kernel so once,
        // and it stops sending a FLUSH round trip with every close.
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if fh.0 != 0 {
            let handle = self.lock_handles().remove(&fh.0);
            if let Some(Handle { backing: None, .. }) = handle {
                self.io_modes.release_cached(ino.0);
            }
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.inode(ino) {
            Ok(i) if i.is_dir() => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.each_entry(ino, offset, |e| {
            Ok(reply.add(
                self.inos.ino(e.nid),
                e.next_offset,
                view::kind(e.file_type),
                OsStr::from_bytes(e.name),
            ))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let r = self.each_entry(ino, offset, |e| {
            let inode = self
                .image
                .inode(e.nid)
                .map_err(|err| image_err("readdirplus", err))?;
            let eino = self.inos.ino(e.nid);
            Ok(reply.add(
                eino,
                e.next_offset,
                OsStr::from_bytes(e.name),
                &TTL,
                &view::attr(&inode, eino),
                Generation(0),
            ))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // What the kernel's EROFS reports: the image's blocks and inodes, nothing free.
        let sb = self.image.superblock();
        let blocks = match u64::from(sb.blocks) {
            0 => (self.image.bytes().len() as u64).div_ceil(BLOCK_SIZE as u64),
            n => n,
        };
        reply.statfs(
            blocks,
            0,
            0,
            sb.inos,
            0,
            BLOCK_SIZE as u32,
            255,
            BLOCK_SIZE as u32,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let inode = match self.inode(ino) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        let stored = view::stored_xattr_name(name.as_bytes());
        match self.image.get_xattr(&inode, &stored) {
            Ok(Some(v)) => Self::xattr_reply(v, size, reply),
            Ok(None) => reply.error(Errno::NO_XATTR),
            Err(e) => reply.error(image_err("getxattr", e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let inode = match self.inode(ino) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        let xattrs = match self.image.xattrs(&inode) {
            Ok(x) => x,
            Err(e) => return reply.error(image_err("listxattr", e)),
        };
        let mut list = Vec::new();
        for x in &xattrs {
            if let Some(shown) = view::shown_xattr_name(&x.name)
                && view::may_list(&shown, req.uid())
            {
                list.extend_from_slice(&shown);
                list.push(0);
            }
        }
        Self::xattr_reply(&list, size, reply);
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // What the kernel answers for a file without ioctls: isatty() asks TCGETS of every
        // file it is given, which should cost one quiet round trip.
        reply.error(Errno::ENOTTY);
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        // Only SEEK_DATA and SEEK_HOLE reach the filesystem. Images have no holes: all of
        // a file is data, and the only hole is at its end.
        let size = match self.inode(ino) {
            Ok(i) => i.size(),
            Err(e) => return reply.error(e),
        };
        match (u64::try_from(offset), whence) {
            (Ok(o), libc::SEEK_DATA) if o < size => reply.offset(offset),
            (Ok(o), libc::SEEK_HOLE) if o < size => reply.offset(size as i64),
            (Ok(_), libc::SEEK_DATA | libc::SEEK_HOLE) => reply.error(Errno::ENXIO),
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Permission checks are the kernel's (default_permissions); this is only reached
        // without it, where FUSE grants access to whoever may use the mount.
        reply.ok();
    }
}

//! A panic while answering one FUSE request must not end the mount.
//!
//! fuser runs each request on one of its worker threads; a panic there ends that thread, and
//! `Session::run` then returns an error on joining it, which ends the daemon: for a root
//! filesystem, the machine. So every request handler runs inside [`guarded`]: the panic is
//! caught and logged, the handler's reply (moved into the closure) is dropped while unwinding,
//! and fuser answers a dropped, unanswered reply with EIO. The thread goes on serving.
//!
//! The binary keeps `panic = "unwind"` in every profile for this (see the workspace
//! Cargo.toml); with `abort` nothing could be caught.

use std::any::Any;
use std::ffi::OsStr;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};

use fuser::{
    AccessFlags, FileHandle, Filesystem, INodeNo, IoctlFlags, KernelConfig, LockOwner, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

/// Runs one request's handler; a panic in it is logged and swallowed.
///
/// The state the handlers share stays consistent across a caught panic: the mutexes are
/// taken with `unwrap_or_else(into_inner)`, and nothing else is left half updated.
pub fn guarded(op: &str, handler: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(handler)) {
        log::error!(
            "bug: panic while answering {op} ({}); that request failed with EIO, the mount goes on",
            panic_message(payload.as_ref())
        );
    }
}

/// A filesystem whose every request handler runs [`guarded`]. It forwards exactly the
/// requests [`super::ImgFs`] answers; the others get fuser's default answer (ENOSYS), as
/// they would without the wrapper.
pub struct Guarded<F>(pub F);

impl<F: Filesystem> Filesystem for Guarded<F> {
    fn init(&mut self, req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let fs = &mut self.0;
        catch_unwind(AssertUnwindSafe(|| fs.init(req, config))).unwrap_or_else(|p| {
            Err(io::Error::other(format!(
                "bug: panic in INIT: {}",
                panic_message(p.as_ref())
            )))
        })
    }

    fn destroy(&mut self) {
        let fs = &mut self.0;
        guarded("DESTROY", || fs.destroy());
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        guarded("LOOKUP", || self.0.lookup(req, parent, name, reply));
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        guarded("GETATTR", || self.0.getattr(req, ino, fh, reply));
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        guarded("READLINK", || self.0.readlink(req, ino, reply));
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        guarded("OPEN", || self.0.open(req, ino, flags, reply));
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        guarded("READ", || {
            self.0
                .read(req, ino, fh, offset, size, flags, lock_owner, reply)
        });
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        guarded("FLUSH", || self.0.flush(req, ino, fh, lock_owner, reply));
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        flush: bool,
        reply: ReplyEmpty,
    ) {
        guarded("RELEASE", || {
            self.0
                .release(req, ino, fh, flags, lock_owner, flush, reply)
        });
    }

    fn opendir(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        guarded("OPENDIR", || self.0.opendir(req, ino, flags, reply));
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        guarded("READDIR", || self.0.readdir(req, ino, fh, offset, reply));
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        guarded("READDIRPLUS", || {
            self.0.readdirplus(req, ino, fh, offset, reply)
        });
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        guarded("STATFS", || self.0.statfs(req, ino, reply));
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        guarded("GETXATTR", || self.0.getxattr(req, ino, name, size, reply));
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        guarded("LISTXATTR", || self.0.listxattr(req, ino, size, reply));
    }

    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        guarded("IOCTL", || {
            self.0
                .ioctl(req, ino, fh, flags, cmd, in_data, out_size, reply)
        });
    }

    fn lseek(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        guarded("LSEEK", || {
            self.0.lseek(req, ino, fh, offset, whence, reply)
        });
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        guarded("ACCESS", || self.0.access(req, ino, mask, reply));
    }
}

/// The message a panic was raised with, when it is a string.
pub fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "no message"
    }
}

/// Test hook, in debug builds only: a LOOKUP of the name in `IMGMOUNT_DEBUG_PANIC_LOOKUP`
/// panics, so the tests can show that a panicking request leaves the mount serving.
#[cfg(debug_assertions)]
pub fn debug_panic_on_lookup(name: &[u8]) {
    use std::sync::OnceLock;
    static NAME: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    let wanted = NAME.get_or_init(|| {
        std::env::var_os("IMGMOUNT_DEBUG_PANIC_LOOKUP")
            .map(std::os::unix::ffi::OsStringExt::into_vec)
    });
    if wanted.as_deref() == Some(name) {
        panic!(
            "IMGMOUNT_DEBUG_PANIC_LOOKUP: lookup of {:?}",
            String::from_utf8_lossy(name)
        );
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn debug_panic_on_lookup(_name: &[u8]) {}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// Stands in for a fuser reply: records whether it was answered or dropped unanswered
    /// (which is when fuser sends EIO).
    struct FakeReply<'a> {
        dropped_unanswered: &'a Cell<bool>,
        answered: bool,
    }

    impl FakeReply<'_> {
        fn ok(mut self) {
            self.answered = true;
        }
    }

    impl Drop for FakeReply<'_> {
        fn drop(&mut self) {
            if !self.answered {
                self.dropped_unanswered.set(true);
            }
        }
    }

    #[test]
    fn a_panicking_handler_drops_its_reply_and_returns() {
        let eio = Cell::new(false);
        let reply = FakeReply {
            dropped_unanswered: &eio,
            answered: false,
        };
        // Returning at all is half the point: the panic did not unwind past `guarded`.
        guarded("LOOKUP", move || {
            let _reply = reply;
            panic!("boom");
        });
        assert!(
            eio.get(),
            "the reply was dropped unanswered, so fuser sends EIO"
        );
    }

    #[test]
    fn a_normal_handler_answers() {
        let eio = Cell::new(false);
        let reply = FakeReply {
            dropped_unanswered: &eio,
            answered: false,
        };
        guarded("READ", move || reply.ok());
        assert!(!eio.get());
    }

    #[test]
    fn messages() {
        let p = catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "static");
        let p = catch_unwind(|| panic!("formatted {}", 1)).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "formatted 1");
        let p = catch_unwind(|| std::panic::panic_any(7u32)).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "no message");
    }
}

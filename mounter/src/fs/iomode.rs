//! One FUSE inode, one I/O mode at a time.
//!
//! The kernel lets an inode be open either through the page cache (the daemon answers READs)
//! or by passthrough to one backing file, never both, and every passthrough open of an inode
//! must name the same backing registration: an open that breaks either rule fails with EIO
//! (fs/fuse/iomode.c). So the daemon registers one backing file per inode and hands the same
//! one to every concurrent open, and once an inode is open through the page cache (its object
//! was not kernel-verified when first opened, say before `imgmount enable-verity`) it stays
//! there until the last such open is released.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, Weak};

/// How one open of an inode is served.
pub enum Opened<B> {
    Passthrough(Arc<B>),
    Cached,
}

struct InodeIo<B> {
    cached: u32,
    backing: Weak<B>,
}

/// The I/O mode of every open inode; `B` is the backing registration (fuser's BackingId).
pub struct IoModes<B> {
    inodes: Mutex<HashMap<u64, InodeIo<B>>>,
}

impl<B> Default for IoModes<B> {
    fn default() -> Self {
        IoModes {
            inodes: Mutex::new(HashMap::new()),
        }
    }
}

impl<B> IoModes<B> {
    /// Decides how an open of `ino` is served. A live registration is shared; a new one is
    /// made with `register` only if `passthrough` is wanted and no cached open exists. A
    /// failed registration falls back to the page cache (the error is returned alongside).
    pub fn open(
        &self,
        ino: u64,
        passthrough: bool,
        register: impl FnOnce() -> io::Result<B>,
    ) -> (Opened<B>, Option<io::Error>) {
        let mut inodes = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
        let e = inodes.entry(ino).or_insert_with(|| InodeIo {
            cached: 0,
            backing: Weak::new(),
        });
        if let Some(b) = e.backing.upgrade() {
            return (Opened::Passthrough(b), None);
        }
        if passthrough && e.cached == 0 {
            // Registered under the lock, so two opens cannot register twice.
            match register() {
                Ok(b) => {
                    let b = Arc::new(b);
                    e.backing = Arc::downgrade(&b);
                    return (Opened::Passthrough(b), None);
                }
                Err(err) => {
                    e.cached += 1;
                    return (Opened::Cached, Some(err));
                }
            }
        }
        e.cached += 1;
        (Opened::Cached, None)
    }

    /// A cached open of `ino` was released.
    pub fn release_cached(&self, ino: u64) {
        let mut inodes = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = inodes.get_mut(&ino) {
            e.cached = e.cached.saturating_sub(1);
            if e.cached == 0 && e.backing.strong_count() == 0 {
                inodes.remove(&ino);
            }
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.inodes.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(n: &std::cell::Cell<u32>) -> impl FnOnce() -> io::Result<u32> + '_ {
        move || {
            n.set(n.get() + 1);
            Ok(n.get())
        }
    }

    #[test]
    fn concurrent_passthrough_opens_share_one_registration() {
        let m = IoModes::default();
        let n = std::cell::Cell::new(0);
        let (Opened::Passthrough(a), None) = m.open(7, true, reg(&n)) else {
            panic!()
        };
        let (Opened::Passthrough(b), None) = m.open(7, true, reg(&n)) else {
            panic!()
        };
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(n.get(), 1, "registered once");
        drop((a, b));
        // All closed: the next open registers afresh.
        let (Opened::Passthrough(c), _) = m.open(7, true, reg(&n)) else {
            panic!()
        };
        assert_eq!(*c, 2);
    }

    #[test]
    fn an_inode_open_through_the_cache_stays_there() {
        let m = IoModes::<u32>::default();
        let n = std::cell::Cell::new(0);
        // Opened before its object had kernel verity.
        assert!(matches!(m.open(3, false, reg(&n)), (Opened::Cached, None)));
        // Verity enabled since: still cached while the first open lives.
        assert!(matches!(m.open(3, true, reg(&n)), (Opened::Cached, None)));
        assert_eq!(n.get(), 0);
        m.release_cached(3);
        m.release_cached(3);
        assert_eq!(m.tracked(), 0, "forgotten when the last open goes");
        assert!(matches!(
            m.open(3, true, reg(&n)),
            (Opened::Passthrough(_), None)
        ));
    }

    #[test]
    fn a_live_registration_is_used_even_if_not_asked_for() {
        let m = IoModes::default();
        let n = std::cell::Cell::new(0);
        let (Opened::Passthrough(_a), _) = m.open(9, true, reg(&n)) else {
            panic!()
        };
        // Any later open must use the same backing file, or the kernel refuses it.
        assert!(matches!(
            m.open(9, false, reg(&n)),
            (Opened::Passthrough(_), None)
        ));
    }

    #[test]
    fn a_failed_registration_falls_back_to_the_cache() {
        let m = IoModes::<u32>::default();
        let (o, err) = m.open(1, true, || Err(io::Error::other("no")));
        assert!(matches!(o, Opened::Cached));
        assert!(err.is_some());
        // And the inode is now in cached mode: no registration attempt while it is open.
        let (o, err) = m.open(1, true, || panic!("must not register"));
        assert!(matches!(o, Opened::Cached) && err.is_none());
    }
}

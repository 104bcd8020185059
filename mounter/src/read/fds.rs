//! A bounded set of open object files.
//!
//! Every open FUSE handle keeps its [`super::Object`], but not a descriptor: tens of
//! thousands of files held open by readers would otherwise take as many descriptors and end
//! in EMFILE. Descriptors live here instead, at most `capacity` of them (plus those in use
//! by reads in flight); the least recently used are closed, and an object whose descriptor
//! was closed is opened again (and checked again) on its next read.

use std::fs::File;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;

/// Shards, so that reads of different objects rarely wait for one another.
const SHARDS: usize = 16;

/// Open files by object id, least recently used first out.
type Shard = LruCache<u64, Arc<File>>;

pub struct FdPool {
    shards: Box<[Mutex<Shard>]>,
}

impl FdPool {
    /// A pool keeping at most about `capacity` descriptors (at least one per shard).
    pub fn new(capacity: usize) -> Self {
        let per = NonZeroUsize::new(capacity.div_ceil(SHARDS)).unwrap_or(NonZeroUsize::MIN);
        FdPool {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per)))
                .collect(),
        }
    }

    fn shard(&self, id: u64) -> MutexGuard<'_, Shard> {
        let i = (id % SHARDS as u64) as usize;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open file of object `id`, if it is still open.
    pub fn get(&self, id: u64) -> Option<Arc<File>> {
        self.shard(id).get(&id).cloned()
    }

    /// Keeps `file` as the open file of object `id`, closing the least recently used one
    /// of its shard if the shard is full (once no read uses it any more).
    pub fn put(&self, id: u64, file: Arc<File>) {
        self.shard(id).put(id, file);
    }

    /// How many descriptors the pool holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_bounded_number_open() {
        let pool = FdPool::new(32);
        for id in 0..1000u64 {
            pool.put(id, Arc::new(tempfile::tempfile().unwrap()));
        }
        assert_eq!(pool.len(), 32);
        assert!(pool.get(999).is_some());
        assert!(pool.get(0).is_none());
    }
}

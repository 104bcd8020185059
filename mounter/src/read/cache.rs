//! A size-bounded cache of data that has passed verification.
//!
//! The unit is a segment of [`SEGMENT`] bytes (16 fs-verity blocks), not a single block:
//! per-entry costs (a hash-map node, an allocation, an eviction) paid per 4 KiB block cost
//! more than hashing the block again, while per 64 KiB they are noise. Each entry is its own
//! allocation, so the bound in bytes is exact.
//!
//! Sequential reads of large files evict a segment for every one they insert. The evicted
//! segments' buffers (when no reader still holds them) are kept in a small per-shard pool
//! and handed out for the next segments read, so a long read reuses memory that is already
//! mapped instead of faulting in (and zeroing) fresh pages for every 64 KiB.
//!
//! `lru::LruCache` is not thread safe, and every FUSE thread reads through this cache, so it
//! is split into shards, each behind its own mutex: two reads contend only when their
//! segments hash to the same shard. The bound is split evenly between the shards.

use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

/// Number of shards: a power of two well above the number of FUSE threads.
const SHARDS: usize = 32;

/// Bytes per cache entry: 16 blocks of 4096.
pub const SEGMENT: usize = 16 * 4096;

/// Identifies one segment: the cache-wide id of its object and the segment's index in it.
pub type BlockKey = (u64, u64);

/// A verified segment (shorter at the end of a file), shared between the cache and readers
/// copying out of it.
pub type Block = Arc<Vec<u8>>;

/// Spare buffers kept per shard for reuse (beyond these, evicted buffers are freed).
const POOL_PER_SHARD: usize = 4;

/// One shard: its part of the LRU, and buffers of evicted segments ready for reuse.
struct Shard {
    lru: LruCache<BlockKey, Block>,
    pool: Vec<Vec<u8>>,
}

/// Sharded LRU of verified segments, bounded in bytes.
pub struct BlockCache {
    /// Empty when the cache is disabled (size 0).
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
}

impl BlockCache {
    /// A cache holding at most `bytes` bytes in entries of `block_size` bytes (rounded down
    /// to whole entries per shard; at least one per shard unless `bytes` is 0).
    pub fn new(bytes: u64, block_size: usize) -> Self {
        let blocks = bytes / block_size.max(1) as u64;
        let per_shard = usize::try_from(blocks / SHARDS as u64).unwrap_or(usize::MAX);
        let shards = match NonZeroUsize::new(per_shard.max(usize::from(blocks > 0))) {
            Some(cap) => (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        lru: LruCache::new(cap),
                        pool: Vec::new(),
                    })
                })
                .collect(),
            None => Vec::new(),
        };
        BlockCache {
            shards,
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &BlockKey) -> Option<std::sync::MutexGuard<'_, Shard>> {
        if self.shards.is_empty() {
            return None;
        }
        let h = self.hasher.hash_one(key) as usize;
        // A poisoned shard only means another reader panicked mid-update of the LRU list;
        // blocks in it were verified before insertion, so keep using it.
        self.shards
            .get(h % self.shards.len())
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The block, if cached (and marks it recently used).
    pub fn get(&self, key: &BlockKey) -> Option<Block> {
        self.shard(key)?.lru.get(key).cloned()
    }

    /// A buffer of `len` bytes to read the segment `key` into: a recycled one from the
    /// shard it will be cached in when there is one, else a new one. Its contents are
    /// arbitrary (old data, or zeros).
    pub fn buffer(&self, key: &BlockKey, len: usize) -> Vec<u8> {
        let mut buf = self
            .shard(key)
            .and_then(|mut s| s.pool.pop())
            .unwrap_or_default();
        if buf.len() != len {
            buf.resize(len, 0);
        }
        buf
    }

    /// Inserts a block; callers insert only blocks that passed verification. The buffer
    /// of the block it evicts (or replaces) is kept for [`BlockCache::buffer`] if no reader
    /// holds it any more.
    pub fn insert(&self, key: BlockKey, block: Block) {
        if let Some(mut shard) = self.shard(&key)
            && let Some((_, old)) = shard.lru.push(key, block)
            && shard.pool.len() < POOL_PER_SHARD
            && let Ok(buf) = Arc::try_unwrap(old)
        {
            shard.pool.push(buf);
        }
    }

    /// Gives back a buffer from [`BlockCache::buffer`] that was not inserted.
    pub fn recycle(&self, key: &BlockKey, buf: Vec<u8>) {
        if let Some(mut shard) = self.shard(key)
            && shard.pool.len() < POOL_PER_SHARD
        {
            shard.pool.push(buf);
        }
    }

    /// Number of cached entries.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).lru.len())
            .sum()
    }

    /// Maximum number of entries the cache holds.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).lru.cap().get())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_bytes() {
        let cache = BlockCache::new(64 * 4096, 4096);
        assert_eq!(cache.capacity(), 64);
        for i in 0..1000u64 {
            cache.insert((1, i), Arc::new(vec![i as u8; 16]));
        }
        assert!(cache.len() <= 64, "{} blocks cached", cache.len());
        assert!(cache.len() > 0);
    }

    #[test]
    fn get_returns_what_was_inserted() {
        let cache = BlockCache::new(1 << 20, 4096);
        cache.insert((7, 3), Arc::new(b"abc".to_vec()));
        assert_eq!(
            cache.get(&(7, 3)).as_deref().map(Vec::as_slice),
            Some(&b"abc"[..])
        );
        assert!(cache.get(&(7, 4)).is_none());
        assert!(cache.get(&(8, 3)).is_none());
    }

    #[test]
    fn evicted_buffers_are_reused() {
        let cache = BlockCache::new(SHARDS as u64 * 4096, 4096);
        for i in 0..1000u64 {
            let mut buf = cache.buffer(&(1, i), 4096);
            assert_eq!(buf.len(), 4096);
            buf.fill(i as u8);
            cache.insert((1, i), Arc::new(buf));
        }
        assert!(
            cache
                .shards
                .iter()
                .any(|s| !s.lock().unwrap().pool.is_empty())
        );
        assert_eq!(cache.buffer(&(1, 5000), 100).len(), 100);
        // A buffer a reader still holds is not recycled.
        let held = cache.get(&(1, 999)).unwrap();
        cache.insert((1, 999), Arc::new(vec![0; 4096]));
        assert_eq!(held[0], 999u64 as u8);
    }

    #[test]
    fn zero_size_disables() {
        let cache = BlockCache::new(0, 4096);
        cache.insert((1, 1), Arc::new(b"x".to_vec()));
        assert!(cache.get(&(1, 1)).is_none());
        assert_eq!(cache.capacity(), 0);
    }
}

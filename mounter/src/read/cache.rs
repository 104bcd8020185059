//! A size-bounded cache of data that has passed verification.
//!
//! The unit is a segment of [`SEGMENT`] bytes (16 fs-verity blocks), not a single block:
//! per-entry costs (a hash-map node, an allocation, an eviction) paid per 4 KiB block cost
//! more than hashing the block again, while per 64 KiB they are noise. Each entry is its own
//! allocation, so the bound in bytes is exact.
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

/// Sharded LRU of verified segments, bounded in bytes.
pub struct BlockCache {
    /// Empty when the cache is disabled (size 0).
    shards: Vec<Mutex<LruCache<BlockKey, Block>>>,
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
                .map(|_| Mutex::new(LruCache::new(cap)))
                .collect(),
            None => Vec::new(),
        };
        BlockCache {
            shards,
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &BlockKey) -> Option<&Mutex<LruCache<BlockKey, Block>>> {
        if self.shards.is_empty() {
            return None;
        }
        let h = self.hasher.hash_one(key) as usize;
        self.shards.get(h % self.shards.len())
    }

    /// The block, if cached (and marks it recently used).
    pub fn get(&self, key: &BlockKey) -> Option<Block> {
        let shard = self.shard(key)?;
        // A poisoned shard only means another reader panicked mid-update of the LRU list;
        // blocks in it were verified before insertion, so keep using it.
        let mut lru = shard.lock().unwrap_or_else(|e| e.into_inner());
        lru.get(key).cloned()
    }

    /// Inserts a block; callers insert only blocks that passed verification.
    pub fn insert(&self, key: BlockKey, block: Block) {
        if let Some(shard) = self.shard(&key) {
            let mut lru = shard.lock().unwrap_or_else(|e| e.into_inner());
            lru.put(key, block);
        }
    }

    /// Number of cached entries.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Maximum number of entries the cache holds.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).cap().get())
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
    fn zero_size_disables() {
        let cache = BlockCache::new(0, 4096);
        cache.insert((1, 1), Arc::new(b"x".to_vec()));
        assert!(cache.get(&(1, 1)).is_none());
        assert_eq!(cache.capacity(), 0);
    }
}

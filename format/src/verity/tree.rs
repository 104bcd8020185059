//! A complete fs-verity Merkle tree, and verification of single data blocks against it.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{
    BLOCK_SIZE, Digest, HASH_BATCH, HashAlg, HashBuf, MAX_DIGEST_LEN, VerityError,
    descriptor_digest,
};

/// More levels than any `u64` data size can need: at least 64 hashes fit in a block, so each
/// level divides the block count by 64 or more, and 2^52 blocks take at most 9 levels.
const MAX_LEVELS: usize = 16;

/// Where one level of the tree lives in the serialized bytes, in blocks.
#[derive(Clone, Copy, Debug, Default)]
struct Level {
    first_block: u64,
    blocks: u64,
}

/// The Merkle tree of one file, as the kernel stores it: the level nearest the root first,
/// down to the leaf level (level 0, the hashes of the data blocks); each level's hashes packed
/// into zero-padded 4096-byte blocks. Files of at most one block have no tree blocks.
///
/// A tree is always tied to the digest it is expected to produce. Trees loaded from untrusted
/// bytes ([`MerkleTree::from_bytes`]) are checked lazily: a tree block is hashed and compared
/// with its parent the first time a data block below it is verified, then remembered as
/// verified, so checking a data block costs one data hash plus one hash per tree block on its
/// path not yet verified. Verification takes `&self` and is safe from several threads.
pub struct MerkleTree {
    alg: HashAlg,
    data_size: u64,
    digest: Digest,
    /// Known from the start unless this is a one-block file loaded from bytes: then the root
    /// is the data block's hash, learned when that block is first verified.
    root: OnceLock<HashBuf>,
    bytes: Vec<u8>,
    /// Indexed from the leaf level (0) up; the last level has one block.
    levels: Vec<Level>,
    /// One bit per tree block: hashed and found equal to its verified parent's entry.
    verified: Box<[AtomicU64]>,
}

/// The block layout of the tree for `data_size` bytes, leaf level first.
fn geometry(alg: HashAlg, data_size: u64) -> Vec<Level> {
    let per = alg.hashes_per_block() as u64;
    let mut levels = Vec::new();
    let mut count = data_size.div_ceil(BLOCK_SIZE as u64);
    while count > 1 {
        count = count.div_ceil(per);
        levels.push(Level {
            first_block: 0,
            blocks: count,
        });
    }
    // Serialized root level first.
    let mut next = 0;
    for level in levels.iter_mut().rev() {
        level.first_block = next;
        next += level.blocks;
    }
    levels
}

impl MerkleTree {
    /// A tree this process computed itself: every block is trusted already.
    pub(crate) fn from_trusted_parts(
        alg: HashAlg,
        data_size: u64,
        root: HashBuf,
        bytes: Vec<u8>,
    ) -> Self {
        let levels = geometry(alg, data_size);
        let digest = descriptor_digest(alg, data_size, &root[..alg.digest_len()]);
        let tree = MerkleTree::new(alg, data_size, digest, bytes, levels);
        let _ = tree.root.set(root);
        debug_assert_eq!(
            tree.levels.iter().map(|l| l.blocks).sum::<u64>(),
            tree.num_tree_blocks()
        );
        let blocks = tree.num_tree_blocks();
        for (i, word) in tree.verified.iter().enumerate() {
            let bits = (blocks - i as u64 * 64).min(64);
            word.store(low_bits(bits), Ordering::Relaxed);
        }
        tree
    }

    fn new(
        alg: HashAlg,
        data_size: u64,
        digest: Digest,
        bytes: Vec<u8>,
        levels: Vec<Level>,
    ) -> Self {
        let blocks = (bytes.len() / BLOCK_SIZE) as u64;
        let verified = (0..blocks.div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        MerkleTree {
            alg,
            data_size,
            digest,
            root: OnceLock::new(),
            bytes,
            levels,
            verified,
        }
    }

    /// How many bytes the serialized tree of `data_size` bytes of data has: what a sidecar
    /// must be, known before reading one (0 for files of at most one block).
    pub fn serialized_len(alg: HashAlg, data_size: u64) -> u64 {
        geometry(alg, data_size)
            .iter()
            .map(|l| l.blocks)
            .sum::<u64>()
            * BLOCK_SIZE as u64
    }

    /// Loads a tree from untrusted bytes (a sidecar file), for data of `data_size` bytes that
    /// must have the digest `expected`.
    ///
    /// Checks the length, and that the top tree block and `data_size` give `expected`; the
    /// other blocks are checked as data blocks below them are verified. For files of at most
    /// one block `bytes` is empty, and the digest can only be checked against the data block.
    pub fn from_bytes(
        expected: Digest,
        data_size: u64,
        bytes: Vec<u8>,
    ) -> Result<Self, VerityError> {
        let alg = expected.alg();
        let levels = geometry(alg, data_size);
        let want_len = MerkleTree::serialized_len(alg, data_size);
        if bytes.len() as u64 != want_len {
            return Err(VerityError::TreeSize {
                data_size,
                expected: want_len,
                found: bytes.len() as u64,
            });
        }
        let tree = MerkleTree::new(alg, data_size, expected, bytes, levels);

        let root = match tree.levels.last() {
            // The top level is a single block; its hash is the root hash.
            Some(top) => Some(alg.hash_block(tree.tree_block(top.first_block))),
            None if data_size == 0 => Some([0; MAX_DIGEST_LEN]),
            None => None,
        };
        if let Some(root) = root {
            let actual = descriptor_digest(alg, data_size, &root[..alg.digest_len()]);
            if actual != expected {
                return Err(VerityError::DigestMismatch {
                    expected: Box::new(expected),
                    actual: Box::new(actual),
                });
            }
            let _ = tree.root.set(root);
            if let Some(top) = tree.levels.last() {
                tree.mark_verified(top.first_block);
            }
        }
        Ok(tree)
    }

    pub fn alg(&self) -> HashAlg {
        self.alg
    }

    /// Size of the data the tree covers.
    pub fn data_size(&self) -> u64 {
        self.data_size
    }

    /// The digest the tree was built with or checked against. For a one-block file loaded
    /// from bytes it is confirmed only once the data block verifies.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The root hash, if known: always, except for a one-block file loaded from bytes whose
    /// data block has not been verified yet.
    pub fn root_hash(&self) -> Option<&[u8]> {
        self.root.get().map(|r| &r[..self.alg.digest_len()])
    }

    /// The serialized tree, exactly as the kernel stores it and as
    /// `fsverity digest --out-merkle-tree` writes it.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Number of data blocks (the last one possibly short).
    pub fn num_data_blocks(&self) -> u64 {
        self.data_size.div_ceil(BLOCK_SIZE as u64)
    }

    /// Number of 4096-byte tree blocks.
    pub fn num_tree_blocks(&self) -> u64 {
        (self.bytes.len() / BLOCK_SIZE) as u64
    }

    /// Number of tree levels (0 for files of at most one block).
    pub fn depth(&self) -> usize {
        self.levels.len()
    }

    /// Checks one data block: `data` is its content, [`BLOCK_SIZE`] bytes or, for the last
    /// block, what is left of the file. On success every byte of `data` is the byte the
    /// digest names.
    pub fn verify_data_block(&self, block_index: u64, data: &[u8]) -> Result<(), VerityError> {
        let blocks = self.num_data_blocks();
        if block_index >= blocks {
            return Err(VerityError::BlockOutOfRange {
                block: block_index,
                blocks,
            });
        }
        let expected = self.block_len(block_index);
        if data.len() != expected {
            return Err(VerityError::BlockLength {
                block: block_index,
                expected,
                found: data.len(),
            });
        }
        self.verify_in_range(block_index, data)
    }

    /// Checks consecutive data blocks starting at `first`: `data` is their content, whole
    /// blocks except that it may end with the file's last, short block. Blocks are hashed
    /// several at a time (see [`HashAlg`]'s interleaved SHA-256), so a run of blocks costs
    /// less than checking them one by one. On success every byte of `data` is the byte the
    /// digest names; on failure the error names the first block that does not verify (the
    /// blocks after it were not all checked).
    pub fn verify_data_blocks(&self, first: u64, data: &[u8]) -> Result<(), VerityError> {
        let blocks = self.num_data_blocks();
        // Empty data counts as one (empty, so wrong) block.
        let count = data.len().div_ceil(BLOCK_SIZE).max(1);
        let last = first.saturating_add(count as u64 - 1);
        if last >= blocks {
            return Err(VerityError::BlockOutOfRange {
                block: last,
                blocks,
            });
        }
        // Every block but the last must be whole; the last must be exactly what the file
        // has left from there.
        let expected = self.block_len(last);
        let found = data.len() - (count - 1) * BLOCK_SIZE;
        if found != expected {
            return Err(VerityError::BlockLength {
                block: last,
                expected,
                found,
            });
        }
        self.verify_in_range(first, data)
    }

    /// Length of data block `block_index`, which is in range: [`BLOCK_SIZE`], or what is left
    /// of the file for the last block.
    fn block_len(&self, block_index: u64) -> usize {
        (self.data_size - block_index * BLOCK_SIZE as u64).min(BLOCK_SIZE as u64) as usize
    }

    /// [`MerkleTree::verify_data_blocks`] once the range and lengths have been checked.
    fn verify_in_range(&self, first: u64, data: &[u8]) -> Result<(), VerityError> {
        if self.levels.is_empty() {
            // One data block: its hash is the root hash.
            return self.verify_root(&self.alg.hash_block(data), first);
        }
        let (whole, tail) = data.split_at(data.len() / BLOCK_SIZE * BLOCK_SIZE);
        let mut hashes = [[0; MAX_DIGEST_LEN]; HASH_BATCH];
        let mut block = first;
        for batch in whole.chunks(HASH_BATCH * BLOCK_SIZE) {
            let hashes = &mut hashes[..batch.len() / BLOCK_SIZE];
            self.alg.hash_blocks(batch, hashes);
            for hash in hashes.iter() {
                self.check_leaf(block, hash)?;
                block += 1;
            }
        }
        if !tail.is_empty() {
            self.check_leaf(block, &self.alg.hash_block(tail))?;
        }
        Ok(())
    }

    /// Compares a data block's hash with its entry in the leaf level, first verifying the
    /// tree blocks on its path that are not verified yet.
    fn check_leaf(&self, block_index: u64, hash: &HashBuf) -> Result<(), VerityError> {
        let len = self.alg.digest_len();
        let (leaf, slot) = self.verified_leaf(block_index)?;
        if self.tree_block(leaf)[slot * len..(slot + 1) * len] != hash[..len] {
            return Err(VerityError::DataBlockMismatch { block: block_index });
        }
        Ok(())
    }

    /// The leaf tree block holding the hash of data block `block_index`, and the slot of
    /// that hash in it, after checking every tree block on its path that is not verified yet.
    fn verified_leaf(&self, block_index: u64) -> Result<(u64, usize), VerityError> {
        let len = self.alg.digest_len();
        // Walk up from the leaf entry for this block until a tree block already verified
        // (the top block always is), remembering the path.
        let per = self.alg.hashes_per_block() as u64;
        let mut path = [(0u64, 0usize); MAX_LEVELS];
        let mut depth = 0;
        let mut index = block_index;
        for level in self.levels.iter().take(MAX_LEVELS) {
            let block = level.first_block + index / per;
            path[depth] = (block, (index % per) as usize);
            depth += 1;
            if self.is_verified(block) {
                break;
            }
            index /= per;
        }
        let (top_block, _) = path[depth - 1];
        if !self.is_verified(top_block) {
            // Only reachable if the root could not be established; from_bytes and
            // from_trusted_parts both mark the top block.
            return Err(VerityError::TreeBlockMismatch {
                level: depth - 1,
                index: top_block - self.levels[depth - 1].first_block,
            });
        }

        // Verify downwards: each tree block against the entry in its (now trusted) parent.
        for i in (1..depth).rev() {
            let (parent, slot) = path[i];
            let (child, _) = path[i - 1];
            let entry = &self.tree_block(parent)[slot * len..(slot + 1) * len];
            if self.alg.hash_block(self.tree_block(child))[..len] != *entry {
                return Err(VerityError::TreeBlockMismatch {
                    level: i - 1,
                    index: child - self.levels[i - 1].first_block,
                });
            }
            self.mark_verified(child);
        }
        Ok(path[0])
    }

    /// For a one-block file: the data block's hash must give the expected digest.
    fn verify_root(&self, hash: &HashBuf, block_index: u64) -> Result<(), VerityError> {
        let len = self.alg.digest_len();
        match self.root.get() {
            Some(root) if root[..len] == hash[..len] => Ok(()),
            Some(_) => Err(VerityError::DataBlockMismatch { block: block_index }),
            None => {
                if descriptor_digest(self.alg, self.data_size, &hash[..len]) != self.digest {
                    return Err(VerityError::DataBlockMismatch { block: block_index });
                }
                let _ = self.root.set(*hash);
                Ok(())
            }
        }
    }

    /// Checks every tree block against its parent, top down (for fsck). Costs one hash per
    /// tree block not verified before.
    pub fn verify_tree(&self) -> Result<(), VerityError> {
        let len = self.alg.digest_len();
        let per = self.alg.hashes_per_block() as u64;
        // The top block is verified at construction; go down from the level below it.
        for i in (0..self.levels.len().saturating_sub(1)).rev() {
            let level = self.levels[i];
            let parent_level = self.levels[i + 1];
            for index in 0..level.blocks {
                let block = level.first_block + index;
                if self.is_verified(block) {
                    continue;
                }
                let parent = parent_level.first_block + index / per;
                let slot = (index % per) as usize;
                let entry = &self.tree_block(parent)[slot * len..(slot + 1) * len];
                if self.alg.hash_block(self.tree_block(block))[..len] != *entry {
                    return Err(VerityError::TreeBlockMismatch { level: i, index });
                }
                self.mark_verified(block);
            }
        }
        Ok(())
    }

    /// Tree block by its index in the serialized bytes. The length was checked at construction
    /// and all indexes come from the geometry, so this is in bounds.
    fn tree_block(&self, block: u64) -> &[u8] {
        let start = block as usize * BLOCK_SIZE;
        &self.bytes[start..start + BLOCK_SIZE]
    }

    fn is_verified(&self, block: u64) -> bool {
        let word = &self.verified[(block / 64) as usize];
        word.load(Ordering::Acquire) & (1 << (block % 64)) != 0
    }

    fn mark_verified(&self, block: u64) {
        let word = &self.verified[(block / 64) as usize];
        word.fetch_or(1 << (block % 64), Ordering::Release);
    }
}

/// A word with the lowest `bits` bits set.
fn low_bits(bits: u64) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1 << bits) - 1
    }
}

impl fmt::Debug for MerkleTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MerkleTree")
            .field("digest", &self.digest)
            .field("data_size", &self.data_size)
            .field("tree_blocks", &self.num_tree_blocks())
            .field("depth", &self.depth())
            .finish_non_exhaustive()
    }
}

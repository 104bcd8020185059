//! Streaming fs-verity digest computation.

use super::{BLOCK_SIZE, Digest, HASH_BATCH, HashAlg, HashBuf, MAX_DIGEST_LEN, MerkleTree};

/// Computes an fs-verity digest over data fed in chunks of any size.
///
/// Memory is one pending block per tree level (a handful of KiB), unless the hasher was made
/// with [`FsVerityHasher::with_tree`], which also keeps every finished tree block (about
/// 1/128 of the data size for SHA-256, 1/64 for SHA-512).
///
/// ```
/// use imgmount_format::verity::{FsVerityHasher, HashAlg};
/// let mut h = FsVerityHasher::new(HashAlg::Sha256);
/// h.update(b"hello ");
/// h.update(b"world");
/// let digest = h.finalize();
/// assert_eq!(digest.alg(), HashAlg::Sha256);
/// ```
pub struct FsVerityHasher {
    alg: HashAlg,
    data_size: u64,
    /// The current partial data block; only used when input does not arrive block aligned.
    block: Box<[u8; BLOCK_SIZE]>,
    block_len: usize,
    /// `levels[0]` collects the hashes of data blocks (the kernel's leaf level 0),
    /// `levels[k]` the hashes of the blocks of `levels[k - 1]`.
    levels: Vec<Level>,
    record_tree: bool,
}

struct Level {
    /// Hashes not yet making up a full block; at most `BLOCK_SIZE` bytes.
    pending: Vec<u8>,
    /// Hashes pushed into this level so far.
    count: u64,
    /// Finished blocks of this level, only kept when recording the tree.
    blocks: Vec<u8>,
}

impl FsVerityHasher {
    /// A hasher that only computes the digest.
    pub fn new(alg: HashAlg) -> Self {
        FsVerityHasher {
            alg,
            data_size: 0,
            block: Box::new([0; BLOCK_SIZE]),
            block_len: 0,
            levels: Vec::new(),
            record_tree: false,
        }
    }

    /// A hasher that also keeps the Merkle tree, for [`FsVerityHasher::finalize_with_tree`].
    pub fn with_tree(alg: HashAlg) -> Self {
        FsVerityHasher {
            record_tree: true,
            ..FsVerityHasher::new(alg)
        }
    }

    pub fn alg(&self) -> HashAlg {
        self.alg
    }

    /// Bytes fed so far.
    pub fn data_size(&self) -> u64 {
        self.data_size
    }

    /// Feeds more data. Whole blocks are hashed straight from `data`; only a block split
    /// across calls is copied.
    pub fn update(&mut self, mut data: &[u8]) {
        self.data_size += data.len() as u64;

        if self.block_len > 0 {
            let take = (BLOCK_SIZE - self.block_len).min(data.len());
            self.block[self.block_len..self.block_len + take].copy_from_slice(&data[..take]);
            self.block_len += take;
            data = &data[take..];
            if self.block_len < BLOCK_SIZE {
                return;
            }
            let hash = self.alg.hash_block(&self.block[..]);
            self.push(0, &hash);
            self.block_len = 0;
        }

        // Whole blocks in batches, so that several are hashed at once where the CPU can.
        let (whole, rest) = data.split_at(data.len() / BLOCK_SIZE * BLOCK_SIZE);
        let mut hashes = [[0; MAX_DIGEST_LEN]; HASH_BATCH];
        for batch in whole.chunks(HASH_BATCH * BLOCK_SIZE) {
            let hashes = &mut hashes[..batch.len() / BLOCK_SIZE];
            self.alg.hash_blocks(batch, hashes);
            for hash in hashes.iter() {
                self.push(0, hash);
            }
        }
        self.block[..rest.len()].copy_from_slice(rest);
        self.block_len = rest.len();
    }

    /// Appends a hash to `level`, hashing the level's block into the next level whenever it
    /// fills up. A full block never changes again, so it can be hashed right away; this is what
    /// keeps memory at one pending block per level.
    fn push(&mut self, mut level: usize, hash: &HashBuf) {
        let len = self.alg.digest_len();
        let mut hash = *hash;
        loop {
            if level == self.levels.len() {
                self.levels.push(Level {
                    pending: Vec::with_capacity(BLOCK_SIZE),
                    count: 0,
                    blocks: Vec::new(),
                });
            }
            let alg = self.alg;
            let record = self.record_tree;
            let l = &mut self.levels[level];
            l.pending.extend_from_slice(&hash[..len]);
            l.count += 1;
            if l.pending.len() < BLOCK_SIZE {
                return;
            }
            hash = alg.hash_block(&l.pending);
            if record {
                l.blocks.extend_from_slice(&l.pending);
            }
            l.pending.clear();
            level += 1;
        }
    }

    /// Finishes the tree: pads and hashes the partial data block and every partial tree block
    /// bottom up, until the level holding a single hash, which is the root hash.
    /// Returns the root hash and the number of tree levels below it.
    fn finish(&mut self) -> (HashBuf, usize) {
        if self.block_len > 0 {
            let hash = self.alg.hash_block(&self.block[..self.block_len]);
            self.push(0, &hash);
            self.block_len = 0;
        }
        if self.data_size == 0 {
            // No blocks at all: the root hash is defined as all zeros.
            return ([0; MAX_DIGEST_LEN], 0);
        }
        let len = self.alg.digest_len();
        let mut level = 0;
        loop {
            let l = &mut self.levels[level];
            if l.count == 1 {
                // A level with a single hash is the root. Its hash is still pending, since
                // a level only hashes a block once the block is full.
                let mut root = [0; MAX_DIGEST_LEN];
                root[..len].copy_from_slice(&l.pending[..len]);
                return (root, level);
            }
            if !l.pending.is_empty() {
                l.pending.resize(BLOCK_SIZE, 0);
                let hash = self.alg.hash_block(&l.pending);
                if self.record_tree {
                    l.blocks.extend_from_slice(&l.pending);
                }
                l.pending.clear();
                self.push(level + 1, &hash);
            }
            level += 1;
        }
    }

    /// The fs-verity digest of everything fed.
    pub fn finalize(mut self) -> Digest {
        let (root, _) = self.finish();
        super::descriptor_digest(self.alg, self.data_size, &root[..self.alg.digest_len()])
    }

    /// The digest and the whole Merkle tree.
    ///
    /// # Panics
    ///
    /// If the hasher was made with [`FsVerityHasher::new`], which does not keep the tree.
    pub fn finalize_with_tree(mut self) -> (Digest, MerkleTree) {
        assert!(
            self.record_tree,
            "finalize_with_tree needs a hasher made with FsVerityHasher::with_tree"
        );
        let (root, tree_levels) = self.finish();
        // The kernel stores the level nearest the root first.
        let size = self.levels[..tree_levels]
            .iter()
            .map(|l| l.blocks.len())
            .sum();
        let mut bytes = Vec::with_capacity(size);
        for l in self.levels[..tree_levels].iter().rev() {
            bytes.extend_from_slice(&l.blocks);
        }
        let tree = MerkleTree::from_trusted_parts(self.alg, self.data_size, root, bytes);
        (tree.digest(), tree)
    }
}

impl std::fmt::Debug for FsVerityHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsVerityHasher")
            .field("alg", &self.alg)
            .field("data_size", &self.data_size)
            .field("record_tree", &self.record_tree)
            .finish_non_exhaustive()
    }
}

impl std::io::Write for FsVerityHasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

//! fs-verity digests and Merkle trees, as the kernel and `fsverity digest` compute them.
//!
//! Only the parameters composefs uses are supported: 4096-byte blocks, no salt, SHA-256 or
//! SHA-512. An object's name in the store is its fs-verity digest, so everything here must be
//! bit-exact with the kernel:
//!
//! * the data is cut into 4096-byte blocks, the last one zero padded;
//! * each block is hashed, and the hashes are packed into 4096-byte tree blocks (zero padded),
//!   which are hashed again, level after level, until one block is left;
//! * the root hash is the hash of that last block; for a file of one block there is no tree
//!   and the root hash is the hash of the (padded) data block; for an empty file it is zeros;
//! * the digest is the hash of a 256-byte descriptor holding the root hash and the data size.
//!
//! [`FsVerityHasher`] computes a digest in one streaming pass; created with
//! [`FsVerityHasher::with_tree`] it also keeps the tree, giving a [`MerkleTree`] that can check
//! single data blocks (the user-space verity read path).

mod hasher;
mod sha256x2;
#[cfg(test)]
mod tests;
mod tree;

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

pub use hasher::FsVerityHasher;
pub use tree::MerkleTree;

/// The fs-verity block size used for data and tree blocks (composefs only uses 4096).
pub const BLOCK_SIZE: usize = 4096;
/// log2 of [`BLOCK_SIZE`], as stored in the descriptor.
pub const LOG_BLOCK_SIZE: u8 = 12;
/// The longest digest of any supported algorithm (SHA-512).
pub const MAX_DIGEST_LEN: usize = 64;
/// Size of the fs-verity descriptor whose hash is the digest.
pub const DESCRIPTOR_SIZE: usize = 256;

/// Read size used when hashing files and readers: large reads keep syscall overhead negligible
/// and, being a multiple of the block size, let whole blocks be hashed in place.
pub(crate) const READ_BUF_SIZE: usize = 1 << 20;

/// A hash value of any supported algorithm; only the first `alg.digest_len()` bytes are used,
/// the rest stays zero.
pub(crate) type HashBuf = [u8; MAX_DIGEST_LEN];

static ZERO_BLOCK: [u8; BLOCK_SIZE] = [0; BLOCK_SIZE];

/// How many whole blocks callers hand to [`HashAlg::hash_blocks`] at a time: enough to keep
/// every interleaved lane busy, few enough for the hashes to sit on the stack (1 KiB).
pub(crate) const HASH_BATCH: usize = 16;

/// Hash algorithm of an fs-verity digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum HashAlg {
    Sha256,
    Sha512,
}

impl HashAlg {
    /// The number used in the fs-verity descriptor and the composefs metacopy xattr.
    pub const fn id(self) -> u8 {
        match self {
            HashAlg::Sha256 => 1,
            HashAlg::Sha512 => 2,
        }
    }

    /// Inverse of [`HashAlg::id`].
    pub const fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(HashAlg::Sha256),
            2 => Some(HashAlg::Sha512),
            _ => None,
        }
    }

    /// Length of a digest in bytes.
    pub const fn digest_len(self) -> usize {
        match self {
            HashAlg::Sha256 => 32,
            HashAlg::Sha512 => 64,
        }
    }

    /// Name as used by `fsverity digest --hash-alg` and in `sha256:HEX` strings.
    pub const fn name(self) -> &'static str {
        match self {
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha512 => "sha512",
        }
    }

    /// How many hashes fit in one tree block (128 for SHA-256, 64 for SHA-512).
    pub(crate) const fn hashes_per_block(self) -> usize {
        BLOCK_SIZE / self.digest_len()
    }

    /// Hashes `data` as one block: zero padded to [`BLOCK_SIZE`] if shorter. Callers never pass
    /// more than a block.
    pub(crate) fn hash_block(self, data: &[u8]) -> HashBuf {
        let pad = &ZERO_BLOCK[..BLOCK_SIZE.saturating_sub(data.len())];
        let mut out = [0; MAX_DIGEST_LEN];
        match self {
            HashAlg::Sha256 => {
                let mut h = Sha256::new();
                h.update(data);
                if !pad.is_empty() {
                    h.update(pad);
                }
                out[..32].copy_from_slice(&h.finalize());
            }
            HashAlg::Sha512 => {
                let mut h = Sha512::new();
                h.update(data);
                if !pad.is_empty() {
                    h.update(pad);
                }
                out.copy_from_slice(&h.finalize());
            }
        }
        out
    }

    /// Hashes each whole [`BLOCK_SIZE`]-byte block of `data` as an fs-verity data or tree
    /// block, into `out` in order (the first [`HashAlg::digest_len`] bytes of each entry), for
    /// as many blocks as both hold. This is the bulk of building or checking a Merkle tree:
    /// SHA-256 on a CPU with the SHA extensions hashes two blocks at once, interleaved;
    /// otherwise, and for SHA-512, blocks are hashed one by one with `sha2`.
    pub fn hash_blocks(self, data: &[u8], out: &mut [[u8; MAX_DIGEST_LEN]]) {
        self.hash_blocks_with(sha256x2::Sha256Ni::detect(), data, out);
    }

    /// [`HashAlg::hash_blocks`] with the SHA-NI code given or not, so tests can check the
    /// fallback on any CPU.
    fn hash_blocks_with(self, ni: Option<sha256x2::Sha256Ni>, data: &[u8], out: &mut [HashBuf]) {
        let (blocks, _) = data.as_chunks::<BLOCK_SIZE>();
        let n = blocks.len().min(out.len());
        let (blocks, out) = (&blocks[..n], &mut out[..n]);
        let mut done = 0;
        if self == HashAlg::Sha256
            && let Some(ni) = ni
        {
            const L: usize = sha256x2::LANES;
            let (groups, _) = blocks.as_chunks::<L>();
            for (group, hashes) in groups.iter().zip(out.chunks_exact_mut(L)) {
                let lanes = ni.hash_blocks::<L>(std::array::from_fn(|i| &group[i]));
                for (h, lane) in hashes.iter_mut().zip(lanes) {
                    h[..32].copy_from_slice(&lane);
                }
            }
            done = groups.len() * L;
            for (block, h) in blocks[done..].iter().zip(&mut out[done..]) {
                let [lane] = ni.hash_blocks::<1>([block]);
                h[..32].copy_from_slice(&lane);
            }
            done = blocks.len();
        }
        for (block, h) in blocks[done..].iter().zip(&mut out[done..]) {
            *h = self.hash_block(block);
        }
    }

    /// Plain hash of `data` (used for the descriptor).
    fn hash(self, data: &[u8]) -> HashBuf {
        let mut out = [0; MAX_DIGEST_LEN];
        match self {
            HashAlg::Sha256 => out[..32].copy_from_slice(&Sha256::digest(data)),
            HashAlg::Sha512 => out.copy_from_slice(&Sha512::digest(data)),
        }
        out
    }
}

impl fmt::Display for HashAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashAlg {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sha256" => Ok(HashAlg::Sha256),
            "sha512" => Ok(HashAlg::Sha512),
            _ => Err(ParseDigestError::UnknownAlgorithm(s.to_owned())),
        }
    }
}

/// Why a digest string or hash algorithm name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseDigestError {
    #[error("unknown hash algorithm {0:?} (expected sha256 or sha512)")]
    UnknownAlgorithm(String),
    #[error("digest is not valid hexadecimal")]
    InvalidHex,
    #[error("{alg} digest must be {expected} hex characters, found {found}")]
    WrongLength {
        alg: HashAlg,
        expected: usize,
        found: usize,
    },
    #[error("digest of {0} hex characters matches neither sha256 (64) nor sha512 (128)")]
    UnknownLength(usize),
}

/// An fs-verity digest: the algorithm and the hash of the descriptor.
///
/// Displays as `sha256:HEX` (the `fsverity digest` format) and parses from that form or from
/// bare hex, where the length picks the algorithm.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    alg: HashAlg,
    // Invariant: bytes past `alg.digest_len()` are zero, so the derived comparisons are right.
    bytes: HashBuf,
}

impl Digest {
    /// A digest from raw bytes; `None` if the length does not match `alg`.
    pub fn new(alg: HashAlg, bytes: &[u8]) -> Option<Self> {
        if bytes.len() != alg.digest_len() {
            return None;
        }
        let mut buf = [0; MAX_DIGEST_LEN];
        buf[..bytes.len()].copy_from_slice(bytes);
        Some(Digest { alg, bytes: buf })
    }

    pub fn alg(&self) -> HashAlg {
        self.alg
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.alg.digest_len()]
    }

    /// Lower-case hex of the digest bytes, without the algorithm prefix.
    pub fn to_hex(&self) -> String {
        hex::encode(self.as_bytes())
    }

    /// Parses bare hex of the given algorithm.
    pub fn from_hex(alg: HashAlg, s: &str) -> Result<Self, ParseDigestError> {
        let expected = alg.digest_len() * 2;
        if s.len() != expected {
            return Err(ParseDigestError::WrongLength {
                alg,
                expected,
                found: s.len(),
            });
        }
        let mut buf = [0; MAX_DIGEST_LEN];
        hex::decode_to_slice(s, &mut buf[..alg.digest_len()])
            .map_err(|_| ParseDigestError::InvalidHex)?;
        Ok(Digest { alg, bytes: buf })
    }

    /// The object's path relative to `objects/`: `"XX/rest-of-hex"`, as composefs stores it
    /// (and as the `trusted.overlay.redirect` xattr names it, after a leading `/`).
    pub fn object_path(&self) -> String {
        let hex = self.to_hex();
        let (dir, rest) = hex.split_at(2);
        format!("{dir}/{rest}")
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.alg.name(), self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some((alg, hex)) = s.split_once(':') {
            return Digest::from_hex(alg.parse()?, hex);
        }
        match s.len() {
            64 => Digest::from_hex(HashAlg::Sha256, s),
            128 => Digest::from_hex(HashAlg::Sha512, s),
            n => Err(ParseDigestError::UnknownLength(n)),
        }
    }
}

/// Why a Merkle tree or a data block failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerityError {
    #[error("data block {block} does not match its hash in the Merkle tree")]
    DataBlockMismatch { block: u64 },
    /// Level 0 is the leaf level (the hashes of the data blocks), as in the kernel.
    #[error("Merkle tree block {index} of level {level} does not match its parent's hash")]
    TreeBlockMismatch { level: usize, index: u64 },
    /// Boxed to keep `Result<(), VerityError>` small on the hot verification path.
    #[error("fs-verity digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        expected: Box<Digest>,
        actual: Box<Digest>,
    },
    #[error("Merkle tree is {found} bytes, but {data_size} bytes of data need {expected}")]
    TreeSize {
        data_size: u64,
        expected: u64,
        found: u64,
    },
    #[error("block {block} is past the end of the data ({blocks} blocks)")]
    BlockOutOfRange { block: u64, blocks: u64 },
    #[error("data block {block} is {found} bytes, expected {expected}")]
    BlockLength {
        block: u64,
        expected: usize,
        found: usize,
    },
}

/// The 256-byte fs-verity descriptor for unsalted 4096-byte-block trees; its hash is the digest.
pub fn descriptor(alg: HashAlg, data_size: u64, root_hash: &[u8]) -> [u8; DESCRIPTOR_SIZE] {
    let mut d = [0u8; DESCRIPTOR_SIZE];
    d[0] = 1; // version
    d[1] = alg.id();
    d[2] = LOG_BLOCK_SIZE;
    d[3] = 0; // salt_size; 4..8 reserved
    d[8..16].copy_from_slice(&data_size.to_le_bytes());
    let n = root_hash.len().min(MAX_DIGEST_LEN);
    d[16..16 + n].copy_from_slice(&root_hash[..n]);
    // salt[32] and reserved[144] stay zero.
    d
}

/// The digest for a given root hash and data size (hash of the descriptor).
pub fn descriptor_digest(alg: HashAlg, data_size: u64, root_hash: &[u8]) -> Digest {
    let bytes = alg.hash(&descriptor(alg, data_size, root_hash));
    Digest { alg, bytes }
}

/// fs-verity digest of an in-memory buffer.
pub fn digest_bytes(alg: HashAlg, data: &[u8]) -> Digest {
    let mut h = FsVerityHasher::new(alg);
    h.update(data);
    h.finalize()
}

/// fs-verity digest of everything `reader` yields.
pub fn digest_reader(alg: HashAlg, reader: impl Read) -> io::Result<Digest> {
    let mut h = FsVerityHasher::new(alg);
    feed(&mut h, reader)?;
    Ok(h.finalize())
}

/// fs-verity digest of a file's contents.
pub fn digest_file(alg: HashAlg, path: &Path) -> io::Result<Digest> {
    digest_reader(alg, File::open(path)?)
}

/// Digest and full Merkle tree of everything `reader` yields.
pub fn merkle_tree_reader(alg: HashAlg, reader: impl Read) -> io::Result<MerkleTree> {
    let mut h = FsVerityHasher::with_tree(alg);
    feed(&mut h, reader)?;
    Ok(h.finalize_with_tree().1)
}

/// Digest and full Merkle tree of a file's contents.
pub fn merkle_tree_file(alg: HashAlg, path: &Path) -> io::Result<MerkleTree> {
    merkle_tree_reader(alg, File::open(path)?)
}

/// Streams `reader` into the hasher in large block-aligned chunks.
fn feed(h: &mut FsVerityHasher, mut reader: impl Read) -> io::Result<()> {
    let mut buf = vec![0u8; READ_BUF_SIZE];
    loop {
        let n = read_full(&mut reader, &mut buf)?;
        h.update(&buf[..n]);
        if n < buf.len() {
            return Ok(());
        }
    }
}

/// Reads until `buf` is full or the reader is at its end. Filling the buffer keeps the
/// chunks block aligned even if the reader returns short reads, so the hasher never has to
/// copy data into its partial-block buffer.
pub(crate) fn read_full<R: Read + ?Sized>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

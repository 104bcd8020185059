//! Merkle tree sidecars: the fs-verity tree of an object, kept in a file beside the store so
//! that opening a large object does not mean hashing all of it.
//!
//! Layout: for the object `objects/XX/rest`, the tree is `verity/XX/rest` under the same
//! store root (or under the directory given with `--verity-dir`). The file holds the tree
//! exactly as the kernel stores it and as `fsverity digest --out-merkle-tree` writes it: the
//! level nearest the root first, each level's hashes packed into zero-padded 4096-byte blocks.
//! Objects of at most one block have no tree and no sidecar.
//!
//! Sidecars are untrusted: the top block is checked against the image's digest when loaded,
//! every other block against its parent the first time a data block below it is read. A
//! missing or unusable sidecar is rebuilt from the object, and saved if the directory is
//! writable; the new file is written under a temporary name and renamed into place, so a
//! reader never sees half a tree.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use imgmount_format::verity::{self, BLOCK_SIZE, Digest, MerkleTree};

/// Where sidecar trees are looked for and saved.
#[derive(Clone, Debug)]
pub struct Sidecars {
    dir: PathBuf,
}

/// Why no usable tree could be had for an object.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("reading the object to build its Merkle tree: {0}")]
    Read(#[source] io::Error),
    #[error("object content has digest {actual}, the image expects {expected}")]
    // Boxed: digests are 65 bytes, and this error travels up through every Result.
    ContentMismatch {
        expected: Box<Digest>,
        actual: Box<Digest>,
    },
}

impl Sidecars {
    pub fn new(dir: PathBuf) -> Self {
        Sidecars { dir }
    }

    /// The default sidecar directory for an objects directory: `verity/` beside it.
    pub fn default_dir(objects: &Path) -> PathBuf {
        objects
            .parent()
            .unwrap_or_else(|| Path::new("/"))
            .join("verity")
    }

    /// Path of the sidecar for a digest: `DIR/XX/rest`.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.object_path())
    }

    /// A tree for the object `file` of `size` bytes that must have the digest `expected`:
    /// the sidecar if it is there and its top checks out, else one built from the object
    /// (saved as the new sidecar when possible). `name` is used in log lines.
    pub fn load_or_build(
        &self,
        expected: Digest,
        size: u64,
        file: &File,
        name: &str,
    ) -> Result<MerkleTree, TreeError> {
        if size <= BLOCK_SIZE as u64 {
            // One block or none: no tree blocks, the data block is checked against the
            // digest directly. This cannot fail for an empty byte vector.
            if let Ok(tree) = MerkleTree::from_bytes(expected, size, Vec::new()) {
                return Ok(tree);
            }
        }
        let path = self.path(&expected);
        match fs::read(&path) {
            Ok(bytes) => match MerkleTree::from_bytes(expected, size, bytes) {
                Ok(tree) => return Ok(tree),
                Err(e) => log::warn!(
                    "Merkle tree sidecar {} for object {name} is unusable ({e}); rebuilding it",
                    path.display()
                ),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!(
                "cannot read Merkle tree sidecar {} ({e}); rebuilding it",
                path.display()
            ),
        }
        let tree = build(expected, file)?;
        if let Err(e) = save(&path, tree.as_bytes()) {
            log::debug!(
                "cannot save Merkle tree sidecar {} ({e}); keeping it in memory",
                path.display()
            );
        }
        Ok(tree)
    }
}

/// Builds the tree from the object's content and checks it gives the expected digest.
fn build(expected: Digest, file: &File) -> Result<MerkleTree, TreeError> {
    let reader = PositionedReader { file, pos: 0 };
    let tree = verity::merkle_tree_reader(expected.alg(), reader).map_err(TreeError::Read)?;
    if tree.digest() != expected {
        return Err(TreeError::ContentMismatch {
            expected: Box::new(expected),
            actual: Box::new(tree.digest()),
        });
    }
    Ok(tree)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, renamed.
fn save(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().ok_or(io::ErrorKind::InvalidInput)?;
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads a file from the start with `pread`, leaving the shared file offset alone.
struct PositionedReader<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for PositionedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgmount_format::verity::{HashAlg, digest_bytes};

    fn object(data: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(data).unwrap();
        f
    }

    #[test]
    fn builds_saves_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let sc = Sidecars::new(dir.path().join("verity"));
        let data: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let digest = digest_bytes(HashAlg::Sha256, &data);
        let f = object(&data);
        let tree = sc
            .load_or_build(digest, data.len() as u64, &f, "t")
            .unwrap();
        let path = sc.path(&digest);
        let saved = fs::read(&path).unwrap();
        assert_eq!(saved, tree.as_bytes());
        assert!(!saved.is_empty());
        // Reloaded from the sidecar: a block verifies, a wrong block does not.
        let tree2 = sc
            .load_or_build(digest, data.len() as u64, &f, "t")
            .unwrap();
        tree2.verify_data_block(1, &data[4096..8192]).unwrap();
        assert!(tree2.verify_data_block(1, &data[8192..12288]).is_err());
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn corrupt_top_block_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let sc = Sidecars::new(dir.path().to_owned());
        let data = vec![5u8; 3 * 4096 + 17];
        let digest = digest_bytes(HashAlg::Sha256, &data);
        let f = object(&data);
        let good = sc
            .load_or_build(digest, data.len() as u64, &f, "t")
            .unwrap();
        let mut bad = good.as_bytes().to_vec();
        bad[3] ^= 1;
        fs::write(sc.path(&digest), &bad).unwrap();
        let tree = sc
            .load_or_build(digest, data.len() as u64, &f, "t")
            .unwrap();
        assert_eq!(tree.as_bytes(), good.as_bytes());
        assert_eq!(fs::read(sc.path(&digest)).unwrap(), good.as_bytes());
    }

    #[test]
    fn wrong_content_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sc = Sidecars::new(dir.path().to_owned());
        let data = vec![1u8; 10_000];
        let digest = digest_bytes(HashAlg::Sha256, &data);
        let mut other = data.clone();
        other[9000] = 2;
        let f = object(&other);
        let err = sc
            .load_or_build(digest, data.len() as u64, &f, "t")
            .unwrap_err();
        assert!(matches!(err, TreeError::ContentMismatch { expected, .. } if *expected == digest));
        assert!(
            !sc.path(&digest).exists(),
            "no sidecar saved for bad content"
        );
    }

    #[test]
    fn unwritable_dir_still_gives_a_tree() {
        let sc = Sidecars::new(PathBuf::from("/proc/definitely/not/writable"));
        let data = vec![9u8; 20_000];
        let digest = digest_bytes(HashAlg::Sha512, &data);
        let f = object(&data);
        let tree = sc
            .load_or_build(digest, data.len() as u64, &f, "t")
            .unwrap();
        tree.verify_data_block(4, &data[16384..]).unwrap();
    }
}

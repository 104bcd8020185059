//! Merkle tree sidecars: the fs-verity tree of an object, kept in a file beside the store so
//! that opening a large object does not mean hashing all of it.
//!
//! Layout: for the object `objects/XX/rest`, the tree is `verity/XX/rest` under the same
//! store root (or under the directory given with `--verity-dir`). The file holds the tree
//! exactly as the kernel stores it and as `fsverity digest --out-merkle-tree` writes it: the
//! level nearest the root first, each level's hashes packed into zero-padded 4096-byte blocks.
//! Objects of at most one block have no tree and no sidecar.
//!
//! Sidecars are untrusted, and damage to one is not damage to the data: it is opened through
//! [`fsops`] (never through a symlink, never blocking), must have exactly the size the
//! object's size gives (anything else is refused before a byte is read: a sidecar that is
//! `/dev/zero` or a huge file costs nothing), its top block must give the image's digest and
//! every other block must match its parent (all checked when it is loaded, at a cost of one
//! hash per 128 data blocks). A sidecar failing any of that is rebuilt from the object, the
//! new tree checked against the digest, and saved over the bad one when the directory is
//! writable; the new file is written under a temporary name and renamed into place, so a
//! reader never sees half a tree. So a bad sidecar never makes an intact object unreadable.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use imgmount_format::store::fsops::{Dir, Expect, PositionedReader};
use imgmount_format::verity::{self, BLOCK_SIZE, Digest, MerkleTree};

/// Where sidecar trees are looked for and saved.
#[derive(Clone, Debug)]
pub struct Sidecars {
    dir: PathBuf,
    /// The directory above `dir`, opened when the mount starts (it is the user's, or the
    /// store root): `dir` itself and everything below is resolved from it without following
    /// symlinks. `None` when it cannot be opened: trees are then kept in memory only.
    anchor: Option<Dir>,
    /// `dir` relative to `anchor` (empty when `dir` has no parent).
    below: PathBuf,
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
        let (anchor_path, below) = match (dir.parent(), dir.file_name()) {
            (Some(parent), Some(name)) => (parent.to_owned(), PathBuf::from(name)),
            _ => (dir.clone(), PathBuf::new()),
        };
        let anchor_path = if anchor_path.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            anchor_path
        };
        let anchor = Dir::open(&anchor_path)
            .inspect_err(|e| {
                log::debug!(
                    "sidecar directory {} unusable ({e}); trees are kept in memory",
                    dir.display()
                )
            })
            .ok();
        Sidecars { dir, anchor, below }
    }

    /// The default sidecar directory for an objects directory: `verity/` beside it.
    pub fn default_dir(objects: &Path) -> PathBuf {
        objects
            .parent()
            .unwrap_or_else(|| Path::new("/"))
            .join("verity")
    }

    /// Path of the sidecar for a digest: `DIR/XX/rest` (for messages).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.object_path())
    }

    /// The sidecar of `digest` relative to the anchor.
    fn rel(&self, digest: &Digest) -> PathBuf {
        self.below.join(digest.object_path())
    }

    /// A tree for the object `file` of `size` bytes that must have the digest `expected`:
    /// the sidecar if it is there and checks out, else one built from the object (saved as
    /// the new sidecar when possible). `name` is used in log lines.
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
        match self.load(expected, size) {
            Ok(Some(tree)) => return Ok(tree),
            Ok(None) => {}
            Err(e) => log::warn!(
                "Merkle tree sidecar {} for object {name} is unusable ({e}); rebuilding it                  from the object",
                path.display()
            ),
        }
        let tree = build(expected, file, size)?;
        if let Err(e) = self.save(&expected, tree.as_bytes()) {
            log::debug!(
                "cannot save Merkle tree sidecar {} ({e}); keeping it in memory",
                path.display()
            );
        }
        Ok(tree)
    }

    /// The stored tree, fully checked; `None` if there is none.
    fn load(&self, expected: Digest, size: u64) -> io::Result<Option<MerkleTree>> {
        let Some(anchor) = &self.anchor else {
            return Ok(None);
        };
        let want = MerkleTree::serialized_len(expected.alg(), size);
        let Some(file) = anchor.open_file_if_exists(self.rel(&expected), Expect::Size(want))?
        else {
            return Ok(None);
        };
        let mut bytes = Vec::with_capacity(want as usize);
        file.take(want).read_to_end(&mut bytes)?;
        let bad = |e: verity::VerityError| io::Error::new(io::ErrorKind::InvalidData, e);
        let tree = MerkleTree::from_bytes(expected, size, bytes).map_err(bad)?;
        tree.verify_tree().map_err(bad)?;
        Ok(Some(tree))
    }

    /// Writes a tree as the sidecar of `digest`: a temporary file in the same directory,
    /// renamed over whatever was there.
    fn save(&self, digest: &Digest, bytes: &[u8]) -> io::Result<()> {
        let anchor = self
            .anchor
            .as_ref()
            .ok_or_else(|| io::Error::other("no usable sidecar directory"))?;
        let rel = self.rel(digest);
        let (dir, name) = match (rel.parent(), rel.file_name()) {
            (Some(d), Some(n)) => (d, n),
            _ => return Err(io::ErrorKind::InvalidInput.into()),
        };
        let dir = anchor.create_dir(dir)?;
        let mut tmp = dir.create_temp(".tmp-", 0o644)?;
        tmp.file_mut().write_all(bytes)?;
        tmp.persist(&dir, name)
    }
}

/// Builds the tree from the object's first `size` bytes and checks it gives the expected
/// digest.
fn build(expected: Digest, file: &File, size: u64) -> Result<MerkleTree, TreeError> {
    let reader = PositionedReader::new(file, 0).take(size);
    let tree = verity::merkle_tree_reader(expected.alg(), reader).map_err(TreeError::Read)?;
    if tree.digest() != expected {
        return Err(TreeError::ContentMismatch {
            expected: Box::new(expected),
            actual: Box::new(tree.digest()),
        });
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgmount_format::verity::{HashAlg, digest_bytes};
    use std::fs;

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

    /// A sidecar with a flipped bit in a deep (leaf) tree block, below an intact top
    /// block: rebuilt from the object at load, saved back, and every block verifies.
    #[test]
    fn corrupt_deep_block_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let sc = Sidecars::new(dir.path().join("verity"));
        let data: Vec<u8> = (0..600u32 * 4096).map(|i| (i % 253) as u8).collect();
        let digest = digest_bytes(HashAlg::Sha256, &data);
        let f = object(&data);
        let good = sc
            .load_or_build(digest, data.len() as u64, &f, "t")
            .unwrap();
        assert_eq!(good.num_tree_blocks(), 6);
        let mut bad = good.as_bytes().to_vec();
        bad[3 * 4096 + 100] ^= 0x20;
        fs::write(sc.path(&digest), &bad).unwrap();
        let tree = sc
            .load_or_build(digest, data.len() as u64, &f, "t")
            .unwrap();
        for b in [0u64, 200, 300, 599] {
            let at = (b * 4096) as usize;
            tree.verify_data_block(b, &data[at..at + 4096]).unwrap();
        }
        assert_eq!(fs::read(sc.path(&digest)).unwrap(), good.as_bytes());
    }

    /// Sidecars that are /dev/zero (through a symlink), a FIFO, or of the wrong size are
    /// refused without reading them (no hang, no unbounded read) and rebuilt.
    #[test]
    fn hostile_sidecars_are_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let sc = Sidecars::new(dir.path().join("verity"));
        let data = vec![7u8; 300 * 4096];
        let digest = digest_bytes(HashAlg::Sha256, &data);
        let f = object(&data);
        let good = sc
            .load_or_build(digest, data.len() as u64, &f, "t")
            .unwrap();
        let path = sc.path(&digest);
        let fifo = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let plant: Vec<Box<dyn Fn()>> = vec![
            Box::new(|| std::os::unix::fs::symlink("/dev/zero", &path).unwrap()),
            // SAFETY: a valid NUL-terminated path.
            Box::new(|| assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0)),
            Box::new(|| fs::write(&path, vec![0u8; 64 << 20]).unwrap()),
        ];
        for plant in plant {
            fs::remove_file(&path).unwrap();
            plant();
            let tree = sc
                .load_or_build(digest, data.len() as u64, &f, "t")
                .unwrap();
            assert_eq!(tree.as_bytes(), good.as_bytes());
            // Rebuilt and saved over what was planted.
            assert_eq!(fs::read(&path).unwrap(), good.as_bytes());
        }
    }

    /// A symlinked sidecar directory is not followed: nothing is written where it points.
    #[test]
    fn symlinked_sidecar_dirs_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let data = vec![3u8; 50_000];
        let digest = digest_bytes(HashAlg::Sha256, &data);
        let (fan, _) = digest
            .object_path()
            .split_once('/')
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .unwrap();
        fs::create_dir_all(dir.path().join("verity")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.path().join("verity").join(&fan)).unwrap();
        let sc = Sidecars::new(dir.path().join("verity"));
        let f = object(&data);
        sc.load_or_build(digest, data.len() as u64, &f, "t")
            .unwrap();
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }
}

//! The content-addressed object store: `objects/XX/rest-of-hex`, named by fs-verity digest.
//!
//! Objects are written to a temporary file inside `objects/` while their digest is computed
//! in the same pass, then renamed to their final name without replacing an existing object.
//! So an object exists under its name only with its complete content, however many writers
//! race to store it, and identical content is stored once.
//!
//! A *bare* store is just the objects directory (what `mkcomposefs --digest-store=DIR`
//! writes: `DIR/XX/rest`); it has no images, refs or sidecar directories.
//! Images, refs and the lock live in `store/images.rs`, import staging in `store/staging.rs`,
//! gc and fsck in `store/maintenance.rs`, layer records and the manifest map in
//! `store/layers.rs`, partial registry downloads in `store/downloads.rs`.

mod downloads;
mod images;
mod layers;
mod maintenance;
pub mod nofollow;
mod staging;

pub use downloads::{DOWNLOADS_DIR, Download};
pub use images::{
    BARE_VERITY_DIR, IMAGES_DIR, ImageInfo, REFS_DIR, StoreLock, VERITY_DIR, validate_tag,
};
pub use layers::{LAYERS_DIR, MANIFESTS_DIR, MAX_RECORD_SIZE, split_content_digest};
pub use maintenance::{FsckProblem, FsckReport, GcReport};
pub use staging::{Staging, TMP_DIR};

use std::fs::{self, File, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::verity::{self, Digest, FsVerityHasher, HashAlg, MerkleTree};

/// Name of the objects directory under the store root.
pub const OBJECTS_DIR: &str = "objects";
/// Prefix of in-progress objects inside `objects/`. They never look like object directories
/// (two hex digits), so walkers of `objects/` can skip or clean them up.
pub const TEMP_PREFIX: &str = ".tmp-";
/// Mode of stored objects: their content never changes once named.
const OBJECT_MODE: u32 = 0o644;

/// An error from the object store, naming the path involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the content to store")]
    Read(#[source] io::Error),
    #[error("{} is not an object store: it has no {OBJECTS_DIR}/ directory", path.display())]
    NotAStore { path: PathBuf },
    #[error("{} is a bare object directory: it holds no images, refs or sidecars", path.display())]
    Bare { path: PathBuf },
    #[error("{0}")]
    BadName(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{} is corrupt: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Wraps an io::Error with the operation and path it concerns.
fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io { op, path, source }
}

/// A directory holding `objects/XX/rest-of-hex` files named by their fs-verity digest.
#[derive(Debug, Clone)]
pub struct ObjectStore {
    root: PathBuf,
    /// `root/objects`, or `root` itself in a bare store.
    objects: PathBuf,
    bare: bool,
    fsync: bool,
}

impl ObjectStore {
    /// Opens an existing store.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let store = ObjectStore::at(root.into());
        match fs::metadata(&store.objects) {
            Ok(m) if m.is_dir() => Ok(store),
            Ok(_) => Err(StoreError::NotAStore { path: store.root }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::NotAStore { path: store.root })
            }
            Err(e) => Err(io_err("open", &store.objects)(e)),
        }
    }

    /// Opens a store, creating its directories if needed.
    pub fn create(root: impl Into<PathBuf>) -> Result<Self> {
        let store = ObjectStore::at(root.into());
        fs::create_dir_all(&store.objects).map_err(io_err("create", &store.objects))?;
        Ok(store)
    }

    /// Opens an existing bare store: `dir` itself holds the `XX/` object directories.
    pub fn open_bare(dir: impl Into<PathBuf>) -> Result<Self> {
        let store = ObjectStore::at_bare(dir.into());
        match fs::metadata(&store.objects) {
            Ok(m) if m.is_dir() => Ok(store),
            Ok(m) => Err(io_err("open", &store.objects)(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("not a directory ({:?})", m.file_type()),
            ))),
            Err(e) => Err(io_err("open", &store.objects)(e)),
        }
    }

    /// Opens a bare store, creating the directory if needed.
    pub fn create_bare(dir: impl Into<PathBuf>) -> Result<Self> {
        let store = ObjectStore::at_bare(dir.into());
        fs::create_dir_all(&store.objects).map_err(io_err("create", &store.objects))?;
        Ok(store)
    }

    fn at(root: PathBuf) -> Self {
        let objects = root.join(OBJECTS_DIR);
        ObjectStore {
            root,
            objects,
            bare: false,
            fsync: true,
        }
    }

    fn at_bare(dir: PathBuf) -> Self {
        ObjectStore {
            objects: dir.clone(),
            root: dir,
            bare: true,
            fsync: true,
        }
    }

    /// Whether this is a bare store (objects only).
    pub fn is_bare(&self) -> bool {
        self.bare
    }

    /// Whether new objects are fsynced before they get their name (default: yes).
    ///
    /// With fsync a crash can lose an object but never leave a named object with missing
    /// content. Turning it off is for throwaway stores (tests, benchmarks), where per-object
    /// fsync dominates import time.
    pub fn with_fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory holding the `XX/` object directories: `objects/`, or the root of a bare
    /// store. composefs mounts use it as the overlay data layer.
    pub fn objects_dir(&self) -> &Path {
        &self.objects
    }

    /// Where the object with this digest is (or would be) stored.
    pub fn object_path(&self, digest: &Digest) -> PathBuf {
        self.objects.join(digest.object_path())
    }

    /// Whether an object with this digest is stored.
    pub fn contains(&self, digest: &Digest) -> bool {
        fs::symlink_metadata(self.object_path(digest)).is_ok_and(|m| m.is_file())
    }

    /// Opens a stored object for reading. Its content is not checked against the digest.
    pub fn open_object(&self, digest: &Digest) -> Result<File> {
        let path = self.object_path(digest);
        File::open(&path).map_err(io_err("open object", &path))
    }

    /// Stores a file's content; returns its digest.
    pub fn insert_file(&self, src: &Path, alg: HashAlg) -> Result<Digest> {
        let file = File::open(src).map_err(io_err("open", src))?;
        let mut hasher = FsVerityHasher::new(alg);
        let tmp = self.copy_to_temp(file, &mut hasher, Some(src))?;
        let digest = hasher.finalize();
        self.commit(tmp, &digest)?;
        Ok(digest)
    }

    /// Stores a file's content; returns its digest and Merkle tree (for a verity sidecar).
    pub fn insert_file_with_tree(&self, src: &Path, alg: HashAlg) -> Result<(Digest, MerkleTree)> {
        let file = File::open(src).map_err(io_err("open", src))?;
        let mut hasher = FsVerityHasher::with_tree(alg);
        let tmp = self.copy_to_temp(file, &mut hasher, Some(src))?;
        let (digest, tree) = hasher.finalize_with_tree();
        self.commit(tmp, &digest)?;
        Ok((digest, tree))
    }

    /// Stores everything `reader` yields; returns its digest.
    pub fn insert_reader(&self, reader: impl Read, alg: HashAlg) -> Result<Digest> {
        let mut hasher = FsVerityHasher::new(alg);
        let tmp = self.copy_to_temp(reader, &mut hasher, None)?;
        let digest = hasher.finalize();
        self.commit(tmp, &digest)?;
        Ok(digest)
    }

    /// Stores a buffer; returns its digest. Nothing is written if the object exists.
    pub fn insert_bytes(&self, data: &[u8], alg: HashAlg) -> Result<Digest> {
        // The data is at hand, so hashing first is cheap and skips the temporary file
        // for content already stored.
        let digest = verity::digest_bytes(alg, data);
        if !self.contains(&digest) {
            let mut tmp = self.temp_file()?;
            tmp.write_all(data).map_err(io_err("write", tmp.path()))?;
            self.commit(tmp, &digest)?;
        }
        Ok(digest)
    }

    fn temp_file(&self) -> Result<NamedTempFile> {
        tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&self.objects)
            .map_err(io_err("create a temporary file in", &self.objects))
    }

    /// Copies `reader` into a new temporary file inside the store, feeding `hasher` on the way.
    /// On error the temporary file is removed when dropped.
    fn copy_to_temp(
        &self,
        mut reader: impl Read,
        hasher: &mut FsVerityHasher,
        src: Option<&Path>,
    ) -> Result<NamedTempFile> {
        let mut tmp = self.temp_file()?;
        let mut buf = vec![0u8; verity::READ_BUF_SIZE];
        loop {
            let n = verity::read_full(&mut reader, &mut buf).map_err(|e| match src {
                Some(src) => io_err("read", src)(e),
                None => StoreError::Read(e),
            })?;
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .map_err(io_err("write", tmp.path()))?;
            if n < buf.len() {
                return Ok(tmp);
            }
        }
    }

    /// Gives a complete temporary file its object name, unless that object already exists
    /// (then the temporary file is just removed: content-addressed, so it is the same data).
    fn commit(&self, tmp: NamedTempFile, digest: &Digest) -> Result<()> {
        let path = self.object_path(digest);
        if self.contains(digest) {
            return Ok(());
        }
        let file = tmp.as_file();
        file.set_permissions(Permissions::from_mode(OBJECT_MODE))
            .map_err(io_err("set permissions of", tmp.path()))?;
        if self.fsync {
            // Data first, name second: the name must never point at content not yet on disk.
            file.sync_all().map_err(io_err("fsync", tmp.path()))?;
        }
        let dir = path.parent().unwrap_or(&self.objects);
        match fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create", dir)(e)),
        }
        // No-clobber rename: never replace an object another writer already named. Besides
        // saving work, an existing object may have kernel fs-verity enabled, which a plain
        // rename over it would silently drop.
        match tmp.persist_noclobber(&path) {
            Ok(_) => {}
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("rename an object into", &path)(e.error)),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// All files under `objects/`, relative to it, sorted.
    fn stored_files(store: &ObjectStore) -> Vec<String> {
        let mut out = Vec::new();
        for entry in fs::read_dir(store.objects_dir()).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            if entry.file_type().unwrap().is_dir() {
                for sub in fs::read_dir(entry.path()).unwrap() {
                    let sub = sub.unwrap().file_name().into_string().unwrap();
                    out.push(format!("{name}/{sub}"));
                }
            } else {
                out.push(name);
            }
        }
        out.sort();
        out
    }

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 253) as u8).collect()
    }

    #[test]
    fn same_content_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::create(dir.path().join("store")).unwrap();
        let data = content(3 * 4096 + 17);
        let src = dir.path().join("src");
        fs::write(&src, &data).unwrap();

        let a = store.insert_file(&src, HashAlg::Sha256).unwrap();
        let b = store.insert_file(&src, HashAlg::Sha256).unwrap();
        let c = store.insert_reader(&data[..], HashAlg::Sha256).unwrap();
        let d = store.insert_bytes(&data, HashAlg::Sha256).unwrap();
        assert!(a == b && b == c && c == d);
        assert_eq!(
            stored_files(&store),
            vec![a.object_path()],
            "one object, no temp files"
        );

        // Stored under its own digest, with the same content, read-only mode.
        let path = store.object_path(&a);
        assert_eq!(path, store.root().join("objects").join(a.object_path()));
        assert_eq!(fs::read(&path).unwrap(), data);
        assert_eq!(verity::digest_file(HashAlg::Sha256, &path).unwrap(), a);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o644
        );
        assert!(store.contains(&a));

        // The other algorithm is a different object.
        let e = store.insert_bytes(&data, HashAlg::Sha512).unwrap();
        assert_eq!(e.alg(), HashAlg::Sha512);
        assert!(store.contains(&e));
        assert_eq!(stored_files(&store).len(), 2);
    }

    #[test]
    fn empty_and_tree() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::create(dir.path()).unwrap().with_fsync(false);
        let empty = store.insert_bytes(&[], HashAlg::Sha256).unwrap();
        assert_eq!(empty, verity::digest_bytes(HashAlg::Sha256, &[]));
        assert_eq!(fs::read(store.object_path(&empty)).unwrap(), b"");

        let src = dir.path().join("src");
        let data = content(200 * 4096 + 1);
        fs::write(&src, &data).unwrap();
        let (digest, tree) = store.insert_file_with_tree(&src, HashAlg::Sha256).unwrap();
        assert_eq!(tree.digest(), digest);
        assert_eq!(digest, verity::digest_bytes(HashAlg::Sha256, &data));
        assert_eq!(fs::read(store.object_path(&digest)).unwrap(), data);
    }

    #[test]
    fn open_requires_a_store() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            ObjectStore::open(dir.path()),
            Err(StoreError::NotAStore { .. })
        ));
        ObjectStore::create(dir.path()).unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        assert_eq!(store.root(), dir.path());
        let missing = verity::digest_bytes(HashAlg::Sha256, b"missing");
        assert!(!store.contains(&missing));
        let err = store.open_object(&missing).unwrap_err();
        assert!(err.to_string().contains(&missing.object_path()), "{err}");
        let err = store
            .insert_file(&dir.path().join("nope"), HashAlg::Sha256)
            .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    /// A reader that fails after yielding some data, like a source file on a failing disk.
    struct Failing(usize);

    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::other("disk on fire"));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(1);
            self.0 -= n;
            Ok(n)
        }
    }

    #[test]
    fn failed_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::create(dir.path()).unwrap();
        let err = store
            .insert_reader(Failing(3 << 20), HashAlg::Sha256)
            .unwrap_err();
        assert!(matches!(err, StoreError::Read(_)));
        assert!(stored_files(&store).is_empty());
    }

    #[test]
    fn concurrent_writers_never_expose_a_partial_object() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::create(dir.path()).unwrap().with_fsync(false);
        let data = content(8 << 20);
        let digest = verity::digest_bytes(HashAlg::Sha256, &data);
        let path = store.object_path(&digest);
        let done = AtomicBool::new(false);

        std::thread::scope(|s| {
            // Watches the final name: whenever it exists, it must hold all the content.
            let watcher = s.spawn(|| {
                let mut seen = 0;
                while !done.load(Ordering::Acquire) {
                    if let Ok(meta) = fs::metadata(&path) {
                        assert_eq!(meta.len(), data.len() as u64, "partial object visible");
                        seen += 1;
                    }
                }
                seen
            });
            let writers: Vec<_> = (0..4)
                .map(|_| s.spawn(|| store.insert_reader(&data[..], HashAlg::Sha256).unwrap()))
                .collect();
            for w in writers {
                assert_eq!(w.join().unwrap(), digest);
            }
            done.store(true, Ordering::Release);
            watcher.join().unwrap();
        });
        assert_eq!(fs::read(&path).unwrap(), data);
        assert_eq!(stored_files(&store), vec![digest.object_path()]);
    }
}

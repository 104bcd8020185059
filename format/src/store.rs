//! The content-addressed object store: `objects/XX/rest-of-hex`, named by fs-verity digest.
//!
//! Objects are written to a temporary file inside `objects/` while their digest is computed
//! in the same pass, then renamed to their final name without replacing an existing object.
//! So an object exists under its name only with its complete content, however many writers
//! race to store it, and identical content is stored once.
//!
//! The store is not trusted: anyone who can write to it may change any file, or replace it
//! with a symlink, a FIFO or a device. Every access goes through [`fsops`], below the root
//! directory opened once: no symlink is ever followed below it, no open blocks, nothing but a
//! regular file of the expected size is read. Content is never trusted by its name: images
//! are verified against their digest whenever they are read ([`ObjectStore::load_image`]),
//! objects whenever they are served, and storing content whose name already exists checks
//! the existing file and replaces it when its bytes are not the content (so "import it
//! again" repairs a damaged object).
//!
//! A *bare* store is just the objects directory (what `mkcomposefs --digest-store=DIR`
//! writes: `DIR/XX/rest`); it has no images, refs or sidecar directories.
//! Images, refs and the lock live in `store/images.rs`, import staging in `store/staging.rs`,
//! gc and fsck in `store/maintenance.rs`, layer records and the manifest map in
//! `store/layers.rs`, partial registry downloads in `store/downloads.rs`.

mod downloads;
pub mod fsops;
mod images;
mod layers;
mod maintenance;
mod staging;

pub use downloads::{DOWNLOADS_DIR, Download};
pub use images::{
    BARE_VERITY_DIR, IMAGES_DIR, ImageInfo, MAX_IMAGE_SIZE, REFS_DIR, StoreLock, StoredImage,
    VERITY_DIR, validate_tag,
};
pub use layers::{LAYERS_DIR, MANIFESTS_DIR, MAX_RECORD_SIZE, split_content_digest};
pub use maintenance::{FsckProblem, FsckReport, GcReport};
pub use staging::{Staging, TMP_DIR};

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use fsops::{Dir, Expect, Kind, TempFile};

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

/// The fan-out directory and file name of an object or sidecar: `XX` and `rest-of-hex`.
fn split_name(digest: &Digest) -> (String, String) {
    let hex = digest.to_hex();
    let rest = hex.get(2..).unwrap_or_default().to_owned();
    let mut fan = hex;
    fan.truncate(2);
    (fan, rest)
}

/// Whether two open files hold the same bytes (read in full, compared chunk by chunk).
fn same_content(a: &File, b: &File) -> io::Result<bool> {
    let (la, lb) = (a.metadata()?.len(), b.metadata()?.len());
    if la != lb {
        return Ok(false);
    }
    // Buffers no larger than the file: most objects are small, and zeroing two large
    // buffers per comparison would cost more than the comparison.
    let chunk = usize::try_from(la).unwrap_or(usize::MAX).min(1 << 18);
    let mut x = vec![0u8; chunk];
    let mut y = vec![0u8; chunk];
    let mut off = 0u64;
    while off < la {
        let n = ((la - off) as usize).min(x.len());
        let (bx, by) = (&mut x[..n], &mut y[..n]);
        if a.read_exact_at(bx, off).is_err() || b.read_exact_at(by, off).is_err() || bx != by {
            return Ok(false);
        }
        off += n as u64;
    }
    Ok(true)
}

/// Whether an open file holds exactly `data`.
fn holds_bytes(file: &File, data: &[u8]) -> io::Result<bool> {
    if file.metadata()?.len() != data.len() as u64 {
        return Ok(false);
    }
    let mut buf = vec![0u8; (1 << 18).min(data.len())];
    for (i, want) in data.chunks(1 << 18).enumerate() {
        let got = &mut buf[..want.len()];
        if file.read_exact_at(got, (i as u64) << 18).is_err() || got != want {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A directory holding `objects/XX/rest-of-hex` files named by their fs-verity digest.
#[derive(Debug, Clone)]
pub struct ObjectStore {
    root: PathBuf,
    /// `root/objects`, or `root` itself in a bare store.
    objects: PathBuf,
    bare: bool,
    fsync: bool,
    /// The root, opened once: every path below it is resolved from here.
    root_fd: Dir,
    objects_fd: Dir,
}

impl ObjectStore {
    /// Opens an existing store.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let root_fd = match Dir::open(&root) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotAStore { path: root });
            }
            Err(e) => return Err(io_err("open", &root)(e)),
        };
        let objects_fd = match root_fd.open_dir(OBJECTS_DIR) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotAStore { path: root });
            }
            Err(e) => return Err(io_err("open", &root.join(OBJECTS_DIR))(e)),
        };
        Ok(ObjectStore::with(root, root_fd, objects_fd, false))
    }

    /// Opens a store, creating its directories if needed.
    pub fn create(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let root_fd = Dir::create(&root).map_err(io_err("create", &root))?;
        let objects_fd = root_fd
            .create_dir(OBJECTS_DIR)
            .map_err(io_err("create", &root.join(OBJECTS_DIR)))?;
        Ok(ObjectStore::with(root, root_fd, objects_fd, false))
    }

    /// Opens an existing bare store: `dir` itself holds the `XX/` object directories.
    pub fn open_bare(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        let fd = Dir::open(&dir).map_err(io_err("open", &dir))?;
        Ok(ObjectStore::with(dir, fd.clone(), fd, true))
    }

    /// Opens a bare store, creating the directory if needed.
    pub fn create_bare(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        let fd = Dir::create(&dir).map_err(io_err("create", &dir))?;
        Ok(ObjectStore::with(dir, fd.clone(), fd, true))
    }

    fn with(root: PathBuf, root_fd: Dir, objects_fd: Dir, bare: bool) -> Self {
        let objects = if bare {
            root.clone()
        } else {
            root.join(OBJECTS_DIR)
        };
        ObjectStore {
            root,
            objects,
            bare,
            fsync: true,
            root_fd,
            objects_fd,
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

    /// The store root, opened: resolve paths inside the store from here (see [`fsops`]).
    pub fn root_fd(&self) -> &Dir {
        &self.root_fd
    }

    /// The directory holding the `XX/` object directories: `objects/`, or the root of a bare
    /// store. composefs mounts use it as the overlay data layer.
    pub fn objects_dir(&self) -> &Path {
        &self.objects
    }

    /// The objects directory, opened (see [`fsops`]).
    pub fn objects_fd(&self) -> &Dir {
        &self.objects_fd
    }

    /// Where the object with this digest is (or would be) stored. For messages: open objects
    /// with [`ObjectStore::open_object`].
    pub fn object_path(&self, digest: &Digest) -> PathBuf {
        self.objects.join(digest.object_path())
    }

    /// Whether a regular file is stored under this digest's name (its content unchecked).
    pub fn contains(&self, digest: &Digest) -> bool {
        self.object_size(digest).is_some()
    }

    /// The size of the regular file stored under this digest's name, if there is one.
    pub fn object_size(&self, digest: &Digest) -> Option<u64> {
        let (fan, rest) = split_name(digest);
        self.objects_fd
            .open_dir_if_exists(&fan)
            .ok()
            .flatten()
            .and_then(|d| d.metadata(&rest).ok().flatten())
            .filter(|m| m.kind == Kind::File)
            .map(|m| m.len)
    }

    /// Whether the object stored under this digest's name is a regular file whose content
    /// has that digest (read whole: the one sure check without kernel fs-verity).
    pub fn object_is_intact(&self, digest: &Digest) -> bool {
        self.objects_fd
            .open_file(digest.object_path(), Expect::Any)
            .and_then(|f| verity::digest_reader(digest.alg(), f))
            .is_ok_and(|actual| actual == *digest)
    }

    /// Opens a stored object for reading: a regular file, never through a symlink, never
    /// blocking. Its content is not checked against the digest.
    pub fn open_object(&self, digest: &Digest) -> Result<File> {
        self.open_object_expecting(digest, Expect::Any)
    }

    /// Opens a stored object that must have `size` bytes (the size an image gives it).
    pub fn open_object_sized(&self, digest: &Digest, size: u64) -> Result<File> {
        self.open_object_expecting(digest, Expect::Size(size))
    }

    fn open_object_expecting(&self, digest: &Digest, expect: Expect) -> Result<File> {
        self.objects_fd
            .open_file(digest.object_path(), expect)
            .map_err(io_err("open object", &self.object_path(digest)))
    }

    /// Stores a file's content; returns its digest.
    pub fn insert_file(&self, src: &Path, alg: HashAlg) -> Result<Digest> {
        let file = fsops::open_regular(src, Expect::Any).map_err(io_err("open", src))?;
        let mut hasher = FsVerityHasher::new(alg);
        let tmp = self.copy_to_temp(file, &mut hasher, Some(src))?;
        let digest = hasher.finalize();
        self.commit(tmp, &digest)?;
        Ok(digest)
    }

    /// Stores a file's content; returns its digest and Merkle tree (for a verity sidecar).
    pub fn insert_file_with_tree(&self, src: &Path, alg: HashAlg) -> Result<(Digest, MerkleTree)> {
        let file = fsops::open_regular(src, Expect::Any).map_err(io_err("open", src))?;
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

    /// Stores a buffer; returns its digest. Nothing is written if the object exists with
    /// this content.
    pub fn insert_bytes(&self, data: &[u8], alg: HashAlg) -> Result<Digest> {
        // The data is at hand, so hashing first is cheap and skips the temporary file
        // for content already stored.
        let digest = verity::digest_bytes(alg, data);
        let intact = self
            .objects_fd
            .open_file_if_exists(digest.object_path(), Expect::Size(data.len() as u64))
            .ok()
            .flatten()
            .is_some_and(|f| holds_bytes(&f, data).unwrap_or(false));
        if !intact {
            let mut tmp = self.temp_file()?;
            tmp.file_mut()
                .write_all(data)
                .map_err(io_err("write", &tmp.display()))?;
            self.commit(tmp, &digest)?;
        }
        Ok(digest)
    }

    /// A new temporary file (mode 0644) in `dir` holding `data`, fsynced if the store
    /// fsyncs: for a small file to be given its name with [`TempFile::persist`] (removed
    /// again if dropped).
    fn temp_holding(&self, dir: &Dir, data: &[u8]) -> Result<TempFile> {
        let mut tmp = dir
            .create_temp(TEMP_PREFIX, 0o644)
            .map_err(io_err("create a temporary file in", dir.path()))?;
        tmp.file_mut()
            .write_all(data)
            .map_err(io_err("write", &tmp.display()))?;
        if self.fsync {
            tmp.file()
                .sync_all()
                .map_err(io_err("fsync", &tmp.display()))?;
        }
        Ok(tmp)
    }

    fn temp_file(&self) -> Result<TempFile> {
        self.objects_fd
            .create_temp(TEMP_PREFIX, 0o600)
            .map_err(io_err("create a temporary file in", &self.objects))
    }

    /// Copies `reader` into a new temporary file inside the store, feeding `hasher` on the way.
    /// On error the temporary file is removed when dropped.
    fn copy_to_temp(
        &self,
        mut reader: impl Read,
        hasher: &mut FsVerityHasher,
        src: Option<&Path>,
    ) -> Result<TempFile> {
        let mut tmp = self.temp_file()?;
        let mut buf = vec![0u8; verity::READ_BUF_SIZE];
        loop {
            let n = verity::read_full(&mut reader, &mut buf).map_err(|e| match src {
                Some(src) => io_err("read", src)(e),
                None => StoreError::Read(e),
            })?;
            hasher.update(&buf[..n]);
            tmp.file_mut()
                .write_all(&buf[..n])
                .map_err(io_err("write", &tmp.display()))?;
            if n < buf.len() {
                return Ok(tmp);
            }
        }
    }

    /// The fan-out directory `XX` of a digest, created if missing. Something other than a
    /// directory there (a symlink, say) is an error, never followed.
    fn fan_dir(&self, base: &Dir, digest: &Digest) -> Result<Dir> {
        let (fan, _) = split_name(digest);
        base.create_dir(&fan).map_err(|e| {
            let path = base.display(&fan);
            StoreError::Corrupt {
                reason: format!("{e} (run `imgmount fsck --repair`)"),
                path,
            }
        })
    }

    /// Gives a complete temporary file its object name. An object already there is kept if
    /// it holds the same bytes (an existing object may have kernel fs-verity enabled, which
    /// a rename over it would drop), and replaced if it does not: its name lied.
    fn commit(&self, tmp: TempFile, digest: &Digest) -> Result<()> {
        rustix::fs::fchmod(tmp.file(), rustix::fs::Mode::from_raw_mode(OBJECT_MODE))
            .map_err(|e| io_err("set permissions of", &tmp.display())(e.into()))?;
        if self.fsync {
            // Data first, name second: the name must never point at content not yet on disk.
            tmp.file()
                .sync_all()
                .map_err(io_err("fsync", &tmp.display()))?;
        }
        let fan = self.fan_dir(&self.objects_fd, digest)?;
        let (_, rest) = split_name(digest);
        self.place(tmp, &fan, OsStr::new(&rest), digest)
    }

    /// Names `tmp` `name` in `dir` unless a file with the same bytes is already there.
    fn place(&self, tmp: TempFile, dir: &Dir, name: &OsStr, digest: &Digest) -> Result<()> {
        let path = self.object_path(digest);
        match dir.open_file_if_exists(name, Expect::Any) {
            Ok(None) => {
                // Losing a race to another writer leaves its copy, which is the content (or
                // is replaced by whoever stores this content next).
                tmp.persist_noclobber(dir, name)
                    .map_err(io_err("rename an object into", &path))?;
                Ok(())
            }
            Ok(Some(existing)) if same_content(&existing, tmp.file()).unwrap_or(false) => Ok(()),
            // Other bytes, a symlink, a FIFO, a device: the name lies, the new file replaces
            // it (a directory there makes this fail, for fsck to report).
            _ => tmp.persist(dir, name).map_err(io_err("replace", &path)),
        }
    }
}
#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
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

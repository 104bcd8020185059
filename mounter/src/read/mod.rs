//! Verified reads of object files.
//!
//! An external file of the image names its object by a redirect (`/XX/rest`, relative to the
//! objects directory) and, usually, its fs-verity digest. [`Objects::open`] opens the object
//! and decides how its reads are checked ([`kernel::decide`]): by the kernel's fs-verity, by a
//! Merkle tree checked in user space ([`sidecar`]), or not at all. [`Objects::read`] then
//! serves byte ranges; with a tree, every block is hashed and compared before any byte of it
//! is returned. A request for whole 64 KiB segments (the kernel's readahead) is read and
//! verified in the reply buffer itself; the kernel's page cache keeps those pages. Partial
//! segments (small or unaligned requests) are read and verified whole, and go into a
//! [`cache::BlockCache`], so the rest of the segment is not hashed again when it is asked
//! for next. A block that fails is an error for the reads that need it, logged with the object
//! and offset; the object stays open and its other blocks keep being served.

pub mod cache;
pub mod cores;
pub mod fds;
pub mod kernel;
pub mod parallel;
pub mod sidecar;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use imgmount_format::composefs::redirect_object_path;
use imgmount_format::store::fsops::{Dir, Expect};
use imgmount_format::verity::{BLOCK_SIZE, Digest, MerkleTree};
use lru::LruCache;

use cache::{BlockCache, SEGMENT};
use fds::FdPool;
use kernel::{Measured, Strategy};
use parallel::ParallelVerifier;
use sidecar::Sidecars;

/// How much checking `--verity` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VerityMode {
    /// Every external file must carry a digest, and every byte is checked.
    Require,
    /// Files with a digest are checked; files without one are served as stored.
    Auto,
    /// Nothing is checked: the object store is trusted.
    Off,
}

/// Why an object cannot be opened or a range of it read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("redirect {0:?} is not a path inside the object store")]
    BadRedirect(String),
    #[error("cannot open object {name}: {source}")]
    Open { name: String, source: io::Error },
    #[error("object {name}: {source}")]
    Refused {
        name: String,
        source: Box<kernel::Refusal>,
    },
    #[error("object {name}: {source}")]
    Tree {
        name: String,
        source: Box<sidecar::TreeError>,
    },
    #[error("object {name}: reading at offset {offset}: {source}")]
    Io {
        name: String,
        offset: u64,
        source: io::Error,
    },
    #[error("object {name}: block at offset {offset} failed verification: {source}")]
    Verify {
        name: String,
        offset: u64,
        source: imgmount_format::verity::VerityError,
    },
}

/// Settings for [`Objects`].
#[derive(Clone, Debug)]
pub struct ReadConfig {
    pub objects_dir: PathBuf,
    pub sidecar_dir: PathBuf,
    pub mode: VerityMode,
    /// Bound of the verified-block cache, in bytes.
    pub cache_bytes: u64,
    /// How many opened objects (their trees) are kept after their last close.
    pub keep_open: usize,
    /// Cores one large read may be verified on (0: all of them, 1: only the FUSE thread
    /// serving it); see [`parallel`].
    pub verify_threads: usize,
    /// How many object files are kept open at once; beyond that the least recently read
    /// are closed, and opened (and checked) again when next read.
    pub open_files: usize,
}

/// How one open object's reads are checked.
enum Check {
    /// The kernel's fs-verity does it (measured equal to this digest).
    Kernel(Digest),
    Tree(Box<MerkleTree>),
    None,
}

/// An opened object: where its file is, its size as the image gives it, and how reads are
/// checked. The file itself is in the [`FdPool`] (see [`Objects::file`]).
pub struct Object {
    /// Cache-wide id, stable for the life of the mount for a given object.
    id: u64,
    /// The object file, relative to the objects directory.
    rel: PathBuf,
    size: u64,
    /// For log lines: the redirect path.
    name: String,
    check: Check,
}

impl Object {
    /// True when the kernel verifies reads (fs-verity) or nothing needs verifying, so the
    /// file may be handed to the kernel for passthrough reads.
    pub fn kernel_checked(&self) -> bool {
        matches!(self.check, Check::Kernel(_))
    }

    #[cfg(test)]
    pub fn is_verified(&self) -> bool {
        !matches!(self.check, Check::None)
    }
}

/// Identity of an object for the caches: its digest, or its redirect when it has none.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum ObjectKey {
    Digest(Digest),
    Path(Vec<u8>),
}

/// The object store as seen by a mount: opens objects and serves verified reads.
pub struct Objects {
    cfg: ReadConfig,
    /// The objects directory, opened once (retried while it cannot be).
    dir: OnceLock<Dir>,
    fds: FdPool,
    sidecars: Sidecars,
    blocks: BlockCache,
    verifier: ParallelVerifier,
    /// Recently opened objects, so reopening a file costs neither an open nor a tree load.
    recent: Mutex<LruCache<ObjectKey, Arc<Object>>>,
    ids: Mutex<HashMap<ObjectKey, u64>>,
    next_id: AtomicU64,
}

impl Objects {
    pub fn new(cfg: ReadConfig) -> Self {
        let keep = NonZeroUsize::new(cfg.keep_open).unwrap_or(NonZeroUsize::MIN);
        let dir = OnceLock::new();
        if let Ok(d) = Dir::open(&cfg.objects_dir) {
            let _ = dir.set(d);
        }
        Objects {
            dir,
            fds: FdPool::new(cfg.open_files),
            sidecars: Sidecars::new(cfg.sidecar_dir.clone()),
            blocks: BlockCache::new(cfg.cache_bytes, SEGMENT),
            verifier: ParallelVerifier::new(cfg.verify_threads),
            recent: Mutex::new(LruCache::new(keep)),
            ids: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            cfg,
        }
    }

    #[cfg(test)]
    pub fn block_cache(&self) -> &BlockCache {
        &self.blocks
    }

    /// The object file a redirect names, refusing anything that could leave the store
    /// (`..`, empty components); the image is not trusted to name paths.
    #[cfg(test)]
    pub fn object_path(&self, redirect: &[u8]) -> Result<PathBuf, ReadError> {
        Ok(self.cfg.objects_dir.join(object_rel(redirect)?))
    }

    /// The objects directory, opened.
    fn objects_dir(&self) -> io::Result<&Dir> {
        if let Some(d) = self.dir.get() {
            return Ok(d);
        }
        let d = Dir::open(&self.cfg.objects_dir)?;
        Ok(self.dir.get_or_init(|| d))
    }

    /// Opens an object file for `obj`-to-be of `size` bytes: never through a symlink, never
    /// blocking, and only a regular file of exactly that size.
    fn open_object_file(&self, rel: &Path, size: u64, name: &str) -> Result<File, ReadError> {
        self.objects_dir()
            .and_then(|d| d.open_file(rel, Expect::Size(size)))
            .map_err(|source| ReadError::Open {
                name: name.to_owned(),
                source,
            })
    }

    /// Opens the object for an external file of `size` bytes.
    pub fn open(
        &self,
        redirect: &[u8],
        digest: Option<Digest>,
        size: u64,
    ) -> Result<Arc<Object>, ReadError> {
        let key = match digest {
            Some(d) => ObjectKey::Digest(d),
            None => ObjectKey::Path(redirect.to_vec()),
        };
        if let Some(obj) = self.lock_recent().get(&key)
            && obj.size == size
        {
            return Ok(obj.clone());
        }
        let name = String::from_utf8_lossy(redirect).into_owned();
        let rel = object_rel(redirect)?.to_owned();
        let file = self.open_object_file(&rel, size, &name)?;
        let measured = if kernel::needs_measure(self.cfg.mode, digest.as_ref()) {
            kernel::measure(&file)
        } else {
            Measured::Unsupported
        };
        let strategy = kernel::decide(self.cfg.mode, digest, measured).map_err(|source| {
            ReadError::Refused {
                name: name.clone(),
                source: Box::new(source),
            }
        })?;
        let check = match strategy {
            Strategy::Kernel => match digest {
                Some(d) => Check::Kernel(d),
                None => Check::None,
            },
            Strategy::Unverified => Check::None,
            Strategy::UserTree(expected) => Check::Tree(Box::new(
                self.sidecars
                    .load_or_build(expected, size, &file, &name)
                    .map_err(|source| ReadError::Tree {
                        name: name.clone(),
                        source: Box::new(source),
                    })?,
            )),
        };
        let obj = Arc::new(Object {
            id: self.id_for(&key),
            rel,
            size,
            name,
            check,
        });
        self.fds.put(obj.id, Arc::new(file));
        self.lock_recent().put(key, obj.clone());
        Ok(obj)
    }

    /// The open file of an object: kept in the [`FdPool`], or opened again if the pool
    /// closed it (a regular file of the object's size; with kernel verity, measured again).
    pub fn file(&self, obj: &Object) -> Result<Arc<File>, ReadError> {
        if let Some(f) = self.fds.get(obj.id) {
            return Ok(f);
        }
        let file = self.open_object_file(&obj.rel, obj.size, &obj.name)?;
        if let Check::Kernel(expected) = &obj.check {
            let measured = kernel::measure(&file);
            if measured != Measured::Enabled(*expected) {
                return Err(ReadError::Open {
                    name: obj.name.clone(),
                    source: io::Error::other(
                        "reopened, it no longer has the kernel fs-verity digest it had",
                    ),
                });
            }
        }
        let file = Arc::new(file);
        self.fds.put(obj.id, file.clone());
        Ok(file)
    }

    /// Reads the first bytes of an object and throws them away, so that its first read
    /// finds them in the page cache (see [`crate::fs::readahead`]). Nothing is verified or
    /// kept here; the read that serves them verifies them.
    pub fn warm(&self, obj: &Object) {
        /// The kernel's own readahead takes over after the first request.
        const WARM: u64 = 128 << 10;
        thread_local!(static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) });
        let Ok(file) = self.file(obj) else { return };
        SCRATCH.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.resize(obj.size.min(WARM) as usize, 0);
            let _ = read_full_at(&file, &mut buf, 0);
        });
    }

    fn lock_recent(&self) -> std::sync::MutexGuard<'_, LruCache<ObjectKey, Arc<Object>>> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn id_for(&self, key: &ObjectKey) -> u64 {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        *ids.entry(key.clone())
            .or_insert_with(|| self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Reads up to `len` bytes at `offset`, clamped to the file's size, appending them to
    /// `out`. With a tree every byte appended has been verified; on an error nothing of the
    /// request should be served.
    pub fn read(
        &self,
        obj: &Object,
        offset: u64,
        len: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), ReadError> {
        let end = offset.saturating_add(u64::from(len)).min(obj.size);
        if offset >= end {
            return Ok(());
        }
        match &obj.check {
            Check::Kernel(_) | Check::None => {
                let file = self.file(obj)?;
                let at = out.len();
                let n = read_appending(&file, out, (end - offset) as usize, offset).map_err(
                    |source| ReadError::Io {
                        name: obj.name.clone(),
                        offset,
                        source,
                    },
                )?;
                out.truncate(at + n);
                Ok(())
            }
            Check::Tree(tree) => self.read_verified(obj, tree, offset, end, out),
        }
    }

    /// Serves `offset..end` segment by segment: from the cache, or read, verified block by
    /// block, and cached.
    fn read_verified(
        &self,
        obj: &Object,
        tree: &MerkleTree,
        offset: u64,
        end: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), ReadError> {
        let seg = SEGMENT as u64;
        // Whole segments not in the cache, consecutive, not yet read: `start..stop`.
        let mut run: Option<(u64, u64)> = None;
        for s in offset / seg..end.div_ceil(seg) {
            let start = s * seg;
            let stop = (start + seg).min(obj.size);
            let a = (offset.max(start) - start) as usize;
            let b = (end.min(stop) - start) as usize;
            let cached = self
                .blocks
                .get(&(obj.id, s))
                .filter(|d| d.len() as u64 == stop - start);
            if cached.is_none() && a == 0 && b as u64 == stop - start {
                // The request wants the whole segment: it joins the run read straight into
                // the reply and verified there, with one pread and, when the run is large,
                // on several cores. It is not cached: the kernel keeps it in the page cache
                // (FOPEN_KEEP_CACHE), so a sequential read never asks for it again, and
                // copying every segment of a large read into the cache (evicting others)
                // costs more than hashing the rare segment asked for twice.
                run = Some((run.map_or(start, |(from, _)| from), stop));
                continue;
            }
            if let Some((from, to)) = run.take() {
                self.read_run_into(obj, tree, from, to, out)?;
            }
            if let Some(d) = cached {
                out.extend_from_slice(&d[a..b]);
                continue;
            }
            let (data, bad) = self.read_segment(obj, tree, s, start, stop)?;
            if bad == 0 {
                out.extend_from_slice(&data[a..b]);
                self.blocks.insert((obj.id, s), Arc::new(data));
                continue;
            }
            // Some block of the segment is bad: serve the request only if it needs none of
            // them (so exactly the bad blocks fail), and never cache the segment.
            let first = a / BLOCK_SIZE;
            let last = b.div_ceil(BLOCK_SIZE);
            let wanted = (first..last).fold(0u16, |m, i| m | (1 << i));
            if let Some(i) = (0..16).find(|i| bad & wanted & (1 << i) != 0) {
                return Err(ReadError::Verify {
                    name: obj.name.clone(),
                    offset: start + (i * BLOCK_SIZE) as u64,
                    source: imgmount_format::verity::VerityError::DataBlockMismatch {
                        block: start / BLOCK_SIZE as u64 + i as u64,
                    },
                });
            }
            out.extend_from_slice(&data[a..b]);
            self.blocks.recycle(&(obj.id, s), data);
        }
        if let Some((from, to)) = run {
            self.read_run_into(obj, tree, from, to, out)?;
        }
        Ok(())
    }

    /// Appends `start..stop` (whole segments) to `out`, read and verified there; on a
    /// failed block (logged with object and offset) `out` is left as it was.
    fn read_run_into(
        &self,
        obj: &Object,
        tree: &MerkleTree,
        start: u64,
        stop: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), ReadError> {
        let bs = BLOCK_SIZE as u64;
        let at = out.len();
        let file = self.file(obj)?;
        read_appending(&file, out, (stop - start) as usize, start).map_err(|source| {
            ReadError::Io {
                name: obj.name.clone(),
                offset: start,
                source,
            }
        })?;
        let Err(source) = self.verifier.verify(tree, start / bs, &out[at..]) else {
            return Ok(());
        };
        // Name the exact block that is bad, as block-by-block checking finds it.
        let err = bad_blocks(obj, tree, start, &out[at..]).next().map_or_else(
            || ReadError::Verify {
                name: obj.name.clone(),
                offset: start,
                source,
            },
            |(_, err)| err,
        );
        out.truncate(at);
        Err(err)
    }

    /// Reads `start..stop` (segment `seg`) and verifies each of its blocks; returns the data
    /// and a mask of the blocks that failed (each logged with object and offset).
    fn read_segment(
        &self,
        obj: &Object,
        tree: &MerkleTree,
        seg: u64,
        start: u64,
        stop: u64,
    ) -> Result<(Vec<u8>, u16), ReadError> {
        let bs = BLOCK_SIZE as u64;
        // A recycled buffer: every byte of it is overwritten below.
        let mut buf = self.blocks.buffer(&(obj.id, seg), (stop - start) as usize);
        let file = self.file(obj)?;
        let n = read_full_at(&file, &mut buf, start).map_err(|source| ReadError::Io {
            name: obj.name.clone(),
            offset: start,
            source,
        })?;
        // A short object is caught by verification: the missing tail is zero, which
        // hashes right only if zeros are the right bytes.
        buf[n..].fill(0);
        let mut bad = 0u16;
        if self.verifier.verify(tree, start / bs, &buf).is_err() {
            for (i, _) in bad_blocks(obj, tree, start, &buf) {
                bad |= 1 << i;
            }
        }
        Ok((buf, bad))
    }
}

/// The blocks of `data` (read at `start`) that fail verification one by one, each logged
/// with the object and its offset, with their index in `data`. This is the slow path, taken
/// only once a run of blocks has failed, to say exactly which blocks are bad.
fn bad_blocks<'a>(
    obj: &'a Object,
    tree: &'a MerkleTree,
    start: u64,
    data: &'a [u8],
) -> impl Iterator<Item = (usize, ReadError)> + 'a {
    let bs = BLOCK_SIZE as u64;
    data.chunks(BLOCK_SIZE)
        .enumerate()
        .filter_map(move |(i, block_data)| {
            let block = start / bs + i as u64;
            let source = tree.verify_data_block(block, block_data).err()?;
            let err = ReadError::Verify {
                name: obj.name.clone(),
                offset: block * bs,
                source,
            };
            // The filesystem logs the refusal with the file's path; this is detail.
            log::debug!("{err}");
            Some((i, err))
        })
}

/// The object file a redirect names, relative to the objects directory (see
/// [`Objects::object_path`]).
fn object_rel(redirect: &[u8]) -> Result<&Path, ReadError> {
    redirect_object_path(redirect)
        .ok_or_else(|| ReadError::BadRedirect(String::from_utf8_lossy(redirect).into_owned()))
}

/// Appends `len` bytes read at `offset` to `out`, without zeroing the space first: `pread`
/// until they are all read or the file ends, and zeros for whatever the file did not have.
/// Returns how many bytes came from the file. On an error `out` is left as it was.
fn read_appending(file: &File, out: &mut Vec<u8>, len: usize, offset: u64) -> io::Result<usize> {
    out.reserve(len);
    let spare = &mut out.spare_capacity_mut()[..len];
    let mut done = 0;
    while done < len {
        let rest = &mut spare[done..];
        // SAFETY: `rest` is writable memory of `rest.len()` bytes owned by `out`; pread
        // writes at most that many bytes into it.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                rest.as_mut_ptr().cast(),
                rest.len(),
                (offset + done as u64) as libc::off_t,
            )
        };
        match n {
            0 => break,
            n if n > 0 => done += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    for b in &mut spare[done..] {
        b.write(0);
    }
    // SAFETY: the `len` bytes after the old length were all written: `done` by pread, the
    // rest with zeros.
    unsafe { out.set_len(out.len() + len) };
    Ok(done)
}

/// `pread` until `buf` is full or the file ends; returns the bytes read.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgmount_format::verity::{HashAlg, digest_bytes};
    use std::fs;

    struct Fixture {
        _dir: tempfile::TempDir,
        objects: Objects,
        data: Vec<u8>,
        digest: Digest,
        redirect: Vec<u8>,
        path: PathBuf,
    }

    fn fixture(mode: VerityMode, size: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 253) as u8).collect();
        let digest = digest_bytes(HashAlg::Sha256, &data);
        let rel = digest.object_path();
        let path = dir.path().join("objects").join(&rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, &data).unwrap();
        let objects = Objects::new(ReadConfig {
            objects_dir: dir.path().join("objects"),
            sidecar_dir: dir.path().join("verity"),
            mode,
            cache_bytes: 1 << 20,
            keep_open: 4,
            verify_threads: 2,
            open_files: 64,
        });
        Fixture {
            _dir: dir,
            objects,
            data,
            digest,
            redirect: format!("/{rel}").into_bytes(),
            path,
        }
    }

    /// Builds the object's sidecar (as a previous mount would have), replaces its content
    /// with `bad`, and opens it again through a fresh read path.
    fn tampered(f: &Fixture, bad: &[u8]) -> (Objects, Arc<Object>) {
        let size = f.data.len() as u64;
        drop(f.objects.open(&f.redirect, Some(f.digest), size).unwrap());
        fs::write(&f.path, bad).unwrap();
        let fresh = Objects::new(f.objects.cfg.clone());
        let obj = fresh.open(&f.redirect, Some(f.digest), size).unwrap();
        (fresh, obj)
    }

    fn read(f: &Fixture, obj: &Object, off: u64, len: u32) -> Result<Vec<u8>, ReadError> {
        read_with(&f.objects, obj, off, len)
    }

    fn read_with(o: &Objects, obj: &Object, off: u64, len: u32) -> Result<Vec<u8>, ReadError> {
        let mut out = b"prefix".to_vec();
        o.read(obj, off, len, &mut out)?;
        assert_eq!(&out[..6], b"prefix", "appends");
        Ok(out.split_off(6))
    }

    #[test]
    fn verified_reads_return_exact_bytes() {
        let f = fixture(VerityMode::Require, 1_000_000);
        let obj = f
            .objects
            .open(&f.redirect, Some(f.digest), f.data.len() as u64)
            .unwrap();
        assert!(obj.is_verified());
        for (off, len) in [(0u64, 10u32), (4095, 2), (12_345, 100_000), (999_990, 100)] {
            let got = read(&f, &obj, off, len).unwrap();
            let end = (off as usize + len as usize).min(f.data.len());
            assert_eq!(got, &f.data[off as usize..end], "at {off}+{len}");
        }
        assert!(read(&f, &obj, 2_000_000, 10).unwrap().is_empty());
        assert!(f.objects.block_cache().len() > 0);
    }

    #[test]
    fn corrupt_block_fails_alone() {
        let f = fixture(VerityMode::Auto, 300_000);
        let mut bad = f.data.clone();
        bad[5 * 4096 + 7] ^= 0x10;
        let (fresh, obj) = tampered(&f, &bad);
        let err = read_with(&fresh, &obj, 5 * 4096, 10).unwrap_err();
        assert!(matches!(err, ReadError::Verify { offset, .. } if offset == 5 * 4096));
        assert!(read_with(&fresh, &obj, 4 * 4096, 8192 * 2).is_err());
        // Neighbours in the same cache segment are still served, and not from a cache.
        assert_eq!(
            read_with(&fresh, &obj, 0, 5 * 4096).unwrap(),
            &f.data[..5 * 4096]
        );
        let got = read_with(&fresh, &obj, 6 * 4096, 50_000).unwrap();
        assert_eq!(got, &f.data[6 * 4096..6 * 4096 + 50_000]);
        assert!(read_with(&fresh, &obj, 5 * 4096 + 4095, 1).is_err());
    }

    #[test]
    fn whole_segment_reads_are_verified() {
        let f = fixture(VerityMode::Require, 300_000);
        let seg = SEGMENT as u64;
        let mut bad = f.data.clone();
        bad[(seg + 3 * 4096 + 100) as usize] ^= 0x01;
        // The object is also cut short: its last segment is missing its final bytes. A short
        // object is refused at open; cut short after the open, its reads are still checked.
        bad.truncate(f.data.len() - 10);
        let fresh = Objects::new(f.objects.cfg.clone());
        let obj = fresh
            .open(&f.redirect, Some(f.digest), f.data.len() as u64)
            .unwrap();
        fs::write(&f.path, &bad).unwrap();
        let err = Objects::new(f.objects.cfg.clone())
            .open(&f.redirect, Some(f.digest), f.data.len() as u64)
            .err()
            .unwrap();
        assert!(err.to_string().contains("expected 300000"), "{err}");
        // Whole segments, as readahead asks for them.
        assert_eq!(
            read_with(&fresh, &obj, 0, SEGMENT as u32).unwrap(),
            &f.data[..SEGMENT]
        );
        let err = read_with(&fresh, &obj, seg, SEGMENT as u32).unwrap_err();
        assert!(matches!(err, ReadError::Verify { offset, .. } if offset == seg + 3 * 4096));
        assert!(read_with(&fresh, &obj, 0, 1 << 20).is_err());
        assert_eq!(
            read_with(&fresh, &obj, 2 * seg, SEGMENT as u32).unwrap(),
            &f.data[2 * SEGMENT..3 * SEGMENT]
        );
        // The last (short) segment, whole: the missing tail does not verify.
        let err = read_with(&fresh, &obj, 4 * seg, SEGMENT as u32).unwrap_err();
        let tail_block = (f.data.len() as u64 - 1) / 4096 * 4096;
        assert!(matches!(err, ReadError::Verify { offset, .. } if offset == tail_block));
        // Good blocks next to the bad ones are still served, by smaller reads.
        assert_eq!(
            read_with(&fresh, &obj, seg, 3 * 4096).unwrap(),
            &f.data[SEGMENT..SEGMENT + 3 * 4096]
        );
        assert_eq!(
            read_with(&fresh, &obj, 4 * seg, 4096).unwrap(),
            &f.data[4 * SEGMENT..4 * SEGMENT + 4096]
        );
    }

    #[test]
    fn large_reads_split_between_cores_fail_at_the_bad_block() {
        let f = fixture(VerityMode::Require, 3 << 20);
        let bad_at = (1 << 20) + (700 << 10) + 5;
        let mut bad = f.data.clone();
        bad[bad_at] ^= 0x08;
        let (fresh, obj) = tampered(&f, &bad);
        // 1 MiB requests, as the kernel sends them: each split between two threads.
        assert_eq!(
            read_with(&fresh, &obj, 0, 1 << 20).unwrap(),
            &f.data[..1 << 20]
        );
        let err = read_with(&fresh, &obj, 1 << 20, 1 << 20).unwrap_err();
        let block_start = (bad_at / 4096 * 4096) as u64;
        assert!(
            matches!(err, ReadError::Verify { offset, .. } if offset == block_start),
            "{err}"
        );
        assert_eq!(
            read_with(&fresh, &obj, 2 << 20, 1 << 20).unwrap(),
            &f.data[2 << 20..]
        );
        // A request starting mid-segment: the partial head segment, then a run.
        assert!(read_with(&fresh, &obj, (1 << 20) + 100, 1 << 20).is_err());
        assert_eq!(
            read_with(&fresh, &obj, 100, 1 << 20).unwrap(),
            &f.data[100..(1 << 20) + 100]
        );
    }

    #[test]
    fn off_mode_serves_without_checking() {
        let f = fixture(VerityMode::Off, 10_000);
        let mut bad = f.data.clone();
        bad[0] ^= 1;
        fs::write(&f.path, &bad).unwrap();
        let obj = f
            .objects
            .open(&f.redirect, Some(f.digest), f.data.len() as u64)
            .unwrap();
        assert!(!obj.is_verified());
        assert_eq!(read(&f, &obj, 0, 4).unwrap(), &bad[..4]);
    }

    #[test]
    fn require_refuses_files_without_digest() {
        let f = fixture(VerityMode::Require, 100);
        let err = f.objects.open(&f.redirect, None, 100).err().unwrap();
        assert!(matches!(
            err,
            ReadError::Refused { source, .. } if *source == kernel::Refusal::NoDigest
        ));
        let auto = Objects::new(ReadConfig {
            mode: VerityMode::Auto,
            ..f.objects.cfg.clone()
        });
        let obj = auto.open(&f.redirect, None, 100).unwrap();
        assert_eq!(read_with(&auto, &obj, 0, 200).unwrap(), f.data);
    }

    #[test]
    fn redirects_cannot_escape_the_store() {
        let f = fixture(VerityMode::Auto, 10);
        for bad in [
            &b"/../etc/passwd"[..],
            b"/ab/../../x",
            b"",
            b"/",
            b"//x",
            b"/a/./b",
        ] {
            assert!(
                matches!(f.objects.object_path(bad), Err(ReadError::BadRedirect(_))),
                "{bad:?}"
            );
        }
        assert!(
            f.objects
                .object_path(b"/ab/cdef")
                .unwrap()
                .ends_with("objects/ab/cdef")
        );
    }

    #[test]
    fn missing_object_is_an_open_error() {
        let f = fixture(VerityMode::Auto, 10);
        fs::remove_file(&f.path).unwrap();
        assert!(matches!(
            f.objects.open(&f.redirect, Some(f.digest), 10),
            Err(ReadError::Open { .. })
        ));
    }

    /// More open objects than the descriptor budget: every one still reads right (closed
    /// descriptors are reopened), and no more than the budget stay open.
    #[test]
    fn open_objects_beyond_the_descriptor_budget_still_read() {
        let f = fixture(VerityMode::Require, 10);
        let objects = Objects::new(ReadConfig {
            open_files: 16,
            keep_open: 1,
            ..f.objects.cfg.clone()
        });
        let mut held = Vec::new();
        for i in 0..200u32 {
            let data: Vec<u8> = (0..9000u32).map(|j| ((i * 7 + j) % 251) as u8).collect();
            let digest = digest_bytes(HashAlg::Sha256, &data);
            let path = f.objects.cfg.objects_dir.join(digest.object_path());
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, &data).unwrap();
            let redirect = format!("/{}", digest.object_path()).into_bytes();
            let obj = objects.open(&redirect, Some(digest), 9000).unwrap();
            held.push((obj, data));
        }
        assert!(objects.fds.len() <= 16, "{}", objects.fds.len());
        for (obj, data) in held.iter().rev() {
            assert_eq!(read_with(&objects, obj, 0, 9000).unwrap(), *data);
        }
        assert!(objects.fds.len() <= 16);
    }

    /// Something other than a regular file where the object should be: refused at once.
    #[test]
    fn fifos_symlinks_and_devices_are_refused() {
        let f = fixture(VerityMode::Auto, 10);
        let c = std::ffi::CString::new(f.path.as_os_str().as_encoded_bytes()).unwrap();
        for plant in 0..3 {
            fs::remove_file(&f.path).unwrap();
            match plant {
                // SAFETY: a valid NUL-terminated path.
                0 => assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0),
                1 => std::os::unix::fs::symlink("/dev/zero", &f.path).unwrap(),
                _ => std::os::unix::fs::symlink("/etc/passwd", &f.path).unwrap(),
            }
            let fresh = Objects::new(f.objects.cfg.clone());
            let err = fresh.open(&f.redirect, Some(f.digest), 10).err().unwrap();
            assert!(matches!(err, ReadError::Open { .. }), "{err}");
        }
    }
}

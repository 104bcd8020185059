//! Staging: objects an import writes before it knows it will succeed.
//!
//! A [`Staging`] is a private directory under `<root>/tmp/`. Content goes there
//! first (named by its digest once known, with its Merkle-tree sidecar beside
//! it); [`Staging::commit`] links it all into `objects/` and `verity/`.
//! Dropping a `Staging` without committing removes the directory and
//! everything in it, so a failed import leaves the store as it was.

use std::collections::HashSet;
use std::fs::{self, File, Permissions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::{OBJECT_MODE, ObjectStore, Result, StoreError, TEMP_PREFIX, io_err};
use crate::verity::{self, Digest, FsVerityHasher, HashAlg};

/// Name of the directory holding staging directories, under the store root.
pub const TMP_DIR: &str = "tmp";
const SIDECAR_SUFFIX: &str = ".verity";

/// New objects of one import, not yet in the store.
pub struct Staging<'s> {
    store: &'s ObjectStore,
    dir: TempDir,
    alg: HashAlg,
    /// Digests staged, in order, each once.
    staged: Vec<Digest>,
    seen: HashSet<Digest>,
    buf: Vec<u8>,
}

/// Links `src` to `dst` unless `dst` exists: a rename that never replaces (an
/// existing object may carry kernel fs-verity, which a replacement would drop).
/// Returns whether it linked.
fn link_noclobber(src: &Path, dst: &Path) -> Result<bool> {
    if let Some(dir) = dst.parent() {
        match fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(dir).map_err(io_err("create", dir))?;
            }
            Err(e) => return Err(io_err("create", dir)(e)),
        }
    }
    match fs::hard_link(src, dst) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_err("link an object into", dst)(e)),
    }
}

/// Flushes the whole filesystem holding `path` (one `syncfs` instead of an
/// fsync per object: imports write thousands of small files).
pub(super) fn sync_filesystem(path: &Path) -> Result<()> {
    let dir = File::open(path).map_err(io_err("open", path))?;
    // SAFETY: syncfs takes any open descriptor and only flushes.
    let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
    if rc != 0 {
        return Err(io_err("sync the filesystem of", path)(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

impl ObjectStore {
    /// Starts staging objects for an import (see the module documentation).
    pub fn staging(&self, alg: HashAlg) -> Result<Staging<'_>> {
        let tmp = self.tmp_dir();
        fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
        let dir = tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(&tmp)
            .map_err(io_err("create a staging directory in", &tmp))?;
        Ok(Staging {
            store: self,
            dir,
            alg,
            staged: Vec::new(),
            seen: HashSet::new(),
            buf: vec![0u8; verity::READ_BUF_SIZE],
        })
    }

    /// `<root>/tmp`, where staging directories live.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join(TMP_DIR)
    }
}

impl Staging<'_> {
    /// The staging directory (for tests and messages).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Stores what `data` yields in one pass: hashing, Merkle tree and copy
    /// together. Content already in the store or already staged is not kept
    /// twice. Returns the digest and the byte count.
    pub fn insert_reader(&mut self, data: &mut dyn Read) -> Result<(Digest, u64)> {
        let mut tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(self.dir.path())
            .map_err(io_err("create a temporary file in", self.dir.path()))?;
        let mut hasher = FsVerityHasher::with_tree(self.alg);
        let mut data = data;
        loop {
            let n = verity::read_full(&mut data, &mut self.buf).map_err(StoreError::Read)?;
            let chunk = self.buf.get(..n).unwrap_or_default();
            hasher.update(chunk);
            tmp.write_all(chunk).map_err(io_err("write", tmp.path()))?;
            if n < self.buf.len() {
                break;
            }
        }
        let size = hasher.data_size();
        let (digest, tree) = hasher.finalize_with_tree();
        if self.seen.contains(&digest) || self.store.contains(&digest) {
            return Ok((digest, size));
        }
        let hex = digest.to_hex();
        let obj = self.dir.path().join(&hex);
        tmp.as_file()
            .set_permissions(Permissions::from_mode(OBJECT_MODE))
            .map_err(io_err("set permissions of", tmp.path()))?;
        tmp.persist(&obj)
            .map_err(|e| io_err("name", &obj)(e.error))?;
        // Objects of one block or less have no tree (and so no sidecar).
        if !tree.as_bytes().is_empty() {
            let side = self.dir.path().join(format!("{hex}{SIDECAR_SUFFIX}"));
            fs::write(&side, tree.as_bytes()).map_err(io_err("write", &side))?;
        }
        self.seen.insert(digest);
        self.staged.push(digest);
        Ok((digest, size))
    }

    /// Moves every staged object and sidecar into the store; returns how many
    /// objects were new there. The staging directory is removed.
    pub fn commit(self) -> Result<usize> {
        self.commit_only(|_| true)
    }

    /// Like [`Staging::commit`], but only the objects `keep` accepts: content a
    /// later layer whited out or replaced need never enter the store.
    pub fn commit_only(mut self, keep: impl Fn(&Digest) -> bool) -> Result<usize> {
        self.staged.retain(|d| keep(d));
        if self.staged.is_empty() {
            return Ok(0);
        }
        if self.store.fsync {
            // Content on disk before any name points at it.
            sync_filesystem(self.dir.path())?;
        }
        let mut new = 0;
        for digest in &self.staged {
            let hex = digest.to_hex();
            let obj = self.dir.path().join(&hex);
            if link_noclobber(&obj, &self.store.object_path(digest))? {
                new += 1;
            }
            let side = self.dir.path().join(format!("{hex}{SIDECAR_SUFFIX}"));
            if side.exists() {
                link_noclobber(&side, &self.store.sidecar_path(digest))?;
            }
        }
        if self.store.fsync {
            sync_filesystem(self.store.objects_dir())?;
        }
        Ok(new)
    }
}

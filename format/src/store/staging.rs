//! Staging: objects an import writes before it knows it will succeed.
//!
//! A [`Staging`] is a private directory under `<root>/tmp/`. Content goes there
//! first (named by its digest once known, with its Merkle-tree sidecar beside
//! it); [`Staging::commit`] links it all into `objects/` and `verity/`.
//! Dropping a `Staging` without committing removes the directory and
//! everything in it, so a failed import leaves the store as it was.
//!
//! Content whose name already exists in the store is not trusted by its name:
//! the stored file is compared with the new content, and replaced at commit if
//! it differs (so importing an image again repairs objects `fsck` found bad).
//! Every link and rename is relative to directories opened without following
//! symlinks ([`super::fsops`]), and a linked file is checked to be the very
//! file this import wrote, so nothing planted in `tmp/` or `objects/` can
//! redirect a write outside the store or slip other bytes under a name.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{Read, Write};

use super::fsops::{Dir, Expect};
use super::{OBJECT_MODE, ObjectStore, Result, StoreError, TEMP_PREFIX, io_err, same_content};
use crate::verity::{self, Digest, FsVerityHasher, HashAlg, MerkleTree};

/// Name of the directory holding staging directories, under the store root.
pub const TMP_DIR: &str = "tmp";
const SIDECAR_SUFFIX: &str = ".verity";

/// What one staged digest brings to the store.
struct Staged {
    digest: Digest,
    /// The object itself (new, or replacing a stored file that is not this content), with
    /// the device and inode it was written as.
    object: Option<(u64, u64)>,
    /// Its sidecar (new, or replacing a bad one).
    sidecar: bool,
}

/// New objects of one import, not yet in the store.
pub struct Staging<'s> {
    store: &'s ObjectStore,
    tmp: Dir,
    name: OsString,
    dir: Dir,
    alg: HashAlg,
    /// Digests staged, in order, each once.
    staged: Vec<Staged>,
    seen: HashSet<Digest>,
    buf: Vec<u8>,
}

impl ObjectStore {
    /// Starts staging objects for an import (see the module documentation).
    pub fn staging(&self, alg: HashAlg) -> Result<Staging<'_>> {
        let tmp = self.subdir_created(TMP_DIR)?;
        let (name, dir) = tmp
            .create_temp_dir("import-")
            .map_err(io_err("create a staging directory in", &self.tmp_dir()))?;
        Ok(Staging {
            store: self,
            tmp,
            name,
            dir,
            alg,
            staged: Vec::new(),
            seen: HashSet::new(),
            buf: vec![0u8; verity::READ_BUF_SIZE],
        })
    }

    /// `<root>/tmp`, where staging directories live.
    pub fn tmp_dir(&self) -> std::path::PathBuf {
        self.root.join(TMP_DIR)
    }

    /// Whether the stored sidecar of `digest` holds exactly `tree`.
    fn sidecar_holds(&self, digest: &Digest, tree: &[u8]) -> bool {
        let rel = format!("{}/{}", self.sidecar_rel(), digest.object_path());
        self.root_fd
            .open_file_if_exists(&rel, Expect::Size(tree.len() as u64))
            .ok()
            .flatten()
            .is_some_and(|f| super::holds_bytes(&f, tree).unwrap_or(false))
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        let _ = self.tmp.remove_all(&self.name);
    }
}

impl Staging<'_> {
    /// The staging directory (for tests and messages).
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The staging directory, opened: for other files of the import (layer records)
    /// that must stay inside the store until it commits, and vanish with it otherwise.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// Stores what `data` yields in one pass: hashing, Merkle tree and copy
    /// together. Content already in the store (and intact there) or already
    /// staged is not kept twice. Returns the digest and the byte count.
    pub fn insert_reader(&mut self, data: &mut dyn Read) -> Result<(Digest, u64)> {
        let mut tmp = self
            .dir
            .create_temp(TEMP_PREFIX, 0o600)
            .map_err(io_err("create a temporary file in", self.dir.path()))?;
        let mut hasher = FsVerityHasher::with_tree(self.alg);
        let mut data = data;
        loop {
            let n = verity::read_full(&mut data, &mut self.buf).map_err(StoreError::Read)?;
            let chunk = self.buf.get(..n).unwrap_or_default();
            hasher.update(chunk);
            tmp.file_mut()
                .write_all(chunk)
                .map_err(io_err("write", &tmp.display()))?;
            if n < self.buf.len() {
                break;
            }
        }
        let size = hasher.data_size();
        let (digest, tree) = hasher.finalize_with_tree();
        if self.seen.contains(&digest) {
            return Ok((digest, size));
        }
        let hex = digest.to_hex();
        let stored_intact = self
            .store
            .objects_fd
            .open_file_if_exists(digest.object_path(), Expect::Size(size))
            .ok()
            .flatten()
            .is_some_and(|f| same_content(&f, tmp.file()).unwrap_or(false));
        let object = if stored_intact {
            None
        } else {
            rustix::fs::fchmod(tmp.file(), rustix::fs::Mode::from_raw_mode(OBJECT_MODE))
                .map_err(|e| io_err("set permissions of", &tmp.display())(e.into()))?;
            let st = rustix::fs::fstat(tmp.file())
                .map_err(|e| io_err("stat", &tmp.display())(e.into()))?;
            tmp.persist(&self.dir, &hex)
                .map_err(io_err("name", &self.dir.display(&hex)))?;
            Some((st.st_dev, st.st_ino))
        };
        // Objects of one block or less have no tree (and so no sidecar).
        let sidecar = !tree.as_bytes().is_empty()
            && (object.is_some() || !self.store.sidecar_holds(&digest, tree.as_bytes()));
        if sidecar {
            self.write_sidecar(&hex, &tree)?;
        }
        self.seen.insert(digest);
        if object.is_some() || sidecar {
            self.staged.push(Staged {
                digest,
                object,
                sidecar,
            });
        }
        Ok((digest, size))
    }

    fn write_sidecar(&self, hex: &str, tree: &MerkleTree) -> Result<()> {
        let mut side = self
            .dir
            .create_temp(TEMP_PREFIX, 0o644)
            .map_err(io_err("create a temporary file in", self.dir.path()))?;
        side.file_mut()
            .write_all(tree.as_bytes())
            .map_err(io_err("write", &side.display()))?;
        let name = format!("{hex}{SIDECAR_SUFFIX}");
        side.persist(&self.dir, &name)
            .map_err(io_err("name", &self.dir.display(&name)))
    }

    /// Moves every staged object and sidecar into the store; returns how many
    /// objects were new there. The staging directory is removed.
    pub fn commit(self) -> Result<usize> {
        self.commit_only(|_| true)
    }

    /// Like [`Staging::commit`], but only the objects `keep` accepts: content a
    /// later layer whited out or replaced need never enter the store.
    pub fn commit_only(mut self, keep: impl Fn(&Digest) -> bool) -> Result<usize> {
        self.staged.retain(|s| keep(&s.digest));
        if self.staged.is_empty() {
            return Ok(0);
        }
        if self.store.fsync {
            // Content on disk before any name points at it.
            self.dir
                .sync_filesystem()
                .map_err(io_err("sync the filesystem of", self.dir.path()))?;
        }
        let store = self.store;
        let mut new = 0;
        let mut side_root: Option<Dir> = None;
        for staged in &self.staged {
            let digest = &staged.digest;
            let hex = digest.to_hex();
            let (_, rest) = super::split_name(digest);
            if let Some(identity) = staged.object {
                let fan = store.fan_dir(&store.objects_fd, digest)?;
                if self.place_object(&hex, &fan, &rest, identity)? {
                    new += 1;
                }
            }
            if staged.sidecar {
                let root = match &side_root {
                    Some(d) => d.clone(),
                    None => {
                        let d = store.subdir_created(store.sidecar_rel())?;
                        side_root = Some(d.clone());
                        d
                    }
                };
                let fan = store.fan_dir(&root, digest)?;
                let name = format!("{hex}{SIDECAR_SUFFIX}");
                // Ours is computed from the content: it replaces whatever is there.
                self.dir
                    .rename(&name, &fan, &rest)
                    .map_err(io_err("rename a sidecar into", &fan.display(&rest)))?;
            }
        }
        if store.fsync {
            store
                .objects_fd
                .sync_filesystem()
                .map_err(io_err("sync the filesystem of", store.objects_dir()))?;
        }
        Ok(new)
    }

    /// Links the staged object `hex` to `fan/rest`, replacing a file there that is not
    /// this content. Returns whether the store gained the content. Fails if the file
    /// linked is not the one this import wrote (someone swapped it in `tmp/`).
    fn place_object(&self, hex: &str, fan: &Dir, rest: &str, identity: (u64, u64)) -> Result<bool> {
        let path = fan.display(rest);
        let staged = self
            .dir
            .open_file(hex, Expect::Any)
            .map_err(io_err("open", &self.dir.display(hex)))?;
        let st = rustix::fs::fstat(&staged).map_err(|e| io_err("stat", &path)(e.into()))?;
        if (st.st_dev, st.st_ino) != identity {
            return Err(StoreError::Corrupt {
                path: self.dir.display(hex),
                reason: "the staged object was replaced during the import".into(),
            });
        }
        let linked = self
            .dir
            .link_noclobber(hex, fan, rest)
            .map_err(io_err("link an object into", &path))?;
        let gained = if linked {
            true
        } else {
            let intact = fan
                .open_file_if_exists(rest, Expect::Any)
                .ok()
                .flatten()
                .is_some_and(|f| same_content(&f, &staged).unwrap_or(false));
            if !intact {
                // Wrong bytes, a symlink, a FIFO under the name: ours replaces it.
                self.dir
                    .rename(hex, fan, rest)
                    .map_err(io_err("replace", &path))?;
            }
            !intact
        };
        // What now has the name must be what we wrote.
        let now = fan.metadata(rest).map_err(io_err("stat", &path))?;
        if !linked && !gained {
            return Ok(false);
        }
        match now {
            Some(m) if (m.dev, m.ino) == identity => Ok(gained),
            _ => Err(StoreError::Corrupt {
                path,
                reason: "replaced while the import named it".into(),
            }),
        }
    }
}

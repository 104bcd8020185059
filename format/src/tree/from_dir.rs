//! Building a tree from a directory on disk: what `mkcomposefs DIR IMAGE` reads, except
//! that hard links stay hard links (C mkcomposefs loses them, composefs issue 444).
//!
//! Like mkcomposefs, the walk uses `lstat` and never follows a symlink, the source root's
//! own metadata and xattrs become the image root's, every file type is kept (sockets and
//! whiteouts included; devices unless [`FromDirOptions::skip_devices`]) and all xattrs
//! are read (or only `user.*` ones, or none). Regular files of at most
//! [`FromDirOptions::inline_max`] bytes are stored inline; larger ones get their fs-verity
//! digest and `payload = digest.object_path()`, and are copied into the object store when
//! one is given.
//!
//! The tree lists inodes in dumpfile order (depth first, names sorted), so the same
//! directory gives the same tree, leaf numbering included, whatever the thread count.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::{Directory, Leaf, LeafContent, LeafId, Mtime, Node, RegularFile, Stat, Tree};
use crate::erofs::format::S_IFMT;
use crate::store::{ObjectStore, StoreError};
use crate::verity::{self, Digest, HashAlg};

/// Options for [`tree_from_dir`].
#[derive(Clone, Debug)]
pub struct FromDirOptions {
    /// Copy every external file into this store.
    pub digest_store: Option<ObjectStore>,
    /// Digest algorithm for external files.
    pub hash: HashAlg,
    /// Worker threads hashing and copying external files; 0 means one per CPU.
    pub threads: usize,
    /// Files of at most this many bytes are stored inline (mkcomposefs: 64).
    pub inline_max: usize,
    /// Read no xattrs (mkcomposefs `--skip-xattrs`).
    pub skip_xattrs: bool,
    /// Read only `user.*` xattrs (mkcomposefs `--user-xattrs`).
    pub user_xattrs_only: bool,
    /// Leave out block and character devices (mkcomposefs `--skip-devices`); whiteouts
    /// are character devices too.
    pub skip_devices: bool,
    /// Set every mtime to 0 (mkcomposefs `--use-epoch`).
    pub use_epoch: bool,
}

impl Default for FromDirOptions {
    fn default() -> Self {
        FromDirOptions {
            digest_store: None,
            hash: HashAlg::Sha256,
            threads: 0,
            inline_max: 64,
            skip_xattrs: false,
            user_xattrs_only: false,
            skip_devices: false,
            use_epoch: false,
        }
    }
}

/// Why a directory could not be read into a tree; every variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum FromDirError {
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot store {}", path.display())]
    Store {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error("{}: {reason}", path.display())]
    Unsupported { path: PathBuf, reason: &'static str },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FromDirError {
    let path = path.to_owned();
    move |source| FromDirError::Io { op, path, source }
}

/// A file whose digest is computed (and which is stored) after the walk.
struct Job {
    leaf: LeafId,
    path: PathBuf,
    size: u64,
}

/// Builds a tree from the directory at `path`.
pub fn tree_from_dir(path: &Path, opts: &FromDirOptions) -> Result<Tree, FromDirError> {
    let meta = fs::symlink_metadata(path).map_err(io_err("stat", path))?;
    if !meta.is_dir() {
        return Err(FromDirError::Unsupported {
            path: path.to_owned(),
            reason: "not a directory",
        });
    }
    let mut tree = Tree::new(stat_of(path, &meta, opts)?);
    let mut links: HashMap<(u64, u64), LeafId> = HashMap::new();
    let mut jobs = Vec::new();

    // Depth first, names in byte order: the dumpfile's order, which fixes leaf numbering.
    let mut stack: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    push_children(&mut stack, path, b"")?;
    while let Some((fs_path, tree_path)) = stack.pop() {
        let meta = fs::symlink_metadata(&fs_path).map_err(io_err("stat", &fs_path))?;
        let ft = meta.file_type();
        if opts.skip_devices && (ft.is_block_device() || ft.is_char_device()) {
            continue;
        }
        let node = if ft.is_dir() {
            let stat = stat_of(&fs_path, &meta, opts)?;
            push_children(&mut stack, &fs_path, &tree_path)?;
            Node::Directory(Box::new(Directory::new(stat)))
        } else if let Some(id) = (meta.nlink() > 1)
            .then(|| links.get(&(meta.dev(), meta.ino())))
            .flatten()
        {
            Node::Leaf(*id)
        } else {
            let stat = stat_of(&fs_path, &meta, opts)?;
            let content = leaf_content(&fs_path, &meta, opts)?;
            let external = matches!(content, LeafContent::Regular(RegularFile::External { .. }));
            let id = tree.push_leaf(Leaf { stat, content });
            if external {
                jobs.push(Job {
                    leaf: id,
                    path: fs_path.clone(),
                    size: meta.len(),
                });
            }
            if meta.nlink() > 1 {
                links.insert((meta.dev(), meta.ino()), id);
            }
            Node::Leaf(id)
        };
        // Children are pushed after their parent is popped, so the parent exists.
        tree.insert(&tree_path, node)
            .map_err(|_| FromDirError::Unsupported {
                path: fs_path.clone(),
                reason: "cannot place this name in the tree",
            })?;
    }

    for (leaf, digest) in run_jobs(&jobs, opts)? {
        if let Some(Leaf {
            content:
                LeafContent::Regular(RegularFile::External {
                    payload, digest: d, ..
                }),
            ..
        }) = tree.leaves.get_mut(leaf.0)
        {
            *payload = Some(digest.object_path().into_bytes());
            *d = Some(digest);
        }
    }
    Ok(tree)
}

/// Pushes the entries of directory `dir` (tree path `tree_dir`) so that the smallest
/// name is popped first.
fn push_children(
    stack: &mut Vec<(PathBuf, Vec<u8>)>,
    dir: &Path,
    tree_dir: &[u8],
) -> Result<(), FromDirError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
        let entry = entry.map_err(io_err("read directory", dir))?;
        names.push(entry.file_name());
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names.into_iter().rev() {
        let tree_path = [tree_dir, b"/", name.as_bytes()].concat();
        stack.push((dir.join(&name), tree_path));
    }
    Ok(())
}

fn stat_of(path: &Path, meta: &fs::Metadata, opts: &FromDirOptions) -> Result<Stat, FromDirError> {
    let mtime = if opts.use_epoch {
        Mtime::default()
    } else {
        // Before-1970 times wrap, as C's cast to the image's unsigned field does.
        Mtime {
            sec: meta.mtime() as u64,
            nsec: u32::try_from(meta.mtime_nsec()).unwrap_or(0),
        }
    };
    let xattrs = if opts.skip_xattrs {
        BTreeMap::new()
    } else {
        read_xattrs(path, opts.user_xattrs_only)?
    };
    Ok(Stat {
        mode: meta.mode() & !S_IFMT,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime,
        xattrs,
        nlink: None,
    })
}

fn leaf_content(
    path: &Path,
    meta: &fs::Metadata,
    opts: &FromDirOptions,
) -> Result<LeafContent, FromDirError> {
    let ft = meta.file_type();
    Ok(if ft.is_file() {
        let size = meta.len();
        if size == 0 {
            LeafContent::Regular(RegularFile::Inline(Vec::new()))
        } else if size <= opts.inline_max as u64 {
            let data = fs::read(path).map_err(io_err("read", path))?;
            if data.len() as u64 != size {
                return Err(FromDirError::Unsupported {
                    path: path.to_owned(),
                    reason: "file changed size while being read",
                });
            }
            LeafContent::Regular(RegularFile::Inline(data))
        } else {
            // Payload and digest are filled in once the workers have hashed the file.
            LeafContent::Regular(RegularFile::External {
                size,
                payload: None,
                digest: None,
            })
        }
    } else if ft.is_symlink() {
        let target = fs::read_link(path).map_err(io_err("read symlink", path))?;
        LeafContent::Symlink(target.as_os_str().as_bytes().to_vec())
    } else if ft.is_char_device() {
        LeafContent::CharDevice(meta.rdev())
    } else if ft.is_block_device() {
        LeafContent::BlockDevice(meta.rdev())
    } else if ft.is_fifo() {
        LeafContent::Fifo
    } else if ft.is_socket() {
        LeafContent::Socket
    } else {
        return Err(FromDirError::Unsupported {
            path: path.to_owned(),
            reason: "unknown file type",
        });
    })
}

/// Hashes (and stores) every job's file on `opts.threads` threads. Results are matched to
/// leaves by id, so the thread count cannot change the tree; the error reported is that of
/// the first failing job in walk order.
fn run_jobs(jobs: &[Job], opts: &FromDirOptions) -> Result<Vec<(LeafId, Digest)>, FromDirError> {
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .min(jobs.len())
    .max(1);
    // Largest first, so one big file does not start last and finish alone.
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|i| std::cmp::Reverse(jobs.get(*i).map_or(0, |j| j.size)));

    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<(usize, Result<Digest, FromDirError>)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut mine = Vec::new();
                while !failed.load(Ordering::Relaxed) {
                    let Some(&index) = order.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        break;
                    };
                    let Some(job) = jobs.get(index) else { break };
                    let result = hash_one(job, opts);
                    if result.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    mine.push((index, result));
                }
                if let Ok(mut all) = results.lock() {
                    all.extend(mine);
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|(index, _)| *index);
    let mut out = Vec::with_capacity(results.len());
    for (index, result) in results {
        if let Some(job) = jobs.get(index) {
            out.push((job.leaf, result?));
        }
    }
    if out.len() != jobs.len() {
        // Only possible if a worker thread panicked.
        return Err(FromDirError::Unsupported {
            path: PathBuf::new(),
            reason: "a hashing thread stopped early",
        });
    }
    Ok(out)
}

fn hash_one(job: &Job, opts: &FromDirOptions) -> Result<Digest, FromDirError> {
    match &opts.digest_store {
        Some(store) => {
            store
                .insert_file(&job.path, opts.hash)
                .map_err(|source| FromDirError::Store {
                    path: job.path.clone(),
                    source,
                })
        }
        None => verity::digest_file(opts.hash, &job.path).map_err(io_err("hash", &job.path)),
    }
}

/// Reads the xattrs of `path` itself (a symlink's own, not its target's). A filesystem
/// without xattr support has none.
fn read_xattrs(path: &Path, user_only: bool) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, FromDirError> {
    let mut out = BTreeMap::new();
    let c_path =
        CString::new(path.as_os_str().as_bytes()).map_err(|_| FromDirError::Unsupported {
            path: path.to_owned(),
            reason: "path contains a NUL byte",
        })?;
    let names = match xattr_call(|buf| {
        // SAFETY: `c_path` is NUL-terminated and `buf` is valid for writes of its length.
        unsafe { libc::llistxattr(c_path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
    }) {
        Ok(Some(names)) => names,
        Ok(None) => return Ok(out),
        Err(e) => return Err(io_err("list xattrs of", path)(e)),
    };
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if user_only && !name.starts_with(b"user.") {
            continue;
        }
        let Ok(c_name) = CString::new(name) else {
            continue;
        };
        let value = xattr_call(|buf| {
            // SAFETY: both strings are NUL-terminated and `buf` is valid for writes of its
            // length.
            unsafe {
                libc::lgetxattr(
                    c_path.as_ptr(),
                    c_name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            }
        })
        .map_err(io_err("read xattrs of", path))?;
        // None: removed since it was listed.
        if let Some(value) = value {
            out.insert(name.to_vec(), value);
        }
    }
    Ok(out)
}

/// Runs a size-probing xattr call (`llistxattr`/`lgetxattr`) until its buffer is big
/// enough. `Ok(None)` when the filesystem has no xattrs or the attribute is gone.
fn xattr_call(mut call: impl FnMut(&mut [u8]) -> isize) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 256];
    loop {
        let n = call(&mut buf);
        if let Ok(n) = usize::try_from(n) {
            buf.truncate(n);
            return Ok(Some(buf));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ERANGE) => {
                let needed = call(&mut []);
                let needed = usize::try_from(needed).map_err(|_| io::Error::last_os_error())?;
                // Grow past the probed size: it may change before the next call.
                buf.resize(needed.max(buf.len() * 2), 0);
            }
            Some(libc::ENOTSUP) | Some(libc::ENODATA) => return Ok(None),
            _ => return Err(err),
        }
    }
}

//! Images and their names: `images/<hex>` files named by their fs-verity
//! digest, `refs/<tag>` symlinks to them, and the store lock.
//!
//! A tag is a symlink `refs/TAG -> ../images/HEX` (one more `../` per `/` in
//! the tag), so `ls -l refs` tells what is what and replacing a tag is one
//! atomic rename.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{ObjectStore, Result, StoreError, TEMP_PREFIX, io_err};
use crate::verity::{self, Digest, HashAlg};

pub const IMAGES_DIR: &str = "images";
pub const REFS_DIR: &str = "refs";
pub const VERITY_DIR: &str = "verity";
/// Sidecar directory of a bare store (inside the objects directory itself,
/// hidden: `XX` names are two hex digits, so it cannot collide).
pub const BARE_VERITY_DIR: &str = ".verity";
const LOCK_FILE: &str = "lock";
const MAX_TAG_LEN: usize = 255;

/// A held store lock; released when dropped.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

/// An image in the store.
#[derive(Clone, Debug)]
pub struct ImageInfo {
    pub digest: Digest,
    pub path: PathBuf,
    pub size: u64,
    /// When it was imported (the file's mtime).
    pub created: Option<SystemTime>,
    /// Tags naming it, sorted.
    pub tags: Vec<String>,
}

/// Checks a tag: `/`-separated components of `[A-Za-z0-9._:@+-]`, none empty,
/// none starting with `.` (so no `..`, and no clash with temporary names).
pub fn validate_tag(tag: &str) -> std::result::Result<(), String> {
    if tag.is_empty() || tag.len() > MAX_TAG_LEN {
        return Err(format!("tag {tag:?} must have 1 to {MAX_TAG_LEN} bytes"));
    }
    for c in tag.split('/') {
        if c.is_empty() || c.starts_with('.') {
            return Err(format!(
                "tag {tag:?}: each '/'-separated part must be non-empty and not start with '.'"
            ));
        }
        if !c
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".:_@+-".contains(&b))
        {
            return Err(format!(
                "tag {tag:?} may only contain letters, digits and . : _ @ + - /"
            ));
        }
    }
    if parse_digest_spec(tag).is_some() {
        return Err(format!("tag {tag:?} looks like an image digest"));
    }
    Ok(())
}

/// The algorithm a digest hex of this length belongs to.
fn alg_for_hex_len(len: usize) -> Option<HashAlg> {
    [HashAlg::Sha256, HashAlg::Sha512]
        .into_iter()
        .find(|a| a.digest_len() * 2 == len)
}

/// A full digest from its hex, the algorithm told by the length.
pub(super) fn digest_from_hex(hex: &str) -> Option<Digest> {
    Digest::from_hex(alg_for_hex_len(hex.len())?, hex).ok()
}

/// `sha256:HEX` / `sha512:HEX` (HEX possibly a prefix) → the hex part.
fn parse_digest_spec(spec: &str) -> Option<&str> {
    let (alg, hex) = spec.split_once(':')?;
    (matches!(alg, "sha256" | "sha512")
        && !hex.is_empty()
        && hex.bytes().all(|b| b.is_ascii_hexdigit()))
    .then_some(hex)
}

impl ObjectStore {
    /// `images/`.
    pub fn images_dir(&self) -> PathBuf {
        self.root.join(IMAGES_DIR)
    }

    /// `refs/`.
    pub fn refs_dir(&self) -> PathBuf {
        self.root.join(REFS_DIR)
    }

    /// Where an image with this digest is (or would be) stored.
    pub fn image_path(&self, digest: &Digest) -> PathBuf {
        self.images_dir().join(digest.to_hex())
    }

    /// Where the Merkle-tree sidecar of an object is (or would be): exactly the
    /// bytes of [`crate::verity::MerkleTree::as_bytes`]. `verity/XX/rest` under
    /// the root; in a bare store `DIR/.verity/XX/rest`. Objects of at most one
    /// block have none.
    pub fn sidecar_path(&self, digest: &Digest) -> PathBuf {
        let dir = if self.bare {
            self.objects.join(BARE_VERITY_DIR)
        } else {
            self.root.join(VERITY_DIR)
        };
        dir.join(digest.object_path())
    }

    pub(super) fn require_full(&self) -> Result<()> {
        if self.bare {
            return Err(StoreError::Bare {
                path: self.root.clone(),
            });
        }
        Ok(())
    }

    fn lock(&self, op: libc::c_int) -> Result<StoreLock> {
        let path = self.root.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open the lock file", &path))?;
        loop {
            // SAFETY: flock only takes a descriptor we own and an operation.
            let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
            if rc == 0 {
                return Ok(StoreLock { _file: file });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(io_err("lock", &path)(err));
            }
        }
    }

    /// The lock imports hold: any number at once, never beside a `gc`.
    pub fn lock_shared(&self) -> Result<StoreLock> {
        self.lock(libc::LOCK_SH)
    }

    /// The lock `gc` holds: waits for running imports, keeps new ones out.
    pub fn lock_exclusive(&self) -> Result<StoreLock> {
        self.lock(libc::LOCK_EX)
    }

    /// Stores an image file; returns its fs-verity digest (its name).
    pub fn add_image(&self, image: &[u8], alg: HashAlg) -> Result<Digest> {
        self.require_full()?;
        let digest = verity::digest_bytes(alg, image);
        let dir = self.images_dir();
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let path = self.image_path(&digest);
        if path.is_file() {
            return Ok(digest);
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&dir)
            .map_err(io_err("create a temporary file in", &dir))?;
        tmp.write_all(image).map_err(io_err("write", tmp.path()))?;
        if self.fsync {
            tmp.as_file()
                .sync_all()
                .map_err(io_err("fsync", tmp.path()))?;
        }
        match tmp.persist_noclobber(&path) {
            Ok(_) => {}
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("name", &path)(e.error)),
        }
        Ok(digest)
    }

    /// Points `tag` at an image, replacing what it named before.
    pub fn set_ref(&self, tag: &str, digest: &Digest) -> Result<()> {
        self.require_full()?;
        validate_tag(tag).map_err(StoreError::BadName)?;
        if !self.image_path(digest).is_file() {
            return Err(StoreError::NotFound(format!("image {digest}")));
        }
        let path = self.refs_dir().join(tag);
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let depth = tag.split('/').count();
        let target = format!("{}{IMAGES_DIR}/{}", "../".repeat(depth), digest.to_hex());
        let tmp = dir.join(format!("{TEMP_PREFIX}{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        symlink(&target, &tmp).map_err(io_err("create", &tmp))?;
        fs::rename(&tmp, &path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err("rename a tag into", &path)(e)
        })?;
        Ok(())
    }

    /// The image a tag names, if the tag exists.
    pub fn read_ref(&self, tag: &str) -> Result<Option<Digest>> {
        if validate_tag(tag).is_err() {
            return Ok(None);
        }
        let path = self.refs_dir().join(tag);
        let target = match fs::read_link(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => return Ok(None),
            Err(e) => return Err(io_err("read tag", &path)(e)),
        };
        let hex = target
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(digest_from_hex)
            .ok_or_else(|| StoreError::Corrupt {
                path: path.clone(),
                reason: format!("points at {}, not an image", target.display()),
            })?;
        Ok(Some(hex))
    }

    /// Removes a tag; returns whether it existed.
    pub fn remove_ref(&self, tag: &str) -> Result<bool> {
        validate_tag(tag).map_err(StoreError::BadName)?;
        let path = self.refs_dir().join(tag);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("remove", &path)(e)),
        }
        // Tidy now-empty parent directories of nested tags, up to refs/.
        let refs = self.refs_dir();
        let mut dir = path.parent().map(Path::to_owned);
        while let Some(d) = dir {
            if d == refs || fs::remove_dir(&d).is_err() {
                break;
            }
            dir = d.parent().map(Path::to_owned);
        }
        Ok(true)
    }

    /// Every tag with the image it names, sorted by tag.
    pub fn list_refs(&self) -> Result<Vec<(String, Digest)>> {
        let mut out = Vec::new();
        let refs = self.refs_dir();
        if !refs.is_dir() {
            return Ok(out);
        }
        let mut stack = vec![refs.clone()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
                let entry = entry.map_err(io_err("list", &dir))?;
                let path = entry.path();
                let ft = entry.file_type().map_err(io_err("stat", &path))?;
                if ft.is_dir() {
                    stack.push(path);
                } else if ft.is_symlink() {
                    let Some(tag) = path
                        .strip_prefix(&refs)
                        .ok()
                        .and_then(|p| p.to_str())
                        .map(str::to_owned)
                    else {
                        continue;
                    };
                    if let Some(d) = self.read_ref(&tag)? {
                        out.push((tag, d));
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every image, sorted by digest, with its tags.
    pub fn list_images(&self) -> Result<Vec<ImageInfo>> {
        let refs = self.list_refs()?;
        let dir = self.images_dir();
        let mut out = Vec::new();
        if !dir.is_dir() {
            return Ok(out);
        }
        for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let entry = entry.map_err(io_err("list", &dir))?;
            let Some(digest) = entry.file_name().to_str().and_then(digest_from_hex) else {
                continue;
            };
            let meta = entry.metadata().map_err(io_err("stat", &entry.path()))?;
            let tags = refs
                .iter()
                .filter(|(_, d)| *d == digest)
                .map(|(t, _)| t.clone())
                .collect();
            out.push(ImageInfo {
                digest,
                path: entry.path(),
                size: meta.len(),
                created: meta.modified().ok(),
                tags,
            });
        }
        out.sort_by_key(|i| i.digest);
        Ok(out)
    }

    /// The image a tag, a `sha256:HEX` digest, or a unique hex prefix of a
    /// digest (at least 4 digits, with or without `sha256:`) names.
    pub fn resolve_digest(&self, spec: &str) -> Result<Digest> {
        self.require_full()?;
        let prefix = match parse_digest_spec(spec) {
            Some(hex) => hex,
            None => {
                if let Some(d) = self.read_ref(spec)? {
                    return Ok(d);
                }
                spec
            }
        };
        let prefix = prefix.to_ascii_lowercase();
        if prefix.len() >= 4 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            let matches: Vec<Digest> = self
                .list_images()?
                .into_iter()
                .map(|i| i.digest)
                .filter(|d| d.to_hex().starts_with(&prefix))
                .collect();
            match matches.as_slice() {
                [one] => return Ok(*one),
                [] => {}
                many => {
                    return Err(StoreError::NotFound(format!(
                        "{spec:?} is ambiguous: it begins {} image digests",
                        many.len()
                    )));
                }
            }
        }
        Err(StoreError::NotFound(format!(
            "no image is named {spec:?} in {} (not a tag, nor a digest of a stored image)",
            self.root.display()
        )))
    }

    /// The image file a tag or digest names (see [`ObjectStore::resolve_digest`]).
    pub fn resolve(&self, spec: &str) -> Result<PathBuf> {
        let digest = self.resolve_digest(spec)?;
        let path = self.image_path(&digest);
        if !path.is_file() {
            return Err(StoreError::NotFound(format!(
                "{spec:?} names image {digest}, which is missing from {}",
                self.images_dir().display()
            )));
        }
        Ok(path)
    }

    /// Removes an image and every tag naming it; returns the tags removed.
    /// Its objects stay until `gc`.
    pub fn remove_image(&self, digest: &Digest) -> Result<Vec<String>> {
        self.require_full()?;
        let mut removed = Vec::new();
        for (tag, d) in self.list_refs()? {
            if d == *digest {
                self.remove_ref(&tag)?;
                removed.push(tag);
            }
        }
        let path = self.image_path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(removed),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::NotFound(format!("image {digest}")))
            }
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }
}

//! Images and their names: `images/<hex>` files named by their fs-verity
//! digest, `refs/<tag>` symlinks to them, and the store lock.
//!
//! A tag is a symlink `refs/TAG -> ../images/HEX` (one more `../` per `/` in
//! the tag), so `ls -l refs` tells what is what and replacing a tag is one
//! atomic rename. The symlink is only ever read (`readlinkat`), never followed:
//! its target's last component is the digest.
//!
//! An image's name is its digest, and it is checked against it every time it
//! is read ([`ObjectStore::load_image`]): images are small, and the bytes
//! checked are the bytes then used (read whole into memory, never mapped, so
//! truncating the file later cannot fault the reader).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

use super::fsops::{self, Dir, Expect, Kind};
use super::{ObjectStore, Result, StoreError, TEMP_PREFIX, holds_bytes, io_err};
use crate::verity::{self, Digest, HashAlg};

pub const IMAGES_DIR: &str = "images";
pub const REFS_DIR: &str = "refs";
pub const VERITY_DIR: &str = "verity";
/// Sidecar directory of a bare store (inside the objects directory itself,
/// hidden: `XX` names are two hex digits, so it cannot collide).
pub const BARE_VERITY_DIR: &str = ".verity";
/// Largest image file read into memory. A composefs image holds metadata only
/// (about 100 to 300 bytes per file), so this is tens of millions of files.
pub const MAX_IMAGE_SIZE: u64 = 4 << 30;
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

/// An image read from the store and checked against its name.
#[derive(Clone, Debug)]
pub struct StoredImage {
    pub digest: Digest,
    /// Where it is, for messages.
    pub path: PathBuf,
    /// Its bytes, whose fs-verity digest is `digest`.
    pub bytes: Vec<u8>,
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

/// A tag's directory components and its last name.
fn tag_parts(tag: &str) -> (Vec<&str>, &str) {
    let mut parts: Vec<&str> = tag.split('/').collect();
    let name = parts.pop().unwrap_or(tag);
    (parts, name)
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
        self.root
            .join(self.sidecar_rel())
            .join(digest.object_path())
    }

    /// The sidecar directory, relative to the root.
    pub(super) fn sidecar_rel(&self) -> &'static str {
        if self.bare {
            BARE_VERITY_DIR
        } else {
            VERITY_DIR
        }
    }

    pub(super) fn require_full(&self) -> Result<()> {
        if self.bare {
            return Err(StoreError::Bare {
                path: self.root.clone(),
            });
        }
        Ok(())
    }

    /// The directory `rel` below the root, if it exists.
    pub(super) fn subdir(&self, rel: &str) -> Result<Option<Dir>> {
        self.root_fd
            .open_dir_if_exists(rel)
            .map_err(io_err("open", &self.root.join(rel)))
    }

    /// The directory `rel` below the root, created if missing.
    pub(super) fn subdir_created(&self, rel: &str) -> Result<Dir> {
        self.root_fd
            .create_dir(rel)
            .map_err(io_err("create", &self.root.join(rel)))
    }

    fn lock(&self, exclusive: bool) -> Result<StoreLock> {
        let path = self.root.join(LOCK_FILE);
        let file = self
            .root_fd
            .open_or_create_file(LOCK_FILE, 0o644)
            .map_err(io_err("open the lock file", &path))?;
        fsops::lock(&file, exclusive).map_err(io_err("lock", &path))?;
        Ok(StoreLock { _file: file })
    }

    /// The lock imports hold: any number at once, never beside a `gc`.
    pub fn lock_shared(&self) -> Result<StoreLock> {
        self.lock(false)
    }

    /// The lock `gc` holds: waits for running imports, keeps new ones out.
    pub fn lock_exclusive(&self) -> Result<StoreLock> {
        self.lock(true)
    }

    /// Stores an image file; returns its fs-verity digest (its name).
    pub fn add_image(&self, image: &[u8], alg: HashAlg) -> Result<Digest> {
        self.add_image_reporting(image, alg).map(|(d, _)| d)
    }

    /// Like [`ObjectStore::add_image`]; also says whether the file was written (false when
    /// the same image was there already). A file of that name with other bytes (or not a
    /// regular file) is replaced: its name lied.
    pub(crate) fn add_image_reporting(&self, image: &[u8], alg: HashAlg) -> Result<(Digest, bool)> {
        self.require_full()?;
        let digest = verity::digest_bytes(alg, image);
        let dir = self.subdir_created(IMAGES_DIR)?;
        let hex = digest.to_hex();
        let path = self.image_path(&digest);
        let existing = dir.open_file_if_exists(&hex, Expect::Size(image.len() as u64));
        if let Ok(Some(f)) = &existing
            && holds_bytes(f, image).unwrap_or(false)
        {
            return Ok((digest, false));
        }
        let tmp = self.temp_holding(&dir, image)?;
        match existing {
            Ok(None) => {
                tmp.persist_noclobber(&dir, &hex)
                    .map_err(io_err("name", &path))?;
            }
            _ => tmp.persist(&dir, &hex).map_err(io_err("replace", &path))?,
        }
        Ok((digest, true))
    }

    /// Reads a stored image whole and checks it against its name. A file that is not a
    /// regular file, is larger than [`MAX_IMAGE_SIZE`], or whose bytes do not have the digest
    /// is an error naming it (the image was damaged or replaced: `imgmount fsck` tells more).
    pub fn load_image(&self, digest: &Digest) -> Result<Vec<u8>> {
        self.require_full()?;
        let path = self.image_path(digest);
        let missing = || {
            StoreError::NotFound(format!(
                "image {digest} is missing from {}",
                self.images_dir().display()
            ))
        };
        let dir = self.subdir(IMAGES_DIR)?.ok_or_else(missing)?;
        let bytes = match dir.read_file(digest.to_hex(), MAX_IMAGE_SIZE) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
            Err(e) => return Err(io_err("read image", &path)(e)),
        };
        let actual = verity::digest_bytes(digest.alg(), &bytes);
        if actual != *digest {
            return Err(StoreError::Corrupt {
                path,
                reason: format!(
                    "its content has digest {actual}, not the {digest} its name says: it was \
                     changed after import (run `imgmount fsck`, then import it again)"
                ),
            });
        }
        Ok(bytes)
    }

    /// Reads the image a tag or digest names, checked against its digest (see
    /// [`ObjectStore::resolve_digest`] and [`ObjectStore::load_image`]).
    pub fn open_image(&self, spec: &str) -> Result<StoredImage> {
        let digest = self.resolve_digest(spec)?;
        let bytes = self.load_image(&digest).map_err(|e| match e {
            StoreError::NotFound(_) => StoreError::NotFound(format!(
                "{spec:?} names image {digest}, which is missing from {}",
                self.images_dir().display()
            )),
            other => other,
        })?;
        Ok(StoredImage {
            path: self.image_path(&digest),
            digest,
            bytes,
        })
    }

    /// Whether a regular file is stored as the image with this digest (unchecked).
    fn has_image_file(&self, digest: &Digest) -> bool {
        self.subdir(IMAGES_DIR)
            .ok()
            .flatten()
            .and_then(|d| d.metadata(digest.to_hex()).ok().flatten())
            .is_some_and(|m| m.kind == Kind::File)
    }

    /// Checks that `tag` can be created: no part of its path is a tag (a symlink or file)
    /// and it is not a directory of other tags. Imports check this before the store changes,
    /// so an unusable tag fails the import with nothing left behind.
    pub fn check_tag_free(&self, tag: &str) -> Result<()> {
        self.require_full()?;
        validate_tag(tag).map_err(StoreError::BadName)?;
        let Some(mut dir) = self.subdir(REFS_DIR)? else {
            return Ok(());
        };
        let (parents, name) = tag_parts(tag);
        let mut walked = String::new();
        for c in parents {
            if !walked.is_empty() {
                walked.push('/');
            }
            walked.push_str(c);
            match dir.metadata(c).map_err(io_err("stat", &dir.display(c)))? {
                None => return Ok(()),
                Some(m) if m.kind == Kind::Dir => {
                    dir = dir.open_dir(c).map_err(io_err("open", &dir.display(c)))?;
                }
                Some(_) => {
                    return Err(StoreError::BadName(format!(
                        "tag {tag:?} cannot be created: {walked:?} is already a tag"
                    )));
                }
            }
        }
        match dir
            .metadata(name)
            .map_err(io_err("stat", &dir.display(name)))?
        {
            None => Ok(()),
            Some(m) if m.kind == Kind::Symlink => Ok(()),
            Some(m) if m.kind == Kind::Dir => Err(StoreError::BadName(format!(
                "tag {tag:?} cannot be created: tags named {tag}/… exist"
            ))),
            Some(_) => Err(StoreError::Corrupt {
                path: dir.display(name),
                reason: "not a symlink to an image (run `imgmount fsck --repair`)".into(),
            }),
        }
    }

    /// Points `tag` at an image, replacing what it named before.
    pub fn set_ref(&self, tag: &str, digest: &Digest) -> Result<()> {
        self.require_full()?;
        validate_tag(tag).map_err(StoreError::BadName)?;
        // Shared lock: a gc meanwhile would collect the temporary symlink below.
        let _lock = self.lock_shared()?;
        if !self.has_image_file(digest) {
            return Err(StoreError::NotFound(format!("image {digest}")));
        }
        self.check_tag_free(tag)?;
        let (parents, name) = tag_parts(tag);
        let rel = std::iter::once(REFS_DIR)
            .chain(parents.iter().copied())
            .collect::<Vec<_>>()
            .join("/");
        let dir = self.subdir_created(&rel)?;
        let target = format!(
            "{}{IMAGES_DIR}/{}",
            "../".repeat(parents.len() + 1),
            digest.to_hex()
        );
        let tmp = dir
            .create_temp_symlink(TEMP_PREFIX, &target)
            .map_err(io_err("create a tag in", dir.path()))?;
        dir.rename(&tmp, &dir, name).map_err(|e| {
            let _ = dir.remove_file(&tmp);
            io_err("rename a tag into", &dir.display(name))(e)
        })
    }

    /// The directory holding a tag's symlink, if it exists (a tag on its path is no
    /// directory: then there is no such tag).
    fn ref_parent(&self, parents: &[&str]) -> Result<Option<Dir>> {
        let Some(refs) = self.subdir(REFS_DIR)? else {
            return Ok(None);
        };
        if parents.is_empty() {
            return Ok(Some(refs));
        }
        let rel = parents.join("/");
        match refs.open_dir(&rel) {
            Ok(d) => Ok(Some(d)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::InvalidData
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(io_err("open", &refs.display(&rel))(e)),
        }
    }

    /// The image a tag names, if the tag exists.
    pub fn read_ref(&self, tag: &str) -> Result<Option<Digest>> {
        if validate_tag(tag).is_err() {
            return Ok(None);
        }
        let (parents, name) = tag_parts(tag);
        let Some(dir) = self.ref_parent(&parents)? else {
            return Ok(None);
        };
        let path = dir.display(name);
        let Some(target) = dir.read_link(name).map_err(io_err("read tag", &path))? else {
            return Ok(None);
        };
        let digest = target
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(digest_from_hex)
            .ok_or_else(|| StoreError::Corrupt {
                path: path.clone(),
                reason: format!("points at {}, not an image", target.display()),
            })?;
        Ok(Some(digest))
    }

    /// Removes a tag; returns whether it existed.
    pub fn remove_ref(&self, tag: &str) -> Result<bool> {
        validate_tag(tag).map_err(StoreError::BadName)?;
        let (parents, name) = tag_parts(tag);
        let Some(dir) = self.ref_parent(&parents)? else {
            return Ok(false);
        };
        if dir.read_link(name).ok().flatten().is_none() {
            return Ok(false);
        }
        if !dir
            .remove_file(name)
            .map_err(io_err("remove", &dir.display(name)))?
        {
            return Ok(false);
        }
        // Tidy now-empty parent directories of nested tags, up to refs/.
        for depth in (0..parents.len()).rev() {
            let Some(parent) = self.ref_parent(&parents[..depth])? else {
                break;
            };
            if !parent.remove_empty_dir(parents[depth]).unwrap_or(false) {
                break;
            }
        }
        Ok(true)
    }

    /// Every tag with the image it names, sorted by tag.
    pub fn list_refs(&self) -> Result<Vec<(String, Digest)>> {
        let mut out = Vec::new();
        self.walk_refs(&mut |tag, dir, name| {
            let path = dir.display(name);
            if let Some(target) = dir.read_link(name).map_err(io_err("read tag", &path))? {
                let digest = target
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(digest_from_hex)
                    .ok_or_else(|| StoreError::Corrupt {
                        path,
                        reason: format!("points at {}, not an image", target.display()),
                    })?;
                out.push((tag, digest));
            }
            Ok(())
        })?;
        out.sort();
        Ok(out)
    }

    /// Calls `f(tag, dir, name)` for every symlink in `refs/` whose name is a valid tag part,
    /// walking real directories only (depth bounded by the tag length).
    pub(super) fn walk_refs(
        &self,
        f: &mut dyn FnMut(String, &Dir, &OsStr) -> Result<()>,
    ) -> Result<()> {
        self.walk_refs_all(&mut |tag, dir, name, kind| {
            if kind == Kind::Symlink && !name.to_string_lossy().starts_with('.') {
                f(tag, dir, name)?;
            }
            Ok(())
        })
    }

    /// Calls `f(tag, dir, name, kind)` for every non-directory entry under `refs/`.
    pub(super) fn walk_refs_all(
        &self,
        f: &mut dyn FnMut(String, &Dir, &OsStr, Kind) -> Result<()>,
    ) -> Result<()> {
        let Some(refs) = self.subdir(REFS_DIR)? else {
            return Ok(());
        };
        let mut stack = vec![(String::new(), refs)];
        while let Some((prefix, dir)) = stack.pop() {
            let entries = dir.entries().map_err(io_err("list", dir.path()))?;
            for entry in entries {
                let Some(part) = entry.name.to_str() else {
                    continue;
                };
                let tag = if prefix.is_empty() {
                    part.to_owned()
                } else {
                    format!("{prefix}/{part}")
                };
                if entry.kind == Kind::Dir {
                    // Tags are at most MAX_TAG_LEN bytes: deeper directories name none.
                    if tag.len() < MAX_TAG_LEN {
                        let sub = dir
                            .open_dir(&entry.name)
                            .map_err(io_err("open", &dir.display(&entry.name)))?;
                        stack.push((tag, sub));
                    }
                } else {
                    f(tag, &dir, &entry.name, entry.kind)?;
                }
            }
        }
        Ok(())
    }

    /// Every image, sorted by digest, with its tags. Only regular files named by a
    /// digest count (their content is not checked here).
    pub fn list_images(&self) -> Result<Vec<ImageInfo>> {
        let refs = self.list_refs()?;
        let mut out = Vec::new();
        let Some(dir) = self.subdir(IMAGES_DIR)? else {
            return Ok(out);
        };
        for entry in dir.entries().map_err(io_err("list", dir.path()))? {
            let Some(digest) = entry.name.to_str().and_then(digest_from_hex) else {
                continue;
            };
            if entry.kind != Kind::File {
                continue;
            }
            let Some(meta) = dir
                .metadata(&entry.name)
                .map_err(io_err("stat", &dir.display(&entry.name)))?
            else {
                continue;
            };
            let tags = refs
                .iter()
                .filter(|(_, d)| *d == digest)
                .map(|(t, _)| t.clone())
                .collect();
            out.push(ImageInfo {
                digest,
                path: dir.display(&entry.name),
                size: meta.len,
                created: Some(meta.modified),
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

    /// The image file a tag or digest names (see [`ObjectStore::resolve_digest`]). Its
    /// content is not checked: read images with [`ObjectStore::open_image`].
    pub fn resolve(&self, spec: &str) -> Result<PathBuf> {
        let digest = self.resolve_digest(spec)?;
        if !self.has_image_file(&digest) {
            return Err(StoreError::NotFound(format!(
                "{spec:?} names image {digest}, which is missing from {}",
                self.images_dir().display()
            )));
        }
        Ok(self.image_path(&digest))
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
        let gone = || StoreError::NotFound(format!("image {digest}"));
        let dir = self.subdir(IMAGES_DIR)?.ok_or_else(gone)?;
        match dir.remove_file(digest.to_hex()) {
            Ok(true) => Ok(removed),
            Ok(false) => Err(gone()),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    /// The objects an image references (its redirects), read from the checked image.
    pub fn stored_image_objects(
        &self,
        digest: &Digest,
    ) -> Result<std::collections::HashSet<Digest>> {
        let bytes = self.load_image(digest)?;
        super::maintenance::image_bytes_objects(&self.image_path(digest), bytes)
    }
}

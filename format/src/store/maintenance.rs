//! Keeping a store tidy and honest: `gc` removes what no image references,
//! `fsck` recomputes every digest.
//!
//! Both walk the store through [`super::fsops`]: every directory opened
//! `O_NOFOLLOW | O_DIRECTORY`, every removal an `unlinkat` relative to a
//! directory so opened, so a symlink planted anywhere in the store is removed
//! (or reported) as the entry itself and never leads outside.
//!
//! Orders chosen so that being killed at any point leaves a store `fsck`
//! accepts: `gc` removes an object's sidecar before the object (an object
//! without a sidecar is fine, a sidecar without its object is only untidy and
//! `fsck` says so without failing).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::fsops::{Dir, Expect, Kind};
use super::images::{IMAGES_DIR, REFS_DIR, digest_from_hex};
use super::staging::TMP_DIR;
use super::{DOWNLOADS_DIR, LAYERS_DIR, MANIFESTS_DIR};
use super::{ObjectStore, Result, StoreError, TEMP_PREFIX, io_err};
use crate::erofs::reader::Image;
use crate::verity::{self, Digest, MerkleTree};

/// Temporary object files younger than this are left alone by `gc`: a writer
/// that takes no lock (`create --digest-store`, a mount saving a sidecar) may
/// still be filling them.
const TEMP_GRACE: Duration = Duration::from_secs(3600);

/// What `gc` removed (or, dry, would remove).
#[derive(Clone, Debug, Default)]
pub struct GcReport {
    pub images: usize,
    pub kept_objects: usize,
    pub removed_objects: usize,
    pub removed_bytes: u64,
    pub removed_sidecars: usize,
    /// Stale temporary files and staging directories.
    pub removed_temp: usize,
    /// Tags naming images that are gone.
    pub removed_refs: Vec<String>,
    /// Layer records, image layer lists and manifest maps no image uses.
    pub removed_layer_records: usize,
    /// Partial or finished blob downloads of interrupted pulls.
    pub removed_downloads: usize,
    pub removed_download_bytes: u64,
}

/// One problem `fsck` found.
#[derive(Clone, Debug)]
pub struct FsckProblem {
    pub path: PathBuf,
    pub reason: String,
    /// Whether `--repair` removed it.
    pub removed: bool,
}

/// What `fsck` found.
#[derive(Clone, Debug, Default)]
pub struct FsckReport {
    pub objects: usize,
    pub sidecars: usize,
    pub images: usize,
    /// Sidecars whose object is gone (left by an interrupted `gc`, or saved by a
    /// mount after its image was removed): harmless, `gc` removes them, and so
    /// does `fsck --repair`. Not a problem.
    pub orphan_sidecars: usize,
    pub problems: Vec<FsckProblem>,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One file in a fan-out directory whose name is a digest.
struct Named {
    digest: Digest,
    dir: Dir,
    name: OsString,
    kind: Kind,
}

/// Anything else found while walking a fan-out tree.
struct Stray {
    dir: Dir,
    name: OsString,
    kind: Kind,
    /// A two-hex-digit name at the top that is not a directory: damage.
    bad_fan: bool,
}

impl Stray {
    fn is_temp(&self) -> bool {
        self.name.to_string_lossy().starts_with(TEMP_PREFIX)
    }

    fn path(&self) -> PathBuf {
        self.dir.display(&self.name)
    }
}

impl Named {
    fn path(&self) -> PathBuf {
        self.dir.display(&self.name)
    }

    fn len(&self) -> u64 {
        self.dir
            .metadata(&self.name)
            .ok()
            .flatten()
            .map_or(0, |m| m.len)
    }

    fn remove(&self) -> Result<bool> {
        self.dir
            .remove_file(&self.name)
            .map_err(io_err("remove", &self.path()))
    }
}

fn is_stale(dir: &Dir, name: &OsStr) -> bool {
    dir.metadata(name)
        .ok()
        .flatten()
        .and_then(|m| SystemTime::now().duration_since(m.modified).ok())
        .is_some_and(|age| age > TEMP_GRACE)
}

/// The entries of a `XX/rest` tree (objects or sidecars) under `root`; names
/// that are not digests, and `XX` entries that are not directories, go to
/// `stray`. Nothing is followed: a symlink `XX` is a stray, not a directory.
fn walk_fanout(root: Option<&Dir>, stray: &mut Vec<Stray>) -> Result<Vec<Named>> {
    let mut out = Vec::new();
    let Some(root) = root else {
        return Ok(out);
    };
    for fan in root.entries().map_err(io_err("list", root.path()))? {
        let fan_name = fan
            .name
            .to_str()
            .filter(|n| n.len() == 2 && n.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        let (Some(fan_name), Kind::Dir) = (fan_name, fan.kind) else {
            stray.push(Stray {
                dir: root.clone(),
                bad_fan: fan_name.is_some(),
                name: fan.name,
                kind: fan.kind,
            });
            continue;
        };
        let dir = root
            .open_dir(&fan.name)
            .map_err(io_err("open", &root.display(&fan.name)))?;
        for obj in dir.entries().map_err(io_err("list", dir.path()))? {
            let digest = obj
                .name
                .to_str()
                .and_then(|rest| digest_from_hex(&format!("{fan_name}{rest}")));
            match digest {
                Some(digest) => out.push(Named {
                    digest,
                    dir: dir.clone(),
                    name: obj.name,
                    kind: obj.kind,
                }),
                None => stray.push(Stray {
                    dir: dir.clone(),
                    name: obj.name,
                    kind: obj.kind,
                    bad_fan: false,
                }),
            }
        }
    }
    Ok(out)
}

/// For gc: the directory `name` in `parent`, if it is one. Anything else there (a symlink
/// to elsewhere, a file, a FIFO) is removed as the entry itself, never followed, unless
/// `dry_run`; the flag says whether there was such a thing.
pub(super) fn subdir_or_remove(
    parent: &Dir,
    name: impl AsRef<OsStr>,
    dry_run: bool,
) -> Result<(Option<Dir>, bool)> {
    let name = name.as_ref();
    let path = || parent.display(name);
    match parent.metadata(name).map_err(io_err("stat", &path()))? {
        None => Ok((None, false)),
        Some(m) if m.kind == Kind::Dir => {
            let dir = parent.open_dir(name).map_err(io_err("open", &path()))?;
            Ok((Some(dir), false))
        }
        Some(_) => {
            if !dry_run {
                parent.remove_all(name).map_err(io_err("remove", &path()))?;
            }
            Ok((None, true))
        }
    }
}

/// The objects an image references (its redirects), from its bytes.
pub(super) fn image_bytes_objects(path: &Path, bytes: Vec<u8>) -> Result<HashSet<Digest>> {
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let img = Image::from_bytes(bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut out = HashSet::new();
    for (_, nid) in img.walk().map_err(|e| corrupt(e.to_string()))? {
        let inode = img.inode(nid).map_err(|e| corrupt(e.to_string()))?;
        if let Some(redirect) = img.redirect(&inode).map_err(|e| corrupt(e.to_string()))? {
            let hex: String = String::from_utf8_lossy(redirect)
                .trim_start_matches('/')
                .chars()
                .filter(|c| *c != '/')
                .collect();
            let d = digest_from_hex(&hex)
                .ok_or_else(|| corrupt(format!("redirect {hex:?} names no object")))?;
            out.insert(d);
        }
    }
    Ok(out)
}

impl ObjectStore {
    /// The objects an image file references (its redirects). The file is read
    /// whole, through no symlink; it is not checked against a digest (use
    /// [`ObjectStore::stored_image_objects`] for images in the store).
    pub fn image_objects(&self, image: &Path) -> Result<HashSet<Digest>> {
        let bytes = super::fsops::read_regular(image, super::MAX_IMAGE_SIZE)
            .map_err(io_err("read image", image))?;
        image_bytes_objects(image, bytes)
    }

    /// Every object in the store (regular files named by a digest).
    pub fn list_objects(&self) -> Result<Vec<(Digest, PathBuf)>> {
        Ok(walk_fanout(Some(&self.objects_fd), &mut Vec::new())?
            .into_iter()
            .filter(|n| n.kind == Kind::File)
            .map(|n| (n.digest, n.path()))
            .collect())
    }

    /// The sidecar directory, if it exists.
    fn sidecar_fd(&self) -> Result<Option<Dir>> {
        self.subdir(self.sidecar_rel())
    }

    /// Removes objects no image references (nor a layer record of one),
    /// their sidecars, sidecars without objects, stale temporary files and
    /// staging directories, layer records no image uses, blob downloads of
    /// interrupted pulls, and tags of missing images. Holds the exclusive
    /// lock: waits for running imports. An image that cannot be read or does
    /// not match its name stops `gc` before it removes anything.
    pub fn gc(&self, dry_run: bool) -> Result<GcReport> {
        self.require_full()?;
        let _lock = self.lock_exclusive()?;
        let mut report = GcReport::default();
        let mut live = HashSet::new();
        let images = self.list_images()?;
        report.images = images.len();
        for image in &images {
            live.extend(self.stored_image_objects(&image.digest)?);
        }
        // Objects that layer records of live images name stay too, so those
        // layers can be replayed for another image without their blobs.
        let live_images = images.iter().map(|i| i.digest).collect();
        live.extend(self.gc_layers(&live_images, dry_run, &mut report)?);
        self.gc_downloads(dry_run, &mut report)?;
        let sidecars = self.sidecar_fd()?;
        let mut stray = Vec::new();
        let mut side_stray = Vec::new();
        let side_list = walk_fanout(sidecars.as_ref(), &mut side_stray)?;
        let side_of: std::collections::HashMap<Digest, &Named> =
            side_list.iter().map(|n| (n.digest, n)).collect();
        for obj in walk_fanout(Some(&self.objects_fd), &mut stray)? {
            if live.contains(&obj.digest) && obj.kind == Kind::File {
                report.kept_objects += 1;
                continue;
            }
            if live.contains(&obj.digest) {
                // A symlink or FIFO under a live name: not gc's to judge (fsck reports it).
                continue;
            }
            report.removed_objects += 1;
            report.removed_bytes += obj.len();
            if !dry_run {
                // Sidecar first: killed in between, the store holds an object without
                // a sidecar, which is fine.
                if let Some(side) = side_of.get(&obj.digest) {
                    side.remove()?;
                }
                obj.remove()?;
            }
        }
        for s in stray.iter().chain(&side_stray) {
            if s.is_temp() && s.kind != Kind::Dir && is_stale(&s.dir, &s.name) {
                report.removed_temp += 1;
                if !dry_run {
                    s.dir
                        .remove_file(&s.name)
                        .map_err(io_err("remove", &s.path()))?;
                }
            }
        }
        for side in &side_list {
            if !live.contains(&side.digest) {
                report.removed_sidecars += 1;
                if !dry_run {
                    side.remove()?;
                }
            }
        }
        // No import runs (we hold the exclusive lock): every staging directory,
        // and every temporary image or tag, is left over from a crash.
        // A symlink (or anything else) where the scratch directory should be is removed as
        // the entry itself, never followed.
        let (tmp, junk) = subdir_or_remove(&self.root_fd, TMP_DIR, dry_run)?;
        report.removed_temp += usize::from(junk);
        if let Some(tmp) = tmp {
            for entry in tmp.entries().map_err(io_err("list", tmp.path()))? {
                report.removed_temp += 1;
                if !dry_run {
                    tmp.remove_all(&entry.name)
                        .map_err(io_err("remove", &tmp.display(&entry.name)))?;
                }
            }
        }
        if let Some(images) = self.subdir(IMAGES_DIR)? {
            for entry in images.entries().map_err(io_err("list", images.path()))? {
                if entry.name.to_string_lossy().starts_with(TEMP_PREFIX) && entry.kind != Kind::Dir
                {
                    report.removed_temp += 1;
                    if !dry_run {
                        images
                            .remove_file(&entry.name)
                            .map_err(io_err("remove", &images.display(&entry.name)))?;
                    }
                }
            }
        }
        let mut ref_temps = Vec::new();
        self.walk_refs_all(&mut |_, dir, name, _| {
            if name.to_string_lossy().starts_with(TEMP_PREFIX) {
                ref_temps.push((dir.clone(), name.to_owned()));
            }
            Ok(())
        })?;
        for (dir, name) in ref_temps {
            report.removed_temp += 1;
            if !dry_run {
                dir.remove_file(&name)
                    .map_err(io_err("remove", &dir.display(&name)))?;
            }
        }
        let present: HashSet<Digest> = images.iter().map(|i| i.digest).collect();
        for (tag, digest) in self.list_refs()? {
            if !present.contains(&digest) {
                if !dry_run {
                    self.remove_ref(&tag)?;
                }
                report.removed_refs.push(tag);
            }
        }
        Ok(report)
    }

    /// Recomputes every object's digest and checks sidecars and images; with
    /// `repair`, removes what is bad (importing an image again then restores
    /// its content: an import replaces any object whose bytes are wrong).
    pub fn fsck(&self, repair: bool) -> Result<FsckReport> {
        // Repairs remove files: keep imports and gc out meanwhile.
        let _lock = if repair {
            self.lock_exclusive()?
        } else {
            self.lock_shared()?
        };
        let mut report = FsckReport::default();
        let problem = |report: &mut FsckReport, dir: &Dir, name: &OsStr, reason: String| {
            let removed = repair && dir.remove_all(name).is_ok();
            report.problems.push(FsckProblem {
                path: dir.display(name),
                reason,
                removed,
            });
        };
        // The store's own directories must be directories: anything else there (a symlink
        // to elsewhere, say) is reported, removed as the entry itself with --repair, and
        // not looked into.
        let mut tops = vec![self.sidecar_rel()];
        if !self.bare {
            tops.extend([
                IMAGES_DIR,
                REFS_DIR,
                TMP_DIR,
                LAYERS_DIR,
                MANIFESTS_DIR,
                DOWNLOADS_DIR,
            ]);
        }
        let mut unusable = HashSet::new();
        for top in tops {
            let meta = self
                .root_fd
                .metadata(top)
                .map_err(io_err("stat", &self.root.join(top)))?;
            if let Some(m) = meta
                && m.kind != Kind::Dir
            {
                problem(
                    &mut report,
                    &self.root_fd,
                    OsStr::new(top),
                    format!("is {}, where a directory should be", m.kind.describe()),
                );
                unusable.insert(top);
            }
        }
        let mut present = HashSet::new();
        let mut stray = Vec::new();
        for obj in walk_fanout(Some(&self.objects_fd), &mut stray)? {
            report.objects += 1;
            let checked = obj
                .dir
                .open_file(&obj.name, Expect::Any)
                .and_then(|f| verity::digest_reader(obj.digest.alg(), f));
            match checked {
                Ok(actual) if actual == obj.digest => {
                    present.insert(obj.digest);
                }
                Ok(actual) => problem(
                    &mut report,
                    &obj.dir,
                    &obj.name,
                    format!("content has digest {actual}, its name says {}", obj.digest),
                ),
                Err(e) => problem(
                    &mut report,
                    &obj.dir,
                    &obj.name,
                    format!("cannot read it: {e}"),
                ),
            }
        }
        for s in stray.iter().filter(|s| s.bad_fan) {
            problem(
                &mut report,
                &s.dir,
                &s.name,
                format!(
                    "is {}, where an object directory should be",
                    s.kind.describe()
                ),
            );
        }
        let sidecars = if unusable.contains(self.sidecar_rel()) {
            None
        } else {
            self.sidecar_fd()?
        };
        let mut side_stray = Vec::new();
        for side in walk_fanout(sidecars.as_ref(), &mut side_stray)? {
            report.sidecars += 1;
            let Some(size) = self.object_size(&side.digest) else {
                report.orphan_sidecars += 1;
                if repair {
                    side.remove()?;
                }
                continue;
            };
            let want = MerkleTree::serialized_len(side.digest.alg(), size);
            let checked = side
                .dir
                .read_file(&side.name, want)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    if bytes.len() as u64 != want {
                        return Err(format!("it has {} bytes, expected {want}", bytes.len()));
                    }
                    MerkleTree::from_bytes(side.digest, size, bytes).map_err(|e| e.to_string())
                })
                .and_then(|tree| tree.verify_tree().map_err(|e| e.to_string()));
            if let Err(reason) = checked {
                problem(
                    &mut report,
                    &side.dir,
                    &side.name,
                    format!("bad Merkle tree: {reason} (a mount rebuilds it)"),
                );
            }
        }
        for s in side_stray.iter().filter(|s| s.bad_fan) {
            problem(
                &mut report,
                &s.dir,
                &s.name,
                format!(
                    "is {}, where a sidecar directory should be",
                    s.kind.describe()
                ),
            );
        }
        if !self.bare && !unusable.contains(IMAGES_DIR) && !unusable.contains(REFS_DIR) {
            self.fsck_images(&mut report, &present, &problem)?;
        }
        Ok(report)
    }

    fn fsck_images(
        &self,
        report: &mut FsckReport,
        present: &HashSet<Digest>,
        problem: &dyn Fn(&mut FsckReport, &Dir, &OsStr, String),
    ) -> Result<()> {
        let Some(dir) = self.subdir(IMAGES_DIR)? else {
            return Ok(());
        };
        for entry in dir.entries().map_err(io_err("list", dir.path()))? {
            let Some(digest) = entry.name.to_str().and_then(digest_from_hex) else {
                continue;
            };
            report.images += 1;
            let objects = match self.stored_image_objects(&digest) {
                Ok(objects) => objects,
                Err(e) => {
                    let reason = match e {
                        StoreError::Corrupt { reason, .. } => reason,
                        other => other.to_string(),
                    };
                    problem(report, &dir, &entry.name, reason);
                    continue;
                }
            };
            let mut missing: Vec<Digest> = objects
                .into_iter()
                .filter(|d| !present.contains(d))
                .collect();
            missing.sort();
            if let Some(first) = missing.first() {
                // Not removable: the image is fine, its content is gone.
                report.problems.push(FsckProblem {
                    path: dir.display(&entry.name),
                    reason: format!(
                        "{} objects it references are missing or bad (first: {first}); import \
                         the image again to restore them (an import replaces bad objects)",
                        missing.len()
                    ),
                    removed: false,
                });
            }
        }
        // Tags that are not symlinks are damage too.
        let mut bad_refs = Vec::new();
        self.walk_refs_all(&mut |tag, d, name, kind| {
            if kind != Kind::Symlink && !name.to_string_lossy().starts_with('.') {
                bad_refs.push((tag, d.clone(), name.to_owned()));
            }
            Ok(())
        })?;
        for (_, d, name) in bad_refs {
            problem(report, &d, &name, "a tag that is not a symlink".into());
        }
        Ok(())
    }
}

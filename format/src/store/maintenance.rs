//! Keeping a store tidy and honest: `gc` removes what no image references,
//! `fsck` recomputes every digest.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::images::digest_from_hex;
use super::staging::TMP_DIR;
use super::{ObjectStore, Result, StoreError, TEMP_PREFIX, io_err};
use crate::erofs::reader::Image;
use crate::verity::{self, Digest, MerkleTree};

/// Temporary object files younger than this are left alone by `gc`: a writer
/// that takes no lock (`create --digest-store`) may still be filling them.
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
    pub problems: Vec<FsckProblem>,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

fn remove_file_counted(path: &Path) -> Result<u64> {
    let len = fs::symlink_metadata(path).map(|m| m.len()).unwrap_or(0);
    match fs::remove_file(path) {
        Ok(()) => Ok(len),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

fn is_stale(path: &Path) -> bool {
    fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > TEMP_GRACE)
}

/// The files of a `XX/rest` directory (objects or sidecars): (digest, path);
/// names that are not digests go to `other`.
fn walk_fanout(dir: &Path, other: &mut Vec<PathBuf>) -> Result<Vec<(Digest, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    for fan in entries {
        let fan = fan.map_err(io_err("list", dir))?;
        let fan_name = fan.file_name();
        let Some(fan_name) = fan_name.to_str().filter(|n| n.len() == 2) else {
            other.push(fan.path());
            continue;
        };
        if !fan
            .file_type()
            .map_err(io_err("stat", &fan.path()))?
            .is_dir()
        {
            other.push(fan.path());
            continue;
        }
        for obj in fs::read_dir(fan.path()).map_err(io_err("list", &fan.path()))? {
            let obj = obj.map_err(io_err("list", &fan.path()))?;
            let name = obj.file_name();
            let digest = name
                .to_str()
                .and_then(|rest| digest_from_hex(&format!("{fan_name}{rest}")));
            match digest {
                Some(d) => out.push((d, obj.path())),
                None => other.push(obj.path()),
            }
        }
    }
    Ok(out)
}

impl ObjectStore {
    /// The objects an image file references (its redirects).
    pub fn image_objects(&self, image: &Path) -> Result<HashSet<Digest>> {
        let corrupt = |reason: String| StoreError::Corrupt {
            path: image.to_owned(),
            reason,
        };
        let img = Image::open(image).map_err(|e| corrupt(e.to_string()))?;
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

    /// Every object in the store.
    pub fn list_objects(&self) -> Result<Vec<(Digest, PathBuf)>> {
        walk_fanout(&self.objects, &mut Vec::new())
    }

    /// Removes objects no image references (nor a layer record of one),
    /// their sidecars, sidecars without objects, stale temporary files and
    /// staging directories, layer records no image uses, blob downloads of
    /// interrupted pulls, and tags of missing images. Holds the exclusive lock: waits for running imports.
    /// An image that cannot be read stops `gc` before it removes anything.
    pub fn gc(&self, dry_run: bool) -> Result<GcReport> {
        self.require_full_store()?;
        let _lock = self.lock_exclusive()?;
        let mut report = GcReport::default();
        let mut live = HashSet::new();
        let images = self.list_images()?;
        report.images = images.len();
        for image in &images {
            live.extend(self.image_objects(&image.path)?);
        }
        // Objects that layer records of live images name stay too, so those
        // layers can be replayed for another image without their blobs.
        let live_images = images.iter().map(|i| i.digest).collect();
        live.extend(self.gc_layers(&live_images, dry_run, &mut report)?);
        self.gc_downloads(dry_run, &mut report)?;
        let mut stray = Vec::new();
        for (digest, path) in walk_fanout(&self.objects, &mut stray)? {
            if live.contains(&digest) {
                report.kept_objects += 1;
                continue;
            }
            report.removed_objects += 1;
            if dry_run {
                report.removed_bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            } else {
                report.removed_bytes += remove_file_counted(&path)?;
            }
        }
        for path in stray {
            let temp = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(TEMP_PREFIX));
            if temp && is_stale(&path) {
                report.removed_temp += 1;
                if !dry_run {
                    remove_file_counted(&path)?;
                }
            }
        }
        let sidecar_root = self.sidecar_root();
        for (digest, path) in walk_fanout(&sidecar_root, &mut Vec::new())? {
            if !live.contains(&digest) {
                report.removed_sidecars += 1;
                if !dry_run {
                    remove_file_counted(&path)?;
                }
            }
        }
        // No import runs (we hold the exclusive lock): every staging directory is
        // left over from a crash.
        let tmp = self.root.join(TMP_DIR);
        if let Ok(entries) = fs::read_dir(&tmp) {
            for entry in entries.flatten() {
                report.removed_temp += 1;
                if !dry_run {
                    fs::remove_dir_all(entry.path()).map_err(io_err("remove", &entry.path()))?;
                }
            }
        }
        for (tag, digest) in self.list_refs()? {
            if !self.image_path(&digest).is_file() {
                if !dry_run {
                    self.remove_ref(&tag)?;
                }
                report.removed_refs.push(tag);
            }
        }
        Ok(report)
    }

    fn sidecar_root(&self) -> PathBuf {
        // sidecar_path of any digest is ROOT/XX/rest: take ROOT from a dummy.
        let probe = Digest::new(verity::HashAlg::Sha256, &[0; 32]);
        probe
            .map(|d| self.sidecar_path(&d))
            .and_then(|p| p.parent().and_then(Path::parent).map(Path::to_owned))
            .unwrap_or_else(|| self.root.join("verity"))
    }

    fn require_full_store(&self) -> Result<()> {
        if self.bare {
            return Err(StoreError::Bare {
                path: self.root.clone(),
            });
        }
        Ok(())
    }

    /// Recomputes every object's digest and checks sidecars and images; with
    /// `repair`, removes what is bad (a bad object must then be re-imported).
    pub fn fsck(&self, repair: bool) -> Result<FsckReport> {
        // Repairs remove files: keep imports and gc out meanwhile.
        let _lock = if repair {
            self.lock_exclusive()?
        } else {
            self.lock_shared()?
        };
        let mut report = FsckReport::default();
        let problem = |report: &mut FsckReport, path: &Path, reason: String| -> Result<()> {
            let removed = repair && remove_file_counted(path).is_ok();
            report.problems.push(FsckProblem {
                path: path.to_owned(),
                reason,
                removed,
            });
            Ok(())
        };
        let mut present = HashSet::new();
        for (expected, path) in walk_fanout(&self.objects, &mut Vec::new())? {
            report.objects += 1;
            match verity::digest_file(expected.alg(), &path) {
                Ok(actual) if actual == expected => {
                    present.insert(expected);
                }
                Ok(actual) => problem(
                    &mut report,
                    &path,
                    format!("content has digest {actual}, its name says {expected}"),
                )?,
                Err(e) => problem(&mut report, &path, format!("cannot read it: {e}"))?,
            }
        }
        for (digest, path) in walk_fanout(&self.sidecar_root(), &mut Vec::new())? {
            report.sidecars += 1;
            let Ok(size) = fs::metadata(self.object_path(&digest)).map(|m| m.len()) else {
                problem(&mut report, &path, "sidecar of a missing object".into())?;
                continue;
            };
            let checked = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    MerkleTree::from_bytes(digest, size, bytes).map_err(|e| e.to_string())
                })
                .and_then(|tree| tree.verify_tree().map_err(|e| e.to_string()));
            if let Err(reason) = checked {
                problem(&mut report, &path, format!("bad Merkle tree: {reason}"))?;
            }
        }
        if !self.bare {
            for image in self.list_images()? {
                report.images += 1;
                match verity::digest_file(image.digest.alg(), &image.path) {
                    Ok(actual) if actual == image.digest => {}
                    Ok(actual) => {
                        problem(
                            &mut report,
                            &image.path,
                            format!("image has digest {actual}, its name says {}", image.digest),
                        )?;
                        continue;
                    }
                    Err(e) => {
                        problem(&mut report, &image.path, format!("cannot read it: {e}"))?;
                        continue;
                    }
                }
                match self.image_objects(&image.path) {
                    Ok(objects) => {
                        let mut missing: Vec<Digest> = objects
                            .into_iter()
                            .filter(|d| !present.contains(d))
                            .collect();
                        missing.sort();
                        if let Some(first) = missing.first() {
                            // Not removable: the image is fine, its content is gone.
                            report.problems.push(FsckProblem {
                                path: image.path.clone(),
                                reason: format!(
                                    "{} objects it references are missing or bad \
                                     (first: {first}); import it again",
                                    missing.len()
                                ),
                                removed: false,
                            });
                        }
                    }
                    Err(e) => problem(&mut report, &image.path, e.to_string())?,
                }
            }
        }
        Ok(report)
    }
}

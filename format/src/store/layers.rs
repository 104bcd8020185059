//! What the store remembers about its imports, so that a layer or an image it
//! already holds costs nothing the second time:
//!
//! * `layers/<verity-alg>/<diff-alg>-<hex>`: the *record* of a layer, named by
//!   its `diff_id` (the digest of its uncompressed tar) and the fs-verity
//!   algorithm of the objects it names: the tar with every stored file's
//!   content replaced by a reference to its object (see
//!   [`crate::oci::layer_record`]). Replaying it gives back the exact tar.
//! * `layers/images/<image-hex>`: the `diff_id`s an image was built from, one
//!   per line. `gc` keeps a record (and the objects it names) while an image
//!   in `images/` lists it.
//! * `manifests/<alg>/<hex>`: the images a manifest (or an index entry's
//!   manifest) produced, one image digest per line, one per fs-verity
//!   algorithm.
//!
//! All of it is a hint and never trusted. A record is used only if the tar it
//! rebuilds from the objects hashes to the `diff_id` that names it (else the
//! layer is fetched again); a manifest's image only if the image file still
//! has its digest, the `diff_id`s listed for it are the manifest's, and the
//! objects it names are present. Files are opened without following symlinks
//! or blocking on FIFOs, and anything malformed reads as "not recorded".

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::nofollow::{is_real_dir, open_regular};
use super::{ObjectStore, Result, StoreError, TEMP_PREFIX, io_err};
use crate::verity::{self, Digest, HashAlg};

pub const LAYERS_DIR: &str = "layers";
pub const MANIFESTS_DIR: &str = "manifests";
/// Under `layers/`: the diff_id lists of images.
const IMAGE_LAYERS_DIR: &str = "images";
/// Largest layer record read (a record is a compressed list of tar headers).
pub const MAX_RECORD_SIZE: u64 = 4 << 30;
/// Largest image file checked by [`ObjectStore::image_is_intact`].
const MAX_IMAGE_SIZE: u64 = 4 << 30;
/// Largest diff_id list or manifest map read.
const MAX_LIST_SIZE: u64 = 1 << 20;

/// Splits a content digest `ALG:HEX` (sha256 or sha512, lower-case hex of the
/// right length), so it can name a file.
pub fn split_content_digest(digest: &str) -> Option<(&str, &str)> {
    let (alg, hex) = digest.split_once(':')?;
    let len = match alg {
        "sha256" => 64,
        "sha512" => 128,
        _ => return None,
    };
    (hex.len() == len && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then_some((alg, hex))
}

fn bad_key(digest: &str) -> StoreError {
    StoreError::BadName(format!(
        "{digest:?} is not a sha256:HEX or sha512:HEX content digest"
    ))
}

/// Writes `data` to `path` atomically (temporary file, fsync, rename).
fn replace_file(path: &Path, data: &[u8], fsync: bool) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)
        .map_err(io_err("create a temporary file in", dir))?;
    tmp.write_all(data).map_err(io_err("write", tmp.path()))?;
    if fsync {
        tmp.as_file()
            .sync_all()
            .map_err(io_err("fsync", tmp.path()))?;
    }
    tmp.persist(path)
        .map_err(|e| io_err("rename into", path)(e.error))?;
    Ok(())
}

/// Reads a small text file of the store; `None` when it is missing or is not
/// a regular file of sane size (a hint that cannot be read is no hint).
fn read_hint(path: &Path) -> Option<String> {
    let (file, _) = open_regular(path, Some(MAX_LIST_SIZE)).ok()?;
    let mut text = String::new();
    file.take(MAX_LIST_SIZE).read_to_string(&mut text).ok()?;
    Some(text)
}

impl ObjectStore {
    /// `layers/`.
    pub fn layers_dir(&self) -> PathBuf {
        self.root.join(LAYERS_DIR)
    }

    /// Where the record of the layer with this `diff_id` is, for objects named
    /// by `verity` digests.
    pub fn layer_record_path(&self, verity: HashAlg, diff_id: &str) -> Result<PathBuf> {
        let (alg, hex) = split_content_digest(diff_id).ok_or_else(|| bad_key(diff_id))?;
        Ok(self
            .layers_dir()
            .join(verity.name())
            .join(format!("{alg}-{hex}")))
    }

    /// Opens a layer's record if there is one that is a regular file; returns
    /// it and its size. Its content is not checked here.
    pub fn open_layer_record(&self, verity: HashAlg, diff_id: &str) -> Result<Option<File>> {
        self.require_full()?;
        let path = self.layer_record_path(verity, diff_id)?;
        if !is_real_dir(&self.layers_dir()) {
            return Ok(None);
        }
        match open_regular(&path, Some(MAX_RECORD_SIZE)) {
            Ok((file, _)) => Ok(Some(file)),
            Err(_) => Ok(None),
        }
    }

    /// Makes a finished record file (written anywhere on the store's
    /// filesystem, normally in an import's staging directory) the record of
    /// `diff_id`, replacing a previous one (which a replay found bad).
    pub fn commit_layer_record(&self, file: &Path, verity: HashAlg, diff_id: &str) -> Result<()> {
        self.require_full()?;
        let path = self.layer_record_path(verity, diff_id)?;
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        if self.fsync {
            File::open(file)
                .and_then(|f| f.sync_all())
                .map_err(io_err("fsync", file))?;
        }
        fs::rename(file, &path).map_err(io_err("rename a layer record into", &path))
    }

    fn image_layers_path(&self, image: &Digest) -> PathBuf {
        self.layers_dir()
            .join(IMAGE_LAYERS_DIR)
            .join(image.to_hex())
    }

    /// Records the `diff_id`s an image was built from, bottom layer first.
    pub fn set_image_layers(&self, image: &Digest, diff_ids: &[String]) -> Result<()> {
        self.require_full()?;
        for d in diff_ids {
            split_content_digest(d).ok_or_else(|| bad_key(d))?;
        }
        let mut text = diff_ids.join("\n");
        text.push('\n');
        replace_file(&self.image_layers_path(image), text.as_bytes(), self.fsync)
    }

    /// The `diff_id`s recorded for an image, if any (and well formed).
    pub fn image_layers(&self, image: &Digest) -> Option<Vec<String>> {
        let text = read_hint(&self.image_layers_path(image))?;
        let list: Vec<String> = text.lines().map(str::to_owned).collect();
        list.iter()
            .all(|d| split_content_digest(d).is_some())
            .then_some(list)
    }

    fn manifest_path(&self, manifest: &str) -> Result<PathBuf> {
        let (alg, hex) = split_content_digest(manifest).ok_or_else(|| bad_key(manifest))?;
        Ok(self.root.join(MANIFESTS_DIR).join(alg).join(hex))
    }

    /// Records that `manifest` produced `image` (keeping what it produced with
    /// other fs-verity algorithms).
    pub fn add_manifest_image(&self, manifest: &str, image: &Digest) -> Result<()> {
        self.require_full()?;
        let path = self.manifest_path(manifest)?;
        let mut images: Vec<String> = read_hint(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse::<Digest>().ok())
            .filter(|d| d.alg() != image.alg())
            .map(|d| d.to_string())
            .collect();
        images.push(image.to_string());
        images.sort();
        let mut text = images.join("\n");
        text.push('\n');
        replace_file(&path, text.as_bytes(), self.fsync)
    }

    /// The image `manifest` produced with objects named by `alg`, as recorded.
    pub fn manifest_image(&self, manifest: &str, alg: HashAlg) -> Option<Digest> {
        let text = read_hint(&self.manifest_path(manifest).ok()?)?;
        text.lines()
            .filter_map(|l| l.parse::<Digest>().ok())
            .find(|d| d.alg() == alg)
    }

    /// Whether `images/<digest>` is a regular file whose content has that
    /// digest, and every object it names is present (as a regular file).
    pub fn image_is_intact(&self, digest: &Digest) -> Result<bool> {
        let path = self.image_path(digest);
        let Ok((file, _)) = open_regular(&path, Some(MAX_IMAGE_SIZE)) else {
            return Ok(false);
        };
        let actual = verity::digest_reader(digest.alg(), file).map_err(io_err("read", &path))?;
        if actual != *digest {
            return Ok(false);
        }
        let Ok(objects) = self.image_objects(&path) else {
            return Ok(false);
        };
        Ok(objects.iter().all(|d| self.contains(d)))
    }

    /// The part of `gc` that concerns layer records: removes records no live
    /// image lists, diff_id lists of removed images, manifest maps naming no
    /// live image, and stale temporary files; returns the objects the kept
    /// records name (they stay, so the layers can be replayed).
    pub(super) fn gc_layers(
        &self,
        live_images: &HashSet<Digest>,
        dry_run: bool,
        report: &mut super::GcReport,
    ) -> Result<HashSet<Digest>> {
        let mut keep_objects = HashSet::new();
        let layers = self.layers_dir();
        if !is_real_dir(&layers) {
            return Ok(keep_objects);
        }
        let remove = |path: &Path, report: &mut super::GcReport| -> Result<()> {
            report.removed_layer_records += 1;
            if dry_run {
                return Ok(());
            }
            match fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err("remove", path)(e)),
            }
        };
        // Which diff_ids live images were built from.
        let mut live_layers: HashSet<String> = HashSet::new();
        let lists = layers.join(IMAGE_LAYERS_DIR);
        for entry in read_dir_or_empty(&lists)? {
            let path = entry.path();
            let image = entry
                .file_name()
                .to_str()
                .and_then(super::images::digest_from_hex);
            match image {
                Some(d) if live_images.contains(&d) => {
                    if let Some(list) = self.image_layers(&d) {
                        live_layers.extend(list);
                    }
                }
                _ => remove(&path, report)?,
            }
        }
        for alg in [HashAlg::Sha256, HashAlg::Sha512] {
            let dir = layers.join(alg.name());
            for entry in read_dir_or_empty(&dir)? {
                let path = entry.path();
                let name = entry.file_name();
                let diff_id = name
                    .to_str()
                    .and_then(|n| n.split_once('-'))
                    .map(|(a, h)| format!("{a}:{h}"))
                    .filter(|d| split_content_digest(d).is_some());
                let Some(diff_id) = diff_id else {
                    // Temporary files of a crashed import, or junk.
                    remove(&path, report)?;
                    continue;
                };
                if !live_layers.contains(&diff_id) {
                    remove(&path, report)?;
                    continue;
                }
                let objects = open_regular(&path, Some(MAX_RECORD_SIZE))
                    .map_err(|e| e.to_string())
                    .and_then(|(file, _)| {
                        crate::oci::layer_record::record_objects(file).map_err(|e| e.to_string())
                    });
                match objects {
                    Ok(objects) => keep_objects.extend(objects.into_iter().map(|(d, _)| d)),
                    // A record that cannot be read is useless: drop it.
                    Err(_) => remove(&path, report)?,
                }
            }
        }
        let manifests = self.root.join(MANIFESTS_DIR);
        for alg in ["sha256", "sha512"] {
            for entry in read_dir_or_empty(&manifests.join(alg))? {
                let path = entry.path();
                let live = read_hint(&path).is_some_and(|text| {
                    text.lines()
                        .filter_map(|l| l.parse::<Digest>().ok())
                        .any(|d| live_images.contains(&d))
                });
                if !live {
                    remove(&path, report)?;
                }
            }
        }
        Ok(keep_objects)
    }
}

/// The entries of a directory; none when it is missing or not a real directory.
fn read_dir_or_empty(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    if !is_real_dir(dir) {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        out.push(entry.map_err(io_err("list", dir))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_must_be_content_digests() {
        let hex = "0a".repeat(32);
        assert!(split_content_digest(&format!("sha256:{hex}")).is_some());
        assert!(split_content_digest(&format!("sha256:{}", hex.to_uppercase())).is_none());
        assert!(split_content_digest("sha256:../../x").is_none());
        assert!(split_content_digest(&format!("md5:{hex}")).is_none());
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::create(dir.path()).unwrap().with_fsync(false);
        assert!(
            store
                .layer_record_path(HashAlg::Sha256, "sha256:x")
                .is_err()
        );
        let p = store
            .layer_record_path(HashAlg::Sha256, &format!("sha256:{hex}"))
            .unwrap();
        assert!(p.ends_with(format!("layers/sha256/sha256-{hex}")));
    }

    #[test]
    fn manifest_map_and_image_lists_are_hints() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::create(dir.path()).unwrap().with_fsync(false);
        let m = format!("sha256:{}", "1".repeat(64));
        let img = verity::digest_bytes(HashAlg::Sha256, b"image");
        let img512 = verity::digest_bytes(HashAlg::Sha512, b"image");
        assert_eq!(store.manifest_image(&m, HashAlg::Sha256), None);
        store.add_manifest_image(&m, &img).unwrap();
        store.add_manifest_image(&m, &img512).unwrap();
        assert_eq!(store.manifest_image(&m, HashAlg::Sha256), Some(img));
        assert_eq!(store.manifest_image(&m, HashAlg::Sha512), Some(img512));

        let diffs = vec![format!("sha256:{}", "2".repeat(64))];
        store.set_image_layers(&img, &diffs).unwrap();
        assert_eq!(store.image_layers(&img), Some(diffs));
        assert!(store.set_image_layers(&img, &["nope".into()]).is_err());

        // A symlink or FIFO in place of a hint reads as no hint at all.
        let path = store.manifest_path(&m).unwrap();
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        assert_eq!(store.manifest_image(&m, HashAlg::Sha256), None);
        fs::remove_file(&path).unwrap();
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(store.manifest_image(&m, HashAlg::Sha256), None);
        // And an image that is not there is not intact.
        assert!(!store.image_is_intact(&img).unwrap());
    }
}

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
//! layer is fetched again); a manifest's image only if the image file has its
//! digest (read whole and checked, [`ObjectStore::load_image`]), the
//! `diff_id`s listed for it are the manifest's, and the objects it names hold
//! their digests' content. Everything is reached through [`super::fsops`]
//! below the store root: no symlink is followed, no FIFO or device is opened
//! for reading, nothing is read past the size it may have, and anything
//! malformed reads as "not recorded".

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::fsops::{Dir, Expect, Kind, TempFile};
use super::maintenance::subdir_or_remove;
use super::{ObjectStore, Result, StoreError, io_err};
use crate::verity::{Digest, HashAlg};

pub const LAYERS_DIR: &str = "layers";
pub const MANIFESTS_DIR: &str = "manifests";
/// Under `layers/`: the diff_id lists of images.
const IMAGE_LAYERS_DIR: &str = "images";
/// Largest layer record read (a record is a compressed list of tar headers).
pub const MAX_RECORD_SIZE: u64 = 4 << 30;
/// Largest diff_id list or manifest map read.
const MAX_LIST_SIZE: u64 = 1 << 20;
/// The content digest algorithms that name records and manifests.
const CONTENT_ALGS: [&str; 2] = ["sha256", "sha512"];

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

/// Where the record of `diff_id` for objects named by `verity` digests lives:
/// its directory below the root, and its name there.
fn record_place(verity: HashAlg, diff_id: &str) -> Result<(String, String)> {
    let (alg, hex) = split_content_digest(diff_id).ok_or_else(|| bad_key(diff_id))?;
    Ok((
        format!("{LAYERS_DIR}/{}", verity.name()),
        format!("{alg}-{hex}"),
    ))
}

/// Where the image map of `manifest` lives: its directory below the root, and
/// its name there.
fn manifest_place(manifest: &str) -> Result<(String, String)> {
    let (alg, hex) = split_content_digest(manifest).ok_or_else(|| bad_key(manifest))?;
    Ok((format!("{MANIFESTS_DIR}/{alg}"), hex.to_owned()))
}

/// Reads the hint `rel` below `dir`; `None` when it is missing or is not a
/// regular file of sane size holding text (a hint that cannot be read is no
/// hint).
fn read_hint(dir: &Dir, rel: impl AsRef<Path>) -> Option<String> {
    String::from_utf8(dir.read_file(rel, MAX_LIST_SIZE).ok()?).ok()
}

/// Digests one per line, as the hint files hold them.
fn lines_of(mut items: Vec<String>) -> Vec<u8> {
    items.push(String::new());
    items.join("\n").into_bytes()
}

impl ObjectStore {
    /// `layers/`.
    pub fn layers_dir(&self) -> PathBuf {
        self.root.join(LAYERS_DIR)
    }

    /// Where the record of the layer with this `diff_id` is, for objects named
    /// by `verity` digests (for messages).
    pub fn layer_record_path(&self, verity: HashAlg, diff_id: &str) -> Result<PathBuf> {
        let (dir, name) = record_place(verity, diff_id)?;
        Ok(self.root.join(dir).join(name))
    }

    /// Opens a layer's record if there is one that is a regular file of sane
    /// size. Its content is not checked here.
    pub fn open_layer_record(&self, verity: HashAlg, diff_id: &str) -> Result<Option<File>> {
        self.require_full()?;
        let (dir, name) = record_place(verity, diff_id)?;
        Ok(self
            .root_fd
            .open_file(format!("{dir}/{name}"), Expect::AtMost(MAX_RECORD_SIZE))
            .ok())
    }

    /// Makes a finished record (a temporary file on the store's filesystem,
    /// normally in an import's staging directory) the record of `diff_id`,
    /// replacing a previous one (which a replay found bad).
    pub fn commit_layer_record(
        &self,
        record: TempFile,
        verity: HashAlg,
        diff_id: &str,
    ) -> Result<()> {
        self.require_full()?;
        let (dir, name) = record_place(verity, diff_id)?;
        let dir = self.subdir_created(&dir)?;
        if self.fsync {
            record
                .file()
                .sync_all()
                .map_err(io_err("fsync", &record.display()))?;
        }
        record
            .persist(&dir, &name)
            .map_err(io_err("rename a layer record into", &dir.display(&name)))
    }

    /// Writes `data` as the hint `dir/name` below the root, atomically
    /// (temporary file, fsync, rename over what was there).
    fn replace_hint(&self, dir: &str, name: &str, data: &[u8]) -> Result<()> {
        let dir = self.subdir_created(dir)?;
        self.temp_holding(&dir, data)?
            .persist(&dir, name)
            .map_err(io_err("rename into", &dir.display(name)))
    }

    fn image_layers_place(image: &Digest) -> (String, String) {
        (format!("{LAYERS_DIR}/{IMAGE_LAYERS_DIR}"), image.to_hex())
    }

    /// Records the `diff_id`s an image was built from, bottom layer first.
    pub fn set_image_layers(&self, image: &Digest, diff_ids: &[String]) -> Result<()> {
        self.require_full()?;
        for d in diff_ids {
            split_content_digest(d).ok_or_else(|| bad_key(d))?;
        }
        let (dir, name) = Self::image_layers_place(image);
        self.replace_hint(&dir, &name, &lines_of(diff_ids.to_vec()))
    }

    /// The `diff_id`s recorded for an image, if any (and well formed).
    pub fn image_layers(&self, image: &Digest) -> Option<Vec<String>> {
        let (dir, name) = Self::image_layers_place(image);
        let text = read_hint(&self.root_fd, format!("{dir}/{name}"))?;
        let list: Vec<String> = text.lines().map(str::to_owned).collect();
        list.iter()
            .all(|d| split_content_digest(d).is_some())
            .then_some(list)
    }

    /// Records that `manifest` produced `image` (keeping what it produced with
    /// other fs-verity algorithms).
    pub fn add_manifest_image(&self, manifest: &str, image: &Digest) -> Result<()> {
        self.require_full()?;
        let (dir, name) = manifest_place(manifest)?;
        let mut images: Vec<String> = read_hint(&self.root_fd, format!("{dir}/{name}"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse::<Digest>().ok())
            .filter(|d| d.alg() != image.alg())
            .map(|d| d.to_string())
            .collect();
        images.push(image.to_string());
        images.sort();
        self.replace_hint(&dir, &name, &lines_of(images))
    }

    /// The image `manifest` produced with objects named by `alg`, as recorded.
    pub fn manifest_image(&self, manifest: &str, alg: HashAlg) -> Option<Digest> {
        let (dir, name) = manifest_place(manifest).ok()?;
        let text = read_hint(&self.root_fd, format!("{dir}/{name}"))?;
        text.lines()
            .filter_map(|l| l.parse::<Digest>().ok())
            .find(|d| d.alg() == alg)
    }

    /// Whether the stored image `digest` can stand for a new import of what
    /// produced it: its file is read whole and has that digest, and every
    /// object it names is stored with its digest's content. (Checking the
    /// objects' bytes, not only their presence, is what keeps "import it
    /// again" a repair when the image's objects were damaged: then the layers
    /// are applied again, and their content replaces the bad objects.)
    pub fn image_is_intact(&self, digest: &Digest) -> bool {
        self.stored_image_objects(digest)
            .is_ok_and(|objects| objects.iter().all(|d| self.object_is_intact(d)))
    }

    /// The part of `gc` that concerns layer records: removes records no live
    /// image lists, diff_id lists of removed images, manifest maps naming no
    /// live image, stale temporary files, and anything that is not a
    /// directory where one of their directories should be; returns the
    /// objects the kept records name (they stay, so the layers can be
    /// replayed).
    pub(super) fn gc_layers(
        &self,
        live_images: &HashSet<Digest>,
        dry_run: bool,
        report: &mut super::GcReport,
    ) -> Result<HashSet<Digest>> {
        let mut keep_objects = HashSet::new();
        let remove = |dir: &Dir, name: &OsStr, report: &mut super::GcReport| -> Result<()> {
            report.removed_layer_records += 1;
            if dry_run {
                return Ok(());
            }
            dir.remove_all(name)
                .map(drop)
                .map_err(io_err("remove", &dir.display(name)))
        };
        // A symlink, file or FIFO where a directory belongs counts as one record
        // removed (as the entry itself, never followed).
        let subdir = |parent: &Dir, name: &str, report: &mut super::GcReport| {
            let (dir, junk) = subdir_or_remove(parent, name, dry_run)?;
            report.removed_layer_records += usize::from(junk);
            Ok::<_, StoreError>(dir)
        };
        if let Some(layers) = subdir(&self.root_fd, LAYERS_DIR, report)? {
            // Which diff_ids live images were built from.
            let mut live_layers: HashSet<String> = HashSet::new();
            if let Some(lists) = subdir(&layers, IMAGE_LAYERS_DIR, report)? {
                let entries = lists.entries().map_err(io_err("list", lists.path()))?;
                for entry in entries {
                    let image = entry
                        .name
                        .to_str()
                        .and_then(super::images::digest_from_hex)
                        .filter(|d| live_images.contains(d));
                    match image.and_then(|d| self.image_layers(&d)) {
                        Some(list) if entry.kind == Kind::File => live_layers.extend(list),
                        _ => remove(&lists, &entry.name, report)?,
                    }
                }
            }
            for alg in [HashAlg::Sha256, HashAlg::Sha512] {
                let Some(dir) = subdir(&layers, alg.name(), report)? else {
                    continue;
                };
                for entry in dir.entries().map_err(io_err("list", dir.path()))? {
                    let diff_id = entry
                        .name
                        .to_str()
                        .and_then(|n| n.split_once('-'))
                        .map(|(a, h)| format!("{a}:{h}"))
                        .filter(|d| split_content_digest(d).is_some());
                    // Temporary files of a crashed import, junk, and records no
                    // live image uses go.
                    if !diff_id.is_some_and(|d| live_layers.contains(&d)) {
                        remove(&dir, &entry.name, report)?;
                        continue;
                    }
                    let objects = dir
                        .open_file(&entry.name, Expect::AtMost(MAX_RECORD_SIZE))
                        .and_then(crate::oci::layer_record::record_objects);
                    match objects {
                        Ok(objects) => keep_objects.extend(objects.into_iter().map(|(d, _)| d)),
                        // A record that cannot be read is useless: drop it.
                        Err(_) => remove(&dir, &entry.name, report)?,
                    }
                }
            }
        }
        if let Some(manifests) = subdir(&self.root_fd, MANIFESTS_DIR, report)? {
            for alg in CONTENT_ALGS {
                let Some(dir) = subdir(&manifests, alg, report)? else {
                    continue;
                };
                for entry in dir.entries().map_err(io_err("list", dir.path()))? {
                    let live = read_hint(&dir, &entry.name).is_some_and(|text| {
                        text.lines()
                            .filter_map(|l| l.parse::<Digest>().ok())
                            .any(|d| live_images.contains(&d))
                    });
                    if !live {
                        remove(&dir, &entry.name, report)?;
                    }
                }
            }
        }
        Ok(keep_objects)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::verity;

    /// Every entry under `root` with its content (files) or target (symlinks), sorted.
    fn listing(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_owned()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                let m = fs::symlink_metadata(&p).unwrap();
                let what = if m.is_dir() {
                    stack.push(p.clone());
                    Vec::new()
                } else if m.is_symlink() {
                    fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes()
                } else {
                    fs::read(&p).unwrap()
                };
                out.push((p, what));
            }
        }
        out.sort();
        out
    }

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
        let path = dir.path().join("manifests/sha256").join("1".repeat(64));
        fs::remove_file(&path).unwrap();
        symlink("/etc/passwd", &path).unwrap();
        assert_eq!(store.manifest_image(&m, HashAlg::Sha256), None);
        fs::remove_file(&path).unwrap();
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(store.manifest_image(&m, HashAlg::Sha256), None);
        // And an image that is not there is not intact.
        assert!(!store.image_is_intact(&img));

        // Nor is a hint read through a symlinked directory, even one holding a good hint.
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::write(elsewhere.join("1".repeat(64)), format!("{img}\n")).unwrap();
        fs::remove_dir_all(dir.path().join("manifests/sha256")).unwrap();
        symlink(&elsewhere, dir.path().join("manifests/sha256")).unwrap();
        assert_eq!(store.manifest_image(&m, HashAlg::Sha256), None);
        assert!(store.add_manifest_image(&m, &img).is_err());
    }

    /// Symlinks planted where the record, manifest and download directories belong are
    /// removed by gc as the links themselves: what they point at is left alone.
    #[test]
    fn gc_removes_planted_directories_as_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::create(dir.path().join("s"))
            .unwrap()
            .with_fsync(false);
        let outside = dir.path().join("outside");
        for sub in ["sha256", "images", "x/y"] {
            fs::create_dir_all(outside.join(sub)).unwrap();
        }
        let hex = "3".repeat(64);
        fs::write(outside.join("sha256").join(format!("sha256-{hex}")), b"r").unwrap();
        fs::write(outside.join("images").join(&hex), b"l").unwrap();
        fs::write(outside.join("x/y/z"), b"z").unwrap();
        let before = listing(&outside);
        let root = store.root().to_owned();
        symlink(&outside, root.join(LAYERS_DIR)).unwrap();
        fs::create_dir(root.join(MANIFESTS_DIR)).unwrap();
        symlink(&outside, root.join(MANIFESTS_DIR).join("sha256")).unwrap();
        fs::create_dir(root.join(super::super::DOWNLOADS_DIR)).unwrap();
        symlink(
            &outside,
            root.join(super::super::DOWNLOADS_DIR).join("sha256"),
        )
        .unwrap();
        let dry = store.gc(true).unwrap();
        assert_eq!((dry.removed_layer_records, dry.removed_downloads), (2, 1));
        assert!(
            fs::symlink_metadata(root.join(LAYERS_DIR)).is_ok(),
            "dry run"
        );
        let report = store.gc(false).unwrap();
        assert_eq!(
            (report.removed_layer_records, report.removed_downloads),
            (2, 1)
        );
        assert_eq!(listing(&outside), before);
        assert!(fs::symlink_metadata(root.join(LAYERS_DIR)).is_err());
        for gone in [MANIFESTS_DIR, super::super::DOWNLOADS_DIR] {
            assert_eq!(fs::read_dir(root.join(gone)).unwrap().count(), 0, "{gone}");
        }
        // And a download cannot be opened through such a link either.
        symlink(
            &outside,
            root.join(super::super::DOWNLOADS_DIR).join("sha512"),
        )
        .unwrap();
        let blob = format!("sha512:{}", "4".repeat(128));
        assert!(store.open_download(&blob).is_err());
        assert_eq!(listing(&outside), before);
    }
}

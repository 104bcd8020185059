//! Importing an image into a store: the whole pipeline, all or nothing. The
//! layer-by-layer part (records, dedup, commit order) is in [`super::apply`];
//! registries in `super::registry`.
//!
//! What "all or nothing" means here, exactly: while an import runs, new object
//! files and their Merkle-tree sidecars are written only to a private staging
//! directory under the store's `tmp/`. Only after every blob has passed its
//! digest, size and `diff_id` checks and the image has been built are they moved
//! into `objects/` and `verity/` (those the final tree names, and those the
//! layers' new records name, so the layers can be replayed for other images;
//! content of a layer without a record that a later layer whited out or
//! replaced never enters the store), then `layers/` records,
//! `images/<digest>`, and `refs/<tag>`. A failed import removes its
//! staging directory, so every file under the store root (`objects/`,
//! `verity/`, `images/`, `refs/`, `layers/`, `manifests/`, `tmp/`, `lock`) is
//! as it was, name, size and
//! content; the only trace a first-ever import can leave is the empty `tmp/`
//! directory and the `lock` file it created.
//! (A crash, unlike a failure, can leave a staging directory behind; `gc`
//! removes it. It can also leave objects that no image names, harmless and
//! also removed by `gc`.) The store's shared lock is held throughout, so a `gc`
//! cannot remove an object this import is about to reference.
//!
//! The one exception is `dir:`, whose files are copied straight into
//! `objects/` by [`crate::tree::tree_from_dir`] (there are no digests to check
//! a directory against, so there is nothing to fail after the copy).

use std::fs::File;
use std::path::PathBuf;

use super::OciError;
use super::apply::{Applier, LayerRef, reuse_image};
use super::blob::{Compression, decompress, verify_blob};
use super::layer::Limits;
use super::layout::{Blobs, LayerSpec, find_docker_image, find_oci_image};
use super::registry_options::RegistryOptions;
use super::source::Source;
use crate::erofs::writer::{WriteOptions, write_image};
use crate::store::ObjectStore;
use crate::tree::{FromDirOptions, tree_from_dir};
use crate::verity::{Digest, HashAlg};

/// How to import.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Name the image gets in `refs/`; `None` for no name.
    pub tag: Option<String>,
    /// fs-verity hash naming the objects and the image.
    pub hash: HashAlg,
    /// Decompression-bomb and entry-count bounds.
    pub limits: Limits,
    /// How to reach a registry, for `docker://` sources.
    pub registry: RegistryOptions,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            tag: None,
            hash: HashAlg::Sha256,
            limits: Limits::default(),
            registry: RegistryOptions::default(),
        }
    }
}

/// What an import did.
#[derive(Clone, Debug)]
pub struct Imported {
    /// fs-verity digest of the image file: its name in `images/`.
    pub digest: Digest,
    pub image_path: PathBuf,
    pub tag: Option<String>,
    pub layers: usize,
    /// Regular files in the layers applied (before whiteouts).
    pub files: u64,
    /// Content bytes of those files.
    pub bytes: u64,
    /// Objects this import added to the store (the rest were already there).
    pub new_objects: usize,
    /// Layers rebuilt from the store's records instead of their blobs.
    pub reused_layers: usize,
    /// Bytes downloaded from a registry.
    pub fetched_bytes: u64,
    /// The manifest was imported before and its image was still whole: nothing
    /// was applied, only the tag set.
    pub reused_image: bool,
}

impl Imported {
    /// Tags the stored image `digest` as `opts` asks and says so, every count
    /// zero (the caller fills in what it did). `written` says this import
    /// wrote the image file: if the tag cannot be set after all (someone made
    /// it impossible meanwhile), the image is taken back (its objects are
    /// unreferenced then, and gc's to remove).
    pub(crate) fn tagged(
        store: &ObjectStore,
        digest: Digest,
        written: bool,
        opts: &ImportOptions,
    ) -> Result<Imported, OciError> {
        if let Some(tag) = &opts.tag
            && let Err(e) = store.set_ref(tag, &digest)
        {
            if written {
                let _ = store.remove_image(&digest);
            }
            return Err(e.into());
        }
        Ok(Imported {
            image_path: store.image_path(&digest),
            digest,
            tag: opts.tag.clone(),
            layers: 0,
            files: 0,
            bytes: 0,
            new_objects: 0,
            reused_layers: 0,
            fetched_bytes: 0,
            reused_image: false,
        })
    }
}

/// Told what an import is doing, for a progress bar.
pub trait ImportProgress {
    /// A layer starts: `index` of `count`, its blob name and stored size.
    fn layer(&mut self, _index: usize, _count: usize, _name: &str, _size: u64) {}
    /// A regular file of `bytes` bytes was stored.
    fn file(&mut self, _bytes: u64) {}
    /// A layer is being rebuilt from the store's record of it.
    fn layer_reused(&mut self, _index: usize, _count: usize, _name: &str) {}
    /// The store's record of a layer could not be used (`why`), so its blob is
    /// read instead.
    fn record_rejected(&mut self, _name: &str, _why: &str) {}
    /// A pull will download `count` blobs of `bytes` bytes in all; returns
    /// what to tell the bytes downloaded so far (from download threads).
    fn downloads(&mut self, _count: usize, _bytes: u64) -> Option<DownloadMeter> {
        None
    }
}

/// Told the total bytes a pull has downloaded so far, from any thread.
pub type DownloadMeter = std::sync::Arc<dyn Fn(u64) + Send + Sync>;

/// Reports nothing.
pub struct NoProgress;
impl ImportProgress for NoProgress {}

/// Imports `source` into `store`; see the module documentation for what a
/// failure leaves behind (nothing).
pub fn import(
    store: &ObjectStore,
    source: &Source,
    opts: &ImportOptions,
    progress: &mut dyn ImportProgress,
) -> Result<Imported, OciError> {
    // A tag that cannot be created fails the import before anything is
    // fetched or stored.
    if let Some(tag) = &opts.tag {
        store.check_tag_free(tag)?;
    }
    let (blobs, spec) = match source {
        Source::Docker(reference) => return pull(store, reference, opts, progress),
        Source::Dir { path } => return import_dir(store, path, opts),
        Source::Tar { path } => return import_tar(store, path, opts, progress),
        Source::OciDir { path, tag } => {
            if !path.join("oci-layout").is_file() {
                return Err(OciError::Layout {
                    what: path.display().to_string(),
                    reason: "not an OCI image layout: it has no oci-layout file".into(),
                });
            }
            let blobs = Blobs::Dir(path.clone());
            let spec = find_oci_image(&blobs, tag.as_deref())?;
            (blobs, spec)
        }
        Source::OciArchive { path, tag } => {
            let blobs = Blobs::open_tar(path)?;
            let spec = find_oci_image(&blobs, tag.as_deref())?;
            (blobs, spec)
        }
        Source::DockerArchive { path, reference } => {
            let blobs = Blobs::open_tar(path)?;
            let spec = find_docker_image(&blobs, reference.as_deref())?;
            (blobs, spec)
        }
    };
    let _lock = store.lock_shared()?;
    let diff_ids: Vec<&_> = spec.layers.iter().map(|l| &l.diff_id).collect();
    if let Some(done) = reuse_image(store, spec.manifest.as_ref(), &diff_ids, opts)? {
        return Ok(done);
    }
    let mut applier = Applier::new(store, opts)?;
    let count = spec.layers.len();
    for (index, layer) in spec.layers.iter().enumerate() {
        apply_one(&blobs, layer, index, count, &mut applier, progress)?;
    }
    applier.finish(spec.manifest.as_ref())
}

#[cfg(feature = "registry")]
fn pull(
    store: &ObjectStore,
    reference: &super::reference::DockerReference,
    opts: &ImportOptions,
    progress: &mut dyn ImportProgress,
) -> Result<Imported, OciError> {
    super::registry::pull(store, reference, opts, progress)
}

#[cfg(not(feature = "registry"))]
fn pull(
    _store: &ObjectStore,
    reference: &super::reference::DockerReference,
    _opts: &ImportOptions,
    _progress: &mut dyn ImportProgress,
) -> Result<Imported, OciError> {
    Err(OciError::Layout {
        what: format!("docker://{reference}"),
        reason: "this build of imgmount-format has no registry support \
                 (its \"registry\" feature is off)"
            .into(),
    })
}

/// `dir:`: files are copied straight into `objects/` (there are no digests to
/// check a directory against, so there is nothing to fail after the copy).
fn import_dir(
    store: &ObjectStore,
    path: &std::path::Path,
    opts: &ImportOptions,
) -> Result<Imported, OciError> {
    let _lock = store.lock_shared()?;
    let dir_opts = FromDirOptions {
        digest_store: Some(store.clone()),
        hash: opts.hash,
        ..FromDirOptions::default()
    };
    let tree = tree_from_dir(path, &dir_opts).map_err(|source| OciError::Dir {
        path: path.to_owned(),
        source,
    })?;
    let image =
        write_image(&tree, &WriteOptions::default()).map_err(|e| OciError::Write(e.to_string()))?;
    let (digest, written) = store.add_image_reporting(&image, opts.hash)?;
    Imported::tagged(store, digest, written, opts)
}

/// `tar:`: one layer without a diff_id to check (nor a record to keep).
fn import_tar(
    store: &ObjectStore,
    path: &std::path::Path,
    opts: &ImportOptions,
    progress: &mut dyn ImportProgress,
) -> Result<Imported, OciError> {
    let _lock = store.lock_shared()?;
    let file = File::open(path).map_err(OciError::io("open", path))?;
    let name = path.display().to_string();
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut applier = Applier::new(store, opts)?;
    let layer = LayerRef {
        index: 0,
        count: 1,
        name: &name,
        size,
        diff_id: None,
    };
    applier.apply(decompress(file, &name, None)?, &layer, progress)?;
    applier.finish(None)
}

/// The compression a layer's media type announces, if it gives one.
pub(crate) fn layer_compression(
    media_type: Option<&str>,
    name: &str,
) -> Result<Option<Compression>, OciError> {
    match media_type {
        None | Some("") => Ok(None),
        Some(mt) => Compression::from_media_type(mt)
            .map(Some)
            .ok_or_else(|| OciError::Blob {
                blob: name.to_owned(),
                reason: format!("media type {mt:?} is not a layer this importer understands"),
            }),
    }
}

/// Checks and applies one layer of a layout or archive, from its record when
/// the store has a good one.
fn apply_one(
    blobs: &Blobs,
    layer: &LayerSpec,
    index: usize,
    count: usize,
    applier: &mut Applier<'_>,
    progress: &mut dyn ImportProgress,
) -> Result<(), OciError> {
    let name = match &layer.digest {
        Some((d, _)) => d.to_string(),
        None => layer.blob.clone(),
    };
    let mut layer_ref = LayerRef {
        index,
        count,
        name: &name,
        size: layer.digest.as_ref().map_or(0, |(_, size)| *size),
        diff_id: Some(&layer.diff_id),
    };
    // A layer the store can rebuild is not read from the source at all.
    if applier.replay(&layer_ref, progress)? {
        return Ok(());
    }
    let (reader, size) = blobs.open(&layer.blob)?;
    layer_ref.size = size;
    // The stored blob first, in a pass of its own: a tampered blob is refused
    // before its content is interpreted at all.
    if let Some((digest, want)) = &layer.digest {
        verify_blob(reader, &name, digest, Some(*want))?;
    } else {
        drop(reader);
    }
    let expected = layer_compression(layer.media_type.as_deref(), &name)?;
    let (reader, _) = blobs.open(&layer.blob)?;
    applier.apply(decompress(reader, &name, expected)?, &layer_ref, progress)
}

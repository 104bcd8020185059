//! Importing an image into a store: the whole pipeline, all or nothing.
//!
//! What "all or nothing" means here, exactly: while an import runs, new object
//! files and their Merkle-tree sidecars are written only to a private staging
//! directory under the store's `tmp/`. Only after every blob has passed its
//! digest, size and `diff_id` checks and the image has been built are they moved
//! into `objects/` and `verity/` (only those the final tree names: content a
//! later layer whited out or replaced never enters the store), then
//! `images/<digest>` is written, then `refs/<tag>`. A failed import removes its
//! staging directory, so every file under the store root (`objects/`,
//! `verity/`, `images/`, `refs/`, `tmp/`, `lock`) is as it was, name, size and
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

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;

use super::OciError;
use super::blob::{BlobAlg, Compression, Tally, decompress, verify_blob};
use super::layer::{Limits, ObjectSink, TreeBuilder};
use super::layout::{Blobs, ImageSpec, LayerSpec, find_docker_image, find_oci_image};
use super::source::Source;
use crate::erofs::writer::{WriteOptions, write_image};
use crate::store::{ObjectStore, Staging};
use crate::tree::{FromDirOptions, LeafContent, RegularFile, Tree, tree_from_dir};
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
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            tag: None,
            hash: HashAlg::Sha256,
            limits: Limits::default(),
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
    /// Regular files in all layers (before whiteouts).
    pub files: u64,
    /// Content bytes of those files.
    pub bytes: u64,
    /// Objects this import added to the store (the rest were already there).
    pub new_objects: usize,
}

/// Told what an import is doing, for a progress bar.
pub trait ImportProgress {
    /// A layer starts: `index` of `count`, its blob name and stored size.
    fn layer(&mut self, _index: usize, _count: usize, _name: &str, _size: u64) {}
    /// A regular file of `bytes` bytes was stored.
    fn file(&mut self, _bytes: u64) {}
}

/// Reports nothing.
pub struct NoProgress;
impl ImportProgress for NoProgress {}

/// Stores file content in the import's staging area.
struct StagingSink<'a, 's>(&'a mut Staging<'s>);

impl ObjectSink for StagingSink<'_, '_> {
    fn store(&mut self, data: &mut dyn Read) -> io::Result<(Digest, u64)> {
        self.0.insert_reader(data).map_err(io::Error::other)
    }
}

/// Imports `source` into `store`; see the module documentation for what a
/// failure leaves behind (nothing).
pub fn import(
    store: &ObjectStore,
    source: &Source,
    opts: &ImportOptions,
    progress: &mut dyn ImportProgress,
) -> Result<Imported, OciError> {
    let _lock = store.lock_shared()?;
    // A tag that cannot be created fails the import before anything is stored.
    if let Some(tag) = &opts.tag {
        store.check_tag_free(tag)?;
    }
    let mut staging = store.staging(opts.hash)?;
    let mut files = 0;
    let mut bytes = 0;
    let (tree, layers) = match source {
        Source::OciDir { .. } | Source::OciArchive { .. } | Source::DockerArchive { .. } => {
            let (blobs, spec) = match source {
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
                Source::Tar { .. } | Source::Dir { .. } => unreachable!("matched above"),
            };
            apply_layers(
                &blobs,
                &spec,
                opts,
                &mut staging,
                progress,
                &mut files,
                &mut bytes,
            )?
        }
        Source::Tar { path } => {
            let file = File::open(path).map_err(OciError::io("open", path))?;
            let name = path.display().to_string();
            let meta_len = file.metadata().map(|m| m.len()).unwrap_or(0);
            progress.layer(0, 1, &name, meta_len);
            let reader = decompress(file, &name, None)?;
            let mut tally = Tally::new(reader, BlobAlg::Sha256, opts.limits.max_bytes);
            let exceeded = tally.exceeded_flag();
            let mut builder = TreeBuilder::new(opts.limits);
            let mut sink = StagingSink(&mut staging);
            let stats = builder
                .apply_layer(&mut tally, &name, &mut sink, &mut |n| progress.file(n))
                .map_err(|e| too_large(e, exceeded.get(), &name, opts.limits.max_bytes))?;
            files += stats.files;
            bytes += stats.content_bytes;
            (builder.finish(), 1)
        }
        Source::Dir { path } => {
            let dir_opts = FromDirOptions {
                digest_store: Some(store.clone()),
                hash: opts.hash,
                ..FromDirOptions::default()
            };
            let tree = tree_from_dir(path, &dir_opts).map_err(|source| OciError::Dir {
                path: path.clone(),
                source,
            })?;
            (tree, 0)
        }
    };
    let image =
        write_image(&tree, &WriteOptions::default()).map_err(|e| OciError::Write(e.to_string()))?;
    // Everything checked: now, and only now, the store changes. Content that
    // later layers removed is left behind with the staging directory.
    let referenced = referenced_digests(&tree);
    if let Some(tag) = &opts.tag {
        store.check_tag_free(tag)?;
    }
    let new_objects = staging.commit_only(|d| referenced.contains(d))?;
    let (digest, written) = store.add_image_reporting(&image, opts.hash)?;
    if let Some(tag) = &opts.tag
        && let Err(e) = store.set_ref(tag, &digest)
    {
        // Someone made the tag impossible meanwhile: take back the image this import added
        // (its objects are unreferenced now, and gc's to remove).
        if written {
            let _ = store.remove_image(&digest);
        }
        return Err(e.into());
    }
    Ok(Imported {
        image_path: store.image_path(&digest),
        digest,
        tag: opts.tag.clone(),
        layers,
        files,
        bytes,
        new_objects,
    })
}

/// The digests of the external files a tree names.
fn referenced_digests(tree: &Tree) -> HashSet<Digest> {
    tree.leaves
        .iter()
        .filter_map(|leaf| match &leaf.content {
            LeafContent::Regular(RegularFile::External {
                digest: Some(d), ..
            }) => Some(*d),
            _ => None,
        })
        .collect()
}

/// Turns a read error caused by the size limit into the error that says so.
fn too_large(err: OciError, exceeded: bool, layer: &str, limit: u64) -> OciError {
    if exceeded {
        OciError::TooLarge {
            layer: layer.to_owned(),
            limit,
        }
    } else {
        err
    }
}

fn apply_layers(
    blobs: &Blobs,
    spec: &ImageSpec,
    opts: &ImportOptions,
    staging: &mut Staging<'_>,
    progress: &mut dyn ImportProgress,
    files: &mut u64,
    bytes: &mut u64,
) -> Result<(Tree, usize), OciError> {
    let mut builder = TreeBuilder::new(opts.limits);
    let mut budget = opts.limits.max_bytes;
    let count = spec.layers.len();
    for (index, layer) in spec.layers.iter().enumerate() {
        let used = apply_one(
            blobs,
            layer,
            index,
            count,
            budget,
            opts.limits.max_bytes,
            &mut builder,
            staging,
            progress,
            files,
            bytes,
        )?;
        budget = budget.saturating_sub(used);
    }
    Ok((builder.finish(), count))
}

/// Checks and applies one layer; returns its uncompressed size.
#[allow(clippy::too_many_arguments)]
fn apply_one(
    blobs: &Blobs,
    layer: &LayerSpec,
    index: usize,
    count: usize,
    budget: u64,
    limit: u64,
    builder: &mut TreeBuilder,
    staging: &mut Staging<'_>,
    progress: &mut dyn ImportProgress,
    files: &mut u64,
    bytes: &mut u64,
) -> Result<u64, OciError> {
    let name = match &layer.digest {
        Some((d, _)) => d.to_string(),
        None => layer.blob.clone(),
    };
    // The stored blob first, in a pass of its own: a tampered blob is refused
    // before its content is interpreted at all.
    let (reader, size) = blobs.open(&layer.blob)?;
    if let Some((digest, want)) = &layer.digest {
        verify_blob(reader, &name, digest, Some(*want))?;
    } else {
        drop(reader);
    }
    progress.layer(index, count, &name, size);
    let expected = match layer.media_type.as_deref() {
        None | Some("") => None,
        Some(mt) => Some(
            Compression::from_media_type(mt).ok_or_else(|| OciError::Blob {
                blob: name.clone(),
                reason: format!("media type {mt:?} is not a layer this importer understands"),
            })?,
        ),
    };
    let (reader, _) = blobs.open(&layer.blob)?;
    let reader = decompress(reader, &name, expected)?;
    let mut tally = Tally::new(reader, layer.diff_id.alg, budget);
    let exceeded = tally.exceeded_flag();
    let mut sink = StagingSink(staging);
    let stats = builder
        .apply_layer(&mut tally, &name, &mut sink, &mut |n| progress.file(n))
        .map_err(|e| too_large(e, exceeded.get(), &name, limit))?;
    *files += stats.files;
    *bytes += stats.content_bytes;
    let (diff_id, used) = tally.finish().map_err(|e| {
        too_large(
            OciError::Blob {
                blob: name.clone(),
                reason: format!("cannot read it: {e}"),
            },
            exceeded.get(),
            &name,
            limit,
        )
    })?;
    if diff_id != layer.diff_id {
        return Err(OciError::DiffId {
            layer: name,
            expected: layer.diff_id.to_string(),
            actual: diff_id.to_string(),
        });
    }
    Ok(used)
}

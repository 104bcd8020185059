//! Applying an image's layers into a store, for every source that has layers
//! (OCI layouts and archives, docker archives, registries), all or nothing.
//!
//! Each layer comes from one of two places, and this is where layer dedup
//! happens:
//!
//! * its *record* in the store (`layers/`, see [`super::layer_record`]), when
//!   an earlier import of any image had the same `diff_id`: the tar is
//!   rebuilt from the record and the objects, checked against the `diff_id`,
//!   and applied like the blob would be. Nothing is read from the source. A
//!   record that fails (tampered, objects missing or changed) is undone (the
//!   tree goes back to what it was) and the caller falls back to the blob;
//! * its blob, decompressed by the caller: while it is applied, its record is
//!   written to the staging area, to be committed with the image.
//!
//! [`Applier::finish`] then writes the image and commits, in this order:
//! records, objects (those the image names, and those the new records name,
//! so a later image can replay those layers even where this one whited files
//! out), the image, the list of `diff_id`s it was built from, the manifest
//! map, the tag. A failure at any point before leaves the store as it was.

use std::cell::RefCell;
use std::collections::HashSet;
use std::io::{self, Read};
use std::rc::Rc;

use super::OciError;
use super::blob::{BlobDigest, Tally};
use super::import::{ImportOptions, ImportProgress, Imported};
use super::layer::{LayerStats, ObjectSink, TreeBuilder};
use super::layer_record::{
    RecordReplay, RecordWriter, Recording, RecordingSink, record_is_plausible,
};
use crate::erofs::writer::{WriteOptions, write_image};
use crate::store::fsops::TempFile;
use crate::store::{ObjectStore, Staging};
use crate::tree::{LeafContent, RegularFile, Tree};
use crate::verity::Digest;

/// One layer being applied, as messages and progress name it.
#[derive(Clone, Copy, Debug)]
pub struct LayerRef<'a> {
    pub index: usize,
    pub count: usize,
    /// Its blob digest (or, in a docker archive, its member name).
    pub name: &'a str,
    /// Its stored (compressed) size.
    pub size: u64,
    /// The config's `diff_id`; `None` for a bare root filesystem tarball.
    pub diff_id: Option<&'a BlobDigest>,
}

/// Stores file content in the import's staging area.
pub(crate) struct StagingSink<'a, 's>(pub &'a mut Staging<'s>);

impl ObjectSink for StagingSink<'_, '_> {
    fn store(&mut self, data: &mut dyn Read) -> io::Result<(Digest, u64)> {
        self.0.insert_reader(data).map_err(io::Error::other)
    }
}

/// Turns a read error caused by the size limit into the error that says so.
pub(crate) fn too_large(err: OciError, exceeded: bool, layer: &str, limit: u64) -> OciError {
    if exceeded {
        OciError::TooLarge {
            layer: layer.to_owned(),
            limit,
        }
    } else {
        err
    }
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

/// Layers applied so far, and what committing them will add to the store.
pub struct Applier<'s> {
    store: &'s ObjectStore,
    opts: &'s ImportOptions,
    staging: Staging<'s>,
    builder: TreeBuilder,
    /// Uncompressed bytes the remaining layers may still expand to.
    budget: u64,
    files: u64,
    bytes: u64,
    layers: usize,
    reused_layers: usize,
    /// New records (in the staging area) and the diff_ids they are for.
    records: Vec<(TempFile, String)>,
    record_objects: HashSet<Digest>,
    /// The diff_id of every layer applied, bottom first; `None` once a layer
    /// had none.
    diff_ids: Option<Vec<String>>,
}

impl<'s> Applier<'s> {
    pub fn new(store: &'s ObjectStore, opts: &'s ImportOptions) -> Result<Self, OciError> {
        Ok(Applier {
            store,
            opts,
            staging: store.staging(opts.hash)?,
            builder: TreeBuilder::new(opts.limits),
            budget: opts.limits.max_bytes,
            files: 0,
            bytes: 0,
            layers: 0,
            reused_layers: 0,
            records: Vec::new(),
            record_objects: HashSet::new(),
            diff_ids: Some(Vec::new()),
        })
    }

    /// Whether the store has a record of this layer that looks replayable
    /// (parses, and every object it names is present): a cheap check, so a
    /// registry pull can decide what to download before it applies anything.
    pub fn has_record(&self, diff_id: &BlobDigest) -> bool {
        match self
            .store
            .open_layer_record(self.opts.hash, &diff_id.to_string())
        {
            Ok(Some(file)) => record_is_plausible(self.store, file, self.opts.hash, diff_id),
            _ => false,
        }
    }

    fn applied(&mut self, diff_id: Option<&BlobDigest>, stats: LayerStats, used: u64) {
        self.files += stats.files;
        self.bytes += stats.content_bytes;
        self.budget = self.budget.saturating_sub(used);
        self.layers += 1;
        match (&mut self.diff_ids, diff_id) {
            (Some(list), Some(d)) => list.push(d.to_string()),
            (list, _) => *list = None,
        }
    }

    /// Applies a layer from its record. `Ok(false)` when there is none or it
    /// proved unusable (then nothing changed, and the caller reads the blob).
    pub fn replay(
        &mut self,
        layer: &LayerRef<'_>,
        progress: &mut dyn ImportProgress,
    ) -> Result<bool, OciError> {
        let Some(diff_id) = layer.diff_id else {
            return Ok(false);
        };
        let Some(file) = self
            .store
            .open_layer_record(self.opts.hash, &diff_id.to_string())?
        else {
            return Ok(false);
        };
        let snapshot = self.builder.clone();
        progress.layer_reused(layer.index, layer.count, layer.name);
        match self.replay_record(file, layer, diff_id, progress) {
            Ok((stats, used)) => {
                self.applied(Some(diff_id), stats, used);
                self.reused_layers += 1;
                Ok(true)
            }
            Err(why) => {
                self.builder = snapshot;
                progress.record_rejected(layer.name, &why);
                Ok(false)
            }
        }
    }

    fn replay_record(
        &mut self,
        file: std::fs::File,
        layer: &LayerRef<'_>,
        diff_id: &BlobDigest,
        progress: &mut dyn ImportProgress,
    ) -> Result<(LayerStats, u64), String> {
        let mut replay = RecordReplay::open(self.store, file, self.opts.hash, diff_id)
            .map_err(|e| e.to_string())?;
        let mut sink = replay.sink();
        let mut tally = Tally::new(&mut replay, diff_id.alg, self.budget);
        let stats = self
            .builder
            .apply_layer(&mut tally, layer.name, &mut sink, &mut |n| progress.file(n))
            .map_err(|e| e.to_string())?;
        let (actual, used) = tally.finish().map_err(|e| e.to_string())?;
        if actual != *diff_id {
            return Err(format!(
                "the tar it rebuilds has digest {actual}, not the diff_id {diff_id}"
            ));
        }
        Ok((stats, used))
    }

    /// Applies a layer from its uncompressed tar, checking it against its
    /// `diff_id` and recording it.
    pub fn apply(
        &mut self,
        tar: impl Read,
        layer: &LayerRef<'_>,
        progress: &mut dyn ImportProgress,
    ) -> Result<(), OciError> {
        let name = layer.name;
        let limit = self.opts.limits.max_bytes;
        let alg = layer
            .diff_id
            .map_or(super::blob::BlobAlg::Sha256, |d| d.alg);
        progress.layer(layer.index, layer.count, name, layer.size);
        let mut tally = Tally::new(tar, alg, self.budget);
        let exceeded = tally.exceeded_flag();
        let record = layer.diff_id.and_then(|d| {
            let file = self.staging.dir().create_temp("record-", 0o644).ok()?;
            RecordWriter::create(file, self.opts.hash, d)
                .ok()
                .map(|w| Rc::new(RefCell::new(w)))
        });
        let read_err = |e: io::Error| OciError::Blob {
            blob: name.to_owned(),
            reason: format!("cannot read it: {e}"),
        };
        let stats = {
            let mut staged = StagingSink(&mut self.staging);
            let mut on_file = |n| progress.file(n);
            match &record {
                Some(rec) => {
                    let mut sink = RecordingSink {
                        inner: &mut staged,
                        rec: Rc::clone(rec),
                    };
                    let mut stream = Recording::new(&mut tally, Rc::clone(rec));
                    let stats =
                        self.builder
                            .apply_layer(&mut stream, name, &mut sink, &mut on_file);
                    stats.and_then(|s| stream.drain().map(|()| s).map_err(read_err))
                }
                None => self
                    .builder
                    .apply_layer(&mut tally, name, &mut staged, &mut on_file),
            }
        }
        .map_err(|e| too_large(e, exceeded.get(), name, limit))?;
        let (actual, used) = tally
            .finish()
            .map_err(|e| too_large(read_err(e), exceeded.get(), name, limit))?;
        if let Some(want) = layer.diff_id
            && actual != *want
        {
            return Err(OciError::DiffId {
                layer: name.to_owned(),
                expected: want.to_string(),
                actual: actual.to_string(),
            });
        }
        if let (Some(rec), Some(d)) = (record, layer.diff_id) {
            let rec = Rc::try_unwrap(rec).map(RefCell::into_inner);
            // A layer without a record is only a layer that is not deduplicated.
            if let Ok(Ok((file, objects))) = rec.map(RecordWriter::finish) {
                self.records.push((file, d.to_string()));
                self.record_objects.extend(objects);
            }
        }
        self.applied(layer.diff_id, stats, used);
        Ok(())
    }

    /// Writes the image and commits everything (see the module
    /// documentation); `manifest` is the manifest digest the image came from.
    pub fn finish(self, manifest: Option<&BlobDigest>) -> Result<Imported, OciError> {
        let Applier {
            store,
            opts,
            staging,
            builder,
            files,
            bytes,
            layers,
            reused_layers,
            records,
            record_objects,
            diff_ids,
            ..
        } = self;
        let tree = builder.finish();
        let image = write_image(&tree, &WriteOptions::default())
            .map_err(|e| OciError::Write(e.to_string()))?;
        let referenced = referenced_digests(&tree);
        drop(tree);
        // Checked again now that the store is about to change: a tag made
        // impossible meanwhile fails the import with nothing stored.
        if let Some(tag) = &opts.tag {
            store.check_tag_free(tag)?;
        }
        for (file, diff_id) in records {
            store.commit_layer_record(file, opts.hash, &diff_id)?;
        }
        let new_objects =
            staging.commit_only(|d| referenced.contains(d) || record_objects.contains(d))?;
        let (digest, written) = store.add_image_reporting(&image, opts.hash)?;
        if let Some(list) = &diff_ids
            && !list.is_empty()
        {
            store.set_image_layers(&digest, list)?;
            if let Some(m) = manifest {
                store.add_manifest_image(&m.to_string(), &digest)?;
            }
        }
        Ok(Imported {
            layers,
            files,
            bytes,
            new_objects,
            reused_layers,
            ..Imported::tagged(store, digest, written, opts)?
        })
    }
}

/// The image a manifest produced before, when the store still has it whole:
/// the manifest map names it, the `diff_id`s listed for it are `diff_ids`,
/// its file has its digest and its objects are present. Then the import is
/// only a tag.
pub fn reuse_image(
    store: &ObjectStore,
    manifest: Option<&BlobDigest>,
    diff_ids: &[&BlobDigest],
    opts: &ImportOptions,
) -> Result<Option<Imported>, OciError> {
    let Some(manifest) = manifest else {
        return Ok(None);
    };
    let Some(digest) = store.manifest_image(&manifest.to_string(), opts.hash) else {
        return Ok(None);
    };
    let want: Vec<String> = diff_ids.iter().map(|d| d.to_string()).collect();
    if store.image_layers(&digest).as_ref() != Some(&want) || !store.image_is_intact(&digest) {
        return Ok(None);
    }
    Ok(Some(Imported {
        layers: diff_ids.len(),
        reused_layers: diff_ids.len(),
        reused_image: true,
        ..Imported::tagged(store, digest, false, opts)?
    }))
}

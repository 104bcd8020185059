//! Pulling images from OCI registries (the distribution API v2), through the
//! `oci-client` crate: `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]` sources.
//!
//! A pull, in order:
//!
//! 1. connect and authenticate ([`session`]: anonymous, Basic, or a Bearer
//!    token got from the `WWW-Authenticate` challenge, with credentials from
//!    `--creds` or the containers/docker auth files, [`auth`]);
//! 2. fetch the manifest, through an image index to the entry for the
//!    platform asked for ([`manifest`]; every document checked against the
//!    digest that names it), then the config and its `diff_id`s;
//! 3. if this manifest was imported before and its image is whole, only tag
//!    it; otherwise, per layer, rebuild it from the store's record of its
//!    `diff_id` (see [`crate::oci::apply`]) or download its blob
//!    ([`download`]: a few at a time, into `downloads/`, resumable), and
//!    apply it as its bytes arrive;
//! 4. commit, all or nothing, as every import does. A failure leaves
//!    `objects/`, `images/`, `refs/`, `layers/` and `manifests/` as they were;
//!    blob downloads that arrived intact (whole or in part) stay in
//!    `downloads/` for the next pull to resume, and one that proved wrong is
//!    removed.

pub mod auth;
pub mod download;
pub mod manifest;
pub mod session;

use super::OciError;
use super::apply::{Applier, LayerRef, reuse_image};
use super::blob::{BlobDigest, Compression, decompress};
use super::import::{ImportOptions, ImportProgress, Imported, layer_compression};
use super::layout::{Config, Descriptor, parse_diff_ids};
use super::platform::{Platform, choose};
use super::reference::DockerReference;
use crate::store::ObjectStore;
use download::{Downloads, Meter};
use manifest::Fetched;
use session::Session;

/// Indexes nested deeper than this are refused (a loop is hostile).
const MAX_INDEX_DEPTH: usize = 4;

/// One layer of the pulled image.
struct PulledLayer {
    blob: BlobDigest,
    name: String,
    size: u64,
    compression: Option<Compression>,
    diff_id: BlobDigest,
}

fn registry_error(what: &str, reason: impl Into<String>) -> OciError {
    OciError::Registry {
        what: what.to_owned(),
        reason: reason.into(),
    }
}

fn descriptor_digest(desc: &Descriptor, what: &str) -> Result<BlobDigest, OciError> {
    BlobDigest::parse(&desc.digest).ok_or_else(|| {
        registry_error(
            what,
            format!("{:?} is not a sha256:HEX or sha512:HEX digest", desc.digest),
        )
    })
}

/// Follows the reference (through indexes) to an image manifest; returns its
/// digest, config and layers.
fn resolve_manifest(
    session: &Session,
    reference: &DockerReference,
    want: &Platform,
) -> Result<(BlobDigest, Descriptor, Vec<Descriptor>), OciError> {
    let mut target = reference.manifest_reference();
    let mut expected_size = None;
    for _ in 0..MAX_INDEX_DEPTH {
        let (bytes, digest) = session.manifest(&target)?;
        let what = &format!("manifest {digest}");
        if let Some(size) = expected_size
            && bytes.len() as u64 != size
        {
            return Err(OciError::BlobSize {
                blob: digest.to_string(),
                expected: size,
                actual: bytes.len().to_string(),
            });
        }
        match manifest::parse(&bytes, what)? {
            Fetched::Image { config, layers } => return Ok((digest, config, layers)),
            Fetched::Index(entries) => {
                let platforms: Vec<Option<Platform>> =
                    entries.iter().map(|e| e.platform.clone()).collect();
                let pick = choose(want, &platforms)
                    .ok()
                    .and_then(|i| entries.get(i))
                    .ok_or_else(|| {
                        let offered = choose(want, &platforms).err().unwrap_or_default();
                        registry_error(
                            &format!("image index {digest}"),
                            format!(
                                "it has no {want} image; {offered} \
                                 (pick one with --platform OS/ARCH[/VARIANT])"
                            ),
                        )
                    })?;
                if !manifest::is_index(pick) && !pick.media_type.is_empty() {
                    // An entry must be a manifest or an index, never a layer.
                    let known = manifest::ACCEPTED.contains(&pick.media_type.as_str());
                    if !known {
                        return Err(registry_error(
                            what,
                            format!(
                                "the index entry for {want} has media type {:?}",
                                pick.media_type
                            ),
                        ));
                    }
                }
                target = descriptor_digest(pick, what)?.to_string();
                expected_size = Some(pick.size);
            }
        }
    }
    Err(registry_error(
        &session.display,
        "image indexes nested too deeply",
    ))
}

/// The layers of an image manifest, with the config's diff_ids.
fn layers_of(
    session: &Session,
    config: &Descriptor,
    layers: &[Descriptor],
) -> Result<Vec<PulledLayer>, OciError> {
    let what = &format!("config {}", config.digest);
    let config_digest = descriptor_digest(config, what)?;
    let bytes = session.small_blob(&config_digest, config.size)?;
    let parsed: Config = serde_json::from_slice(&bytes).map_err(|e| OciError::Layout {
        what: config.digest.clone(),
        reason: format!("not a valid image config: {e}"),
    })?;
    let diff_ids = parse_diff_ids(&parsed, &config.digest)?;
    if diff_ids.len() != layers.len() {
        return Err(registry_error(
            what,
            format!(
                "the manifest lists {} layers but the config {} diff_ids",
                layers.len(),
                diff_ids.len()
            ),
        ));
    }
    layers
        .iter()
        .zip(diff_ids)
        .map(|(desc, diff_id)| {
            let blob = descriptor_digest(desc, what)?;
            let name = blob.to_string();
            let compression = layer_compression(Some(&desc.media_type), &name)?;
            Ok(PulledLayer {
                blob,
                name,
                size: desc.size,
                compression,
                diff_id,
            })
        })
        .collect()
}

/// Pulls `reference` into `store` (see the module documentation).
pub fn pull(
    store: &ObjectStore,
    reference: &DockerReference,
    opts: &ImportOptions,
    progress: &mut dyn ImportProgress,
) -> Result<Imported, OciError> {
    let session = Session::connect(reference, &opts.registry)?;
    let want = opts
        .registry
        .platform
        .clone()
        .unwrap_or_else(Platform::host);
    let (manifest, config, descs) = resolve_manifest(&session, reference, &want)?;
    let layers = layers_of(&session, &config, &descs)?;
    let _lock = store.lock_shared()?;
    let diff_ids: Vec<&BlobDigest> = layers.iter().map(|l| &l.diff_id).collect();
    if let Some(done) = reuse_image(store, Some(&manifest), &diff_ids, opts)? {
        return Ok(done);
    }
    let mut applier = Applier::new(store, opts)?;
    // What the store can rebuild is not downloaded; the rest starts now, in
    // layer order, a few blobs at a time.
    let replayable: Vec<bool> = layers
        .iter()
        .map(|l| applier.has_record(&l.diff_id))
        .collect();
    let fetch: Vec<&PulledLayer> = layers
        .iter()
        .zip(&replayable)
        .filter(|(_, r)| !**r)
        .map(|(l, _)| l)
        .collect();
    let meter = Meter::new(progress.downloads(fetch.len(), fetch.iter().map(|l| l.size).sum()));
    let mut downloads = Downloads::new(&session, store, opts.registry.jobs, meter);
    for l in &fetch {
        downloads.start(&l.blob, l.size);
    }
    let count = layers.len();
    for (index, (layer, replay)) in layers.iter().zip(replayable).enumerate() {
        let lref = LayerRef {
            index,
            count,
            name: &layer.name,
            size: layer.size,
            diff_id: Some(&layer.diff_id),
        };
        if replay && applier.replay(&lref, progress)? {
            continue;
        }
        // Not planned, or its record proved bad: fetch it now.
        let blob = downloads.start(&layer.blob, layer.size);
        let applied = decompress(Downloads::reader(&blob), &layer.name, layer.compression)
            .and_then(|tar| applier.apply(tar, &lref, progress));
        if let Err(e) = applied {
            // A blob that failed its checks explains any error applying it.
            return Err(blob.take_error().unwrap_or(e));
        }
    }
    let mut imported = applier.finish(Some(&manifest))?;
    imported.fetched_bytes = downloads.fetched();
    downloads.remove_all();
    Ok(imported)
}

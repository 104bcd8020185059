//! OCI images: finding them in layouts and archives, checking their blobs, and
//! applying their layers to a [`crate::tree::Tree`].
//!
//! * [`source`]: the SOURCE strings (`oci:DIR[:TAG]`, `oci-archive:`, …);
//!   [`reference`]: `docker://` registry references.
//! * [`layout`]: index, manifest and config parsing; blobs in a directory or
//!   read in place from a tar.
//! * [`blob`]: digest and size checks, decompression by media type and magic.
//! * [`layer`]: tar entries to tree nodes, whiteouts, hostile-entry rules; `pax`
//!   reads PAX extended headers by their records' lengths for it.
//! * [`import`]: all of it into an [`crate::store::ObjectStore`], atomically;
//!   [`apply`]: the layer-by-layer part, with layer dedup by `diff_id`
//!   through [`layer_record`]s.
//! * `registry` (feature `registry`): `docker://` pulls;
//!   [`registry_options`] and [`platform`] say how.

pub mod apply;
pub mod blob;
pub mod import;
pub mod layer;
pub mod layer_record;
pub mod layout;
mod pax;
pub mod platform;
pub mod reference;
#[cfg(feature = "registry")]
pub mod registry;
pub mod registry_options;
pub mod source;
mod sparse;

use std::io;
use std::path::PathBuf;

pub use import::{ImportOptions, ImportProgress, Imported, import};
pub use layer::{Limits, ObjectSink, TreeBuilder};
pub use platform::Platform;
pub use reference::DockerReference;
pub use registry_options::{Credentials, RegistryOptions};
pub use source::{Source, SourceError};

use crate::store::StoreError;

/// Why an import failed. Every variant names what it concerns: the blob, the
/// layer and entry, or the path.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {reason}")]
    Layout { what: String, reason: String },
    /// A registry refused, failed or lied; `what` names the image or blob.
    #[error("{what}: {reason}")]
    Registry { what: String, reason: String },
    #[error("blob {blob}: its content has digest {actual}, its descriptor says {expected}")]
    BlobDigest {
        blob: String,
        expected: String,
        actual: String,
    },
    #[error("blob {blob}: it has {actual} bytes, its descriptor says {expected}")]
    BlobSize {
        blob: String,
        expected: u64,
        actual: String,
    },
    #[error(
        "layer {layer}: its uncompressed content has digest {actual}, the config's diff_id says {expected}"
    )]
    DiffId {
        layer: String,
        expected: String,
        actual: String,
    },
    #[error("blob {blob}: {reason}")]
    Blob { blob: String, reason: String },
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    Entry {
        layer: String,
        entry: String,
        reason: String,
    },
    #[error(
        "layer {layer}: the image expands to more than {limit} bytes uncompressed \
         (a decompression bomb?); raise the limit if the image is genuine"
    )]
    TooLarge { layer: String, limit: u64 },
    #[error("the image has more than {limit} tar entries; raise the limit if the image is genuine")]
    TooManyEntries { limit: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading {}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: crate::tree::FromDirError,
    },
    #[error("building the image: {0}")]
    Write(String),
}

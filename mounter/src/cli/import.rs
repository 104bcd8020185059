//! `imgmount import`: an OCI image (or a root filesystem) into the store.

use std::io::IsTerminal;

use anyhow::{Context, Result, bail};
use clap::Args;
use imgmount_format::oci::{self, ImportOptions, ImportProgress, Imported, Limits, Source};
use imgmount_format::store::ObjectStore;
use imgmount_format::verity::HashAlg;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::UsageError;
use super::store_path::{StoreArg, parse_size};

/// Import an image into the store, checking every blob, and print its digest.
///
/// SOURCE is one of:
///   oci:DIR[:TAG]               an OCI image layout directory
///   oci-archive:FILE[:TAG]      the same, as a tar file
///   docker-archive:FILE[:REF]   `docker save` output (REF: a RepoTag or @N)
///   dir:PATH                    a directory holding a root filesystem
///   tar:FILE                    a root filesystem tarball (gzip, zstd or plain)
///
/// Every blob is checked against its descriptor's digest and size, every layer
/// against the config's diff_id; on any mismatch nothing in the store changes.
/// Identical files are stored once across all images. The image is tagged with
/// --tag, else with the TAG of the SOURCE, if any.
///
/// Examples:
///   imgmount import oci:./layout:latest
///   imgmount import --tag web docker-archive:web.tar
///
/// Exit status: 0 imported, 1 failed (bad blob, hostile layer, I/O), 2 bad usage.
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ImportArgs {
    /// What to import (see above).
    pub source: String,
    /// Name to give the image in the store.
    #[arg(long, value_name = "NAME")]
    pub tag: Option<String>,
    #[command(flatten)]
    pub store: StoreArg,
    /// Print a JSON object (digest, image path, counts) instead of the digest.
    #[arg(long)]
    pub json: bool,
    /// fs-verity hash naming objects and the image.
    #[arg(long, value_name = "ALG", default_value = "sha256")]
    pub hash: HashAlg,
    /// Refuse images that expand to more than this many bytes uncompressed
    /// (decompression bombs). Units K, M, G, T.
    #[arg(long, value_name = "SIZE", default_value = "64G", value_parser = parse_size)]
    pub max_size: u64,
    /// Refuse images with more tar entries than this.
    #[arg(long, value_name = "N", default_value_t = 4 << 20)]
    pub max_entries: u64,
    /// Do not flush to disk before naming objects (faster; for throwaway stores).
    #[arg(long)]
    pub no_sync: bool,
    /// Turn on kernel fs-verity for every object of the image (see
    /// `imgmount enable-verity`); fails if the store's filesystem cannot.
    #[arg(long)]
    pub enable_verity: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    digest: String,
    image: String,
    tag: Option<&'a str>,
    layers: usize,
    files: u64,
    bytes: u64,
    new_objects: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    verity_enabled: Option<usize>,
}

pub fn run(args: ImportArgs) -> Result<()> {
    let source: Source = args
        .source
        .parse()
        .map_err(|e| UsageError(format!("{e}")))?;
    let tag = args.tag.clone().or_else(|| source.tag().map(str::to_owned));
    if let Some(t) = &tag {
        imgmount_format::store::validate_tag(t).map_err(UsageError)?;
    }
    let store = args.store.create()?.with_fsync(!args.no_sync);
    let opts = ImportOptions {
        tag,
        hash: args.hash,
        limits: Limits {
            max_bytes: args.max_size,
            max_entries: args.max_entries,
        },
    };
    let mut progress = Bars::new(std::io::stdout().is_terminal() && !args.json);
    let imported = oci::import(&store, &source, &opts, &mut progress)
        .with_context(|| format!("importing {source}"));
    progress.finish();
    let imported = imported?;
    let verity = if args.enable_verity {
        let objects: Vec<_> = store
            .image_objects(&imported.image_path)?
            .into_iter()
            .map(|d| (d, store.object_path(&d)))
            .collect();
        let show = std::io::stderr().is_terminal() && !args.json;
        let report = super::enable_verity::enable_objects(&objects, show)
            .context("enabling fs-verity on the imported objects")?;
        for p in &report.problems {
            eprintln!("imgmount: {}: {}", p.path, p.reason);
        }
        if !report.problems.is_empty() {
            bail!(
                "imported {}, but {} of its objects have no fs-verity",
                imported.digest,
                report.problems.len()
            );
        }
        Some(report.enabled + report.already)
    } else {
        None
    };
    if args.json {
        let report = Report {
            digest: imported.digest.to_string(),
            image: imported.image_path.display().to_string(),
            tag: imported.tag.as_deref(),
            layers: imported.layers,
            files: imported.files,
            bytes: imported.bytes,
            new_objects: imported.new_objects,
            verity_enabled: verity,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", imported.digest);
    }
    Ok(())
}

/// Imports with default options and no output: for commands that accept a
/// SOURCE where an image is expected.
pub fn import_quietly(store: &ObjectStore, source: &Source) -> Result<Imported> {
    let opts = ImportOptions {
        tag: source.tag().map(str::to_owned),
        ..ImportOptions::default()
    };
    oci::import(store, source, &opts, &mut oci::import::NoProgress)
        .with_context(|| format!("importing {source}"))
}

/// Progress bars on a terminal: one for layers, one for bytes and files.
struct Bars {
    bars: Option<(MultiProgress, ProgressBar, ProgressBar)>,
    files: u64,
}

impl Bars {
    fn new(show: bool) -> Self {
        if !show {
            return Bars {
                bars: None,
                files: 0,
            };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let layers = multi.add(ProgressBar::new(0));
        layers.set_style(
            ProgressStyle::with_template("layer {pos}/{len} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let bytes = multi.add(ProgressBar::new(0));
        bytes.set_style(
            ProgressStyle::with_template("{bytes:>10} stored {msg} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Bars {
            bars: Some((multi, layers, bytes)),
            files: 0,
        }
    }

    fn finish(&self) {
        if let Some((_, layers, bytes)) = &self.bars {
            layers.finish_and_clear();
            bytes.finish_and_clear();
        }
    }
}

impl ImportProgress for Bars {
    fn layer(&mut self, index: usize, count: usize, name: &str, size: u64) {
        if let Some((_, layers, _)) = &self.bars {
            layers.set_length(count as u64);
            layers.set_position(index as u64 + 1);
            let short: String = name.chars().take(19).collect();
            layers.set_message(format!("{short}… ({})", indicatif::HumanBytes(size)));
        }
    }

    fn file(&mut self, n: u64) {
        self.files += 1;
        if let Some((_, _, bytes)) = &self.bars {
            bytes.inc(n);
            if self.files.is_multiple_of(64) {
                bytes.set_message(format!("in {} files", self.files));
            }
        }
    }
}

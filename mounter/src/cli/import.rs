//! `imgmount import`: an OCI image (or a root filesystem) into the store.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use imgmount_format::oci::import::DownloadMeter;
use imgmount_format::oci::{
    self, ImportOptions, ImportProgress, Imported, Limits, ReuseCheck, Source,
};
use imgmount_format::store::ObjectStore;
use imgmount_format::verity::{Digest, HashAlg};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::UsageError;
use super::registry_args::RegistryArgs;
use super::store_path::{StoreArg, parse_size};

/// Import an image into the store, checking every blob, and print its digest.
///
/// SOURCE is one of:
///   oci:DIR[:TAG]               an OCI image layout directory
///   oci-archive:FILE[:TAG]      the same, as a tar file
///   docker-archive:FILE[:REF]   `docker save` output (REF: a RepoTag or @N)
///   docker://HOST[:PORT]/REPO[:TAG|@sha256:HEX]
///                               an image in a registry (see `imgmount pull`)
///   dir:PATH                    a directory holding a root filesystem
///   tar:FILE                    a root filesystem tarball (gzip, zstd or plain)
///
/// Every blob is checked against its descriptor's digest and size, every layer
/// against the config's diff_id; on any mismatch nothing in the store changes.
/// Identical files are stored once across all images, and a layer the store
/// already has (same diff_id) is rebuilt from the store instead of read again.
/// The image is tagged with --tag, else with the TAG of the SOURCE, if any.
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
    #[command(flatten)]
    pub flags: ImportFlags,
}

/// The options of `import` and `pull`.
#[derive(Args, Debug)]
pub struct ImportFlags {
    /// Name to give the image in the store (moving the tag if it named another image).
    #[arg(long, value_name = "TAG")]
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
    /// A signature file of the image (made by `imgmount sign`), stored with it: what a
    /// boot needs to trust it as a deployment (see `imgmount deploy`).
    #[arg(long, value_name = "FILE")]
    pub signature: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Serialize)]
struct Report<'a> {
    digest: String,
    image: String,
    tag: Option<&'a str>,
    /// The image the tag named before, when the import moved it.
    moved_from: Option<String>,
    layers: usize,
    files: u64,
    bytes: u64,
    new_objects: usize,
    reused_layers: usize,
    fetched_bytes: u64,
    reused_image: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    verity_enabled: Option<usize>,
}

pub fn run(args: ImportArgs) -> Result<()> {
    let source: Source = args
        .source
        .parse()
        .map_err(|e| UsageError(format!("{e}")))?;
    run_source(&source, &args.flags)
}

/// Imports `source` as the flags say and prints the result.
pub fn run_source(source: &Source, flags: &ImportFlags) -> Result<()> {
    let tag = flags.tag.clone().or_else(|| source.tag());
    if let Some(t) = &tag {
        imgmount_format::store::validate_tag(t).map_err(UsageError)?;
    }
    let store = flags.store.create()?.with_fsync(!flags.no_sync);
    let before = tag_target(&store, tag.as_deref())?;
    let opts = ImportOptions {
        tag,
        hash: flags.hash,
        limits: Limits {
            max_bytes: flags.max_size,
            max_entries: flags.max_entries,
        },
        registry: flags.registry.options(),
        // An explicit import promises the content is in the store: "import it again"
        // repairs damaged objects.
        reuse: ReuseCheck::Objects,
    };
    let mut progress = Bars::new(std::io::stdout().is_terminal() && !flags.json);
    let imported = oci::import(&store, source, &opts, &mut progress)
        .with_context(|| format!("importing {source}"));
    progress.finish();
    let imported = imported?;
    let moved_from = before.filter(|d| *d != imported.digest);
    if let (Some(old), Some(t), false) = (&moved_from, &imported.tag, flags.json) {
        eprintln!("imgmount: tag {t} moved from {old} to {}", imported.digest);
    }
    if let Some(file) = &flags.signature {
        crate::deploy::store::store_signature_file(store.root_fd(), file, &imported.digest)
            .with_context(|| format!("imported {}, but its signature", imported.digest))?;
    }
    let verity = if flags.enable_verity {
        let mut objects: Vec<Digest> = store
            .stored_image_objects(&imported.digest)?
            .into_iter()
            .collect();
        objects.sort();
        let show = std::io::stderr().is_terminal() && !flags.json;
        let report = super::enable_verity::enable_objects(&store, &objects, show)
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
    if flags.json {
        let report = Report {
            digest: imported.digest.to_string(),
            image: imported.image_path.display().to_string(),
            tag: imported.tag.as_deref(),
            moved_from: moved_from.map(|d| d.to_string()),
            layers: imported.layers,
            files: imported.files,
            bytes: imported.bytes,
            new_objects: imported.new_objects,
            reused_layers: imported.reused_layers,
            fetched_bytes: imported.fetched_bytes,
            reused_image: imported.reused_image,
            verity_enabled: verity,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", imported.digest);
    }
    Ok(())
}

/// Imports with default options and no output: for commands that accept a
/// SOURCE where an image is expected. Those commands verify every object they read, so a
/// manifest imported before reuses its image once the image file checks out, without a
/// pass over its objects ([`ReuseCheck::Image`]). Also returns the image the source's tag
/// named before, if the import moved it.
pub fn import_quietly(
    store: &ObjectStore,
    source: &Source,
    registry: &RegistryArgs,
) -> Result<(Imported, Option<Digest>)> {
    let opts = ImportOptions {
        tag: source.tag(),
        registry: registry.options(),
        reuse: ReuseCheck::Image,
        ..ImportOptions::default()
    };
    let before = tag_target(store, opts.tag.as_deref())?;
    let imported = oci::import(store, source, &opts, &mut Quiet)
        .with_context(|| format!("importing {source}"))?;
    let moved_from = before.filter(|d| *d != imported.digest);
    Ok((imported, moved_from))
}

/// The image a tag names now, if any.
fn tag_target(store: &ObjectStore, tag: Option<&str>) -> Result<Option<Digest>> {
    match tag {
        Some(t) => Ok(store.read_ref(t)?),
        None => Ok(None),
    }
}

/// No progress, but a record the store could not use is worth a word.
struct Quiet;

impl ImportProgress for Quiet {
    fn record_rejected(&mut self, name: &str, why: &str) {
        warn_rejected(name, why);
    }
}

fn warn_rejected(name: &str, why: &str) {
    eprintln!(
        "imgmount: warning: the store's record of layer {name} is unusable ({why}); reading its blob instead"
    );
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Progress bars on a terminal: layers, bytes stored and, for a pull, bytes
/// downloaded.
struct Bars {
    bars: Option<(MultiProgress, ProgressBar, ProgressBar)>,
    download: Option<ProgressBar>,
    files: u64,
}

impl Bars {
    fn new(show: bool) -> Self {
        if !show {
            return Bars {
                bars: None,
                download: None,
                files: 0,
            };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let layers = multi.add(ProgressBar::new(0));
        layers.set_style(style("layer {pos}/{len} {wide_msg}"));
        let bytes = multi.add(ProgressBar::new(0));
        bytes.set_style(style("{bytes:>10} stored {msg} {bytes_per_sec}"));
        Bars {
            bars: Some((multi, layers, bytes)),
            download: None,
            files: 0,
        }
    }

    fn finish(&self) {
        if let Some((_, layers, bytes)) = &self.bars {
            layers.finish_and_clear();
            bytes.finish_and_clear();
        }
        if let Some(d) = &self.download {
            d.finish_and_clear();
        }
    }

    fn set_layer(&self, index: usize, count: usize, message: String) {
        if let Some((_, layers, _)) = &self.bars {
            layers.set_length(count as u64);
            layers.set_position(index as u64 + 1);
            layers.set_message(message);
        }
    }
}

fn short(name: &str) -> String {
    name.chars().take(19).collect()
}

impl ImportProgress for Bars {
    fn layer(&mut self, index: usize, count: usize, name: &str, size: u64) {
        let message = format!("{}… ({})", short(name), indicatif::HumanBytes(size));
        self.set_layer(index, count, message);
    }

    fn layer_reused(&mut self, index: usize, count: usize, name: &str) {
        self.set_layer(index, count, format!("{}… (in the store)", short(name)));
    }

    fn record_rejected(&mut self, name: &str, why: &str) {
        match &self.bars {
            Some((multi, _, _)) => {
                let _ = multi.println(format!(
                    "warning: the store's record of layer {name} is unusable ({why}); \
                     reading its blob instead"
                ));
            }
            None => warn_rejected(name, why),
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

    fn downloads(&mut self, count: usize, total: u64) -> Option<DownloadMeter> {
        let (multi, _, _) = self.bars.as_ref()?;
        if count == 0 {
            return None;
        }
        let bar = multi.add(ProgressBar::new(total));
        bar.set_style(style(
            "{bytes:>10}/{total_bytes} downloaded, {msg} {bytes_per_sec} {wide_bar}",
        ));
        bar.set_message(format!("{count} blobs"));
        self.download = Some(bar.clone());
        Some(Arc::new(move |n| bar.set_position(n)))
    }
}

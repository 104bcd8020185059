//! `imgmount gc`: remove what no image references.

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::store_path::StoreArg;

/// Remove from the store what no image references.
///
/// Objects no image references go, with their Merkle-tree sidecars, and so do
/// leftovers of interrupted imports, the store's records of layers no image
/// uses any more, and blobs interrupted pulls downloaded (a pull resumes
/// from those only until the next gc).
///
/// Safe beside a running import: gc waits for imports to finish (and new ones
/// wait for gc) through a lock on the store. An image that cannot be read stops
/// gc before it removes anything.
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct GcArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Only report what would be removed.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Print a JSON object with the counts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    dry_run: bool,
    images: usize,
    kept_objects: usize,
    removed_objects: usize,
    removed_bytes: u64,
    removed_sidecars: usize,
    removed_temp: usize,
    removed_refs: Vec<String>,
    removed_layer_records: usize,
    removed_downloads: usize,
    removed_download_bytes: u64,
}

pub fn run(args: GcArgs) -> Result<()> {
    let store = args.store.open()?;
    let r = store.gc(args.dry_run)?;
    if args.json {
        let report = Report {
            dry_run: args.dry_run,
            images: r.images,
            kept_objects: r.kept_objects,
            removed_objects: r.removed_objects,
            removed_bytes: r.removed_bytes,
            removed_sidecars: r.removed_sidecars,
            removed_temp: r.removed_temp,
            removed_refs: r.removed_refs,
            removed_layer_records: r.removed_layer_records,
            removed_downloads: r.removed_downloads,
            removed_download_bytes: r.removed_download_bytes,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let verb = if args.dry_run {
            "would remove"
        } else {
            "removed"
        };
        println!(
            "{verb} {} objects ({}), {} sidecars, {} temporary files; kept {} objects of {} images",
            r.removed_objects,
            indicatif::HumanBytes(r.removed_bytes),
            r.removed_sidecars,
            r.removed_temp,
            r.kept_objects,
            r.images
        );
        if r.removed_layer_records + r.removed_downloads > 0 {
            println!(
                "{verb} {} layer records no image uses, {} downloads of interrupted pulls ({})",
                r.removed_layer_records,
                r.removed_downloads,
                indicatif::HumanBytes(r.removed_download_bytes)
            );
        }
        for tag in &r.removed_refs {
            println!("{verb} tag {tag} (its image is gone)");
        }
    }
    Ok(())
}

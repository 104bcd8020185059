//! `imgmount images`: list the images in the store.

use std::time::UNIX_EPOCH;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::store_path::StoreArg;

/// List the images in the store: digest, size of the image file, tags.
///
/// With --json the output is a JSON array of objects with `digest`
/// (`sha256:HEX`), `path`, `size`, `created` (seconds since the epoch) and
/// `tags`, for scripts. With --quiet only digests are printed, one a line.
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ImagesArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
    /// Print only the digests.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Serialize)]
struct Row {
    digest: String,
    path: String,
    size: u64,
    created: Option<u64>,
    tags: Vec<String>,
}

pub fn run(args: ImagesArgs) -> Result<()> {
    let store = args.store.open()?;
    let images = store.list_images()?;
    if args.json {
        let rows: Vec<Row> = images
            .iter()
            .map(|i| Row {
                digest: i.digest.to_string(),
                path: i.path.display().to_string(),
                size: i.size,
                created: i
                    .created
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs()),
                tags: i.tags.clone(),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    for i in &images {
        if args.quiet {
            println!("{}", i.digest);
        } else {
            let tags = if i.tags.is_empty() {
                "-".to_string()
            } else {
                i.tags.join(",")
            };
            println!(
                "{}  {:>10}  {}",
                i.digest,
                indicatif::HumanBytes(i.size),
                tags
            );
        }
    }
    Ok(())
}

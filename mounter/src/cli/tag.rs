//! `imgmount tag`: give an image a name.

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::UsageError;
use super::store_path::StoreArg;

/// Give an image in the store a name.
///
/// TAG will point at IMAGE (a tag, a digest or a unique digest prefix). A TAG
/// that named another image is moved, and the output says from where.
///
/// Example:
///   imgmount tag sha256:3f2a web:stable
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct TagArgs {
    /// The image: a tag, `sha256:HEX`, or a unique prefix of its digest.
    pub image: String,
    /// The new name (letters, digits, . : _ @ + - and / between parts).
    pub tag: String,
    #[command(flatten)]
    pub store: StoreArg,
    /// Print a JSON object (tag, digest, and the digest it named before or null).
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    tag: &'a str,
    digest: String,
    previous: Option<String>,
}

pub fn run(args: TagArgs) -> Result<()> {
    imgmount_format::store::validate_tag(&args.tag).map_err(UsageError)?;
    let store = args.store.open()?;
    let digest = store.resolve_digest(&args.image)?;
    let previous = store.read_ref(&args.tag)?;
    store.set_ref(&args.tag, &digest)?;
    if args.json {
        let report = Report {
            tag: &args.tag,
            digest: digest.to_string(),
            previous: previous.map(|d| d.to_string()),
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    match previous {
        Some(old) if old != digest => println!("{} -> {digest} (moved from {old})", args.tag),
        Some(_) => println!("{} -> {digest} (unchanged)", args.tag),
        None => println!("{} -> {digest}", args.tag),
    }
    Ok(())
}

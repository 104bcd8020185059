//! `imgmount tag`: give an image a name.

use anyhow::Result;
use clap::Args;

use super::UsageError;
use super::store_path::StoreArg;

/// Give an image in the store a name.
///
/// TAG will point at IMAGE (a tag, a digest or a unique digest prefix),
/// replacing what TAG named before.
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
}

pub fn run(args: TagArgs) -> Result<()> {
    imgmount_format::store::validate_tag(&args.tag).map_err(UsageError)?;
    let store = args.store.open()?;
    let digest = store.resolve_digest(&args.image)?;
    store.set_ref(&args.tag, &digest)?;
    println!("{} -> {digest}", args.tag);
    Ok(())
}

//! `imgmount rm`: remove tags and images.

use anyhow::Result;
use clap::Args;

use super::store_path::StoreArg;

/// Remove images from the store.
///
/// A TAG argument removes that tag, and the image too when no other tag names
/// it. A digest (`sha256:HEX` or a unique prefix) removes the image and every
/// tag naming it. File contents stay until `imgmount gc`.
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct RmArgs {
    /// Tags or digests.
    #[arg(required = true)]
    pub images: Vec<String>,
    #[command(flatten)]
    pub store: StoreArg,
}

pub fn run(args: RmArgs) -> Result<()> {
    let store = args.store.open()?;
    for spec in &args.images {
        if let Some(digest) = store.read_ref(spec)? {
            store.remove_ref(spec)?;
            let still_named = store.list_refs()?.iter().any(|(_, d)| *d == digest);
            if still_named {
                println!("untagged {spec}");
            } else {
                store.remove_image(&digest)?;
                println!("untagged {spec}, removed {digest}");
            }
        } else {
            let digest = store.resolve_digest(spec)?;
            let tags = store.remove_image(&digest)?;
            if tags.is_empty() {
                println!("removed {digest}");
            } else {
                println!("removed {digest} (tags {})", tags.join(", "));
            }
        }
    }
    Ok(())
}

//! `imgmount rm`: remove tags and images.

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::store_path::StoreArg;
use crate::deploy::store::deployed_as;

/// Remove images from the store.
///
/// A TAG argument removes that tag, and the image too when no other tag names
/// it. A digest (`sha256:HEX` or a unique prefix) removes the image and every
/// tag naming it. File contents stay until `imgmount gc`.
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct RmArgs {
    /// Tags or digests.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
    #[command(flatten)]
    pub store: StoreArg,
    /// Print a JSON array with one object per IMAGE: the tags removed and the image
    /// removed (null when it is still tagged).
    #[arg(long)]
    pub json: bool,
}

/// What one IMAGE argument removed.
#[derive(Serialize)]
struct Removed {
    name: String,
    untagged: Vec<String>,
    removed: Option<String>,
}

pub fn run(args: RmArgs) -> Result<()> {
    let store = args.store.open()?;
    let mut report = Vec::new();
    for spec in &args.images {
        let done = if let Some(digest) = store.read_ref(spec)? {
            store.remove_ref(spec)?;
            let still_named = store.list_refs()?.iter().any(|(_, d)| *d == digest);
            let deployed = deployed_as(store.root_fd(), &digest)?;
            if let Some(id) = deployed.filter(|_| !still_named) {
                eprintln!(
                    "imgmount: {digest} stays in the store: it is deployment {id} (see imgmount status)"
                );
            }
            let remove = !still_named && deployed.is_none();
            if remove {
                store.remove_image(&digest)?;
            }
            Removed {
                name: spec.clone(),
                untagged: vec![spec.clone()],
                removed: remove.then(|| digest.to_string()),
            }
        } else {
            let digest = store.resolve_digest(spec)?;
            if let Some(id) = deployed_as(store.root_fd(), &digest)? {
                anyhow::bail!(
                    "{digest} is deployment {id} (see imgmount status): a deployed image is \
                     not removed; deploy another image until it is pruned, or mark it bad \
                     and deploy again"
                );
            }
            let tags = store.remove_image(&digest)?;
            Removed {
                name: spec.clone(),
                untagged: tags,
                removed: Some(digest.to_string()),
            }
        };
        if !args.json {
            // As each is done: the lines before a failing IMAGE are still printed.
            println!("{}", done.line());
        }
        report.push(done);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

impl Removed {
    fn line(&self) -> String {
        match (&self.removed, self.untagged.as_slice()) {
            (None, _) => format!("untagged {}", self.name),
            (Some(d), [tag]) if *tag == self.name => format!("untagged {tag}, removed {d}"),
            (Some(d), []) => format!("removed {d}"),
            (Some(d), tags) => format!("removed {d} (tags {})", tags.join(", ")),
        }
    }
}

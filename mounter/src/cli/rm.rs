//! `imgmount rm`: remove tags and images.

use anyhow::Result;
use clap::Args;
use serde::Serialize;

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
            if !still_named {
                store.remove_image(&digest)?;
            }
            Removed {
                name: spec.clone(),
                untagged: vec![spec.clone()],
                removed: (!still_named).then(|| digest.to_string()),
            }
        } else {
            let digest = store.resolve_digest(spec)?;
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

//! `imgmount dump`: print an image as a dumpfile.

use std::io::{self, BufWriter, Write};

use anyhow::{Context, Result};
use clap::Args;
use imgmount_format::composefs::tree_from_image;
use imgmount_format::dumpfile::write_dumpfile;

use super::registry_args::RegistryArgs;
use super::store_path::{IMAGE_HELP, StoreArg, find_image};

/// Print a composefs image as a dumpfile.
///
/// One line per file with its metadata, xattrs and object digest, in the
/// format `mkcomposefs --from-file` reads, so
/// `imgmount dump A | imgmount create --from-file - B` rebuilds the same image.
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct DumpArgs {
    #[arg(value_name = "IMAGE", help = IMAGE_HELP)]
    pub image: String,
    #[command(flatten)]
    pub store: StoreArg,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn run(args: DumpArgs) -> Result<()> {
    // A stored image as checked against its name; a file read whole, not mapped.
    let (path, image) = find_image(&args.store, &args.image, &args.registry)?.open()?;
    let shown = path.display();
    let tree = tree_from_image(&image).with_context(|| format!("reading {shown}"))?;
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    write_dumpfile(&tree, &mut out)?;
    out.flush()?;
    Ok(())
}

//! `imgmount dump`: print an image as a dumpfile.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use imgmount_format::composefs::tree_from_image;
use imgmount_format::dumpfile::write_dumpfile;
use imgmount_format::erofs::reader::Image;

/// Print a composefs image as a dumpfile.
///
/// One line per file with its metadata, xattrs and object digest, in the
/// format `mkcomposefs --from-file` reads, so
/// `imgmount dump A | imgmount create --from-file - B` rebuilds the same image.
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct DumpArgs {
    /// The composefs image file.
    pub image: PathBuf,
}

pub fn run(args: DumpArgs) -> Result<()> {
    let image =
        Image::open(&args.image).with_context(|| format!("opening {}", args.image.display()))?;
    let tree =
        tree_from_image(&image).with_context(|| format!("reading {}", args.image.display()))?;
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    write_dumpfile(&tree, &mut out)?;
    out.flush()?;
    Ok(())
}

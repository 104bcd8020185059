//! `imgmount cat`: print one file of an image, verified.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use imgmount_format::composefs::redirect_object_path;
use imgmount_format::erofs::format::FileType;
use imgmount_format::erofs::reader::Image;
use imgmount_format::store::fsops::{Dir, Expect, PositionedReader};
use imgmount_format::verity::{Digest, VerityError, merkle_tree_reader};

use super::registry_args::RegistryArgs;
use super::store_path::{IMAGE_HELP, StoreArg, find_image};
use crate::read::VerityMode;

/// Print a regular file from an image to standard output.
///
/// Small files are stored in the image itself; larger ones are read from the
/// object directory (the store's for an image from the store, else `objects/`
/// beside the image's directory or beside the image, else --objects) and
/// checked block by block against the fs-verity digest the image records,
/// before any byte is printed.
///
/// Examples:
///   imgmount cat web:stable /etc/os-release
///   imgmount cat rootfs.cfs /etc/os-release --objects /var/lib/objects
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct CatArgs {
    #[arg(value_name = "IMAGE", help = IMAGE_HELP)]
    pub image: String,
    /// Absolute path of the file inside the image, e.g. /etc/hostname.
    pub path: String,
    /// The object directory (XX/rest-of-digest layout) holding file contents.
    #[arg(long, value_name = "DIR")]
    pub objects: Option<PathBuf>,
    /// require: the file must carry a digest; auto: verify when it carries one;
    /// off: trust the object store.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = VerityMode::Auto)]
    pub verity: VerityMode,
    #[command(flatten)]
    pub store: StoreArg,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn run(args: CatArgs) -> Result<()> {
    let found = find_image(&args.store, &args.image, &args.registry)?;
    let found_objects = found.objects.clone();
    // A stored image as checked against its name; a file read whole, not mapped.
    let (image_path, image): (PathBuf, Image) = found.open()?;
    let shown = image_path.display();
    let inode = image
        .lookup_path(args.path.as_bytes())
        .with_context(|| format!("looking up {} in {shown}", args.path))?
        .with_context(|| format!("{} does not exist in {shown}", args.path))?;
    if inode.file_type() != FileType::RegularFile {
        bail!(
            "{} is not a regular file (it is a {:?})",
            args.path,
            inode.file_type()
        );
    }
    let mut out = BufWriter::with_capacity(1 << 20, io::stdout().lock());
    match image.redirect(&inode)? {
        None => {
            // Inline, or plain EROFS data: the image's own digest covers it.
            let mut buf = vec![0u8; 1 << 20];
            let mut off = 0u64;
            while off < inode.size() {
                let n = image.read_at(&inode, off, &mut buf)?;
                if n == 0 {
                    bail!("{}: image data ends at byte {off}", args.path);
                }
                out.write_all(&buf[..n])?;
                off += n as u64;
            }
        }
        Some(redirect) => {
            let objects = args.objects.as_deref().unwrap_or(&found_objects);
            if !objects.is_dir() {
                bail!(
                    "{} is stored as an object, and the object directory {} does not exist: \
                     pass --objects DIR",
                    args.path,
                    objects.display()
                );
            }
            let rel = redirect_object_path(redirect).with_context(|| {
                format!(
                    "{}: redirect {:?} would leave the object directory",
                    args.path,
                    String::from_utf8_lossy(redirect)
                )
            })?;
            let object = objects.join(rel);
            // The object: a regular file of the size the image gives, never through a
            // symlink below --objects, never a FIFO or device.
            let open_object = || {
                Dir::open(objects)
                    .and_then(|d| d.open_file(rel, Expect::Size(inode.size())))
                    .with_context(|| format!("opening object {}", object.display()))
            };
            let digest = image.metacopy(&inode)?.flatten();
            match (digest, args.verity) {
                (None, VerityMode::Require) => {
                    bail!(
                        "{} has no fs-verity digest in the image and --verity=require",
                        args.path
                    )
                }
                (Some(d), VerityMode::Require | VerityMode::Auto) => open_object()
                    .and_then(|file| copy_verified(&file, &object, d, inode.size(), &mut out)),
                _ => open_object()
                    .and_then(|file| copy_unverified(file, &object, inode.size(), &mut out)),
            }
            .with_context(|| format!("refused to read {}", args.path))?
        }
    }
    out.flush()?;
    Ok(())
}

/// Copies an object after checking it against `digest`: the Merkle tree is built from
/// the first `size` bytes and compared with the digest first, then each block is checked
/// against the tree as it is read again, so a file changed between the passes is caught too.
fn copy_verified(
    file: &File,
    object: &Path,
    digest: Digest,
    size: u64,
    out: &mut impl Write,
) -> Result<()> {
    let first_pass = PositionedReader::new(file, 0).take(size);
    let tree = merkle_tree_reader(digest.alg(), first_pass)
        .with_context(|| format!("reading object {}", object.display()))?;
    if tree.digest() != digest {
        bail!(
            "object {} does not match the image: expected {digest}, found {}",
            object.display(),
            tree.digest()
        );
    }
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut off = 0u64;
    while off < size {
        let len = (size - off).min(CHUNK) as usize;
        file.read_exact_at(&mut buf[..len], off)
            .with_context(|| format!("reading object {} at {off}", object.display()))?;
        if let Err(e) = tree.verify_data_blocks(off / 4096, &buf[..len]) {
            let at = match e {
                VerityError::DataBlockMismatch { block } => block * 4096,
                _ => off,
            };
            return Err(e).with_context(|| format!("object {} at offset {at}", object.display()));
        }
        out.write_all(&buf[..len])?;
        off += len as u64;
    }
    Ok(())
}

fn copy_unverified(file: File, object: &Path, size: u64, out: &mut impl Write) -> Result<()> {
    let copied = io::copy(&mut file.take(size), out)?;
    if copied != size {
        bail!(
            "object {} has {copied} bytes but the image says {size}",
            object.display()
        );
    }
    Ok(())
}

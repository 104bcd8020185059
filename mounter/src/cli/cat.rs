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
use imgmount_format::store::MAX_IMAGE_SIZE;
use imgmount_format::store::fsops::{self, Dir, Expect, PositionedReader};
use imgmount_format::verity::{Digest, merkle_tree_reader};

use crate::read::VerityMode;

/// Print a regular file from an image to standard output.
///
/// Small files are stored in the image itself; larger ones are read from the
/// object directory given with --objects and checked block by block against
/// the fs-verity digest the image records, before any byte is printed.
///
/// Example:
///   imgmount cat rootfs.cfs /etc/os-release --objects /var/lib/objects
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct CatArgs {
    /// The composefs image file.
    pub image: PathBuf,
    /// Absolute path of the file inside the image, e.g. /etc/hostname.
    pub path: String,
    /// The object directory (XX/rest-of-digest layout) holding file contents.
    #[arg(long, value_name = "DIR")]
    pub objects: Option<PathBuf>,
    /// Verification: require, auto (verify where a digest exists) or off.
    #[arg(long, value_name = "MODE", default_value = "auto")]
    pub verity: VerityMode,
}

pub fn run(args: CatArgs) -> Result<()> {
    // Read whole, not mapped: a file truncated meanwhile must not fault us.
    let image = fsops::read_regular(&args.image, MAX_IMAGE_SIZE)
        .map_err(anyhow::Error::from)
        .and_then(|b| Image::from_bytes(b).map_err(anyhow::Error::from))
        .with_context(|| format!("opening {}", args.image.display()))?;
    let inode = image
        .lookup_path(args.path.as_bytes())
        .with_context(|| format!("looking up {} in {}", args.path, args.image.display()))?
        .with_context(|| format!("{}: no such file in {}", args.path, args.image.display()))?;
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
            let objects = args.objects.as_deref().with_context(|| {
                format!("{} is stored as an object: pass --objects DIR", args.path)
            })?;
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
            let file = Dir::open(objects)
                .and_then(|d| d.open_file(rel, Expect::Size(inode.size())))
                .with_context(|| format!("opening object {}", object.display()))?;
            let digest = image.metacopy(&inode)?.flatten();
            match (digest, args.verity) {
                (None, VerityMode::Require) => {
                    bail!(
                        "{} has no fs-verity digest in the image and --verity=require",
                        args.path
                    )
                }
                (Some(d), VerityMode::Require | VerityMode::Auto) => {
                    copy_verified(&file, &object, d, inode.size(), &mut out)?
                }
                _ => copy_unverified(file, &object, inode.size(), &mut out)?,
            }
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
        for (i, block) in buf[..len].chunks(4096).enumerate() {
            let at = off + i as u64 * 4096;
            tree.verify_data_block(at / 4096, block)
                .with_context(|| format!("object {} at offset {at}", object.display()))?;
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

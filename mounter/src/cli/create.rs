//! `imgmount create`: build a composefs image, like `mkcomposefs`.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use imgmount_format::dumpfile::parse_dumpfile;
use imgmount_format::erofs::writer::{ImageWriter, WriteOptions};
use imgmount_format::store::ObjectStore;
use imgmount_format::tree::{FromDirOptions, tree_from_dir};
use imgmount_format::verity::{HashAlg, digest_bytes};

use super::UsageError;

/// Build a composefs image from a directory tree or a dumpfile.
///
/// The image holds only metadata: every regular file larger than 64 bytes is
/// recorded by its fs-verity digest and must be found in an object store
/// (`objects/XX/rest-of-digest`) when the image is mounted. With
/// `--digest-store DIR` the files are copied there as they are read.
/// The output is reproducible: the same input gives the same bytes.
///
/// Examples:
///   imgmount create --digest-store objects rootfs/ rootfs.cfs
///   imgmount dump old.cfs | imgmount create --from-file - new.cfs
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct CreateArgs {
    /// A directory, or with --from-file a dumpfile ('-' reads standard input).
    #[arg(value_name = "INPUT")]
    pub source: PathBuf,
    /// Where to write the image ('-' writes to standard output).
    pub image: PathBuf,
    /// Copy every external file into this object directory (XX/rest layout).
    #[arg(long, value_name = "DIR")]
    pub digest_store: Option<PathBuf>,
    /// INPUT is a composefs dumpfile, not a directory.
    #[arg(long)]
    pub from_file: bool,
    /// Lowest composefs format version to write (0 or 1).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub min_version: u32,
    /// Highest composefs format version allowed (whiteouts need 1).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub max_version: u32,
    /// fs-verity hash for file digests.
    #[arg(long, value_name = "ALG", default_value = "sha256")]
    pub hash: HashAlg,
    /// Print the fs-verity digest of the image written (to standard error when the
    /// image goes to standard output).
    #[arg(long)]
    pub print_digest: bool,
    /// Print a JSON object (image, digest as sha256:HEX, size in bytes) instead of the
    /// bare digest; implies --print-digest.
    #[arg(long)]
    pub json: bool,
    /// Threads used to hash and copy files (0 = one per core).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub threads: usize,
}

pub fn run(args: CreateArgs) -> Result<()> {
    if args.min_version > 1 || args.max_version > 1 || args.min_version > args.max_version {
        return Err(UsageError(format!(
            "format versions must satisfy 0 <= --min-version ({}) <= --max-version ({}) <= 1",
            args.min_version, args.max_version
        ))
        .into());
    }
    let tree = if args.from_file {
        if args.digest_store.is_some() {
            return Err(UsageError(
                "--digest-store needs a directory INPUT: a dumpfile names no file contents".into(),
            )
            .into());
        }
        let text = read_source(&args.source)?;
        parse_dumpfile(&text)
            .with_context(|| format!("parsing dumpfile {}", args.source.display()))?
    } else {
        let threads = if args.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            args.threads
        };
        let digest_store = match &args.digest_store {
            Some(dir) => Some(
                ObjectStore::create_bare(dir)
                    .with_context(|| format!("opening digest store {}", dir.display()))?,
            ),
            None => None,
        };
        let opts = FromDirOptions {
            digest_store,
            hash: args.hash,
            threads,
            ..FromDirOptions::default()
        };
        tree_from_dir(&args.source, &opts)
            .with_context(|| format!("reading {}", args.source.display()))?
    };
    let opts = WriteOptions {
        min_version: args.min_version,
        max_version: args.max_version,
    };
    // A dumpfile line with a digest but no payload gets no redirect from
    // mkcomposefs --from-file; from a directory the payload always comes from
    // the digest. Follow both so the bytes match.
    let image = ImageWriter::new(&tree)
        .options(&opts)
        .derive_payload(!args.from_file)
        .write()
        .context("building the image")?;
    write_output(&args.image, &image)?;
    if args.print_digest || args.json {
        let digest = digest_bytes(args.hash, &image);
        let text = if args.json {
            serde_json::to_string_pretty(&serde_json::json!({
                "image": args.image.display().to_string(),
                "digest": digest.to_string(),
                "size": image.len(),
            }))?
        } else {
            // mkcomposefs --print-digest prints bare hex.
            digest.to_hex()
        };
        // With the image on stdout, the digest must not be mixed into it.
        if args.image == Path::new("-") {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }
    Ok(())
}

fn read_source(path: &Path) -> Result<Vec<u8>> {
    let mut text = Vec::new();
    if path == Path::new("-") {
        io::stdin()
            .read_to_end(&mut text)
            .context("reading dumpfile from standard input")?;
    } else {
        text = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    }
    Ok(text)
}

/// Writes the image atomically: a reader never sees a half-written image under
/// the final name, and a failed run leaves an older image in place.
fn write_output(path: &Path, image: &[u8]) -> Result<()> {
    if path == Path::new("-") {
        let mut out = io::stdout().lock();
        out.write_all(image)?;
        out.flush()?;
        return Ok(());
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(image)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

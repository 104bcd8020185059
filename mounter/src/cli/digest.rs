//! `imgmount digest`: fs-verity digests of files, like `fsverity digest`.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use imgmount_format::verity::{HashAlg, digest_bytes, digest_file};
use serde::Serialize;

use super::registry_args::RegistryArgs;
use super::store_path::{StoreArg, find_image};

/// Print the fs-verity digest of files, like `fsverity digest`.
///
/// One `sha256:HEX FILE` line per file, the same output as
/// `fsverity digest --block-size=4096 FILE...`.
///
/// The fs-verity digest is a hash of the file's Merkle tree (4096-byte
/// blocks). It is the name the file's content gets in an object store
/// (objects/XX/rest-of-hex), and for an image it is the value
/// `imgmount mount --digest` pins. The file need not be on a filesystem with
/// fs-verity support: the digest is computed here.
///
/// A FILE that does not exist may name an image in the store, as IMAGE does
/// for other commands: a tag, a digest or a SOURCE.
///
/// Examples:
///   imgmount digest rootfs.cfs
///   imgmount digest web:stable
///   imgmount digest --hash sha512 --json a.bin b.bin
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct DigestArgs {
    /// Files to digest, or images in the store.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub store: StoreArg,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Hash algorithm of the Merkle tree: sha256 or sha512.
    #[arg(long, value_name = "ALG", default_value = "sha256")]
    pub hash: HashAlg,
    /// Print a JSON array of {"file": ..., "digest": ...} objects instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Line {
    file: String,
    digest: String,
}

pub fn run(args: DigestArgs) -> Result<()> {
    let mut out = BufWriter::new(io::stdout().lock());
    let mut lines = Vec::new();
    for file in &args.files {
        let of_file = |path: &Path| {
            digest_file(args.hash, path)
                .with_context(|| format!("computing the fs-verity digest of {}", path.display()))
        };
        let digest = match file.to_str() {
            Some(spec) if !file.exists() => {
                let found = find_image(&args.store, spec, &args.registry)?;
                // A stored image's bytes were checked against its name: that is its digest,
                // or the one to hash with another algorithm (never the file read again).
                match found.stored {
                    Some(s) if s.digest.alg() == args.hash => s.digest,
                    Some(s) => digest_bytes(args.hash, &s.bytes),
                    None => of_file(&found.path)?,
                }
            }
            _ => of_file(file)?,
        };
        let line = Line {
            file: file.display().to_string(),
            digest: digest.to_string(),
        };
        if args.json {
            lines.push(line);
        } else {
            // As each file is done, like fsverity: a long list shows progress, and the
            // lines before a failing file are still printed.
            writeln!(out, "{} {}", line.digest, line.file)?;
            out.flush()?;
        }
    }
    if args.json {
        serde_json::to_writer_pretty(&mut out, &lines)?;
        writeln!(out)?;
    }
    out.flush()?;
    Ok(())
}

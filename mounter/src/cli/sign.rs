//! `imgmount sign`: sign an image's digest with an ed25519 key.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use imgmount_format::store::fsops;
use serde::Serialize;

use super::UsageError;
use super::registry_args::RegistryArgs;
use super::store_path::{StoreArg, resolve_image};
use crate::deploy::keys::{self, MAX_KEY_FILE};
use crate::deploy::signature::{self, Signatures};
use crate::deploy::store::add_signatures;

/// Sign an image with a key from `imgmount keygen`.
///
/// The signature is ed25519 over the image's fs-verity digest (which names every
/// byte of every file in it). It is stored beside the image in the store
/// (signatures/HEX.sig, kept with the image's other signatures), or with --output
/// written to a file for `imgmount deploy --signature` on another machine. A boot
/// whose initramfs trusts the key boots the image as a deployment.
///
/// Examples:
///   imgmount sign --key release os:v2
///   imgmount sign --key release --output os-v2.sig oci:./layout:v2
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct SignArgs {
    /// The secret key file (from `imgmount keygen`).
    #[arg(long, value_name = "KEY")]
    pub key: PathBuf,
    /// The image: a tag, a digest (sha256:HEX or a unique prefix), or a SOURCE to import.
    pub image: String,
    /// Write the signature to FILE (which must not exist) instead of the store.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print a JSON object: image, key, and where the signature went.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArg,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Serialize)]
struct Report {
    image: String,
    key: String,
    signature: String,
}

pub fn run(args: SignArgs) -> Result<()> {
    let text = fsops::read_regular(&args.key, MAX_KEY_FILE)
        .with_context(|| format!("reading the key {}", args.key.display()))?;
    let key = keys::parse_secret(&String::from_utf8_lossy(&text))
        .map_err(|e| UsageError(format!("{} {e}", args.key.display())))?;
    let (store, image) = resolve_image(&args.store, &args.image, &args.registry)?;
    let mut sigs = Signatures::new(image.digest);
    sigs.add(signature::sign(&key, &image.digest))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let key_id = keys::key_id(&key.verifying_key().to_bytes());
    let written = match &args.output {
        Some(out) => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(out)
                .with_context(|| format!("creating {}", out.display()))?;
            f.write_all(&sigs.encode())?;
            f.sync_all()?;
            out.display().to_string()
        }
        None => {
            let all = add_signatures(store.root_fd(), &sigs)?;
            format!(
                "{} ({} {})",
                store
                    .root()
                    .join(crate::deploy::store::SIGNATURES_DIR)
                    .join(signature::file_name(&image.digest))
                    .display(),
                all.signed.len(),
                if all.signed.len() == 1 {
                    "signature"
                } else {
                    "signatures"
                }
            )
        }
    };
    if args.json {
        let r = Report {
            image: image.digest.to_string(),
            key: key_id,
            signature: args
                .output
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| written.clone()),
        };
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("signed {} with {key_id}: {written}", image.digest);
    }
    Ok(())
}

//! `imgmount keygen`: make an ed25519 key pair for signing images.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

use super::UsageError;
use crate::deploy::keys::{self, TRUSTED_DIR};

/// Make an ed25519 key pair for signing images (`imgmount sign`).
///
/// Writes the secret key to PATH (mode 0600) and the public key to PATH.pub. Neither
/// may exist. To make a machine boot images signed by the key, put PATH.pub into
/// /etc/imgmount/trusted.d/ before building its initramfs (the initramfs-tools hook
/// and the dracut module copy that folder); keep PATH itself off the machine.
///
/// Example:
///   imgmount keygen release          (release and release.pub)
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct KeygenArgs {
    /// Where the secret key goes; the public key goes to PATH.pub.
    pub path: PathBuf,
    /// The key's name in messages and in trusted.d (default: PATH's file name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Print a JSON object: secret, public, name, id.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    secret: String,
    public: String,
    name: String,
    id: String,
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

pub fn run(args: KeygenArgs) -> Result<()> {
    let name = match &args.name {
        Some(n) => n.clone(),
        None => args
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    if !keys::valid_name(&name) {
        return Err(UsageError(format!(
            "{name:?} is not a key name (letters, digits and . _ - + @, not beginning with a \
             dot; give one with --name)"
        ))
        .into());
    }
    let mut public_path = args.path.clone().into_os_string();
    public_path.push(".pub");
    let public_path = PathBuf::from(public_path);
    for p in [&args.path, &public_path] {
        if std::fs::symlink_metadata(p).is_ok() {
            anyhow::bail!("{} exists: not overwriting a key", p.display());
        }
    }
    let key = keys::generate().context("reading random bytes for the key")?;
    let public = key.verifying_key().to_bytes();
    write_new(&args.path, &keys::format_secret(&key, &name), 0o600)?;
    write_new(&public_path, &keys::format_public(&public, &name), 0o644)?;
    let id = keys::key_id(&public);
    if args.json {
        let r = Report {
            secret: args.path.display().to_string(),
            public: public_path.display().to_string(),
            name,
            id,
        };
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("secret key: {} (keep it secret)", args.path.display());
        println!("public key: {} ({id})", public_path.display());
        println!(
            "to trust it at boot: copy it to {TRUSTED_DIR}/{name}.pub and rebuild the initramfs"
        );
    }
    Ok(())
}

//! `imgmount deploy`: stage an image as the next boot, on trial.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use imgmount_format::store::fsops;
use serde::Serialize;

use super::UsageError;
use super::deployment_args::DeploymentArgs;
use super::registry_args::RegistryArgs;
use super::store_path::resolve_image;
use crate::deploy::commit::StateRead;
use crate::deploy::keys::{self, TRUSTED_DIR, TrustSpec};
use crate::deploy::ops::{self, DeployOutcome, DeployRequest, OpError};
use crate::deploy::signature::SignatureCheck;
use crate::deploy::state::{DEFAULT_TRIES, MAX_DEPLOYMENTS, MAX_TRIES};
use crate::deploy::store::{self, now, read_signatures, store_signature_file};

/// Stage an image as the next boot, on trial.
///
/// IMAGE (a tag or digest in the store, or a SOURCE such as oci:./layout:tag,
/// imported first) becomes a new deployment and the next boot. It is pending: each
/// boot of it takes one of its tries (--tries, default 3, as greenboot) before the
/// root is mounted, and `imgmount bless` (run by imgmount-bless.service once the
/// boot is complete and the health checks passed) makes it good. A pending
/// deployment out of tries, or one that `imgmount mark-bad` or a failed required
/// health check marked bad, never boots again: the last good deployment does.
///
/// The booted deployment stays as the rollback; at most --keep deployments are kept
/// (default 2: A/B), the oldest ones that are neither booted nor the last good one
/// going first. The new deployment's /etc starts from the booted one's local
/// changes (see the README, "Updates and rollback").
///
/// At boot, an image must be the one the kernel command line pins or be signed by a
/// key the initramfs trusts: --signature adds a signature file (from `imgmount sign
/// --output`) to the store first. Deploying an image this system's own trusted keys
/// (/etc/imgmount/trusted.d) would refuse prints a warning.
///
/// Examples:
///   imgmount deploy oci:./os-layout:v2
///   imgmount deploy os:v2 --signature os-v2.sig --tries 5
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct DeployArgs {
    /// The image: a tag, a digest (sha256:HEX or a unique prefix), or a SOURCE to import.
    pub image: String,
    /// Boots it may take before it counts as bad if never blessed (1 to 100).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_TRIES)]
    pub tries: u8,
    /// A signature file of the image (made by `imgmount sign`), stored with it.
    #[arg(long, value_name = "FILE")]
    pub signature: Option<PathBuf>,
    /// Keep at most K deployments from now on (2 to 32; default: as before, first 2).
    #[arg(long, value_name = "K")]
    pub keep: Option<u8>,
    /// Print a JSON object: id, image, tag, tries, adopted, pruned, rollback.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub common: DeploymentArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Serialize)]
struct Report {
    id: u32,
    image: String,
    tag: Option<String>,
    tries: u8,
    already_booted: bool,
    adopted: Option<u32>,
    pruned: Vec<u32>,
    rollback: Option<u32>,
}

pub fn run(args: DeployArgs) -> Result<()> {
    if args.tries == 0 || args.tries > MAX_TRIES {
        return Err(UsageError(format!(
            "--tries must be 1 to {MAX_TRIES}, not {}",
            args.tries
        ))
        .into());
    }
    if let Some(k) = args.keep
        && !(2..=MAX_DEPLOYMENTS).contains(&usize::from(k))
    {
        return Err(UsageError(format!("--keep must be 2 to {MAX_DEPLOYMENTS}, not {k}")).into());
    }
    let booted = args.common.booted()?;
    let (objstore, image) = resolve_image(&args.common.store, &args.image, &args.registry)?;
    let root = objstore.root_fd().clone();
    if let Some(file) = &args.signature {
        store_signature_file(&root, file, &image.digest)
            .with_context(|| format!("deploying {}", args.image))?;
    }
    warn_if_untrusted(&root, &image.digest);
    // The tag it was named by, else one that names it (a SOURCE's import tags it).
    let tag = match objstore.read_ref(&args.image) {
        Ok(Some(d)) if d == image.digest => Some(args.image.clone()),
        _ => objstore
            .list_refs()
            .ok()
            .and_then(|refs| refs.into_iter().find(|(_, d)| *d == image.digest))
            .map(|(t, _)| t),
    };
    let req = DeployRequest {
        image: image.digest,
        tag: tag.clone(),
        tries: args.tries,
        keep: args.keep,
        now: now(),
    };
    let (outcome, rollback) = store::change(&root, |read: &StateRead| {
        let (next, outcome) = ops::deploy(read.state(), &booted, &req).map_err(|e| match e {
            OpError::BadArgument(m) => anyhow::Error::from(UsageError(m)),
            OpError::Refused(m) => anyhow::anyhow!(m),
        })?;
        let rollback = next.rollback_target().map(|d| d.id);
        Ok((Some(next), (outcome, rollback)))
    })?;
    let report = match &outcome {
        DeployOutcome::Staged {
            id,
            adopted,
            pruned,
        } => Report {
            id: *id,
            image: image.digest.to_string(),
            tag,
            tries: args.tries,
            already_booted: false,
            adopted: *adopted,
            pruned: pruned.iter().map(|d| d.id).collect(),
            rollback,
        },
        DeployOutcome::AlreadyBooted { id } => Report {
            id: *id,
            image: image.digest.to_string(),
            tag,
            tries: 0,
            already_booted: true,
            adopted: None,
            pruned: Vec::new(),
            rollback,
        },
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if report.already_booted {
        println!(
            "{} is the booted deployment {}: it is the next boot again",
            report.image, report.id
        );
        return Ok(());
    }
    if let Some(a) = report.adopted {
        println!("the booted image (pinned by the command line) is now deployment {a}, good");
    }
    println!(
        "deployment {} ({}{}) is the next boot: pending, {} {}",
        report.id,
        report.image,
        report
            .tag
            .as_deref()
            .map(|t| format!(", {t}"))
            .unwrap_or_default(),
        report.tries,
        if report.tries == 1 { "try" } else { "tries" }
    );
    match report.rollback {
        Some(r) => println!("rollback: deployment {r}"),
        None => println!("rollback: none (no other good deployment)"),
    }
    for p in &report.pruned {
        println!("removed deployment {p} (more than the deployments kept)");
    }
    Ok(())
}

/// Warns when the keys this system trusts would refuse the image at boot (the
/// initramfs's keys are usually these, copied by its hook).
fn warn_if_untrusted(store: &fsops::Dir, digest: &imgmount_format::verity::Digest) {
    let (trusted, _) = keys::load_trusted(std::path::Path::new(TRUSTED_DIR), &TrustSpec::All);
    if trusted.is_empty() {
        return;
    }
    let verdict = match read_signatures(store, digest) {
        Ok(Some(s)) => s.check(&trusted),
        Ok(None) => SignatureCheck::Refused("it is not signed".into()),
        Err(e) => SignatureCheck::Refused(format!("{e:#}")),
    };
    if let SignatureCheck::Refused(why) = verdict {
        eprintln!(
            "imgmount: warning: {digest}: {why}; unless the kernel command line pins it, \
             the boot will refuse it and boot the last good deployment"
        );
    }
}

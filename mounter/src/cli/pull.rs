//! `imgmount pull`: an image from a registry into the store.

use anyhow::Result;
use clap::Args;
use imgmount_format::oci::Source;

use super::UsageError;
use super::import::{ImportFlags, run_source};

/// Pull an image from a registry into the store, and print its digest.
///
/// IMAGE is HOST[:PORT]/REPO[:TAG|@sha256:HEX], with or without `docker://`
/// (Docker's rules: a first component without a `.` or `:` means Docker Hub,
/// so `debian:12` is docker.io/library/debian:12; the tag defaults to
/// `latest`). It is the same as `imgmount import docker://IMAGE`, and every
/// command that takes a SOURCE takes `docker://IMAGE` too.
///
/// What a pull checks and keeps:
///   - the manifest (and an image index, from which --platform picks the
///     image, by default this machine's) against the digest that names it;
///     every blob against its digest and size, every layer against the
///     config's diff_id; on any mismatch nothing in the store changes;
///   - a layer the store already has (same diff_id, from any earlier pull or
///     import) is not downloaded: it is rebuilt from the store and checked;
///     an image pulled before is only tagged again;
///   - blobs are downloaded a few at a time (--jobs) and applied as they
///     arrive; an interrupted pull leaves what it downloaded in the store's
///     downloads/ directory, and the next pull resumes there (until `gc`).
///
/// Credentials: --creds, else the auth files skopeo and podman use (so
/// `skopeo login HOST` works for imgmount too), else anonymous; Bearer
/// tokens are fetched as the registry asks. TLS is checked against the
/// system's roots unless --tls-verify=false.
///
/// The image is tagged HOST/REPO:TAG in the store unless --tag says
/// otherwise (an IMAGE pinned only by digest gets no tag).
///
/// Examples:
///   imgmount pull registry.example.com/team/app:1.4
///   imgmount pull --platform linux/arm64 docker://quay.io/org/tool
///   imgmount pull --tls-verify=false --creds me:secret 127.0.0.1:5000/test:v1
///
/// Exit status: 0 pulled, 1 failed (unreachable or lying registry, refused
/// credentials, missing tag, bad blob, I/O), 2 bad usage.
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct PullArgs {
    /// The image (see above).
    pub image: String,
    #[command(flatten)]
    pub flags: ImportFlags,
}

pub fn run(args: PullArgs) -> Result<()> {
    let spec = if args.image.starts_with("docker://") {
        args.image.clone()
    } else if Source::looks_like_source(&args.image) {
        return Err(UsageError(format!(
            "{:?} is not a registry image: use `imgmount import` for other sources",
            args.image
        ))
        .into());
    } else {
        format!("docker://{}", args.image)
    };
    let source: Source = spec.parse().map_err(|e| UsageError(format!("{e}")))?;
    run_source(&source, &args.flags)
}

//! `imgmount stats`: what a mount's daemon has served.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;

use crate::fs::session;
use crate::fs::stats::{self, FileCounts};

/// Show what the daemon of a mount has served: READ requests and opens.
///
/// Files the kernel verifies with fs-verity are read by FUSE passthrough as
/// root: the kernel reads them from the store directly, and the daemon sees
/// their opens but no READ requests. When a program opens a file of a
/// directory it has listed, the daemon opens the objects of the next files of
/// that listing ahead of it ("read ahead"). For each PATH given (a file in the
/// mount) its own counters are shown too.
///
/// Only root and the user who mounted may ask.
///
/// Examples:
///   imgmount stats /mnt/image
///   imgmount stats --json / /usr/bin/bash
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct StatsArgs {
    /// The mount point of an imgmount mount (`/` for a booted imgmount root).
    pub mountpoint: PathBuf,
    /// Files in the mount to report on one by one.
    pub paths: Vec<PathBuf>,
    /// Print a JSON object.
    #[arg(long)]
    pub json: bool,
    /// With --json, list every file the daemon has opened or read (by inode number).
    #[arg(long)]
    pub all: bool,
}

#[derive(Serialize)]
struct PathReport {
    path: String,
    ino: u64,
    #[serde(flatten)]
    counts: FileCounts,
}

#[derive(Serialize)]
struct Report {
    mountpoint: String,
    reads: u64,
    read_bytes: u64,
    opens: u64,
    passthrough_opens: u64,
    read_ahead: u64,
    files_seen: usize,
    paths: Vec<PathReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    files: Option<Vec<stats::FileStats>>,
}

pub fn run(args: StatsArgs) -> Result<()> {
    let mp = session::absolute(&args.mountpoint)?;
    let Some(dev) = session::imgmount_dev(&mp).context("reading /proc/self/mountinfo")? else {
        bail!("{} is not an imgmount mount point", mp.display());
    };
    let r = stats::query(&dev).with_context(|| format!("asking the daemon of {}", mp.display()))?;
    let mut paths = Vec::new();
    for p in &args.paths {
        let md = std::fs::metadata(p).with_context(|| format!("stat {}", p.display()))?;
        if session::dev_string(md.dev()) != dev {
            bail!(
                "{} is not on the imgmount mount at {}",
                p.display(),
                mp.display()
            );
        }
        paths.push(PathReport {
            path: p.display().to_string(),
            ino: md.ino(),
            counts: r.file(md.ino()),
        });
    }
    if args.json {
        let report = Report {
            mountpoint: mp.display().to_string(),
            reads: r.reads,
            read_bytes: r.read_bytes,
            opens: r.opens,
            passthrough_opens: r.passthrough_opens,
            read_ahead: r.read_ahead,
            files_seen: r.files.len(),
            paths,
            files: args.all.then(|| r.files.clone()),
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("{}: {}", mp.display(), r.summary());
    for p in &paths {
        let c = p.counts;
        println!(
            "{}: {} READ requests ({} bytes), {} opens, {} by passthrough",
            p.path, c.reads, c.read_bytes, c.opens, c.passthrough_opens
        );
    }
    Ok(())
}

//! `imgmount fsck`: recompute every digest in the store.

use anyhow::{Result, bail};
use clap::Args;
use serde::Serialize;

use super::store_path::StoreArg;

/// Check every digest in the store.
///
/// Recomputes every object's fs-verity digest and compares it with the
/// object's name, checks Merkle-tree sidecars and image files, and reports
/// images whose objects are missing.
///
/// With --repair, bad objects, sidecars and images are removed, and so is
/// anything that is not a directory where the store's directories should be
/// (a symlink, say: removed as the link itself, never followed). Importing an
/// image again restores its content, with or without --repair: an import
/// checks what is stored under a name and replaces it if it is wrong.
/// Exit status 0 when all is well, 1 when problems were found (even if
/// repaired). Sidecars of objects no longer stored are counted, not problems.
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct FsckArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Remove what is bad.
    #[arg(long)]
    pub repair: bool,
    /// Print a JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Problem {
    path: String,
    reason: String,
    removed: bool,
}

#[derive(Serialize)]
struct Report {
    objects: usize,
    sidecars: usize,
    images: usize,
    /// Sidecars whose object is gone: harmless (gc removes them), not problems.
    orphan_sidecars: usize,
    problems: Vec<Problem>,
}

pub fn run(args: FsckArgs) -> Result<()> {
    let store = args.store.open()?;
    let r = store.fsck(args.repair)?;
    let problems = r.problems.len();
    if args.json {
        let report = Report {
            objects: r.objects,
            sidecars: r.sidecars,
            images: r.images,
            orphan_sidecars: r.orphan_sidecars,
            problems: r
                .problems
                .into_iter()
                .map(|p| Problem {
                    path: p.path.display().to_string(),
                    reason: p.reason,
                    removed: p.removed,
                })
                .collect(),
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for p in &r.problems {
            let removed = if p.removed { " (removed)" } else { "" };
            println!("{}: {}{removed}", p.path.display(), p.reason);
        }
        println!(
            "checked {} objects, {} sidecars, {} images: {} problems",
            r.objects, r.sidecars, r.images, problems
        );
        if r.orphan_sidecars > 0 {
            let what = if args.repair {
                "removed"
            } else {
                "gc removes them"
            };
            println!(
                "{} sidecars of objects no longer stored (harmless; {what})",
                r.orphan_sidecars
            );
        }
    }
    if problems > 0 {
        bail!("{problems} problems found in the store");
    }
    Ok(())
}

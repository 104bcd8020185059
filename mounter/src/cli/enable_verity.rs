//! `imgmount enable-verity`: kernel fs-verity on the store's objects.

use std::io::IsTerminal;

use anyhow::{Result, bail};
use clap::Args;
use imgmount_format::store::ObjectStore;
use imgmount_format::verity::Digest;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::store_path::StoreArg;
use crate::read::kernel::{self, Measured};

/// Turn on kernel fs-verity for every object in the store.
///
/// Once an object has fs-verity, the kernel checks every page read from it
/// against its digest, so `imgmount mount` skips its own hashing for it and,
/// as root, lets the kernel read it directly (FUSE passthrough; see
/// `imgmount stats`). Objects keep their names: composefs names an object by
/// exactly the digest fs-verity measures. Enabling reads each object whole
/// once; the object can never be modified afterwards (it never is).
///
/// Needs a kernel with CONFIG_FS_VERITY and a filesystem with it turned on
/// (ext4: `mkfs.ext4 -O verity` or `tune2fs -O verity`; also f2fs, btrfs).
/// An object whose content does not match its name is reported and left
/// without fs-verity (`imgmount fsck --repair` removes it).
///
/// Exit status 0 when every object has fs-verity, 1 otherwise.
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct EnableVerityArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Print a JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize, Debug)]
pub struct Problem {
    pub path: String,
    pub reason: String,
}

/// What enabling did.
#[derive(Serialize, Debug, Default)]
pub struct VerityReport {
    /// Objects that got fs-verity now.
    pub enabled: usize,
    /// Objects that had it already, with the right digest.
    pub already: usize,
    pub problems: Vec<Problem>,
}

/// The outcome for one object; Err for what makes going on pointless (no fs-verity here).
fn enable_one(store: &ObjectStore, digest: &Digest) -> Result<Result<bool, String>> {
    // Through the store's directory descriptors: a symlink, FIFO or device in place of the
    // object (or of its fan-out directory) is a problem reported, never followed.
    let file = match store.open_object(digest) {
        Ok(f) => f,
        Err(e) => return Ok(Err(format!("cannot open: {e}"))),
    };
    let check = |m: Measured| match m {
        Measured::Enabled(d) if d == *digest => Ok(()),
        Measured::Enabled(d) => Err(format!(
            "its content does not match its name: fs-verity measures {d} \
             (`imgmount fsck --repair` removes it)"
        )),
        Measured::NotEnabled | Measured::Unsupported => {
            Err("fs-verity reports no digest after enabling".to_owned())
        }
    };
    let before = kernel::measure(&file);
    if let Measured::Enabled(_) = before {
        return Ok(check(before).map(|()| false));
    }
    match kernel::enable(&file, digest.alg()) {
        Ok(()) => Ok(check(kernel::measure(&file)).map(|()| true)),
        // Another process enabled it in the meantime.
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            Ok(check(kernel::measure(&file)).map(|()| false))
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOTTY)) => bail!(
            "fs-verity is not available for {}: {e} (it needs a kernel with CONFIG_FS_VERITY \
             and a filesystem with the feature on, e.g. `tune2fs -O verity` for ext4)",
            store.object_path(digest).display()
        ),
        Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
            Ok(Err("it is open for writing elsewhere".to_owned()))
        }
        Err(e) => Ok(Err(format!("enabling fs-verity: {e}"))),
    }
}

/// Enables fs-verity on each of the store's `objects`; `progress` draws a bar on stderr.
pub fn enable_objects(
    store: &ObjectStore,
    objects: &[Digest],
    progress: bool,
) -> Result<VerityReport> {
    let bar = if progress {
        let b =
            ProgressBar::with_draw_target(Some(objects.len() as u64), ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template("fs-verity {pos}/{len} objects {wide_bar}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let mut report = VerityReport::default();
    for digest in objects {
        match enable_one(store, digest)? {
            Ok(true) => report.enabled += 1,
            Ok(false) => report.already += 1,
            Err(reason) => report.problems.push(Problem {
                path: store.object_path(digest).display().to_string(),
                reason,
            }),
        }
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(report)
}

/// Prints a report (text or JSON) and fails if some object has no fs-verity.
pub fn print_report(report: &VerityReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        for p in &report.problems {
            println!("{}: {}", p.path, p.reason);
        }
        println!(
            "fs-verity enabled on {} objects ({} had it already), {} problems",
            report.enabled,
            report.already,
            report.problems.len()
        );
    }
    if !report.problems.is_empty() {
        bail!("{} objects have no fs-verity", report.problems.len());
    }
    Ok(())
}

pub fn run(args: EnableVerityArgs) -> Result<()> {
    let store = args.store.open()?;
    let objects: Vec<Digest> = store.list_objects()?.into_iter().map(|(d, _)| d).collect();
    let show = std::io::stderr().is_terminal() && !args.json;
    let report = enable_objects(&store, &objects, show)?;
    print_report(&report, args.json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    use imgmount_format::verity::HashAlg;

    #[test]
    fn objects_that_are_not_files_are_problems_not_crashes() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::create(dir.path().join("store")).unwrap();
        let [fifo, link, missing] = [b"fifo" as &[u8], b"link", b"missing"]
            .map(|c| imgmount_format::verity::digest_bytes(HashAlg::Sha256, c));
        for d in [fifo, link] {
            std::fs::create_dir_all(store.object_path(&d).parent().unwrap()).unwrap();
        }
        let c =
            std::ffi::CString::new(store.object_path(&fifo).into_os_string().into_vec()).unwrap();
        // SAFETY: a valid path string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        std::os::unix::fs::symlink("/etc/passwd", store.object_path(&link)).unwrap();
        let r = enable_objects(&store, &[fifo, link, missing], false).unwrap();
        assert_eq!(r.problems.len(), 3, "{r:?}");
        assert!(
            r.problems
                .iter()
                .all(|p| p.reason.starts_with("cannot open")),
            "{r:?}"
        );
    }

    #[test]
    fn no_fs_verity_here_is_one_clear_error() {
        // This machine's kernel (and tmpfs anywhere) has no fs-verity.
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::create(dir.path().join("store")).unwrap();
        let d = store.insert_bytes(b"x", HashAlg::Sha256).unwrap();
        match enable_objects(&store, &[d], false) {
            Err(e) => assert!(e.to_string().contains("fs-verity is not available"), "{e}"),
            // A kernel and filesystem with fs-verity: then it just works.
            Ok(r) => assert_eq!((r.enabled, r.problems.len()), (1, 0), "{r:?}"),
        }
    }
}

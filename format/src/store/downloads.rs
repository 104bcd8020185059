//! Blobs being downloaded: `downloads/<alg>/<hex>`, one file per blob,
//! named by the blob's digest and only ever appended to.
//!
//! They live outside `objects/`, `images/` and `refs/` and nothing there ever
//! points at them: an interrupted pull leaves its partial blobs here, and the
//! next pull of any image with the same blob resumes from where it stopped
//! (with an HTTP range request), then checks the whole blob against its
//! digest before anything from it is committed. A pull that succeeds removes
//! the blobs it used; `gc` removes all of them (it runs only when no pull
//! does).
//!
//! A download file is locked (`flock`) while a pull writes it, so two pulls
//! of the same blob take turns instead of interleaving their writes; the
//! second finds the blob complete and checks it instead of fetching it.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::fsops::{self, Dir, Kind};
use super::layers::split_content_digest;
use super::maintenance::subdir_or_remove;
use super::{ObjectStore, Result, StoreError, io_err};

pub const DOWNLOADS_DIR: &str = "downloads";

/// A blob's download file, locked for this process until dropped.
#[derive(Debug)]
pub struct Download {
    file: File,
    /// Its directory, `downloads/<alg>`, and its name there.
    dir: Dir,
    name: OsString,
    /// For messages.
    path: PathBuf,
}

impl ObjectStore {
    /// `downloads/`.
    pub fn downloads_dir(&self) -> PathBuf {
        self.root.join(DOWNLOADS_DIR)
    }

    /// Opens the download file of the blob `digest` (`ALG:HEX`), creating it
    /// empty if needed, and locks it, waiting while another pull holds it.
    /// Whatever it holds is untrusted: the caller checks it against the digest.
    pub fn open_download(&self, digest: &str) -> Result<Download> {
        self.require_full()?;
        let (alg, hex) = split_content_digest(digest).ok_or_else(|| {
            StoreError::BadName(format!(
                "{digest:?} is not a sha256:HEX or sha512:HEX digest"
            ))
        })?;
        // Created through no symlink: one where a directory belongs is an error
        // (`gc` removes it), never a way out of the store.
        let dir = self.subdir_created(&format!("{DOWNLOADS_DIR}/{alg}"))?;
        let path = dir.display(hex);
        // Bounded: each round either wins the lock on the file the name still
        // names, or finds the name replaced (removed by the pull that held it).
        for _ in 0..16 {
            let file = match dir.open_or_create_file(hex, 0o600) {
                Ok(f) => f,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::InvalidData | io::ErrorKind::IsADirectory
                    ) =>
                {
                    // A symlink, FIFO, device or directory where a download
                    // belongs: not ours, and in the way.
                    dir.remove_all(hex).map_err(io_err("remove", &path))?;
                    continue;
                }
                Err(e) => return Err(io_err("open", &path)(e)),
            };
            fsops::lock(&file, true).map_err(io_err("lock", &path))?;
            let held = file.metadata().map_err(io_err("stat", &path))?;
            match dir.metadata(hex).map_err(io_err("stat", &path))? {
                Some(now) if now.ino == held.ino() && now.dev == held.dev() => {
                    return Ok(Download {
                        file,
                        dir,
                        name: hex.into(),
                        path,
                    });
                }
                _ => continue,
            }
        }
        Err(StoreError::Corrupt {
            path,
            reason: "keeps being replaced while it is opened".into(),
        })
    }

    /// The part of `gc` that concerns downloads: all of them go (gc holds the
    /// exclusive lock, so no pull is running), and so does anything that is
    /// not a directory where theirs should be, as the entry itself.
    pub(super) fn gc_downloads(&self, dry_run: bool, report: &mut super::GcReport) -> Result<()> {
        let (dir, junk) = subdir_or_remove(&self.root_fd, DOWNLOADS_DIR, dry_run)?;
        report.removed_downloads += usize::from(junk);
        let Some(dir) = dir else {
            return Ok(());
        };
        for entry in dir.entries().map_err(io_err("list", dir.path()))? {
            let (sub, junk) = subdir_or_remove(&dir, &entry.name, dry_run)?;
            report.removed_downloads += usize::from(junk);
            let Some(sub) = sub else {
                continue;
            };
            for blob in sub.entries().map_err(io_err("list", sub.path()))? {
                let path = sub.display(&blob.name);
                report.removed_downloads += 1;
                if blob.kind == Kind::File {
                    let meta = sub.metadata(&blob.name).map_err(io_err("stat", &path))?;
                    report.removed_download_bytes += meta.map_or(0, |m| m.len);
                }
                if !dry_run {
                    sub.remove_all(&blob.name)
                        .map_err(io_err("remove", &path))?;
                }
            }
        }
        Ok(())
    }
}

impl Download {
    /// The file, opened for reading and writing. Write with positioned writes
    /// (`write_at`) at its end: readers share it.
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its current length.
    pub fn len(&self) -> Result<u64> {
        Ok(self
            .file
            .metadata()
            .map_err(io_err("stat", &self.path))?
            .len())
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Empties it (its content proved wrong).
    pub fn truncate(&self) -> Result<()> {
        self.file.set_len(0).map_err(io_err("truncate", &self.path))
    }

    /// Removes it: the blob is in the store now, or proved bad.
    pub fn remove(self) -> Result<()> {
        self.dir
            .remove_file(&self.name)
            .map(drop)
            .map_err(io_err("remove", &self.path))
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn one_holder_at_a_time_and_removal_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::create(dir.path()).unwrap();
        let blob = format!("sha256:{}", "c".repeat(64));
        let first = store.open_download(&blob).unwrap();
        first.file().write_all(b"abc").unwrap();
        assert_eq!(first.len().unwrap(), 3);
        let (tx, rx) = mpsc::channel();
        let s2 = store.clone();
        let b2 = blob.clone();
        let waiter = std::thread::spawn(move || {
            let d = s2.open_download(&b2).unwrap();
            tx.send(d.len().unwrap()).unwrap();
        });
        // The second opener waits for the lock...
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        // ...and after the first removes the file, gets a fresh one.
        first.remove().unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 0);
        waiter.join().unwrap();
        assert!(store.open_download("sha256:../x").is_err());
    }

    #[test]
    fn traps_in_place_of_a_download_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::create(dir.path()).unwrap();
        let hex = "d".repeat(64);
        let sub = store.downloads_dir().join("sha256");
        fs::create_dir_all(&sub).unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, b"precious").unwrap();
        std::os::unix::fs::symlink(&outside, sub.join(&hex)).unwrap();
        let d = store.open_download(&format!("sha256:{hex}")).unwrap();
        assert_eq!(d.len().unwrap(), 0);
        assert_eq!(fs::read(&outside).unwrap(), b"precious");
        drop(d);
        let mut report = crate::store::GcReport::default();
        store.gc_downloads(false, &mut report).unwrap();
        assert_eq!(report.removed_downloads, 1);
        assert!(fs::read_dir(&sub).unwrap().next().is_none());
    }
}

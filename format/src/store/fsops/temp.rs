//! Temporary files in a [`Dir`]: created under a fresh name, removed unless given theirs.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::Dir;

/// `PREFIX` followed by 16 hex digits unlikely to be taken (EEXIST makes the caller retry).
pub(super) fn unique_name(prefix: &str) -> OsString {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mixed =
        (nanos ^ (u64::from(std::process::id()) << 40) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .wrapping_mul(0xbf58_476d_1ce4_e5b9);
    OsString::from(format!("{prefix}{mixed:016x}"))
}

/// A new file in a [`Dir`], removed when dropped unless it was given its final name.
pub struct TempFile {
    pub(super) dir: Dir,
    pub(super) name: OsString,
    pub(super) file: File,
    pub(super) named: bool,
}

impl TempFile {
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    /// Its temporary name in its directory.
    pub fn name(&self) -> &OsStr {
        &self.name
    }

    /// Its path, for messages.
    pub fn display(&self) -> PathBuf {
        self.dir.display(&self.name)
    }

    /// Gives it the name `to_name` in `to` unless that exists (then it is removed). Returns
    /// whether it got the name.
    pub fn persist_noclobber(mut self, to: &Dir, to_name: impl AsRef<OsStr>) -> io::Result<bool> {
        let done = self.dir.rename_noclobber(&self.name, to, to_name)?;
        self.named = done;
        Ok(done)
    }

    /// Gives it the name `to_name` in `to`, replacing what is there.
    pub fn persist(mut self, to: &Dir, to_name: impl AsRef<OsStr>) -> io::Result<()> {
        self.dir.rename(&self.name, to, to_name)?;
        self.named = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.named {
            let _ = self.dir.remove_file(&self.name);
        }
    }
}

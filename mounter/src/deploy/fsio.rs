//! File access in a store directory that someone else may have changed: the deployment
//! state, signatures and `/etc` states are opened relative to a directory descriptor, never
//! through a symbolic link, never blocking on a FIFO, and only as regular files of a bounded
//! size.
//!
//! The directory given by the user (the store, the state folder) is opened following
//! symbolic links (`/var/lib/imgmount` may be one); every name below it is a single plain
//! component opened with `O_NOFOLLOW`.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

/// An open directory; names below it are resolved without following symbolic links.
#[derive(Debug)]
pub struct AnchoredDir {
    fd: OwnedFd,
    path: PathBuf,
}

fn refused(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// A single plain file name: no `/`, not `.` or `..`, not empty.
fn plain(name: &str) -> io::Result<&str> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain file name"),
        ));
    }
    Ok(name)
}

fn what(ft: FileType) -> &'static str {
    match ft {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "of an unknown type",
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl AnchoredDir {
    /// Opens the directory the user named (symbolic links followed).
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(AnchoredDir {
            fd,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where `name` is, for messages.
    pub fn display(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// What `name` is (not followed), or None if it does not exist.
    pub fn kind(&self, name: &str) -> io::Result<Option<FileType>> {
        match rustix::fs::statat(&self.fd, plain(name)?, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The subdirectory `name`, or None if it does not exist; anything but a real directory
    /// there is an error.
    pub fn open_sub(&self, name: &str) -> io::Result<Option<AnchoredDir>> {
        match rustix::fs::openat(&self.fd, plain(name)?, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(Some(AnchoredDir {
                fd,
                path: self.path.join(name),
            })),
            Err(Errno::NOENT) => Ok(None),
            Err(Errno::LOOP | Errno::NOTDIR) => Err(refused(format!(
                "{} is {}, where a directory should be",
                self.display(name).display(),
                self.kind(name)?.map_or("missing", what)
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// The subdirectory `name`, created (mode 0755) if missing.
    pub fn create_sub(&self, name: &str) -> io::Result<AnchoredDir> {
        match rustix::fs::mkdirat(&self.fd, plain(name)?, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        self.open_sub(name)?
            .ok_or_else(|| io::Error::other(format!("{} vanished", self.display(name).display())))
    }

    /// Opens a regular file for reading (None if absent): never a symbolic link, a FIFO or
    /// a device, and at most `max` bytes long.
    pub fn open_file(&self, name: &str, max: u64) -> io::Result<Option<File>> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&self.fd, plain(name)?, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => {
                return Err(refused(format!(
                    "{} is a symbolic link, which is never followed here",
                    self.display(name).display()
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let st = rustix::fs::fstat(&fd)?;
        let ft = FileType::from_raw_mode(st.st_mode);
        if ft != FileType::RegularFile {
            return Err(refused(format!(
                "{} is {}, not a regular file",
                self.display(name).display(),
                what(ft)
            )));
        }
        if st.st_size as u64 > max {
            return Err(refused(format!(
                "{} has {} bytes, more than the {max} it may have",
                self.display(name).display(),
                st.st_size
            )));
        }
        Ok(Some(File::from(fd)))
    }

    /// A whole regular file (see [`AnchoredDir::open_file`]), or None if absent.
    pub fn read(&self, name: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(f) = self.open_file(name, max)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        // The size was checked, but the file may grow while it is read.
        f.take(max + 1).read_to_end(&mut out)?;
        if out.len() as u64 > max {
            return Err(refused(format!(
                "{} grew past {max} bytes while read",
                self.display(name).display()
            )));
        }
        Ok(Some(out))
    }

    /// Creates `name`, which must not exist, with `bytes`, and flushes it to disk.
    pub fn write_new_synced(&self, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.fd, plain(name)?, flags, Mode::from_raw_mode(mode))?;
        let mut f = File::from(fd);
        f.write_all(bytes)?;
        f.sync_all()
    }

    /// A second name for `from` (the entry itself, never what a link points at).
    pub fn link(&self, from: &str, to: &str) -> io::Result<()> {
        rustix::fs::linkat(&self.fd, plain(from)?, &self.fd, plain(to)?, AtFlags::empty())?;
        Ok(())
    }

    /// Renames `from` to `to`, replacing `to`: the one atomic step of every change.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        rustix::fs::renameat(&self.fd, plain(from)?, &self.fd, plain(to)?)?;
        Ok(())
    }

    /// Removes a file (or symbolic link, or special file) if it is there.
    pub fn remove_file(&self, name: &str) -> io::Result<bool> {
        match rustix::fs::unlinkat(&self.fd, plain(name)?, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes `name` and, if it is a real directory, everything in it. Symbolic links are
    /// removed as themselves and never followed.
    pub fn remove_all(&self, name: &str) -> io::Result<bool> {
        match self.kind(name)? {
            None => Ok(false),
            Some(FileType::Directory) => {
                if let Some(sub) = self.open_sub(name)? {
                    for entry in sub.names()? {
                        if let Some(n) = entry.to_str() {
                            sub.remove_all(n)?;
                        } else {
                            // Not UTF-8: unlink by raw name.
                            let raw = entry.into_vec();
                            match rustix::fs::unlinkat(&sub.fd, raw.as_slice(), AtFlags::empty()) {
                                Ok(()) => {}
                                Err(Errno::ISDIR) => {
                                    return Err(refused(format!(
                                        "{} holds a directory whose name is not UTF-8",
                                        sub.path.display()
                                    )));
                                }
                                Err(e) => return Err(e.into()),
                            }
                        }
                    }
                }
                rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR)?;
                Ok(true)
            }
            Some(_) => self.remove_file(name),
        }
    }

    /// The names in the directory (not `.` and `..`).
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        let dup = self.fd.as_fd().try_clone_to_owned()?;
        let mut dir = rustix::fs::Dir::new(dup)?;
        dir.rewind();
        let mut out = Vec::new();
        for entry in dir {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                out.push(OsString::from_vec(name.to_vec()));
            }
        }
        Ok(out)
    }

    /// Flushes the directory's entries (after a rename) to disk.
    pub fn sync(&self) -> io::Result<()> {
        rustix::fs::fsync(&self.fd)?;
        Ok(())
    }

    /// Takes an exclusive lock on the file `name` (created if missing), held until the
    /// returned file is dropped.
    pub fn lock(&self, name: &str) -> io::Result<File> {
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.fd, plain(name)?, flags, Mode::from_raw_mode(0o644))
            .map_err(|e| match e {
                Errno::LOOP => refused(format!(
                    "{} is a symbolic link, which is never followed here",
                    self.display(name).display()
                )),
                e => e.into(),
            })?;
        let ft = FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode);
        if ft != FileType::RegularFile {
            return Err(refused(format!(
                "{} is {}, not a lock file",
                self.display(name).display(),
                what(ft)
            )));
        }
        loop {
            match rustix::fs::flock(&fd, FlockOperation::LockExclusive) {
                Ok(()) => return Ok(File::from(fd)),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_fifos_and_big_files_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = AnchoredDir::open(t.path()).unwrap();
        std::fs::write(t.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink("secret", t.path().join("link")).unwrap();
        let err = d.read("link", 100).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let fifo = std::ffi::CString::new(t.path().join("fifo").into_os_string().into_vec()).unwrap();
        // SAFETY: a valid path string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let err = d.read("fifo", 100).unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
        std::fs::write(t.path().join("big"), [0u8; 10]).unwrap();
        assert!(d.read("big", 9).unwrap_err().to_string().contains("10 bytes"));
        assert_eq!(d.read("big", 10).unwrap().unwrap().len(), 10);
        assert!(d.read("absent", 10).unwrap().is_none());
        assert!(d.read("../etc", 10).is_err());
        std::os::unix::fs::symlink("/", t.path().join("dirlink")).unwrap();
        assert!(d.open_sub("dirlink").is_err());
        assert!(d.lock("link").is_err(), "a lock through a symlink");
    }

    #[test]
    fn write_link_rename_remove() {
        let t = tempfile::tempdir().unwrap();
        let d = AnchoredDir::open(t.path()).unwrap();
        d.write_new_synced("a", b"1", 0o644).unwrap();
        assert!(d.write_new_synced("a", b"2", 0o644).is_err(), "never replaces");
        d.link("a", "b").unwrap();
        d.write_new_synced("c", b"3", 0o644).unwrap();
        d.rename("c", "a").unwrap();
        d.sync().unwrap();
        assert_eq!(d.read("a", 9).unwrap().unwrap(), b"3");
        assert_eq!(d.read("b", 9).unwrap().unwrap(), b"1");
        let mut names = d.names().unwrap();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        let sub = d.create_sub("s").unwrap();
        sub.write_new_synced("f", b"", 0o600).unwrap();
        std::os::unix::fs::symlink(t.path().join("a"), t.path().join("s/l")).unwrap();
        assert!(d.remove_all("s").unwrap());
        assert!(t.path().join("a").exists(), "the link's target stays");
        assert!(!d.remove_all("s").unwrap());
        let _l = d.lock("lock").unwrap();
    }
}

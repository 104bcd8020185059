//! File access inside a directory that someone else may change under us.
//!
//! Everything imgmount reads or writes in a store goes through here, and so can anything else
//! that handles a directory it does not trust (an OCI layout, a sidecar directory). The
//! threat: anyone may replace any file or directory below the trusted root with a symlink
//! (to escape it), a FIFO (to hang an `open`), a device (`/dev/zero`, to be read forever) or a
//! file of another size. What this module guarantees, whatever they do:
//!
//! * **No path below the root is followed through a symlink.** A [`Dir`] is an open
//!   directory descriptor; a relative path below it is resolved by `openat2` with
//!   `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS` where the kernel has it,
//!   else walked component by component with `openat(O_NOFOLLOW | O_DIRECTORY)`. `..`,
//!   `.`, empty and absolute components are refused before any system call.
//! * **Opening never blocks and never yields a non-file.** Files are opened with
//!   `O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC`, then `fstat` must say regular file
//!   (and, where the caller knows it, of the expected size). A FIFO opens at once (and is
//!   refused), a device is refused before a byte is read.
//! * **Changes happen relative to verified descriptors**: `mkdirat`, `unlinkat`, `linkat`,
//!   `renameat2`, `symlinkat`. A symlink where a directory should be is an error, never a
//!   detour; [`Dir::remove_all`] removes a symlink or file as the entry itself and descends
//!   only into real directories, each opened `O_NOFOLLOW | O_DIRECTORY`.
//!
//! The root itself is opened from a path the user gave ([`Dir::open`]), following symlinks:
//! `/var/lib/imgmount` may well be a symlink to a bigger disk, and whoever can replace that
//! path controls the machine anyway. Opening the root once and holding it also means a
//! store swapped out while a command runs is not noticed half way.
//!
//! Errors are `io::Error`s whose message says what was wrong with the entry ("is a
//! symbolic link", "is a FIFO, not a regular file", "has 10 bytes, expected 4096"); callers
//! add the path (see [`Dir::display`]).
//!
//! ```no_run
//! use std::path::Path;
//! use imgmount_format::store::fsops::{Dir, Expect};
//!
//! // The root comes from the user; everything below it is resolved without symlinks.
//! let store = Dir::open(Path::new("/var/lib/imgmount"))?;
//! let objects = store.open_dir("objects")?;
//! // A regular file of exactly the size the image gives, or an error saying what it is.
//! let object = objects.open_file("ab/cdef0123", Expect::Size(8192))?;
//! // Writes: a temporary file, then a rename that never replaces.
//! let fan = objects.create_dir("ab")?;
//! let tmp = fan.create_temp(".tmp-", 0o644)?;
//! tmp.persist_noclobber(&fan, "cdef0123")?;
//! // Removal that never leaves the directory, whatever is planted in it.
//! store.open_dir("tmp")?.remove_all("import-1234")?;
//! # drop(object);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags};
use rustix::io::Errno;

/// Deepest directory nesting [`Dir::remove_all`] descends into: it holds one descriptor per
/// level, so an attacker's million-deep tree must not cost a million descriptors.
pub const MAX_REMOVE_DEPTH: usize = 128;

/// What an opened file must be, beyond a regular file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Any size.
    Any,
    /// Exactly this many bytes (the size an image or an object gives).
    Size(u64),
    /// At most this many bytes (a bound on what will be read into memory).
    AtMost(u64),
}

/// What a directory entry is, without following it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// FIFO, socket or device.
    Special,
}

impl Kind {
    /// "a regular file", "a symbolic link", …: for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::File => "a regular file",
            Kind::Dir => "a directory",
            Kind::Symlink => "a symbolic link",
            Kind::Special => "a FIFO, socket or device",
        }
    }
}

/// A directory entry: its name and kind (not followed).
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: OsString,
    pub kind: Kind,
}

/// What `lstat` says about an entry.
#[derive(Clone, Copy, Debug)]
pub struct Meta {
    pub kind: Kind,
    pub len: u64,
    pub modified: SystemTime,
    pub dev: u64,
    pub ino: u64,
}

/// An open directory: the anchor every path below it is resolved from (see the module
/// documentation). Cheap to clone (the descriptor is shared).
#[derive(Clone)]
pub struct Dir {
    fd: Arc<OwnedFd>,
    /// For messages only: where the directory was when it was opened.
    path: Arc<Path>,
}

impl std::fmt::Debug for Dir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Dir").field(&self.path).finish()
    }
}

/// An error whose message says what is wrong with the entry.
fn refused(kind: io::ErrorKind, msg: impl Into<String>) -> io::Error {
    io::Error::new(kind, msg.into())
}

/// Makes the kernel's terse answers to a refused walk say what happened.
fn explain(e: Errno) -> io::Error {
    match e {
        Errno::LOOP => refused(
            io::ErrorKind::InvalidData,
            "it, or a directory on its path, is a symbolic link, which is never followed here",
        ),
        Errno::NOTDIR => refused(
            io::ErrorKind::InvalidData,
            "a directory on its path is not a directory",
        ),
        Errno::XDEV => refused(
            io::ErrorKind::InvalidData,
            "its path leaves the directory it must stay in",
        ),
        other => other.into(),
    }
}

/// Like [`explain`], for a failed open of `name` in `dir`: says what `name` is.
fn explain_at(dir: BorrowedFd<'_>, name: &OsStr, e: Errno) -> io::Error {
    if !matches!(e, Errno::LOOP | Errno::NOTDIR) {
        return explain(e);
    }
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => {
            let ft = FileType::from_raw_mode(st.st_mode);
            let what = if ft == FileType::Symlink {
                "a symbolic link, which is never followed here".to_owned()
            } else {
                format!("{}, not what was expected", describe(ft))
            };
            refused(io::ErrorKind::InvalidData, format!("{:?} is {what}", name))
        }
        Err(_) => explain(e),
    }
}

fn kind_of(ft: FileType) -> Kind {
    match ft {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::Special,
    }
}

/// What a non-regular file is, for messages.
fn describe(ft: FileType) -> &'static str {
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

/// The components of a relative path, each a plain name; anything else is refused.
fn components(rel: &Path) -> io::Result<Vec<&OsStr>> {
    let mut out = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            _ => {
                return Err(refused(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{:?} is not a plain relative path (no '..', '.', or leading '/')",
                        rel
                    ),
                ));
            }
        }
    }
    // `Path::components` drops `.` in the middle and trailing slashes; refuse those too,
    // so that a path means one thing.
    let bytes = rel.as_os_str().as_bytes();
    if out.is_empty()
        || bytes.ends_with(b"/")
        || bytes
            .split(|b| *b == b'/')
            .any(|c| c.is_empty() || c == b".")
    {
        return Err(refused(
            io::ErrorKind::InvalidInput,
            format!("{rel:?} is not a plain relative path"),
        ));
    }
    Ok(out)
}

/// A single name (no `/`), not `.` or `..`.
fn single(name: &OsStr) -> io::Result<&OsStr> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(refused(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain file name"),
        ));
    }
    Ok(name)
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
const FILE_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);

/// Whether `openat2` works here (it is missing before Linux 5.6 and some seccomp filters
/// refuse it); learned at the first call.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Checks a freshly opened file: regular, and of the size asked for.
fn check_file(file: File, expect: Expect) -> io::Result<File> {
    let st = rustix::fs::fstat(&file)?;
    let ft = FileType::from_raw_mode(st.st_mode);
    if ft != FileType::RegularFile {
        return Err(refused(
            io::ErrorKind::InvalidData,
            format!("is {}, not a regular file", describe(ft)),
        ));
    }
    let len = st.st_size as u64;
    match expect {
        Expect::Size(want) if len != want => Err(refused(
            io::ErrorKind::InvalidData,
            format!("has {len} bytes, expected {want}"),
        )),
        Expect::AtMost(max) if len > max => Err(refused(
            io::ErrorKind::InvalidData,
            format!("has {len} bytes, more than the {max} accepted"),
        )),
        _ => Ok(file),
    }
}

/// Reads a whole opened file of known size, never more than `len` bytes (it may grow).
fn read_exactly(file: &File, len: u64) -> io::Result<Vec<u8>> {
    let cap = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
    let mut bytes = Vec::with_capacity(cap);
    file.take(len).read_to_end(&mut bytes)?;
    if bytes.len() as u64 != len {
        return Err(refused(
            io::ErrorKind::UnexpectedEof,
            format!("shrank while being read ({} of {len} bytes)", bytes.len()),
        ));
    }
    Ok(bytes)
}

/// Reads an open file from an offset with `pread`, leaving its shared file offset alone
/// (the file may be shared with other readers). Bound it with `Read::take`.
pub struct PositionedReader<'a> {
    file: &'a File,
    pos: u64,
}

impl<'a> PositionedReader<'a> {
    pub fn new(file: &'a File, pos: u64) -> Self {
        PositionedReader { file, pos }
    }
}

impl Read for PositionedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(self.file, buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Opens a file a user named (an OCI blob, an index.json), following symlinks as any tool
/// would, but never blocking on a FIFO and never accepting anything but a regular file.
pub fn open_regular(path: &Path, expect: Expect) -> io::Result<File> {
    let fd = rustix::fs::open(path, FILE_FLAGS.difference(OFlags::NOFOLLOW), Mode::empty())?;
    check_file(File::from(fd), expect)
}

/// Reads a whole file a user named, refusing anything larger than `max` (see
/// [`open_regular`]).
pub fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = open_regular(path, Expect::AtMost(max))?;
    let len = file.metadata()?.len();
    read_exactly(&file, len)
}

impl Dir {
    /// Opens a directory from a path the user gave (following symlinks in it: see the module
    /// documentation). Everything below it is then resolved without following any.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let fd = rustix::fs::open(path, DIR_FLAGS.difference(OFlags::NOFOLLOW), Mode::empty())?;
        Ok(Dir {
            fd: Arc::new(fd),
            path: path.into(),
        })
    }

    /// Creates a directory (and its parents) from a path the user gave, then opens it.
    pub fn create(path: &Path) -> io::Result<Dir> {
        std::fs::create_dir_all(path)?;
        Dir::open(path)
    }

    /// Where this directory was when opened, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `rel` below this directory, for messages.
    pub fn display(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn child(&self, fd: OwnedFd, rel: &Path) -> Dir {
        Dir {
            fd: Arc::new(fd),
            path: self.path.join(rel).into(),
        }
    }

    /// Opens `rel` (a plain relative path) with `flags`, never following a symlink on the way
    /// or at the end.
    fn open_beneath(&self, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        let comps = components(rel)?;
        if comps.len() == 1 {
            return rustix::fs::openat(self.fd(), comps[0], flags, Mode::empty())
                .map_err(|e| explain_at(self.fd(), comps[0], e));
        }
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            let resolve =
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(self.fd(), rel, flags, Mode::empty(), resolve) {
                Ok(fd) => return Ok(fd),
                // Not available here (old kernel, seccomp): walk instead, from now on.
                Err(Errno::NOSYS | Errno::PERM) => NO_OPENAT2.store(true, Ordering::Relaxed),
                // Interrupted by a concurrent rename (EAGAIN), or refused somewhere on the
                // path: the walk below gives a stable answer that names the culprit.
                Err(Errno::AGAIN | Errno::LOOP | Errno::NOTDIR | Errno::XDEV) => {}
                Err(e) => return Err(explain(e)),
            }
        }
        self.walk_beneath(&comps, flags)
    }

    /// The component-by-component walk `open_beneath` falls back to.
    fn walk_beneath(&self, comps: &[&OsStr], flags: OFlags) -> io::Result<OwnedFd> {
        let (last, dirs) = comps
            .split_last()
            .ok_or_else(|| refused(io::ErrorKind::InvalidInput, "empty path"))?;
        let mut held: Option<OwnedFd> = None;
        for c in dirs {
            let at = held.as_ref().map_or(self.fd(), |fd| fd.as_fd());
            let next = rustix::fs::openat(at, *c, DIR_FLAGS, Mode::empty())
                .map_err(|e| explain_at(at, c, e))?;
            held = Some(next);
        }
        let at = held.as_ref().map_or(self.fd(), |fd| fd.as_fd());
        rustix::fs::openat(at, *last, flags, Mode::empty()).map_err(|e| explain_at(at, last, e))
    }

    /// Opens the directory `rel` below this one.
    pub fn open_dir(&self, rel: impl AsRef<Path>) -> io::Result<Dir> {
        let rel = rel.as_ref();
        let fd = self.open_beneath(rel, DIR_FLAGS)?;
        Ok(self.child(fd, rel))
    }

    /// Opens the directory `rel` below this one, or `None` if it (or a parent) is missing.
    pub fn open_dir_if_exists(&self, rel: impl AsRef<Path>) -> io::Result<Option<Dir>> {
        match self.open_dir(rel) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens the directory `rel`, creating what is missing of it (mode 0755 before the
    /// umask). An existing component that is not a directory is an error, never followed.
    pub fn create_dir(&self, rel: impl AsRef<Path>) -> io::Result<Dir> {
        let rel = rel.as_ref();
        let mut cur = self.clone();
        let mut walked = PathBuf::new();
        for c in components(rel)? {
            walked.push(c);
            let fd = match rustix::fs::openat(cur.fd(), c, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    match rustix::fs::mkdirat(cur.fd(), c, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    rustix::fs::openat(cur.fd(), c, DIR_FLAGS, Mode::empty())
                        .map_err(|e| explain_at(cur.fd(), c, e))?
                }
                Err(e) => return Err(explain_at(cur.fd(), c, e)),
            };
            cur = self.child(fd, &walked);
        }
        Ok(cur)
    }

    /// Opens the regular file `rel` for reading (see the module documentation).
    pub fn open_file(&self, rel: impl AsRef<Path>, expect: Expect) -> io::Result<File> {
        let fd = self.open_beneath(rel.as_ref(), FILE_FLAGS)?;
        check_file(File::from(fd), expect)
    }

    /// Opens the regular file `rel`, or `None` if it (or a parent) is missing.
    pub fn open_file_if_exists(
        &self,
        rel: impl AsRef<Path>,
        expect: Expect,
    ) -> io::Result<Option<File>> {
        match self.open_file(rel, expect) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads the whole regular file `rel`, refusing one larger than `max` bytes before
    /// reading any of it, and reading no more than the size it had when opened.
    pub fn read_file(&self, rel: impl AsRef<Path>, max: u64) -> io::Result<Vec<u8>> {
        let file = self.open_file(rel, Expect::AtMost(max))?;
        let len = file.metadata()?.len();
        read_exactly(&file, len)
    }

    /// `lstat` of one entry of this directory; `None` if there is none.
    pub fn metadata(&self, name: impl AsRef<OsStr>) -> io::Result<Option<Meta>> {
        let name = single(name.as_ref())?;
        let st = match rustix::fs::statat(self.fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let modified = UNIX_EPOCH
            + Duration::new(
                u64::try_from(st.st_mtime).unwrap_or(0),
                u32::try_from(st.st_mtime_nsec).unwrap_or(0),
            );
        Ok(Some(Meta {
            kind: kind_of(FileType::from_raw_mode(st.st_mode)),
            len: u64::try_from(st.st_size).unwrap_or(0),
            modified,
            dev: st.st_dev,
            ino: st.st_ino,
        }))
    }

    /// The entries of this directory (without `.` and `..`), each with its kind, not
    /// followed.
    pub fn entries(&self) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        let stream = rustix::fs::Dir::read_from(self.fd())?;
        for entry in stream {
            let entry = entry?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let kind = match entry.file_type() {
                FileType::Unknown => match self.metadata(name)? {
                    Some(m) => m.kind,
                    None => continue,
                },
                ft => kind_of(ft),
            };
            out.push(Entry {
                name: name.to_owned(),
                kind,
            });
        }
        Ok(out)
    }

    /// Creates a new file named `PREFIX<random>` here, open for reading and writing, removed
    /// again when the returned [`TempFile`] is dropped unless it was given a name.
    pub fn create_temp(&self, prefix: &str, mode: u32) -> io::Result<TempFile> {
        let flags = OFlags::RDWR
            | OFlags::CREATE
            | OFlags::EXCL
            | OFlags::NOFOLLOW
            | OFlags::NOCTTY
            | OFlags::CLOEXEC;
        loop {
            let name = unique_name(prefix);
            match rustix::fs::openat(self.fd(), &name, flags, Mode::from_raw_mode(mode)) {
                Ok(fd) => {
                    return Ok(TempFile {
                        dir: self.clone(),
                        name,
                        file: File::from(fd),
                        named: false,
                    });
                }
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Creates a new directory named `PREFIX<random>` here; returns its name and the opened
    /// directory. Nothing removes it automatically.
    pub fn create_temp_dir(&self, prefix: &str) -> io::Result<(OsString, Dir)> {
        loop {
            let name = unique_name(prefix);
            match rustix::fs::mkdirat(self.fd(), &name, Mode::from_raw_mode(0o700)) {
                Ok(()) => {
                    let dir = self.open_dir(&name)?;
                    return Ok((name, dir));
                }
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Creates a symlink -> `target` named `PREFIX<random>` here; returns its name.
    pub fn create_temp_symlink(
        &self,
        prefix: &str,
        target: impl AsRef<Path>,
    ) -> io::Result<OsString> {
        loop {
            let name = unique_name(prefix);
            match rustix::fs::symlinkat(target.as_ref(), self.fd(), &name) {
                Ok(()) => return Ok(name),
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Removes the entry `name` if it is not a directory; returns whether it existed.
    pub fn remove_file(&self, name: impl AsRef<OsStr>) -> io::Result<bool> {
        let name = single(name.as_ref())?;
        match rustix::fs::unlinkat(self.fd(), name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the empty directory `name`; returns whether it was removed (false when it is
    /// missing or not empty).
    pub fn remove_empty_dir(&self, name: impl AsRef<OsStr>) -> io::Result<bool> {
        let name = single(name.as_ref())?;
        match rustix::fs::unlinkat(self.fd(), name, AtFlags::REMOVEDIR) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT | Errno::NOTEMPTY | Errno::EXIST) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the entry `name`, whatever it is: a file, symlink, FIFO or device as the entry
    /// itself; a real directory with everything in it, descending only into real
    /// directories (opened `O_NOFOLLOW | O_DIRECTORY`), never through a symlink. Returns
    /// whether it existed. Refuses trees deeper than [`MAX_REMOVE_DEPTH`].
    pub fn remove_all(&self, name: impl AsRef<OsStr>) -> io::Result<bool> {
        self.remove_all_at(single(name.as_ref())?, 0)
    }

    fn remove_all_at(&self, name: &OsStr, depth: usize) -> io::Result<bool> {
        match rustix::fs::unlinkat(self.fd(), name, AtFlags::empty()) {
            Ok(()) => return Ok(true),
            Err(Errno::NOENT) => return Ok(false),
            // Linux answers EISDIR for a directory (POSIX allows EPERM).
            Err(Errno::ISDIR | Errno::PERM) => {}
            Err(e) => return Err(e.into()),
        }
        if depth >= MAX_REMOVE_DEPTH {
            return Err(refused(
                io::ErrorKind::InvalidData,
                format!("is nested deeper than {MAX_REMOVE_DEPTH} directories; not removed"),
            ));
        }
        let sub = match rustix::fs::openat(self.fd(), name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => self.child(fd, Path::new(name)),
            // Swapped for a non-directory since the unlink: remove that instead.
            Err(Errno::LOOP | Errno::NOTDIR) => return self.remove_all_at(name, depth + 1),
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        for entry in sub.entries()? {
            sub.remove_all_at(&entry.name, depth + 1)?;
        }
        match rustix::fs::unlinkat(self.fd(), name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    /// Hard-links `name` here to `to_name` in `to` unless that exists. Returns whether it
    /// linked. A symlink `name` is linked as the symlink itself, never followed.
    pub fn link_noclobber(
        &self,
        name: impl AsRef<OsStr>,
        to: &Dir,
        to_name: impl AsRef<OsStr>,
    ) -> io::Result<bool> {
        let (name, to_name) = (single(name.as_ref())?, single(to_name.as_ref())?);
        match rustix::fs::linkat(self.fd(), name, to.fd(), to_name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::EXIST) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Renames `name` here to `to_name` in `to` unless that exists; returns whether it did.
    pub fn rename_noclobber(
        &self,
        name: impl AsRef<OsStr>,
        to: &Dir,
        to_name: impl AsRef<OsStr>,
    ) -> io::Result<bool> {
        let (name, to_name) = (single(name.as_ref())?, single(to_name.as_ref())?);
        let r =
            rustix::fs::renameat_with(self.fd(), name, to.fd(), to_name, RenameFlags::NOREPLACE);
        match r {
            Ok(()) => Ok(true),
            Err(Errno::EXIST) => Ok(false),
            // A filesystem without RENAME_NOREPLACE: a link cannot replace either.
            Err(Errno::INVAL | Errno::NOSYS) => {
                let linked = self.link_noclobber(name, to, to_name)?;
                self.remove_file(name)?;
                Ok(linked)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Renames `name` here to `to_name` in `to`, replacing what is there (a directory there
    /// makes it fail).
    pub fn rename(
        &self,
        name: impl AsRef<OsStr>,
        to: &Dir,
        to_name: impl AsRef<OsStr>,
    ) -> io::Result<()> {
        let (name, to_name) = (single(name.as_ref())?, single(to_name.as_ref())?);
        rustix::fs::renameat(self.fd(), name, to.fd(), to_name).map_err(Into::into)
    }

    /// Creates the symlink `name` -> `target` here.
    pub fn symlink(&self, target: impl AsRef<Path>, name: impl AsRef<OsStr>) -> io::Result<()> {
        let name = single(name.as_ref())?;
        rustix::fs::symlinkat(target.as_ref(), self.fd(), name).map_err(Into::into)
    }

    /// The target of the symlink `name` here; `None` if there is no such entry or it is
    /// not a symlink.
    pub fn read_link(&self, name: impl AsRef<OsStr>) -> io::Result<Option<PathBuf>> {
        let name = single(name.as_ref())?;
        match rustix::fs::readlinkat(self.fd(), name, Vec::new()) {
            Ok(target) => Ok(Some(PathBuf::from(OsStr::from_bytes(target.as_bytes())))),
            Err(Errno::NOENT | Errno::INVAL) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Flushes the filesystem this directory is on (one `syncfs` for many new files).
    pub fn sync_filesystem(&self) -> io::Result<()> {
        rustix::fs::syncfs(self.fd()).map_err(Into::into)
    }

    /// Opens the regular file `name` here for reading and writing, creating it (`mode`,
    /// before the umask) if it is missing, never truncating it: for lock files and files
    /// that grow across runs. Never follows a symlink, never blocks on a FIFO; anything but
    /// a regular file there is refused (a directory with `IsADirectory`).
    pub fn open_or_create_file(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<File> {
        let name = single(name.as_ref())?;
        let flags = OFlags::RDWR
            | OFlags::CREATE
            | OFlags::NOFOLLOW
            | OFlags::NONBLOCK
            | OFlags::NOCTTY
            | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(self.fd(), name, flags, Mode::from_raw_mode(mode))
            .map_err(|e| explain_at(self.fd(), name, e))?;
        check_file(File::from(fd), Expect::Any)
    }
}

/// Takes an advisory `flock` on an open file (shared or exclusive), waiting while others
/// hold it in the other way.
pub fn lock(file: &File, exclusive: bool) -> io::Result<()> {
    let op = if exclusive {
        rustix::fs::FlockOperation::LockExclusive
    } else {
        rustix::fs::FlockOperation::LockShared
    };
    loop {
        match rustix::fs::flock(file, op) {
            Err(Errno::INTR) => continue,
            r => return r.map_err(Into::into),
        }
    }
}

mod temp;

pub use temp::TempFile;
use temp::unique_name;

#[cfg(test)]
mod tests;

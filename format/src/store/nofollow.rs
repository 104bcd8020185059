//! Opening files the store holds as if any of them could be a trap: a symlink
//! pointing elsewhere, a FIFO that would block an open or a read forever, a
//! directory, or a file of absurd size.
//!
//! Used by the layer records and partial downloads (`layers.rs`,
//! `downloads.rs`) and by record replay; the store-wide safe-open module can
//! replace it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

fn not_regular(path: &Path, kind: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} is a {kind}, not a regular file", path.display()),
    )
}

/// Checks that an open file is a regular file; returns its size.
fn check_regular(file: &File, path: &Path) -> io::Result<u64> {
    let meta = file.metadata()?;
    let ft = meta.file_type();
    if ft.is_file() {
        return Ok(meta.len());
    }
    let kind = if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() || ft.is_block_device() {
        "device"
    } else {
        "special file"
    };
    Err(not_regular(path, kind))
}

/// Opens a regular file for reading without following a final symlink and
/// without blocking on a FIFO; refuses anything else and files over
/// `max_len` bytes. Returns the file and its size.
pub fn open_regular(path: &Path, max_len: Option<u64>) -> io::Result<(File, u64)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let len = check_regular(&file, path)?;
    if let Some(max) = max_len
        && len > max
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} has {len} bytes, more than the {max} allowed",
                path.display()
            ),
        ));
    }
    Ok((file, len))
}

/// Opens (creating it, mode 0600) a regular file for reading and appending,
/// with the same refusals as [`open_regular`].
pub fn open_regular_rw(path: &Path) -> io::Result<(File, u64)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let len = check_regular(&file, path)?;
    Ok((file, len))
}

/// Whether `path` is a real directory (not a symlink to one).
pub fn is_real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_symlinks_fifos_and_big_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"12345").unwrap();
        assert_eq!(open_regular(&f, Some(5)).unwrap().1, 5);
        assert!(open_regular(&f, Some(4)).is_err());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(open_regular(&link, None).is_err());
        assert!(open_regular_rw(&link).is_err());
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Neither open blocks, and both refuse.
        let err = open_regular(&fifo, None).unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
        assert!(open_regular_rw(&fifo).is_err());
        assert!(open_regular(dir.path(), None).is_err());
        assert!(is_real_dir(dir.path()) && !is_real_dir(&link) && !is_real_dir(&f));
    }
}

//! The first boot's `/var`: a copy of the image's, made once into the state folder.
//!
//! `/var` is shared by every image and outlives them, so it is not an overlay: on the first
//! boot it starts as a copy of the booted image's `/var` (the package database, the log
//! directories…), as bootc and ostree do at installation. The copy is made under a temporary
//! name and renamed when complete, so a boot interrupted half-way copies again.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::other("NUL in path"))
}

/// Owner, mode (not for symlinks) and times of `md` onto `dst`, not following symlinks.
fn copy_attrs(dst: &Path, md: &fs::Metadata) -> io::Result<()> {
    let c = cstr(dst)?;
    // SAFETY: `c` is a valid path; lchown does not follow a final symlink.
    if unsafe { libc::lchown(c.as_ptr(), md.uid(), md.gid()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if !md.file_type().is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))?;
    }
    let times = [
        libc::timespec {
            tv_sec: md.atime(),
            tv_nsec: md.atime_nsec(),
        },
        libc::timespec {
            tv_sec: md.mtime(),
            tv_nsec: md.mtime_nsec(),
        },
    ];
    // SAFETY: `times` holds two timespecs, as utimensat requires.
    if unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The extended attributes of `src` onto `dst`, neither followed if a symlink: overlayfs
/// keeps its opaque-directory marks (`trusted.overlay.opaque`) in them.
fn copy_xattrs(src: &Path, dst: &Path) -> io::Result<()> {
    let (s, d) = (cstr(src)?, cstr(dst)?);
    let mut names = vec![0u8; 64 << 10];
    // SAFETY: `s` is a valid path; the buffer's pointer and length describe `names`.
    let n = unsafe { libc::llistxattr(s.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOTSUP) => Ok(()),
            _ => Err(e),
        };
    }
    names.truncate(n as usize);
    let mut value = vec![0u8; 64 << 10];
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = CString::new(name).map_err(|_| io::Error::other("NUL in an xattr name"))?;
        // SAFETY: valid path and name; the buffer's pointer and length describe `value`.
        let len = unsafe {
            libc::lgetxattr(
                s.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if len < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: valid path and name; `len` bytes of `value` were filled by lgetxattr.
        let r = unsafe {
            libc::lsetxattr(
                d.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                len as usize,
                0,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Copies one non-directory entry.
fn copy_entry(src: &Path, dst: &Path, md: &fs::Metadata) -> io::Result<()> {
    let ft = md.file_type();
    if ft.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)?;
    } else if ft.is_file() {
        let mut from = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(src)?;
        let mut to = File::create_new(dst)?;
        io::copy(&mut from, &mut to)?;
    } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() || ft.is_socket() {
        let c = cstr(dst)?;
        // SAFETY: `c` is a valid path; mode and device come from the source's stat.
        if unsafe { libc::mknod(c.as_ptr(), md.mode(), md.rdev()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    copy_attrs(dst, md)
}

/// Copies the tree at `from` to `to` (which must not exist): directories, files, symlinks and
/// special files, with owners, modes and times, and with `xattrs` their extended
/// attributes. Iterative, so depth costs no stack.
pub fn copy_tree(from: &Path, to: &Path, xattrs: bool) -> anyhow::Result<()> {
    let root_md = fs::symlink_metadata(from).with_context(|| format!("stat {}", from.display()))?;
    fs::create_dir(to).with_context(|| format!("creating {}", to.display()))?;
    // Directories get their attributes after their contents, deepest first.
    let mut dirs: Vec<(PathBuf, fs::Metadata)> = vec![(to.to_owned(), root_md)];
    let mut stack = vec![(from.to_owned(), to.to_owned())];
    while let Some((src, dst)) = stack.pop() {
        let entries = fs::read_dir(&src).with_context(|| format!("reading {}", src.display()))?;
        for e in entries {
            let e = e.with_context(|| format!("reading {}", src.display()))?;
            let (s, d) = (e.path(), dst.join(e.file_name()));
            let md = fs::symlink_metadata(&s).with_context(|| format!("stat {}", s.display()))?;
            if md.is_dir() {
                fs::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
                dirs.push((d.clone(), md));
                stack.push((s.clone(), d.clone()));
            } else {
                copy_entry(&s, &d, &md).with_context(|| format!("copying {}", s.display()))?;
            }
            if xattrs {
                copy_xattrs(&s, &d)
                    .with_context(|| format!("copying the xattrs of {}", s.display()))?;
            }
        }
    }
    for (d, md) in dirs.iter().rev() {
        copy_attrs(d, md).with_context(|| format!("setting attributes of {}", d.display()))?;
    }
    Ok(())
}

/// Makes `dir` a copy of `from` unless it exists. Returns whether it copied.
pub fn seed(from: &Path, dir: &Path) -> anyhow::Result<bool> {
    if fs::symlink_metadata(dir).is_ok() {
        return Ok(false);
    }
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.with_file_name(format!(".{}.seeding", name.unwrap_or_default()));
    if fs::symlink_metadata(&tmp).is_ok() {
        fs::remove_dir_all(&tmp)
            .with_context(|| format!("removing the unfinished copy {}", tmp.display()))?;
    }
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    copy_tree(from, &tmp, false)?;
    File::open(&tmp).and_then(|f| f.sync_all()).ok();
    fs::rename(&tmp, dir)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_a_tree_once_with_its_attributes() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("var");
        fs::create_dir_all(src.join("lib/dpkg/info")).unwrap();
        fs::write(src.join("lib/dpkg/status"), b"Package: x\n").unwrap();
        fs::set_permissions(
            src.join("lib/dpkg/status"),
            fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        std::os::unix::fs::symlink("../run/lock", src.join("lock")).unwrap();
        fs::create_dir(src.join("tmp")).unwrap();
        fs::set_permissions(src.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        let dst = t.path().join("state/var");
        assert!(seed(&src, &dst).unwrap());
        assert_eq!(
            fs::read(dst.join("lib/dpkg/status")).unwrap(),
            b"Package: x\n"
        );
        let md = fs::metadata(dst.join("lib/dpkg/status")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o640);
        assert_eq!(
            md.mtime(),
            fs::metadata(src.join("lib/dpkg/status")).unwrap().mtime()
        );
        assert_eq!(
            fs::read_link(dst.join("lock")).unwrap(),
            Path::new("../run/lock")
        );
        assert_eq!(
            fs::metadata(dst.join("tmp")).unwrap().mode() & 0o7777,
            0o1777
        );
        assert!(dst.join("lib/dpkg/info").is_dir());
        // Once there, it is the system's: never copied over again.
        fs::write(dst.join("lib/dpkg/status"), b"changed").unwrap();
        assert!(!seed(&src, &dst).unwrap());
        assert_eq!(fs::read(dst.join("lib/dpkg/status")).unwrap(), b"changed");
    }

    #[test]
    fn an_interrupted_copy_is_redone() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("var");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("f"), b"1").unwrap();
        let dst = t.path().join("var-state");
        let half = t.path().join(".var-state.seeding");
        fs::create_dir_all(half.join("junk")).unwrap();
        assert!(seed(&src, &dst).unwrap());
        assert!(!half.exists());
        assert!(!dst.join("junk").exists());
        assert_eq!(fs::read(dst.join("f")).unwrap(), b"1");
    }
}

//! Whether a directory may be mounted over without hiding something: it must be empty and
//! not itself a mount point, unless the user says `-o nonempty`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Refuses a mount point that holds entries or is already mounted on.
pub fn check_mount_point(mountpoint: &Path) -> Result<()> {
    if let Some(fstype) = mounted_on(mountpoint)? {
        bail!(
            "mount point {} is already a mount point ({fstype}): unmount it first, or use \
             -o nonempty to mount over it",
            mountpoint.display()
        );
    }
    let mut entries = fs::read_dir(mountpoint)
        .with_context(|| format!("reading mount point {}", mountpoint.display()))?;
    if let Some(first) = entries.next() {
        let first = first
            .with_context(|| format!("reading mount point {}", mountpoint.display()))?
            .file_name();
        let more = entries.count();
        let what = match more {
            0 => format!("{first:?}"),
            n => format!("{first:?} and {n} more"),
        };
        bail!(
            "mount point {} is not empty: the mount would hide {what}; use -o nonempty to \
             mount over it",
            mountpoint.display()
        );
    }
    Ok(())
}

/// The filesystem type mounted on `dir`, if something is.
fn mounted_on(dir: &Path) -> Result<Option<String>> {
    let dir = fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
    match fs::read_to_string("/proc/self/mountinfo") {
        Ok(table) => Ok(find_in_mountinfo(&table, &dir)),
        // No /proc: a mount point's device differs from its parent's (bind mounts of the
        // same filesystem are missed, which /proc would have caught).
        Err(_) => {
            let here = fs::metadata(&dir).with_context(|| format!("stat {}", dir.display()))?;
            let parent = fs::metadata(dir.join(".."))
                .with_context(|| format!("stat {}/..", dir.display()))?;
            let root = here.dev() == parent.dev() && here.ino() == parent.ino();
            Ok((here.dev() != parent.dev() || root).then(|| "a mounted filesystem".to_owned()))
        }
    }
}

/// The type of the last mount on `dir` in a `/proc/self/mountinfo` table.
fn find_in_mountinfo(table: &str, dir: &Path) -> Option<String> {
    table.lines().rev().find_map(|line| {
        let mut fields = line.split(' ');
        let point = fields.nth(4)?;
        // After the optional fields comes `-`, then the filesystem type.
        let fstype = fields.skip_while(|f| *f != "-").nth(1)?;
        (PathBuf::from(unescape(point)) == dir).then(|| fstype.to_owned())
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\134` for a backslash).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match octal {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_are_read_with_their_escapes() {
        let table = "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                     90 22 0:50 / /mnt/a\\040b rw,nosuid - fuse.imgmount imgmount:/x ro\n\
                     91 22 0:51 / /mnt/c rw master:3 shared:9 - tmpfs tmpfs rw\n";
        assert_eq!(
            find_in_mountinfo(table, Path::new("/mnt/a b")).as_deref(),
            Some("fuse.imgmount")
        );
        assert_eq!(
            find_in_mountinfo(table, Path::new("/mnt/c")).as_deref(),
            Some("tmpfs")
        );
        assert_eq!(find_in_mountinfo(table, Path::new("/mnt")), None);
        assert_eq!(unescape("a\\134b\\0"), "a\\b\\0");
    }

    #[test]
    fn full_and_empty_directories() {
        let dir = tempfile::tempdir().unwrap();
        check_mount_point(dir.path()).unwrap();
        fs::write(dir.path().join("kept"), b"x").unwrap();
        let err = check_mount_point(dir.path()).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "mount point {} is not empty: the mount would hide \"kept\"; use -o nonempty \
                 to mount over it",
                dir.path().display()
            )
        );
    }
}

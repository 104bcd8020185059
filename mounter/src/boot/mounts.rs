//! The system calls of a boot: the thin layer under [`super::plan`]'s decisions.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, bail};

use super::plan::{Step, overlay_data};
use super::seed;

fn cstr(p: &Path) -> anyhow::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).with_context(|| format!("{} holds a NUL", p.display()))
}

/// mount(2), with the error naming what was mounted where.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: &str,
) -> anyhow::Result<()> {
    let src = CString::new(source)?;
    let tgt = cstr(target)?;
    let ty = fstype.map(CString::new).transpose()?;
    let data_c = CString::new(data)?;
    // SAFETY: all pointers are valid NUL-terminated strings (or null for no type) for the
    // duration of the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            ty.as_ref().map_or(std::ptr::null(), |t| t.as_ptr()),
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                data_c.as_ptr().cast()
            },
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        bail!(
            "mounting {source} ({}) on {}{}: {e}",
            fstype.unwrap_or("bind"),
            target.display(),
            if data.is_empty() {
                String::new()
            } else {
                format!(" with {data}")
            }
        );
    }
    Ok(())
}

/// Detaches the mount at `target` and everything under it (MNT_DETACH).
pub fn detach(target: &Path) -> anyhow::Result<()> {
    let c = cstr(target)?;
    // SAFETY: `c` is a valid path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("detaching {}", target.display()));
    }
    Ok(())
}

/// Creates `path` and its parents; a new last component gets the mode and owner of `like`.
fn make_dir(path: &Path, like: Option<&Path>) -> anyhow::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    let (mode, uid, gid) = match like {
        Some(l) => {
            let md = std::fs::metadata(l).with_context(|| format!("stat {}", l.display()))?;
            (md.mode() & 0o7777, md.uid(), md.gid())
        }
        None => (0o755, 0, 0),
    };
    let c = cstr(path)?;
    // SAFETY: `c` is a valid path; chown/chmod change only its attributes.
    unsafe {
        if libc::chown(c.as_ptr(), uid, gid) != 0 || libc::chmod(c.as_ptr(), mode) != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("setting the owner and mode of {}", path.display()));
        }
    }
    Ok(())
}

/// Carries out one step.
pub fn apply(step: &Step) -> anyhow::Result<()> {
    match step {
        Step::Dir { path, like } => make_dir(path, like.as_deref()),
        Step::Tmpfs { target } => mount(
            "tmpfs",
            target,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=0755",
        ),
        Step::Overlay {
            name,
            lower,
            upper,
            work,
            target,
        } => mount(
            name,
            target,
            Some("overlay"),
            0,
            &overlay_data(lower, upper, work),
        ),
        Step::Seed { from, dir } => {
            if seed::seed(from, dir)? {
                eprintln!(
                    "imgmount: first boot with {}: copied the image's {} there",
                    dir.display(),
                    from.display()
                );
            }
            Ok(())
        }
        Step::Private { target } => mount("none", target, None, libc::MS_PRIVATE, ""),
        Step::Bind { source, target } => {
            let src = source
                .to_str()
                .with_context(|| format!("{} is not UTF-8", source.display()))?;
            mount(src, target, None, libc::MS_BIND, "")
        }
    }
}

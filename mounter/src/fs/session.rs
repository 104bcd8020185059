//! Mounting and unmounting: the parts of a FUSE mount's life outside the request loop.
//!
//! Both ways of mounting end in a `/dev/fuse` descriptor that fuser runs the session on
//! (`Session::from_fd`): as root we open the device and call `mount(2)` here; a normal user
//! runs the setuid `fusermount3`, which mounts and hands the descriptor back over a socket
//! (`_FUSE_COMMFD`). fuser's own mounting is not used: it only falls back to fusermount3
//! after opening `/dev/fuse` itself (which a normal user often cannot), and after the
//! session ends it unmounts the mount point again — by path, racing with a new mount made
//! there in the meantime (seen in tests: a fresh mount vanished). Unmounting mirrors this:
//! `umount2(2)` as root, `fusermount3 -u` otherwise.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// The `fusermount3` program (override with `FUSERMOUNT_PATH`, as libfuse and fuser do).
pub fn fusermount_bin() -> PathBuf {
    std::env::var_os("FUSERMOUNT_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("fusermount3"))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Mounts as root with `mount(2)` and returns the `/dev/fuse` descriptor serving it.
/// `flags` are MS_* flags, `options` extra comma-separated fuse mount options.
pub fn kernel_mount(
    mountpoint: &Path,
    fsname: &str,
    flags: libc::c_ulong,
    options: &str,
) -> anyhow::Result<OwnedFd> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .context("opening /dev/fuse")?;
    let fd = OwnedFd::from(dev);
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut data = format!(
        "fd={},rootmode=40000,user_id={uid},group_id={gid}",
        fd.as_raw_fd()
    );
    if !options.is_empty() {
        data.push(',');
        data.push_str(options);
    }
    let source = CString::new(fsname)?;
    let target = CString::new(mountpoint.as_os_str().as_bytes())?;
    // "fuse.SUBTYPE" selects the fuse filesystem and names the subtype shown in mountinfo.
    let fstype = CString::new("fuse.imgmount")?;
    let cdata = CString::new(data.clone())?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            cdata.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("mount({}, {data})", mountpoint.display()));
    }
    Ok(fd)
}

/// Mounts through `fusermount3` and returns the `/dev/fuse` descriptor it opened.
/// `options` is the comma-separated option string fusermount3 takes with `-o`.
pub fn fusermount_mount(mountpoint: &Path, options: &str) -> anyhow::Result<OwnedFd> {
    let (ours, theirs) = UnixStream::pair().context("creating a socket pair for fusermount3")?;
    let their_fd = theirs.as_raw_fd();
    let bin = fusermount_bin();
    let mut cmd = Command::new(&bin);
    cmd.arg("-o")
        .arg(options)
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", their_fd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: the closure only calls fcntl on a descriptor we own, which is async-signal
    // safe, as required between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let flags = libc::fcntl(their_fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(their_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("running {}", bin.display()))?;
    drop(theirs);
    let fd = recv_fd(&ours);
    drop(ours);
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {}", bin.display()))?;
    match fd {
        Ok(fd) => Ok(fd),
        Err(e) => {
            let msg = String::from_utf8_lossy(&out.stderr);
            let msg = msg.trim();
            if msg.is_empty() {
                bail!(
                    "{} did not mount {}: {e}",
                    bin.display(),
                    mountpoint.display()
                )
            }
            let hint = if msg.contains("/dev/fuse") {
                " (a normal user can only mount where /dev/fuse is readable and writable by it)"
            } else {
                ""
            };
            bail!(
                "{} did not mount {}: {msg}{hint}",
                bin.display(),
                mountpoint.display()
            )
        }
    }
}

/// Receives one file descriptor sent with SCM_RIGHTS.
fn recv_fd(sock: &UnixStream) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: byte.len(),
    };
    // Room for one cmsghdr carrying one int, aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; every pointer set below outlives the recvmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    let n = loop {
        // SAFETY: `msg` points at live buffers of the sizes it states.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "fusermount3 sent no descriptor",
        ));
    }
    // SAFETY: CMSG_FIRSTHDR/CMSG_DATA only do pointer arithmetic within msg_control, whose
    // length the kernel updated; we check the header's level, type and length before
    // reading the int it carries.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
            || ((*cmsg).cmsg_len as usize)
                < libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "fusermount3 answered without a descriptor",
            ));
        }
        let fd: RawFd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
        if fd < 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bad descriptor"));
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Unmounts `mountpoint`: `umount2` as root (lazily if `lazy`, or if the plain unmount
/// finds it busy), `fusermount3 -u` otherwise. Returns whether it had to detach lazily.
pub fn unmount(mountpoint: &Path, lazy: bool) -> anyhow::Result<bool> {
    if is_root() {
        let c = CString::new(mountpoint.as_os_str().as_bytes())?;
        if !lazy {
            // SAFETY: `c` is a valid NUL-terminated path.
            if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
                return Ok(false);
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EBUSY) {
                return Err(e).with_context(|| format!("unmounting {}", mountpoint.display()));
            }
        }
        // SAFETY: as above.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("detaching {}", mountpoint.display()));
        }
        return Ok(true);
    }
    let bin = fusermount_bin();
    let run = |extra: &[&str]| -> anyhow::Result<(bool, String)> {
        let out = Command::new(&bin)
            .arg("-u")
            .args(extra)
            .arg("--")
            .arg(mountpoint)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    };
    if !lazy {
        let (ok, err) = run(&[])?;
        if ok {
            return Ok(false);
        }
        if !err.contains("busy") {
            bail!("{} -u {}: {err}", bin.display(), mountpoint.display());
        }
    }
    let (ok, err) = run(&["-z"])?;
    if !ok {
        bail!("{} -u -z {}: {err}", bin.display(), mountpoint.display());
    }
    Ok(true)
}

/// The filesystem type of the mount at exactly `mountpoint`, from /proc/self/mountinfo
/// (the last one, if several are stacked there).
pub fn mount_type(mountpoint: &Path) -> io::Result<Option<String>> {
    let info = std::fs::read("/proc/self/mountinfo")?;
    Ok(find_mount(&info, mountpoint.as_os_str().as_bytes()).map(|m| m.fstype))
}

/// What mountinfo says about one mount.
struct MountInfo {
    /// `major:minor`
    dev: String,
    fstype: String,
}

/// The device number (`MAJ:MIN`) of the mount at exactly `mountpoint` (the top one).
pub fn mount_dev(mountpoint: &Path) -> Option<String> {
    let info = std::fs::read("/proc/self/mountinfo").ok()?;
    find_mount(&info, mountpoint.as_os_str().as_bytes()).map(|m| m.dev)
}

/// The device number of the imgmount mount at exactly `mountpoint`, also when other mounts
/// are stacked on it (a transient overlay over an imgmount root); the last one if several.
pub fn imgmount_dev(mountpoint: &Path) -> io::Result<Option<String>> {
    let info = std::fs::read("/proc/self/mountinfo")?;
    Ok(
        find_mount_where(&info, mountpoint.as_os_str().as_bytes(), |t| {
            t == "fuse.imgmount"
        })
        .map(|m| m.dev),
    )
}

/// A device number as mountinfo writes it: `MAJ:MIN`.
pub fn dev_string(dev: u64) -> String {
    format!("{}:{}", libc::major(dev), libc::minor(dev))
}

fn find_mount(info: &[u8], mountpoint: &[u8]) -> Option<MountInfo> {
    find_mount_where(info, mountpoint, |_| true)
}

/// The last mount at exactly `mountpoint` whose type `fstype_ok` accepts.
fn find_mount_where(
    info: &[u8],
    mountpoint: &[u8],
    fstype_ok: impl Fn(&str) -> bool,
) -> Option<MountInfo> {
    let mut found = None;
    for line in info.split(|&b| b == b'\n') {
        // id parent major:minor root mountpoint options [optional...] - fstype source super
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let Some(mp) = fields.get(4) else { continue };
        if unescape_mountinfo(mp) != mountpoint {
            continue;
        }
        let Some(dash) = fields.iter().position(|f| *f == b"-") else {
            continue;
        };
        if let (Some(dev), Some(t)) = (fields.get(2), fields.get(dash + 1))
            && fstype_ok(&String::from_utf8_lossy(t))
        {
            found = Some(MountInfo {
                dev: String::from_utf8_lossy(dev).into_owned(),
                fstype: String::from_utf8_lossy(t).into_owned(),
            });
        }
    }
    found
}

/// How many object files the daemon may keep open: half of what the (raised) descriptor
/// limit leaves after a margin for FUSE, logs and sidecars.
pub fn open_file_budget() -> usize {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    let limit = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
        rl.rlim_cur
    } else {
        1024
    };
    (limit.saturating_sub(256) / 2).clamp(16, 1 << 16) as usize
}

#[cfg(test)]
fn find_mount_type(info: &[u8], mountpoint: &[u8]) -> Option<String> {
    find_mount(info, mountpoint).map(|m| m.fstype)
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape_mountinfo(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && let Some(oct) = s.get(i + 1..i + 4)
            && oct.iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push(
                oct.iter()
                    .fold(0u8, |a, c| a.wrapping_mul(8).wrapping_add(c - b'0')),
            );
            i += 4;
            continue;
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// Raises the soft open-file limit to the hard one: every open external file holds its
/// object open, and the default soft limit (1024) is easily reached by a busy mount.
pub fn raise_nofile_limit() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

/// Sets the readahead of the FUSE mount's backing device to `kb` (root only; failures are
/// harmless). Larger readahead means larger READ requests, up to the 1 MiB FUSE allows.
/// The device number comes from mountinfo, not from `stat`, which would go through the
/// mount (and, in flight, keep it busy).
pub fn set_read_ahead(mountpoint: &Path, kb: u32) {
    let Ok(info) = std::fs::read("/proc/self/mountinfo") else {
        return;
    };
    let Some(dev) = find_mount(&info, mountpoint.as_os_str().as_bytes()).map(|m| m.dev) else {
        return;
    };
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    if let Err(e) = std::fs::write(&path, kb.to_string()) {
        log::debug!("cannot set {path}: {e}");
    }
}

/// Absolute form of a path without resolving symlinks through a possibly dead mount.
pub fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
}

/// Escapes a value for a comma-separated mount option string.
pub fn option_safe(s: &OsStr) -> String {
    s.to_string_lossy()
        .chars()
        .map(|c| {
            if c == ',' || c.is_whitespace() || c == '\\' {
                '_'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lookup() {
        let info = b"22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
            40 22 0:55 / /mnt/a\\040b rw,nosuid,nodev shared:1 - fuse.imgmount imgmount ro\n\
            41 22 0:56 / /mnt/c rw - tmpfs tmpfs rw\n\
            42 41 0:57 / /mnt/c ro - fuse.imgmount x ro\n";
        assert_eq!(
            find_mount_type(info, b"/mnt/a b").as_deref(),
            Some("fuse.imgmount")
        );
        assert_eq!(
            find_mount_type(info, b"/mnt/c").as_deref(),
            Some("fuse.imgmount"),
            "the top of a stack wins"
        );
        assert_eq!(find_mount_type(info, b"/mnt"), None);
        assert_eq!(find_mount(info, b"/mnt/c").unwrap().dev, "0:57");
        let under = b"50 1 0:60 / / ro - fuse.imgmount imgmount:/x ro\n\
            51 1 0:61 / / rw - overlay transient rw\n";
        assert_eq!(find_mount(under, b"/").unwrap().fstype, "overlay");
        let img = find_mount_where(under, b"/", |t| t == "fuse.imgmount").unwrap();
        assert_eq!(img.dev, "0:60", "the imgmount under the overlay");
        assert_eq!(find_mount_type(info, b"/proc").as_deref(), Some("proc"));
    }

    #[test]
    fn device_numbers_as_in_mountinfo() {
        assert_eq!(dev_string(libc::makedev(0, 57)), "0:57");
        assert_eq!(dev_string(libc::makedev(259, 1048576)), "259:1048576");
    }

    #[test]
    fn unescape() {
        assert_eq!(unescape_mountinfo(b"a\\134b\\011"), b"a\\b\t");
        assert_eq!(unescape_mountinfo(b"x\\9"), b"x\\9");
    }

    #[test]
    fn option_values_cannot_inject_options() {
        assert_eq!(option_safe(OsStr::new("/a,b c")), "/a_b_c");
    }
}

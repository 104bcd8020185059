//! The kernel as oracle: a tree turned into an image by `imgmount create
//! --digest-store`, mounted by the kernel (erofs loop mount + overlayfs with a
//! data-only object layer), must read back identical to the source tree.
//!
//! Needs root (loop and overlay mounts). Without root it prints why and passes,
//! except under `CI=true`, where a skip is a failure.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use imgmount_format::verity::{HashAlg, digest_file};

mod common;
use common::{data, xattrs};

/// Returns false (after printing why) when the test cannot run here; panics
/// instead under CI, where every test must run.
fn can_run(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        // erofs and overlay may be modules not loaded yet on a fresh machine.
        for module in ["erofs", "overlay", "loop"] {
            let _ = Command::new("modprobe").arg(module).status();
        }
    }
    let why = if !root {
        Some("needs root for loop and overlay mounts")
    } else if !Path::new("/proc/filesystems").exists()
        || !fs::read_to_string("/proc/filesystems")
            .unwrap_or_default()
            .contains("erofs")
    {
        Some("kernel has no erofs")
    } else {
        None
    };
    match why {
        None => true,
        Some(reason) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{what}: cannot run under CI: {reason}");
            }
            eprintln!("skipping {what}: {reason}");
            false
        }
    }
}

/// Sets atime/mtime with nanoseconds without following symlinks.
fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let ts = [
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    // SAFETY: `c` is a valid NUL-terminated path and `ts` points at two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", path.display());
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and a valid value buffer of the given length.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "lsetxattr {name} on {}", path.display());
}

fn mknod(path: &Path, mode: u32, dev: libc::dev_t) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C string.
    let rc = unsafe { libc::mknod(c.as_ptr(), mode, dev) };
    assert_eq!(rc, 0, "mknod {}", path.display());
}

fn write(path: &Path, data: &[u8]) {
    let mut f = fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
}

/// Builds the source tree: every file type, xattrs in every namespace the
/// image carries, hard links, edge sizes, long names, a big and a deep directory.
fn build_tree(root: &Path) {
    fs::create_dir(root).unwrap();
    let files = root.join("files");
    fs::create_dir(&files).unwrap();
    for (name, len) in [
        ("empty", 0),
        ("one", 1),
        ("sixty-four", 64),
        ("sixty-five", 65),
        ("block", 4096),
        ("block-plus-one", 4097),
        ("several-mib", 5 * 1024 * 1024 + 123),
    ] {
        write(&files.join(name), &data(len as u64 + 7, len));
    }
    // Same content twice: one object in the store, two inodes in the image.
    write(&files.join("dup-a"), &data(99, 10_000));
    write(&files.join("dup-b"), &data(99, 10_000));

    // Modes, owners (wide ids force extended inodes), setuid/setgid/sticky.
    let suid = files.join("suid");
    write(&suid, b"#!/bin/sh\necho hi\n");
    fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).unwrap();
    let sgid = root.join("sgid-dir");
    fs::create_dir(&sgid).unwrap();
    fs::set_permissions(&sgid, fs::Permissions::from_mode(0o2775)).unwrap();
    let sticky = root.join("sticky");
    fs::create_dir(&sticky).unwrap();
    fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
    lchown(files.join("one"), Some(1000), Some(1000)).unwrap();
    lchown(files.join("block"), Some(100_000), Some(200_000)).unwrap();
    lchown(&sgid, Some(65534), Some(65534)).unwrap();

    // Hard links, within and across directories, to small and external files.
    fs::hard_link(files.join("sixty-five"), files.join("sixty-five-link")).unwrap();
    fs::hard_link(files.join("sixty-five"), sgid.join("cross-dir-link")).unwrap();
    fs::hard_link(files.join("one"), root.join("one-link")).unwrap();

    // Symlinks: short, long, dangling, absolute.
    let links = root.join("links");
    fs::create_dir(&links).unwrap();
    symlink("../files/one", links.join("relative")).unwrap();
    symlink("/etc/passwd", links.join("absolute")).unwrap();
    symlink("does/not/exist", links.join("dangling")).unwrap();
    symlink("x".repeat(1000), links.join("long")).unwrap();
    lchown(links.join("relative"), Some(5), Some(6)).unwrap();

    // Devices, fifos, sockets.
    let dev = root.join("dev");
    fs::create_dir(&dev).unwrap();
    mknod(
        &dev.join("null"),
        libc::S_IFCHR | 0o666,
        libc::makedev(1, 3),
    );
    mknod(
        &dev.join("big-chr"),
        libc::S_IFCHR | 0o600,
        libc::makedev(4095, 1_000_000),
    );
    mknod(
        &dev.join("loop9"),
        libc::S_IFBLK | 0o660,
        libc::makedev(7, 9),
    );
    mknod(&dev.join("fifo"), libc::S_IFIFO | 0o644, 0);
    mknod(&dev.join("socket"), libc::S_IFSOCK | 0o755, 0);

    // Xattrs: user, trusted (including one that needs escaping), security,
    // shared between inodes and private, and on directories and symlinks.
    set_xattr(&files.join("one"), "user.comment", b"hello");
    set_xattr(&files.join("block"), "user.comment", b"hello");
    set_xattr(&files.join("sixty-four"), "user.comment", b"hello");
    set_xattr(&files.join("several-mib"), "user.big", &data(3, 2000));
    set_xattr(&files.join("empty"), "trusted.private", b"secret");
    set_xattr(&files.join("empty"), "trusted.overlay.custom", b"escaped");
    set_xattr(
        &files.join("empty"),
        "security.label",
        b"system_u:object_r:etc_t:s0",
    );
    set_xattr(&files.join("empty"), "user.empty-value", b"");
    set_xattr(&sgid, "user.on-dir", b"dir value");
    set_xattr(&links.join("relative"), "trusted.on-symlink", b"link value");

    // 255-byte names.
    let long = root.join("long-names");
    fs::create_dir(&long).unwrap();
    write(&long.join("a".repeat(255)), b"long name");
    fs::create_dir(long.join("b".repeat(255))).unwrap();
    write(
        &long.join("b".repeat(255)).join("c".repeat(255)),
        &data(5, 300),
    );

    // A 10,000-entry directory (many dirent blocks: lookup must binary-search them).
    let big = root.join("big");
    fs::create_dir(&big).unwrap();
    for i in 0..10_000u32 {
        let p = big.join(format!("entry-{i:05}"));
        if i % 1000 == 0 {
            write(&p, &data(u64::from(i), 100 + i as usize));
        } else {
            write(&p, &i.to_le_bytes());
        }
    }

    // A deep path.
    let mut deep = root.join("deep");
    for i in 0..100 {
        deep = deep.join(format!("level{i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    write(&deep.join("bottom"), b"the bottom");

    // Distinct mtimes with nanoseconds, set bottom-up so directory mtimes stick.
    let mut all = Vec::new();
    collect_paths(root, &mut all);
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in all.iter().enumerate() {
        set_mtime(
            p,
            1_600_000_000 + i as i64 * 17,
            (i as i64 * 7_919_111) % 1_000_000_000,
        );
    }
    // Several entries sharing the root's mtime exercise compact inodes.
    for name in ["files/one", "files/empty"] {
        set_mtime(&root.join(name), 1_500_000_000, 0);
    }
    set_mtime(root, 1_500_000_000, 0);
}

fn collect_paths(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let is_dir = entry.file_type().unwrap().is_dir();
        out.push(path.clone());
        if is_dir {
            collect_paths(&path, out);
        }
    }
}

/// What the test compares for one path.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    kind: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    size: Option<u64>,
    mtime: (i64, i64),
    rdev: u64,
    content: Option<String>,
    target: Option<Vec<u8>>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// All paths naming the same inode, when more than one does.
    link_group: Vec<String>,
}

fn snapshot(root: &Path) -> BTreeMap<String, Observed> {
    let mut paths = vec![root.to_path_buf()];
    collect_paths(root, &mut paths);
    let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for p in &paths {
        let rel = format!("/{}", p.strip_prefix(root).unwrap().display());
        let m = fs::symlink_metadata(p).unwrap();
        let kind = m.mode() & libc::S_IFMT;
        let is_dir = kind == libc::S_IFDIR;
        if !is_dir {
            by_ino.entry(m.ino()).or_default().push(rel.clone());
        }
        let content =
            (kind == libc::S_IFREG).then(|| digest_file(HashAlg::Sha256, p).unwrap().to_hex());
        let target = (kind == libc::S_IFLNK)
            .then(|| fs::read_link(p).unwrap().as_os_str().as_bytes().to_vec());
        out.insert(
            rel,
            Observed {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                // Directory sizes are filesystem-specific.
                size: (!is_dir).then(|| m.size()),
                mtime: (m.mtime(), m.mtime_nsec()),
                rdev: m.rdev(),
                content,
                target,
                xattrs: xattrs(p),
                link_group: Vec::new(),
            },
        );
    }
    for group in by_ino.values().filter(|g| g.len() > 1) {
        let mut sorted = group.clone();
        sorted.sort();
        for p in group {
            if let Some(o) = out.get_mut(p) {
                o.link_group = sorted.clone();
            }
        }
    }
    out
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Unmounts in reverse order on drop, so a failing assertion leaves no mounts.
struct Mounts(Vec<PathBuf>);

impl Drop for Mounts {
    fn drop(&mut self) {
        for m in self.0.iter().rev() {
            let _ = Command::new("umount").arg(m).status();
        }
    }
}

#[test]
fn kernel_mount_of_created_image_equals_source() {
    if !can_run("kernel_mount_of_created_image_equals_source") {
        return;
    }
    let work = tempfile::Builder::new()
        .prefix("imgmount-oracle")
        .tempdir_in("/var/tmp")
        .unwrap();
    let src = work.path().join("src");
    let objects = work.path().join("objects");
    let image = work.path().join("image.cfs");
    build_tree(&src);

    let bin = env!("CARGO_BIN_EXE_imgmount");
    run_ok(
        Command::new(bin)
            .arg("create")
            .arg("--digest-store")
            .arg(&objects)
            .arg(&src)
            .arg(&image),
    );
    // The same input must give the same bytes.
    let image2 = work.path().join("image2.cfs");
    run_ok(
        Command::new(bin)
            .args(["create", "--threads", "1", "--digest-store"])
            .arg(&objects)
            .arg(&src)
            .arg(&image2),
    );
    assert!(
        fs::read(&image).unwrap() == fs::read(&image2).unwrap(),
        "create is not reproducible"
    );
    // Identical contents are stored once: dup-a and dup-b share one object.
    let dup = digest_file(HashAlg::Sha256, &src.join("files/dup-a")).unwrap();
    assert!(objects.join(dup.object_path()).is_file());

    let meta = work.path().join("meta");
    let mnt = work.path().join("mnt");
    fs::create_dir(&meta).unwrap();
    fs::create_dir(&mnt).unwrap();
    let mut mounts = Mounts(Vec::new());
    run_ok(
        Command::new("mount")
            .args(["-t", "erofs", "-o", "loop,ro"])
            .arg(&image)
            .arg(&meta),
    );
    mounts.0.push(meta.clone());
    let opts = format!(
        "ro,metacopy=on,redirect_dir=on,lowerdir={}::{}",
        meta.display(),
        objects.display()
    );
    run_ok(
        Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&mnt),
    );
    mounts.0.push(mnt.clone());

    let want = snapshot(&src);
    let got = snapshot(&mnt);
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(missing.is_empty(), "missing from the mount: {missing:?}");
    assert!(extra.is_empty(), "extra in the mount: {extra:?}");
    let mut mismatches = Vec::new();
    for (path, w) in &want {
        if got.get(path) != Some(w) {
            mismatches.push(format!(
                "{path}:\n  source {w:?}\n  mount  {:?}",
                got.get(path)
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} paths differ; first ones:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(5)].join("\n")
    );
    assert!(want.len() > 10_100, "tree too small: {}", want.len());
    drop(mounts);
}

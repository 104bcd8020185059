//! The reader on hostile bytes: valid images (written by the composefs crate and by
//! `mkfs.erofs`) are mutated thousands of times with a seeded RNG, and every reader API is
//! run over everything reachable. Nothing may panic and nothing may run unbounded.
//! Also: on the composefs-written image our reader agrees with the independent `erofs-rs`
//! reader on every inode.

mod common;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Rng;
use composefs::erofs::format::FormatVersion;
use imgmount_format::erofs::format::{FileType, S_IFMT};
use imgmount_format::erofs::reader::{Image, Inode};

/// A dumpfile covering every file type, shared and inline xattrs, inline and external
/// files, a hard link, nesting and a directory spanning several blocks.
fn dumpfile(with_whiteout: bool) -> String {
    let digest = "70a9125438f7255245f596c54cebb6621cb9a64f062752cf26763c1b690e7340";
    let digest2 = "1f8e31f0bd8b6b7d4d0ea8b3b5e0c1bd6b2b6c1a7c2b0de64f0c7e8a49a0f5c2";
    let mut s = String::new();
    s += "/ 0 40755 5 0 0 0 1633950376.0 - - - trusted.foo1=bar-1 user.foo2=bar-2\n";
    s += "/blockdev 0 60777 1 0 0 66308 1633950376.0 - - - trusted.bar=bar-2\n";
    s += "/chardev 0 20777 1 0 0 10769 1633950376.0 - - - trusted.foo=bar-2\n";
    s += "/dir 0 40750 3 1000 100 0 1700000000.123456789 - - - user.shared=yes security.selinux=system_u:object_r:etc_t:s0\n";
    s += "/dir/empty 0 100644 1 0 0 0 1633950376.0 - - - user.shared=yes\n";
    s += &format!(
        "/dir/external 100000 100755 1 0 0 0 1731497312.0 70/{} - {digest} user.shared=yes\n",
        &digest[2..]
    );
    s += &format!(
        "/dir/external2 5000 100600 2 7 8 0 1731497312.5 1f/{} - {digest2}\n",
        &digest2[2..]
    );
    s += "/dir/sub 0 40755 2 0 0 0 1633950376.0 - - -\n";
    s += "/dir/sub/deep 15 100777 1 0 0 0 1633950376.0 - FOOBAR\\nINAFILE\\n - user.foo=bar-2 user.shared=yes\n";
    s += "/escaped-xattr 0 100777 1 0 0 0 1633950376.0 - - - trusted.overlay.redirect=/foo\\n user.foo=bar-2 user.overlay.redirect=/foo\\n\n";
    s += "/fifo 0 10777 1 0 0 0 1633950376.0 - - - trusted.bar=bar-2\n";
    s += "/hardlink 0 @100600 - - - - 0.0 /dir/external2 - -\n";
    s += "/inline 15 100777 1 0 0 0 1633950376.0 - FOOBAR\\nINAFILE\\n - user.foo=bar-2\n";
    s += &format!(
        "/inline-large 256 100777 1 0 0 0 1665486376.0 - {} -\n",
        "C".repeat(256)
    );
    s += "/many 0 40755 2 0 0 0 1633950376.0 - - -\n";
    for i in 0..400 {
        s += &format!(
            "/many/file-with-a-longish-name-{i:04} {} 100644 1 0 0 0 1633950376.0 - {} -\n",
            i % 5,
            "x".repeat(i % 5)
        );
    }
    s += "/socket 0 140755 1 0 0 0 1633950376.0 - - -\n";
    s += "/symlink 7 120777 1 0 0 0 1633950376.0 /inline - -\n";
    if with_whiteout {
        s += "/whiteout 0 20777 1 0 0 0 1633950376.0 - - - trusted.foo=bar-2\n";
    }
    s
}

fn composefs_image(version: FormatVersion, with_whiteout: bool) -> Vec<u8> {
    let fs = composefs::dumpfile::dumpfile_to_validated_filesystem::<
        composefs::fsverity::Sha256HashValue,
    >(&dumpfile(with_whiteout))
    .expect("dumpfile parses");
    composefs::erofs::writer::mkfs_erofs_versioned(&fs, version).into_vec()
}

/// A small mkfs.erofs image, if the tool is here.
fn mkfs_erofs_images() -> Vec<(String, Vec<u8>)> {
    let Ok(tmp) = tempfile::tempdir() else {
        return Vec::new();
    };
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("d/e")).unwrap();
    for (i, size) in [0usize, 5, 4096, 5000, 9000].iter().enumerate() {
        std::fs::write(src.join(format!("f{i}")), vec![i as u8 + 1; *size]).unwrap();
        std::fs::write(src.join(format!("d/e/g{i}")), vec![i as u8 + 7; *size]).unwrap();
    }
    for i in 0..200 {
        std::fs::write(src.join("d").join(format!("n{i:03}")), b"x").unwrap();
    }
    std::os::unix::fs::symlink("f1", src.join("l")).unwrap();
    let mut out = Vec::new();
    for (label, args) in [
        ("mkfs-default", &[][..]),
        ("mkfs-chunk", &["--chunksize=4096"][..]),
    ] {
        let img = tmp.path().join("x.img");
        match Command::new("mkfs.erofs")
            .arg("--quiet")
            .args(args)
            .arg(&img)
            .arg(&src)
            .status()
        {
            Ok(st) if st.success() => out.push((label.to_string(), std::fs::read(&img).unwrap())),
            _ => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("mkfs.erofs is missing or failed");
                }
                eprintln!("mkfs.erofs unavailable: hostile test runs on composefs images only");
                return out;
            }
        }
    }
    out
}

/// Exercises one inode through every API; results are ignored, only panics and hangs count.
/// Returns the nids of directory children to visit.
fn exercise_inode(img: &Image, ino: &Inode<'_>, work: &mut usize) -> Vec<u64> {
    let mut children = Vec::new();
    let _ = (
        ino.mode(),
        ino.size(),
        ino.rdev(),
        ino.rdev_major_minor(),
        ino.mtime(),
    );
    let _ = (
        ino.uid(),
        ino.gid(),
        ino.nlink(),
        ino.ino(),
        ino.layout(),
        ino.file_type(),
    );
    if let Ok(xs) = img.xattrs(ino) {
        for x in xs.iter().take(50) {
            let _ = img.get_xattr(ino, &x.name);
        }
    }
    let _ = img.get_xattr(ino, b"user.absent");
    let _ = img.get_xattr(ino, b"trusted.overlay.opaque");
    let _ = img.redirect(ino);
    let _ = img.metacopy(ino);
    let _ = img.inline_data(ino);
    let _ = img.read_link(ino);
    let mut buf = vec![0u8; 9000];
    let size = ino.size();
    for off in [
        0,
        size / 2,
        size.saturating_sub(1),
        size.saturating_sub(5000),
        4095,
        1 << 40,
    ] {
        if let Ok(n) = img.read_at(ino, off, &mut buf) {
            assert!(n <= buf.len());
            assert!(
                n == 0 || off + n as u64 <= size,
                "read past the end of the file"
            );
        }
    }
    if ino.is_dir()
        && let Ok(iter) = img.read_dir(ino, 0)
    {
        let mut cookies = Vec::new();
        for e in iter.take(5000) {
            *work += 1;
            let Ok(e) = e else { break };
            cookies.push(e.next_offset);
            let _ = img.lookup(ino, e.name);
            if e.name != b"." && e.name != b".." {
                children.push(e.nid);
            }
        }
        for c in cookies.iter().step_by(37) {
            if let Ok(it) = img.read_dir(ino, *c) {
                *work += it.take(100).count();
            }
        }
        let _ = img.read_dir(ino, u64::MAX).map(|it| it.take(10).count());
        let _ = img.lookup(ino, b"not-here");
        let _ = img.lookup(ino, &[0xff; 255]);
        let _ = img.lookup(ino, b"");
    }
    children
}

/// Runs every API over everything reachable from the root, bounded.
fn exercise(bytes: Vec<u8>) -> usize {
    let Ok(img) = Image::from_bytes(bytes) else {
        return 0;
    };
    let _ = (img.superblock(), img.composefs_header(), img.root_nid());
    let mut work = 0;
    if let Ok(paths) = img.walk() {
        for (p, _) in paths.iter().take(300) {
            let _ = img.lookup_path(p);
        }
    }
    let _ = img.lookup_path(b"/dir/sub/deep");
    let _ = img.lookup_path(b"/../../x/./y//");
    let mut seen = HashSet::new();
    let mut queue = VecDeque::from([img.root_nid()]);
    while let Some(nid) = queue.pop_front() {
        if !seen.insert(nid) || seen.len() > 3000 {
            continue;
        }
        if let Ok(ino) = img.inode(nid) {
            queue.extend(exercise_inode(&img, &ino, &mut work));
        }
    }
    // Nids that were never referenced, including ones far out of range.
    for nid in [0, 1, 35, 36, 37, 100, u64::MAX, u64::MAX / 32, 1 << 40] {
        if let Ok(ino) = img.inode(nid) {
            exercise_inode(&img, &ino, &mut work);
        }
    }
    work
}

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    let n_mut = 1 + rng.below(6);
    for _ in 0..n_mut {
        if b.is_empty() {
            break;
        }
        // Most mutations land in the metadata: the first few KiB.
        let span = if rng.below(4) == 0 {
            b.len()
        } else {
            b.len().min(8192)
        };
        let pos = rng.below(span);
        match rng.below(9) {
            0 => b[pos] ^= 1 << rng.below(8),
            1 => b[pos] = rng.next() as u8,
            2 | 3 => {
                let width = [2usize, 4, 8][rng.below(3)];
                let pos = pos & !(width - 1);
                let fill: u8 = match rng.below(3) {
                    0 => 0,
                    1 => 0xff,
                    _ => rng.next() as u8,
                };
                for x in b.iter_mut().skip(pos).take(width) {
                    *x = fill;
                }
            }
            4 => {
                // A small value: plausible offsets, counts and nids.
                let v = (rng.next() % 300) as u16;
                let pos = pos & !1;
                if let Some(s) = b.get_mut(pos..pos + 2) {
                    s.copy_from_slice(&v.to_le_bytes());
                }
            }
            5 => b.truncate(rng.below(b.len())),
            6 => {
                // Copy a run of bytes elsewhere: duplicated dirents, inodes, xattrs.
                let len = 1 + rng.below(64);
                let src = rng.below(b.len());
                let chunk: Vec<u8> = b.iter().skip(src).take(len).copied().collect();
                for (i, x) in chunk.into_iter().enumerate() {
                    if let Some(d) = b.get_mut(pos + i) {
                        *d = x;
                    }
                }
            }
            7 => {
                // Superblock fields are the most sensitive.
                let pos = 1024 + rng.below(128);
                if let Some(x) = b.get_mut(pos) {
                    *x = rng.next() as u8;
                }
            }
            _ => {
                let pos = rng.below(b.len());
                b[pos] = b[pos].wrapping_add(1);
            }
        }
    }
    b
}

#[test]
fn mutated_images_never_panic_or_hang() {
    let mut corpus = vec![
        (
            "composefs-v0".to_string(),
            composefs_image(FormatVersion::V0, false),
        ),
        (
            "composefs-v1".to_string(),
            composefs_image(FormatVersion::V1, true),
        ),
        (
            "composefs-v2".to_string(),
            composefs_image(FormatVersion::V2, false),
        ),
    ];
    corpus.extend(mkfs_erofs_images());
    let iterations: usize = std::env::var("HOSTILE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    for (label, base) in &corpus {
        // The unmutated image must be fully readable.
        assert!(
            exercise(base.clone()) > 400,
            "{label}: valid image not explored"
        );
        let mut rng = Rng(0x5EED_0000 ^ base.len() as u64);
        let mut opened = 0;
        let mut slowest = Duration::ZERO;
        for i in 0..iterations {
            let bytes = mutate(&mut rng, base);
            if Image::from_bytes(bytes.clone()).is_ok() {
                opened += 1;
            }
            let t = Instant::now();
            let result = std::panic::catch_unwind(|| exercise(bytes.clone()));
            if result.is_err() {
                let path = std::env::temp_dir().join(format!("hostile-{label}-{i}.img"));
                std::fs::write(&path, &bytes).unwrap();
                panic!(
                    "{label}: iteration {i} panicked; image saved to {}",
                    path.display()
                );
            }
            slowest = slowest.max(t.elapsed());
        }
        eprintln!("{label}: {iterations} mutations, {opened} opened, slowest {slowest:?}");
        // Most mutations leave the superblock intact, so most images are explored deeply.
        assert!(
            opened > iterations / 2,
            "{label}: only {opened} mutated images opened"
        );
        assert!(
            slowest < Duration::from_secs(5),
            "{label}: a mutated image took {slowest:?}"
        );
    }
}

#[test]
fn truncations_at_every_kib_are_errors_not_panics() {
    let base = composefs_image(FormatVersion::V0, false);
    for len in (0..base.len()).step_by(512).chain([1023, 1024, 1151, 1152]) {
        let _ = exercise(base[..len].to_vec());
    }
    assert!(Image::from_bytes(base[..1100].to_vec()).is_err());
}

#[test]
fn directory_loop_is_an_error() {
    // Point a subdirectory's ".." dirent... rather, point "/dir/sub"'s entry for a child
    // at the root: rewrite the nid of the "deep" dirent to the root nid, making a loop.
    let base = composefs_image(FormatVersion::V0, false);
    let img = Image::from_bytes(base.clone()).unwrap();
    let sub = img.lookup_path(b"/dir/sub").unwrap().unwrap();
    let deep = img.lookup(&sub, b"deep").unwrap().unwrap();
    let root = img.root_nid();
    // Find the dirent bytes (nid u64 LE) of "deep" inside /dir/sub's inline data.
    let inline = img.inline_data(&sub).unwrap();
    let start = inline.as_ptr() as usize - img.bytes().as_ptr() as usize;
    let at = inline
        .chunks_exact(12)
        .position(|d| d[..8] == deep.nid.to_le_bytes())
        .expect("dirent of deep");
    let mut bytes = base;
    let off = start + at * 12;
    bytes[off..off + 8].copy_from_slice(&root.to_le_bytes());
    let img = Image::from_bytes(bytes).unwrap();
    let err = img.walk().unwrap_err();
    assert!(err.to_string().contains("reached twice"), "{err}");
    // Lookups through the loop still terminate: /dir/sub/deep is now the root.
    let looped = img
        .lookup_path(b"/dir/sub/deep/dir/sub/deep/dir")
        .unwrap()
        .unwrap();
    assert_eq!(looped.nid, img.lookup_path(b"/dir").unwrap().unwrap().nid);
}

/// Our reader and erofs-rs agree on every inode of a composefs-written image.
#[test]
fn agrees_with_erofs_rs() {
    for version in [FormatVersion::V0, FormatVersion::V1, FormatVersion::V2] {
        let bytes = composefs_image(version, version == FormatVersion::V1);
        let ours = Image::from_bytes(bytes.clone()).unwrap();
        let theirs = erofs_rs::EroFS::new(erofs_rs::backend::SliceImage::new(&bytes)).unwrap();
        let walk = ours.walk().unwrap();
        let our_paths: BTreeMap<Vec<u8>, u64> = walk.iter().cloned().collect();
        let mut compared = 0;
        let mut their_nids = HashSet::new();
        for entry in theirs.walk_dir("/").unwrap() {
            let entry = entry.unwrap();
            let path = entry.dir_entry.path().as_bytes().to_vec();
            let t = entry.inode;
            their_nids.insert(t.id());
            let o = ours.lookup_path(&path).unwrap().unwrap_or_else(|| {
                panic!("{version:?}: we miss {}", String::from_utf8_lossy(&path))
            });
            let what = format!("{version:?} {}", String::from_utf8_lossy(&path));
            assert_eq!(o.nid, t.id(), "{what}: nid");
            assert_eq!(
                o.mode() & 0o7777,
                t.permissions().mode() & 0o7777,
                "{what}: perms"
            );
            assert_eq!(
                o.mode() & S_IFMT,
                t.file_type().as_raw_mode() & S_IFMT,
                "{what}: type"
            );
            assert_eq!(o.size(), t.data_size(), "{what}: size");
            assert_eq!(
                (o.uid(), o.gid(), o.nlink()),
                (t.uid(), t.gid(), t.nlink()),
                "{what}"
            );
            let (sec, nsec) = t.modified_unix();
            assert_eq!(
                (o.mtime().sec as i64, o.mtime().nsec),
                (sec, nsec),
                "{what}: mtime"
            );
            if let Some(dev) = t.device() {
                assert_eq!(o.rdev_major_minor(), dev, "{what}: rdev");
            }
            let our_x: BTreeMap<Vec<u8>, Vec<u8>> = ours
                .xattrs(&o)
                .unwrap()
                .into_iter()
                .map(|x| (x.name.into_owned(), x.value.to_vec()))
                .collect();
            let their_x = theirs.xattrs_inode(t).unwrap();
            assert_eq!(our_x, their_x, "{what}: xattrs");
            if t.is_symlink() {
                let target = theirs.read_link_inode(t).unwrap();
                assert_eq!(
                    ours.read_link(&o).unwrap(),
                    target.as_bytes(),
                    "{what}: target"
                );
            }
            if t.is_file() {
                let file = theirs.open_inode_file(t).unwrap();
                let mut a = vec![0u8; o.size() as usize];
                let mut b = vec![0u8; o.size() as usize];
                let mut n = 0;
                while n < b.len() {
                    let k = file.read_at(&mut b[n..], n as u64).unwrap();
                    assert!(k > 0, "{what}: erofs-rs short read");
                    n += k;
                }
                assert_eq!(ours.read_at(&o, 0, &mut a).unwrap(), a.len());
                assert!(a == b, "{what}: content");
            }
            if o.file_type() == FileType::Directory {
                let names: Vec<Vec<u8>> = ours
                    .read_dir(&o, 0)
                    .unwrap()
                    .map(|e| e.unwrap().name.to_vec())
                    .filter(|n| n != b"." && n != b"..")
                    .collect();
                let theirs_names: Vec<Vec<u8>> = theirs
                    .read_dir(entry.dir_entry.path())
                    .unwrap()
                    .map(|e| e.unwrap().dir_entry.file_name().to_vec())
                    .collect();
                assert_eq!(names, theirs_names, "{what}: listing");
            }
            compared += 1;
        }
        // Every nid we reach, erofs-rs reaches too (hard links appear once in our walk).
        assert!(compared >= 415, "{version:?}: compared only {compared}");
        for nid in our_paths.values() {
            assert!(
                *nid == ours.root_nid() || their_nids.contains(nid),
                "{version:?}: nid {nid} only we reach"
            );
        }
        // composefs specifics the oracle does not interpret.
        let ext = ours.lookup_path(b"/dir/external").unwrap().unwrap();
        assert_eq!(
            ours.redirect(&ext).unwrap(),
            Some(&b"/70/a9125438f7255245f596c54cebb6621cb9a64f062752cf26763c1b690e7340"[..])
        );
        let digest = ours.metacopy(&ext).unwrap().unwrap().unwrap();
        assert_eq!(
            digest.to_hex(),
            "70a9125438f7255245f596c54cebb6621cb9a64f062752cf26763c1b690e7340"
        );
        assert_eq!(ours.metacopy(&ours.root().unwrap()).unwrap(), None);
        let header = ours.composefs_header().expect("composefs header");
        assert_eq!(header.composefs_version, version as u32);
        let dev = ours.lookup_path(b"/blockdev").unwrap().unwrap();
        assert_eq!(dev.rdev(), 66308);
        assert_eq!(dev.rdev_major_minor(), (259, 4));
    }
}

/// Lists and reads all xattrs of a path through the kernel (not following symlinks).
fn kernel_xattrs(path: &std::path::Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 65536];
    // SAFETY: valid C string and buffer of the given length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0, "llistxattr {}", path.display());
    let mut out = BTreeMap::new();
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
    {
        let cn = std::ffi::CString::new(name).unwrap();
        let mut val = vec![0u8; 65536];
        // SAFETY: valid C strings and buffer of the given length.
        let k =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        assert!(k >= 0, "lgetxattr {}", String::from_utf8_lossy(name));
        val.truncate(k as usize);
        out.insert(name.to_vec(), val);
    }
    out
}

/// The kernel's EROFS driver is the reference: mount the composefs-written image (plain
/// erofs, no overlay) and compare every inode's metadata, xattrs, symlink targets and content
/// with ours. Needs root and loop devices; skipped (with a note) otherwise.
#[test]
fn kernel_erofs_mount_agrees() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let img_path = tmp.path().join("cfs.img");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let bytes = composefs_image(FormatVersion::V0, false);
    std::fs::write(&img_path, &bytes).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "erofs", "-o", "loop,ro"])
        .arg(&img_path)
        .arg(&mnt)
        .output();
    match mounted {
        Ok(out) if out.status.success() => {}
        other => {
            eprintln!("cannot mount erofs here ({other:?}): kernel comparison skipped");
            return;
        }
    }
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&mnt);
    let img = Image::open(&img_path).unwrap();
    let mut compared = 0;
    for (path, nid) in img.walk().unwrap() {
        let o = img.inode(nid).unwrap();
        let k = mnt.join(std::str::from_utf8(&path[1..]).unwrap());
        let md = std::fs::symlink_metadata(&k).unwrap();
        let what = String::from_utf8_lossy(&path).into_owned();
        assert_eq!(o.mode(), md.mode(), "{what}: mode");
        assert_eq!((o.uid(), o.gid()), (md.uid(), md.gid()), "{what}");
        assert_eq!(u64::from(o.nlink()), md.nlink(), "{what}: nlink");
        assert_eq!(o.size(), md.size(), "{what}: size");
        assert_eq!(o.rdev(), md.rdev(), "{what}: rdev");
        assert_eq!(o.mtime().sec as i64, md.mtime(), "{what}: mtime");
        assert_eq!(
            i64::from(o.mtime().nsec),
            md.mtime_nsec(),
            "{what}: mtime nsec"
        );
        assert_eq!(o.ino(), md.ino(), "{what}: ino is the nid");
        let ours: BTreeMap<Vec<u8>, Vec<u8>> = img
            .xattrs(&o)
            .unwrap()
            .into_iter()
            .map(|x| (x.name.into_owned(), x.value.to_vec()))
            .collect();
        assert_eq!(ours, kernel_xattrs(&k), "{what}: xattrs");
        if md.file_type().is_symlink() {
            let t = std::fs::read_link(&k).unwrap();
            use std::os::unix::ffi::OsStrExt;
            assert_eq!(
                img.read_link(&o).unwrap(),
                t.as_os_str().as_bytes(),
                "{what}"
            );
        }
        if md.is_file() {
            let want = std::fs::read(&k).unwrap();
            let mut got = vec![0xa5; want.len()];
            assert_eq!(img.read_at(&o, 0, &mut got).unwrap(), want.len());
            assert!(got == want, "{what}: content");
        }
        compared += 1;
    }
    assert!(compared > 400, "compared {compared}");
}

//! The reader against images made by the real `mkfs.erofs` from a directory tree: every
//! path, mode, size, link count, device number, symlink target, xattr and byte of content
//! must match the source tree, for the default layout, `-E noinline_data`, chunk-based
//! files (4-byte block maps) and extended inodes.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use imgmount_format::erofs::format::{DataLayout, FileType};
use imgmount_format::erofs::reader::Image;

/// Deterministic pseudo-random bytes (xorshift), so a content mix-up cannot go unnoticed.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Sets a user xattr; false when the filesystem refuses user xattrs.
fn set_xattr(p: &Path, name: &str, value: &[u8]) -> bool {
    let n = CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a live buffer of the given length.
    let rc = unsafe {
        libc::lsetxattr(
            cpath(p).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    rc == 0
}

fn mknod(p: &Path, mode: u32, dev: u64) -> bool {
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::mknod(cpath(p).as_ptr(), mode, dev) == 0 }
}

/// Xattrs the test set, by source inode number (hard links share them).
type XattrMap = BTreeMap<u64, BTreeMap<Vec<u8>, Vec<u8>>>;

/// Builds the source tree; returns the xattrs it managed to set.
fn build_tree(root: &Path) -> XattrMap {
    let mut xattrs = XattrMap::new();
    let sizes = [0usize, 1, 63, 4095, 4096, 4097, 8191, 12288, 100_000];
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    for (i, size) in sizes.iter().enumerate() {
        std::fs::write(root.join(format!("f{size}")), content(i as u64, *size)).unwrap();
        std::fs::write(
            root.join(format!("a/b/c/g{size}")),
            content(100 + i as u64, *size),
        )
        .unwrap();
    }
    symlink("f1", root.join("link")).unwrap();
    symlink("../../../f4097", root.join("a/b/up")).unwrap();
    let long_target = "x/".repeat(1500) + "end";
    symlink(&long_target, root.join("longlink")).unwrap();
    std::fs::hard_link(root.join("f4097"), root.join("a/hard")).unwrap();
    std::fs::create_dir(root.join("big")).unwrap();
    for i in 0..3000 {
        let name = format!("entry-{i:05}-{}", "n".repeat(i % 40));
        std::fs::write(root.join("big").join(name), content(1000 + i as u64, i % 7)).unwrap();
    }
    std::fs::create_dir(root.join("empty")).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(cpath(&root.join("fifo")).as_ptr(), 0o640) },
        0
    );
    // Devices need root; without it the tree just has none.
    mknod(
        &root.join("null"),
        libc::S_IFCHR | 0o666,
        libc::makedev(1, 3),
    );
    mknod(
        &root.join("blk"),
        libc::S_IFBLK | 0o600,
        libc::makedev(259, 70_000),
    );

    let mut add = |rel: &str, name: &str, value: &[u8]| {
        if set_xattr(&root.join(rel), name, value) {
            let ino = std::fs::symlink_metadata(root.join(rel)).unwrap().ino();
            xattrs
                .entry(ino)
                .or_default()
                .insert(name.as_bytes().to_vec(), value.to_vec());
        }
    };
    add("f1", "user.one", b"1");
    add("f1", "user.empty", b"");
    add("a", "user.dir", b"directory value");
    add("f4097", "user.big", &content(7, 1000));
    // The same xattr on many inodes goes to the shared table.
    for f in ["f0", "f63", "f4095", "f4096", "f8191", "a/b", "link"] {
        add(f, "user.shared", b"same everywhere");
    }
    xattrs
}

struct Expect<'a> {
    src: &'a Path,
    xattrs: &'a XattrMap,
}

fn check_image(img: &Image, ex: &Expect<'_>, label: &str) {
    let walk = img.walk().unwrap_or_else(|e| panic!("{label}: walk: {e}"));
    // Every source path, found by walking the source.
    let mut src_paths = vec![b"/".to_vec()];
    let mut stack = vec![ex.src.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(ex.src).unwrap().to_path_buf();
            src_paths.push([b"/", rel.as_os_str().as_bytes()].concat());
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    // The walk lists each nid once: the hard link's second name is missing from it.
    assert_eq!(walk.len(), src_paths.len() - 1, "{label}: walk size");
    let walk_nids: BTreeMap<&[u8], u64> = walk.iter().map(|(p, n)| (p.as_slice(), *n)).collect();

    let mut checked_content = 0;
    for path in &src_paths {
        let full: PathBuf = ex.src.join(std::str::from_utf8(&path[1..]).unwrap());
        let md = std::fs::symlink_metadata(&full).unwrap();
        let ino = img
            .lookup_path(path)
            .unwrap_or_else(|e| panic!("{label}: lookup {path:?}: {e}"))
            .unwrap_or_else(|| panic!("{label}: {} not found", String::from_utf8_lossy(path)));
        if let Some(n) = walk_nids.get(path.as_slice()) {
            assert_eq!(*n, ino.nid, "{label}: walk and lookup disagree on {path:?}");
        }
        let what = format!("{label}: {}", String::from_utf8_lossy(path));
        assert_eq!(ino.mode(), md.mode(), "{what}: mode");
        assert_eq!(ino.uid(), md.uid(), "{what}: uid");
        assert_eq!(ino.gid(), md.gid(), "{what}: gid");
        if !md.is_dir() {
            assert_eq!(ino.size(), md.size(), "{what}: size");
            assert_eq!(u64::from(ino.nlink()), md.nlink(), "{what}: nlink");
        }
        assert_eq!(ino.mtime().sec as i64, md.mtime(), "{what}: mtime");
        if md.file_type().is_char_device() || md.file_type().is_block_device() {
            assert_eq!(ino.rdev(), md.rdev(), "{what}: rdev");
            let (maj, min) = ino.rdev_major_minor();
            assert_eq!(
                (maj, min),
                (libc::major(md.rdev()), libc::minor(md.rdev())),
                "{what}"
            );
        }
        if md.is_file() {
            let want = std::fs::read(&full).unwrap();
            // Odd-sized reads so reads straddle block and tail boundaries.
            let mut got = Vec::new();
            let mut buf = vec![0u8; 3001];
            loop {
                let n = img.read_at(&ino, got.len() as u64, &mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert!(got == want, "{what}: content differs");
            // A read at an unaligned offset past a block boundary.
            if want.len() > 5000 {
                let mut b = vec![0u8; 2000];
                assert_eq!(img.read_at(&ino, 4000, &mut b).unwrap(), 2000);
                assert_eq!(b, want[4000..6000], "{what}: mid read");
            }
            if want.len() <= 4096 && ino.layout() != DataLayout::ChunkBased {
                assert_eq!(img.read_link(&ino).unwrap(), want, "{what}: whole read");
            }
            checked_content += 1;
        }
        if md.file_type().is_symlink() {
            let target = std::fs::read_link(&full).unwrap();
            assert_eq!(
                img.read_link(&ino).unwrap(),
                target.as_os_str().as_bytes(),
                "{what}"
            );
        }
        if md.is_dir() {
            let names: Vec<Vec<u8>> = img
                .read_dir(&ino, 0)
                .unwrap()
                .map(|e| e.unwrap().name.to_vec())
                .collect();
            let mut want: Vec<Vec<u8>> = std::fs::read_dir(&full)
                .unwrap()
                .map(|e| e.unwrap().file_name().as_bytes().to_vec())
                .chain([b".".to_vec(), b"..".to_vec()])
                .collect();
            want.sort();
            assert_eq!(names, want, "{what}: readdir");
            // Resuming from any cookie continues exactly where the listing was.
            let all: Vec<_> = img.read_dir(&ino, 0).unwrap().map(|e| e.unwrap()).collect();
            for (i, e) in all.iter().enumerate().step_by(97) {
                let rest: Vec<_> = img
                    .read_dir(&ino, e.next_offset)
                    .unwrap()
                    .map(|e| e.unwrap().name)
                    .collect();
                let expect: Vec<_> = all[i + 1..].iter().map(|e| e.name).collect();
                assert_eq!(rest, expect, "{what}: resume after entry {i}");
            }
            for e in &all {
                assert_eq!(
                    img.lookup(&ino, e.name).unwrap().map(|l| l.nid),
                    Some(e.nid),
                    "{what}: lookup of listed name {:?}",
                    String::from_utf8_lossy(e.name)
                );
                let child = img.inode(e.nid).unwrap();
                if e.name != b"." && e.name != b".." {
                    assert_eq!(e.file_type, child.file_type(), "{what}: dirent type");
                }
            }
            for miss in [
                &b"zzzz-not-there"[..],
                b"",
                b"-",
                b"entry-01500",
                b"entry-99999",
            ] {
                assert!(
                    img.lookup(&ino, miss).unwrap().is_none(),
                    "{what}: {miss:?}"
                );
            }
        }
        let got: BTreeMap<Vec<u8>, Vec<u8>> = img
            .xattrs(&ino)
            .unwrap()
            .into_iter()
            .map(|x| (x.name.into_owned(), x.value.to_vec()))
            .filter(|(n, _)| n.starts_with(b"user."))
            .collect();
        let want = ex.xattrs.get(&md.ino()).cloned().unwrap_or_default();
        assert_eq!(got, want, "{what}: xattrs");
        for (n, v) in &want {
            assert_eq!(
                img.get_xattr(&ino, n).unwrap(),
                Some(v.as_slice()),
                "{what}"
            );
        }
        assert_eq!(img.get_xattr(&ino, b"user.absent").unwrap(), None, "{what}");
    }
    assert!(
        checked_content >= 18,
        "{label}: only {checked_content} files checked"
    );
    // The hard link and its original are one inode.
    let a = img.lookup_path(b"/a/hard").unwrap().unwrap();
    let b = img.lookup_path(b"/f4097").unwrap().unwrap();
    assert_eq!(a.nid, b.nid, "{label}: hard link");
    assert_eq!(a.nlink(), 2);
    assert!(img.lookup_path(b"/a/nope").unwrap().is_none());
    assert!(
        img.lookup_path(b"/f1/below").is_err(),
        "path through a file"
    );
    assert_eq!(
        img.lookup_path(b"/a/b/..").unwrap().unwrap().nid,
        img.lookup_path(b"/a").unwrap().unwrap().nid
    );
    assert_eq!(img.root().unwrap().file_type(), FileType::Directory);
}

#[test]
fn mkfs_erofs_images_read_back_exactly() {
    if Command::new("mkfs.erofs").arg("--help").output().is_err() {
        let msg = "mkfs.erofs not found: skipping the mkfs.erofs reader test";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}");
        }
        eprintln!("{msg}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let xattrs = build_tree(&src);
    if xattrs.is_empty() {
        eprintln!("note: this filesystem refuses user xattrs; xattrs are not exercised");
    }
    let ex = Expect {
        src: &src,
        xattrs: &xattrs,
    };
    let variants: [(&str, &[&str]); 6] = [
        ("default", &[]),
        ("noinline", &["-Enoinline_data"]),
        ("chunk4k", &["--chunksize=4096"]),
        ("chunk16k", &["--chunksize=16384"]),
        ("extended", &["-Eforce-inode-extended"]),
        ("mmap", &[]),
    ];
    let mut layouts = std::collections::BTreeSet::new();
    for (label, args) in variants {
        let img_path = tmp.path().join(format!("{label}.img"));
        let out = Command::new("mkfs.erofs")
            .arg("--quiet")
            .args(args)
            .arg(&img_path)
            .arg(&src)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mkfs.erofs {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let img = if label == "mmap" {
            Image::open(&img_path).unwrap()
        } else {
            Image::from_bytes(std::fs::read(&img_path).unwrap()).unwrap()
        };
        assert!(img.composefs_header().is_none());
        check_image(&img, &ex, label);
        for (_, nid) in img.walk().unwrap() {
            layouts.insert(format!("{:?}", img.inode(nid).unwrap().layout()));
        }
        if label == "extended" {
            assert!(img.root().unwrap().header.extended);
        }
    }
    // All three uncompressed layouts were exercised.
    for l in ["FlatPlain", "FlatInline", "ChunkBased"] {
        assert!(layouts.contains(l), "layout {l} never seen: {layouts:?}");
    }
}

#[test]
fn missing_image_is_an_io_error() {
    let err = Image::open(Path::new("/nonexistent/image.erofs")).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/image.erofs"),
        "{err}"
    );
}

//! Layer application semantics on hand-built tars: whiteouts, opaque
//! directories, hard links, PAX records, long names, special files, sparse
//! files, and hostile entries.

mod oci_util;

use std::process::Command;

use imgmount_format::oci::OciError;
use imgmount_format::tree::{LeafContent, Mtime, Node, RegularFile};
use oci_util::*;
use tar::EntryType;

#[test]
fn entries_of_every_kind_keep_their_metadata() {
    let big = vec![7u8; 3 * 4096 + 5];
    let mut l = Layer::new();
    l.dir("etc/")
        .file("etc/empty", b"")
        .file("etc/small", b"hello")
        .file("etc/page", &[1u8; 4096])
        .file("etc/big", &big)
        .file_with("usr/bin/su", b"#!suid", 0o4755, 0, 0)
        .file_with("home/u/f", b"x", 0o2640, 1000, 1001)
        .dir("tmp/")
        .symlink("etc/link", "../usr/bin/su")
        .device("dev/null", EntryType::Char, 1, 3)
        .device("dev/sda", EntryType::Block, 8, 0)
        .device("run/fifo", EntryType::Fifo, 0, 0);
    let (tree, sink) = apply(vec![l.bytes()]).unwrap();

    assert_eq!(content(&tree, &sink, "/etc/empty"), b"");
    assert!(matches!(
        leaf(&tree, "/etc/small").content,
        LeafContent::Regular(RegularFile::Inline(_))
    ));
    assert!(matches!(
        leaf(&tree, "/etc/page").content,
        LeafContent::Regular(RegularFile::External { size: 4096, .. })
    ));
    assert_eq!(content(&tree, &sink, "/etc/big"), big);
    // The external file records the redirect payload XX/rest.
    if let LeafContent::Regular(RegularFile::External {
        payload, digest, ..
    }) = &leaf(&tree, "/etc/big").content
    {
        assert_eq!(
            payload.as_deref(),
            Some(digest.unwrap().object_path().as_bytes())
        );
    }
    assert_eq!(leaf(&tree, "/usr/bin/su").stat.mode, 0o4755);
    let f = leaf(&tree, "/home/u/f");
    assert_eq!((f.stat.mode, f.stat.uid, f.stat.gid), (0o2640, 1000, 1001));
    assert_eq!(f.stat.mtime.sec, 1_700_000_000);
    assert_eq!(
        leaf(&tree, "/etc/link").content,
        LeafContent::Symlink(b"../usr/bin/su".to_vec())
    );
    assert_eq!(
        leaf(&tree, "/dev/null").content,
        LeafContent::CharDevice(libc::makedev(1, 3))
    );
    assert_eq!(
        leaf(&tree, "/dev/sda").content,
        LeafContent::BlockDevice(libc::makedev(8, 0))
    );
    assert_eq!(leaf(&tree, "/run/fifo").content, LeafContent::Fifo);
    // Parents without entries of their own are made 0755.
    assert_eq!(tree.directory(b"/usr/bin").unwrap().stat.mode, 0o755);
}

#[test]
fn whiteouts_remove_lower_entries_only() {
    let mut l1 = Layer::new();
    l1.file("a/x", b"1")
        .file("a/y", b"2")
        .file("b/z", b"3")
        .file("c", b"4");
    let mut l2 = Layer::new();
    l2.file("a/.wh.x", b"")
        .file(".wh.b", b"")
        // A whiteout and a new entry of the same name in one layer: the entry wins,
        // whichever comes first.
        .file("c", b"new")
        .file(".wh.c", b"")
        .file("a/.wh.nothing", b"");
    let (tree, sink) = apply(vec![l1.bytes(), l2.bytes()]).unwrap();
    assert_eq!(names(&tree, "/a"), ["y"]);
    assert!(!exists(&tree, "/b"));
    assert_eq!(content(&tree, &sink, "/c"), b"new");
    assert!(!exists(&tree, "/a/.wh.x"));
}

#[test]
fn opaque_directories_in_any_order() {
    for marker_first in [true, false] {
        let mut l1 = Layer::new();
        l1.file("d/old", b"o")
            .file("d/sub/deep", b"d")
            .file("d/keep/k", b"k");
        let mut l2 = Layer::new();
        if marker_first {
            l2.file("d/.wh..wh..opq", b"");
        }
        l2.file("d/new", b"n").file("d/sub/x", b"x");
        if !marker_first {
            l2.file("d/.wh..wh..opq", b"");
        }
        let (tree, _) = apply(vec![l1.bytes(), l2.bytes()]).unwrap();
        assert_eq!(
            names(&tree, "/d"),
            ["new", "sub"],
            "marker first: {marker_first}"
        );
        // The lower content of a directory the layer re-creates is hidden too.
        assert_eq!(
            names(&tree, "/d/sub"),
            ["x"],
            "marker first: {marker_first}"
        );
    }
}

#[test]
fn hard_links_within_and_across_layers() {
    let mut l1 = Layer::new();
    l1.file(
        "bin/a",
        b"content of a, long enough to be an object: 0123456789012345678901234567890123456789",
    )
    .hardlink("bin/b", "bin/a");
    let mut l2 = Layer::new();
    l2.hardlink("usr/c", "bin/a").file("bin/b", b"replaced");
    let (tree, _) = apply(vec![l1.bytes(), l2.bytes()]).unwrap();
    let id = |p: &str| match tree.node(p.as_bytes()).unwrap() {
        Some(Node::Leaf(id)) => *id,
        _ => panic!("{p}"),
    };
    assert_eq!(id("/bin/a"), id("/usr/c"));
    assert_ne!(id("/bin/a"), id("/bin/b"));
    let counts = tree.link_counts();
    assert_eq!(counts[id("/bin/a").0], 2);
    assert_eq!(counts[id("/bin/b").0], 1);
    // Replaced leaves are dropped from the table.
    assert_eq!(tree.leaves.len(), 2);
}

#[test]
fn pax_records_xattrs_times_and_long_names() {
    let long_dir = "d".repeat(150);
    let long_name = format!("{long_dir}/{}", "n".repeat(200));
    let mut l = Layer::new();
    l.pax(&[
        ("SCHILY.xattr.user.color", b"blue"),
        (
            "SCHILY.xattr.security.capability",
            b"\x01\x00\x00\x02\x00\x20\x00\x00",
        ),
        ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
        ("mtime", b"1700000000.123456789"),
        ("uid", b"70000"),
    ])
    .file("x", b"data");
    // GNU long name and long link name (the tar crate writes ././@LongLink).
    l.file(&long_name, b"long").symlink("s", &"t".repeat(300));
    l.hardlink("hl", &long_name);
    // PAX path and linkpath.
    let pax_name = format!("p/{}", "q".repeat(180));
    l.pax(&[("path", pax_name.as_bytes())])
        .raw(b"ignored", EntryType::Regular, b"pp", b"");
    l.pax(&[("linkpath", pax_name.as_bytes())])
        .raw(b"plink", EntryType::Link, b"", b"ignored");
    let (tree, sink) = apply(vec![l.bytes()]).unwrap();

    let x = leaf(&tree, "/x");
    assert_eq!(x.stat.xattrs.get(&b"user.color"[..]).unwrap(), b"blue");
    assert_eq!(x.stat.xattrs.len(), 3);
    assert!(x.stat.xattrs.contains_key(&b"trusted.overlay.opaque"[..]));
    assert_eq!(
        x.stat.mtime,
        Mtime {
            sec: 1_700_000_000,
            nsec: 123_456_789
        }
    );
    assert_eq!(x.stat.uid, 70000);
    assert_eq!(content(&tree, &sink, &format!("/{long_name}")), b"long");
    assert_eq!(
        leaf(&tree, "/s").content,
        LeafContent::Symlink("t".repeat(300).into_bytes())
    );
    assert_eq!(
        tree.node(b"/hl").unwrap(),
        tree.node(format!("/{long_name}").as_bytes()).unwrap()
    );
    assert_eq!(content(&tree, &sink, &format!("/{pax_name}")), b"pp");
    assert_eq!(
        tree.node(b"/plink").unwrap(),
        tree.node(format!("/{pax_name}").as_bytes()).unwrap()
    );
}

/// Go's archive/tar (umoci, most registries) writes names and xattr values it cannot put
/// in the ustar header as PAX records, whose length prefix lets a value hold newlines.
#[test]
fn pax_records_are_read_by_their_lengths() {
    let target = "caf\u{e9}\nlink".as_bytes();
    let name = "dir/new\nline";
    let cap = b"\x01\x00\x00\x02\x0a\x00\x00\x00";
    let mut l = Layer::new();
    l.dir("dir/");
    l.pax(&[("linkpath", target)])
        .raw(b"dir/sym", EntryType::Symlink, b"", b"ustar-target");
    l.pax(&[("path", name.as_bytes())])
        .raw(b"dir/ustar-name", EntryType::Regular, b"nl", b"");
    l.pax(&[("SCHILY.xattr.security.capability", cap)])
        .file("cap", b"c");
    // The value's newlines must not end the record: what follows it in the value is not
    // a record of its own (the tar crate took this for the entry's link target).
    l.pax(&[("SCHILY.xattr.user.note", b"\n22 linkpath=/etc/evil\n")])
        .raw(b"innocent", EntryType::Symlink, b"", b"harmless");
    // A size record after a record with a newline, and a header that says 0 (as Go writes
    // for files of 8 GiB and more): the data must still be framed by the record.
    l.pax(&[("SCHILY.xattr.user.n", b"a\nb"), ("size", b"600")])
        .raw_with_size(b"sized", &[b's'; 600], 0);
    l.file("after", b"still in step");
    let bytes = l.bytes();
    let (tree, sink) = apply(vec![bytes.clone()]).unwrap();

    assert_eq!(
        leaf(&tree, "/dir/sym").content,
        LeafContent::Symlink(target.to_vec())
    );
    assert_eq!(content(&tree, &sink, "/dir/new\nline"), b"nl");
    assert!(!exists(&tree, "/dir/ustar-name"));
    assert_eq!(
        leaf(&tree, "/cap")
            .stat
            .xattrs
            .get(&b"security.capability"[..])
            .unwrap(),
        cap
    );
    let innocent = leaf(&tree, "/innocent");
    assert_eq!(innocent.content, LeafContent::Symlink(b"harmless".to_vec()));
    assert_eq!(
        innocent.stat.xattrs.get(&b"user.note"[..]).unwrap(),
        b"\n22 linkpath=/etc/evil\n"
    );
    assert_eq!(content(&tree, &sink, "/sized"), vec![b's'; 600]);
    assert_eq!(content(&tree, &sink, "/after"), b"still in step");

    // GNU tar reads the archive the same way.
    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("pax.tar");
    std::fs::write(&tarball, &bytes).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let status = Command::new("tar")
        .arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(&out)
        .status()
        .expect("GNU tar runs");
    assert!(status.success());
    use std::os::unix::ffi::OsStrExt;
    let gnu = std::fs::read_link(out.join("dir/sym")).unwrap();
    assert_eq!(gnu.as_os_str().as_bytes(), target);
    assert_eq!(std::fs::read(out.join("dir/new\nline")).unwrap(), b"nl");
    let gnu = std::fs::read_link(out.join("innocent")).unwrap();
    assert_eq!(gnu.as_os_str().as_bytes(), b"harmless");
    assert_eq!(std::fs::read(out.join("sized")).unwrap(), vec![b's'; 600]);
}

/// An old GNU sparse file with more holes than its header lists is followed by extension
/// blocks; whoever frames the archive must step over them as the tar crate does.
#[test]
fn gnu_sparse_extension_blocks_keep_the_archive_in_step() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("holes");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(&path).unwrap();
        for i in 0..40u64 {
            f.seek(SeekFrom::Start(i * (64 << 10))).unwrap();
            f.write_all(format!("island {i}").as_bytes()).unwrap();
        }
        f.set_len(40 * (64 << 10)).unwrap();
    }
    std::fs::write(dir.path().join("next"), b"after the holes").unwrap();
    let expected = std::fs::read(&path).unwrap();
    let tarball = dir.path().join("gnu.tar");
    let status = Command::new("tar")
        .args(["--sparse", "--format=gnu", "-cf"])
        .arg(&tarball)
        .arg("-C")
        .arg(dir.path())
        .args(["holes", "next"])
        .status()
        .expect("GNU tar runs");
    assert!(status.success());
    let (tree, sink) = apply(vec![std::fs::read(&tarball).unwrap()]).unwrap();
    assert_eq!(content(&tree, &sink, "/holes"), expected);
    assert_eq!(content(&tree, &sink, "/next"), b"after the holes");
}

#[test]
fn malformed_pax_records_are_refused_not_guessed() {
    for (what, records) in [
        ("a non-numeric uid", vec![("uid", &b"12x"[..])]),
        ("two sizes", vec![("size", &b"1"[..]), ("size", &b"2"[..])]),
    ] {
        let mut l = Layer::new();
        l.pax(&records).file("f", b"x");
        let err = apply(vec![l.bytes()]).err().unwrap().to_string();
        assert!(err.contains("PAX"), "{what}: {err}");
    }
    // A record whose length runs past the header: nothing is guessed from the rest.
    let mut l = Layer::new();
    l.raw(b"pax_header", EntryType::XHeader, b"99 path=evil\n", b"")
        .file("f", b"x");
    let err = apply(vec![l.bytes()]).err().unwrap().to_string();
    assert!(
        err.contains("PAX extended header at byte 0: record at byte 0: length 99"),
        "{err}"
    );
}

#[test]
fn sparse_files_gnu_and_pax() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(b"start").unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(b"middle").unwrap();
        f.set_len(3 << 20).unwrap();
    }
    let expected = std::fs::read(&path).unwrap();
    for format in ["gnu", "posix"] {
        let tarball = dir.path().join(format!("{format}.tar"));
        let status = Command::new("tar")
            .args(["--sparse", &format!("--format={format}"), "-cf"])
            .arg(&tarball)
            .arg("-C")
            .arg(dir.path())
            .arg("sparse")
            .status()
            .expect("GNU tar runs");
        assert!(status.success());
        let bytes = std::fs::read(&tarball).unwrap();
        // The archive really is sparse: far smaller than the file.
        assert!(bytes.len() < 64 << 10, "{format}: {} bytes", bytes.len());
        let (tree, sink) = apply(vec![bytes]).unwrap();
        assert_eq!(names(&tree, "/"), ["sparse"], "{format}");
        assert_eq!(content(&tree, &sink, "/sparse"), expected, "{format}");
    }
}

fn entry_error(layers: Vec<Vec<u8>>) -> (String, String) {
    match apply(layers) {
        Err(OciError::Entry { entry, reason, .. }) => (entry, reason),
        Err(other) => panic!("expected an entry error, got {other}"),
        Ok(_) => panic!("expected an entry error, got success"),
    }
}

#[test]
fn dot_dot_components_are_refused() {
    let mut l = Layer::new();
    l.raw(b"../../etc/evil", EntryType::Regular, b"x", b"");
    let (entry, reason) = entry_error(vec![l.bytes()]);
    assert_eq!(entry, "../../etc/evil");
    assert!(reason.contains(".."), "{reason}");

    let mut l = Layer::new();
    l.file("a", b"x").raw(b"b", EntryType::Link, b"", b"../a");
    let (entry, reason) = entry_error(vec![l.bytes()]);
    assert_eq!(entry, "b");
    assert!(reason.contains(".."), "{reason}");
}

#[test]
fn absolute_paths_are_rooted_in_the_image() {
    let mut l = Layer::new();
    l.raw(b"/etc/abs", EntryType::Regular, b"x", b"");
    let (tree, _) = apply(vec![l.bytes()]).unwrap();
    assert!(exists(&tree, "/etc/abs"));
}

#[test]
fn symlinked_parents_resolve_inside_the_tree() {
    let mut l1 = Layer::new();
    l1.dir("usr/lib/")
        .symlink("lib", "usr/lib")
        .symlink("up", "../../../..")
        .symlink("abs", "/usr")
        .symlink("loop", "loop")
        .file("plain", b"f");
    let mut l2 = Layer::new();
    l2.file("lib/libc.so", b"c")
        .file("up/escaped", b"e")
        .file("abs/x", b"a");
    let (tree, _) = apply(vec![l1.bytes(), l2.bytes()]).unwrap();
    assert!(exists(&tree, "/usr/lib/libc.so"));
    // `..` past the root stops at the root, as in a chroot.
    assert!(exists(&tree, "/escaped"));
    assert!(exists(&tree, "/usr/x"));
    assert_eq!(
        leaf(&tree, "/lib").content,
        LeafContent::Symlink(b"usr/lib".to_vec())
    );

    let mut l3 = Layer::new();
    l3.file("loop/x", b"");
    let (_, reason) = entry_error(vec![l1_clone(), l3.bytes()]);
    assert!(reason.contains("symbolic links"), "{reason}");

    let mut l4 = Layer::new();
    l4.file("plain/x", b"");
    let (entry, reason) = entry_error(vec![l1_clone(), l4.bytes()]);
    assert_eq!(entry, "plain/x");
    assert!(reason.contains("not a directory"), "{reason}");
}

fn l1_clone() -> Vec<u8> {
    let mut l1 = Layer::new();
    l1.symlink("loop", "loop").file("plain", b"f");
    l1.bytes()
}

#[test]
fn hard_links_to_missing_names_or_directories_are_refused() {
    let mut l = Layer::new();
    l.hardlink("a", "nowhere");
    let (entry, reason) = entry_error(vec![l.bytes()]);
    assert_eq!(entry, "a");
    assert!(reason.contains("does not exist"), "{reason}");

    let mut l = Layer::new();
    l.dir("d/").hardlink("a", "d");
    let (_, reason) = entry_error(vec![l.bytes()]);
    assert!(reason.contains("directory"), "{reason}");
}

#[test]
fn duplicate_entries_last_one_wins() {
    let mut l = Layer::new();
    l.file("f", b"first")
        .file("f", b"second")
        .dir("d/")
        .file("d/child", b"c")
        .file("d", b"now a file")
        .file("e", b"a file")
        .dir("e/");
    let (tree, sink) = apply(vec![l.bytes()]).unwrap();
    assert_eq!(content(&tree, &sink, "/f"), b"second");
    assert_eq!(content(&tree, &sink, "/d"), b"now a file");
    assert!(tree.directory(b"/e").is_ok());
    assert_eq!(tree.leaves.len(), 2);
}

#[test]
fn truncated_layers_are_errors() {
    let mut l = Layer::new();
    l.file("f", &[5u8; 10000]);
    let mut bytes = l.bytes();
    bytes.truncate(512 + 5000);
    assert!(apply(vec![bytes]).is_err());
}

#[test]
fn absurdly_deep_or_long_names_are_refused() {
    let deep = "d/".repeat(1100) + "f";
    let mut l = Layer::new();
    l.pax(&[("path", deep.as_bytes())])
        .raw(b"x", EntryType::Regular, b"", b"");
    let (_, reason) = entry_error(vec![l.bytes()]);
    assert!(reason.contains("deeper than"), "{reason}");

    let long = "n/".repeat(2100);
    let mut l = Layer::new();
    l.pax(&[("path", long.as_bytes())])
        .raw(b"x", EntryType::Regular, b"", b"");
    let (_, reason) = entry_error(vec![l.bytes()]);
    assert!(reason.contains("longer than"), "{reason}");

    // Symlinks cannot build the depth either: a link 600 deep, then 500 more.
    let mut l = Layer::new();
    let target = "/".to_string() + &"a/".repeat(600);
    l.pax(&[("linkpath", target.as_bytes())])
        .raw(b"s", EntryType::Symlink, b"", b"x");
    let mut l2 = Layer::new();
    let through = "s/".to_string() + &"b/".repeat(500) + "f";
    l2.pax(&[("path", through.as_bytes())])
        .raw(b"x", EntryType::Regular, b"", b"");
    let (_, reason) = entry_error(vec![l.bytes(), l2.bytes()]);
    assert!(reason.contains("deeper than"), "{reason}");
}

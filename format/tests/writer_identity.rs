//! The image writer against the composefs crate, whose V0/V1 writer is byte-identical
//! to C `mkcomposefs`: fixed trees with every kind of file, random trees, determinism,
//! version choice, refusals, and a kernel mount of one image when the kernel allows.

mod common;

use common::*;
use composefs::fsverity::{FsVerityHashValue, Sha256HashValue, Sha512HashValue};
use imgmount_format::erofs::format::ComposefsHeader;
use imgmount_format::erofs::writer::{ImageWriter, WriteError, WriteOptions, write_image};
use imgmount_format::tree::{LeafContent, RegularFile, Stat, Tree};
use imgmount_format::verity::HashAlg;
use proptest::prelude::*;

const VERSIONS: [(u32, u32); 3] = [(0, 0), (0, 1), (1, 1)];

fn opts(min: u32, max: u32) -> WriteOptions {
    WriteOptions {
        min_version: min,
        max_version: max,
    }
}

fn assert_identical<H: FsVerityHashValue>(tree: &Tree, what: &str) {
    for (min, max) in VERSIONS {
        let ours = write_image(tree, &opts(min, max)).expect("our writer");
        let theirs = oracle::<H>(tree, min, max).expect("oracle");
        if let Some(at) = first_difference(&ours, &theirs) {
            panic!(
                "{what}, versions {min}..{max}: images differ at byte {at} (ours {} bytes, oracle {} bytes)",
                ours.len(),
                theirs.len()
            );
        }
    }
}

fn makedev(major: u64, minor: u64) -> u64 {
    // The kernel's 32-bit encoding, which is what EROFS stores.
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// A tree with every file type and most corner cases, digests of `alg`.
fn fixed_tree(alg: HashAlg) -> Tree {
    let t0 = 1_700_000_000;
    let root = with_xattrs(
        stat(0o755, 0, 0, t0, 0),
        &[(b"security.selinux", b"system_u:object_r:root_t:s0")],
    );
    let mut t = Tree::new(root);
    let plain = |mode| stat(mode, 0, 0, t0, 0);
    let labelled = |mode| {
        with_xattrs(
            stat(mode, 0, 0, t0, 0),
            &[(b"security.selinux", b"system_u:object_r:usr_t:s0")],
        )
    };

    add_dir(&mut t, b"/dir", labelled(0o755));
    add_leaf(
        &mut t,
        b"/dir/empty",
        plain(0o644),
        LeafContent::Regular(RegularFile::Inline(vec![])),
    );
    let one = add_leaf(
        &mut t,
        b"/dir/one",
        labelled(0o644),
        LeafContent::Regular(RegularFile::Inline(b"x".to_vec())),
    );
    add_leaf(
        &mut t,
        b"/dir/sixtyfour",
        labelled(0o600),
        LeafContent::Regular(RegularFile::Inline(vec![0xa5; 64])),
    );
    add_leaf(
        &mut t,
        b"/dir/inline3000",
        plain(0o644),
        LeafContent::Regular(RegularFile::Inline(vec![7; 3000])),
    );
    add_leaf(
        &mut t,
        b"/dir/inline5000",
        plain(0o644),
        LeafContent::Regular(RegularFile::Inline(vec![9; 5000])),
    );
    add_leaf(
        &mut t,
        b"/ext65",
        labelled(0o644),
        external(65, Some(fake_digest(alg, 1))),
    );
    add_leaf(
        &mut t,
        b"/ext4096",
        labelled(0o755),
        external(4096, Some(fake_digest(alg, 2))),
    );
    add_leaf(
        &mut t,
        b"/ext_7mib",
        plain(0o644),
        external(7 << 20, Some(fake_digest(alg, 3))),
    );
    add_leaf(
        &mut t,
        b"/ext_nodigest",
        plain(0o644),
        external(100_000, None),
    );
    add_leaf(
        &mut t,
        b"/ext_payload_only",
        plain(0o644),
        LeafContent::Regular(RegularFile::External {
            size: 12345,
            payload: Some(fake_digest(alg, 9).object_path().into_bytes()),
            digest: None,
        }),
    );
    add_leaf(
        &mut t,
        b"/ext_5gib",
        stat(0o644, 0, 0, t0, 0),
        external(5 << 30, Some(fake_digest(alg, 4))),
    );
    add_leaf(
        &mut t,
        b"/ext_512_chunks",
        plain(0o644),
        external(1 << 52, Some(fake_digest(alg, 6))),
    );
    add_leaf(
        &mut t,
        b"/ext_1024_chunks",
        plain(0o644),
        external(1 << 53, Some(fake_digest(alg, 7))),
    );
    add_leaf(
        &mut t,
        b"/ext_same_digest",
        plain(0o644),
        external(65, Some(fake_digest(alg, 1))),
    );
    add_leaf(
        &mut t,
        b"/link",
        plain(0o777),
        LeafContent::Symlink(b"dir/one".to_vec()),
    );
    add_leaf(
        &mut t,
        b"/link_long",
        plain(0o777),
        LeafContent::Symlink(vec![b'l'; 4000]),
    );
    add_leaf(
        &mut t,
        b"/link_2000",
        plain(0o777),
        LeafContent::Symlink(vec![b'm'; 2000]),
    );
    add_leaf(
        &mut t,
        b"/chr",
        plain(0o600),
        LeafContent::CharDevice(makedev(4095, 0xfffff)),
    );
    add_leaf(
        &mut t,
        b"/blk",
        plain(0o660),
        LeafContent::BlockDevice(makedev(8, 1)),
    );
    add_leaf(&mut t, b"/fifo", plain(0o644), LeafContent::Fifo);
    add_leaf(&mut t, b"/sock", plain(0o755), LeafContent::Socket);

    // Xattrs: escaped, shared between inodes, ACLs, every prefix.
    add_leaf(
        &mut t,
        b"/xattrs",
        with_xattrs(
            plain(0o644),
            &[
                (b"user.foo", b"bar"),
                (b"user.overlay.keep", b"me"),
                (b"trusted.overlay.foo", b"escaped"),
                (b"trusted.overlay.opaque", b"y"),
                (b"trusted.other", b"t"),
                (b"security.capability", b"\x01\x00\x00\x02"),
                (
                    b"system.posix_acl_access",
                    b"\x02\x00\x00\x00\x01\x00\x06\x00",
                ),
                (b"system.posix_acl_default", b"\x02\x00\x00\x00"),
                (b"lustre.lov", b"l"),
                (b"system.other", b"o"),
                (b"user.big", &[0x5a; 3000]),
            ],
        ),
        LeafContent::Regular(RegularFile::Inline(b"hello".to_vec())),
    );
    for i in 0..5u8 {
        let name = format!("/shared{i}");
        add_leaf(
            &mut t,
            name.as_bytes(),
            with_xattrs(
                plain(0o644),
                &[(b"user.foo", b"bar"), (b"user.common", &[i % 2])],
            ),
            LeafContent::Regular(RegularFile::Inline(vec![i; usize::from(i)])),
        );
    }

    // Hard links, within and across directories.
    add_link(&mut t, b"/hl_one", one);
    add_dir(&mut t, b"/dir2", plain(0o755));
    add_dir(&mut t, b"/dir2/sub", plain(0o755));
    add_link(&mut t, b"/dir2/sub/hl_one", one);
    let deep_first = add_leaf(
        &mut t,
        b"/dir2/sub/target",
        plain(0o644),
        external(999, Some(fake_digest(alg, 5))),
    );
    add_link(&mut t, b"/aa_link_to_deeper", deep_first);

    // Long names.
    let long = [b"/dir2/".as_slice(), &[b'n'; 255]].concat();
    add_leaf(
        &mut t,
        &long,
        plain(0o644),
        LeafContent::Regular(RegularFile::Inline(vec![])),
    );
    let long_dir = [b"/".as_slice(), &[b'd'; 255]].concat();
    add_dir(&mut t, &long_dir, plain(0o755));

    // Owners and times that need extended inodes.
    add_leaf(
        &mut t,
        b"/big_ids",
        stat(0o644, 100_000, 4_000_000_000, t0, 0),
        LeafContent::Regular(RegularFile::Inline(vec![1])),
    );
    add_leaf(
        &mut t,
        b"/nsec",
        stat(0o644, 0, 0, t0, 123_456_789),
        LeafContent::Regular(RegularFile::Inline(vec![2])),
    );
    add_leaf(
        &mut t,
        b"/older",
        stat(0o644, 0, 0, t0 - 86_400, 0),
        LeafContent::Regular(RegularFile::Inline(vec![3])),
    );
    add_dir(&mut t, b"/newer_dir", stat(0o700, 1, 1, t0 + 1, 1));

    // Root children that sort around the stubs and `.`: "!", "-" sort before ".".
    add_leaf(&mut t, b"/!bang", plain(0o644), LeafContent::Fifo);
    add_leaf(&mut t, b"/-dash", plain(0o644), LeafContent::Fifo);
    add_leaf(
        &mut t,
        b"/0a",
        plain(0o644),
        LeafContent::Regular(RegularFile::Inline(b"real".to_vec())),
    );
    add_dir(&mut t, b"/ff", plain(0o755));

    // A 10,000-entry directory: several dirent blocks.
    add_dir(&mut t, b"/many", plain(0o755));
    for i in 0..10_000 {
        let name = format!("/many/file-{i:05}");
        add_leaf(
            &mut t,
            name.as_bytes(),
            plain(0o644),
            LeafContent::Regular(RegularFile::Inline(vec![])),
        );
    }

    // A path 100 directories deep.
    let mut path = b"/deep".to_vec();
    add_dir(&mut t, &path, plain(0o755));
    for _ in 0..99 {
        path.extend_from_slice(b"/d");
        add_dir(&mut t, &path, plain(0o755));
    }
    path.extend_from_slice(b"/leaf");
    add_leaf(
        &mut t,
        &path,
        plain(0o644),
        LeafContent::Regular(RegularFile::Inline(b"bottom".to_vec())),
    );
    t
}

fn add_whiteouts(t: &mut Tree) {
    let st = stat(0o000, 0, 0, 1_700_000_000, 0);
    add_leaf(t, b"/dir/gone", st.clone(), LeafContent::CharDevice(0));
    add_leaf(t, b"/dir/gone2", st.clone(), LeafContent::CharDevice(0));
    add_leaf(t, b"/dir2/sub/gone", st.clone(), LeafContent::CharDevice(0));
    add_leaf(t, b"/root_gone", st, LeafContent::CharDevice(0));
}

fn header(image: &[u8]) -> ComposefsHeader {
    ComposefsHeader::parse(image).expect("header")
}

#[test]
fn fixed_tree_is_byte_identical() {
    assert_identical::<Sha256HashValue>(&fixed_tree(HashAlg::Sha256), "fixed tree");
}

#[test]
fn fixed_tree_with_whiteouts_is_byte_identical() {
    let mut t = fixed_tree(HashAlg::Sha256);
    add_whiteouts(&mut t);
    assert_identical::<Sha256HashValue>(&t, "fixed tree with whiteouts");
}

#[test]
fn sha512_tree_is_byte_identical() {
    let mut t = fixed_tree(HashAlg::Sha512);
    add_whiteouts(&mut t);
    assert_identical::<Sha512HashValue>(&t, "sha512 tree");
    let image = write_image(&t, &WriteOptions::default()).unwrap();
    // 4 + 64 bytes: the metacopy of a sha512 digest, algorithm 2.
    assert!(image.windows(4).any(|w| w == [0, 68, 0, 2]));
}

#[test]
fn empty_tree_is_byte_identical() {
    assert_identical::<Sha256HashValue>(&Tree::new(stat(0o755, 0, 0, 0, 0)), "empty tree");
    let odd_root = with_xattrs(
        stat(0o1777, 70_000, 5, 1 << 34, 1),
        &[(b"trusted.overlay.opaque", b"z"), (b"user.x", b"")],
    );
    assert_identical::<Sha256HashValue>(&Tree::new(odd_root), "root only");
}

#[test]
fn writing_is_deterministic() {
    let mut t = fixed_tree(HashAlg::Sha256);
    add_whiteouts(&mut t);
    let a = write_image(&t, &WriteOptions::default()).unwrap();
    let b = write_image(&t.clone(), &WriteOptions::default()).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.len() % 4096, 0);
}

#[test]
fn version_follows_mkcomposefs_rules() {
    let plain = fixed_tree(HashAlg::Sha256);
    let mut wh = plain.clone();
    add_whiteouts(&mut wh);
    let v =
        |t: &Tree, min, max| header(&write_image(t, &opts(min, max)).unwrap()).composefs_version;
    assert_eq!(v(&plain, 0, 1), 0);
    assert_eq!(v(&plain, 1, 1), 1);
    assert_eq!(
        v(&wh, 0, 1),
        1,
        "a whiteout raises the version when allowed"
    );
    assert_eq!(v(&wh, 0, 0), 0, "max 0 keeps version 0");
    assert_eq!(v(&plain, 1, 0), 1, "max below min counts as min");
    assert_eq!(
        write_image(&plain, &opts(2, 2)),
        Err(WriteError::UnsupportedVersion { min: 2, max: 2 })
    );
    assert_eq!(
        write_image(&plain, &opts(0, 7)),
        Err(WriteError::UnsupportedVersion { min: 0, max: 7 })
    );
    let h = header(&write_image(&plain, &WriteOptions::default()).unwrap());
    assert_eq!(h.flags & 1, 1, "the tree has POSIX ACLs");
    let no_acl = Tree::new(stat(0o755, 0, 0, 0, 0));
    assert_eq!(
        header(&write_image(&no_acl, &WriteOptions::default()).unwrap()).flags,
        0
    );
}

#[test]
fn payload_is_derived_from_the_digest_unless_told_not_to() {
    let d = fake_digest(HashAlg::Sha256, 42);
    let mut with_payload = Tree::new(stat(0o755, 0, 0, 0, 0));
    add_leaf(
        &mut with_payload,
        b"/f",
        stat(0o644, 0, 0, 0, 0),
        external(5000, Some(d)),
    );
    let mut without = Tree::new(stat(0o755, 0, 0, 0, 0));
    add_leaf(
        &mut without,
        b"/f",
        stat(0o644, 0, 0, 0, 0),
        LeafContent::Regular(RegularFile::External {
            size: 5000,
            payload: None,
            digest: Some(d),
        }),
    );
    let a = write_image(&with_payload, &WriteOptions::default()).unwrap();
    let b = write_image(&without, &WriteOptions::default()).unwrap();
    assert_eq!(a, b);
    let redirect = format!("/{}", d.object_path());
    let has = |img: &[u8]| {
        img.windows(redirect.len())
            .any(|w| w == redirect.as_bytes())
    };
    assert!(has(&a));
    let c = ImageWriter::new(&without)
        .derive_payload(false)
        .write()
        .unwrap();
    assert!(!has(&c));
    assert_ne!(a, c);
}

#[test]
fn empty_external_file_is_a_plain_empty_file() {
    let mut ext = Tree::new(stat(0o755, 0, 0, 0, 0));
    add_leaf(
        &mut ext,
        b"/f",
        stat(0o644, 0, 0, 0, 0),
        external(0, Some(fake_digest(HashAlg::Sha256, 1))),
    );
    let mut inline = Tree::new(stat(0o755, 0, 0, 0, 0));
    add_leaf(
        &mut inline,
        b"/f",
        stat(0o644, 0, 0, 0, 0),
        LeafContent::Regular(RegularFile::Inline(vec![])),
    );
    assert_eq!(
        write_image(&ext, &WriteOptions::default()).unwrap(),
        write_image(&inline, &WriteOptions::default()).unwrap()
    );
}

#[test]
fn unrepresentable_trees_are_refused() {
    let one = |content: LeafContent, st: Stat| {
        let mut t = Tree::new(stat(0o755, 0, 0, 0, 0));
        add_leaf(&mut t, b"/x", st, content);
        write_image(&t, &WriteOptions::default())
    };
    let st = stat(0o644, 0, 0, 0, 0);
    assert!(matches!(
        one(LeafContent::Symlink(vec![]), st.clone()),
        Err(WriteError::BadSymlink { .. })
    ));
    assert!(matches!(
        one(LeafContent::Symlink(vec![b'a'; 4096]), st.clone()),
        Err(WriteError::BadSymlink { .. })
    ));
    assert!(matches!(
        one(LeafContent::CharDevice(1 << 32), st.clone()),
        Err(WriteError::DeviceNumberTooLarge { .. })
    ));
    assert!(matches!(
        one(
            LeafContent::Regular(RegularFile::Inline(vec![0; 5001])),
            st.clone()
        ),
        Err(WriteError::InlineTooLarge { size: 5001, .. })
    ));
    assert!(matches!(
        one(LeafContent::Fifo, stat(0o10_0644 | 0o200000, 0, 0, 0, 0)),
        Err(WriteError::BadMode { .. })
    ));
    let long_xattr = with_xattrs(st.clone(), &[(&[b'u'; 256], b"")]);
    assert!(matches!(
        one(LeafContent::Fifo, long_xattr),
        Err(WriteError::BadXattrName { .. })
    ));
    let huge_value = with_xattrs(st.clone(), &[(b"user.v", &vec![0; 70_000])]);
    assert!(matches!(
        one(LeafContent::Fifo, huge_value),
        Err(WriteError::XattrTooLarge { .. })
    ));
    assert!(matches!(
        one(external((1 << 53) + 1, None), st.clone()),
        Err(WriteError::TooLarge { .. })
    ));
    // A name the tree API would refuse, slipped in through the public map.
    let mut t = Tree::new(stat(0o755, 0, 0, 0, 0));
    let id = t.push_leaf(imgmount_format::tree::Leaf {
        stat: st,
        content: LeafContent::Fifo,
    });
    t.root
        .entries
        .insert(b"a/b".to_vec(), imgmount_format::tree::Node::Leaf(id));
    assert!(matches!(
        write_image(&t, &WriteOptions::default()),
        Err(WriteError::BadName { .. })
    ));
    t.root.entries.clear();
    t.root.entries.insert(
        b"ok".to_vec(),
        imgmount_format::tree::Node::Leaf(imgmount_format::tree::LeafId(9)),
    );
    assert_eq!(
        write_image(&t, &WriteOptions::default()),
        Err(WriteError::BadLeafId(9))
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_sha256_trees_are_byte_identical((root, ops) in ops_strategy(48)) {
        let tree = build_tree(HashAlg::Sha256, root, &ops);
        for (min, max) in VERSIONS {
            let ours = write_image(&tree, &opts(min, max)).expect("our writer");
            let theirs = oracle::<Sha256HashValue>(&tree, min, max).expect("oracle");
            prop_assert!(first_difference(&ours, &theirs).is_none(),
                "versions {}..{}: differ at {:?}", min, max, first_difference(&ours, &theirs));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_sha512_trees_are_byte_identical((root, ops) in ops_strategy(32)) {
        let tree = build_tree(HashAlg::Sha512, root, &ops);
        let ours = write_image(&tree, &WriteOptions::default()).expect("our writer");
        let theirs = oracle::<Sha512HashValue>(&tree, 0, 1).expect("oracle");
        prop_assert!(first_difference(&ours, &theirs).is_none(),
            "differ at {:?}", first_difference(&ours, &theirs));
    }
}

/// Loop-mounts one image with the kernel's EROFS driver and lists a few entries.
/// Skipped (with a note) where the kernel or the privileges are missing.
#[test]
fn kernel_mounts_our_image() {
    use std::process::Command;
    let mut t = fixed_tree(HashAlg::Sha256);
    add_whiteouts(&mut t);
    let image = write_image(&t, &WriteOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("image.cfs");
    let mnt = dir.path().join("mnt");
    std::fs::write(&img, &image).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "erofs", "-o", "loop,ro"])
        .arg(&img)
        .arg(&mnt)
        .output();
    match mounted {
        Ok(o) if o.status.success() => {}
        other => {
            eprintln!("skipping kernel mount: {other:?}");
            return;
        }
    }
    let check = || -> Result<(), String> {
        let names = |p: &str| -> Result<Vec<String>, String> {
            let mut v: Vec<String> = std::fs::read_dir(mnt.join(p))
                .map_err(|e| e.to_string())?
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            Ok(v)
        };
        let root = names("")?;
        for want in [
            "dir",
            "dir2",
            "many",
            "deep",
            "00",
            "ff",
            "0a",
            "link",
            "root_gone",
        ] {
            if !root.iter().any(|n| n == want) {
                return Err(format!("root lacks {want}: {root:?}"));
            }
        }
        if names("many")?.len() != 10_000 {
            return Err("many has the wrong number of entries".into());
        }
        let link = std::fs::read_link(mnt.join("link")).map_err(|e| e.to_string())?;
        if link.as_os_str() != "dir/one" {
            return Err(format!("link reads {link:?}"));
        }
        let data = std::fs::read(mnt.join("dir/sixtyfour")).map_err(|e| e.to_string())?;
        if data != vec![0xa5; 64] {
            return Err("inline content differs".into());
        }
        let data = std::fs::read(mnt.join("dir/inline5000")).map_err(|e| e.to_string())?;
        if data != vec![9; 5000] {
            return Err("block + tail content differs".into());
        }
        let md = std::fs::metadata(mnt.join("ext_5gib")).map_err(|e| e.to_string())?;
        if md.len() != 5 << 30 {
            return Err(format!("ext_5gib has size {}", md.len()));
        }
        let mut deep = String::from("deep");
        for _ in 0..99 {
            deep.push_str("/d");
        }
        deep.push_str("/leaf");
        if std::fs::read(mnt.join(deep)).map_err(|e| e.to_string())? != b"bottom" {
            return Err("deep leaf differs".into());
        }
        Ok(())
    };
    let result = check();
    let umount = Command::new("umount").arg(&mnt).status();
    assert!(umount.is_ok_and(|s| s.success()), "umount failed");
    result.unwrap();
}

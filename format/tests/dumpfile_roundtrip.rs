//! Dumpfile parsing and printing: exact round trips, agreement with the composefs crate
//! (whose writer is byte-identical to C mkcomposefs), and robustness on mutated input.

mod common;

use std::collections::HashMap;

use common::Rng;
use imgmount_format::composefs::tree_from_image;
use imgmount_format::dumpfile::{
    DumpfileError, Reason, erofs_dir_size, parse_dumpfile, write_dumpfile_to_string,
};
use imgmount_format::erofs::reader::Image;
use imgmount_format::tree::{
    Directory, Leaf, LeafContent, LeafId, Mtime, Node, RegularFile, Stat, Tree,
};
use imgmount_format::verity::{Digest, HashAlg};
use proptest::prelude::*;

const SHA256: &str = "ab0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const SHA512: &str = "cd0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\
                      202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f";

/// Every file type, escapes in every field, a hard link whose first name sorts into a
/// subdirectory, a whiteout, both digest algorithms, shared and unshared xattrs.
///
/// Facts it encodes (from composefs-info.c and the EROFS writer):
/// - root SIZE is 4096: `.`, `..` and the 256 `00`..`ff` stubs fill more than half a block;
///   `/dir` is 27 (`.` + `..`) plus 12 + name per entry; an empty directory is 27.
/// - xattrs stored in the inode print before shared ones (here `user.shared`, used by two
///   inodes, and the root's `security.selinux`, copied to every stub).
/// - a later name of a hard link repeats the inode with `@` and the first path as payload.
/// - format 1 marks `/dir`, which holds a whiteout, with the opaque pair.
/// - a second count of 2^64-1 prints as -1 (C prints it signed).
fn fixture() -> String {
    let p256 = format!("ab/{}", &SHA256[2..]);
    format!(
        r"/ 4096 40755 4 0 0 0 1700000000.5 - - - user.a=1 security.selinux=system_u:object_r:root_t:s0
/a\x20b 7 100644 1 1000 1000 0 1700000001.0 - \x00\x01\xff\\\n\t\x20 -
/blk 0 60660 1 0 6 2049 1700000000.5 - - -
/chr 0 20666 1 0 5 259 1700000000.5 - - -
/dash 1 100600 1 0 0 0 1700000000.5 - \x2d -
/dir 88 40700 2 0 0 0 1700000000.5 - - - trusted.overlay.opaque=x user.overlay.opaque=x
/dir/ext 5000 100644 1 0 0 0 1700000000.5 {p256} - {SHA256} user.shared=s
/dir/ext512 70000 104755 1 0 0 0 1700000000.5 - - {SHA512}
/dir/hl 6 100644 2 0 0 0 1700000000.5 - hello\n - user.h=1
/dir/wh 0 20000 1 0 0 0 1700000000.5 - - -
/empty 27 40755 2 4294967295 4294967295 0 0.0 - - -
/emptyfile 0 100644 1 0 0 0 1700000000.5 - - -
/fifo 0 10644 1 0 0 0 -1.999999999 - - -
/hardlinked 6 @100644 2 0 0 0 1700000000.5 /dir/hl hello\n - user.h=1
/link 8 120777 1 0 0 0 1700000000.5 ../x\x20y=z - -
/lonedash 1 120777 1 0 0 0 1700000000.5 \x2d - -
/sock 0 140755 1 0 0 0 1700000000.5 - - -
/xattrs 0 100644 1 0 0 0 1700000000.5 - - - trusted.overlay.foo=bar user.dash=- user.empty= user.eq=a\x3db user.sp=a\x20b\nc user.z=1 user.shared=s
"
    )
}

fn leaf_at<'t>(tree: &'t Tree, path: &[u8]) -> (LeafId, &'t Leaf) {
    match tree.node(path).unwrap() {
        Some(Node::Leaf(id)) => (*id, tree.leaf(*id)),
        other => panic!("{} is {other:?}", String::from_utf8_lossy(path)),
    }
}

#[test]
fn fixture_round_trips_exactly() {
    let text = fixture();
    let tree = parse_dumpfile(text.as_bytes()).unwrap();
    assert_eq!(write_dumpfile_to_string(&tree), text);

    let (hl, leaf) = leaf_at(&tree, b"/dir/hl");
    assert_eq!(leaf_at(&tree, b"/hardlinked").0, hl);
    assert_eq!(
        leaf.content,
        LeafContent::Regular(RegularFile::Inline(b"hello\n".to_vec()))
    );
    assert_eq!(
        leaf_at(&tree, b"/a b").1.content,
        LeafContent::Regular(RegularFile::Inline(vec![
            0, 1, 0xff, b'\\', b'\n', b'\t', b' '
        ]))
    );
    assert_eq!(
        leaf_at(&tree, b"/dash").1.content,
        LeafContent::Regular(RegularFile::Inline(b"-".to_vec()))
    );
    assert_eq!(
        leaf_at(&tree, b"/lonedash").1.content,
        LeafContent::Symlink(b"-".to_vec())
    );
    assert_eq!(
        leaf_at(&tree, b"/link").1.content,
        LeafContent::Symlink(b"../x y=z".to_vec())
    );
    assert!(leaf_at(&tree, b"/dir/wh").1.content.is_whiteout());
    assert_eq!(
        leaf_at(&tree, b"/blk").1.content,
        LeafContent::BlockDevice(2049)
    );
    match &leaf_at(&tree, b"/dir/ext512").1.content {
        LeafContent::Regular(RegularFile::External {
            size,
            payload,
            digest,
        }) => {
            assert_eq!(*size, 70000);
            assert_eq!(*payload, None);
            assert_eq!(digest.unwrap().alg(), HashAlg::Sha512);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(leaf_at(&tree, b"/dir/ext512").1.stat.mode, 0o4755);
    let fifo = &leaf_at(&tree, b"/fifo").1.stat;
    assert_eq!(
        fifo.mtime,
        Mtime {
            sec: u64::MAX,
            nsec: 999_999_999
        }
    );
    let xattrs = &leaf_at(&tree, b"/xattrs").1.stat.xattrs;
    assert_eq!(xattrs[&b"user.eq"[..]], b"a=b");
    assert_eq!(xattrs[&b"user.sp"[..]], b"a b\nc");
    assert_eq!(xattrs[&b"user.dash"[..]], b"-");
    assert_eq!(xattrs[&b"user.empty"[..]], b"");
    assert_eq!(xattrs[&b"trusted.overlay.foo"[..]], b"bar");
    assert_eq!(tree.directory(b"/empty").unwrap().stat.uid, u32::MAX);
}

#[test]
fn directory_sizes_follow_the_erofs_layout() {
    let empty = Directory::default();
    assert_eq!(erofs_dir_size(&empty, false), 27);
    // 27 + 256 * 14 = 3611 bytes: more than half a block, so a whole block.
    assert_eq!(erofs_dir_size(&empty, true), 4096);
    // 300 entries of 12 + 10 bytes: 6627 bytes; the first block takes 186 entries
    // (4092 bytes), the rest (2535 bytes) is over half a block so it is a block too.
    let mut big = Directory::default();
    for i in 0..300 {
        big.entries
            .insert(format!("name{i:06}").into_bytes(), Node::Leaf(LeafId(0)));
    }
    assert_eq!(erofs_dir_size(&big, false), 8192);
    // 150 entries: 27 + 3300 = 3327 bytes, one block.
    let mut mid = Directory::default();
    for i in 0..150 {
        mid.entries
            .insert(format!("name{i:06}").into_bytes(), Node::Leaf(LeafId(0)));
    }
    assert_eq!(erofs_dir_size(&mid, false), 4096);
    // A root child named like a stub replaces that stub instead of adding an entry.
    let mut root = Directory::default();
    root.entries.insert(b"7f".to_vec(), Node::Leaf(LeafId(0)));
    assert_eq!(erofs_dir_size(&root, true), 4096);
}

fn err(text: &str) -> DumpfileError {
    parse_dumpfile(text.as_bytes()).unwrap_err()
}

#[test]
fn errors_name_the_line_and_reason() {
    const ROOT: &str = "/ 4096 40755 2 0 0 0 0.0 - - -\n";
    assert_eq!(err("").reason, Reason::Empty);
    assert_eq!(
        err("/a 0 100644 1 0 0 0 0.0 - - -\n").reason,
        Reason::RootFirst
    );
    let e = err(&format!("{ROOT}/a/b 0 100644 1 0 0 0 0.0 - - -\n"));
    assert_eq!(e.line, 2);
    assert!(matches!(e.reason, Reason::Path(_)), "{e}");
    let e = err(&format!(
        "{ROOT}/a 0 100644 1 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - -\n"
    ));
    assert_eq!(e.line, 3);
    assert!(e.to_string().starts_with("dumpfile line 3: "), "{e}");
    let e = err(&format!(
        "{ROOT}/d 27 40755 2 0 0 0 0.0 - - -\n/l 0 @100644 0 0 0 0 0.0 /d - -\n"
    ));
    assert_eq!(
        (e.line, e.reason.clone()),
        (3, Reason::HardLinkTarget("/d".into(), "is a directory"))
    );
    let e = err(&format!("{ROOT}/l 0 @100644 0 0 0 0 0.0 /nope - -\n"));
    assert_eq!(
        e.reason,
        Reason::HardLinkTarget("/nope".into(), "does not exist")
    );
    let e = err(&format!("{ROOT}/l 0 @100644 0 0 0 0 0.0 /l - -\n"));
    assert_eq!(
        e.reason,
        Reason::HardLinkTarget("/l".into(), "leads back to the link itself")
    );
    let e = err(&format!(
        "{ROOT}/l 0 @100644 0 0 0 0 0.0 /m - -\n/m 0 @100644 0 0 0 0 0.0 /l - -\n"
    ));
    assert_eq!(e.line, 2);
    assert_eq!(
        err(&format!("{ROOT}/l 0 @40755 0 0 0 0 0.0 /x - -\n")).reason,
        Reason::DirectoryHardLink
    );
    assert_eq!(
        err(&format!("{ROOT}/l 0 @100644 0 0 0 0 0.0 - - -\n")).reason,
        Reason::HardLinkNoTarget
    );
    assert_eq!(
        err(&format!("{ROOT}/f 3 100644 1 0 0 0 0.0 - ab -\n")).reason,
        Reason::ContentSize {
            content: 2,
            size: 3
        }
    );
    assert_eq!(
        err(&format!("{ROOT}/s 0 120777 1 0 0 0 0.0 - - -\n")).reason,
        Reason::EmptySymlink
    );
    assert!(matches!(
        err(&format!("{ROOT}/f 0 100644 1 0 0 0 0.0 - - - a\\qb=1\n")).reason,
        Reason::BadEscape { .. }
    ));
    assert_eq!(
        err(&format!("{ROOT}/f 0 100644 1 0 0 0 0.0 - - - =v\n")).reason,
        Reason::XattrEmptyName
    );
    assert!(matches!(
        err(&format!("{ROOT}/f 0 100644 1 0 0 0 0.0 - - - novalue\n")).reason,
        Reason::XattrNoEquals(_)
    ));
    assert!(matches!(
        err(&format!("{ROOT}/f 0 0644 1 0 0 0 0.0 - - -\n")).reason,
        Reason::BadMode(_)
    ));
    assert!(matches!(
        err(&format!("{ROOT}/f 0 100644 1 0 0 0 12 - - -\n")).reason,
        Reason::BadNumber { .. }
    ));
    assert!(matches!(
        err(&format!("{ROOT}/f 0 100644 1 x 0 0 0.0 - - -\n")).reason,
        Reason::BadNumber { .. }
    ));
    assert!(matches!(
        err(&format!("{ROOT}/f 1 100644 1 0 0 0 0.0 - - abc\n")).reason,
        Reason::BadDigest(_)
    ));
    assert_eq!(
        err(&format!("{ROOT}/f 0 100644 1 0 0 0\n")).reason,
        Reason::MissingField("MTIME")
    );
    assert_eq!(err(&format!("{ROOT}{ROOT}")).reason, Reason::DuplicateRoot);
    assert_eq!(
        err("/ 0 100644 1 0 0 0 0.0 - - -\n").reason,
        Reason::RootNotDirectory
    );
    assert_eq!(
        err(&format!("{ROOT}/a\0 0 100644 1 0 0 0 0.0 - - -\n")).reason,
        Reason::Nul
    );
    let big = "x".repeat(5001);
    assert_eq!(
        err(&format!("{ROOT}/f 5001 100644 1 0 0 0 0.0 - {big} -\n")).reason,
        Reason::ContentTooBig(5001)
    );
}

#[test]
fn c_leniencies_are_accepted() {
    // No final newline; a hard link before its target and one to another hard link
    // (C resolves them after the last line); symlink SIZE and directory SIZE/NLINK are
    // not checked; the root line may come with any directory size.
    let text = "/ 1 40755 99 0 0 0 0.0 - - -\n\
                /a 0 @100644 0 0 0 0 0.0 /c - -\n\
                /b 0 @100644 0 0 0 0 0.0 a - -\n\
                /c 3 100644 1 0 0 0 0.0 - abc -\n\
                /l 999 120777 1 0 0 0 0.0 target - -";
    let tree = parse_dumpfile(text.as_bytes()).unwrap();
    let (c, _) = leaf_at(&tree, b"/c");
    assert_eq!(leaf_at(&tree, b"/a").0, c);
    assert_eq!(leaf_at(&tree, b"/b").0, c);
    assert_eq!(tree.link_counts()[c.0], 3);
    let printed = write_dumpfile_to_string(&tree);
    // Printed canonically, keeping what the image depends on: /c is the inode's own
    // name (C numbers the inode there) and NLINK is 1 as given, not the 3 names.
    assert_eq!(
        printed,
        "/ 4096 40755 2 0 0 0 0.0 - - -\n\
         /a 3 @100644 1 0 0 0 0.0 /c abc -\n\
         /b 3 @100644 1 0 0 0 0.0 /c abc -\n\
         /c 3 100644 1 0 0 0 0.0 - abc -\n\
         /l 6 120777 1 0 0 0 0.0 target - -\n"
    );
    assert_eq!(parse_dumpfile(printed.as_bytes()).unwrap(), tree);
    // composefs-rs's hard-link lines (`@120000 - - - - 0.0 target - -`) only carry a target.
    let rs = "/ 0 40755 2 0 0 0 0.0 - - -\n/f 1 100644 2 0 0 0 0.0 - x -\n/g 0 @120000 - - - - 0.0 /f - -\n";
    let tree = parse_dumpfile(rs.as_bytes()).unwrap();
    assert_eq!(leaf_at(&tree, b"/g").0, leaf_at(&tree, b"/f").0);
    // Missing PAYLOAD/CONTENT/DIGEST read as absent (C reads them as empty strings).
    let short = "/ 0 40755 2 0 0 0 0.0\n/c 0 20644 1 0 0 259 0.0 -\n";
    let tree = parse_dumpfile(short.as_bytes()).unwrap();
    assert_eq!(
        leaf_at(&tree, b"/c").1.content,
        LeafContent::CharDevice(259)
    );
}

// ---- random trees ---------------------------------------------------------------------

/// Renumbers leaves in dumpfile order (depth first, sorted names, each leaf at its own
/// name) and drops unreferenced ones: the numbering the parser, tree_from_dir and
/// tree_from_image produce.
fn canonical(tree: &Tree) -> Tree {
    fn names(dir: &Directory, path: &[u8], out: &mut Vec<(Vec<u8>, LeafId)>) {
        for (name, node) in &dir.entries {
            let p = [path, b"/", name].concat();
            match node {
                Node::Directory(d) => names(d, &p, out),
                Node::Leaf(id) => out.push((p, *id)),
            }
        }
    }
    fn rebuild(dir: &Directory, map: &HashMap<LeafId, LeafId>) -> Directory {
        let mut out = Directory::new(dir.stat.clone());
        for (name, node) in &dir.entries {
            let node = match node {
                Node::Directory(d) => Node::Directory(Box::new(rebuild(d, map))),
                Node::Leaf(id) => Node::Leaf(map[id]),
            };
            out.entries.insert(name.clone(), node);
        }
        out
    }
    let own = tree.primary_paths();
    let mut all = Vec::new();
    names(&tree.root, b"", &mut all);
    let mut new = Tree::new(tree.root.stat.clone());
    let mut map = HashMap::new();
    for (path, id) in &all {
        if own.get(id).is_none_or(|p| p == path) {
            map.insert(*id, new.push_leaf(tree.leaf(*id).clone()));
        }
    }
    new.root = rebuild(&tree.root, &map);
    new.primary_names = tree
        .primary_names
        .iter()
        .filter_map(|(id, path)| Some((*map.get(id)?, path.clone())))
        .collect();
    new.normalize_link_info();
    new
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 1..max),
        proptest::collection::vec(
            prop_oneof![Just(b'-'), Just(b'='), Just(b' '), Just(b'\\'), Just(b'a')],
            1..4
        ),
    ]
}

fn arb_stat() -> impl Strategy<Value = Stat> {
    (
        0u32..0o10000,
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
        any::<u32>(),
        proptest::collection::btree_map(
            prop_oneof![
                Just(b"user.a".to_vec()),
                Just(b"user.shared".to_vec()),
                Just(b"trusted.overlay.x".to_vec()),
                Just(b"security.selinux".to_vec()),
                proptest::collection::vec(1u8..=255, 1..20),
            ],
            prop_oneof![Just(b"s".to_vec()), arb_bytes(30), Just(Vec::new())],
            0..4,
        ),
    )
        .prop_map(|(mode, uid, gid, sec, nsec, xattrs)| Stat {
            mode,
            uid,
            gid,
            mtime: Mtime { sec, nsec },
            xattrs,
            nlink: None,
        })
}

fn arb_digest() -> impl Strategy<Value = Digest> {
    (any::<bool>(), proptest::collection::vec(any::<u8>(), 64)).prop_map(|(sha512, bytes)| {
        if sha512 {
            Digest::new(HashAlg::Sha512, &bytes).unwrap()
        } else {
            Digest::new(HashAlg::Sha256, &bytes[..32]).unwrap()
        }
    })
}

fn arb_content() -> impl Strategy<Value = LeafContent> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..80)
            .prop_map(|d| LeafContent::Regular(RegularFile::Inline(d))),
        (
            1u64..u64::MAX,
            proptest::option::of(arb_bytes(40)),
            proptest::option::of(arb_digest())
        )
            .prop_map(|(size, payload, digest)| LeafContent::Regular(
                RegularFile::External {
                    size,
                    payload,
                    digest
                }
            )),
        arb_bytes(60).prop_map(LeafContent::Symlink),
        any::<u64>().prop_map(LeafContent::CharDevice),
        Just(LeafContent::CharDevice(0)),
        any::<u64>().prop_map(LeafContent::BlockDevice),
        Just(LeafContent::Fifo),
        Just(LeafContent::Socket),
    ]
}

fn arb_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(prop_oneof![1u8..b'/', (b'/' + 1)..=255u8], 1..12),
        Just(b"00".to_vec()),
        Just(b"-".to_vec()),
    ]
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

/// What a random entry becomes.
#[derive(Clone, Debug)]
enum Kind {
    Dir(Stat),
    File(Box<Leaf>),
}

/// A random tree: directories up to three levels deep, leaves of every kind, names that
/// link to an earlier leaf (hard links), some of them the inode's own name though not
/// its first, and link counts other than the number of names.
fn arb_tree() -> impl Strategy<Value = Tree> {
    let entry = (
        proptest::collection::vec(0usize..4, 0..3),
        arb_name(),
        prop_oneof![
            3 => (arb_stat(), arb_content()).prop_map(|(s, c)| Kind::File(Box::new(Leaf { stat: s, content: c }))),
            1 => arb_stat().prop_map(Kind::Dir),
        ],
        any::<Option<usize>>(),
    );
    (
        arb_stat(),
        proptest::collection::vec(entry, 0..25),
        proptest::collection::vec((any::<usize>(), 0u32..4), 0..4),
        proptest::collection::vec(any::<usize>(), 0..3),
    )
        .prop_map(|(root, entries, nlinks, own_names)| {
            let mut tree = Tree::new(root);
            let mut dirs: Vec<Vec<u8>> = vec![Vec::new()];
            for (choice, name, what, link) in entries {
                let parent = dirs[choice.first().copied().unwrap_or(0) % dirs.len()].clone();
                let path = [parent.as_slice(), b"/", name.as_slice()].concat();
                let node = match (what, link) {
                    (Kind::Dir(stat), _) => Node::Directory(Box::new(Directory::new(stat))),
                    (Kind::File(_), Some(i))
                        if !tree.leaves.is_empty()
                            && !tree
                                .leaf(LeafId(i % tree.leaves.len()))
                                .content
                                .is_whiteout() =>
                    {
                        Node::Leaf(LeafId(i % tree.leaves.len()))
                    }
                    (Kind::File(leaf), _) => Node::Leaf(tree.push_leaf(*leaf)),
                };
                let is_dir = matches!(node, Node::Directory(_));
                if tree.insert(&path, node).is_ok() && is_dir {
                    dirs.push(path);
                }
            }
            let leaves = tree.leaves.len();
            for (i, n) in nlinks {
                if leaves > 0 {
                    tree.leaves[i % leaves].stat.nlink = Some(n);
                }
            }
            let mut names = Vec::new();
            tree.for_each_hard_link(|id, path| names.push((id, path.to_vec())));
            for i in own_names {
                if !names.is_empty() {
                    let (id, path) = names[i % names.len()].clone();
                    tree.primary_names.insert(id, path);
                }
            }
            canonical(&tree)
        })
}

/// Trees the dumpfile describes one way only: what the writer would not keep is absent.
fn representable(tree: &Tree) -> bool {
    tree.leaves.iter().all(|l| match &l.content {
        LeafContent::Regular(RegularFile::External { payload, .. }) => {
            payload.as_ref().is_none_or(|p| !p.is_empty())
        }
        // A hard-linked whiteout cannot be stored (C refuses to load one).
        _ => true,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn random_trees_round_trip(tree in arb_tree()) {
        prop_assume!(representable(&tree));
        let text = write_dumpfile_to_string(&tree);
        let parsed = parse_dumpfile(text.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(&parsed, &tree);
        prop_assert_eq!(write_dumpfile_to_string(&parsed), text);
    }
}

// ---- the composefs crate as an oracle -------------------------------------------------

type Cfs = composefs::tree::FileSystem<composefs::fsverity::Sha256HashValue>;

/// The fixture restricted to what composefs-rs models the same way: sha256 digests whose
/// payload is their object path (its writer derives the redirect from the digest) and
/// non-negative mtimes.
fn sha256_fixture() -> String {
    let p512 = format!("cd/{}", &SHA256[2..]);
    fixture()
        .replace(
            &format!("- - {SHA512}"),
            &format!("{p512} - cd{}", &SHA256[2..]),
        )
        .replace("-1.999999999", "1.999999999")
}

#[test]
fn composefs_crate_reads_our_dumpfiles_the_same_way() {
    let text = sha256_fixture();
    let ours = parse_dumpfile(text.as_bytes()).unwrap();
    assert_eq!(write_dumpfile_to_string(&ours), text);
    let theirs: Cfs = composefs::dumpfile::dumpfile_to_filesystem(&text).unwrap();
    let mut their_text = Vec::new();
    composefs::dumpfile::write_dumpfile(&mut their_text, &theirs).unwrap();
    // composefs-rs prints directories with SIZE 0, hard links as bare `@` lines and xattrs
    // sorted, so the texts differ; what they describe must not.
    assert_ne!(their_text, text.as_bytes());
    let reparsed = parse_dumpfile(&their_text).unwrap();
    assert_eq!(reparsed, ours);
}

#[test]
fn image_written_by_composefs_reads_back_as_the_tree() {
    let text = sha256_fixture();
    let ours = parse_dumpfile(text.as_bytes()).unwrap();
    let theirs: Cfs = composefs::dumpfile::dumpfile_to_filesystem(&text).unwrap();
    let validated = composefs::erofs::writer::ValidatedFileSystem::new(theirs).unwrap();
    for version in [
        composefs::erofs::format::FormatVersion::V0,
        composefs::erofs::format::FormatVersion::V1,
    ] {
        let image = composefs::erofs::writer::mkfs_erofs_versioned(&validated, version);
        let image = Image::from_bytes(image.into_vec()).unwrap();
        let tree = tree_from_image(&image).unwrap();
        // The fixture states the opaque pair format 1 adds beside `/dir/wh`, so even a
        // format 0 image stores it (as plain xattrs).
        assert_eq!(tree, ours, "{version:?}");
        assert_eq!(write_dumpfile_to_string(&tree), text);
    }
}

// ---- mutated input ----------------------------------------------------------------------

#[test]
fn mutated_dumpfiles_never_panic() {
    const INTERESTING: &[u8] = b" \n\\x@-=/.0179af\x00\xff";
    let base = fixture().into_bytes();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut accepted = 0;
    for _ in 0..6000 {
        let mut text = base.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(text.len() + 1);
            match rng.below(5) {
                0 if at < text.len() => text[at] = INTERESTING[rng.below(INTERESTING.len())],
                1 => text.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
                2 if at < text.len() => {
                    let end = (at + 1 + rng.below(20)).min(text.len());
                    text.drain(at..end);
                }
                3 => {
                    // Duplicate or move a whole line.
                    let lines: Vec<&[u8]> = base.split(|b| *b == b'\n').collect();
                    let line = lines[rng.below(lines.len())].to_vec();
                    let pos = text
                        .iter()
                        .take(at)
                        .rposition(|b| *b == b'\n')
                        .map_or(0, |p| p + 1);
                    text.splice(pos..pos, line.into_iter().chain([b'\n']));
                }
                _ if at < text.len() => text[at] = rng.next() as u8,
                _ => {}
            }
        }
        if let Ok(tree) = parse_dumpfile(&text) {
            accepted += 1;
            let printed = write_dumpfile_to_string(&tree);
            let again = parse_dumpfile(printed.as_bytes()).unwrap_or_else(|e| {
                panic!("printed form of an accepted dumpfile does not parse: {e}\n{printed}")
            });
            assert_eq!(write_dumpfile_to_string(&again), printed);
        }
    }
    // The mutations must leave both outcomes common, or the test tests little.
    assert!(
        accepted > 300 && accepted < 5700,
        "accepted {accepted} of 6000"
    );
}

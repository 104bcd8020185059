//! Where C composefs 1.0.8 is the reference and the composefs crate cannot be: hard links
//! placed by the dumpfile's own line, NLINK fields stored as given, `composefs-info dump`'s
//! output for such images, and inline files of more than one block.
//!
//! `testdata/composefs-c/` holds a dumpfile and what C `mkcomposefs` and `composefs-info`
//! 1.0.8 made of it; its README says how. The composefs crate is the oracle where it
//! models the same thing (an inline file of more than one block).

mod common;

use std::path::PathBuf;

use imgmount_format::composefs::tree_from_image;
use imgmount_format::dumpfile::{parse_dumpfile, write_dumpfile_to_string};
use imgmount_format::erofs::reader::Image;
use imgmount_format::erofs::writer::ImageWriter;
use imgmount_format::tree::{
    Directory, Leaf, LeafContent, Node, RegularFile, Stat, Tree, tree_from_dir,
};

fn testdata(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/composefs-c")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What `imgmount create --from-file` writes.
fn image_from_dumpfile(text: &[u8]) -> Vec<u8> {
    let tree = parse_dumpfile(text).unwrap();
    ImageWriter::new(&tree)
        .derive_payload(false)
        .write()
        .unwrap()
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

#[track_caller]
fn assert_same_bytes(ours: &[u8], c: &[u8], what: &str) {
    if let Some(at) = first_difference(ours, c) {
        panic!(
            "{what}: differs from C at byte {at} (ours {} bytes, C {} bytes)",
            ours.len(),
            c.len()
        );
    }
}

/// The nid of the inode `path` names, and the inode's stored link count.
fn nid_and_nlink(image: &Image, path: &[u8]) -> (u64, u32) {
    let inode = image.lookup_path(path).unwrap().unwrap();
    (inode.nid, inode.nlink())
}

#[test]
fn c_reference_dumpfile_makes_c_reference_image() {
    let ours = image_from_dumpfile(&testdata("links.dump"));
    assert_same_bytes(&ours, &testdata("links.cfs"), "links.dump");
}

#[test]
fn c_reference_image_dumps_as_composefs_info_does() {
    let image = Image::from_bytes(testdata("links.cfs")).unwrap();
    let tree = tree_from_image(&image).unwrap();
    let ours = write_dumpfile_to_string(&tree);
    let c = String::from_utf8(testdata("links.cfs.dump")).unwrap();
    for (n, (a, b)) in ours.lines().zip(c.lines()).enumerate() {
        assert_eq!(a, b, "line {}", n + 1);
    }
    assert_eq!(ours, c);
}

#[test]
fn hard_link_inode_sits_at_the_breadth_first_slot_of_its_own_line() {
    // `/a` comes first depth first, but its line is the `@` one: the inode is `/d/t`'s,
    // numbered after every child of the root (breadth first), not among them.
    let text = b"/ 4096 40755 3 0 0 0 0.0 - - -
/a 0 @100644 0 0 0 0 0.0 /d/t - -
/b 1 100644 1 0 0 0 0.0 - b -
/d 4096 40755 2 0 0 0 0.0 - - -
/d/t 1 100644 2 0 0 0 0.0 - t -
";
    let image = Image::from_bytes(image_from_dumpfile(text)).unwrap();
    let (a, _) = nid_and_nlink(&image, b"/a");
    let (t, _) = nid_and_nlink(&image, b"/d/t");
    let (b, _) = nid_and_nlink(&image, b"/b");
    let (d, _) = nid_and_nlink(&image, b"/d");
    assert_eq!(a, t, "one inode");
    assert!(
        b < d && d < t,
        "/b {b}, /d {d}, /d/t {t}: /d/t must follow /d"
    );
}

#[test]
fn nlink_of_a_dumpfile_is_stored_as_given_but_directories_are_counted() {
    let text = b"/ 4096 40755 9 0 0 0 0.0 - - -
/d 4096 40755 9 0 0 0 0.0 - - -
/f 1 100644 7 0 0 0 0.0 - f -
/g 1 @100644 1 0 0 0 0.0 /l - -
/l 1 100644 1 0 0 0 0.0 - l -
/z 0 100644 0 0 0 0 0.0 - - -
";
    let image = Image::from_bytes(image_from_dumpfile(text)).unwrap();
    assert_eq!(nid_and_nlink(&image, b"/f").1, 7);
    assert_eq!(nid_and_nlink(&image, b"/l").1, 1, "two names, NLINK 1");
    assert_eq!(nid_and_nlink(&image, b"/z").1, 0);
    assert_eq!(nid_and_nlink(&image, b"/").1, 3);
    assert_eq!(nid_and_nlink(&image, b"/d").1, 2);
}

#[test]
fn a_directory_source_keeps_the_true_link_count() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("one"), b"x").unwrap();
    std::fs::hard_link(dir.path().join("one"), dir.path().join("two")).unwrap();
    std::fs::hard_link(dir.path().join("one"), dir.path().join("three")).unwrap();
    let tree = tree_from_dir(dir.path(), &Default::default()).unwrap();
    let image = Image::from_bytes(ImageWriter::new(&tree).write().unwrap()).unwrap();
    assert_eq!(nid_and_nlink(&image, b"/two").1, 3);
    // The tree's own dumpfile says so too.
    let dump = write_dumpfile_to_string(&tree);
    assert!(dump.contains("\n/one 1 100"), "{dump}");
    assert!(
        dump.lines()
            .filter(|l| l.starts_with("/t"))
            .all(|l| l.split(' ').nth(3) == Some("3")),
        "{dump}"
    );
}

#[test]
fn dump_prints_the_stored_link_count() {
    // The image stores 7 for a file with one name; the dump must say 7, as C's does.
    let text = b"/ 4096 40755 2 0 0 0 0.0 - - -
/f 1 100644 7 0 0 0 0.0 - f -
";
    let image = Image::from_bytes(image_from_dumpfile(text)).unwrap();
    let dump = write_dumpfile_to_string(&tree_from_image(&image).unwrap());
    assert!(dump.contains("\n/f 1 100644 7 0 0 0 0.0 - f -\n"), "{dump}");
}

#[test]
fn dump_prints_the_opaque_pair_format_1_adds_beside_whiteouts() {
    let text = b"/ 4096 40755 3 0 0 0 0.0 - - -
/e 4096 40755 2 0 0 0 0.0 - - - user.x=1
/e/w 0 20000 1 0 0 0 0.0 - - -
";
    let tree = parse_dumpfile(text).unwrap();
    let pair =
        "/e 40 40755 2 0 0 0 0.0 - - - trusted.overlay.opaque=x user.overlay.opaque=x user.x=1\n";
    // Checked against composefs-info dump of the image C mkcomposefs makes of `text`.
    let image = Image::from_bytes(image_from_dumpfile(text)).unwrap();
    let read = tree_from_image(&image).unwrap();
    assert!(write_dumpfile_to_string(&read).contains(pair));
    // Format 0 has no such marker.
    let v0 = ImageWriter::new(&tree).max_version(0).write().unwrap();
    let read = tree_from_image(&Image::from_bytes(v0).unwrap()).unwrap();
    assert!(!write_dumpfile_to_string(&read).contains("opaque"));
}

fn big_inline_tree(data: &[u8]) -> Tree {
    let mut tree = Tree::new(Stat {
        mode: 0o755,
        ..Stat::default()
    });
    tree.insert(
        b"/d",
        Node::Directory(Box::new(Directory::new(Stat::default()))),
    )
    .unwrap();
    let id = tree.push_leaf(Leaf {
        stat: Stat {
            mode: 0o644,
            ..Stat::default()
        },
        content: LeafContent::Regular(RegularFile::Inline(data.to_vec())),
    });
    tree.insert(b"/d/big", Node::Leaf(id)).unwrap();
    tree
}

#[test]
fn inline_files_of_more_than_a_block_read_back() {
    for len in [4096, 4097, 4500, 5000] {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let tree = big_inline_tree(&data);
        let image = Image::from_bytes(ImageWriter::new(&tree).write().unwrap()).unwrap();
        let read = tree_from_image(&image).unwrap_or_else(|e| panic!("{len} bytes: {e}"));
        assert_eq!(read, tree, "{len} bytes");
    }
}

#[test]
fn inline_file_written_by_the_composefs_crate_reads_back() {
    use composefs::fsverity::Sha256HashValue;
    let data: Vec<u8> = (0..4500u32).map(|i| (i % 13) as u8).collect();
    let tree = big_inline_tree(&data);
    let theirs = common::oracle::<Sha256HashValue>(&tree, 1, 1).unwrap();
    let image = Image::from_bytes(theirs).unwrap();
    assert_eq!(tree_from_image(&image).unwrap(), tree);
}

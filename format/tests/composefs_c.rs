//! Where C composefs 1.0.8 is the reference and the composefs crate cannot be: hard links
//! placed by the dumpfile's own line, NLINK fields stored as given, `composefs-info dump`'s
//! output for such images, and inline files of more than one block.
//!
//! `testdata/composefs-c/` holds a dumpfile and what C `mkcomposefs` and `composefs-info`
//! 1.0.8 made of it; its README says how. The composefs crate is the oracle where it
//! models the same thing (an inline file of more than one block).

mod common;

use imgmount_format::composefs::tree_from_image;
use imgmount_format::erofs::reader::Image;
use imgmount_format::erofs::writer::ImageWriter;
use imgmount_format::tree::{Directory, Leaf, LeafContent, Node, RegularFile, Stat, Tree};

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

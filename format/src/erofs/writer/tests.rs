//! Unit tests of the writer's planning: the parts of C's layout the
//! composefs-crate oracle does not reach or that are easier to see in isolation.

use super::*;
use crate::tree::{Leaf, LeafContent, Node, RegularFile, Stat};

fn tree_with_leaves(leaves: Vec<(&[u8], Stat)>) -> Tree {
    let mut t = Tree::new(Stat::default());
    for (name, stat) in leaves {
        let id = t.push_leaf(Leaf {
            stat,
            content: LeafContent::Regular(RegularFile::Inline(Vec::new())),
        });
        t.root.entries.insert(name.to_vec(), Node::Leaf(id));
    }
    t
}

#[test]
fn chunk_bits_match_mkcomposefs() {
    assert_eq!(chunk_bits(1), 12);
    assert_eq!(chunk_bits(4096), 12);
    assert_eq!(chunk_bits(4097), 13);
    assert_eq!(chunk_bits(1 << 32), 32);
    assert_eq!(chunk_bits((1 << 32) + 1), 33);
    assert_eq!(chunk_bits(u64::MAX), 43);
}

#[test]
fn shared_table_is_sorted_descending_with_length_before_bytes() {
    let x = |pairs: &[(&[u8], &[u8])]| {
        let mut s = Stat::default();
        for (k, v) in pairs {
            s.xattrs.insert(k.to_vec(), v.to_vec());
        }
        s
    };
    // Each pair on two inodes, so all are shared.
    let both: &[(&[u8], &[u8])] = &[(b"user.a", b"\xee"), (b"user.b", b"1")];
    let other: &[(&[u8], &[u8])] = &[(b"user.a", b"\0\0"), (b"user.b", b"1")];
    let t = tree_with_leaves(vec![
        (b"f1", x(both)),
        (b"f2", x(both)),
        (b"f3", x(other)),
        (b"f4", x(other)),
    ]);
    let image = ImageWriter::new(&t).prepare().unwrap();
    let names = xattr_table(&image.inodes).unwrap().shared;
    // user.b first (name descending); for user.a the longer value first even
    // though it is smaller bytewise.
    assert_eq!(
        names,
        vec![
            (&b"user.b"[..], &b"1"[..]),
            (&b"user.a"[..], &b"\0\0"[..]),
            (&b"user.a"[..], &b"\xee"[..]),
        ]
    );
}

#[test]
fn an_inode_references_at_most_128_shared_xattrs() {
    let mut s = Stat::default();
    for i in 0..130 {
        s.xattrs
            .insert(format!("user.x{i:03}").into_bytes(), b"v".to_vec());
    }
    let t = tree_with_leaves(vec![(b"a", s.clone()), (b"b", s)]);
    let image = ImageWriter::new(&t).prepare().unwrap();
    let layout = plan(&image).unwrap();
    let a = image
        .inodes
        .iter()
        .position(|i| i.xattrs.len() == 130)
        .unwrap();
    let slots = &layout.inodes[a].xattr_slots;
    let shared = slots
        .iter()
        .filter(|s| matches!(s, XattrSlot::Shared(_)))
        .count();
    assert_eq!(shared, MAX_SHARED_PER_INODE);
    // The first 128 in name order are the shared ones.
    assert!(matches!(slots[127], XattrSlot::Shared(_)));
    assert!(matches!(slots[128], XattrSlot::Local));
    assert!(ImageWriter::new(&t).write().is_ok());
}

#[test]
fn tails_never_cross_blocks() {
    // Non-symlink: a 100-byte tail 50 bytes before a boundary moves to the
    // next slot boundary past it.
    let mut p = InodePlan {
        tail: 100,
        ..Default::default()
    };
    let pos = BLOCK - 64 - 50 - 32;
    let pad = tail_padding(&mut p, false, pos, 32 + 64);
    assert_eq!(pad, 64);
    assert_eq!(p.tail, 100);
    // Symlink whose inode and target cross a block: the inode moves to the block.
    let mut p = InodePlan {
        tail: 200,
        ..Default::default()
    };
    assert_eq!(tail_padding(&mut p, true, BLOCK - 96, 32), 96);
    assert_eq!((p.n_blocks, p.tail), (0, 200));
    // Symlink that cannot share a block with its inode: target goes out.
    let mut p = InodePlan {
        tail: 4070,
        ..Default::default()
    };
    assert_eq!(tail_padding(&mut p, true, BLOCK, 32), 0);
    assert_eq!((p.n_blocks, p.tail), (1, 0));
}

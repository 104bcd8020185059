//! Test helpers shared by integration tests: building trees by path, converting a
//! [`Tree`] into the composefs crate's tree (the byte-identity oracle), a
//! proptest strategy for random trees, and a seeded generator for mutations.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use composefs::fsverity::FsVerityHashValue;
use composefs::tree as cfs;
use imgmount_format::tree::{
    Directory, Leaf, LeafContent, LeafId, Mtime, Node, RegularFile, Stat, Tree,
};
use imgmount_format::verity::{Digest, HashAlg};
use proptest::prelude::*;

// --- building trees -----------------------------------------------------------------

pub fn stat(mode: u32, uid: u32, gid: u32, sec: u64, nsec: u32) -> Stat {
    Stat {
        mode,
        uid,
        gid,
        mtime: Mtime { sec, nsec },
        xattrs: BTreeMap::new(),
        nlink: None,
    }
}

pub fn with_xattrs(mut s: Stat, xattrs: &[(&[u8], &[u8])]) -> Stat {
    for (k, v) in xattrs {
        s.xattrs.insert(k.to_vec(), v.to_vec());
    }
    s
}

pub fn add_dir(tree: &mut Tree, path: &[u8], st: Stat) {
    tree.insert(path, Node::Directory(Box::new(Directory::new(st))))
        .unwrap();
}

pub fn add_leaf(tree: &mut Tree, path: &[u8], st: Stat, content: LeafContent) -> LeafId {
    let id = tree.push_leaf(Leaf { stat: st, content });
    tree.insert(path, Node::Leaf(id)).unwrap();
    id
}

pub fn add_link(tree: &mut Tree, path: &[u8], id: LeafId) {
    tree.insert(path, Node::Leaf(id)).unwrap();
}

pub fn external(size: u64, digest: Option<Digest>) -> LeafContent {
    LeafContent::Regular(RegularFile::External {
        size,
        payload: digest.map(|d| d.object_path().into_bytes()),
        digest,
    })
}

/// A digest made of a repeated byte (a real digest is not needed by the writer).
pub fn fake_digest(alg: HashAlg, seed: u8) -> Digest {
    let bytes: Vec<u8> = (0..alg.digest_len())
        .map(|i| seed.wrapping_add(i as u8).wrapping_mul(31))
        .collect();
    Digest::new(alg, &bytes).unwrap()
}

// --- the oracle ---------------------------------------------------------------------

fn cfs_stat(s: &Stat) -> cfs::Stat {
    cfs::Stat {
        st_mode: s.mode & 0o7777,
        st_uid: s.uid,
        st_gid: s.gid,
        st_mtim_sec: s.mtime.sec as i64,
        st_mtim_nsec: s.mtime.nsec,
        xattrs: s
            .xattrs
            .iter()
            .map(|(k, v)| {
                (
                    Box::from(OsStr::from_bytes(k)),
                    v.clone().into_boxed_slice(),
                )
            })
            .collect(),
    }
}

fn cfs_content<H: FsVerityHashValue>(c: &LeafContent) -> Result<cfs::LeafContent<H>, String> {
    Ok(match c {
        LeafContent::Regular(RegularFile::Inline(d)) => {
            cfs::LeafContent::Regular(cfs::RegularFile::Inline(d.clone().into_boxed_slice()))
        }
        LeafContent::Regular(RegularFile::External {
            size,
            payload,
            digest,
        }) => {
            if *size == 0 {
                // composefs-rs writes an empty chunk-based file with a redirect; C
                // writes a plain empty file. Not comparable.
                return Err("empty external file".into());
            }
            match (payload, digest) {
                (p, Some(d)) => {
                    if p.as_ref()
                        .is_some_and(|p| *p != d.object_path().into_bytes())
                    {
                        return Err("payload differs from digest path".into());
                    }
                    let id = H::from_hex(d.to_hex()).map_err(|e| format!("digest: {e}"))?;
                    cfs::LeafContent::Regular(cfs::RegularFile::External(id, *size))
                }
                (Some(p), None) => {
                    let id = H::from_object_pathname(p).map_err(|e| format!("payload: {e}"))?;
                    cfs::LeafContent::Regular(cfs::RegularFile::ExternalNoVerity(id, *size))
                }
                (None, None) => cfs::LeafContent::Regular(cfs::RegularFile::Sparse(*size)),
            }
        }
        LeafContent::Symlink(t) => cfs::LeafContent::Symlink(Box::from(OsStr::from_bytes(t))),
        LeafContent::CharDevice(r) => cfs::LeafContent::CharacterDevice(*r),
        LeafContent::BlockDevice(r) => cfs::LeafContent::BlockDevice(*r),
        LeafContent::Fifo => cfs::LeafContent::Fifo,
        LeafContent::Socket => cfs::LeafContent::Socket,
    })
}

fn cfs_dir<H: FsVerityHashValue>(d: &Directory) -> cfs::Directory<H> {
    let mut out = cfs::Directory::new(cfs_stat(&d.stat));
    for (name, node) in &d.entries {
        let inode = match node {
            Node::Directory(sub) => cfs::Inode::Directory(Box::new(cfs_dir(sub))),
            Node::Leaf(id) => cfs::Inode::leaf(composefs::generic_tree::LeafId(id.0)),
        };
        out.insert(OsStr::from_bytes(name), inode);
    }
    out
}

/// Our tree as the composefs crate's tree, leaf ids preserved. `Err` for trees the
/// crate cannot express the way C would write them.
pub fn to_composefs<H: FsVerityHashValue>(tree: &Tree) -> Result<cfs::FileSystem<H>, String> {
    let mut leaves = Vec::with_capacity(tree.leaves.len());
    for leaf in &tree.leaves {
        leaves.push(cfs::Leaf {
            stat: cfs_stat(&leaf.stat),
            content: cfs_content::<H>(&leaf.content)?,
        });
    }
    Ok(cfs::FileSystem {
        root: cfs_dir(&tree.root),
        leaves,
    })
}

pub fn has_whiteout(tree: &Tree) -> bool {
    let counts = tree.link_counts();
    tree.leaves
        .iter()
        .zip(counts)
        .any(|(l, n)| n > 0 && l.content.is_whiteout())
}

/// What C `mkcomposefs --min-version=MIN --max-version=MAX` writes, according to the
/// composefs crate: its V1 is C at version 1, its V0 is C at version 0.
pub fn oracle<H: FsVerityHashValue>(tree: &Tree, min: u32, max: u32) -> Result<Vec<u8>, String> {
    use composefs::erofs::format::FormatVersion;
    use composefs::erofs::writer::{ValidatedFileSystem, mkfs_erofs_versioned};
    let fs = to_composefs::<H>(tree)?;
    let fs = ValidatedFileSystem::new(fs).map_err(|e| e.to_string())?;
    let max = max.max(min);
    let v1 = min >= 1 || (max >= 1 && has_whiteout(tree));
    let version = if v1 {
        FormatVersion::V1
    } else {
        FormatVersion::V0
    };
    Ok(mkfs_erofs_versioned(&fs, version).into_vec())
}

/// Index of the first differing byte, for failure messages.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())))
}

// --- random trees -------------------------------------------------------------------

/// What a random operation adds.
#[derive(Clone, Debug)]
pub enum Kind {
    Dir,
    Inline(Vec<u8>),
    External {
        size: u64,
        digest: Option<u8>,
    },
    ExternalNoDigest {
        size: u64,
        seed: u8,
    },
    Symlink(Vec<u8>),
    Char(u64),
    Block(u64),
    Fifo,
    Socket,
    Whiteout,
    /// A hard link to the n-th leaf added so far (modulo their number).
    Link(usize),
}

#[derive(Clone, Debug)]
pub struct Op {
    pub parent: usize,
    pub name: Vec<u8>,
    pub kind: Kind,
    pub stat: Stat,
}

fn name_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Short names from a small alphabet: collisions, '-' and '!' sort before '.'.
        4 => prop::collection::vec(prop::sample::select(b"ab.-!_zA".to_vec()), 1..4),
        // Any bytes but '/' and NUL: non-UTF-8 names.
        3 => prop::collection::vec(1u8..=255, 1..24)
            .prop_map(|v| v.into_iter().map(|b| if b == b'/' { b'x' } else { b }).collect()),
        // Two hex digits: collide with the root stubs.
        2 => (0u8..=255).prop_map(|b| format!("{b:02x}").into_bytes()),
        1 => (200usize..=255).prop_map(|n| vec![b'n'; n]),
    ]
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn xattrs_strategy() -> impl Strategy<Value = BTreeMap<Vec<u8>, Vec<u8>>> {
    let names: Vec<&'static [u8]> = vec![
        b"user.a",
        b"user.bb",
        b"trusted.overlay.foo",
        b"trusted.overlay.overlay.bar",
        b"trusted.x",
        b"security.selinux",
        b"security.capability",
        b"system.posix_acl_access",
        b"system.posix_acl_default",
        b"lustre.lov",
        b"system.other",
        // Not user.overlay.whiteout(s)/opaque: composefs-rs would store those twice on
        // whiteouts and their directories where C replaces them.
        b"user.overlay.origin",
    ];
    let values: Vec<&'static [u8]> =
        vec![b"", b"v", b"\xee", b"\0\0", b"long value long value", b"y"];
    prop::collection::btree_map(
        prop::sample::select(names).prop_map(|n| n.to_vec()),
        prop::sample::select(values).prop_map(|v| v.to_vec()),
        0..4,
    )
}

fn stat_strategy() -> impl Strategy<Value = Stat> {
    (
        prop_oneof![Just(0o755u32), Just(0o644), 0u32..=0o7777],
        prop::sample::select(vec![0u32, 1000, 65535, 65536, 4_000_000_000]),
        prop::sample::select(vec![0u32, 100, 70000]),
        prop::sample::select(vec![
            (1_700_000_000u64, 0u32),
            (1_700_000_000, 5),
            (1_600_000_000, 0),
            (1 << 33, 999_999_999),
        ]),
        xattrs_strategy(),
    )
        .prop_map(|(mode, uid, gid, (sec, nsec), xattrs)| Stat {
            mode,
            uid,
            gid,
            mtime: Mtime { sec, nsec },
            xattrs,
            nlink: None,
        })
}

fn kind_strategy() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => Just(Kind::Dir),
        4 => prop_oneof![
            4 => prop::collection::vec(any::<u8>(), 0..100),
            1 => prop::collection::vec(any::<u8>(), 2000..=5000),
        ].prop_map(Kind::Inline),
        3 => (prop_oneof![1u64..100_000, Just(4096u64), Just(4097), Just(1 << 32), Just(5 << 32), 1u64..=(1u64 << 53)], any::<u8>())
            .prop_map(|(size, seed)| Kind::External { size, digest: Some(seed) }),
        1 => (1u64..1_000_000).prop_map(|size| Kind::External { size, digest: None }),
        1 => (1u64..1_000_000, any::<u8>()).prop_map(|(size, seed)| Kind::ExternalNoDigest { size, seed }),
        2 => prop_oneof![
            3 => prop::collection::vec(1u8..=255, 1..60),
            1 => prop::collection::vec(1u8..=255, 3900..=4095),
        ].prop_map(Kind::Symlink),
        1 => (1u64..=u64::from(u32::MAX)).prop_map(Kind::Char),
        1 => (0u64..=u64::from(u32::MAX)).prop_map(Kind::Block),
        1 => Just(Kind::Fifo),
        1 => Just(Kind::Socket),
        1 => Just(Kind::Whiteout),
        2 => any::<usize>().prop_map(Kind::Link),
    ]
}

pub fn ops_strategy(max_ops: usize) -> impl Strategy<Value = (Stat, Vec<Op>)> {
    (
        stat_strategy(),
        prop::collection::vec(
            (
                any::<usize>(),
                name_strategy(),
                kind_strategy(),
                stat_strategy(),
            )
                .prop_map(|(parent, name, kind, stat)| Op {
                    parent,
                    name,
                    kind,
                    stat,
                }),
            0..max_ops,
        ),
    )
}

/// Builds a tree from random operations; names that already exist are skipped.
pub fn build_tree(alg: HashAlg, root: Stat, ops: &[Op]) -> Tree {
    let mut tree = Tree::new(root);
    let mut dirs: Vec<Vec<u8>> = vec![b"/".to_vec()];
    // Leaves a link may name: not whiteouts (a hard-linked whiteout means nothing
    // and the oracle refuses it).
    let mut linkable: Vec<LeafId> = Vec::new();
    for op in ops {
        let parent = &dirs[op.parent % dirs.len()];
        let mut path = parent.clone();
        if path.len() > 1 {
            path.push(b'/');
        }
        path.extend_from_slice(&op.name);
        if tree.node(&path).is_ok() {
            continue;
        }
        let mut st = op.stat.clone();
        let content = match &op.kind {
            Kind::Dir => {
                add_dir(&mut tree, &path, st);
                dirs.push(path);
                continue;
            }
            Kind::Link(n) => {
                if linkable.is_empty() {
                    continue;
                }
                add_link(&mut tree, &path, linkable[n % linkable.len()]);
                continue;
            }
            Kind::Inline(d) => LeafContent::Regular(RegularFile::Inline(d.clone())),
            Kind::External { size, digest } => external(*size, digest.map(|s| fake_digest(alg, s))),
            Kind::ExternalNoDigest { size, seed } => LeafContent::Regular(RegularFile::External {
                size: *size,
                payload: Some(fake_digest(alg, *seed).object_path().into_bytes()),
                digest: None,
            }),
            Kind::Symlink(t) => LeafContent::Symlink(t.clone()),
            Kind::Char(r) => LeafContent::CharDevice(*r),
            Kind::Block(r) => LeafContent::BlockDevice(*r),
            Kind::Fifo => LeafContent::Fifo,
            Kind::Socket => LeafContent::Socket,
            Kind::Whiteout => {
                // Never exactly a root stub's metadata: composefs-rs tells its own
                // stubs from user whiteouts by that metadata.
                st.mode = 0o600;
                LeafContent::CharDevice(0)
            }
        };
        let whiteout = content.is_whiteout();
        let id = add_leaf(&mut tree, &path, st, content);
        if !whiteout {
            linkable.push(id);
        }
    }
    tree
}

// --- deterministic randomness ---------------------------------------------------------

/// xorshift64*: deterministic for a seed (which must not be 0), no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

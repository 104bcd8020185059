use std::io::Write as _;

use proptest::prelude::*;

use super::*;

/// Deterministic test content: byte i is `i % 251` (the files the known vectors were made from).
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Seeded pseudo-random bytes (splitmix64), cheaper than proptest generating every byte.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The independent implementation from the `fs-verity` crate.
fn oracle(alg: HashAlg, data: &[u8]) -> Vec<u8> {
    let inner = match alg {
        HashAlg::Sha256 => fs_verity::InnerHashAlgorithm::Sha256,
        HashAlg::Sha512 => fs_verity::InnerHashAlgorithm::Sha512,
    };
    let mut h = fs_verity::new_dyn(inner);
    h.write_all(data).unwrap();
    h.finalize().into_vec()
}

fn tree_of(alg: HashAlg, data: &[u8]) -> MerkleTree {
    let mut h = FsVerityHasher::with_tree(alg);
    h.update(data);
    h.finalize_with_tree().1
}

fn block(data: &[u8], index: u64) -> &[u8] {
    let start = index as usize * BLOCK_SIZE;
    &data[start..(start + BLOCK_SIZE).min(data.len())]
}

/// Made with `fsverity digest --hash-alg=ALG --block-size=4096` (fsverity-utils 1.5) over
/// files of `pattern(size)`.
const KNOWN: &[(usize, &str)] = &[
    (
        0,
        "sha256:3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95",
    ),
    (
        0,
        "sha512:ccf9e5aea1c2a64efa2f2354a6024b90dffde6bbc017825045dce374474e13d10adb9dadcc6ca8e17a3c075fbd31336e8f266ae6fa93a6c3bed66f9e784e5abf",
    ),
    (
        1,
        "sha256:b803429503d95915829b29fdbc8bbad142f3abfd11b1cadf5526582e685c0551",
    ),
    (
        1,
        "sha512:9fcf5172b085b1c8f9365eecb37a1869e193a4705654a5829f11939cd01d5c0fd97276be8cd9d49f76cfc8dcfeb80f8128e3548a1de50b56912b9e3fc7bde27b",
    ),
    (
        100,
        "sha256:9f37bd4e8c0d50d81d76ec71e6cccc6696f4a196e730c8b2019deaa103a6350a",
    ),
    (
        100,
        "sha512:93410216dce0a87ec66aea0ea5b8e19564e20538ee4214a62071c70c0a3e984ddcb077910f1b1ff1ced7cb7db2d08733a27e8a8476a12fed394e8de18be0df7c",
    ),
    (
        4095,
        "sha256:5f4953aad672b0188023d6cd6fbce9d09508eb7dad165b6298ce0086bc1e72db",
    ),
    (
        4095,
        "sha512:1f4a9ea21af349cae1d1aa1ce4e560ce6d1e5882d8e2e7696b5afd14191f876e608444553101ba7ff16386a79c7e8739b2905ed14baf8036ebd05e6f09063b2a",
    ),
    (
        4096,
        "sha256:13e9b8848ae484a36acb3f3cac0ceb2f7601e96633d15c92f9bd3dd44e492157",
    ),
    (
        4096,
        "sha512:7bf994782b368ecc4e20ce9144701b1a30524d5bbc90987625de22eebc8cf370ec846c1b5e77f9099c6f6cfc0b590359b9ac8083a43e5f7fa5ec05a25dab6e03",
    ),
    (
        4097,
        "sha256:b0d074abef4d544404facfab6ba242f6a8ccbde90f1325cd286f3c8aa8d0f8aa",
    ),
    (
        4097,
        "sha512:97a1e45daaa69bd7b31908cf835318ba36476984ffa7f4a5913c0187db04ce5f19dc80306f493741d4ad1cdd212b7a9d2691aa3d42563d35471363fbb0fc7f1c",
    ),
    (
        8192,
        "sha256:e48d50c56c4f0178a98a035cb91d66be328eeff78bbddaa35c5ec4cc0d8340c0",
    ),
    (
        8192,
        "sha512:08667f73e1f72588f2e9ca3f18f54844199569c2fffbb6767631fd0bde697d5b1cc83daaf0072181f07d0e5cf030ed1a1e41955213f4a990d81dd6619c71a99d",
    ),
    (
        64 * 4096 + 1,
        "sha256:3a184208d2025273795779ebbea5a31c8edecdb33646aaad46c66d089f8b9eed",
    ),
    (
        64 * 4096 + 1,
        "sha512:db774f463acc1e672e4da91d045eb146f2647efec545951fb7005067ff9899da3ae94dc206531b40985587ce4e5eb173a235d51b488074067d9e34131814b9de",
    ),
    (
        128 * 4096,
        "sha256:d82861203d50ae9b60948504a704f35f5118bd229aeb1a22d6dae47b1767c4c4",
    ),
    (
        128 * 4096,
        "sha512:7b3d245f9dc3169e2f721fa32f735149ace066408e783d5d79e21f9761e2efc39fb016b0a94e0a00af41a32fa5283b189899b0f27f91d013be745709678c0278",
    ),
    (
        128 * 4096 + 1,
        "sha256:4dc6905041c9c4ee73e13b53f63f5d289c46da359b664a965ead7f8cc4d799d4",
    ),
    (
        128 * 4096 + 1,
        "sha512:60b58fe0f1e5198627ffb6be091eef60edce9b4ff6ee43884ba78a831ecdecc1572729afc5ebeb09101e3f102c9d7142ab4f66216198d85f8c7194eca7885bb2",
    ),
];

#[test]
fn known_vectors() {
    for &(size, expected) in KNOWN {
        let expected: Digest = expected.parse().unwrap();
        let data = pattern(size);
        assert_eq!(digest_bytes(expected.alg(), &data), expected, "size {size}");
        assert_eq!(
            digest_reader(expected.alg(), &data[..]).unwrap(),
            expected,
            "size {size}"
        );
        let tree = tree_of(expected.alg(), &data);
        assert_eq!(tree.digest(), expected, "size {size}");
    }
}

#[test]
fn one_block_file_has_no_tree() {
    // Checked with `fsverity digest --out-merkle-tree`: files up to one block have an empty
    // tree, and the root hash is the hash of the zero-padded data block.
    for size in [1, 100, 4096] {
        let data = pattern(size);
        let tree = tree_of(HashAlg::Sha256, &data);
        assert!(tree.as_bytes().is_empty());
        assert_eq!(tree.depth(), 0);
        let mut padded = data.clone();
        padded.resize(BLOCK_SIZE, 0);
        assert_eq!(tree.root_hash().unwrap(), &Sha256::digest(&padded)[..]);
    }
    let empty = tree_of(HashAlg::Sha512, &[]);
    assert_eq!(empty.root_hash().unwrap(), &[0; 64][..]);
    assert!(empty.as_bytes().is_empty());
}

#[test]
fn tree_shape() {
    // 129 blocks: a leaf level of two blocks under a root block, root level first.
    let data = pattern(129 * BLOCK_SIZE);
    let tree = tree_of(HashAlg::Sha256, &data);
    assert_eq!(tree.depth(), 2);
    assert_eq!(tree.num_tree_blocks(), 3);
    let bytes = tree.as_bytes();
    let root_block = &bytes[..BLOCK_SIZE];
    let leaves = &bytes[BLOCK_SIZE..];
    assert_eq!(
        &leaves[..32],
        &Sha256::digest(&data[..BLOCK_SIZE])[..],
        "first leaf entry is the first data block's hash"
    );
    assert_eq!(
        &root_block[..32],
        &Sha256::digest(&leaves[..BLOCK_SIZE])[..]
    );
    assert_eq!(
        &root_block[32..64],
        &Sha256::digest(&leaves[BLOCK_SIZE..])[..]
    );
    assert!(root_block[64..].iter().all(|&b| b == 0), "padding is zero");
    assert_eq!(tree.root_hash().unwrap(), &Sha256::digest(root_block)[..]);
}

#[test]
fn digest_strings() {
    let hex = "13e9b8848ae484a36acb3f3cac0ceb2f7601e96633d15c92f9bd3dd44e492157";
    let d: Digest = format!("sha256:{hex}").parse().unwrap();
    assert_eq!(d, hex.parse().unwrap());
    assert_eq!(d.to_string(), format!("sha256:{hex}"));
    assert_eq!(d.to_hex(), hex);
    assert_eq!(d.object_path(), format!("13/{}", &hex[2..]));
    assert_eq!(format!("{d:?}"), format!("Digest(sha256:{hex})"));
    assert_eq!(Digest::new(HashAlg::Sha256, d.as_bytes()), Some(d));
    assert_eq!(Digest::new(HashAlg::Sha512, d.as_bytes()), None);

    let long = "ab".repeat(64);
    let d512: Digest = long.parse().unwrap();
    assert_eq!(d512.alg(), HashAlg::Sha512);
    assert_eq!(d512, format!("sha512:{long}").parse().unwrap());
    assert_ne!(
        d512,
        Digest::from_hex(HashAlg::Sha256, &long[..64]).unwrap()
    );

    for bad in [
        "",
        "sha256:",
        "sha1:00",
        "md5",
        "zz".repeat(32).as_str(),
        &hex[1..],
    ] {
        assert!(bad.parse::<Digest>().is_err(), "{bad:?}");
    }
    assert!(format!("sha512:{hex}").parse::<Digest>().is_err());

    for alg in [HashAlg::Sha256, HashAlg::Sha512] {
        assert_eq!(HashAlg::from_id(alg.id()), Some(alg));
        assert_eq!(alg.name().parse::<HashAlg>().unwrap(), alg);
    }
    assert_eq!(HashAlg::from_id(0), None);
}

#[test]
fn descriptor_layout() {
    let root = [0xaa; 32];
    let d = descriptor(HashAlg::Sha256, 0x0102_0304_0506_0708, &root);
    assert_eq!(&d[..8], &[1, 1, 12, 0, 0, 0, 0, 0]);
    assert_eq!(&d[8..16], &0x0102_0304_0506_0708u64.to_le_bytes());
    assert_eq!(&d[16..48], &root);
    assert!(d[48..].iter().all(|&b| b == 0));
}

#[test]
fn every_block_verifies_after_round_trip() {
    for alg in [HashAlg::Sha256, HashAlg::Sha512] {
        for size in [0, 1, 4096, 4097, 65 * 4096 + 3, 129 * 4096] {
            let data = random_bytes(size as u64, size);
            let built = tree_of(alg, &data);
            let tree =
                MerkleTree::from_bytes(built.digest(), size as u64, built.as_bytes().to_vec())
                    .unwrap();
            assert_eq!(tree.data_size(), size as u64);
            for i in 0..tree.num_data_blocks() {
                tree.verify_data_block(i, block(&data, i)).unwrap();
                built.verify_data_block(i, block(&data, i)).unwrap();
            }
            tree.verify_tree().unwrap();
            assert_eq!(tree.root_hash(), built.root_hash(), "{alg} {size}");
        }
    }
}

#[test]
fn flipped_data_bit_is_rejected() {
    let size = 300 * BLOCK_SIZE + 10;
    let data = random_bytes(7, size);
    let built = tree_of(HashAlg::Sha256, &data);
    let tree =
        MerkleTree::from_bytes(built.digest(), size as u64, built.as_bytes().to_vec()).unwrap();
    for (index, bit) in [(0u64, 0usize), (150, 4095 * 8 + 7), (300, 9 * 8 + 3)] {
        let mut bad = block(&data, index).to_vec();
        bad[bit / 8] ^= 1 << (bit % 8);
        for t in [&tree, &built] {
            assert_eq!(
                t.verify_data_block(index, &bad),
                Err(VerityError::DataBlockMismatch { block: index })
            );
            t.verify_data_block(index, block(&data, index)).unwrap();
        }
    }
}

#[test]
fn flipped_tree_bit_is_rejected() {
    // sha512, 64 * 64 + 1 blocks: three tree levels (65 leaf blocks, 2, then the top block),
    // so flips are tried at every level, including padding bytes.
    let alg = HashAlg::Sha512;
    let size = (64 * 64 + 1) * BLOCK_SIZE;
    let data = random_bytes(3, size);
    let built = tree_of(alg, &data);
    assert_eq!(built.depth(), 3);
    let good = built.as_bytes().to_vec();
    let per = 64;

    // (tree block in serialized order, byte in it): top block, level 1, level 0 (leaves).
    for (tree_block, byte) in [
        (0usize, 5usize),
        (0, 4000),
        (1, 64),
        (2, 100),
        (3, 0),
        (50, 4095),
        (67, 64),
    ] {
        let mut bytes = good.clone();
        bytes[tree_block * BLOCK_SIZE + byte] ^= 0x10;
        let result = MerkleTree::from_bytes(built.digest(), size as u64, bytes);
        if tree_block == 0 {
            assert!(matches!(result, Err(VerityError::DigestMismatch { .. })));
            continue;
        }
        let tree = result.unwrap();
        // Which level and index the damaged block is.
        let (level, index) = if tree_block < 3 {
            (1, tree_block as u64 - 1)
        } else {
            (0, tree_block as u64 - 3)
        };
        // Data blocks below the damaged tree block fail, naming the block...
        let first_below = index * if level == 1 { per * per } else { per };
        assert_eq!(
            tree.verify_data_block(first_below, block(&data, first_below)),
            Err(VerityError::TreeBlockMismatch { level, index }),
            "tree block {tree_block}"
        );
        // ...and keep failing (a failure is not cached as verified)...
        assert!(
            tree.verify_data_block(first_below, block(&data, first_below))
                .is_err()
        );
        assert!(tree.verify_tree().is_err());
        // ...while data blocks elsewhere still verify.
        let elsewhere = if first_below == 0 { 64 * 64 } else { 0 };
        tree.verify_data_block(elsewhere, block(&data, elsewhere))
            .unwrap();
    }
}

#[test]
fn one_block_file_from_bytes() {
    let data = pattern(1000);
    let digest = digest_bytes(HashAlg::Sha256, &data);
    let tree = MerkleTree::from_bytes(digest, 1000, Vec::new()).unwrap();
    assert_eq!(tree.root_hash(), None);
    let mut bad = data.clone();
    bad[999] ^= 1;
    assert_eq!(
        tree.verify_data_block(0, &bad),
        Err(VerityError::DataBlockMismatch { block: 0 })
    );
    tree.verify_data_block(0, &data).unwrap();
    assert!(tree.root_hash().is_some());
    assert!(tree.verify_data_block(0, &bad).is_err());

    // A wrong data size is a different digest.
    let tree = MerkleTree::from_bytes(digest, 1001, Vec::new()).unwrap();
    let mut longer = data.clone();
    longer.push(0);
    assert!(tree.verify_data_block(0, &longer).is_err());
}

#[test]
fn empty_file_from_bytes() {
    let digest = digest_bytes(HashAlg::Sha256, &[]);
    let tree = MerkleTree::from_bytes(digest, 0, Vec::new()).unwrap();
    assert_eq!(
        tree.verify_data_block(0, &[]),
        Err(VerityError::BlockOutOfRange {
            block: 0,
            blocks: 0
        })
    );
    let other = digest_bytes(HashAlg::Sha256, b"x");
    assert!(matches!(
        MerkleTree::from_bytes(other, 0, Vec::new()),
        Err(VerityError::DigestMismatch { .. })
    ));
}

#[test]
fn wrong_tree_size_is_rejected() {
    let size = 200 * BLOCK_SIZE;
    let data = pattern(size);
    let built = tree_of(HashAlg::Sha256, &data);
    let good = built.as_bytes().to_vec();
    for len in [
        0,
        1,
        good.len() - BLOCK_SIZE,
        good.len() - 1,
        good.len() + 1,
        good.len() + BLOCK_SIZE,
    ] {
        let mut bytes = good.clone();
        bytes.resize(len, 0);
        assert_eq!(
            MerkleTree::from_bytes(built.digest(), size as u64, bytes).err(),
            Some(VerityError::TreeSize {
                data_size: size as u64,
                expected: good.len() as u64,
                found: len as u64
            })
        );
    }
    // A tree for a one-block file must be empty.
    assert!(MerkleTree::from_bytes(built.digest(), 10, vec![0; BLOCK_SIZE]).is_err());
}

#[test]
fn wrong_block_length_or_index_is_rejected() {
    let size = 2 * BLOCK_SIZE + 5;
    let data = pattern(size);
    let tree = tree_of(HashAlg::Sha256, &data);
    assert_eq!(
        tree.verify_data_block(2, &data[..]),
        Err(VerityError::BlockLength {
            block: 2,
            expected: 5,
            found: size
        })
    );
    // The short last block must not be passed zero padded.
    let mut padded = data[2 * BLOCK_SIZE..].to_vec();
    padded.resize(BLOCK_SIZE, 0);
    assert!(tree.verify_data_block(2, &padded).is_err());
    assert!(tree.verify_data_block(0, &data[..100]).is_err());
    assert_eq!(
        tree.verify_data_block(3, &[]),
        Err(VerityError::BlockOutOfRange {
            block: 3,
            blocks: 3
        })
    );
    assert!(tree.verify_data_block(u64::MAX, &[]).is_err());
}

#[test]
fn verification_from_several_threads() {
    let size = 1000 * BLOCK_SIZE;
    let data = random_bytes(11, size);
    let built = tree_of(HashAlg::Sha256, &data);
    let tree =
        MerkleTree::from_bytes(built.digest(), size as u64, built.as_bytes().to_vec()).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (tree, data) = (&tree, &data);
            s.spawn(move || {
                for i in (t..1000).step_by(3) {
                    tree.verify_data_block(i, block(data, i)).unwrap();
                }
            });
        }
    });
}

#[test]
fn runs_of_blocks_verify_and_name_the_bad_block() {
    let size = 300 * BLOCK_SIZE + 10;
    let data = random_bytes(21, size);
    let built = tree_of(HashAlg::Sha256, &data);
    let tree =
        MerkleTree::from_bytes(built.digest(), size as u64, built.as_bytes().to_vec()).unwrap();
    tree.verify_data_blocks(0, &data).unwrap();
    tree.verify_data_blocks(17, &data[17 * BLOCK_SIZE..40 * BLOCK_SIZE])
        .unwrap();
    let mut bad = data.clone();
    bad[33 * BLOCK_SIZE + 100] ^= 4;
    bad[35 * BLOCK_SIZE] ^= 4;
    assert_eq!(
        tree.verify_data_blocks(16, &bad[16 * BLOCK_SIZE..48 * BLOCK_SIZE]),
        Err(VerityError::DataBlockMismatch { block: 33 })
    );
    // The bad blocks do not spoil their neighbours.
    tree.verify_data_blocks(16, &bad[16 * BLOCK_SIZE..33 * BLOCK_SIZE])
        .unwrap();
    tree.verify_data_blocks(34, &bad[34 * BLOCK_SIZE..35 * BLOCK_SIZE])
        .unwrap();
    // Ranges past the end, a short block that is not the last, the last block padded.
    tree.verify_data_blocks(299, &data[299 * BLOCK_SIZE..])
        .unwrap();
    assert_eq!(
        tree.verify_data_blocks(299, &data[299 * BLOCK_SIZE..].repeat(2)),
        Err(VerityError::BlockOutOfRange {
            block: 301,
            blocks: 301
        })
    );
    assert_eq!(
        tree.verify_data_blocks(290, &[0; 12 * BLOCK_SIZE]),
        Err(VerityError::BlockOutOfRange {
            block: 301,
            blocks: 301
        })
    );
    assert_eq!(
        tree.verify_data_blocks(3, &data[3 * BLOCK_SIZE..5 * BLOCK_SIZE - 1]),
        Err(VerityError::BlockLength {
            block: 4,
            expected: BLOCK_SIZE,
            found: BLOCK_SIZE - 1
        })
    );
    let mut padded = data[298 * BLOCK_SIZE..].to_vec();
    padded.resize(3 * BLOCK_SIZE, 0);
    assert!(matches!(
        tree.verify_data_blocks(298, &padded),
        Err(VerityError::BlockLength { block: 300, .. })
    ));
    assert!(
        tree.verify_data_blocks(u64::MAX, &data[..BLOCK_SIZE])
            .is_err()
    );
    assert!(tree.verify_data_blocks(5, &[]).is_err());
    // A one-block file, verified as a run of one.
    let one = random_bytes(5, 1000);
    let built = tree_of(HashAlg::Sha256, &one);
    let tree = MerkleTree::from_bytes(built.digest(), 1000, Vec::new()).unwrap();
    assert!(tree.verify_data_blocks(0, &one[..999]).is_err());
    tree.verify_data_blocks(0, &one).unwrap();
}

#[test]
fn hasher_is_a_writer() {
    let data = pattern(10_000);
    let mut h = FsVerityHasher::new(HashAlg::Sha256);
    std::io::copy(&mut &data[..], &mut h).unwrap();
    assert_eq!(h.data_size(), 10_000);
    assert_eq!(h.finalize(), digest_bytes(HashAlg::Sha256, &data));
}

/// Sizes weighted towards block and level boundaries.
fn interesting_size() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..3 * BLOCK_SIZE,
        (0usize..140, 0usize..3).prop_map(|(b, d)| (b * BLOCK_SIZE).saturating_sub(1) + d),
        0usize..140 * BLOCK_SIZE,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn agrees_with_fs_verity_crate(
        size in interesting_size(),
        seed in any::<u64>(),
        chunks in prop::collection::vec(1usize..20_000, 1..8),
    ) {
        let data = random_bytes(seed, size);
        for alg in [HashAlg::Sha256, HashAlg::Sha512] {
            let expected = oracle(alg, &data);
            // Feed in chunks of the given sizes, cycling, to exercise partial blocks.
            let mut h = FsVerityHasher::new(alg);
            let mut t = FsVerityHasher::with_tree(alg);
            let mut rest = &data[..];
            for &n in chunks.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (chunk, tail) = rest.split_at(n.min(rest.len()));
                h.update(chunk);
                t.update(chunk);
                rest = tail;
            }
            prop_assert_eq!(h.finalize().as_bytes().to_vec(), expected.clone());
            let (digest, tree) = t.finalize_with_tree();
            prop_assert_eq!(digest.as_bytes(), &expected[..]);
            prop_assert_eq!(digest_bytes(alg, &data).as_bytes().to_vec(), expected);
            let loaded = MerkleTree::from_bytes(digest, size as u64, tree.as_bytes().to_vec());
            prop_assert!(loaded.is_ok());
        }
    }

    /// The batched block hash, interleaved where this CPU allows and with the fallback, gives
    /// the plain per-block hash for any number of blocks (odd counts leave a remainder).
    #[test]
    fn batched_hashes_match_single_ones(
        seed in any::<u64>(),
        blocks in 0usize..2 * HASH_BATCH + 3,
    ) {
        let data = random_bytes(seed, blocks * BLOCK_SIZE);
        for alg in [HashAlg::Sha256, HashAlg::Sha512] {
            for ni in [sha256x2::Sha256Ni::detect(), None] {
                let mut out = vec![[0xa5; MAX_DIGEST_LEN]; blocks];
                alg.hash_blocks_with(ni, &data, &mut out);
                let len = alg.digest_len();
                for (i, block) in data.chunks(BLOCK_SIZE).enumerate() {
                    let want = alg.hash_block(block);
                    prop_assert_eq!(&out[i][..len], &want[..len], "{} block {} {:?}", alg, i, ni);
                }
            }
        }
    }

    /// Any run of blocks of any file verifies against its tree (loaded as untrusted bytes),
    /// and one flipped bit in the run is reported at exactly its block.
    #[test]
    fn runs_of_blocks_agree_with_single_blocks(
        size in 1usize..140 * BLOCK_SIZE,
        seed in any::<u64>(),
        start in any::<prop::sample::Index>(),
        len in 1usize..40,
        flip in any::<prop::sample::Index>(),
        alg_is_sha512 in any::<bool>(),
    ) {
        let alg = if alg_is_sha512 { HashAlg::Sha512 } else { HashAlg::Sha256 };
        let data = random_bytes(seed, size);
        let built = tree_of(alg, &data);
        let tree = MerkleTree::from_bytes(built.digest(), size as u64, built.as_bytes().to_vec())
            .unwrap();
        let blocks = tree.num_data_blocks() as usize;
        let first = start.index(blocks);
        let end = (first + len).min(blocks);
        let range = first * BLOCK_SIZE..(end * BLOCK_SIZE).min(size);
        prop_assert_eq!(tree.verify_data_blocks(first as u64, &data[range.clone()]), Ok(()));
        let mut bad = data[range.clone()].to_vec();
        let at = flip.index(bad.len());
        bad[at] ^= 0x80;
        let block = (first + at / BLOCK_SIZE) as u64;
        prop_assert_eq!(
            tree.verify_data_blocks(first as u64, &bad),
            Err(VerityError::DataBlockMismatch { block })
        );
        let one = &bad[at / BLOCK_SIZE * BLOCK_SIZE..((at / BLOCK_SIZE + 1) * BLOCK_SIZE).min(bad.len())];
        prop_assert_eq!(
            tree.verify_data_block(block, one),
            Err(VerityError::DataBlockMismatch { block })
        );
    }

    #[test]
    fn garbage_trees_never_panic(
        alg_is_sha512 in any::<bool>(),
        data_size in prop_oneof![0u64..300_000, any::<u64>()],
        tree_blocks in 0usize..4,
        fill in any::<u8>(),
        digest_byte in any::<u8>(),
        block_index in 0u64..100,
    ) {
        let alg = if alg_is_sha512 { HashAlg::Sha512 } else { HashAlg::Sha256 };
        let expected = Digest::new(alg, &vec![digest_byte; alg.digest_len()]).unwrap();
        let bytes = vec![fill; tree_blocks * BLOCK_SIZE];
        if let Ok(tree) = MerkleTree::from_bytes(expected, data_size, bytes) {
            let _ = tree.verify_data_block(block_index, &[fill; BLOCK_SIZE]);
            let _ = tree.verify_data_block(block_index, &[fill; 7]);
            let _ = tree.verify_data_blocks(block_index, &[fill; 3 * BLOCK_SIZE + 7]);
            let _ = tree.verify_tree();
        }
    }
}

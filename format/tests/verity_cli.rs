//! Our fs-verity digests and Merkle trees against the reference tool, `fsverity digest`
//! from fsverity-utils (Debian package `fsverity`).

use std::path::Path;
use std::process::Command;

use imgmount_format::verity::{self, Digest, HashAlg, MerkleTree};

/// Returns false (after saying why) when the `fsverity` tool cannot be run, so the test can
/// be skipped on a machine without it; on CI (`CI=true`) a missing tool is a failure instead,
/// so the comparison is never silently lost there.
fn have_fsverity() -> bool {
    let reason = match Command::new("fsverity").arg("--version").output() {
        Ok(out) if out.status.success() => return true,
        Ok(out) => format!("`fsverity --version` failed: {}", out.status),
        Err(e) => format!("cannot run `fsverity` ({e}); install the Debian package `fsverity`"),
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and {reason}");
    }
    eprintln!("skipping: {reason}");
    false
}

/// Runs `fsverity digest` on `file`, returning its digest and the Merkle tree it wrote.
fn fsverity_digest(alg: HashAlg, file: &Path, tree_out: &Path) -> (Digest, Vec<u8>) {
    let out = Command::new("fsverity")
        .arg("digest")
        .arg(format!("--hash-alg={}", alg.name()))
        .arg("--block-size=4096")
        .arg(format!("--out-merkle-tree={}", tree_out.display()))
        .arg(file)
        .output()
        .expect("run fsverity");
    assert!(out.status.success(), "fsverity failed: {out:?}");
    // Output is `sha256:HEX FILE`.
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (digest, name) = stdout.trim_end().split_once(' ').unwrap();
    assert_eq!(name, file.to_str().unwrap());
    (digest.parse().unwrap(), std::fs::read(tree_out).unwrap())
}

/// Seeded pseudo-random content (xorshift64*), so failures reproduce.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn matches_fsverity_digest() {
    if !have_fsverity() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sizes = [
        0,
        1,
        4095,
        4096,
        4097,
        128 * 4096,
        128 * 4096 + 1,
        // Odd block counts: the interleaved SHA-256 hashes blocks in pairs, the last alone.
        3 * 4096 + 100,
        129 * 4096 + 7,
        64 * 1024 * 1024 + 12345,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        let file = dir.path().join(format!("data-{size}"));
        let data = content(i as u64 + 1, size);
        std::fs::write(&file, &data).unwrap();
        for alg in [HashAlg::Sha256, HashAlg::Sha512] {
            let (expected, expected_tree) = fsverity_digest(alg, &file, &dir.path().join("tree"));

            assert_eq!(
                verity::digest_file(alg, &file).unwrap(),
                expected,
                "{alg} size {size}"
            );
            assert_eq!(
                verity::digest_bytes(alg, &data),
                expected,
                "{alg} size {size}"
            );

            let tree = verity::merkle_tree_file(alg, &file).unwrap();
            assert_eq!(tree.digest(), expected, "{alg} size {size}");
            assert!(
                tree.as_bytes() == expected_tree,
                "{alg} size {size}: trees differ"
            );

            // The tool's tree, loaded as an untrusted sidecar, checks our data.
            let loaded = MerkleTree::from_bytes(expected, size as u64, expected_tree).unwrap();
            for (index, block) in data.chunks(4096).enumerate().step_by(97) {
                loaded.verify_data_block(index as u64, block).unwrap();
            }
            if let Some(last) = data.chunks(4096).last() {
                let index = loaded.num_data_blocks() - 1;
                loaded.verify_data_block(index, last).unwrap();
            }
            // And every block, in runs of an odd length, as the read path hands them over.
            let fresh = MerkleTree::from_bytes(expected, size as u64, tree.into_bytes()).unwrap();
            for (run, blocks) in data.chunks(37 * 4096).enumerate() {
                fresh.verify_data_blocks(run as u64 * 37, blocks).unwrap();
            }
        }
    }
}

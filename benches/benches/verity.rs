//! fs-verity throughput: digest only, and digest plus the full Merkle tree, over a 64 MiB
//! buffer already in memory (so this is hashing speed, not I/O); and the block hash alone
//! (every 4096-byte block of 1 MiB hashed, as the tree builder and the read path do) with
//! imgmount's interleaved SHA-256 beside sha2 and OpenSSL hashing the blocks one by one.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use imgmount_format::verity::{BLOCK_SIZE, FsVerityHasher, HashAlg, MAX_DIGEST_LEN};
use sha2::Digest as _;

const SIZE: usize = 64 << 20;

/// Feed size per `update` call, as `digest_reader` does.
const CHUNK: usize = 1 << 20;

fn data() -> Vec<u8> {
    // Content does not matter to SHA-2 speed; a cheap non-constant pattern.
    (0..SIZE).map(|i| (i ^ (i >> 11)) as u8).collect()
}

fn verity(c: &mut Criterion) {
    let data = data();
    let mut group = c.benchmark_group("verity");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Bytes(SIZE as u64));

    for alg in [HashAlg::Sha256, HashAlg::Sha512] {
        group.bench_function(format!("digest/{alg}"), |b| {
            b.iter(|| {
                let mut h = FsVerityHasher::new(alg);
                for chunk in data.chunks(CHUNK) {
                    h.update(black_box(chunk));
                }
                h.finalize()
            })
        });
        group.bench_function(format!("tree/{alg}"), |b| {
            b.iter(|| {
                let mut h = FsVerityHasher::with_tree(alg);
                for chunk in data.chunks(CHUNK) {
                    h.update(black_box(chunk));
                }
                h.finalize_with_tree()
            })
        });
    }
    group.finish();
}

/// Hashes one block into the start of `out`.
type BlockHash = fn(HashAlg, &[u8], &mut [u8; MAX_DIGEST_LEN]);

fn sha2_block(alg: HashAlg, block: &[u8], out: &mut [u8; MAX_DIGEST_LEN]) {
    match alg {
        HashAlg::Sha256 => out[..32].copy_from_slice(&sha2::Sha256::digest(block)),
        HashAlg::Sha512 => out.copy_from_slice(&sha2::Sha512::digest(block)),
    }
}

fn openssl_block(alg: HashAlg, block: &[u8], out: &mut [u8; MAX_DIGEST_LEN]) {
    match alg {
        HashAlg::Sha256 => out[..32].copy_from_slice(&openssl::sha::sha256(block)),
        HashAlg::Sha512 => out.copy_from_slice(&openssl::sha::sha512(block)),
    }
}

/// Bytes hashed per iteration of the block-hash benchmarks: a FUSE read's worth.
const BLOCKS_SIZE: usize = 1 << 20;

fn block_hash(c: &mut Criterion) {
    let data = &data()[..BLOCKS_SIZE];
    let mut group = c.benchmark_group("block_hash");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes(BLOCKS_SIZE as u64));
    let mut out = vec![[0u8; MAX_DIGEST_LEN]; BLOCKS_SIZE / BLOCK_SIZE];
    for alg in [HashAlg::Sha256, HashAlg::Sha512] {
        group.bench_function(format!("imgmount/{alg}"), |b| {
            b.iter(|| alg.hash_blocks(black_box(data), &mut out))
        });
        let one_by_one: [(&str, BlockHash); 2] = [("sha2", sha2_block), ("openssl", openssl_block)];
        for (name, hash) in one_by_one {
            group.bench_function(format!("{name}/{alg}"), |b| {
                b.iter(|| {
                    for (block, h) in black_box(data).chunks(BLOCK_SIZE).zip(&mut out) {
                        hash(alg, block, h);
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, verity, block_hash);
criterion_main!(benches);

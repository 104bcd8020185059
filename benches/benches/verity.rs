//! fs-verity throughput: digest only, and digest plus the full Merkle tree, over a 64 MiB
//! buffer already in memory (so this is hashing speed, not I/O).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use imgmount_format::verity::{FsVerityHasher, HashAlg};

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

criterion_group!(benches, verity);
criterion_main!(benches);

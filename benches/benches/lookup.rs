//! Name lookup and readdir in a 10,000-entry directory of a composefs image (written by the
//! composefs crate, so this does not depend on our writer): lookups of random existing names,
//! a miss, and a full listing.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use imgmount_format::erofs::reader::Image;

const ENTRIES: usize = 10_000;

fn name(i: usize) -> String {
    format!("file-{i:06}-{:x}", i.wrapping_mul(0x9E37_79B9) & 0xffff)
}

fn image() -> Vec<u8> {
    let mut dump = String::from("/ 0 40755 3 0 0 0 1700000000.0 - - -\n");
    dump += "/big 0 40755 2 0 0 0 1700000000.0 - - -\n";
    for i in 0..ENTRIES {
        dump += &format!("/big/{} 0 100644 1 0 0 0 1700000000.0 - - -\n", name(i));
    }
    let fs = composefs::dumpfile::dumpfile_to_validated_filesystem::<
        composefs::fsverity::Sha256HashValue,
    >(&dump)
    .expect("dumpfile");
    composefs::erofs::writer::mkfs_erofs_versioned(&fs, composefs::erofs::format::FormatVersion::V0)
        .into_vec()
}

fn lookup(c: &mut Criterion) {
    let img = Image::from_bytes(image()).expect("image");
    let dir = img.lookup_path(b"/big").unwrap().expect("/big");
    // A fixed pseudo-random order of existing names.
    let mut x = 0x1234_5678_u64;
    let names: Vec<Vec<u8>> = (0..1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            name(x as usize % ENTRIES).into_bytes()
        })
        .collect();
    for n in &names {
        assert!(img.lookup(&dir, n).unwrap().is_some());
    }

    let mut group = c.benchmark_group("dir10k");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let mut i = 0;
    group.bench_function("lookup_hit", |b| {
        b.iter(|| {
            i = (i + 1) % names.len();
            img.lookup(&dir, black_box(&names[i])).unwrap()
        })
    });
    group.bench_function("lookup_miss", |b| {
        b.iter(|| img.lookup(&dir, black_box(b"file-005000-zzzz")).unwrap())
    });
    group.bench_function("readdir_all", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for e in img.read_dir(&dir, 0).unwrap() {
                n += black_box(e.unwrap()).name.len();
            }
            n
        })
    });
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);

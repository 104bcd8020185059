//! Name lookup and readdir in a 10,000-entry directory of a composefs image (written by the
//! composefs crate, so this does not depend on our writer): lookups of random existing names,
//! a miss, and a full listing.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use imgmount_benches::{dir_image, random_names};
use imgmount_format::erofs::reader::Image;

const ENTRIES: usize = 10_000;

fn lookup(c: &mut Criterion) {
    let img = Image::from_bytes(dir_image(ENTRIES)).expect("image");
    let dir = img.lookup_path(b"/big").unwrap().expect("/big");
    let names = random_names(ENTRIES, 1024);
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

//! The read path itself, below FUSE: what a READ, LOOKUP or GETATTR costs the daemon once
//! the kernel has delivered the request. The object file sits in the page cache (backing
//! store hot), so this is verification and copying, not disk speed.
//!
//! * `read/verified_1MiB_warm/*`: 1 MiB reads (the kernel's largest) of a 64 MiB object whose
//!   Merkle tree blocks were all verified before: one data hash per block; on one core and
//!   on all of them (the large-read split of `imgmount::read::parallel`).
//! * `read/verified_1MiB_cold`: the same read (one core) just after the object was opened,
//!   its sidecar tree loaded but not yet checked: the tree blocks on the path are hashed too.
//! * `read/unverified_1MiB`: `--verity=off`, the floor (pread and nothing else).
//! * `read/verified_4KiB_uncached`: a 4 KiB read of a segment not seen before, which reads
//!   and verifies its whole 64 KiB segment; `read/verified_4KiB_cache_hit`: the same
//!   request answered from the verified-segment cache.
//! * `split/SIZE/Ncores`: reads of 128 KiB to 1 MiB on one core or two, to see where
//!   splitting starts to pay (`imgmount::read::parallel::PART_MIN`).
//! * `fs/lookup_getattr`: LOOKUP of a random name in a 10,000-entry directory, then GETATTR
//!   of the inode it names, as `ImgFs` answers them.

use std::ffi::OsStr;
use std::hint::black_box;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fuser::INodeNo;
use imgmount::fs::{FsOptions, ImgFs};
use imgmount::read::{Object, Objects, ReadConfig, VerityMode};
use imgmount_benches::{dir_image, random_names};
use imgmount_format::erofs::reader::Image;
use imgmount_format::verity::{Digest, HashAlg, digest_bytes};

const OBJECT_SIZE: usize = 64 << 20;
const MIB: u32 = 1 << 20;

/// The read path over the store at `root`.
fn objects(root: &Path, mode: VerityMode, cache_bytes: u64, verify_threads: usize) -> Objects {
    Objects::new(ReadConfig {
        objects_dir: root.join("objects"),
        sidecar_dir: root.join("verity"),
        mode,
        cache_bytes,
        keep_open: 16,
        verify_threads,
        open_files: 64,
    })
}

/// One object in a scratch store, its sidecar tree already built.
struct Store {
    dir: tempfile::TempDir,
    redirect: Vec<u8>,
    digest: Digest,
}

impl Store {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("scratch directory");
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = (0..OBJECT_SIZE / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect();
        let digest = digest_bytes(HashAlg::Sha256, &data);
        let path = dir.path().join("objects").join(digest.object_path());
        std::fs::create_dir_all(path.parent().expect("object directory")).expect("mkdir");
        std::fs::write(&path, &data).expect("write object");
        let store = Store {
            redirect: format!("/{}", digest.object_path()).into_bytes(),
            digest,
            dir,
        };
        // Builds and saves the sidecar, as import does.
        let objects = store.objects(VerityMode::Require, 1 << 20, 1);
        drop(store.open(&objects));
        store
    }

    fn objects(&self, mode: VerityMode, cache_bytes: u64, verify_threads: usize) -> Objects {
        objects(self.dir.path(), mode, cache_bytes, verify_threads)
    }

    fn open(&self, objects: &Objects) -> Arc<Object> {
        objects
            .open(&self.redirect, Some(self.digest), OBJECT_SIZE as u64)
            .expect("open object")
    }
}

/// Reads `len` bytes at successive offsets `stride` apart (the same one for 0), wrapping at
/// the end of the object.
fn reader<'a>(
    objects: &'a Objects,
    obj: &'a Object,
    len: u32,
    stride: u64,
) -> impl FnMut() -> usize + 'a {
    let mut out = Vec::with_capacity(len as usize);
    let mut at = 0u64;
    move || {
        out.clear();
        objects.read(obj, at, len, &mut out).expect("verified read");
        at = (at + stride) % OBJECT_SIZE as u64;
        black_box(out.len())
    }
}

/// Verifies every tree block, so later reads only hash data blocks.
fn warm(objects: &Objects, obj: &Object) {
    let mut read = reader(objects, obj, MIB, MIB.into());
    for _ in 0..OBJECT_SIZE / MIB as usize {
        read();
    }
}

fn read(c: &mut Criterion) {
    let store = Store::new();
    let mut group = c.benchmark_group("read");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    group.throughput(Throughput::Bytes(MIB.into()));
    for (name, threads) in [("1core", 1), ("all_cores", 0)] {
        let objects = store.objects(VerityMode::Require, 64 << 20, threads);
        let obj = store.open(&objects);
        warm(&objects, &obj);
        let mut read = reader(&objects, &obj, MIB, MIB.into());
        group.bench_function(BenchmarkId::new("verified_1MiB_warm", name), |b| {
            b.iter(&mut read)
        });
    }
    let mut at = 0u64;
    group.bench_function("verified_1MiB_cold", |b| {
        b.iter_batched(
            || {
                // On one core, as warm/1core: a fresh read path starts its helper threads
                // at the first split, which is not what this measures.
                let objects = store.objects(VerityMode::Require, 64 << 20, 1);
                let obj = store.open(&objects);
                at = (at + u64::from(MIB)) % OBJECT_SIZE as u64;
                (objects, obj, at, Vec::with_capacity(MIB as usize))
            },
            |(objects, obj, at, mut out)| {
                objects.read(&obj, at, MIB, &mut out).expect("read");
                (objects, obj, out)
            },
            BatchSize::PerIteration,
        )
    });
    let objects = store.objects(VerityMode::Off, 64 << 20, 0);
    let obj = store.open(&objects);
    let mut read = reader(&objects, &obj, MIB, MIB.into());
    group.bench_function("unverified_1MiB", |b| b.iter(&mut read));

    group.throughput(Throughput::Bytes(4096));
    let objects = store.objects(VerityMode::Require, 0, 0);
    let obj = store.open(&objects);
    warm(&objects, &obj);
    // 4 KiB requests 64 KiB apart: each one in a segment of its own.
    let mut read = reader(&objects, &obj, 4096, 1 << 16);
    group.bench_function("verified_4KiB_uncached", |b| b.iter(&mut read));
    let objects = store.objects(VerityMode::Require, 64 << 20, 0);
    let obj = store.open(&objects);
    let mut read = reader(&objects, &obj, 4096, 0);
    group.bench_function("verified_4KiB_cache_hit", |b| b.iter(&mut read));
    group.finish();
}

fn split(c: &mut Criterion) {
    let store = Store::new();
    let mut group = c.benchmark_group("split");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for kib in [128u32, 256, 512, 1024] {
        group.throughput(Throughput::Bytes(u64::from(kib) << 10));
        for cores in [1, 2] {
            let objects = store.objects(VerityMode::Require, 0, cores);
            let obj = store.open(&objects);
            warm(&objects, &obj);
            let mut read = reader(&objects, &obj, kib << 10, u64::from(kib) << 10);
            group.bench_function(
                BenchmarkId::new(format!("{kib}KiB"), format!("{cores}cores")),
                |b| b.iter(&mut read),
            );
        }
    }
    group.finish();
}

fn fs(c: &mut Criterion) {
    const ENTRIES: usize = 10_000;
    // The directory's files are empty: no object is ever opened.
    let store = tempfile::tempdir().expect("scratch directory");
    let image = Image::from_bytes(dir_image(ENTRIES)).expect("image");
    let fs = ImgFs::new(
        image,
        objects(store.path(), VerityMode::Require, 1 << 20, 0),
        FsOptions::default(),
    );
    let big = fs
        .do_lookup(INodeNo::ROOT, OsStr::new("big"))
        .expect("lookup")
        .expect("/big")
        .ino;
    let names = random_names(ENTRIES, 1024);
    let mut i = 0;
    let mut group = c.benchmark_group("fs");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("lookup_getattr", |b| {
        b.iter(|| {
            i = (i + 1) % names.len();
            let name = OsStr::from_bytes(black_box(&names[i]));
            let attr = fs.do_lookup(big, name).expect("lookup").expect("entry");
            fs.do_getattr(attr.ino).expect("getattr")
        })
    });
    group.finish();
}

criterion_group!(benches, read, split, fs);
criterion_main!(benches);

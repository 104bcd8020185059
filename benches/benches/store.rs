//! What treating the store as untrusted costs on the hot paths, each beside what it replaced:
//!
//! * opening an object: `File::open` + `metadata` (before) against `fsops::Dir::open_file`
//!   with the size the image gives (after: `openat2` beneath the objects directory without
//!   following symlinks, `O_NONBLOCK`, `fstat` checked);
//! * opening an image at mount: `Image::open` (before: mmap, unchecked) against
//!   `ObjectStore::load_image` + `Image::from_bytes` (after: read whole, fs-verity digest
//!   checked against the name);
//! * loading a sidecar: `MerkleTree::from_bytes` (before: top block checked, the rest lazily)
//!   against `from_bytes` + `verify_tree` (after: every block checked at load).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use imgmount_format::dumpfile::parse_dumpfile;
use imgmount_format::erofs::reader::Image;
use imgmount_format::erofs::writer::{WriteOptions, write_image};
use imgmount_format::store::ObjectStore;
use imgmount_format::store::fsops::Expect;
use imgmount_format::verity::{Digest, HashAlg, MerkleTree, merkle_tree_reader};

const OBJECTS: usize = 2048;

fn object_open(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ObjectStore::create(dir.path().join("store"))
        .expect("store")
        .with_fsync(false);
    let objects: Vec<(Digest, PathBuf, u64)> = (0..OBJECTS)
        .map(|i| {
            let data = format!("object {i} ").repeat(500);
            let d = store
                .insert_bytes(data.as_bytes(), HashAlg::Sha256)
                .expect("insert");
            (d, store.object_path(&d), data.len() as u64)
        })
        .collect();
    let mut g = c.benchmark_group("object_open");
    g.throughput(Throughput::Elements(OBJECTS as u64));
    g.bench_function("std_open_metadata", |b| {
        b.iter(|| {
            for (_, path, _) in &objects {
                let f = std::fs::File::open(path).expect("open");
                black_box(f.metadata().expect("stat").len());
            }
        })
    });
    let fd = store.objects_fd();
    g.bench_function("fsops_open_file_sized", |b| {
        b.iter(|| {
            for (d, _, size) in &objects {
                black_box(
                    fd.open_file(d.object_path(), Expect::Size(*size))
                        .expect("open"),
                );
            }
        })
    });
    g.finish();
}

fn image_open(c: &mut Criterion) {
    let mut dump = String::from("/ 0 40755 22 0 0 0 1700000000.0 - - -\n");
    for d in 0..20 {
        dump += &format!("/d{d} 0 40755 2 0 0 0 1700000000.0 - - -\n");
        for f in 0..2500 {
            let hex = format!("{:064x}", d * 100_000 + f);
            dump += &format!(
                "/d{d}/file-{f:05} 10000 100644 1 0 0 0 1700000000.0 {}/{} - {hex}\n",
                &hex[..2],
                &hex[2..]
            );
        }
    }
    let tree = parse_dumpfile(dump.as_bytes()).expect("dumpfile");
    let bytes = write_image(&tree, &WriteOptions::default()).expect("image");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ObjectStore::create(dir.path().join("store")).expect("store");
    let digest = store.add_image(&bytes, HashAlg::Sha256).expect("add");
    let path = store.image_path(&digest);
    let mut g = c.benchmark_group("image_open");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.sample_size(20);
    g.bench_function("mmap_unchecked", |b| {
        b.iter(|| black_box(Image::open(&path).expect("open").root_nid()))
    });
    g.bench_function("read_and_verify", |b| {
        b.iter(|| {
            let bytes = store.load_image(&digest).expect("load");
            black_box(Image::from_bytes(bytes).expect("parse").root_nid())
        })
    });
    g.finish();
}

fn sidecar_load(c: &mut Criterion) {
    // The tree of a 256 MiB object: 512 leaf blocks under a top block (2 MiB).
    let size: u64 = 256 << 20;
    let zeros = std::io::Read::take(std::io::repeat(7), size);
    let tree = merkle_tree_reader(HashAlg::Sha256, zeros).expect("tree");
    let digest = tree.digest();
    let bytes = tree.as_bytes().to_vec();
    let mut g = c.benchmark_group("sidecar_load_256MiB_object");
    g.throughput(Throughput::Bytes(size));
    g.bench_function("top_block_only", |b| {
        b.iter(|| black_box(MerkleTree::from_bytes(digest, size, bytes.clone()).expect("tree")))
    });
    g.bench_function("every_block", |b| {
        b.iter(|| {
            let t = MerkleTree::from_bytes(digest, size, bytes.clone()).expect("tree");
            t.verify_tree().expect("verify");
            black_box(t)
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    targets = object_open, image_open, sidecar_load
}
criterion_main!(benches);

//! Fuzzing on stable Rust: every kind of hostile input imgmount reads — composefs images,
//! dumpfiles, OCI JSON (index, manifest, config) and layer tars (plain, gzip, zstd) — is
//! mutated from valid seeds with a fixed-seed RNG and run through every reader that takes
//! it, end to end (a layer becomes a tree, the tree an image, the image is read back).
//!
//! Checked: no panic (each input under `catch_unwind`), no hang (a watchdog aborts the run
//! if one input takes longer than [`DEADLINE`], printing how to replay it), bounded memory
//! (the process runs under a 4 GiB address-space limit, and its peak RSS must stay under
//! [`MAX_RSS_MIB`]).
//!
//! The bounded run in `cargo test` does [`DEFAULT_ITERS`] inputs per target. A longer run:
//!
//! ```text
//! IMGMOUNT_FUZZ_ITERS=200000 IMGMOUNT_FUZZ_SEED=$RANDOM \
//!     cargo test --release -p imgmount-format --test fuzz_inputs -- --nocapture
//! ```
//!
//! A failure prints the target, seed and iteration; `IMGMOUNT_FUZZ_SEED=S
//! IMGMOUNT_FUZZ_ONLY=N` replays exactly that input (`IMGMOUNT_FUZZ_DUMP=FILE` writes it).

mod oci_util;

mod common;

use std::io::{self, Read};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use common::Rng;
use imgmount_format::composefs::tree_from_image;
use imgmount_format::dumpfile::{parse_dumpfile, write_dumpfile_to_string};
use imgmount_format::erofs::reader::Image;
use imgmount_format::erofs::writer::{WriteOptions, write_image};
use imgmount_format::oci::blob::{BlobAlg, Tally, decompress};
use imgmount_format::oci::layout::{Blobs, find_oci_image};
use imgmount_format::oci::{Limits, ObjectSink, TreeBuilder};
use imgmount_format::verity::{Digest, FsVerityHasher, HashAlg};
use oci_util::{Comp, Layer, compress};

const DEFAULT_ITERS: u64 = 1500;
const DEFAULT_SEED: u64 = 0x00f0_22ed;
/// Longest one input may take (a debug build on a loaded machine).
const DEADLINE: Duration = Duration::from_secs(30);
const MAX_RSS_MIB: u64 = 1536;
const MAX_AS: u64 = 4 << 30;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| {
        v.strip_prefix("0x")
            .map_or_else(|| v.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
    })
}

/// The generator for one input: its seed mixed with the target's name and the iteration.
impl Rng {
    fn new(seed: u64, target: &str, iteration: u64) -> Self {
        let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
        for b in target.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Rng((h ^ iteration.wrapping_mul(0xbf58_476d_1ce4_e5b9)) | 1)
    }
}

/// Values that make parsers take odd paths: boundaries, huge sizes, path tricks.
const TOKENS: &[&[u8]] = &[
    b"0",
    b"-1",
    b"4294967295",
    b"18446744073709551615",
    b"99999999999999999999999",
    b"..",
    b"/",
    b"../../etc/passwd",
    b"\\x00",
    b"\\",
    b"=",
    b" ",
    b"\n",
    b"\"",
    b"{}",
    b"[]",
    b"null",
    b"sha256:",
    b"@",
    b"GNU.sparse.realsize",
    b"./",
    b".wh..wh..opq",
    b".wh.",
];

/// Mutates a few places of `base`: bit flips, byte and word overwrites, truncation,
/// duplication of a run, insertion of a token, deletion.
fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..1 + rng.below(5) {
        if b.is_empty() {
            b.push(0);
        }
        let pos = rng.below(b.len());
        match rng.below(10) {
            0 => b[pos] ^= 1 << rng.below(8),
            1 => b[pos] = rng.next() as u8,
            2 => {
                let fill = [0u8, 0xff, rng.next() as u8][rng.below(3)];
                for x in b.iter_mut().skip(pos).take(1 << rng.below(4)) {
                    *x = fill;
                }
            }
            3 => b.truncate(pos),
            4 => {
                let len = 1 + rng.below(64);
                let src = rng.below(b.len());
                let chunk: Vec<u8> = b.iter().skip(src).take(len).copied().collect();
                b.splice(pos..pos, chunk);
            }
            5 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                b.splice(pos..pos, t.iter().copied());
            }
            6 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                let end = (pos + t.len()).min(b.len());
                b.splice(pos..end, t.iter().copied());
            }
            7 => {
                let end = (pos + 1 + rng.below(32)).min(b.len());
                b.drain(pos..end);
            }
            8 => {
                // A digit nudged: sizes, counts and offsets in text formats.
                if b[pos].is_ascii_digit() {
                    b[pos] = b'0' + rng.below(10) as u8;
                } else {
                    b[pos] = b[pos].wrapping_add(1);
                }
            }
            _ => {
                let v = (rng.next() % 600) as u16;
                let p = pos & !1;
                if let Some(s) = b.get_mut(p..p + 2) {
                    s.copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    b
}

/// Sets the address-space limit once for the whole test binary.
fn limit_memory() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let rl = libc::rlimit {
            rlim_cur: MAX_AS,
            rlim_max: MAX_AS,
        };
        // SAFETY: setrlimit reads the struct we pass; lowering a limit is always allowed.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_AS, &rl) };
        assert_eq!(rc, 0, "setrlimit");
    });
}

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

/// Runs `iters` mutated inputs of `seeds` through `target`, watched. `target` says whether
/// the input made it all the way through (the seeds must, unmutated).
fn fuzz(name: &str, seeds: &[Vec<u8>], target: impl Fn(&[u8]) -> bool) {
    limit_memory();
    let seed = env_u64("IMGMOUNT_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let iters = env_u64("IMGMOUNT_FUZZ_ITERS").unwrap_or(DEFAULT_ITERS);
    let only = env_u64("IMGMOUNT_FUZZ_ONLY");
    // The watchdog: the iteration in progress and when it started.
    let current = Arc::new(AtomicU64::new(u64::MAX));
    let started = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    {
        let (current, started, done) = (current.clone(), started.clone(), done.clone());
        let name = name.to_owned();
        std::thread::spawn(move || {
            while done.load(Ordering::Relaxed) == 0 {
                std::thread::sleep(Duration::from_millis(200));
                let i = current.load(Ordering::Relaxed);
                let since = epoch.elapsed().as_millis() as u64 - started.load(Ordering::Relaxed);
                if i != u64::MAX && since > DEADLINE.as_millis() as u64 {
                    eprintln!(
                        "fuzz {name}: input {i} of seed {seed:#x} ran {since} ms: a hang. \
                         Replay: IMGMOUNT_FUZZ_SEED={seed:#x} IMGMOUNT_FUZZ_ONLY={i}"
                    );
                    std::process::abort();
                }
            }
        });
    }
    // Stops the watchdog however this function ends (an assertion failing included).
    struct Stop(Arc<AtomicU64>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(1, Ordering::Relaxed);
        }
    }
    let _stop = Stop(done.clone());
    let start = Instant::now();
    let mut failures = Vec::new();
    let mut accepted = 0u64;
    for i in 0..iters {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let mut rng = Rng::new(seed, name, i);
        let base = &seeds[rng.below(seeds.len())];
        let input = if i == 0 {
            base.clone()
        } else {
            mutate(&mut rng, base)
        };
        if let Some(path) = std::env::var_os("IMGMOUNT_FUZZ_DUMP").filter(|_| only.is_some()) {
            std::fs::write(path, &input).unwrap();
        }
        started.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        current.store(i, Ordering::Relaxed);
        let outcome = catch_unwind(AssertUnwindSafe(|| target(&input)));
        current.store(u64::MAX, Ordering::Relaxed);
        match outcome {
            Ok(true) => accepted += 1,
            Ok(false) => assert!(i != 0 || only.is_some(), "fuzz {name}: the seed is refused"),
            Err(_) => failures.push(i),
        }
    }
    let rss = peak_rss_mib();
    eprintln!(
        "fuzz {name}: {iters} inputs ({accepted} accepted whole), seed {seed:#x}, {:.1} s, \
         peak RSS {rss} MiB",
        start.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "fuzz {name}: panics on inputs {failures:?} of seed {seed:#x} \
         (replay one with IMGMOUNT_FUZZ_SEED={seed:#x} IMGMOUNT_FUZZ_ONLY=N)"
    );
    assert!(rss < MAX_RSS_MIB, "fuzz {name}: peak RSS {rss} MiB");
}

/// Hashes content and forgets it: a sink that costs no memory.
struct HashSink;

impl ObjectSink for HashSink {
    fn store(&mut self, data: &mut dyn Read) -> io::Result<(Digest, u64)> {
        let mut h = FsVerityHasher::new(HashAlg::Sha256);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = data.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let size = h.data_size();
        Ok((h.finalize(), size))
    }
}

/// An image our writer made must read back, whatever tree it came from. Returns whether
/// the tree could be written.
fn image_round_trip(tree: &imgmount_format::tree::Tree) -> bool {
    let Ok(bytes) = write_image(tree, &WriteOptions::default()) else {
        return false;
    };
    let image = Image::from_bytes(bytes).expect("an image we wrote reads back");
    tree_from_image(&image).expect("an image we wrote gives its tree back");
    true
}

fn seed_dumpfile() -> String {
    let d = "70a9125438f7255245f596c54cebb6621cb9a64f062752cf26763c1b690e7340";
    let mut s = String::new();
    s += "/ 0 40755 4 0 0 0 1633950376.0 - - - trusted.foo1=bar-1 user.foo2=bar-2\n";
    s += "/blockdev 0 60777 1 0 0 66308 1633950376.0 - - - trusted.bar=bar-2\n";
    s += "/chardev 0 20777 1 0 0 10769 1633950376.0 - - - security.selinux=x\n";
    s += "/dir 0 40750 3 1000 100 0 1700000000.123456789 - - - user.shared=yes\n";
    s += &format!(
        "/dir/external 100000 100755 2 0 0 0 1731497312.0 70/{} - {d} user.shared=yes\n",
        &d[2..]
    );
    s += "/dir/sub 0 40755 2 0 0 0 1633950376.0 - - -\n";
    s += "/dir/sub/deep 15 100777 1 0 0 0 1633950376.0 - FOOBAR\\nINAFILE\\n - user.foo=b\n";
    s += "/esc 0 100777 1 0 0 0 1633950376.0 - - - trusted.overlay.redirect=/foo\\n\n";
    s += "/fifo 0 10777 1 0 0 0 1633950376.0 - - -\n";
    s += "/hardlink 0 @100755 - - - - 0.0 /dir/external - -\n";
    s += "/many 0 40755 2 0 0 0 1633950376.0 - - -\n";
    for i in 0..60 {
        s += &format!("/many/f{i:03} 1 100644 1 0 0 0 1.0 - x -\n");
    }
    s += "/symlink 7 120777 1 0 0 0 1633950376.0 /dir/sub - -\n";
    s += "/whiteout 0 20000 1 0 0 0 1633950376.0 - - -\n";
    s
}

fn seed_images() -> Vec<Vec<u8>> {
    let tree = parse_dumpfile(seed_dumpfile().as_bytes()).expect("seed dumpfile parses");
    let ours = write_image(&tree, &WriteOptions::default()).expect("seed image");
    let fs = composefs::dumpfile::dumpfile_to_validated_filesystem::<
        composefs::fsverity::Sha256HashValue,
    >(&seed_dumpfile())
    .expect("composefs parses the seed");
    let theirs = composefs::erofs::writer::mkfs_erofs(&fs).into();
    vec![ours, theirs]
}

#[test]
fn fuzz_images() {
    fuzz("images", &seed_images(), |bytes| {
        let Ok(image) = Image::from_bytes(bytes.to_vec()) else {
            return false;
        };
        for path in [
            &b"/dir/sub/deep"[..],
            b"/symlink",
            b"/many/f007",
            b"/nope/x",
        ] {
            if let Ok(Some(inode)) = image.lookup_path(path) {
                let mut buf = [0u8; 4096];
                let _ = image.read_at(&inode, 0, &mut buf);
                let _ = image.read_link(&inode);
                let _ = image.redirect(&inode);
                let _ = image.metacopy(&inode);
            }
        }
        match tree_from_image(&image) {
            Ok(tree) => {
                let _ = write_dumpfile_to_string(&tree);
                image_round_trip(&tree)
            }
            Err(_) => false,
        }
    });
}

#[test]
fn fuzz_dumpfiles() {
    fuzz("dumpfiles", &[seed_dumpfile().into_bytes()], |bytes| {
        let Ok(tree) = parse_dumpfile(bytes) else {
            return false;
        };
        let text = write_dumpfile_to_string(&tree);
        parse_dumpfile(text.as_bytes()).expect("a dumpfile we printed parses");
        image_round_trip(&tree)
    });
}

fn seed_layer() -> Vec<u8> {
    let mut l = Layer::new();
    l.dir("etc/")
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
        .file("big", &[7u8; 20_000])
        .symlink("etc/link", "../big")
        .hardlink("hard", "big")
        .file("etc/.wh.gone", b"")
        .file("opaque/.wh..wh..opq", b"")
        .device("dev/null", tar::EntryType::Char, 1, 3)
        .file(&format!("deep/{}/file", "d/".repeat(80)), b"long name")
        .pax(&[
            ("mtime", b"1700000000.5"),
            ("SCHILY.xattr.user.k", b"v"),
            ("path", b"pax/named"),
        ])
        .file("placeholder", b"pax content")
        .pax(&[
            ("GNU.sparse.major", b"1"),
            ("GNU.sparse.minor", b"0"),
            ("GNU.sparse.name", b"sparse"),
            ("GNU.sparse.realsize", b"100000"),
        ]);
    let mut map = b"2\n0\n3\n90000\n2\n".to_vec();
    map.resize(512, 0);
    map.extend_from_slice(b"abcXY");
    l.file("GNUSparseFile.0/sparse", &map);
    l.bytes()
}

fn compressed(tar: &[u8], how: usize) -> Vec<u8> {
    compress(tar, [Comp::None, Comp::Gzip, Comp::Zstd][how % 3]).0
}

/// A layer through the import pipeline: decompression, the size bound, tar entries to a
/// tree, the tree to an image and back.
fn apply_layer(blob: &[u8]) -> bool {
    let Ok(reader) = decompress(blob, "fuzz", None) else {
        return false;
    };
    let limits = Limits {
        max_bytes: 64 << 20,
        max_entries: 20_000,
    };
    let tally = Tally::new(reader, BlobAlg::Sha256, limits.max_bytes);
    let mut builder = TreeBuilder::new(limits);
    builder
        .apply_layer(tally, "fuzz", &mut HashSink, &mut |_| {})
        .is_ok()
        && image_round_trip(&builder.finish())
}

#[test]
fn fuzz_layers() {
    let tar = seed_layer();
    let seeds: Vec<Vec<u8>> = (0..3).map(|c| compressed(&tar, c)).collect();
    fuzz("layers", &seeds, apply_layer);
    // Mutated tars, then compressed: the decompressors see valid streams of bad tars.
    fuzz("layers-inside", std::slice::from_ref(&tar), |bytes| {
        let how = bytes.len() % 3;
        apply_layer(&compressed(bytes, how))
    });
}

/// The manifest document of the valid layout (its config placeholders filled in).
fn spec_manifest(docs: &[Vec<u8>; 3]) -> Vec<u8> {
    use sha2::Digest as _;
    let cd = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&docs[2])));
    String::from_utf8_lossy(&docs[1])
        .replace("CONFIG_DIGEST", &cd)
        .replace("\"CONFIG_SIZE\"", &docs[2].len().to_string())
        .into_bytes()
}

/// The path of the blob holding `bytes` in a layout.
fn blob_named(dir: &std::path::Path, bytes: &[u8]) -> std::path::PathBuf {
    use sha2::Digest as _;
    dir.join("blobs/sha256")
        .join(hex::encode(sha2::Sha256::digest(bytes)))
}

/// Writes an OCI layout whose index, manifest or config is `doc` (the others valid, and
/// every descriptor giving the real digest and size of what it names).
fn write_layout(dir: &std::path::Path, which: usize, doc: &[u8], docs: &[Vec<u8>; 3]) {
    use sha2::Digest as _;
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let hex = hex::encode(sha2::Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let config = if which == 2 {
        doc.to_vec()
    } else {
        docs[2].clone()
    };
    let (cd, cs) = put(&config);
    let manifest = if which == 1 {
        doc.to_vec()
    } else {
        String::from_utf8_lossy(&docs[1])
            .replace("CONFIG_DIGEST", &cd)
            .replace("\"CONFIG_SIZE\"", &cs.to_string())
            .into_bytes()
    };
    let (md, ms) = put(&manifest);
    let index = if which == 0 {
        doc.to_vec()
    } else {
        String::from_utf8_lossy(&docs[0])
            .replace("MANIFEST_DIGEST", &md)
            .replace("\"MANIFEST_SIZE\"", &ms.to_string())
            .into_bytes()
    };
    std::fs::write(dir.join("index.json"), index).unwrap();
}

#[test]
fn fuzz_oci_json() {
    let layer = "sha256:".to_owned() + &"a".repeat(64);
    let index = br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"MANIFEST_DIGEST","size":"MANIFEST_SIZE","annotations":{"org.opencontainers.image.ref.name":"t"},"platform":{"architecture":"amd64","os":"linux"}}]}"#.to_vec();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"CONFIG_DIGEST","size":"CONFIG_SIZE"}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":100}}]}}"#
    )
    .into_bytes();
    let config =
        format!(r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{layer}"]}}}}"#)
            .into_bytes();
    let docs = [index, manifest, config];
    // The valid layout first: the seeds really are an image.
    let dir = tempfile::tempdir().unwrap();
    write_layout(dir.path(), 3, b"", &docs);
    let spec = find_oci_image(&Blobs::Dir(dir.path().to_owned()), Some("t")).unwrap();
    assert_eq!(spec.layers.len(), 1);
    // Each input: which document to mutate is the input's first byte; the seeds are the
    // documents as the valid layout has them (placeholders filled in).
    let rendered = [
        std::fs::read(dir.path().join("index.json")).unwrap(),
        std::fs::read(blob_named(dir.path(), &spec_manifest(&docs))).unwrap(),
        docs[2].clone(),
    ];
    let seeds: Vec<Vec<u8>> = (0..3u8)
        .map(|i| {
            let mut v = vec![i];
            v.extend_from_slice(&rendered[i as usize]);
            v
        })
        .collect();
    fuzz("oci-json", &seeds, |bytes| {
        let Some((&which, doc)) = bytes.split_first() else {
            return false;
        };
        let which = usize::from(which % 3);
        let dir = tempfile::tempdir().unwrap();
        write_layout(dir.path(), which, doc, &docs);
        let tagged = find_oci_image(&Blobs::Dir(dir.path().to_owned()), Some("t"));
        let _ = find_oci_image(&Blobs::Dir(dir.path().to_owned()), None);
        tagged.is_ok()
    });
}
